#ifndef FTM_TOOLS_BENCH_SYSTEM_HPP
#define FTM_TOOLS_BENCH_SYSTEM_HPP

/// \file
/// What the runner needs of a system under test (ftm on an engine, or a peer such as
/// SQLite): state made fresh for each run, a worker per thread that runs one
/// transaction at a time, its abort counts, and the check of the workload's invariant
/// at the end.

#include "options.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>

namespace bench {

/// A worker's random numbers (SplitMix64: fast, and good enough to pick keys).
class random {
 public:
  explicit random(std::uint64_t seed) noexcept : state_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n), n > 0.
  std::uint64_t below(std::uint64_t n) noexcept {
    return next() % n;  // the bias, below n / 2^64, is far under any measurement's noise
  }
  /// Uniform in [0, 1).
  double unit() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  std::uint64_t state_;
};

/// Picks an object among `n`: with the `--hot F:P` option, a share P of the picks
/// fall among the first share F of the objects.
inline std::uint64_t pick(random& r, std::uint64_t n, const options& o) noexcept {
  if (o.hot_probability > 0 && r.unit() < o.hot_probability) {
    const auto hot = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(static_cast<double>(n) * o.hot_fraction));
    return r.below(hot);
  }
  return r.below(n);
}

/// Aborts and retries a system counted during a run (from the engine's own counters).
struct abort_counts {
  std::uint64_t aborts = 0;
  std::uint64_t conflicts = 0;
  std::uint64_t retries = 0;
};

/// Runs one transaction of the workload at a time, in one thread.
class worker {
 public:
  virtual ~worker() = default;
  /// Runs one transaction; returns true if it was read-only. Throws on an error that
  /// must end the run (a conflict is retried inside, as `ftm::atomically` does).
  virtual bool run_one(random& r) = 0;
};

struct check_result {
  bool ok = true;
  std::string message;  // what was verified, or what was wrong
};

class system {
 public:
  virtual ~system() = default;
  /// The row's name, e.g. "ftm dual_bank" or "sqlite (synchronous=FULL)".
  [[nodiscard]] virtual std::string name() const = 0;
  /// Makes the state of one run for `workers` workers in all, in the parent, before
  /// any worker process is forked.
  virtual void setup(int workers) = 0;
  /// A worker, made in its own thread (and, with --processes, its own process).
  virtual std::unique_ptr<worker> make_worker(int index) = 0;
  /// Aborts, conflicts and retries so far, if the system counts them.
  virtual std::optional<abort_counts> aborts() = 0;
  /// Verifies the workload's invariant after every worker ended; `writes` is the
  /// number of writing transactions the workers committed (warm-up included).
  virtual check_result check(std::uint64_t writes) = 0;
  /// Frees the run's state (removes files).
  virtual void teardown() = 0;
  /// Whether workers may run in several processes.
  [[nodiscard]] virtual bool forkable() const { return true; }
  /// The pid of a server process whose CPU time counts for the run, or 0.
  [[nodiscard]] virtual int server_pid() const { return 0; }
};

/// The ftm system for the options' engine and workload (ftm_system.cpp).
std::unique_ptr<system> make_ftm_system(const options& o);
/// The ftm system for a YCSB workload (ftm_ycsb.cpp).
std::unique_ptr<system> make_ftm_ycsb_system(const options& o);
/// A peer by name ("sqlite", "lmdb"), or nothing if this build has none of that name
/// (peers.cpp).
std::unique_ptr<system> make_peer(const std::string& name, const options& o);

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_SYSTEM_HPP
