// Ports and processes that die: a sender killed while committing leaves its message
// to recovery, and recovery wakes the receiver it never woke; a process killed at any
// of the ports' fault points loses and repeats no message.
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
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

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

namespace {
/// What a port's receives took, logged in their own transactions: a message taken
/// twice or lost shows here.
struct receipts {
  std::uint32_t count;
  std::uint32_t ids[64];
};

/// The child's work, in which every port fault point is reached: sends that make the
/// port's blocks, receives that abort (counting deliveries) and that commit (moving the
/// head hint on), and a poison message buried.
template <class E>
void port_workload(E& pool, ftm::stable_port<job> p, ftm::stable<receipts> log) {
  // 20 sends: blocks are made 16 at a time (`blocks_made_at_once`), twice here.
  for (std::uint32_t id = 0; id < 20; ++id)
    ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, p, job{id}); });
  for (int k = 0; k < 3; ++k) {
    ftm::transaction tx{pool};
    tx.begin();
    static_cast<void>(ftm::try_receive(tx, p));
    tx.abort();
  }
  for (int k = 0; k < 12; ++k) {
    ftm::atomically(pool, [&](auto& tx) {
      if (auto m = ftm::try_receive(tx, p)) {
        auto l = tx.open(log);
        l->ids[l->count++] = m->id;
      }
    });
  }
}
}  // namespace

namespace {
/// Kills a child running `port_workload` at the `hit`-th pass of `point`, recovers, and
/// checks that no message was lost or taken twice and that the port still works. False
/// if the child ran to its end without reaching the point that often.
template <class E>
bool killed_at(std::string_view point, std::uint64_t hit) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto made = ftm::atomically(*pool, [](auto& tx) {
    auto dead = ftm::make_port<job>(tx, {.capacity = 16, .max_deliveries = 0});
    auto p = ftm::make_port<job>(tx, {.capacity = 40, .max_deliveries = 3}, dead);
    return std::tuple{p, dead, tx.create(receipts{})};
  });
  const auto p = std::get<0>(made);
  const auto dead = std::get<1>(made);
  const auto log = std::get<2>(made);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    ftm::detail::arm_fault(point, hit);
    port_workload(*pool, p, log);
    ::_exit(3);  // the point was not reached that often
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  if (WIFEXITED(status)) {
    REQUIRE(WEXITSTATUS(status) == 3);
    return false;
  }
  REQUIRE(WIFSIGNALED(status));
  pool->recover();
  CHECK(pool->check().ok());
  // Every message sent is taken once: by the child (logged), or now, from the port or
  // its dead-letter port.
  const auto st = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
  CHECK(st.sent == st.received + st.dead_lettered + st.depth);
  std::vector<int> seen(st.sent, 0);
  const receipts r = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(log); });
  for (std::uint32_t i = 0; i < r.count; ++i)
    ++seen.at(r.ids[i]);
  for (const auto port : {p, dead}) {
    while (const auto m =
               ftm::atomically(*pool, [&](auto& tx) { return ftm::try_receive(tx, port); })) {
      ++seen.at(m->id);
    }
  }
  for (std::size_t id = 0; id < seen.size(); ++id)
    CHECK_MESSAGE(seen[id] == 1, "message ", id, " taken ", seen[id], " times");
  // The port still works: a send and a receive.
  ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, p, job{99}); });
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return ftm::try_receive(tx, p); })->id == 99);
  return true;
}
}  // namespace

TEST_CASE_TEMPLATE("ports: a process killed at any port fault point loses and repeats no message",
                   E, FTM_TEST_ENGINES) {
  // The ports' own points, each at its first and second pass.
  for (const std::string_view point : ftm::detail::port_fault_point_names) {
    for (const std::uint64_t hit : {std::uint64_t{1}, std::uint64_t{2}}) {
      const std::string name(point);
      CAPTURE(name);
      CAPTURE(hit);
      CHECK_MESSAGE(killed_at<E>(point, hit), "the workload did not reach ", name);
    }
  }
  // The engine's points about a lock and a commit, at every pass the workload makes:
  // a receive's lock taken without waiting (`try_open_write`) has the same windows.
  for (const std::string_view point :
       {std::string_view{"lock.after_log_entry"}, std::string_view{"open.after_lock"},
        std::string_view{"commit.after_mark"}}) {
    std::uint64_t hit = 1;
    while (killed_at<E>(point, hit))
      hit += 3;
    const std::string name(point);
    CAPTURE(name);
    CHECK(hit > 10);  // the workload passes each many times
  }
}
