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
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
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

// ---- services: idempotency keys, error replies, dead letters -----------------------

namespace {

using bank_service = ftm::service<deposit, receipt>;

template <class E>
struct service_world {
  ftm::stable<bank> b;
  bank_service svc;
  ftm::reply_port<receipt> replies;
};

template <class E>
service_world<E> make_service_world(E& pool, ftm::service_options options = {}) {
  return ftm::atomically(pool, [&](auto& tx) {
    service_world<E> w;
    w.b = tx.create(bank{});
    w.svc = ftm::make_service<deposit, receipt>(tx, options);
    w.replies = ftm::make_port<ftm::reply_to_call<receipt>>(tx);
    return w;
  });
}

/// A bank handler that throws `std::domain_error` for a negative amount (after its
/// writes: the abort must undo them) and counts its runs outside the pool.
template <class E>
auto strict_handler(ftm::stable<bank> b, std::atomic<int>& runs) {
  return [b, &runs](ftm::transaction<E>& tx, const deposit& d) {
    ++runs;
    const receipt r = bank_handler<E>(b)(tx, d);
    if (d.amount < 0) throw std::domain_error(fmt::format("no withdrawals ({})", d.amount));
    return r;
  };
}

}  // namespace

TEST_CASE_TEMPLATE("services: a key re-sent gets the recorded reply and is applied once", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.window = 4});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  const ftm::call_key k1{7, 1}, k2{7, 2};
  const receipt first = ftm::call(*pool, w.svc, w.replies, k1, deposit{0, 10});
  CHECK(first.balance == 10);
  // The same key again, even with another body: the recorded reply, no second deposit.
  const receipt again = ftm::call(*pool, w.svc, w.replies, k1, deposit{0, 10});
  CHECK(again.balance == first.balance);
  CHECK(again.handled == first.handled);
  CHECK(ftm::call(*pool, w.svc, w.replies, k2, deposit{0, 5}).balance == 15);
  // Another client's sequence numbers are its own.
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{8, 1}, deposit{1, 3}).balance == 3);
  CHECK(runs == 3);
  // The outcome of each key, as a restarted client asks it.
  const auto o1 = ftm::outcome_of(*pool, w.svc, k1);
  CHECK(o1.outcome == ftm::key_outcome::applied);
  CHECK(o1.reply.balance == 10);
  CHECK(o1.reply.handled == first.handled);
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::call_key{7, 3}).outcome ==
        ftm::key_outcome::not_applied);
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::call_key{9, 1}).outcome ==
        ftm::key_outcome::not_applied);
  // A window of 4: once #6 is applied, #1 and #2 are too old to know.
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{7, 6}, deposit{0, 1}).balance == 16);
  CHECK(ftm::outcome_of(*pool, w.svc, k1).outcome == ftm::key_outcome::too_old);
  CHECK(ftm::outcome_of(*pool, w.svc, k2).outcome == ftm::key_outcome::too_old);
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::call_key{7, 3}).outcome ==
        ftm::key_outcome::not_applied);  // #3 to #6 are within the window
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, k1, deposit{0, 10}), ftm::key_too_old);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, ftm::call_key{7, 2}, deposit{0, 10}),
                  ftm::key_too_old);
  // #3 was never applied and is within the window: it is applied now, once.
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{7, 3}, deposit{0, 2}).balance == 18);
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{7, 3}, deposit{0, 2}).balance == 18);
  CHECK(runs == 5);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, ftm::call_key{0, 1}, deposit{0, 1}),
                  ftm::invalid_argument);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, ftm::call_key{7, 0}, deposit{0, 1}),
                  ftm::invalid_argument);
  server.request_stop();
  server.join();
  const bank end = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(w.b); });
  CHECK(end.balance[0] == 18);
  CHECK(end.balance[1] == 3);
  CHECK(end.handled == 5);
}

TEST_CASE_TEMPLATE("services: a handler that throws reaches its caller as an error reply", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.max_tries = 3});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{1, 1}, deposit{2, 40}).balance == 40);
  // Tried three times, then dead-lettered: the caller is told, with the type and message.
  try {
    static_cast<void>(ftm::call(*pool, w.svc, w.replies, ftm::call_key{1, 2}, deposit{2, -5}));
    FAIL("a call whose handler throws returned");
  } catch (const ftm::call_failed& e) {
    const std::string what = e.what();
    CHECK(what.find("std::domain_error") != std::string::npos);
    CHECK(what.find("no withdrawals (-5)") != std::string::npos);
    CHECK(what.find("3 tries") != std::string::npos);
    CHECK(e.code() == ftm::errc::call_failed);
  }
  CHECK(runs == 4);
  // Not applied: the outcome says so, and the server goes on serving.
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::call_key{1, 2}).outcome ==
        ftm::key_outcome::not_applied);
  CHECK(ftm::call(*pool, w.svc, w.replies, deposit{2, 2}).balance == 42);  // without a key
  // A bare service port: one try, the error reply at once.
  const auto port = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::call_request<deposit, receipt>>(tx); });
  std::jthread bare(
      [&](std::stop_token stop) { ftm::serve(*pool, port, strict_handler<E>(w.b, runs), stop); });
  CHECK_THROWS_AS(ftm::call(*pool, port, w.replies, deposit{3, -1}), ftm::call_failed);
  CHECK(ftm::call(*pool, port, w.replies, deposit{3, 1}).balance == 1);
  // The failed reply as it travels: a status, and a call_error object with the text.
  const auto raw = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<receipt>>(tx); });
  ftm::atomically(*pool, [&](auto& tx) {
    ftm::send(tx, port, ftm::call_request<deposit, receipt>{{1, 1}, raw, deposit{3, -7}});
  });
  const auto failed = ftm::atomically(*pool, [&](auto& tx) {
    const auto r = ftm::receive(tx, raw);
    const ftm::call_error e = *tx.open_read(r.error);
    tx.destroy(r.error);
    return std::pair{r, e};
  });
  CHECK(failed.first.status == ftm::call_status::failed);
  CHECK(failed.first.failures == 1);
  CHECK(std::string(failed.second.type) == "std::domain_error");
  CHECK(std::string(failed.second.message) == "no withdrawals (-7)");
  server.request_stop();
  bare.request_stop();
  server.join();
  bare.join();
  ftm::atomically(*pool, [&](auto& tx) {
    const auto b = tx.open_read(w.b);
    CHECK(b->balance[2] == 42);  // the failed deposits were undone
    CHECK(b->balance[3] == 1);
    CHECK(b->handled == 3);
    const auto dead = ftm::port_stats_of(tx, w.svc.dead_letters);
    CHECK(dead.depth == 1);
    CHECK(ftm::port_stats_of(tx, w.svc.requests).depth == 0);
    CHECK(ftm::port_stats_of(tx, port).depth == 0);
  });
  const auto dl =
      ftm::atomically(*pool, [&](auto& tx) { return ftm::try_receive(tx, w.svc.dead_letters); });
  REQUIRE(dl.has_value());
  CHECK(dl->body.amount == -5);
  CHECK(dl->failures == 3);
}

TEST_CASE_TEMPLATE("services: a request port does not dead-letter for deliveries alone", E,
                   FTM_TEST_ENGINES) {
  // Servers killed mid-request deliver it again and again: 20 deliveries here, each
  // aborted (a conflict made up by the handler), and the request is still served once.
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool);
  int aborted = 0;
  auto flaky = [&](ftm::transaction<E>& tx, const deposit& d) {
    const receipt r = bank_handler<E>(w.b)(tx, d);
    if (aborted < 20) {
      ++aborted;
      // An abort that is not the handler's failure: atomically delivers it again.
      throw ftm::conflict("server_test: a conflict made up to deliver the request again");
    }
    return r;
  };
  std::jthread server([&](std::stop_token stop) { ftm::serve(*pool, w.svc, flaky, stop); });
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{5, 1}, deposit{0, 9}).balance == 9);
  server.request_stop();
  server.join();
  const auto st =
      ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, w.svc.requests); });
  CHECK(st.deliveries == 21);
  CHECK(st.dead_lettered == 0);
}

TEST_CASE_TEMPLATE("services: a bounded key table refuses a new client, and forgets one", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.max_clients = 2});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{11, 1}, deposit{0, 1}).balance == 1);
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{12, 1}, deposit{0, 1}).balance == 2);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, ftm::call_key{13, 1}, deposit{0, 1}),
                  ftm::capacity_exceeded);
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return ftm::forget_client(tx, w.svc, 11); }));
  CHECK_FALSE(ftm::atomically(*pool, [&](auto& tx) { return ftm::forget_client(tx, w.svc, 11); }));
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::call_key{11, 1}).outcome ==
        ftm::key_outcome::not_applied);
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{13, 1}, deposit{0, 1}).balance == 3);
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{12, 1}, deposit{0, 1}).balance == 2);
  CHECK(ftm::call(*pool, w.svc, w.replies, ftm::call_key{13, 1}, deposit{0, 1}).balance == 3);
  CHECK(runs == 3);
  server.request_stop();
  server.join();
}

// ---- opaque keys --------------------------------------------------------------------

TEST_CASE("opaque keys: 1 to 32 bytes, kept with their stamp") {
  const auto t = std::chrono::system_clock::now();
  const ftm::opaque_key k("order-17", t);
  CHECK(k.text() == "order-17");
  CHECK(k.bytes().size() == 8);
  CHECK(k.created() == t);
  CHECK_FALSE(k.empty());
  CHECK(k == ftm::opaque_key("order-17", t));
  CHECK_FALSE(k == ftm::opaque_key("order-18", t));
  CHECK(ftm::opaque_key().empty());
  // A UUID's 16 bytes, or its 32 hex digits, fit; its 36-character form does not.
  CHECK(ftm::opaque_key(std::string(32, 'a')).bytes().size() == 32);
  CHECK_THROWS_AS(ftm::opaque_key("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"), ftm::invalid_argument);
  CHECK_THROWS_AS(ftm::opaque_key(""), ftm::invalid_argument);
  CHECK_THROWS_AS(ftm::opaque_key("x", std::chrono::system_clock::time_point{}),
                  ftm::invalid_argument);
  static_assert(ftm::stable_type<ftm::opaque_key>);
}

TEST_CASE_TEMPLATE("services: an opaque key re-sent gets the recorded reply and is applied once", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.max_opaque_keys = 64});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  const ftm::opaque_key k1("9b1deb4d3b7d4bad9bdd2b0d7b3dcb6d");
  const ftm::opaque_key k2("order-2");
  CHECK(ftm::outcome_of(*pool, w.svc, k1).outcome == ftm::key_outcome::not_applied);
  const receipt first = ftm::call(*pool, w.svc, w.replies, k1, deposit{0, 10});
  CHECK(first.balance == 10);
  // The same key again, even with another body: the recorded reply, no second deposit.
  const receipt again = ftm::call(*pool, w.svc, w.replies, k1, deposit{0, 99});
  CHECK(again.balance == first.balance);
  CHECK(again.handled == first.handled);
  CHECK(ftm::call(*pool, w.svc, w.replies, k2, deposit{0, 5}).balance == 15);
  CHECK(runs == 2);
  const auto o1 = ftm::outcome_of(*pool, w.svc, k1);
  CHECK(o1.outcome == ftm::key_outcome::applied);
  CHECK(o1.reply.handled == first.handled);
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::opaque_key("order-3")).outcome ==
        ftm::key_outcome::not_applied);
  // Stamped longer ago than the retention (an hour): too old, whether applied or not.
  const auto long_ago = std::chrono::system_clock::now() - std::chrono::hours{2};
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::opaque_key("order-3", long_ago)).outcome ==
        ftm::key_outcome::too_old);
  CHECK_THROWS_AS(
      ftm::call(*pool, w.svc, w.replies, ftm::opaque_key("order-3", long_ago), deposit{0, 1}),
      ftm::key_too_old);
  // Stamped further ahead than the retention: refused, so a wrong clock cannot pin keys.
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies,
                            ftm::opaque_key("order-4", std::chrono::system_clock::now() +
                                                           std::chrono::hours{2}),
                            deposit{0, 1}),
                  ftm::invalid_argument);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, ftm::opaque_key(), deposit{0, 1}),
                  ftm::invalid_argument);
  // A handler's failure records nothing: the key was not applied, and may be re-sent.
  const ftm::opaque_key k5("order-5");
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, k5, deposit{0, -1}), ftm::call_failed);
  CHECK(ftm::outcome_of(*pool, w.svc, k5).outcome == ftm::key_outcome::not_applied);
  CHECK(ftm::call(*pool, w.svc, w.replies, k5, deposit{0, 1}).balance == 16);
  // Pipelined: a batch with opaque keys, one of them a re-send.
  ftm::pipeline<E, deposit, receipt> pipe(*pool, w.svc, w.replies);
  std::vector<std::pair<ftm::opaque_key, deposit>> calls;
  calls.reserve(6);
  for (int i = 0; i < 5; ++i)
    calls.emplace_back(ftm::opaque_key(fmt::format("batch-{}", i)), deposit{1, 1});
  calls.emplace_back(k1, deposit{0, 10});
  const auto ids = pipe.submit_all(std::span<const std::pair<ftm::opaque_key, deposit>>(calls));
  std::vector<receipt> got;
  got.reserve(ids.size());
  for (const auto id : ids)
    got.push_back(pipe.wait(id));
  std::set<std::int64_t> balances;
  for (std::size_t i = 0; i + 1 < got.size(); ++i)
    balances.insert(got[i].balance);
  CHECK(balances == std::set<std::int64_t>{1, 2, 3, 4, 5});
  CHECK(got.back().handled == first.handled);
  const receipt resent = pipe.wait(pipe.submit(calls[2].first, deposit{1, 1}));
  CHECK(resent.balance == got[2].balance);
  CHECK(resent.handled == got[2].handled);
  server.request_stop();
  server.join();
  const bank end = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(w.b); });
  CHECK(end.balance[0] == 16);
  CHECK(end.balance[1] == 5);
  CHECK(end.handled == 8);
  // A service made without opaque keys refuses them before sending.
  const auto plain = make_service_world(*pool);
  CHECK_THROWS_AS(ftm::call(*pool, plain.svc, plain.replies, k1, deposit{0, 1}), ftm::usage_error);
  ftm::pipeline<E, deposit, receipt> bare(*pool, w.svc.requests, w.replies);
  CHECK_THROWS_AS(static_cast<void>(bare.submit(k1, deposit{0, 1})), ftm::usage_error);
}

TEST_CASE_TEMPLATE("services: a full opaque-key table refuses a new key and evicts no live one", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  // 32 keys: two blocks of 16, so every key may go to either and the table fills up.
  const auto w = make_service_world(*pool, {.max_opaque_keys = 32});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  std::vector<ftm::opaque_key> keys;
  for (int i = 0; i < 32; ++i) {
    keys.emplace_back(fmt::format("k{}", i));
    CHECK(ftm::call(*pool, w.svc, w.replies, keys.back(), deposit{0, 1}).balance == i + 1);
  }
  try {
    static_cast<void>(ftm::call(*pool, w.svc, w.replies, ftm::opaque_key("k32"), deposit{0, 1}));
    FAIL("a 33rd key was taken");
  } catch (const ftm::capacity_exceeded& e) {
    CHECK(std::string(e.what()).find("service_options::max_opaque_keys") != std::string::npos);
  }
  CHECK(ftm::outcome_of(*pool, w.svc, ftm::opaque_key("k32")).outcome ==
        ftm::key_outcome::not_applied);
  for (int i = 0; i < 32; ++i)
    CHECK(ftm::call(*pool, w.svc, w.replies, keys[i], deposit{0, 1}).balance == i + 1);
  CHECK(runs == 32);
  server.request_stop();
  server.join();
}

TEST_CASE_TEMPLATE("services: an opaque key is forgotten after its retention, and then too old", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto retention = 300ms;
  const auto w = make_service_world(*pool, {.max_opaque_keys = 32, .opaque_retention = retention});
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  const ftm::opaque_key k("short-lived");
  const receipt first = ftm::call(*pool, w.svc, w.replies, k, deposit{0, 7});
  const auto o = ftm::outcome_of(*pool, w.svc, k);
  if (std::chrono::system_clock::now() < k.created() + retention) {
    CHECK(o.outcome == ftm::key_outcome::applied);  // unless the machine was that slow
    CHECK(o.reply.handled == first.handled);
  }
  // Bounded: the system clock passes the stamp plus the retention within a few seconds.
  for (int i = 0; i < 1000 && std::chrono::system_clock::now() <= k.created() + retention; ++i)
    std::this_thread::sleep_for(10ms);
  CHECK(ftm::outcome_of(*pool, w.svc, k).outcome == ftm::key_outcome::too_old);
  CHECK_THROWS_AS(ftm::call(*pool, w.svc, w.replies, k, deposit{0, 7}), ftm::key_too_old);
  // Its entry, and those of 31 more expired keys, are free again: 32 new keys fit.
  for (int i = 0; i < 32; ++i)
    CHECK(ftm::call(*pool, w.svc, w.replies, ftm::opaque_key(fmt::format("n{}", i)), deposit{1, 1})
              .balance == i + 1);
  CHECK(runs == 33);
  server.request_stop();
  server.join();
}

TEST_CASE_TEMPLATE("services: a forgotten opaque key stays too old when the clock goes back", E,
                   FTM_TEST_ENGINES) {
  // The table under a clock the test sets: keys applied at T are forgotten at T + R + 1
  // (32 newer keys take their entries); back at T, the forgotten keys must be too old,
  // not new (else they would be applied twice), and the newer keys still applied.
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.max_opaque_keys = 32});
  const ftm::detail::opaque_table_ref t{w.svc.opaque_keys, w.svc.opaque_blocks};
  const std::uint64_t fp = ftm::layout_fingerprint<receipt>();
  const std::int64_t r = std::chrono::nanoseconds(std::chrono::hours{1}).count();
  const std::int64_t t0 = ftm::detail::wall_now();
  std::vector<std::string> old_keys, new_keys;
  for (int i = 0; i < 32; ++i) {
    old_keys.push_back(fmt::format("old-{}", i));
    new_keys.push_back(fmt::format("new-{}", i));
  }
  const auto view = [](const std::string& s, std::int64_t stamp) {
    return ftm::detail::opaque_bytes{std::as_bytes(std::span<const char>(s.data(), s.size())),
                                     stamp};
  };
  const auto apply = [&](const std::string& key, std::int64_t stamp, std::int64_t now) {
    ftm::atomically(*pool, [&](auto& tx) {
      receipt out{};
      const auto found = ftm::detail::find_opaque(
          tx, t, view(key, stamp), now, std::as_writable_bytes(std::span<receipt, 1>(&out, 1)), fp);
      REQUIRE(found.state == ftm::detail::key_state::not_applied);
      REQUIRE(found.room);
      const receipt rep{stamp, 1};
      ftm::detail::record_opaque(tx, t, view(key, stamp), *found.room,
                                 std::as_bytes(std::span<const receipt, 1>(&rep, 1)), fp);
    });
  };
  const auto state = [&](const std::string& key, std::int64_t stamp, std::int64_t now) {
    return ftm::atomically(*pool, [&](auto& tx) {
      receipt out{};
      return ftm::detail::find_opaque(tx, t, view(key, stamp), now,
                                      std::as_writable_bytes(std::span<receipt, 1>(&out, 1)), fp)
          .state;
    });
  };
  for (const auto& k : old_keys)
    apply(k, t0, t0);
  CHECK(state("another", t0, t0) == ftm::detail::key_state::not_applied);
  const std::int64_t later = t0 + r + 1;
  for (const auto& k : new_keys)
    apply(k, later, later);
  for (const auto& k : old_keys) {
    CHECK(state(k, t0, later) == ftm::detail::key_state::too_old);
    CHECK(state(k, t0, t0) == ftm::detail::key_state::too_old);  // the clock went back
  }
  for (const auto& k : new_keys)
    CHECK(state(k, later, t0) == ftm::detail::key_state::applied);
}

TEST_CASE("services: an opaque-key table refuses new keys only when nearly full") {
  // 1,024 keys in 64 blocks: each key goes to the emptier of its two blocks, so the
  // first refusal comes late (the docs say about 85% full; 80% is the bound checked).
  using E = ftm::engines::dual_bank;
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.max_opaque_keys = 1024});
  const ftm::detail::opaque_table_ref t{w.svc.opaque_keys, w.svc.opaque_blocks};
  const std::uint64_t fp = ftm::layout_fingerprint<receipt>();
  const std::int64_t now = ftm::detail::wall_now();
  std::size_t taken = 0;
  for (; taken < 1024; ++taken) {
    const std::string key = fmt::format("fill-{}", taken);
    const ftm::detail::opaque_bytes view{
        std::as_bytes(std::span<const char>(key.data(), key.size())), now};
    const bool room = ftm::atomically(*pool, [&](auto& tx) {
      receipt out{};
      const auto found = ftm::detail::find_opaque(
          tx, t, view, now, std::as_writable_bytes(std::span<receipt, 1>(&out, 1)), fp);
      if (!found.room) return false;
      ftm::detail::record_opaque(tx, t, view, *found.room,
                                 std::as_bytes(std::span<const receipt, 1>(&out, 1)), fp);
      return true;
    });
    if (!room) break;
  }
  MESSAGE(fmt::format("the first refusal came with {} of 1024 keys live", taken));
  CHECK(taken >= 820);
}

TEST_CASE("services: keys outlive the server's process and the pool's reopening") {
  // A pool file: a server process answers key 1 and is killed while handling key 2
  // (after its writes); the pool is reopened (recovering it) and a new server answers.
  // Key 1 re-sent gets its recorded reply; key 2 is applied once.
  const auto path = ftm_test::scratch_file("keys");
  using E = ftm::engines::pmem;
  service_world<E> w;
  {
    auto pool = E::create(path, {.bank_size = std::size_t{4} << 20});
    w = make_service_world(pool);
  }
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t server = ::fork();
  REQUIRE(server >= 0);
  if (server == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto pool = E::open(path);
    auto handler = [&](ftm::transaction<E>& tx, const deposit& d) {
      const receipt r = bank_handler<E>(w.b)(tx, d);
      if (d.amount == 2) {
        const char c = 1;
        (void)!::write(ready[1], &c, 1);
        ::pause();  // killed here
      }
      return r;
    };
    ftm::serve(pool, w.svc, handler);
    ::_exit(0);
  }
  receipt first{};
  {
    auto pool = E::open(path);
    first = ftm::call(pool, w.svc, w.replies, ftm::call_key{3, 1}, deposit{0, 1});
    CHECK(first.balance == 1);
    ftm::atomically(pool, [&](auto& tx) {
      ftm::send(tx, w.svc.requests,
                ftm::call_request<deposit, receipt>{
                    {3, 2}, w.replies, deposit{0, 2}, ftm::call_request_keyed});
    });
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
  }
  ::kill(server, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(server, &status, 0) == server);
  auto pool = E::open(path);
  CHECK(ftm::outcome_of(pool, w.svc, ftm::call_key{3, 2}).outcome == ftm::key_outcome::not_applied);
  std::jthread backup(
      [&](std::stop_token stop) { ftm::serve(pool, w.svc, bank_handler<E>(w.b), stop); });
  const receipt again = ftm::call(pool, w.svc, w.replies, ftm::call_key{3, 1}, deposit{0, 1});
  CHECK(again.balance == first.balance);
  CHECK(again.handled == first.handled);
  const receipt second = ftm::call(pool, w.svc, w.replies, ftm::call_key{3, 2}, deposit{0, 2});
  CHECK(second.balance == 3);
  backup.request_stop();
  backup.join();
  const bank end = ftm::atomically(pool, [&](auto& tx) { return *tx.open_read(w.b); });
  CHECK(end.balance[0] == 3);
  CHECK(end.handled == 2);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE_TEMPLATE("services: pipelined calls, their replies matched by id", E, FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = make_service_world(*pool, {.capacity = 64, .max_tries = 1});
  const auto replies = ftm::atomically(*pool, [](auto& tx) {
    return ftm::make_port<ftm::reply_to_call<receipt>>(tx, {.capacity = 32});
  });
  std::atomic<int> runs{0};
  std::jthread server(
      [&](std::stop_token stop) { ftm::serve(*pool, w.svc, strict_handler<E>(w.b, runs), stop); });
  ftm::pipeline<E, deposit, receipt> pipe(*pool, w.svc, replies);
  // A stale reply on the port (to an id this pipeline never sent) is discarded.
  ftm::atomically(*pool, [&](auto& tx) {
    ftm::send(tx, replies, ftm::reply_to_call<receipt>{{99, 99}, receipt{-1, 0}});
  });
  std::vector<deposit> batch;
  for (int i = 1; i <= 20; ++i)
    batch.push_back(deposit{0, i});
  const auto ids = pipe.submit_all(std::span<const deposit>(batch));
  CHECK(pipe.in_flight() == 20);
  std::vector<std::pair<ftm::call_key, deposit>> keyed;
  for (std::uint64_t s = 1; s <= 10; ++s)
    keyed.push_back({ftm::call_key{4, s}, deposit{1, 1}});
  const auto kids = pipe.submit_all(std::span<const std::pair<ftm::call_key, deposit>>(keyed));
  const auto bad = pipe.submit(deposit{2, -1});
  CHECK(pipe.in_flight() == 31);
  CHECK_THROWS_AS(static_cast<void>(pipe.submit_all(std::span<const deposit>(batch))),
                  ftm::usage_error);  // past the reply port's capacity
  // Waited for out of order: each reply is its own call's.
  std::int64_t sum = 0;
  std::set<std::uint64_t> handled;
  for (std::size_t i = ids.size(); i-- > 0;) {
    const receipt r = pipe.wait(ids[i]);
    handled.insert(r.handled);
    sum += r.balance;
  }
  // The deposits into account 0 were handled in order: the i-th saw 1 + ... + i.
  std::int64_t expected = 0;
  for (int i = 1; i <= 20; ++i)
    expected += i * (i + 1) / 2;
  CHECK(sum == expected);
  CHECK_THROWS_AS(static_cast<void>(pipe.wait(bad)), ftm::call_failed);
  std::set<std::int64_t> balances;
  for (const auto id : kids)
    balances.insert(pipe.wait(id).balance);
  CHECK(balances.size() == 10);
  CHECK(*balances.rbegin() == 10);
  CHECK(pipe.in_flight() == 0);
  CHECK_THROWS_AS(static_cast<void>(pipe.wait(ids[0])), ftm::usage_error);
  // Re-sent keys get their recorded replies, without a second deposit.
  const auto again = pipe.submit(ftm::call_key{4, 10}, deposit{1, 1});
  CHECK(pipe.wait(again).balance == 10);
  server.request_stop();
  server.join();
  const bank end = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(w.b); });
  CHECK(end.balance[0] == 210);
  CHECK(end.balance[1] == 10);
  CHECK(end.balance[2] == 0);
  CHECK(handled.size() == 20);
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, replies).depth; }) ==
        0);
}
