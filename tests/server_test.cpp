// Reliable servers: serve() answers each call in one transaction, call() waits for the
// reply with its id; a server killed while handling a call is replaced, and the call
// takes effect exactly once.
#include "engines.hpp"
#include "supervision.hpp"

#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <set>
#include <stop_token>
#include <thread>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using namespace std::chrono_literals;

struct deposit {
  std::uint32_t account;
  std::int64_t amount;
};

struct receipt {
  std::int64_t balance;
  std::uint64_t handled;  // the server's count of calls handled, including this one
};

struct bank {
  std::int64_t balance[4];
  std::uint64_t handled;
};

template <class E>
auto bank_handler(ftm::stable<bank> b) {
  return [b](ftm::transaction<E>& tx, const deposit& d) {
    auto acc = tx.open(b);
    acc->balance[d.account] += d.amount;
    ++acc->handled;
    return receipt{acc->balance[d.account], acc->handled};
  };
}

}  // namespace

TEST_CASE_TEMPLATE("servers: every call is answered once, with its own reply", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  using service = ftm::service_port<deposit, receipt>;
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(bank{}); });
  const service port = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::call_request<deposit, receipt>>(tx); });
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, port, bank_handler<E>(b), stop); });
  constexpr int clients = 3, calls = 30;
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  std::vector<std::vector<std::uint64_t>> handled(clients);
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // One reply port per client.
      const auto replies = ftm::atomically(
          *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<receipt>>(tx); });
      std::int64_t expected = 0;
      for (int k = 0; k < calls; ++k) {
        const receipt r =
            ftm::call(*pool, port, replies, deposit{static_cast<std::uint32_t>(c), k});
        expected += k;
        if (r.balance != expected) ++wrong;  // only this client touches its account
        handled[c].push_back(r.handled);
      }
    });
  }
  for (auto& t : threads)
    t.join();
  server.request_stop();
  server.join();
  CHECK(wrong == 0);
  const bank end = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(b); });
  CHECK(end.handled == clients * calls);
  std::set<std::uint64_t> all;
  for (const auto& h : handled)
    all.insert(h.begin(), h.end());
  CHECK(all.size() == clients * calls);  // each reply answers a different handling
  const auto st = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, port); });
  CHECK(st.depth == 0);
  CHECK(st.received == clients * calls);
}

TEST_CASE_TEMPLATE("servers: call and serve wait for a message outside any transaction", E,
                   FTM_TEST_ENGINES) {
  // A blocking receive that finds its port empty aborts its transaction to wait. A
  // client that waits for its reply, and a server that waits for its next request,
  // look first in a read-only transaction that commits, and wait after it: with no
  // conflict possible here, nothing aborts.
  auto pool = ftm_test::engine_factory<E>::make();
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(bank{}); });
  const auto port = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::call_request<deposit, receipt>>(tx); });
  const auto replies = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<receipt>>(tx); });
  const ftm::engine_stats before = pool->stats();
  std::optional<receipt> got;
  std::thread client([&] { got = ftm::call(*pool, port, replies, deposit{2, 7}); });
  std::this_thread::sleep_for(50ms);  // the client waits for its reply before a server runs
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, port, bank_handler<E>(b), stop); });
  client.join();
  std::this_thread::sleep_for(20ms);  // the server waits for the next request
  server.request_stop();
  server.join();
  REQUIRE(got.has_value());
  CHECK(got->balance == 7);
  const ftm::engine_stats after = pool->stats();
  CHECK(after.commits > before.commits);
  CHECK(after.aborts == before.aborts);
}

TEST_CASE_TEMPLATE(
    "servers: a server killed while handling a call is replaced; the call happens once", E,
    FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(bank{}); });
  const auto port = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::call_request<deposit, receipt>>(tx); });
  const auto replies = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<receipt>>(tx); });
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  // The first server dies in the middle of its first call, after the handler's writes.
  const pid_t first = ::fork();
  REQUIRE(first >= 0);
  if (first == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    auto handler = [&](ftm::transaction<E>& tx, const deposit& d) {
      const receipt r = bank_handler<E>(b)(tx, d);
      const char c = 1;
      (void)!::write(ready[1], &c, 1);
      ::pause();  // killed here
      return r;
    };
    ftm::serve(*pool, port, handler);
    ::_exit(0);
  }
  std::optional<receipt> got;
  std::thread client([&] { got = ftm::call_for(*pool, port, replies, deposit{1, 50}, 20s); });
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  ::kill(first, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(first, &status, 0) == first);
  CHECK(pool->recover().undone == 1);
  // The backup: a new server on the same port.
  std::jthread backup(
      [&](std::stop_token stop) { ftm::serve(*pool, port, bank_handler<E>(b), stop); });
  client.join();
  backup.request_stop();
  backup.join();
  REQUIRE(got.has_value());
  CHECK(got->balance == 50);
  CHECK(got->handled == 1);
  const bank end = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(b); });
  CHECK(end.balance[1] == 50);  // the killed server's deposit was undone, then redone once
  CHECK(end.handled == 1);
  const auto st = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, port); });
  CHECK(st.redelivered == 1);
  CHECK(st.depth == 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE_TEMPLATE("servers: an idle server under a supervisor with a lease keeps its lease", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  // Issue 8, item 10: serve() never renewed the heartbeat lease while it waited, so an
  // idle server was killed as hung every lease period.
  auto pool = ftm_test::engine_factory<E>::make();
  using service = ftm::service_port<deposit, receipt>;
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(bank{}); });
  const service port = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::call_request<deposit, receipt>>(tx); });
  const auto replies = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<receipt>>(tx); });
  // A generous lease: a renewal every quarter lease misses it only after a stall of
  // three quarters of a second.
  constexpr auto lease = 1000ms;
  ftm::supervisor<E> sup(
      *pool, {.name = "server", .lease = lease, .intensity = {.max_restarts = 100, .period = 60s}},
      [port, b](E& engine) { ftm::serve(engine, port, bank_handler<E>(b)); });
  ftm_test::running_supervisor<E> runner(sup);
  // Progress: the server answered, so it runs and now waits for the next request.
  const auto first = ftm::call_for(*pool, port, replies, deposit{0, 1}, 60s);
  REQUIRE(first.has_value());
  CHECK(first->balance == 1);
  std::this_thread::sleep_for(3 * lease + lease / 2);  // idle for several lease periods
  const auto second = ftm::call_for(*pool, port, replies, deposit{0, 2}, 60s);
  sup.stop();
  const ftm::supervision_report report = runner.join();
  MESSAGE(fmt::format("{}\n{}", report, report.stats));
  REQUIRE(second.has_value());
  CHECK(second->balance == 3);
  CHECK(report.stats.lease_kills == 0);
  CHECK(report.stats.starts == 1);
  CHECK(report.outcome == ftm::supervision_outcome::stopped);
}

TEST_CASE("a supervised task blocked in receive under a lease keeps its lease") {
  // The class of item 10: every blocking operation in ftm::atomically (receive, retry,
  // a send to a full port) waits in slices of the lease and renews it.
  using E = ftm::engines::dual_bank;
  auto pool = ftm_test::engine_factory<E>::make();
  struct inbox {
    std::uint64_t started;
    std::int64_t got;
  };
  const auto box = ftm::atomically(*pool, [](auto& tx) { return tx.create(inbox{}); });
  const auto port = ftm::atomically(*pool, [](auto& tx) { return ftm::make_port<deposit>(tx); });
  constexpr auto lease = 1000ms;
  ftm::supervisor<E> sup(
      *pool,
      {.name = "receiver", .lease = lease, .intensity = {.max_restarts = 100, .period = 60s}},
      [port, box](E& engine) {
        ftm::atomically(engine, [&](auto& tx) { tx.open(box)->started += 1; });
        ftm::atomically(engine,
                        [&](auto& tx) { tx.open(box)->got = ftm::receive(tx, port).amount; });
      });
  ftm_test::running_supervisor<E> runner(sup);
  auto read_box = [&] {
    return ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(box); });
  };
  // Progress: the task started, and goes on to wait on the empty port.
  for (int i = 0; i < 6000 && read_box().started == 0; ++i)
    std::this_thread::sleep_for(10ms);
  REQUIRE(read_box().started != 0);
  std::this_thread::sleep_for(3 * lease + lease / 2);  // blocked for several lease periods
  ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, port, deposit{0, 42}); });
  const ftm::supervision_report report = runner.join();
  MESSAGE(fmt::format("{}\n{}", report, report.stats));
  CHECK(report.outcome == ftm::supervision_outcome::completed);
  CHECK(report.stats.lease_kills == 0);
  CHECK(read_box().started == 1);
  CHECK(read_box().got == 42);
}
