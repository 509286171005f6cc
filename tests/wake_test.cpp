// Waking waiters: a commit makes the futex wake only when a watcher sleeps, wakes only
// the sleepers of the buckets it wrote, and no wake-up is lost, between threads and
// between processes, nor after a sleeper was killed.
#include "engines.hpp"

#include <ftm/detail/bank_format.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

std::atomic<int> futex_wakes{0};
std::atomic<int> futex_waits{0};
std::atomic<long> futex_woken{0};  // the sum of what the wakes returned: sleepers woken

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
  const long op = number == SYS_futex ? a[1] & FUTEX_CMD_MASK : -1;
  if (op == FUTEX_WAKE) futex_wakes.fetch_add(1);
  if (op == FUTEX_WAIT) futex_waits.fetch_add(1);
  using real_syscall = long (*)(long, ...);
  static const auto real = reinterpret_cast<real_syscall>(::dlsym(RTLD_NEXT, "syscall"));
  const long r = real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
  if (op == FUTEX_WAKE && r > 0) futex_woken.fetch_add(r);
  return r;
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

/// Whether thread `tid` of process `pid` is blocked in a shared FUTEX_WAIT (the
/// engine's; glibc's locks use private futexes), from /proc.
bool asleep_in_futex(pid_t pid, pid_t tid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/syscall");
  long nr = -1;
  std::string addr;
  std::string op;
  if (!(f >> nr >> addr >> op) || nr != SYS_futex) return false;
  const long o = std::stol(op, nullptr, 16);
  return (o & FUTEX_CMD_MASK) == FUTEX_WAIT && (o & FUTEX_PRIVATE_FLAG) == 0;
}

/// Waits (at most 10 s, paced by its progress) until `tid` sleeps in the engine's wait.
bool until_asleep(pid_t pid, const std::atomic<pid_t>& tid) {
  for (int i = 0; i < 10000; ++i) {
    if (tid.load() != 0 && asleep_in_futex(pid, tid.load())) return true;
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

/// A watch of `x`, unregistered at once: its slot names x's bucket, `seen` its word.
ftm::watch_token watched_once(E& pool, ftm::stable<counter> x) {
  ftm::transaction<E> t(pool);
  t.begin();
  t.open_read(x);
  const ftm::watch_token token = pool.watch(t.id(), x.offset());
  t.abort();
  pool.wait(std::span<const ftm::watch_token>(&token, 1), std::chrono::steady_clock::now());
  return token;
}

std::uint32_t bucket_of(E& pool, ftm::stable<counter> x) { return watched_once(pool, x).slot; }

/// `n` counters, each in a watch bucket of its own.
std::vector<ftm::stable<counter>> in_distinct_buckets(E& pool, std::size_t n) {
  std::vector<ftm::stable<counter>> out;
  std::vector<std::uint32_t> buckets;
  for (int i = 0; i < 1000 && out.size() < n; ++i) {
    const auto c = ftm::atomically(pool, [](auto& tx) { return tx.create(counter{0}); });
    const std::uint32_t b = bucket_of(pool, c);
    if (std::find(buckets.begin(), buckets.end(), b) != buckets.end()) continue;
    buckets.push_back(b);
    out.push_back(c);
  }
  REQUIRE(out.size() == n);
  return out;
}

/// Waits in a transaction until one of `objects` is not 0; counts the transaction's
/// runs in `runs` and records the thread's id in `tid`.
std::uint64_t sleep_on(E& pool, std::vector<ftm::stable<counter>> objects, std::atomic<int>& runs,
                       std::atomic<pid_t>& tid) {
  tid = static_cast<pid_t>(::syscall(SYS_gettid));
  return ftm::atomically(pool, [&](auto& tx) {
    ++runs;
    std::uint64_t sum = 0;
    for (const auto& o : objects)
      sum += tx.open_read(o)->value;
    if (sum == 0) ftm::retry(tx);
    return sum;
  });
}

/// A thread of this process in `sleep_on(objects)`, asleep in the futex once made.
struct sleeper {
  std::atomic<int> runs{0};
  std::atomic<pid_t> tid{0};
  std::thread thread;

  sleeper(E& pool, std::vector<ftm::stable<counter>> objects)
      : thread([this, &pool, objects] { sleep_on(pool, objects, runs, tid); }) {
    REQUIRE(until_asleep(::getpid(), tid));
  }
  [[nodiscard]] bool asleep() const { return asleep_in_futex(::getpid(), tid); }
};

void set(E& pool, ftm::stable<counter> x, std::uint64_t v) {
  ftm::atomically(pool, [&](auto& tx) { tx.open(x)->value = v; });
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

TEST_CASE("a commit wakes only the sleepers of the buckets it wrote") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto o = in_distinct_buckets(*pool, 2);
  const auto x = o[0], y = o[1];
  sleeper on_x(*pool, {x});
  sleeper on_y(*pool, {y});
  const long woken = futex_woken.load();
  set(*pool, y, 1);
  on_y.thread.join();
  // y's sleeper alone: with one word for the pool, x's was woken too (2).
  CHECK(futex_woken.load() - woken == 1);
  CHECK(on_x.asleep());
  set(*pool, x, 1);
  on_x.thread.join();
  CHECK(on_x.runs == 2);  // the first run, then the one after x changed
  CHECK(on_y.runs == 2);
}

TEST_CASE("a sleeper spread over several buckets wakes only for its own") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto o = in_distinct_buckets(*pool, 3);
  const auto x = o[0], y = o[1], z = o[2];
  sleeper on_xz(*pool, {x, z});
  sleeper on_y(*pool, {y});
  const long woken = futex_woken.load();
  set(*pool, y, 1);
  on_y.thread.join();
  CHECK(futex_woken.load() - woken == 1);
  CHECK(on_xz.asleep());
  set(*pool, z, 1);
  on_xz.thread.join();
  CHECK(on_xz.runs == 2);
}

TEST_CASE("a sleeper killed in its wait leaves the other sleepers' waking intact") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto o = in_distinct_buckets(*pool, 2);
  const auto x = o[0], y = o[1];
  // Shared with the child, which records its id there.
  auto* child_tid = static_cast<std::atomic<pid_t>*>(::mmap(nullptr, sizeof(std::atomic<pid_t>),
                                                            PROT_READ | PROT_WRITE,
                                                            MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(child_tid != MAP_FAILED);
  ::new (child_tid) std::atomic<pid_t>(0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    std::atomic<int> runs{0};
    try {
      sleep_on(*pool, {x}, runs, *child_tid);
    } catch (...) {
    }
    ::_exit(1);  // x never changes while the child lives
  }
  REQUIRE(until_asleep(child, *child_tid));
  ::kill(child, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  // Its counts stay behind in x's bucket: commits there pay a wake for nothing, and
  // every sleeper still wakes for its own object, and only for it.
  sleeper on_x(*pool, {x});
  sleeper on_y(*pool, {y});
  const long woken = futex_woken.load();
  set(*pool, x, 1);
  on_x.thread.join();
  CHECK(futex_woken.load() - woken == 1);
  CHECK(on_y.asleep());
  set(*pool, y, 1);
  on_y.thread.join();
  CHECK(on_x.runs == 2);
  CHECK(on_y.runs == 2);
  ::munmap(child_tid, sizeof(std::atomic<pid_t>));
}

namespace {

/// Whether a commit to `x`, which nobody watches, bumped its bucket's word: it does only
/// while a registration is left in that bucket, one that no wait will ever take back.
bool commit_finds_a_watcher(E& pool, ftm::stable<counter> x) {
  const std::uint32_t before = watched_once(pool, x).seen;
  ftm::atomically(pool, [&](auto& tx) { ++tx.open(x)->value; });
  return watched_once(pool, x).seen != before;
}

struct amount {
  std::uint64_t n;
};

}  // namespace

TEST_CASE("calls, blocking receives and retries leave no watcher registered") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto probes = in_distinct_buckets(*pool, ftm::detail::bank_layout::watch_buckets);
  for (const auto& p : probes)
    REQUIRE_FALSE(commit_finds_a_watcher(*pool, p));
  {
    // The probe sees a registration left behind, until a wait takes it back.
    ftm::transaction<E> t(*pool);
    t.begin();
    t.open_read(probes[0]);
    const ftm::watch_token token = pool->watch(t.id(), probes[0].offset());
    t.abort();
    CHECK(commit_finds_a_watcher(*pool, probes[0]));
    pool->wait(std::span<const ftm::watch_token>(&token, 1), std::chrono::steady_clock::now());
    CHECK_FALSE(commit_finds_a_watcher(*pool, probes[0]));
  }
  // Contended waits: clients and a server whose transactions conflict on their ports,
  // and retries on a counter that another thread keeps changing.
  const auto [service, total] = ftm::atomically(*pool, [](auto& tx) {
    return std::pair{ftm::make_port<ftm::call_request<amount, amount>>(tx, {.capacity = 4}),
                     tx.create(counter{0})};
  });
  std::jthread server([&, service = service, total = total](std::stop_token stop) {
    ftm::serve(
        *pool, service,
        [&](ftm::transaction<E>& tx, const amount& a) {
          return amount{tx.open(total)->value += a.n};
        },
        stop);
  });
  constexpr int clients = 3;
  const int calls = ftm_test::sanitizer_divisor > 1 ? 100 : 400;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, service = service] {
      const auto replies = ftm::atomically(
          *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<amount>>(tx); });
      for (int k = 0; k < calls; ++k)
        static_cast<void>(ftm::call(*pool, service, replies, amount{1}));
    });
  }
  // A waiter that retries until the total passes each tenth.
  threads.emplace_back([&, total = total] {
    for (std::uint64_t goal = 1; goal <= clients * calls; goal += clients * calls / 10) {
      ftm::atomically(*pool, [&](auto& tx) {
        if (tx.open_read(total)->value < goal) ftm::retry(tx);
      });
    }
  });
  for (auto& t : threads)
    t.join();
  server.request_stop();
  server.join();
  CHECK(ftm::atomically(*pool, [&, total = total](auto& tx) {
          return tx.open_read(total)->value;
        }) == clients * calls);
  int left = 0;
  for (const auto& p : probes)
    left += commit_finds_a_watcher(*pool, p) ? 1 : 0;
  CHECK_MESSAGE(left == 0,
                fmt::format("{} of {} watch buckets keep a registration", left, probes.size()));
}
