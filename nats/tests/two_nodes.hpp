// Two nodes exchanging calls over NATS while things are killed: the world of
// kill_test.cpp and cluster_test.cpp.
//
// Node A (one pool file) has client threads that call, through a proxy service port
// bound to node B, a reliable server on node B (another pool file). Each node runs its
// two bridge tasks under its own supervisors; B runs the server as a third supervised
// task. Each call carries a unique id and a key; the server's transaction counts the
// id in a ledger, increments the key's counter and replies with the value it saw.
//
// The checker, after every call returned: Jepsen's total-queue categories over call
// ids: lost (issued, never applied), duplicated (applied more than once), unexpected
// (applied, never issued); per key, the counter values the replies carried are exactly
// 1..n and the counter ends at n; every reply port received exactly as many replies as
// its client made calls, and the server's port as many requests as were issued. A run
// is vacuous, and fails, unless enough calls were made and every kind of kill happened
// as often as asked.
#ifndef FTM_NATS_TESTS_TWO_NODES_HPP
#define FTM_NATS_TESTS_TWO_NODES_HPP

#include "engines.hpp"
#include "supervision.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/nats/bridge.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <tuple>
#include <vector>

namespace ftm_nats_test {

using namespace std::chrono_literals;
using ftm::engines::pmem;
using pool_ptr = std::unique_ptr<pmem, ftm_test::pool_file_deleter>;

constexpr std::uint32_t n_keys = 8;
constexpr std::size_t seg_ids = 1024;
constexpr std::size_t n_segments = 32;  // room for 32768 call ids
constexpr std::uint64_t max_calls = seg_ids * n_segments;

struct request {
  std::uint64_t id;
  std::uint32_t key;
  std::uint32_t pad;
};
struct response {
  std::uint64_t id;
  std::uint64_t count;  // the key's counter as the server's transaction left it
};
using service = ftm::service_port<request, response>;
using replies = ftm::reply_port<response>;

struct ledger_segment {
  std::uint16_t applied[seg_ids];
};
struct ledger {
  ftm::stable<ledger_segment> segs[n_segments];
  std::uint64_t counters[n_keys];
  std::uint64_t applied;
};

/// Stops the supervisors when the test leaves, also by an exception.
struct stopper {
  std::vector<ftm::supervisor<pmem>*> sups;
  ~stopper() {
    for (auto* s : sups)
      s->stop();
  }
};

inline ftm::task_options forever(const char* name) {
  // A lease: a task instance that hangs is killed and started again. (Under ASan a
  // child forked while another thread of the test held the sanitizer's allocator
  // lock hangs at its first allocation: gcc 12's libasan has no fork handler. The
  // bridge renews its lease only while NATS answers, so such an instance, whose
  // libnats threads are stuck, is replaced within the lease.)
  return {.name = name,
          .lease = 10000ms,
          .intensity = {.max_restarts = 100000000, .period = 1ms},
          .restart = ftm::restart_policy::permanent};
}

inline pool_ptr make_pool() {
  return pool_ptr(new pmem(pmem::creating, ftm_test::scratch_file("node"),
                           pmem::options{.bank_size = std::size_t{16} << 20}));
}

/// The two nodes, their bridges, supervisors and the server.
class two_nodes {
 public:
  static constexpr std::size_t n_clients = 4;

  two_nodes(std::vector<std::string> urls, std::uint32_t replicas,
            std::chrono::milliseconds timeout)
      : a_(make_pool()), b_(make_pool()) {
    proxy_ = ftm::atomically(*a_, [](auto& tx) {
      return service(ftm::make_port<ftm::call_request<request, response>>(
          tx, {.capacity = 64, .max_deliveries = 0, .on_full = ftm::when_full::block}));
    });
    for (auto& r : replies_) {
      r = ftm::atomically(*a_, [](auto& tx) {
        return replies(ftm::make_port<ftm::reply_to_call<response>>(
            tx, {.capacity = 16, .max_deliveries = 0}));
      });
    }
    std::tie(served_, ledger_) = ftm::atomically(*b_, [](auto& tx) {
      ledger l{};
      for (auto& s : l.segs)
        s = ftm::create<ledger_segment>(tx);
      return std::pair{service(ftm::make_port<ftm::call_request<request, response>>(
                           tx, {.capacity = 256, .max_deliveries = 0})),
                       tx.create(l)};
    });
    auto opts = [&](const char* name) {
      ftm::nats::node_options o;
      o.name = name;
      o.nats.servers = urls;
      o.nats.timeout = timeout;
      o.stream.replicas = replicas;
      o.consumer.ack_wait = 2000ms;
      return o;
    };
    ftm::nats::bridge<pmem> ba(opts("A")), bb(opts("B"));
    ba.bind_service(proxy_, "B", "counter");
    bb.expose_service("counter", served_);
    const service svc = served_;
    const ftm::stable<ledger> led = ledger_;
    sups_.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*a_, forever("nats-out"), ba.outbound_task()));
    sups_.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*a_, forever("nats-in"), ba.inbound_task()));
    sups_.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*b_, forever("nats-out"), bb.outbound_task()));
    sups_.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*b_, forever("nats-in"), bb.inbound_task()));
    sups_.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*b_, forever("server"), [svc, led](pmem& pool) {
          ftm::serve(pool, svc, [led](ftm::transaction<pmem>& tx, const request& q) {
            auto l = tx.open(led);
            auto seg = tx.open(l->segs[q.id / seg_ids]);
            ++seg->applied[q.id % seg_ids];
            ++l->applied;
            const std::uint64_t c = ++l->counters[q.key];
            return response{q.id, c};
          });
        }));
    for (auto& s : sups_) {
      guard_.sups.push_back(s.get());
      running_.push_back(std::make_unique<ftm_test::running_supervisor<pmem>>(*s));
    }
  }

  two_nodes(const two_nodes&) = delete;
  two_nodes& operator=(const two_nodes&) = delete;
  ~two_nodes() { stop_clients(); }

  /// The bridge supervisors (0: A out, 1: A in, 2: B out, 3: B in) and the server (4).
  ftm::supervisor<pmem>& sup(std::size_t i) { return *sups_[i]; }

  /// Starts the client threads; each calls until `stop_clients`.
  void start_clients() {
    for (std::size_t c = 0; c < n_clients; ++c) {
      clients_.emplace_back([this, c] {
        for (std::uint64_t i = 0; !stop_.load(); ++i) {
          const std::uint64_t id = issued_.fetch_add(1);
          if (id >= max_calls) break;
          const auto key = static_cast<std::uint32_t>((id * 2654435761u) % n_keys);
          // A bounded wait, so that a stalled run fails instead of hanging: a call
          // that times out is reported (and its client stops).
          const std::optional<response> r =
              ftm::call_for(*a_, proxy_, replies_[c], request{id, key, 0}, 120s);
          if (!r) {
            timed_out_.fetch_add(1);
            break;
          }
          record(id, key, *r);
          calls_[c].fetch_add(1);
          done_.fetch_add(1);
        }
      });
    }
  }
  void stop_clients() {
    stop_.store(true);
    for (auto& t : clients_)
      t.join();
    clients_.clear();
  }

  /// Calls answered so far.
  [[nodiscard]] std::uint64_t done() const { return done_.load(); }

  /// Waits until `n` more calls were answered than `from`, at most `timeout`.
  bool wait_progress(std::uint64_t from, std::uint64_t n, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (done() < from + n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(200us);
    }
    return true;
  }

  /// The checker (see the file's comment). `min_calls`: the run is vacuous below it.
  void check(std::uint64_t min_calls) {
    stop_clients();
    const std::uint64_t issued = std::min(issued_.load(), max_calls);
    const std::uint64_t answered = done();
    INFO("calls issued ", issued, ", answered ", answered);
    CHECK(answered >= min_calls);
    // A client stops only between calls, and ids past `max_calls` are never sent: every
    // id below `issued` was answered.
    CHECK(timed_out_.load() == 0);
    CHECK(issued == answered + timed_out_.load());
    CHECK(wrong_replies_ == 0);
    const ledger l = ftm::atomically(*b_, [&](auto& tx) { return *tx.open_read(ledger_); });
    std::uint64_t lost = 0, duplicated = 0, unexpected = 0;
    for (std::size_t s = 0; s < n_segments; ++s) {
      const ledger_segment seg =
          ftm::atomically(*b_, [&](auto& tx) { return *tx.open_read(l.segs[s]); });
      for (std::size_t i = 0; i < seg_ids; ++i) {
        const std::uint64_t id = s * seg_ids + i;
        const unsigned applied = seg.applied[i];
        if (id < answered) {
          if (applied == 0) ++lost;
          if (applied > 1) ++duplicated;
        } else if (applied != 0) {
          ++unexpected;
        }
      }
    }
    CHECK(lost == 0);
    CHECK(duplicated == 0);
    CHECK(unexpected == 0);
    CHECK(l.applied == answered);
    // Per key: the replies saw 1..n, and the counter ends at n.
    for (std::uint32_t k = 0; k < n_keys; ++k) {
      std::vector<std::uint64_t>& seen = seen_[k];
      std::sort(seen.begin(), seen.end());
      bool exact = true;
      for (std::size_t i = 0; i < seen.size(); ++i)
        exact = exact && seen[i] == i + 1;
      INFO("key ", k, ": ", seen.size(), " replies, counter ", l.counters[k]);
      CHECK(exact);
      CHECK(l.counters[k] == seen.size());
    }
    // Each reply port got exactly one reply per call; the server's port one request
    // per call.
    for (std::size_t c = 0; c < n_clients; ++c) {
      const ftm::port_stats ps =
          ftm::atomically(*a_, [&](auto& tx) { return ftm::port_stats_of(tx, replies_[c]); });
      INFO("client ", c);
      CHECK(ps.sent == calls_[c].load());
      CHECK(ps.depth == 0);
    }
    const ftm::port_stats ss =
        ftm::atomically(*b_, [&](auto& tx) { return ftm::port_stats_of(tx, served_); });
    CHECK(ss.sent == answered);
    const ftm::port_stats ps =
        ftm::atomically(*a_, [&](auto& tx) { return ftm::port_stats_of(tx, proxy_); });
    CHECK(ps.received == answered);
  }

  [[nodiscard]] ftm::nats::bridge_stats stats_a() { return stats(*a_, "B"); }
  [[nodiscard]] ftm::nats::bridge_stats stats_b() { return stats(*b_, "A"); }

 private:
  static ftm::nats::bridge_stats stats(pmem& pool, const char* peer) {
    ftm::nats::bridge_stats s = ftm::nats::bridge_stats_of(pool);
    ftm::nats::add_outbox_stats(pool, peer, s);
    return s;
  }

  void record(std::uint64_t id, std::uint32_t key, const response& r) {
    const std::lock_guard lock(mutex_);
    if (r.id != id) ++wrong_replies_;
    seen_[key].push_back(r.count);
  }

  pool_ptr a_, b_;
  service proxy_{}, served_{};
  std::array<replies, n_clients> replies_{};
  ftm::stable<ledger> ledger_{};
  std::vector<std::unique_ptr<ftm::supervisor<pmem>>> sups_;
  // Destroyed in reverse: first the supervisors are stopped, then their threads joined.
  std::vector<std::unique_ptr<ftm_test::running_supervisor<pmem>>> running_;
  stopper guard_;
  std::vector<std::thread> clients_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> issued_{0}, done_{0}, timed_out_{0};
  std::array<std::atomic<std::uint64_t>, n_clients> calls_{};
  std::mutex mutex_;
  std::array<std::vector<std::uint64_t>, n_keys> seen_;
  std::uint64_t wrong_replies_ = 0;
};

}  // namespace ftm_nats_test

#endif
