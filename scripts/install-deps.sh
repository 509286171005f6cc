#!/usr/bin/env bash
# Installs what building and testing ftm needs on Debian 12 (bookworm), unless it is
# all present already. Used by scripts/test.sh and scripts/demo.sh; run as root, or
# as a user with sudo.
set -euo pipefail

# libpmemobj-dev, libpmem-dev, libsqlite3-dev and liblmdb-dev are the peers of the
# durable benchmark (benchmarks/durable_bench.cpp), found with pkg-config.
# clang-tidy runs in the clang stage of scripts/test.sh (.clang-tidy).
# libnats-dev and nats-server are the optional NATS JetStream bridge (nats/), found with
# pkg-config; without them it is skipped. Debian's nats-server package enables a systemd
# unit on port 4222 where systemd runs; the tests start their own servers on other ports.
# libclang-rt-dev holds clang's sanitizer runtimes (the TSan stage needs them); clang
# only recommends it, and recommends are not installed here.
packages=(g++ clang libclang-rt-dev clang-format clang-tidy cmake ninja-build git python3
  libboost-dev libfmt-dev doctest-dev libbenchmark-dev
  pkg-config libpmemobj-dev libpmem-dev libsqlite3-dev liblmdb-dev
  libnats-dev nats-server)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  if [[ $status != "install ok installed" ]]; then
    missing+=("$package")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ftm: missing build dependencies, and no apt-get to install them." >&2
  echo "ftm: install: ${missing[*]}" >&2
  exit 1
fi

as_root=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "ftm: missing packages; run as root or install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "ftm: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y --no-install-recommends "${packages[@]}"
