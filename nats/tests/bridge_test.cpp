// The bridge between two nodes (two pool files, each with its own supervisors) over
// one nats-server: a bound port carries messages in order and exactly once, and
// ftm::call on node A reaches ftm::serve on node B and comes back.
#include "engines.hpp"
#include "nats_harness.hpp"
#include "supervision.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/nats/bridge.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using ftm::engines::pmem;
using pool_ptr = std::unique_ptr<pmem, ftm_test::pool_file_deleter>;

struct note {
  std::uint64_t seq;
  std::uint64_t value;
};

struct ask {
  std::uint64_t key;
  std::uint64_t amount;
};
struct told {
  std::uint64_t key;
  std::uint64_t total;
};
using service = ftm::service_port<ask, told>;
using replies = ftm::reply_port<told>;

pool_ptr make_pool() {
  return pool_ptr(new pmem(pmem::creating, ftm_test::scratch_file("node"),
                           pmem::options{.bank_size = std::size_t{8} << 20}));
}

ftm::nats::node_options node(const char* name, const ftm_nats_test::nats_server& s) {
  ftm::nats::node_options o;
  o.name = name;
  o.nats.servers = {s.url()};
  o.consumer.ack_wait = 2000ms;
  return o;
}

/// Stops the supervisors when the test leaves, also by an exception (a failed REQUIRE),
/// so that their threads can be joined.
struct stopper {
  std::vector<ftm::supervisor<pmem>*> sups;
  ~stopper() {
    for (auto* s : sups)
      s->stop();
  }
};

ftm::task_options task(const char* name) {
  return {.name = name,
          .lease = 10000ms,  // a hung instance (see two_nodes.hpp) is started again
          .intensity = {.max_restarts = 1000000, .period = 1ms},
          .restart = ftm::restart_policy::permanent};
}

TEST_CASE("a bound port carries messages to another node, in order, exactly once") {
  ftm_nats_test::nats_server server(ftm_test::scratch_dir() / "nats-ports", "s1");
  server.start();
  pool_ptr a = make_pool(), b = make_pool();
  auto out = ftm::atomically(*a, [](auto& tx) {
    return ftm::make_port<note>(
        tx, {.capacity = 64, .max_deliveries = 0, .on_full = ftm::when_full::block});
  });
  auto in = ftm::atomically(*b, [](auto& tx) {
    return ftm::make_port<note>(tx, {.capacity = 1024, .max_deliveries = 0});
  });
  ftm::nats::bridge<pmem> ba(node("A", server)), bb(node("B", server));
  ba.bind(out, "B", "notes");
  bb.expose("notes", in);
  ftm::supervisor<pmem> a_out(*a, task("nats-out"), ba.outbound_task());
  ftm::supervisor<pmem> b_in(*b, task("nats-in"), bb.inbound_task());
  ftm_test::running_supervisor ra(a_out), rb(b_in);
  const stopper guard{{&a_out, &b_in}};

  constexpr std::uint64_t n = 300;
  for (std::uint64_t i = 1; i <= n; ++i) {
    ftm::atomically(*a, [&](auto& tx) { ftm::send(tx, out, note{i, i * 7}); });
  }
  std::uint64_t expect = 1;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (expect <= n && std::chrono::steady_clock::now() < deadline) {
    auto m = ftm::atomically(*b, [&](auto& tx) { return ftm::receive_for(tx, in, 200ms); });
    if (!m) continue;
    CHECK(m->seq == expect);
    CHECK(m->value == expect * 7);
    ++expect;
  }
  CHECK(expect == n + 1);
  // B applied the last message; A removes it from its outbox a moment later.
  for (int i = 0; i < 3000; ++i) {
    ftm::nats::bridge_stats sa;
    ftm::nats::add_outbox_stats(*a, "B", sa);
    if (sa.pending == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  a_out.stop();
  b_in.stop();
  ra.join();
  rb.join();
  const ftm::nats::bridge_stats sb = ftm::nats::bridge_stats_of(*b);
  ftm::nats::bridge_stats sa;
  ftm::nats::add_outbox_stats(*a, "B", sa);
  CHECK(sa.taken == n);
  CHECK(sa.published == n);
  CHECK(sb.applied == n);
  CHECK(sb.rejected == 0);
}

TEST_CASE("a bound port keeps order and exactly once while its bridges and nats-server die") {
  ftm_nats_test::nats_server server(ftm_test::scratch_dir() / "nats-order", "s3");
  server.start();
  pool_ptr a = make_pool(), b = make_pool();
  auto out = ftm::atomically(*a, [](auto& tx) {
    return ftm::make_port<note>(
        tx, {.capacity = 64, .max_deliveries = 0, .on_full = ftm::when_full::block});
  });
  auto in = ftm::atomically(*b, [](auto& tx) {
    return ftm::make_port<note>(tx, {.capacity = 4096, .max_deliveries = 0});
  });
  auto opts = [&](const char* name) {
    ftm::nats::node_options o = node(name, server);
    o.nats.timeout = 300ms;
    return o;
  };
  ftm::nats::bridge<pmem> ba(opts("A")), bb(opts("B"));
  ba.bind(out, "B", "notes");
  bb.expose("notes", in);
  ftm::supervisor<pmem> a_out(*a, task("nats-out"), ba.outbound_task());
  ftm::supervisor<pmem> b_in(*b, task("nats-in"), bb.inbound_task());
  ftm_test::running_supervisor ra(a_out), rb(b_in);
  const stopper guard{{&a_out, &b_in}};

  constexpr std::uint64_t n = 3000;
  std::thread sender([&] {
    for (std::uint64_t i = 1; i <= n; ++i)
      ftm::atomically(*a, [&](auto& tx) { ftm::send(tx, out, note{i, i * 7}); });
  });
  // The receiver checks the order as it goes; the killer kills after each 100
  // messages received: the outbound task, the inbound task, then nats-server.
  std::uint64_t expect = 1, kills = 0;
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (expect <= n && std::chrono::steady_clock::now() < deadline) {
    auto m = ftm::atomically(*b, [&](auto& tx) { return ftm::receive_for(tx, in, 200ms); });
    if (!m) continue;
    REQUIRE(m->seq == expect);
    CHECK(m->value == expect * 7);
    if (expect % 100 == 0) {
      switch (kills++ % 3) {
        case 0: a_out.signal_task(SIGKILL); break;
        case 1: b_in.signal_task(SIGKILL); break;
        default:
          server.kill9();
          server.start();
          break;
      }
    }
    ++expect;
  }
  sender.join();
  CHECK(expect == n + 1);
  std::this_thread::sleep_for(500ms);  // a late second copy would be applied by now
  const auto left = ftm::atomically(*b, [&](auto& tx) { return ftm::port_stats_of(tx, in); });
  CHECK(left.depth == 0);
  CHECK(left.sent == n);
  CHECK(kills >= 29);
}

TEST_CASE("a node restarted from an older copy of its pool must raise its epoch") {
  // Node A sends 1..50, its pool is copied, it sends 51..80; then A is restarted from
  // the copy, whose numbering stands at 50 while B's high-water mark for A is 80.
  ftm_nats_test::nats_server server(ftm_test::scratch_dir() / "nats-epoch", "s4");
  server.start();
  const std::filesystem::path a_path = ftm_test::scratch_file("node-a");
  const std::filesystem::path a_copy = a_path.string() + ".copy";
  auto a = std::make_unique<pmem>(pmem::creating, a_path,
                                  pmem::options{.bank_size = std::size_t{8} << 20});
  pool_ptr b = make_pool();
  auto out = ftm::atomically(*a, [](auto& tx) {
    return ftm::make_port<note>(
        tx, {.capacity = 64, .max_deliveries = 0, .on_full = ftm::when_full::block});
  });
  auto in = ftm::atomically(*b, [](auto& tx) {
    return ftm::make_port<note>(tx, {.capacity = 1024, .max_deliveries = 0});
  });
  ftm::nats::bridge<pmem> bb(node("B", server));
  bb.expose("notes", in);
  ftm::supervisor<pmem> b_in(*b, task("nats-in"), bb.inbound_task());
  ftm_test::running_supervisor rb(b_in);
  const stopper guard{{&b_in}};
  std::uint64_t received = 0;
  // Runs A's outbound task (epoch `epoch`) while `first..last` are sent; returns what
  // B received meanwhile (waiting at most `wait` for `expect` messages).
  auto run_a = [&](std::uint64_t epoch, std::uint64_t first, std::uint64_t last,
                   std::uint64_t expect, std::chrono::milliseconds wait) {
    ftm::nats::node_options o = node("A", server);
    o.epoch = epoch;
    ftm::nats::bridge<pmem> ba(o);
    ba.bind(out, "B", "notes");
    ftm::supervisor<pmem> a_out(*a, task("nats-out"), ba.outbound_task());
    ftm_test::running_supervisor ra(a_out);
    const stopper g{{&a_out}};
    for (std::uint64_t i = first; i <= last; ++i)
      ftm::atomically(*a, [&](auto& tx) { ftm::send(tx, out, note{i, epoch}); });
    std::vector<note> got;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (got.size() < expect && std::chrono::steady_clock::now() < deadline) {
      auto m = ftm::atomically(*b, [&](auto& tx) { return ftm::receive_for(tx, in, 100ms); });
      if (m) got.push_back(*m);
    }
    // Let the outbox empty (a message B dropped is still stored, so removed).
    for (int i = 0; i < 500; ++i) {
      ftm::nats::bridge_stats sa;
      ftm::nats::add_outbox_stats(*a, "B", sa);
      if (sa.pending == 0) break;
      std::this_thread::sleep_for(10ms);
    }
    a_out.stop();
    ra.join();
    received += got.size();
    return got;
  };
  std::vector<note> got = run_a(1, 1, 50, 50, 60s);
  REQUIRE(got.size() == 50);
  std::filesystem::copy_file(a_path, a_copy);  // no transaction runs: a consistent copy
  got = run_a(1, 51, 80, 30, 60s);
  REQUIRE(got.size() == 30);
  CHECK(got.back().seq == 80);

  // Restore A from the copy.
  a.reset();
  std::filesystem::copy_file(a_copy, a_path, std::filesystem::copy_options::overwrite_existing);
  a.reset(new pmem(pmem::open(a_path)));  // `out` is at the same offset in the copy

  // Same epoch: the copy numbers its next messages 51, 52, 53, ids that B applied
  // already (from the lost history): JetStream answers "duplicate" (within its window;
  // after it, B's high-water mark drops them). Nothing arrives.
  auto lost = [&] {
    ftm::nats::bridge_stats sa;
    ftm::nats::add_outbox_stats(*a, "B", sa);
    return sa.duplicates + ftm::nats::bridge_stats_of(*b).dropped;
  };
  const std::uint64_t lost_before = lost();
  got = run_a(1, 101, 103, 1, 2s);
  CHECK(got.empty());
  CHECK(lost() == lost_before + 3);

  // A raised epoch numbers from 1 again and B starts a new high-water mark for A.
  got = run_a(2, 201, 220, 20, 60s);
  REQUIRE(got.size() == 20);
  for (std::size_t i = 0; i < got.size(); ++i) {
    CHECK(got[i].seq == 201 + i);
    CHECK(got[i].value == 2);
  }
  b_in.stop();
  rb.join();
  a.reset();
  std::filesystem::remove(a_path);
  std::filesystem::remove(a_copy);
}

TEST_CASE("ftm::call on node A is served by ftm::serve on node B") {
  ftm_nats_test::nats_server server(ftm_test::scratch_dir() / "nats-calls", "s2");
  server.start();
  pool_ptr a = make_pool(), b = make_pool();
  auto [proxy, reply] = ftm::atomically(*a, [](auto& tx) {
    return std::pair{ftm::make_port<ftm::call_request<ask, told>>(tx, {.capacity = 64}),
                     ftm::make_port<ftm::reply_to_call<told>>(tx, {.capacity = 64})};
  });
  auto [served, totals] = ftm::atomically(*b, [](auto& tx) {
    return std::pair{
        ftm::make_port<ftm::call_request<ask, told>>(tx, {.capacity = 256, .max_deliveries = 0}),
        tx.template create<std::array<std::uint64_t, 4>>()};
  });
  ftm::nats::bridge<pmem> ba(node("A", server)), bb(node("B", server));
  ba.bind_service(service(proxy), "B", "adder");
  bb.expose_service("adder", service(served));
  ftm::supervisor<pmem> a_out(*a, task("nats-out"), ba.outbound_task());
  ftm::supervisor<pmem> a_in(*a, task("nats-in"), ba.inbound_task());
  ftm::supervisor<pmem> b_out(*b, task("nats-out"), bb.outbound_task());
  ftm::supervisor<pmem> b_in(*b, task("nats-in"), bb.inbound_task());
  const service svc = served;
  const auto t = totals;
  ftm::supervisor<pmem> b_srv(*b, task("adder"), [svc, t](pmem& pool) {
    ftm::serve(pool, svc, [t](ftm::transaction<pmem>& tx, const ask& q) {
      auto tot = tx.open(t);
      (*tot)[q.key] += q.amount;
      return told{q.key, (*tot)[q.key]};
    });
  });
  ftm_test::running_supervisor r1(a_out), r2(a_in), r3(b_out), r4(b_in), r5(b_srv);
  const stopper guard{{&a_out, &a_in, &b_out, &b_in, &b_srv}};
  std::uint64_t sum = 0;
  for (std::uint64_t i = 1; i <= 100; ++i) {
    const told r = ftm::call(*a, service(proxy), replies(reply), ask{i % 4, i});
    CHECK(r.key == i % 4);
    sum += i;
  }
  for (auto* s : {&a_out, &a_in, &b_out, &b_in, &b_srv})
    s->stop();
  for (auto* r : {&r1, &r2, &r3, &r4, &r5})
    r->join();
  const auto tot = ftm::atomically(*b, [&](auto& tx) { return *tx.open_read(t); });
  CHECK(tot[0] + tot[1] + tot[2] + tot[3] == sum);
}

}  // namespace
