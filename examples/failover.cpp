// A stable task under a supervisor: the task counts to 1000 in transactions and its
// process dies three times on the way (once in the middle of a transaction, once by
// hanging without a heartbeat); the supervisor recovers the pool and restarts it
// each time, and the count is exact. Built and run by ctest.
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/supervisor.hpp>

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <thread>

#include <unistd.h>

struct progress {
  std::uint64_t count;
};

// The three failures, one in each of the first three instances.
void fail(ftm::engines::dual_bank& pool, ftm::stable<progress> p, std::uint64_t instance) {
  if (instance == 1) {  // dies in the middle of a transaction: recovery undoes it
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(p)->count += 500;
    ::kill(::getpid(), SIGKILL);
  }
  if (instance == 2) {  // hangs: the lease expires and the supervisor kills it
    for (;;)
      std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::_Exit(3);  // exits with an error status
}

// [snippet:task]
// The entry point runs again from the beginning after each failure, so it finds how
// far it got in the pool, never in its own memory.
void count_to_1000(ftm::engines::dual_bank& pool, ftm::task_context& task) {
  auto p = ftm::atomically(pool, [](auto& tx) { return ftm::root<progress>(tx, "progress"); });
  for (;;) {
    task.heartbeat();  // renews the lease: a task that stops calling it is hung
    const std::uint64_t n = ftm::atomically(pool, [&](auto& tx) {
      auto c = tx.open(p);
      if (c->count < 1000) ++c->count;
      return c->count;
    });
    if (n == 1000) return;  // a normal exit: the task is complete
    if (n % 300 == 0 && task.start_number() == n / 300) fail(pool, p, task.start_number());
  }
}
// [end-snippet]

int main() {
  ftm::engines::dual_bank pool(std::size_t{1} << 20);
  // [snippet:supervise]
  ftm::supervisor sup(pool,
                      {.name = "counter",
                       .lease = std::chrono::milliseconds(200),
                       .intensity = {.max_restarts = 5, .period = std::chrono::seconds(10)}},
                      count_to_1000);
  const ftm::supervision_report report = sup.run();  // returns once the task completes
  fmt::print("{}\n{}\n", report, report.stats);
  // [end-snippet]
  const auto count = ftm::atomically(
      pool, [](auto& tx) { return tx.open_read(ftm::root<progress>(tx, "progress"))->count; });
  const bool ok = report.outcome == ftm::supervision_outcome::completed &&
                  report.stats.restarts == 3 && report.stats.lease_kills == 1 &&
                  report.stats.recovered.undone >= 1 && count == 1000;
  fmt::print("the count is {}: {}\n", count, ok ? "right" : "WRONG");
  return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
