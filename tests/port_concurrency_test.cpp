// Ports under concurrency: several senders and receivers, in threads and in processes.
// Every message is taken by exactly one committed receiver, in order per sender.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using namespace std::chrono_literals;

struct note {
  std::uint32_t sender;  // kStop: ends one receiver
  std::uint32_t seq;
};
constexpr std::uint32_t kStop = 0xffff;

/// The commit order of the receives: each receiving transaction appends what it took,
/// so the log's order is the order in which the receives committed.
struct taken_log {
  std::uint32_t count;
  std::uint32_t by_receiver[8];
  std::array<note, 1024> entries;
};

/// Takes one message and logs it in the same transaction; sometimes aborts after the
/// receive instead (the message must come back). Returns false on the stop message.
template <class E>
bool take_one(E& pool, ftm::stable_port<note> p, ftm::stable<taken_log> log, std::uint32_t me,
              std::uint32_t& aborts_left) {
  for (;;) {
    try {
      return ftm::atomically(pool, [&](auto& tx) {
        const note n = ftm::receive(tx, p);
        if (n.sender == kStop) return false;
        if (aborts_left > 0 && n.seq % 7 == me) {
          --aborts_left;
          throw std::runtime_error("the handler fails");
        }
        auto l = tx.open(log);
        l->entries[l->count++] = n;
        ++l->by_receiver[me];
        return true;
      });
    } catch (const std::runtime_error&) {
      continue;  // the message is back at the head
    }
  }
}

/// Checks the log: every message of every sender exactly once, in order per sender.
void check_log(const taken_log& l, std::uint32_t senders, std::uint32_t per_sender,
               std::uint32_t receivers) {
  REQUIRE(l.count == senders * per_sender);
  std::vector<std::uint32_t> next(senders, 0);
  for (std::uint32_t i = 0; i < l.count; ++i) {
    const note& n = l.entries[i];
    REQUIRE(n.sender < senders);
    // FIFO per sender, and no message twice or lost (the next one expected).
    CHECK_MESSAGE(n.seq == next[n.sender],
                  fmt::format("entry {}: sender {} seq {}, expected seq {}", i, n.sender, n.seq,
                              next[n.sender]));
    next[n.sender] = n.seq + 1;
  }
  std::uint32_t total = 0;
  for (std::uint32_t r = 0; r < receivers; ++r)
    total += l.by_receiver[r];
  CHECK(total == l.count);
}

}  // namespace

TEST_CASE_TEMPLATE("ports: receivers in threads each take a message exactly once, FIFO per sender",
                   E, FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  constexpr std::uint32_t senders = 3, per_sender = 100, receivers = 3;
  const auto made = ftm::atomically(*pool, [](auto& tx) {
    auto p = ftm::make_port<note>(
        tx, {.capacity = 16, .max_deliveries = 0, .on_full = ftm::when_full::block});
    return std::pair{p, tx.create(taken_log{})};
  });
  const auto p = made.first;
  const auto log = made.second;
  std::vector<std::thread> threads;
  std::array<std::uint32_t, receivers> took{};
  for (std::uint32_t r = 0; r < receivers; ++r) {
    threads.emplace_back([&, r] {
      std::uint32_t aborts_left = 5;
      while (take_one(*pool, p, log, r, aborts_left))
        ++took[r];
    });
  }
  for (std::uint32_t s = 0; s < senders; ++s) {
    threads.emplace_back([&, s] {
      for (std::uint32_t k = 0; k < per_sender; ++k)
        ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, p, note{s, k}); });
    });
  }
  for (std::uint32_t s = 0; s < senders; ++s)
    threads[receivers + s].join();
  ftm::atomically(*pool, [&](auto& tx) {
    for (std::uint32_t r = 0; r < receivers; ++r)
      ftm::send(tx, p, note{kStop, 0});
  });
  for (std::uint32_t r = 0; r < receivers; ++r)
    threads[r].join();
  const taken_log l = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(log); });
  check_log(l, senders, per_sender, receivers);
  const auto st = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
  MESSAGE(fmt::format("threads: {}", st));
  CHECK(st.depth == 0);
  CHECK(st.redelivered > 0);  // the failing handlers put messages back
  CHECK(st.received == senders * per_sender + receivers);
}

TEST_CASE_TEMPLATE(
    "ports: receivers in processes each take a message exactly once, woken across processes", E,
    FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  constexpr std::uint32_t senders = 2, per_sender = 100, receivers = 3;
  const auto made = ftm::atomically(*pool, [](auto& tx) {
    auto p = ftm::make_port<note>(
        tx, {.capacity = 8, .max_deliveries = 0, .on_full = ftm::when_full::block});
    return std::pair{p, tx.create(taken_log{})};
  });
  const auto p = made.first;
  const auto log = made.second;
  std::vector<pid_t> children;
  for (std::uint32_t r = 0; r < receivers; ++r) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
      std::uint32_t aborts_left = 3;
      int code = 0;
      try {
        while (take_one(*pool, p, log, r, aborts_left)) {
        }
      } catch (...) {
        code = 1;
      }
      ::_exit(code);
    }
    children.push_back(child);
  }
  // The receivers block on the empty port in their own processes; each send wakes them.
  std::this_thread::sleep_for(20ms);
  std::vector<std::thread> threads;
  for (std::uint32_t s = 0; s < senders; ++s) {
    threads.emplace_back([&, s] {
      for (std::uint32_t k = 0; k < per_sender; ++k)
        ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, p, note{s, k}); });
    });
  }
  for (auto& t : threads)
    t.join();
  ftm::atomically(*pool, [&](auto& tx) {
    for (std::uint32_t r = 0; r < receivers; ++r)
      ftm::send(tx, p, note{kStop, 0});
  });
  for (const pid_t child : children) {
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  const taken_log l = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(log); });
  check_log(l, senders, per_sender, receivers);
  const auto st = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
  MESSAGE(fmt::format("processes: {}", st));
  CHECK(st.depth == 0);
}
