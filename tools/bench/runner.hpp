#ifndef FTM_TOOLS_BENCH_RUNNER_HPP
#define FTM_TOOLS_BENCH_RUNNER_HPP

/// \file
/// One run: a system's workers in threads (and processes), a warm-up, a measured
/// phase by time or by count, the invariant checked at the end.

#include "histogram.hpp"
#include "options.hpp"
#include "system.hpp"

#include <cstdint>
#include <string>

namespace bench {

/// What one run measured.
struct run_result {
  std::string system;
  int threads = 1;    // worker threads per process
  int processes = 1;  // worker processes
  int workers = 1;    // threads * processes
  double seconds = 0;
  std::uint64_t transactions = 0;  // measured, committed
  std::uint64_t read_only = 0;     // of those
  bool counts_aborts = false;      // whether the system reports the three below
  std::uint64_t aborts = 0;
  std::uint64_t conflicts = 0;
  std::uint64_t retries = 0;
  double cpu_seconds = 0;  // workers' CPU time (and a server's) in the measured phase
  histogram latency;       // nanoseconds per transaction, as each worker saw them
  bool checked = false;
  check_result check;

  [[nodiscard]] double throughput() const noexcept {
    return seconds > 0 ? static_cast<double>(transactions) / seconds : 0.0;
  }
};

/// Runs `sys` with `threads` worker threads in each of `o.processes` processes.
/// Throws `std::runtime_error` if a worker failed.
run_result run(system& sys, const options& o, int threads);

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_RUNNER_HPP
