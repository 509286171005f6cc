// Idempotency keys between nodes: a client on node A calls, with ftm::call_key, a keyed
// service (ftm::make_service) served on node B, through the bridge; the client's
// process is killed with SIGKILL at random instants and, started again by its
// supervisor, sends the call it was in with the same key. The server applies each key
// once and answers a repeated key with the reply it recorded.
//
// Each call carries its attempt number (how often the client sent that key); the
// server records per key how often it applied it and the attempt it applied, and
// replies with that attempt. The checker: every key the client finished was applied
// exactly once, and the reply the client got is the original one (the attempt that was
// applied), also when a later attempt brought it. A run is vacuous, and fails, unless
// some key was applied by one attempt and answered to a later one: a client killed
// after its call took effect on node B, that got the original reply after restarting.
#include "engines.hpp"
#include "nats_harness.hpp"
#include "supervision.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/nats/bridge.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using ftm::engines::pmem;
using pool_ptr = std::unique_ptr<pmem, ftm_test::pool_file_deleter>;

constexpr std::uint64_t max_keys = 2048;
constexpr std::uint64_t client_id = 7;

struct ask {
  std::uint64_t key;
  std::uint64_t attempt;
};
struct told {
  std::uint64_t key;
  std::uint64_t attempt;  // the attempt the server applied
};

/// Node A: the client's progress.
struct client_state {
  std::uint64_t next;  // the key being called (from 1)
  std::uint64_t sends[max_keys];
  std::uint64_t reply[max_keys];  // the attempt the reply named
};
/// Node B: what the server applied.
struct server_ledger {
  std::uint32_t applied[max_keys];
  std::uint32_t attempt[max_keys];
};

pool_ptr make_pool() {
  return pool_ptr(new pmem(pmem::creating, ftm_test::scratch_file("node"),
                           pmem::options{.bank_size = std::size_t{16} << 20}));
}

ftm::task_options task(const char* name) {
  return {.name = name,
          .lease = 10000ms,  // a hung instance (see two_nodes.hpp) is started again
          .intensity = {.max_restarts = 100000000, .period = 1ms},
          .restart = ftm::restart_policy::permanent};
}

struct stopper {
  std::vector<ftm::supervisor<pmem>*> sups;
  ~stopper() {
    for (auto* s : sups)
      s->stop();
  }
};

std::uint64_t kills_wanted() {
  std::uint64_t k = 60;
  if (const char* e = std::getenv("FTM_NATS_KEY_KILLS")) k = std::strtoull(e, nullptr, 10);
  return std::max<std::uint64_t>(4, k / ftm_test::sanitizer_divisor);
}

TEST_CASE("a keyed call between nodes, re-sent by a restarted client, gets its original reply") {
  const std::uint64_t wanted = kills_wanted();
  ftm_nats_test::nats_server ns(ftm_test::scratch_dir() / "nats-keys", "k");
  ns.start();
  pool_ptr a = make_pool(), b = make_pool();
  using proxy_port = ftm::service_port<ask, told>;
  const auto [proxy, replies, state] = ftm::atomically(*a, [](auto& tx) {
    return std::tuple{
        proxy_port(ftm::make_port<ftm::call_request<ask, told>>(
            tx, {.capacity = 64, .max_deliveries = 0})),
        ftm::reply_port<told>(ftm::make_port<ftm::reply_to_call<told>>(tx, {.capacity = 16})),
        tx.create(client_state{.next = 1, .sends = {}, .reply = {}})};
  });
  const auto [svc, ledger] = ftm::atomically(*b, [](auto& tx) {
    return std::pair{ftm::make_service<ask, told>(tx), tx.create(server_ledger{})};
  });
  auto node = [&](const char* name) {
    ftm::nats::node_options o;
    o.name = name;
    o.nats.servers = {ns.url()};
    o.nats.timeout = 300ms;
    return o;
  };
  ftm::nats::bridge<pmem> ba(node("A")), bb(node("B"));
  ba.bind_service(proxy, "B", "keyed");
  bb.expose_service("keyed", svc.requests);

  std::vector<std::unique_ptr<ftm::supervisor<pmem>>> sups;
  sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*a, task("nats-out"), ba.outbound_task()));
  sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*a, task("nats-in"), ba.inbound_task()));
  sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*b, task("nats-out"), bb.outbound_task()));
  sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*b, task("nats-in"), bb.inbound_task()));
  const auto service = svc;
  const auto led = ledger;
  sups.push_back(
      std::make_unique<ftm::supervisor<pmem>>(*b, task("server"), [service, led](pmem& pool) {
        ftm::serve(pool, service, [led](ftm::transaction<pmem>& tx, const ask& q) {
          auto l = tx.open(led);
          ++l->applied[q.key];
          l->attempt[q.key] = static_cast<std::uint32_t>(q.attempt);
          return told{q.key, q.attempt};
        });
      }));
  // The client: one keyed call at a time; the key and its attempt number are taken in
  // a transaction before the call, the reply recorded in one after it.
  const auto st = state;
  const auto px = proxy;
  const auto rp = replies;
  sups.push_back(
      std::make_unique<ftm::supervisor<pmem>>(*a, task("client"), [st, px, rp](pmem& pool) {
        for (;;) {
          ftm::heartbeat();
          // (Not a structured binding: clang 14 cannot capture one in a lambda.)
          const std::pair<std::uint64_t, std::uint64_t> taken =
              ftm::atomically(pool, [&](auto& tx) {
                auto s = tx.open(st);
                if (s->next >= max_keys) return std::pair<std::uint64_t, std::uint64_t>{0, 0};
                return std::pair<std::uint64_t, std::uint64_t>{s->next, ++s->sends[s->next]};
              });
          const std::uint64_t key = taken.first, attempt = taken.second;
          if (key == 0) {
            std::this_thread::sleep_for(10ms);
            continue;
          }
          ftm::pipeline<pmem, ask, told> p(pool, px, rp);
          const ftm::request_id id = p.submit(ftm::call_key{client_id, key}, ask{key, attempt});
          std::optional<told> r;
          while (!(r = p.wait_for(id, 1s)))
            ftm::heartbeat();
          ftm::atomically(pool, [&](auto& tx) {
            auto s = tx.open(st);
            s->reply[key] = r->key == key ? r->attempt : ~std::uint64_t{0};
            s->next = key + 1;
          });
        }
      }));
  std::vector<std::unique_ptr<ftm_test::running_supervisor<pmem>>> running;
  stopper guard;
  for (auto& s : sups) {
    guard.sups.push_back(s.get());
    running.push_back(std::make_unique<ftm_test::running_supervisor<pmem>>(*s));
  }
  auto next = [&] { return ftm::atomically(*a, [&](auto& tx) { return tx.open_read(st)->next; }); };
  auto wait_next = [&](std::uint64_t from, std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (next() <= from) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(200us);
    }
    return true;
  };
  REQUIRE(wait_next(5, 120s));

  // Kill the client at a random instant of a call, paced by progress: after each kill,
  // wait until another key finished. Every fourth kill is of the server instead.
  std::mt19937_64 rng(std::random_device{}());
  std::uint64_t client_kills = 0, server_kills = 0;
  for (std::uint64_t round = 0; round < 20 * wanted && client_kills < wanted; ++round) {
    const std::uint64_t from = next();
    if (from + 2 >= max_keys) break;
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 4000));
    if (round % 4 == 3) {
      if (sups[4]->signal_task(SIGKILL)) ++server_kills;
    } else if (sups[5]->signal_task(SIGKILL)) {
      ++client_kills;
    }
    REQUIRE_MESSAGE(wait_next(from, 90s),
                    fmt::format("no call finished for 90 s after round {}", round));
  }
  for (auto& s : sups)
    s->stop();
  for (auto& r : running)
    r->join();

  const client_state c = ftm::atomically(*a, [&](auto& tx) { return *tx.open_read(st); });
  const server_ledger l = ftm::atomically(*b, [&](auto& tx) { return *tx.open_read(led); });
  std::uint64_t wrong_count = 0, wrong_reply = 0, resent = 0, replayed = 0;
  for (std::uint64_t k = 1; k < c.next; ++k) {
    if (l.applied[k] != 1) ++wrong_count;
    if (c.reply[k] != l.attempt[k]) ++wrong_reply;
    if (c.sends[k] > 1) ++resent;
    // Applied by an earlier attempt, answered to a later one: the key table's reply.
    if (l.attempt[k] < c.sends[k]) ++replayed;
  }
  // The key in flight when the client stopped may have been applied once, not more.
  if (c.next < max_keys) CHECK(l.applied[c.next] <= 1);
  MESSAGE(
      fmt::format("{} keyed calls; kills: {} client, {} server; {} keys re-sent, {} of them "
                  "answered with the reply of an earlier attempt",
                  c.next - 1, client_kills, server_kills, resent, replayed));
  CHECK(client_kills >= wanted);
  CHECK(wrong_count == 0);
  CHECK(wrong_reply == 0);
  CHECK(replayed > 0);  // not vacuous
}

}  // namespace
