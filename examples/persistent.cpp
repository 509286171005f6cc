// A counter in a pool file: each run opens the pool again and adds one, and a run
// killed in the middle of its transaction leaves no trace. Built and run by ctest.
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <sys/wait.h>
#include <unistd.h>

struct counter {
  std::uint64_t runs;
};

// One run of the program: open the pool (recovering what a killed run left), count.
std::uint64_t run_once(const std::filesystem::path& file, bool die_mid_transaction) {
  // [snippet:persistent]
  auto pool = ftm::engines::pmem::open_or_create(file);
  fmt::print("opened {} (recovered: {})\n", file.string(), pool.opening_recovery());
  auto runs = ftm::atomically(pool, [](auto& tx) { return ftm::root<counter>(tx, "runs"); });
  // [end-snippet]
  std::fflush(stdout);  // runs end with _exit or SIGKILL, which flush nothing
  if (die_mid_transaction) {
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(runs)->runs += 1000;  // never committed: the process dies first
    ::kill(::getpid(), SIGKILL);
  }
  return ftm::atomically(pool, [&](auto& tx) {
    auto c = tx.open(runs);
    return ++c->runs;
  });
}

int main(int argc, char** argv) {
  const std::filesystem::path file = argc > 1
                                         ? std::filesystem::path(argv[1])
                                         : std::filesystem::temp_directory_path() /
                                               fmt::format("ftm-persistent-{}.ftm", ::getpid());
  std::filesystem::remove(file);
  bool ok = true;
  for (std::uint64_t expected = 1; expected <= 3; ++expected) {
    // Each run is a separate process, as it would be after a restart.
    std::fflush(stdout);
    const pid_t run = ::fork();
    if (run == 0) ::_exit(run_once(file, false) == expected ? 0 : 1);
    int status = 0;
    ::waitpid(run, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (expected == 2) {
      std::fflush(stdout);
      const pid_t doomed = ::fork();
      if (doomed == 0) ::_exit(static_cast<int>(run_once(file, true)));
      ::waitpid(doomed, &status, 0);
      fmt::print("a run was killed mid-transaction (signal {})\n", WTERMSIG(status));
    }
  }
  const std::uint64_t last = run_once(file, false);
  fmt::print("the counter says {} runs: {}\n", last, last == 4 ? "right" : "WRONG");
  std::filesystem::remove(file);

  // A pool whose commits survive a power loss: each returns once it is on the disk.
  const std::filesystem::path power_file = file.string() + ".power";
  std::uint64_t durable_runs = 0;
  for (int i = 0; i < 2; ++i) {
    // [snippet:power]
    auto pool = ftm::engines::pmem::open_or_create(
        power_file, {.bank_size = std::size_t{1} << 20, .level = ftm::durability::power});
    durable_runs = ftm::atomically(pool, [](auto& tx) {
      return ++tx.open(ftm::root<counter>(tx, "runs"))->runs;  // on the disk when this returns
    });
    // [end-snippet]
  }
  fmt::print("the power pool counts {} runs: {}\n", durable_runs,
             durable_runs == 2 ? "right" : "WRONG");
  std::filesystem::remove(power_file);
  std::filesystem::remove(power_file.string() + ".wal");
  return ok && last == 4 && durable_runs == 2 ? EXIT_SUCCESS : EXIT_FAILURE;
}
