// Waking waiters: a commit makes the futex wake only when a watcher sleeps, and no
// wake-up is lost, between threads and between processes.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <optional>
#include <span>
#include <thread>

#include <dlfcn.h>
#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

std::atomic<int> futex_wakes{0};
std::atomic<int> futex_waits{0};

}  // namespace

// The engine's futex calls go through syscall(2): this program's own definition counts
// them, then makes the call.
extern "C" long syscall(long number, ...) noexcept {
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (long& v : a)
    v = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_futex) {
    const long op = a[1] & FUTEX_CMD_MASK;
    if (op == FUTEX_WAKE) futex_wakes.fetch_add(1);
    if (op == FUTEX_WAIT) futex_waits.fetch_add(1);
  }
  using real_syscall = long (*)(long, ...);
  static const auto real = reinterpret_cast<real_syscall>(::dlsym(RTLD_NEXT, "syscall"));
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

namespace {

using namespace std::chrono_literals;
using E = ftm::engines::dual_bank;

struct counter {
  std::uint64_t value;
};

struct ping {
  std::uint64_t n;
};

#ifdef FTM_TEST_SANITIZED
constexpr std::uint64_t round_trips = 300;
#else
constexpr std::uint64_t round_trips = 2000;
#endif

/// Sends 1..round_trips on `to` and expects each back on `from`; false if one did not
/// come within 10 s (a lost wake-up sleeps far longer).
bool ping_pong(E& pool, ftm::stable_port<ping> to, ftm::stable_port<ping> from) {
  for (std::uint64_t n = 1; n <= round_trips; ++n) {
    ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, to, ping{n}); });
    const auto back =
        ftm::atomically(pool, [&](auto& tx) { return ftm::receive_for(tx, from, 10s); });
    if (!back || back->n != n) return false;
  }
  return true;
}

/// Answers each ping on `from` with the same on `to`, until `round_trips`.
bool echo(E& pool, ftm::stable_port<ping> from, ftm::stable_port<ping> to) {
  for (std::uint64_t n = 1; n <= round_trips; ++n) {
    const bool ok = ftm::atomically(pool, [&](auto& tx) {
      const auto got = ftm::receive_for(tx, from, 10s);
      if (!got || got->n != n) return false;
      ftm::send(tx, to, *got);
      return true;
    });
    if (!ok) return false;
  }
  return true;
}

std::pair<ftm::stable_port<ping>, ftm::stable_port<ping>> two_ports(E& pool) {
  return ftm::atomically(pool, [](auto& tx) {
    return std::pair{ftm::make_port<ping>(tx, {.capacity = 4}),
                     ftm::make_port<ping>(tx, {.capacity = 4})};
  });
}

}  // namespace

TEST_CASE("a commit makes no futex wake while its watchers are awake") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto x = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0}); });
  // A watcher between its registration and its sleep, as `ftm::atomically` is after a
  // blocking receive aborted and before it waits.
  ftm::transaction<E> watcher(*pool);
  watcher.begin();
  CHECK(watcher.open_read(x)->value == 0);
  const ftm::watch_token token = pool->watch(watcher.id(), x.offset());
  watcher.abort();
  const int wakes = futex_wakes.load();
  const int waits = futex_waits.load();
  ftm::atomically(*pool, [&](auto& tx) { tx.open(x)->value = 1; });
  CHECK(futex_wakes.load() == wakes);  // nobody slept: no system call
  // The watcher sees the change without sleeping.
  CHECK(pool->wait(std::span<const ftm::watch_token>(&token, 1),
                   std::chrono::steady_clock::now() + 10s));
  CHECK(futex_waits.load() == waits);
}

TEST_CASE("a commit wakes a sleeping watcher with a futex wake") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto x = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0}); });
  const int wakes = futex_wakes.load();
  const int waits = futex_waits.load();
  std::thread setter([&] {
    // Paced by the waiter's progress: it is asleep, or counted as a sleeper and about
    // to be, once it called the futex wait.
    for (int i = 0; i < 10000 && futex_waits.load() == waits; ++i)
      std::this_thread::sleep_for(1ms);
    ftm::atomically(*pool, [&](auto& tx) { tx.open(x)->value = 7; });
  });
  const auto seen = ftm::atomically(*pool, [&](auto& tx) {
    const std::uint64_t v = tx.open_read(x)->value;
    if (v == 0) ftm::retry(tx, x);
    return v;
  });
  setter.join();
  CHECK(seen == 7);
  CHECK(futex_wakes.load() > wakes);
}

TEST_CASE("no wake-up is lost in round trips between threads") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto ports = two_ports(*pool);  // not a structured binding: lambdas capture it
  const auto to = ports.first;
  const auto from = ports.second;
  std::atomic<bool> echoed{false};
  std::thread server([&] { echoed = echo(*pool, to, from); });
  const bool answered = ping_pong(*pool, to, from);
  server.join();
  CHECK(answered);
  CHECK(echoed);
}

TEST_CASE("no wake-up is lost in round trips between processes") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto [to, from] = two_ports(*pool);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    int code = 1;
    try {
      code = echo(*pool, to, from) ? 0 : 1;
    } catch (...) {
    }
    ::_exit(code);
  }
  CHECK(ping_pong(*pool, to, from));
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
