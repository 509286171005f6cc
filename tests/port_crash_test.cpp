// Ports and processes that die: a sender killed while committing leaves its message
// to recovery, and recovery wakes the receiver it never woke.
#include "engines.hpp"

#include <ftm/detail/fault.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

#if !defined(FTM_FAULT_INJECTION) || !FTM_FAULT_INJECTION
#error "the port crash tests need the fault points: compile with FTM_FAULT_INJECTION=1"
#endif

namespace {
struct job {
  std::uint32_t id;
};
}  // namespace

using namespace std::chrono_literals;

TEST_CASE_TEMPLATE("ports: recovery wakes a receiver whose sender died while committing", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = ftm::atomically(*pool, [](auto& tx) { return ftm::make_port<job>(tx); });
  int go[2];
  REQUIRE(::pipe(go) == 0);
  // The sender is forked before any thread starts; it waits for the word.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    char c = 0;
    if (::read(go[0], &c, 1) != 1) ::_exit(2);
    // Dies with its commit decided and the second bank written, locks still held,
    // before it wakes anyone.
    ftm::detail::arm_fault("commit.before_release", 1);
    ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, p, job{42}); });
    ::_exit(3);  // not reached
  }
  std::optional<job> got;
  std::chrono::steady_clock::duration waited{};
  std::atomic<pid_t> receiver_tid{0};
  std::thread receiver([&] {
    receiver_tid.store(::gettid());
    const auto t0 = std::chrono::steady_clock::now();
    got = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive_for(tx, p, 60s); });
    waited = std::chrono::steady_clock::now() - t0;
  });
  // The receiver sleeps on the empty port before the sender starts: waited for by its
  // state, not for a time a loaded machine may not keep (bounded: it fails, not hangs).
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (receiver_tid.load() == 0 ||
         ftm::detail::read_proc_stat(receiver_tid.load()).state != 'S') {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until,
                    "the receiver did not go to sleep on the empty port within 30 s");
    std::this_thread::sleep_for(1ms);
  }
  const char c = 1;
  REQUIRE(::write(go[1], &c, 1) == 1);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFSIGNALED(status));
  std::this_thread::sleep_for(100ms);
  const ftm::recovery_report r = pool->recover();
  CHECK(r.redone == 1);
  receiver.join();
  REQUIRE(got.has_value());
  CHECK(got->id == 42);
  // Woken by recovery, not by its 60 s timeout.
  CHECK(waited < 30s);
  ::close(go[0]);
  ::close(go[1]);
}
