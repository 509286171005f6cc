# Every external package ftm uses is looked up here, and nowhere else.
#
# The first block is what ftm::ftm itself needs; keep it in step with the
# find_dependency() calls in cmake/ftmConfig.cmake.in, which repeat it for
# projects that consume the installed package.

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)
find_package(Boost 1.74 REQUIRED CONFIG)  # Boost::headers (Hana)
find_package(fmt REQUIRED CONFIG)         # fmt::fmt

# Development-only packages: never required from a consumer.
if(FTM_BUILD_TESTS)
  find_package(doctest REQUIRED CONFIG)   # doctest::doctest
endif()
if(FTM_BUILD_BENCHMARKS AND NOT TARGET benchmark::benchmark)
  # Optional: without Google Benchmark the benchmarks are left out, with a message.
  find_package(benchmark QUIET CONFIG)    # benchmark::benchmark, benchmark::benchmark_main
  if(NOT benchmark_FOUND)
    message(STATUS "ftm: Google Benchmark not found (libbenchmark-dev): the benchmarks "
                   "(benchmarks/) are left out")
  endif()
endif()
