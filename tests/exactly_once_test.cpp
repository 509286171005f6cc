// Exactly-once calls under kills. Client threads (in this process, which is never
// killed) call a reliable server with unique request ids; the server runs as a stable
// task under ftm::supervisor and handles each request in one transaction that appends
// the id to a stable effect log, increments a per-key counter (the reply carries the
// value it saw), moves an amount between two accounts, replaces a per-request receipt
// object (an allocation and a free), and replies. The server is killed with SIGKILL at
// random instants while calls are in flight, stopped with SIGSTOP (its lease expires
// and it is killed before recovery), killed at the k-th hit of every fault point of
// the engine, and, on a pool file, its supervisor is killed in the middle of recovery
// and a new supervisor process takes over.
//
// The checker: every acknowledged id is in the effect log exactly once and got exactly
// one reply (the reply ports are empty after the calls returned); the counter values
// seen per key are exactly 1..n; every account holds what the acknowledged transfers
// make it, so the total is conserved; the service port is empty; two server instances
// never overlapped (a marker in the pool names the running instance); and the run was
// not vacuous (requests were redelivered, recoveries undid transactions, every fault
// point was hit).
//
// A last case kills clients mid-call and the whole system (every process at once) around
// a service with idempotency keys: see "clients killed mid-call" below.
//
// Scale with FTM_EO_KILLS (random kills per engine, default 1000; a quarter in sanitizer
// builds). The killer paces its kills by progress: it waits until a call was
// acknowledged since its last kill, then kills at a random instant.
#include "engines.hpp"
#include "process.hpp"
#include "supervision.hpp"

#include <ftm/detail/fault.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using ftm_test::shared_page;

using namespace std::chrono_literals;
using ftm::engines::dual_bank;
using ftm::engines::pmem;

constexpr std::size_t seg_ids = 500;
constexpr std::size_t n_segments = 160;  // room for 80000 calls
constexpr std::uint32_t n_keys = 8;
constexpr std::uint32_t n_accounts = 8;
constexpr std::int64_t opening_balance = 1000;

struct log_segment {
  std::uint64_t ids[seg_ids];
};
struct effect_log {
  std::uint64_t count;
  ftm::stable<log_segment> segs[n_segments];
};
struct counters {
  std::uint64_t value[n_keys];
};
struct accounts {
  std::int64_t balance[n_accounts];
};
struct receipt_object {
  std::uint64_t id;
};
/// Which server instance runs: set by each instance when it starts.
struct instance_marker {
  std::uint64_t running;    // the owner id (pid and start time) of the running instance
  std::uint64_t instances;  // instances that reached their first transaction
  std::uint64_t overlaps;   // an instance found another one alive, or its mark overwritten
};

struct transfer {
  std::uint64_t id;
  std::uint32_t key;
  std::uint32_t from;
  std::uint32_t to;
  std::uint32_t pad;
  std::int64_t amount;
};
struct answer {
  std::uint64_t id;
  std::uint64_t count;  // the key's counter as the server's transaction left it
};
using service = ftm::service_port<transfer, answer>;
using replies = ftm::reply_port<answer>;

struct world {
  ftm::stable<effect_log> log;
  ftm::stable<counters> counts;
  ftm::stable<accounts> acc;
  ftm::stable<instance_marker> marker;
  ftm::stable<receipt_object> receipt;
  service port;
};

constexpr std::string_view world_root = "exactly_once.world";

/// What the test tells the server instances, and what they tell it.
struct control {
  std::atomic<std::int32_t> arm_point;  // index in fault_point_names, or -1
  std::atomic<std::uint64_t> arm_k;
  std::atomic<std::uint32_t> arm_pending;  // the next request arms the point
  std::atomic<std::uint32_t> heartbeats;   // 1: a thread of the instance keeps its lease
  std::atomic<std::uint64_t> served;       // requests handled (not necessarily committed)
};

template <class E>
world make_world(E& pool) {
  return ftm::atomically(pool, [](auto& tx) {
    auto w = tx.open(ftm::root<world>(tx, world_root));
    effect_log fresh{};
    for (auto& s : fresh.segs)
      s = ftm::create<log_segment>(tx);
    w->log = tx.create(fresh);
    w->counts = ftm::create<counters>(tx);
    accounts a{};
    for (auto& b : a.balance)
      b = opening_balance;
    w->acc = tx.create(a);
    w->marker = ftm::create<instance_marker>(tx);
    w->receipt = ftm::create<receipt_object>(tx);
    // No delivery limit: a request whose server is killed many times is still served.
    w->port = ftm::make_port<ftm::call_request<transfer, answer>>(
        tx, ftm::port_options{.capacity = 256, .max_deliveries = 0});
    return *w;
  });
}

template <class E>
world read_world(E& pool) {
  return ftm::atomically(pool,
                         [](auto& tx) { return *tx.open_read(ftm::root<world>(tx, world_root)); });
}

/// Keeps the server busy for a moment inside its transaction, so kills land there.
void pause_a_little() {
  const auto until = std::chrono::steady_clock::now() + 3us;
  while (std::chrono::steady_clock::now() < until) {
  }
}

/// Steps the server instance's main thread has taken (its own copy in each instance).
std::atomic<std::uint64_t> main_steps{0};

/// The server task: marks itself the running instance, then serves forever.
struct server_task {
  control* ctl;

  template <class E>
  void operator()(E& pool, ftm::task_context&) const {
    std::jthread beats;
    if (ctl->heartbeats.load() != 0) {
      // A stopped process stops all its threads: the lease still catches SIGSTOP. The
      // thread beats only while the main thread moves, so a main thread that hangs still
      // misses its lease (serve's own beats cover an idle server). Under ASan an instance
      // forked while a client thread held the sanitizer's allocator lock hangs in its first
      // allocation: GCC 12's libasan takes no lock around fork, as glibc's malloc does.
      beats = std::jthread([](std::stop_token st) {
        std::uint64_t seen = main_steps.load();
        auto moved = std::chrono::steady_clock::now();
        while (!st.stop_requested()) {
          const auto now = std::chrono::steady_clock::now();
          if (const std::uint64_t s = main_steps.load(); s != seen) {
            seen = s;
            moved = now;
          }
          if (now - moved < 100ms) ftm::heartbeat();
          std::this_thread::sleep_for(5ms);
        }
      });
    }
    const world w = read_world(pool);
    const auto wroot =
        ftm::atomically(pool, [](auto& tx) { return ftm::root<world>(tx, world_root); });
    const std::uint64_t self = ftm::detail::self_owner_id();
    ftm::atomically(pool, [&](auto& tx) {
      auto m = tx.open(w.marker);
      if (m->running != 0 && m->running != self && ftm::detail::owner_alive(m->running))
        ++m->overlaps;
      m->running = self;
      ++m->instances;
    });
    main_steps.fetch_add(1);
    std::set<std::uint64_t> conflicted;  // a server answers several requests per transaction
    auto handler = [&](ftm::transaction<E>& tx, const transfer& t) {
#if FTM_FAULT_INJECTION
      if (ctl->arm_pending.exchange(0) != 0) {
        ftm::detail::arm_fault(ftm::detail::fault_point_names[ctl->arm_point.load()],
                               ctl->arm_k.load());
      }
#endif
      ctl->served.fetch_add(1);
      main_steps.fetch_add(1);
      if (tx.open_read(w.marker)->running != self) ++tx.open(w.marker)->overlaps;
      auto lg = tx.open(w.log);
      auto seg = tx.open(lg->segs[lg->count / seg_ids]);
      seg->ids[lg->count % seg_ids] = t.id;
      ++lg->count;
      pause_a_little();
      const std::uint64_t seen = ++tx.open(w.counts)->value[t.key];
      auto a = tx.open(w.acc);
      a->balance[t.from] -= t.amount;
      pause_a_little();
      a->balance[t.to] += t.amount;
      // An allocation and a free per request, so the allocator's fault points are hit.
      auto root = tx.open(wroot);
      tx.destroy(root->receipt);
      root->receipt = tx.create(receipt_object{t.id});
      // Every fourth request loses a made-up conflict on its first try here, after
      // its writes: the abort undoes them and the request is delivered again.
      if (t.id % 4 == 0 && conflicted.insert(t.id).second) {
        throw ftm::conflict("exactly_once_test: a conflict made up to abort the writes");
      }
      return answer{t.id, seen};
    };
    ftm::serve(pool, w.port, handler);
  }
};

/// One client's acknowledged calls.
struct acked_call {
  transfer request;
  answer reply;
};

/// A client thread: calls until `stop`, or `limit` calls.
template <class E>
class client {
 public:
  client(E& pool, service port, std::uint32_t index, std::uint64_t seed)
      : pool_(&pool), port_(port), index_(index), rng_(seed) {
    replies_ = ftm::atomically(
        pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<answer>>(tx); });
  }

  /// Makes one call and records it; false if no reply came within two minutes, a stall
  /// that the test reports (`stalled_calls`) rather than wait for forever.
  bool call_once() {
    std::uniform_int_distribution<std::uint32_t> key(0, n_keys - 1), acc(0, n_accounts - 1);
    std::uniform_int_distribution<std::int64_t> amount(1, 50);
    transfer t{};
    t.id = (std::uint64_t{index_} + 1) << 32 | (calls_.size() + 1);
    t.key = key(rng_);
    t.from = acc(rng_);
    t.to = acc(rng_);
    t.amount = amount(rng_);
    const std::optional<answer> a = ftm::call_for(*pool_, port_, replies_, t, 120s);
    if (!a) {
      ++stalled_calls_;
      return false;
    }
    calls_.push_back({t, *a});
    return true;
  }

  /// Calls until `stop` or `limit` calls, counting each acknowledged call in `acked`.
  void run(const std::atomic<bool>& stop, std::uint64_t limit, std::atomic<std::uint64_t>& acked) {
    while (!stop.load() && calls_.size() < limit && call_once())
      acked.fetch_add(1);
  }

  [[nodiscard]] const std::vector<acked_call>& calls() const noexcept { return calls_; }
  [[nodiscard]] std::uint64_t stalled_calls() const noexcept { return stalled_calls_; }
  [[nodiscard]] replies reply_port() const noexcept { return replies_; }

 private:
  E* pool_;
  service port_;
  replies replies_;
  std::uint32_t index_;
  std::mt19937_64 rng_;
  std::vector<acked_call> calls_;
  std::uint64_t stalled_calls_ = 0;
};

/// What `check_exactly_once` counted.
struct tally {
  std::uint64_t calls = 0;
  std::uint64_t redelivered = 0;
  std::uint64_t checks = 0;
};

/// The checker (see the file comment). Returns what it counted.
template <class E>
tally check_exactly_once(E& pool, const std::vector<const std::vector<acked_call>*>& all,
                         const std::vector<replies>& reply_ports) {
  tally t;
  const world w = read_world(pool);
  std::map<std::uint64_t, int> acked;  // id -> replies received
  std::map<std::uint32_t, std::vector<std::uint64_t>> seen_per_key;
  std::int64_t expected[n_accounts];
  std::fill(std::begin(expected), std::end(expected), opening_balance);
  for (const auto* calls : all) {
    for (const auto& c : *calls) {
      ++acked[c.request.id];
      ++t.checks;
      if (c.reply.id != c.request.id)
        FAIL_CHECK(fmt::format("call {:#x} got the reply to {:#x}", c.request.id, c.reply.id));
      seen_per_key[c.request.key].push_back(c.reply.count);
      expected[c.request.from] -= c.request.amount;
      expected[c.request.to] += c.request.amount;
      ++t.calls;
    }
  }
  ftm::atomically(pool, [&](auto& tx) {
    const auto lg = tx.open_read(w.log);
    std::map<std::uint64_t, int> logged;
    for (std::uint64_t i = 0; i < lg->count; ++i)
      ++logged[tx.open_read(lg->segs[i / seg_ids])->ids[i % seg_ids]];
    for (const auto& [id, n] : acked) {
      ++t.checks;
      if (n != 1) FAIL_CHECK(fmt::format("id {:#x} acknowledged {} times", id, n));
      const auto it = logged.find(id);
      const int in_log = it == logged.end() ? 0 : it->second;
      if (in_log != 1)
        FAIL_CHECK(fmt::format("acknowledged id {:#x} is {} times in the log", id, in_log));
    }
    for (const auto& [id, n] : logged) {
      ++t.checks;
      if (acked.count(id) == 0)
        FAIL_CHECK(fmt::format("logged id {:#x} was never acknowledged", id));
    }
    CHECK(lg->count == t.calls);
    const auto counts = tx.open_read(w.counts);
    for (std::uint32_t k = 0; k < n_keys; ++k) {
      auto& seen = seen_per_key[k];
      std::sort(seen.begin(), seen.end());
      for (std::size_t i = 0; i < seen.size(); ++i) {
        ++t.checks;
        if (seen[i] != i + 1) {
          FAIL_CHECK(fmt::format("key {}: the replies saw {} where {} was due", k, seen[i], i + 1));
          break;
        }
      }
      CHECK(counts->value[k] == seen.size());
    }
    const auto acc = tx.open_read(w.acc);
    std::int64_t total = 0;
    for (std::uint32_t a = 0; a < n_accounts; ++a) {
      ++t.checks;
      CHECK(acc->balance[a] == expected[a]);
      total += acc->balance[a];
    }
    CHECK(total == opening_balance * n_accounts);
    const auto st = ftm::port_stats_of(tx, w.port);
    CHECK(st.depth == 0);
    CHECK(st.in_flight == 0);
    CHECK(st.dead_lettered == 0);
    t.redelivered = st.redelivered;
    for (const auto& r : reply_ports) {
      ++t.checks;
      const auto rs = ftm::port_stats_of(tx, r);
      CHECK(rs.depth == 0);  // no second reply to any call
    }
    CHECK(tx.open_read(w.marker)->overlaps == 0);
    t.checks += 6;
  });
  return t;
}

/// Random kills per engine: FTM_EO_KILLS (default 1000), divided for an engine whose
/// commits wait for the disk (`power`: a tenth), and in a sanitizer build (a quarter).
template <class E>
std::uint64_t kills_wanted() {
  std::uint64_t n = 1000;
  if (const char* s = std::getenv("FTM_EO_KILLS")) n = std::strtoull(s, nullptr, 10);
  return std::max<std::uint64_t>(
      1, n / ftm_test::transaction_divisor<E> / ftm_test::sanitizer_divisor);
}

constexpr ftm::restart_intensity unlimited{.max_restarts = 100'000'000, .period = 1s};

}  // namespace

TEST_CASE_TEMPLATE("exactly once: a server killed at random instants while calls are in flight", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{8} << 20);
  const world w = make_world(*pool);
  shared_page<control> ctl;
  ctl->arm_point.store(-1);
  ctl->heartbeats.store(1);
  ftm::supervisor<E> sup(*pool, {.name = "server", .lease = 150ms, .intensity = unlimited},
                         server_task{&*ctl});
  const auto t0 = std::chrono::steady_clock::now();
  ftm_test::running_supervisor<E> runner(sup);

  constexpr std::uint32_t n_clients = 3;
  std::vector<std::unique_ptr<client<E>>> clients;
  for (std::uint32_t c = 0; c < n_clients; ++c)
    clients.push_back(std::make_unique<client<E>>(*pool, w.port, c, 1000 + c));
  std::atomic<bool> stop{false};
  std::atomic<std::uint32_t> clients_done{0};  // used up their share of the log
  std::atomic<std::uint64_t> acked{0};
  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&c, &stop, &clients_done, &acked] {
      c->run(stop, seg_ids * n_segments / n_clients, acked);
      ++clients_done;
    });
  }

  // The killer: kills each instance once, at a random instant after it started
  // serving and after a call was acknowledged since the last kill (so calls complete
  // between kills even where commits are slow, as at `power` under ASan); one kill in a
  // hundred is a SIGSTOP that the lease must turn into a kill.
  const std::uint64_t wanted = kills_wanted<E>();
  std::uint64_t kills = 0, stops = 0;
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<int> delay_us(0, 1500);
  std::uint64_t last_start = 0, acked_at_kill = 0;
  // No deadline for the whole run, which a loaded machine may stretch: only for a
  // stall, two minutes with no call acknowledged (commits take milliseconds). A call
  // gives up after two minutes too, so a stall fails the test instead of hanging it.
  std::uint64_t acked_seen = 0;
  auto last_progress = std::chrono::steady_clock::now();
  bool stalled = false;
  // Ends early, failing the count below, if the clients run out of calls.
  while (kills + stops < wanted && clients_done.load() < n_clients) {
    if (const std::uint64_t a = acked.load(); a != acked_seen) {
      acked_seen = a;
      last_progress = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - last_progress > 120s) {
      stalled = true;
      break;
    }
    const auto s = sup.stats();
    if (s.starts == last_start || sup.task_pid() == 0 || acked.load() == acked_at_kill) {
      std::this_thread::sleep_for(50us);
      continue;
    }
    const std::uint64_t served = ctl->served.load();
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    if (ctl->served.load() == served) continue;  // let it serve something first
    last_start = sup.stats().starts;
    acked_at_kill = acked.load();
    if (rng() % 100 == 0) {
      if (sup.signal_task(SIGSTOP)) ++stops;
    } else if (sup.signal_task(SIGKILL)) {
      ++kills;
    }
  }
  stop.store(true);
  for (auto& t : threads)
    t.join();
  sup.stop();
  const auto report = runner.join();
  const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0);

  std::vector<const std::vector<acked_call>*> all;
  std::vector<replies> ports;
  for (auto& c : clients) {
    all.push_back(&c->calls());
    ports.push_back(c->reply_port());
  }
  const tally t = check_exactly_once(*pool, all, ports);
  const auto m = ftm::atomically(*pool, [&](auto& tx) { return *tx.open_read(w.marker); });
  MESSAGE(fmt::format(
      "{}: {} SIGKILLs and {} SIGSTOPs in {:.1f} s; {} calls acknowledged; {} restarts, {} "
      "recoveries ({} transactions undone), {} lease kills; {} requests redelivered; {} "
      "server instances, {} overlaps; {} checks",
      ftm::detail::type_name<E>(), kills, stops, elapsed.count(), t.calls, report.stats.restarts,
      report.stats.recoveries, report.stats.recovered.undone, report.stats.lease_kills,
      t.redelivered, m.instances, m.overlaps, t.checks));
  CHECK_FALSE(stalled);
  for (const auto& c : clients)
    CHECK(c->stalled_calls() == 0);
  CHECK(kills + stops >= wanted);
  CHECK(report.stats.lease_kills >= stops);  // each stopped instance was killed
  CHECK(report.stats.recovered.undone > 0);  // kills landed inside transactions
  CHECK(t.redelivered > 0);                  // and requests ran again
  CHECK(t.calls >= kills + stops);           // a call was acknowledged between kills
}

#if FTM_FAULT_INJECTION
TEST_CASE_TEMPLATE("exactly once: the server killed at the k-th hit of every fault point", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{8} << 20);
  const world w = make_world(*pool);
  shared_page<control> ctl;
  ctl->arm_point.store(-1);
  // The lease only catches an instance that hangs (see main_steps): serve beats while idle.
  ftm::supervisor<E> sup(*pool, {.name = "server", .lease = 2s, .intensity = unlimited},
                         server_task{&*ctl});
  ftm_test::running_supervisor<E> runner(sup);
  client<E> c(*pool, w.port, 0, 7);
  std::uint64_t kills = 0;
  std::vector<std::string> summary;
  std::vector<std::string_view> missed;
  for (std::size_t p = 0; p < ftm::detail::fault_point_names.size(); ++p) {
    const std::string_view name = ftm::detail::fault_point_names[p];
    // Recovery runs in the supervisor, this process: the pool-file test kills it there.
    if (name.starts_with("recover.")) continue;
    std::uint64_t k = 1;
    for (;; ++k) {
      ctl->arm_point.store(static_cast<std::int32_t>(p));
      ctl->arm_k.store(k);
      ctl->arm_pending.store(1);
      const std::uint64_t starts = sup.stats().starts;
      const std::uint64_t lease_kills = sup.stats().lease_kills;
      // A run: four calls, so one of them has an id divisible by 4 and aborts once
      // (abort.mid_undo); the first arms the point in the instance that handles it.
      for (int i = 0; i < 4; ++i)
        REQUIRE(c.call_once());
      // The instance that took the plan may still be alive with the point armed.
      if (sup.stats().starts == starts) {
        static_cast<void>(sup.signal_task(SIGKILL));  // disarm it for the next run
        const auto until = std::chrono::steady_clock::now() + 120s;
        while (sup.stats().starts == starts) {
          REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until,
                          "the killed server was not restarted within 120 s");
          std::this_thread::sleep_for(100us);
        }
        break;
      }
      if (sup.stats().lease_kills != lease_kills) {
        --k;  // an instance hung and was killed: not the point's kill, so the same k again
        continue;
      }
      ++kills;
      REQUIRE(k < 200);
    }
    summary.push_back(fmt::format("{} x{}", name, k - 1));
    if (k == 1) missed.push_back(name);
  }
  sup.stop();
  const auto report = runner.join();
  const tally t = check_exactly_once(*pool, {&c.calls()}, {c.reply_port()});
  MESSAGE(
      fmt::format("{}: {} fault kills ({}); {} calls; {} recoveries, {} undone, {} redone; "
                  "{} redelivered; {} checks",
                  ftm::detail::type_name<E>(), kills, fmt::join(summary, ", "), t.calls,
                  report.stats.recoveries, report.stats.recovered.undone,
                  report.stats.recovered.redone, t.redelivered, t.checks));
  CHECK(missed.empty());
  if (!missed.empty())
    FAIL_CHECK(fmt::format("fault points never hit: {}", fmt::join(missed, ", ")));
  CHECK(t.redelivered > 0);
}

namespace {

/// A supervisor process on the pool file: arms `recover_point` at its `k`-th hit in
/// itself (recovery runs here), opens the pool and supervises the server; the server
/// instance arms `server_point` at its first request.
[[noreturn]] void supervisor_process(const std::filesystem::path& path, control* ctl,
                                     std::string_view recover_point, std::uint64_t k) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
  int status = 1;
  try {
    if (!recover_point.empty()) ftm::detail::arm_fault(recover_point, k);
    auto pool = pmem::open(path);
    ftm::supervisor<pmem> sup(pool, {.name = "server", .intensity = unlimited}, server_task{ctl});
    // It runs until it is killed: a return is worth saying why.
    const auto report = sup.run();
    std::fprintf(stderr, "supervisor process returned: %s\n", fmt::format("{}", report).c_str());
    status = 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "supervisor process: %s\n", e.what());
  }
  std::_Exit(status);
}

/// True if `pid` ended within `limit`; reaps it.
bool ended_within(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(200us);
  }
  return true;
}

}  // namespace

TEST_CASE("exactly once: supervisors killed during recovery; a new one takes over") {
  // pmem only: a dual_bank pool dies with the last process that maps it.
  const std::filesystem::path path = ftm_test::scratch_file("exactly-once");
  auto pool = pmem::create(path, {.bank_size = std::size_t{8} << 20});
  const world w = make_world(pool);
  shared_page<control> ctl;
  ctl->arm_point.store(-1);
  client<pmem> c(pool, w.port, 0, 11);
  std::uint64_t recovery_kills = 0, supervisor_kills = 0, takeovers = 0;
  std::vector<std::string> summary;
  // The server dies with an ACTIVE descriptor (undone by recovery) or a COMMITTING one
  // (redone); its supervisor dies at the k-th step of that recovery.
  const std::pair<std::string_view, std::string_view> rounds[] = {
      {"recover.mid_undo", "commit.before_state"},
      {"recover.mid_redo", "commit.mid_redo"},
  };
  auto index_of = [](std::string_view name) {
    const auto& n = ftm::detail::fault_point_names;
    return static_cast<std::int32_t>(std::find(n.begin(), n.end(), name) - n.begin());
  };
  pid_t current = ::fork();
  REQUIRE(current >= 0);
  if (current == 0) supervisor_process(path, &*ctl, {}, 0);
  REQUIRE(c.call_once());
  // Makes one call while watching the supervisor: if it dies (killed at its armed
  // recovery point), a successor, unarmed, recovers what it left and serves the call.
  auto call_watching = [&] {
    std::atomic<bool> answered{false};
    std::thread call([&] {
      c.call_once();
      answered.store(true);
    });
    bool died = false;
    int status = 0;
    const auto until = std::chrono::steady_clock::now() + 120s;
    while (!answered.load() && !died) {
      died = ::waitpid(current, &status, WNOHANG) == current;
      if (std::chrono::steady_clock::now() > until) {
        // The call's thread is stuck for good: neither join it nor leave it running.
        std::fputs(
            "exactly_once_test: a call got no answer within 120 s while its "
            "supervisor lived\n",
            stderr);
        std::abort();
      }
      std::this_thread::sleep_for(200us);
    }
    if (died) {
      current = ::fork();
      if (current == 0) supervisor_process(path, &*ctl, {}, 0);
      ++takeovers;
    }
    call.join();
    return died;
  };
  for (const auto& [recover_point, server_point] : rounds) {
    std::uint64_t k = 1;
    int misses = 0;
    for (;;) {
      // Kill the running supervisor (its instance dies with it), and start one armed
      // to die at the k-th step of its recoveries.
      REQUIRE(::kill(current, SIGKILL) == 0);
      REQUIRE(ended_within(current, 60s));
      ++supervisor_kills;
      current = ::fork();
      REQUIRE(current >= 0);
      if (current == 0) supervisor_process(path, &*ctl, recover_point, k);
      ++takeovers;
      // Its take-over recovers the killed instance, which may have died mid-transaction:
      // that recovery may be the one that reaches the point.
      bool died = call_watching();
      if (!died) {
        // Or the recovery after the server dies at `server_point`.
        ctl->arm_point.store(index_of(server_point));
        ctl->arm_k.store(1);
        ctl->arm_pending.store(1);
        died = call_watching();
      }
      if (died) {
        ++recovery_kills;
        ++k;
        REQUIRE(k < 100);
        continue;
      }
      // Not reached: done, unless it never was. A waiter in this process may recover
      // the dead server first (waiters recover dead lock holders): then try again.
      if (k == 1 && ++misses < 20) continue;
      break;
    }
    summary.push_back(fmt::format("{} x{}", recover_point, k - 1));
    CHECK(k > 1);  // the point was hit
  }
  REQUIRE(::kill(current, SIGKILL) == 0);
  REQUIRE(ended_within(current, 60s));
  ++supervisor_kills;
  // The last supervisor's instance dies with it (PR_SET_PDEATHSIG, maybe still on its
  // way): wait for its end, then recover what it left before checking.
  const std::uint64_t last =
      ftm::atomically(pool, [&](auto& tx) { return tx.open_read(w.marker)->running; });
  if (const int fd = ftm::detail::pidfd_open(ftm::detail::owner_pid(last)); fd >= 0) {
    if (ftm::detail::owner_alive(last)) ftm::detail::wait_pidfd(fd);
    ::close(fd);
  }
  pool.recover();
  const tally t = check_exactly_once(pool, {&c.calls()}, {c.reply_port()});
  MESSAGE(
      fmt::format("pmem: {} supervisors killed, {} of them during recovery ({}); {} "
                  "take-overs; {} calls; {} redelivered; {} checks",
                  supervisor_kills, recovery_kills, fmt::join(summary, ", "), takeovers, t.calls,
                  t.redelivered, t.checks));
  CHECK(recovery_kills >= 2);
}
#endif

TEST_CASE("exactly once: a client killed after sending still has its request executed once") {
  auto pool = ftm_test::engine_factory<dual_bank>::make(std::size_t{8} << 20);
  const world w = make_world(*pool);
  const replies r = ftm::atomically(
      *pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<answer>>(tx); });
  const transfer lost{(std::uint64_t{9} << 32) | 1, 3, 0, 1, 0, 25};
  // The client sends (its first transaction commits), then waits for the reply in a
  // second one: it is killed there, before any server runs.
  const pid_t c = ::fork();
  REQUIRE(c >= 0);
  if (c == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    static_cast<void>(ftm::call(*pool, w.port, r, lost));
    std::_Exit(0);
  }
  const auto until = std::chrono::steady_clock::now() + 120s;  // a stall, not a slow machine
  while (ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, w.port).depth; }) ==
         0) {
    REQUIRE(std::chrono::steady_clock::now() < until);
    std::this_thread::sleep_for(100us);
  }
  REQUIRE(::kill(c, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(c, &status, 0) == c);
  pool->recover();
  shared_page<control> ctl;
  ctl->arm_point.store(-1);
  ftm::supervisor<dual_bank> sup(*pool, {.name = "server", .intensity = unlimited},
                                 server_task{&*ctl});
  ftm_test::running_supervisor<dual_bank> runner(sup);
  // The request is executed once; its reply waits in the dead client's reply port.
  auto logged = [&] {
    return ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(w.log)->count; });
  };
  while (logged() == 0) {
    REQUIRE(std::chrono::steady_clock::now() < until);
    std::this_thread::sleep_for(100us);
  }
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, r).depth; }) == 1);
  // A later call on the same reply port discards the stale reply and gets its own.
  transfer t{(std::uint64_t{1} << 32) | 1, 3, 1, 0, 0, 5};
  const answer a = ftm::call(*pool, w.port, r, t);
  sup.stop();
  static_cast<void>(runner.join());
  CHECK(a.id == t.id);
  CHECK(a.count == 2);  // the lost call counted key 3 once, this one once
  ftm::atomically(*pool, [&](auto& tx) {
    const auto lg = tx.open_read(w.log);
    REQUIRE(lg->count == 2);
    const auto seg = tx.open_read(lg->segs[0]);
    CHECK(seg->ids[0] == lost.id);
    CHECK(seg->ids[1] == t.id);
    CHECK(ftm::port_stats_of(tx, r).depth == 0);
    CHECK(ftm::port_stats_of(tx, w.port).depth == 0);
    const auto acc = tx.open_read(w.acc);
    CHECK(acc->balance[0] == opening_balance - 25 + 5);
    CHECK(acc->balance[1] == opening_balance + 25 - 5);
  });
}

// ---- clients killed mid-call, and whole-system restarts -----------------------------
//
// A service with idempotency keys on a pool file. Three client processes make calls
// with keys (client c, sequence s), the third with opaque keys ("client-3-call-s",
// stamped when the client moves to the call); each keeps in the pool the sequence
// number (and opaque key) of the call it is making, and moves past it only after the
// reply came. A server process
// handles each call in one transaction that appends (c, s, token) to a stable log,
// where the token is a counter unique to that application, and replies with it. The
// killer kills, paced by progress (a reply since its last kill), a client mid-call, the
// server mid-request, or every process at once (a whole-system restart: the pool is
// then reopened with nobody using it). A restarted client re-sends its call with the
// same key, or asks `ftm::outcome_of` first (every other start), and reports every
// reply it gets.
//
// The checker, Jepsen's total-queue categories over the log and the clients' state
// (lost: a call a client moved past missing from the log; duplicated: a key in the
// log twice; unexpected: a logged key no client made), plus: each key applied once,
// and each reply reported (first, re-sent, or read with `outcome_of`) is the original
// one, the token in the log.

namespace keyed {

constexpr std::uint32_t n_clients = 3;
constexpr std::size_t seg_entries = 512;
constexpr std::size_t n_segs = 256;  // 131072 applications

struct work {
  std::uint64_t client;
  std::uint64_t sequence;
};
struct result {
  std::uint64_t client;
  std::uint64_t sequence;
  std::uint64_t token;  // the application's number: unique to it
};
struct entry {
  std::uint64_t client;
  std::uint64_t sequence;
  std::uint64_t token;
};
struct segment {
  entry e[seg_entries];
};
struct applied_log {
  std::uint64_t count;
  ftm::stable<segment> segs[n_segs];
};
struct client_state {
  std::uint64_t next[n_clients];  // the call each client is making (1 at first)
  std::uint64_t starts[n_clients];
  // The last client calls with opaque keys: the key of the call it is making, bytes and
  // stamp, kept here until the reply came (what a client must keep to resume).
  ftm::opaque_key opaque[n_clients];
};

/// Whether client `c` calls with opaque keys (else with `call_key`s).
constexpr bool uses_opaque(std::uint32_t c) { return c == n_clients - 1; }

/// The opaque key of client `c`'s call `s`, stamped now.
ftm::opaque_key opaque_key_of(std::uint32_t c, std::uint64_t s) {
  return ftm::opaque_key(fmt::format("client-{}-call-{}", c + 1, s));
}
using svc_type = ftm::service<work, result>;
struct world {
  ftm::stable<applied_log> lg;
  ftm::stable<client_state> clients;
  svc_type svc;
  ftm::reply_port<result> replies[n_clients];
};
constexpr std::string_view root_name = "exactly_once.keyed";

/// What the processes report to the test, in memory shared with them.
struct report {
  enum kind : std::uint32_t { first = 1, resent = 2, outcome = 3, resent_applied = 4 };
  struct rec {
    std::uint64_t client, sequence, token;
    std::uint32_t how;
    std::atomic<std::uint32_t> valid;
  };
  static constexpr std::size_t max_recs = 1 << 17;
  std::atomic<std::uint64_t> count;
  std::atomic<std::uint64_t> acked;      // replies taken, for pacing
  std::atomic<std::uint64_t> kill_mark;  // `acked` at the killer's last kill
  std::atomic<std::uint32_t> finish;     // 1: clients end after their current call
  std::atomic<std::uint32_t> errors;
  std::atomic<std::uint64_t> refusals;  // opaque keys refused by a full table, then re-sent
  std::atomic<std::uint32_t> client_done[n_clients];
  rec recs[max_recs];

  void add(std::uint64_t c, std::uint64_t s, std::uint64_t t, std::uint32_t how) {
    const std::uint64_t i = count.fetch_add(1);
    if (i >= max_recs) return;
    recs[i].client = c;
    recs[i].sequence = s;
    recs[i].token = t;
    recs[i].how = how;
    recs[i].valid.store(1);
  }
};

using E = ftm::engines::pmem;

[[noreturn]] void server_main(const std::filesystem::path& path) {
  try {
    auto pool = E::open(path);
    const world w = ftm::atomically(
        pool, [](auto& tx) { return *tx.open_read(ftm::root<world>(tx, root_name)); });
    auto handler = [&](ftm::transaction<E>& tx, const work& job) {
      auto l = tx.open(w.lg);
      const std::uint64_t token = l->count + 1;
      auto seg = tx.open(l->segs[l->count / seg_entries]);
      seg->e[l->count % seg_entries] = {job.client, job.sequence, token};
      ++l->count;
      pause_a_little();
      return result{job.client, job.sequence, token};
    };
    ftm::serve(pool, w.svc, handler);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keyed server: %s\n", e.what());
  }
  std::_Exit(3);
}

[[noreturn]] void client_main(const std::filesystem::path& path, std::uint32_t c, report* rep) {
  try {
    auto pool = E::open(path);
    const world w = ftm::atomically(
        pool, [](auto& tx) { return *tx.open_read(ftm::root<world>(tx, root_name)); });
    const std::uint64_t starts =
        ftm::atomically(pool, [&](auto& tx) { return ++tx.open(w.clients)->starts[c]; });
    bool resuming = true;  // the call in the state may have been sent by an earlier start
    for (;;) {
      std::uint64_t s = 0;
      ftm::opaque_key okey;
      ftm::atomically(pool, [&](auto& tx) {
        const auto st = tx.open_read(w.clients);
        s = st->next[c];
        okey = st->opaque[c];
      });
      if (rep->finish.load() != 0 && !resuming) break;
      // Runs at most a few calls ahead of the killer (waiting a bounded time), so the
      // calls made, and the log, stay bounded however slow the machine is.
      for (int i = 0;
           i < 4000 && rep->finish.load() == 0 && rep->acked.load() > rep->kill_mark.load() + 16;
           ++i)
        std::this_thread::sleep_for(50us);
      const ftm::call_key key{c + 1, s};
      result r{};
      std::uint32_t how = resuming ? report::resent : report::first;
      bool known = false;
      std::optional<result> before;  // the reply recorded before this start, if applied
      if (resuming) {
        const auto o =
            uses_opaque(c) ? ftm::outcome_of(pool, w.svc, okey) : ftm::outcome_of(pool, w.svc, key);
        if (o.outcome == ftm::key_outcome::too_old) rep->errors.fetch_add(1);
        if (o.outcome == ftm::key_outcome::applied) before = o.reply;
      }
      if (before && starts % 2 == 0) {
        r = *before;  // every other start takes the outcome and does not re-send
        how = report::outcome;
        known = true;
      }
      if (!known && !uses_opaque(c)) r = ftm::call(pool, w.svc, w.replies[c], key, work{c + 1, s});
      // A full opaque-key table refuses a new key (applying nothing): wait for keys to
      // pass their retention and send it again (a long run; bounded by the retention).
      for (int i = 0; !known && uses_opaque(c); ++i) {
        try {
          r = ftm::call(pool, w.svc, w.replies[c], okey, work{c + 1, s});
          break;
        } catch (const ftm::capacity_exceeded&) {
          if (i == 4000) throw;
          rep->refusals.fetch_add(1);
          std::this_thread::sleep_for(10ms);
        }
      }
      if (before && !known) {
        how = report::resent_applied;  // re-sent although applied: the original reply
        if (r.token != before->token) rep->errors.fetch_add(1);
      }
      if (r.client != c + 1 || r.sequence != s) rep->errors.fetch_add(1);
      rep->add(c + 1, s, r.token, how);
      rep->acked.fetch_add(1);
      ftm::atomically(pool, [&](auto& tx) {
        auto st = tx.open(w.clients);
        st->next[c] = s + 1;
        if (uses_opaque(c)) st->opaque[c] = opaque_key_of(c, s + 1);
      });
      resuming = false;
    }
    rep->client_done[c].store(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keyed client %u: %s\n", c, e.what());
    rep->errors.fetch_add(1);
    std::_Exit(3);
  }
  std::_Exit(0);
}

pid_t spawn(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    body();
    std::_Exit(0);
  }
  return pid;
}

void reap(pid_t pid) {
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
}

/// Kills wanted: FTM_EO_KILLS (default 1000), a quarter in sanitizer builds.
std::uint64_t kills_wanted() {
  std::uint64_t n = 1000;
  if (const char* s = std::getenv("FTM_EO_KILLS")) n = std::strtoull(s, nullptr, 10);
  return std::max<std::uint64_t>(1, n / ftm_test::sanitizer_divisor);
}

void run() {
  const auto path = ftm_test::scratch_file("keyed");
  world w{};
  {
    auto pool = E::create(path, {.bank_size = std::size_t{16} << 20});
    w = ftm::atomically(pool, [](auto& tx) {
      auto wr = tx.open(ftm::root<world>(tx, root_name));
      applied_log fresh{};
      for (auto& s : fresh.segs)
        s = ftm::create<segment>(tx);
      wr->lg = tx.create(fresh);
      client_state cs{};
      for (auto& n : cs.next)
        n = 1;
      for (std::uint32_t c = 0; c < n_clients; ++c)
        if (uses_opaque(c)) cs.opaque[c] = opaque_key_of(c, 1);
      wr->clients = tx.create(cs);
      for (auto& r : wr->replies)
        r = ftm::make_port<ftm::reply_to_call<result>>(tx);
      return *wr;
    });
    // In a transaction of its own: with its 801 objects the whole world would exceed a
    // transaction's 1,024. Opaque keys are remembered 20 s: a longer run reuses the
    // entries of expired keys.
    w.svc = ftm::atomically(pool, [](auto& tx) {
      auto wr = tx.open(ftm::root<world>(tx, root_name));
      wr->svc = ftm::make_service<work, result>(tx, {.capacity = 256,
                                                     .window = 64,
                                                     .on_full = ftm::when_full::block,
                                                     .max_opaque_keys = 12800,
                                                     .opaque_retention = 20s});
      return wr->svc;
    });
  }
  ftm_test::shared_page<report> rep;
  const std::uint64_t wanted = kills_wanted();
  pid_t server = spawn([&] { server_main(path); });
  std::vector<pid_t> clients(n_clients);
  for (std::uint32_t c = 0; c < n_clients; ++c)
    clients[c] = spawn([&, c] { client_main(path, c, rep.get()); });
  std::mt19937_64 rng(20261207);
  std::uint64_t kills = 0, client_kills = 0, server_kills = 0, system_restarts = 0;
  std::uint64_t acked_at_kill = 0;
  const auto start = std::chrono::steady_clock::now();
  // A stall, not a slow machine (a run takes 15 s under sanitizers): well inside
  // ctest's 300 s, so a stall fails with what it was doing.
  const auto until = start + 150s;
  while (kills < wanted) {
    // Progress first: a reply since the last kill.
    while (rep->acked.load() == acked_at_kill && rep->errors.load() == 0) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until,
                      fmt::format("no progress after {} kills ({} clients, {} servers, {} "
                                  "whole-system restarts; {} calls acknowledged, {} opaque "
                                  "keys refused by a full table)",
                                  kills, client_kills, server_kills, system_restarts, acked_at_kill,
                                  rep->refusals.load()));
      std::this_thread::sleep_for(50us);
    }
    REQUIRE(rep->errors.load() == 0);
    acked_at_kill = rep->acked.load();
    rep->kill_mark.store(acked_at_kill);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
    const std::uint64_t pick = rng() % 100;
    if (pick < 8) {
      // The whole system: every process at once; the pool is reopened by nobody's heir.
      ::kill(server, SIGKILL);
      for (const pid_t p : clients)
        ::kill(p, SIGKILL);
      reap(server);
      for (const pid_t p : clients)
        reap(p);
      kills += 1 + n_clients;
      ++system_restarts;
      {
        auto pool = E::open(path);  // recovers what the dead left
        static_cast<void>(pool);
      }
      server = spawn([&] { server_main(path); });
      for (std::uint32_t c = 0; c < n_clients; ++c)
        clients[c] = spawn([&, c] { client_main(path, c, rep.get()); });
    } else if (pick < 40) {
      ::kill(server, SIGKILL);
      reap(server);
      ++kills;
      ++server_kills;
      server = spawn([&] { server_main(path); });
    } else {
      const std::uint32_t c = static_cast<std::uint32_t>(rng() % n_clients);
      ::kill(clients[c], SIGKILL);
      reap(clients[c]);
      ++kills;
      ++client_kills;
      clients[c] = spawn([&, c] { client_main(path, c, rep.get()); });
    }
  }
  // The end: each client finishes its call (re-sending it if it was just killed).
  rep->finish.store(1);
  const auto finish_by = std::chrono::steady_clock::now() + 120s;  // a stall, as above
  for (std::uint32_t c = 0; c < n_clients; ++c) {
    int status = 0;
    while (::waitpid(clients[c], &status, WNOHANG) != clients[c]) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < finish_by,
                      fmt::format("client {} did not finish its last call", c + 1));
      std::this_thread::sleep_for(1ms);
    }
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  ::kill(server, SIGKILL);
  reap(server);
  const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start);
  CHECK(rep->errors.load() == 0);
  REQUIRE(rep->count.load() <= report::max_recs);

  // The checker.
  auto pool = E::open(path);
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::uint64_t> applied;  // key -> token
  std::uint64_t duplicated = 0, lost = 0, unexpected = 0, wrong_reply = 0, unreported = 0;
  std::uint64_t resent = 0, resent_applied = 0, by_outcome = 0, opaque_resent = 0;
  client_state cs{};
  ftm::atomically(pool, [&](auto& tx) {
    applied.clear();
    duplicated = 0;
    const auto l = tx.open_read(w.lg);
    for (std::uint64_t i = 0; i < l->count; ++i) {
      const entry& e = tx.open_read(l->segs[i / seg_entries])->e[i % seg_entries];
      if (!applied.emplace(std::pair{e.client, e.sequence}, e.token).second) ++duplicated;
      if (e.token != i + 1) ++wrong_reply;
    }
    cs = *tx.open_read(w.clients);
    // The service's port holds nothing: every request was answered.
    CHECK(ftm::port_stats_of(tx, w.svc.requests).depth == 0);
    CHECK(ftm::port_stats_of(tx, w.svc.dead_letters).depth == 0);
  });
  for (std::uint32_t c = 0; c < n_clients; ++c) {
    for (std::uint64_t s = 1; s < cs.next[c]; ++s)
      if (applied.count({c + 1, s}) == 0) ++lost;
  }
  for (const auto& [key, token] : applied) {
    const auto [client, sequence] = key;
    if (client == 0 || client > n_clients || sequence >= cs.next[client - 1]) ++unexpected;
  }
  std::map<std::pair<std::uint64_t, std::uint64_t>, int> reported;
  for (std::uint64_t i = 0; i < rep->count.load(); ++i) {
    const auto& r = rep->recs[i];
    if (r.valid.load() == 0) continue;
    ++reported[{r.client, r.sequence}];
    const auto it = applied.find({r.client, r.sequence});
    if (it == applied.end() || it->second != r.token) {
      ++wrong_reply;
      FAIL_CHECK(fmt::format("key ({}, #{}): reply token {}, applied with {}", r.client, r.sequence,
                             r.token, it == applied.end() ? 0 : it->second));
    }
    if (r.how == report::resent || r.how == report::resent_applied) {
      ++resent;
      if (uses_opaque(static_cast<std::uint32_t>(r.client - 1))) ++opaque_resent;
    }
    if (r.how == report::resent_applied) ++resent_applied;
    if (r.how == report::outcome) ++by_outcome;
  }
  std::uint64_t answered_twice = 0;
  for (const auto& [key, n] : reported) {
    if (n > 1) answered_twice += n - 1;  // a key answered again: the original reply, checked
  }
  for (const auto& [key, token] : applied)
    if (reported.count(key) == 0) ++unreported;  // killed between reply and report
  MESSAGE(fmt::format(
      "keyed clients: {} kills in {:.1f} s ({} clients, {} servers, {} whole-system restarts); "
      "{} keys applied, {} replies reported ({} after a re-send ({} with opaque keys), {} of them "
      "re-sent after the key was applied, {} read with outcome_of, {} keys answered more than "
      "once; {} opaque keys refused by a full table and re-sent); lost {}, duplicated "
      "{}, unexpected {}, wrong replies {}, "
      "applied but unreported (killed before reporting) {}",
      kills, elapsed.count(), client_kills, server_kills, system_restarts, applied.size(),
      rep->count.load(), resent, opaque_resent, resent_applied, by_outcome, answered_twice,
      rep->refusals.load(), lost, duplicated, unexpected, wrong_reply, unreported));
  CHECK(lost == 0);
  CHECK(duplicated == 0);
  CHECK(unexpected == 0);
  CHECK(wrong_reply == 0);
  CHECK(kills >= wanted);
  // Not vacuous: clients were killed and re-sent, keys were answered twice, the whole
  // system restarted.
  CHECK(client_kills > 0);
  CHECK(resent > 0);
  if (wanted >= 100) {
    CHECK(resent_applied > 0);
    CHECK(opaque_resent > 0);
    CHECK(by_outcome > 0);
    CHECK(system_restarts > 0);
  }
}

}  // namespace keyed

TEST_CASE("exactly once: clients killed mid-call re-send with their keys; whole-system restarts") {
  keyed::run();
}
