#!/usr/bin/env bash
# Installs what building and testing ftm needs on Debian 12 (bookworm), unless it is
# all present already. Used by scripts/test.sh and scripts/demo.sh; run as root, or
# as a user with sudo.
set -euo pipefail

packages=(g++ clang cmake ninja-build libboost-dev libfmt-dev doctest-dev libbenchmark-dev)

if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ftm: missing build dependencies, and no apt-get to install them." >&2
  echo "ftm: install: ${packages[*]}" >&2
  exit 1
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "ftm: missing packages; run as root or install: ${packages[*]}" >&2
    exit 1
  fi
fi

echo "ftm: installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
