#!/usr/bin/env bash
# The ftm test command, for developers and CI alike.
#
#   scripts/test.sh [stage...]
#
# Stages (default: all four, in this order):
#   gcc    g++ -O2: every test (compile-fail and consumer included), each
#          public header compiled alone, examples and benchmarks built
#   clang  clang++ -O2: every test but consumer (gcc builds those four
#          projects) and concurrency (the tsan stage builds and runs those with
#          clang++), compile-fail included, a short run of each libFuzzer target
#          (label fuzz), and clang-tidy (.clang-tidy) over the examples and tools,
#          which between them include every public header
#   asan   g++ Debug with AddressSanitizer + UBSan: every test but compile_fail and
#          consumer (the nats kill tests divide their kills by 4 under sanitizers);
#          the examples are left to the gcc and clang stages
#   tsan   clang++ RelWithDebInfo with ThreadSanitizer: the concurrency tests
#
# Each stage builds in its own directory, $FTM_BUILD_ROOT/<stage> (default build/).
# Every selected stage runs; the exit status is non-zero if any of them failed
# (FTM_FAIL_FAST=1 stops at the first failure). Missing Debian packages are
# installed first (scripts/install-deps.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
build_root=${FTM_BUILD_ROOT:-build}
jobs=${FTM_JOBS:-2}
all_stages=(gcc clang asan tsan)

usage() {
  sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

stages=()
for arg in "$@"; do
  case $arg in
    gcc | clang | asan | tsan) stages+=("$arg") ;;
    all) stages+=("${all_stages[@]}") ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown stage '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ ${#stages[@]} -eq 0 ]]; then
  stages=("${all_stages[@]}")
fi

bash "$root/scripts/install-deps.sh"

# Sanitizer reports: symbolised, and fatal.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}

launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

banner() {
  printf '\n==============================================================================\n'
  printf '== %s\n' "$*"
  printf '==============================================================================\n'
}

# RelWithDebInfo without the debug info, for the gcc and clang stages: -g is about 15%
# of their compile time (laws_test.cpp: 80 s of CPU with it, 68 s without) and ten
# times the object size. The sanitizer stages keep it for their reports.
optimized=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -DNDEBUG")

# configure <dir> <cmake args...>
configure() {
  local dir=$1
  shift
  cmake -S "$root" -B "$dir" -G Ninja "${launcher[@]}" \
    -DFTM_BUILD_TESTS=ON -DFTM_WERROR=ON "$@"
}


stage_gcc() {
  local dir=$build_root/gcc
  configure "$dir" -DCMAKE_CXX_COMPILER=g++ "${optimized[@]}" \
    -DFTM_INSTALL=ON \
    -DFTM_BUILD_EXAMPLES=ON \
    -DFTM_BUILD_BENCHMARKS=ON
  cmake --build "$dir" -j "$jobs"
  echo "-- formatting (.clang-format) and the docs' snippets against the examples"
  # shellcheck disable=SC2046
  clang-format --dry-run --Werror $(git -C "$root" ls-files '*.hpp' '*.cpp')
  python3 "$root/docs/check_snippets.py"
  echo "-- every public header, compiled alone"
  cmake --build "$dir" -j "$jobs" --target all_verify_interface_header_sets
  ctest --test-dir "$dir" --output-on-failure -j "$jobs"
}

# The translation units clang-tidy checks: few enough to take a few minutes, and
# between them they include every public header, which .clang-tidy's HeaderFilterRegex
# lets it check too.
tidy_sources=(examples/bank.cpp examples/ports.cpp examples/persistent.cpp
  examples/failover.cpp examples/page_server.cpp examples/containers.cpp
  tools/ftm-inspect.cpp)

stage_clang() {
  local dir=$build_root/clang
  configure "$dir" -DCMAKE_CXX_COMPILER=clang++ "${optimized[@]}" \
    -DFTM_INSTALL=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    -DFTM_BUILD_EXAMPLES=ON -DFTM_BUILD_BENCHMARKS=OFF -DFTM_BUILD_FUZZERS=ON \
    -DFTM_NATS_KILLS=100 -DFTM_TEST_SKIP_LABEL=concurrency
  cmake --build "$dir" -j "$jobs"
  echo "-- clang-tidy (.clang-tidy) over ${tidy_sources[*]}"
  printf '%s\n' "${tidy_sources[@]}" |
    xargs -P "$jobs" -I{} clang-tidy -p "$dir" --quiet --warnings-as-errors='*' "$root/{}"
  # The consumer projects test CMake packaging, the same under both compilers: each
  # rebuilds ftm's tools from scratch (about 80 s of this stage's time). The
  # concurrency tests are clang++'s in the tsan stage, built and run there (about 300
  # s of this stage's build).
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" -LE 'consumer|concurrency'
}

# Without the examples: building them under ASan took about 160 s of this stage, to run
# for 8 s what the tests run too (the gcc and clang stages still build and run them).
stage_asan() {
  local dir=$build_root/asan
  configure "$dir" -DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Debug \
    -DFTM_SANITIZE=address,undefined -DFTM_INSTALL=OFF \
    -DFTM_BUILD_EXAMPLES=OFF -DFTM_BUILD_BENCHMARKS=OFF
  cmake --build "$dir" -j "$jobs"
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --no-tests=error \
    -LE 'compile_fail|consumer'
}

stage_tsan() {
  local dir=$build_root/tsan
  configure "$dir" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFTM_SANITIZE=thread -DFTM_INSTALL=OFF \
    -DFTM_BUILD_EXAMPLES=OFF -DFTM_BUILD_BENCHMARKS=OFF
  # Only what the concurrency label runs.
  cmake --build "$dir" -j "$jobs" --target ftm_tests_concurrency
  ctest --test-dir "$dir" --output-on-failure -j "$jobs" --no-tests=error -L concurrency
}

describe() {
  case $1 in
    gcc) echo "g++ -O2: full suite, compile-fail, consumer, header check" ;;
    clang) echo "clang++ -O2: suite but consumer and concurrency, compile-fail, short fuzz runs" ;;
    asan) echo "g++ Debug, address+undefined sanitizers: suite minus compile_fail/consumer" ;;
    tsan) echo "clang++, thread sanitizer: concurrency tests" ;;
  esac
}

failed=()
passed=()
for stage in "${stages[@]}"; do
  banner "stage $stage: $(describe "$stage")"
  start=$SECONDS
  # A subshell with errexit, so the first failing command ends the stage. (Not as an
  # `if` condition: bash ignores errexit there, even inside the subshell.)
  set +e
  (set -e; "stage_$stage")
  status=$?
  set -e
  if [[ $status -eq 0 ]]; then
    passed+=("$stage ($((SECONDS - start))s)")
    banner "stage $stage: PASSED in $((SECONDS - start))s"
  else
    failed+=("$stage")
    banner "stage $stage: FAILED after $((SECONDS - start))s"
    if [[ ${FTM_FAIL_FAST:-0} == 1 ]]; then
      break
    fi
  fi
done

banner "summary"
for s in "${passed[@]}"; do echo "  passed: $s"; done
for s in "${failed[@]}"; do echo "  FAILED: $s"; done
if [[ ${#failed[@]} -ne 0 ]]; then
  exit 1
fi
echo "  all selected stages passed"
