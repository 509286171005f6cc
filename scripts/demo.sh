#!/usr/bin/env bash
# Builds the examples in Release and runs the demos: first the reliable page server
# and the key-value server over a stable_hash_map (each server killed at random
# intervals for a few seconds; the key-value server's clients too, which re-send their
# calls with idempotency keys), then segment, bank, persistent, ports and failover;
# then, when libnats and nats-server are installed, the page server across two nodes
# over NATS (nats/examples/nats_page_server.cpp), with kills on both nodes and of the
# nats-server.
#
#   scripts/demo.sh
#
# FTM_DEMO_SECONDS sets how long the page and key-value servers run (default 5).
#
# Builds in $FTM_BUILD_ROOT/demo (default build/demo). Missing Debian packages are
# installed first (scripts/install-deps.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
dir=${FTM_BUILD_ROOT:-build}/demo
jobs=${FTM_JOBS:-2}
demos=(page_server kv_server segment bank persistent ports failover)

bash "$root/scripts/install-deps.sh"

cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFTM_BUILD_EXAMPLES=ON -DFTM_BUILD_TESTS=OFF -DFTM_BUILD_BENCHMARKS=OFF -DFTM_INSTALL=OFF

cmake --build "$dir" -j "$jobs" --target "${demos[@]}"

for demo in "${demos[@]}"; do
  printf '\n=== %s ===\n' "$demo"
  if [[ $demo == page_server || $demo == kv_server ]]; then
    "$dir/examples/$demo" --seconds "${FTM_DEMO_SECONDS:-5}"
  else
    "$dir/examples/$demo"
  fi
done

# The NATS bridge is optional: its demo runs when CMake found libnats and nats-server.
if cmake --build "$dir" --target help 2>/dev/null | grep -q '^nats_page_server:'; then
  cmake --build "$dir" -j "$jobs" --target nats_page_server
  printf '\n=== nats_page_server (clients on node A, server on node B) ===\n'
  "$dir/nats/examples/nats_page_server" --seconds "${FTM_DEMO_SECONDS:-5}"
else
  printf '\n=== nats_page_server: skipped (needs libnats-dev and nats-server) ===\n'
fi
