#!/usr/bin/env bash
# Builds the examples in Release and runs the two demos, segment then bank.
#
#   scripts/demo.sh
#
# Builds in $FTM_BUILD_ROOT/demo (default build/demo). Missing Debian packages are
# installed first (scripts/install-deps.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
dir=${FTM_BUILD_ROOT:-build}/demo
jobs=${FTM_JOBS:-2}
demos=(segment bank)

bash "$root/scripts/install-deps.sh"

if [[ ! -f "$root/examples/CMakeLists.txt" ]]; then
  echo "demo.sh: examples/ does not exist yet; nothing to run."
  exit 0
fi

cmake -S "$root" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFTM_BUILD_EXAMPLES=ON -DFTM_BUILD_TESTS=OFF -DFTM_BUILD_BENCHMARKS=OFF -DFTM_INSTALL=OFF

targets=()
for demo in "${demos[@]}"; do
  if ninja -C "$dir" -t query "$demo" >/dev/null 2>&1; then
    targets+=("$demo")
  else
    echo "demo.sh: the example '$demo' does not exist yet; skipped."
  fi
done
if [[ ${#targets[@]} -eq 0 ]]; then
  exit 0
fi
cmake --build "$dir" -j "$jobs" --target "${targets[@]}"

for demo in "${targets[@]}"; do
  printf '\n=== %s ===\n' "$demo"
  "$dir/examples/$demo"
done
