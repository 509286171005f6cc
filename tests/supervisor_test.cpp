/// \file
/// Stable tasks and failover (`ftm::supervisor`), tested with real processes: task
/// instances are killed with SIGKILL at random instants, hang, are stopped with
/// SIGSTOP, and their supervisor itself is killed; after every failure the pool must
/// hold exactly the committed work, and the task must carry on.
///
/// The workload: a task takes increment ids from a ticket counter in a shared page
/// outside the pool; each transaction adds one to a stable counter, stores the id in
/// the next slot of a stable log (several objects, written one after another with a
/// pause between, so that kills land half-way), and, once the commit has returned,
/// the task marks the id acknowledged in the shared page. The checker: the counter
/// equals the log's length; the logged ids are strictly increasing (no id twice);
/// every acknowledged id is logged; at most one logged id per kill went
/// unacknowledged; the log slots past its end are still zero (recovery undid the
/// half-written ones); and recovery undid transactions (the test is not vacuous).
///
/// Environment knob: FTM_SUPERVISOR_KILLS (random kills per engine, default 200).

#include "engines.hpp"
#include "process.hpp"
#include "supervision.hpp"

#include <ftm/ftm.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>

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

// ---- the stable objects -----------------------------------------------------------

constexpr std::size_t seg_ids = 2048;  // 16 KiB per segment
constexpr std::size_t n_segments = 64;
constexpr std::uint64_t log_capacity = seg_ids * n_segments;

struct counter {
  std::uint64_t value;
  std::uint64_t stop;  // set by the test: the task returns
};

struct log_segment {
  std::uint64_t ids[seg_ids];
};

struct id_log {
  std::uint64_t count;
  ftm::stable<log_segment> segs[n_segments];
};

struct state {
  ftm::stable<counter> count;
  ftm::stable<id_log> log;
};

constexpr std::string_view state_root = "sup.state";

// ---- what the task shares with the test, outside the pool ---------------------------

constexpr std::uint64_t max_tickets = std::uint64_t{1} << 21;

struct progress {
  std::atomic<std::uint64_t> next_ticket;
  std::atomic<std::uint64_t> acked_total;
  std::atomic<std::int32_t> instance_pid;      // the instance that started last
  std::atomic<std::uint32_t> overlaps;         // instances that found the previous one alive
  std::atomic<std::uint32_t> clear_pdeathsig;  // instances must outlive their supervisor
  std::atomic<std::int32_t> parent_pid;        // its supervisor's process
  std::atomic<std::uint32_t> log_full;         // the task found no room left in the log
  std::atomic<std::uint8_t> acked[max_tickets];
};

/// True if `pid` still runs (or is stopped): a zombie or a vanished pid is dead.
bool running(pid_t pid) {
  const auto st = ftm::detail::read_proc_stat(pid);
  return st.exists && st.state != 'Z' && st.state != 'X';
}

template <class E>
void make_state(E& pool, std::string_view root = state_root) {
  ftm::atomically(pool, [&](auto& tx) {
    auto st = tx.open(ftm::root<state>(tx, root));
    st->count = ftm::create<counter>(tx);
    id_log fresh{};
    for (auto& s : fresh.segs)
      s = ftm::create<log_segment>(tx);
    st->log = tx.create(fresh);
  });
}

template <class E>
state read_state(E& pool, std::string_view root = state_root) {
  return ftm::atomically(pool, [&](auto& tx) { return *tx.open_read(ftm::root<state>(tx, root)); });
}

/// Keeps the processor busy for a while inside a transaction, so kills land there.
void pause_a_little() {
  const auto until = std::chrono::steady_clock::now() + 8us;
  while (std::chrono::steady_clock::now() < until) {
  }
}

/// The task: increments until the stable stop flag is set.
struct increment_task {
  progress* prog;
  std::string_view root = state_root;

  template <class E>
  void operator()(E& pool, ftm::task_context& ctx) const {
    if (prog->clear_pdeathsig.load() != 0) ::prctl(PR_SET_PDEATHSIG, 0);
    prog->parent_pid.store(::getppid());  // before instance_pid, which the test waits on
    const pid_t previous = prog->instance_pid.exchange(::getpid());
    if (previous != 0 && running(previous)) prog->overlaps.fetch_add(1);
    const state st = read_state(pool, root);
    for (;;) {
      ctx.heartbeat();
      const std::uint64_t id = prog->next_ticket.fetch_add(1) + 1;
      if (id >= max_tickets) std::_Exit(50);
      enum { more, full, stop } what = more;
      what = ftm::atomically(pool, [&](auto& tx) {
        auto c = tx.open(st.count);
        if (c->stop != 0) return stop;
        auto lg = tx.open(st.log);
        if (lg->count == log_capacity) return full;
        ++c->value;
        pause_a_little();
        auto seg = tx.open(lg->segs[lg->count / seg_ids]);
        seg->ids[lg->count % seg_ids] = id;
        pause_a_little();
        ++lg->count;
        return more;
      });
      if (what == stop) return;
      if (what == full) {
        prog->log_full.store(1);
        std::this_thread::sleep_for(1ms);
        continue;
      }
      prog->acked[id].store(1);
      prog->acked_total.fetch_add(1);
    }
  }
};

/// What the checker found.
struct verdict {
  std::uint64_t committed = 0;
  std::uint64_t acked = 0;
};

/// Checks the pool against the acknowledgements (see the file comment).
template <class E>
verdict check_pool(E& pool, const progress& prog, std::uint64_t kills,
                   std::string_view root = state_root) {
  verdict v;
  ftm::atomically(pool, [&](auto& tx) {
    const state st = *tx.open_read(ftm::root<state>(tx, root));
    const auto c = tx.open_read(st.count);
    const auto lg = tx.open_read(st.log);
    REQUIRE(lg->count <= log_capacity);
    CHECK(c->value == lg->count);
    v.committed = lg->count;
    std::uint64_t prev = 0;
    std::uint64_t logged_acked = 0;
    std::uint64_t nonzero_tail = 0;
    for (std::size_t s = 0; s < n_segments; ++s) {
      const auto seg = tx.open_read(lg->segs[s]);
      for (std::size_t i = 0; i < seg_ids; ++i) {
        const std::uint64_t index = s * seg_ids + i;
        const std::uint64_t id = seg->ids[i];
        if (index >= lg->count) {
          if (id != 0) ++nonzero_tail;
          continue;
        }
        if (id <= prev || id >= max_tickets) {
          FAIL_CHECK(fmt::format("log slot {} holds id {} after id {}", index, id, prev));
          continue;
        }
        // Every id between two logged ones was never committed: not acknowledged.
        for (std::uint64_t gap = prev + 1; gap < id; ++gap) {
          if (prog.acked[gap].load() != 0)
            FAIL_CHECK(fmt::format("acknowledged id {} is not logged", gap));
        }
        if (prog.acked[id].load() != 0) ++logged_acked;
        prev = id;
      }
    }
    const std::uint64_t tickets = prog.next_ticket.load();
    for (std::uint64_t after = prev + 1; after <= tickets && after < max_tickets; ++after) {
      if (prog.acked[after].load() != 0)
        FAIL_CHECK(fmt::format("acknowledged id {} is not logged", after));
    }
    CHECK(nonzero_tail == 0);
    // acked_total lags the marks by the instance killed between the two stores.
    CHECK(logged_acked >= prog.acked_total.load());
    CHECK(logged_acked <= prog.acked_total.load() + kills);
    // A kill between commit and acknowledgement leaves one logged id unacknowledged.
    CHECK(lg->count - logged_acked <= kills);
    v.acked = logged_acked;
  });
  return v;
}

std::uint64_t kills_wanted() {
  if (const char* s = std::getenv("FTM_SUPERVISOR_KILLS")) return std::strtoull(s, nullptr, 10);
  return 200;
}

/// How long a task may go without committing before a test calls it stuck: a commit
/// takes milliseconds, even in a sanitizer build on a loaded machine.
constexpr std::chrono::milliseconds progress_limit = 120s;

/// Waits up to `limit` for `ready()`.
template <class F>
bool eventually(F ready, std::chrono::milliseconds limit = 20s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(100us);
  }
  return true;
}

}  // namespace

// Not on a `power` pool: the test expects more increments than kills, with kills
// every 1.5 ms at most, and a power commit waits for a device flush (several ms on a
// busy disk), so kills would mostly land while a commit waits.
TEST_CASE_TEMPLATE("a task killed at random instants restarts and loses no committed increment", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  auto pool = ftm_test::engine_factory<E>::make();
  make_state(*pool);
  shared_page<progress> prog;
  ftm::supervisor<E> sup(*pool,
                         {.name = "counter", .intensity = {.max_restarts = 1000000, .period = 1s}},
                         increment_task{&*prog});
  ftm_test::running_supervisor<E> runner(sup);

  const std::uint64_t kills = kills_wanted();
  std::mt19937_64 rng(std::random_device{}());
  // Kills are paced by progress, not by time: each instance is killed at a random
  // instant after it acknowledged an increment, so every instance commits even on a
  // loaded machine.
  for (std::uint64_t k = 0; k < kills; ++k) {
    // Instance k + 1 is the one to kill; it may still be waiting to be released. Its
    // predecessor is reaped by then: later acknowledgements are its own.
    REQUIRE(eventually([&] { return sup.stats().starts == k + 1 && sup.task_pid() != 0; }));
    const std::uint64_t acked = prog->acked_total.load();
    REQUIRE(eventually([&] { return prog->acked_total.load() > acked; }, progress_limit));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1500));
    REQUIRE(sup.signal_task(SIGKILL));
  }
  REQUIRE(eventually([&] { return sup.stats().starts == kills + 1; }));
  const std::uint64_t acked_before_stop = prog->acked_total.load();
  // The last instance commits too (unless the log is full).
  REQUIRE(eventually(
      [&] { return prog->acked_total.load() > acked_before_stop || prog->log_full.load() != 0; },
      progress_limit));
  ftm::atomically(*pool, [](auto& tx) {
    const state st = *tx.open_read(ftm::root<state>(tx, state_root));
    tx.open(st.count)->stop = 1;
  });
  const ftm::supervision_report report = runner.join();
  MESSAGE(fmt::format("{}\n{}", report, report.stats));

  CHECK(report.outcome == ftm::supervision_outcome::completed);
  CHECK(report.stats.restarts == kills);
  CHECK(report.stats.starts == kills + 1);
  CHECK(report.stats.recoveries == kills + 2);  // at take-over, and after each end
  CHECK(report.stats.last_exit.normal());
  CHECK(prog->overlaps.load() == 0);
  const verdict v = check_pool(*pool, *prog, kills);
  MESSAGE(fmt::format("{} kills, {} committed increments, {} acknowledged, {} transactions undone",
                      kills, v.committed, v.acked, report.stats.recovered.undone));
  CHECK(v.acked > kills);  // each of the kills + 1 instances acknowledged an increment
  // Not vacuous: kills landed inside transactions, and recovery undid them.
  CHECK(report.stats.recovered.undone > 0);
  CHECK(report.stats.recovered.undone <= kills);
}

TEST_CASE_TEMPLATE("a hung task is killed when its lease expires, and restarted", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  struct timing {
    std::atomic<std::int64_t> hung_at[4];
    std::atomic<std::int64_t> started_at[4];
  };
  shared_page<timing> t;
  // Heartbeats every sixth of the lease: a beat late by 5 periods on a loaded machine
  // still keeps the task alive.
  static constexpr auto lease = 600ms;
  ftm::supervisor<E> sup(
      *pool, {.name = "hangs", .lease = lease, .intensity = {.max_restarts = 1, .period = 60s}},
      [tp = &*t](E&, ftm::task_context& ctx) {
        const auto n = std::min<std::uint64_t>(ctx.start_number(), 3);
        tp->started_at[n].store(ftm::detail::steady_now_ns());
        for (int i = 0; i < 8; ++i) {
          std::this_thread::sleep_for(lease / 6);
          // Taken before the beat: the lease expires a lease after it at the earliest.
          if (i == 7) tp->hung_at[n].store(ftm::detail::steady_now_ns());
          ftm::heartbeat();  // the free function, as deep code would call it
        }
        for (;;)
          std::this_thread::sleep_for(1s);  // hangs: no more heartbeats
      });
  const auto report = sup.run();
  MESSAGE(fmt::format("{}\n{}", report, report.stats));
  CHECK(report.outcome == ftm::supervision_outcome::gave_up);
  CHECK(report.stats.lease_kills == 2);
  CHECK(report.stats.restarts == 1);
  CHECK(report.stats.last_exit.lease_expired);
  CHECK(fmt::format("{}", report) ==
        "task 'hangs' gave up after 1 restarts: it may restart at most 1 times within 60000 ms; "
        "last exit: killed by SIGKILL (its heartbeat lease expired)");
  // Kept alive by its heartbeats for longer than the lease, then killed within it.
  const auto hung = std::chrono::nanoseconds(t->hung_at[1].load());
  const auto restarted = std::chrono::nanoseconds(t->started_at[2].load());
  REQUIRE(hung.count() != 0);
  REQUIRE(restarted.count() != 0);
  CHECK(hung - std::chrono::nanoseconds(t->started_at[1].load()) > lease);
  CHECK(restarted - hung >= lease - 2ms);
  CHECK(restarted - hung < lease + 10s);  // and a restart takes well under 10 s
}

TEST_CASE_TEMPLATE("a stopped task is killed and reaped before its transaction is recovered", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  make_state(*pool);
  ftm::atomically(*pool, [](auto& tx) {
    tx.open(tx.open_read(ftm::root<state>(tx, state_root))->count)->value = 7;
  });
  struct seen {
    std::atomic<std::int32_t> first_pid;
    std::atomic<std::uint32_t> in_tx;
    std::atomic<std::uint32_t> first_gone;  // 1: reaped, 2: still there
    std::atomic<std::uint64_t> value;
  };
  shared_page<seen> s;
  ftm::supervisor<E> sup(
      *pool, {.name = "stopped", .lease = 500ms}, [sp = &*s](E& e, ftm::task_context& ctx) {
        const state st = read_state(e);
        if (!ctx.restarted()) {
          sp->first_pid.store(::getpid());
          ftm::transaction<E> tx(e);
          tx.begin();
          tx.open(st.count)->value = 999;  // never committed
          sp->in_tx.store(1);
          for (;;) {  // alive and well, until stopped
            ctx.heartbeat();
            std::this_thread::sleep_for(5ms);
          }
        }
        // kill(pid, 0) succeeds on a zombie: only a reaped pid fails.
        const bool gone = ::kill(sp->first_pid.load(), 0) != 0 && errno == ESRCH;
        sp->first_gone.store(gone ? 1 : 2);
        sp->value.store(
            ftm::atomically(e, [&](auto& tx) { return tx.open_read(st.count)->value; }));
      });
  ftm_test::running_supervisor<E> runner(sup);
  REQUIRE(eventually([&] { return s->in_tx.load() == 1; }));
  // Two leases: heartbeats every 5 ms kept it alive (a lease of 500 ms leaves a loaded
  // machine 100 missed beats before a false kill).
  std::this_thread::sleep_for(1000ms);
  CHECK(sup.stats().lease_kills == 0);
  REQUIRE(sup.signal_task(SIGSTOP));
  const auto report = runner.join();
  MESSAGE(fmt::format("{}\n{}", report, report.stats));
  CHECK(report.outcome == ftm::supervision_outcome::completed);
  CHECK(report.stats.lease_kills == 1);
  CHECK(report.stats.restarts == 1);
  CHECK(s->first_gone.load() == 1);
  CHECK(s->value.load() == 7);
  CHECK(report.stats.recovered.undone >= 1);
}

TEST_CASE("restart limits: N restarts within T, then a report that names the cause") {
  auto pool = ftm_test::engine_factory<dual_bank>::make();

  SUBCASE("a task that keeps exiting with status 3") {
    ftm::supervisor<dual_bank> sup(
        *pool, {.name = "exit3", .intensity = {.max_restarts = 3, .period = 10s}},
        [](dual_bank&) { std::_Exit(3); });
    const auto report = sup.run();
    CHECK(report.outcome == ftm::supervision_outcome::gave_up);
    CHECK(report.stats.restarts == 3);
    CHECK(report.stats.starts == 4);
    CHECK(fmt::format("{}", report) ==
          "task 'exit3' gave up after 3 restarts: it may restart at most 3 times within 10000 ms; "
          "last exit: exited with status 3");
  }

  SUBCASE("a task killed by a signal, with no restart allowed") {
    ftm::supervisor<dual_bank> sup(*pool, {.name = "selfkill", .intensity = {.max_restarts = 0}},
                                   [](dual_bank&) { ::kill(::getpid(), SIGKILL); });
    const auto report = sup.run();
    CHECK(report.outcome == ftm::supervision_outcome::gave_up);
    CHECK(report.stats.restarts == 0);
    CHECK(fmt::format("{}", report.stats.last_exit) == "killed by SIGKILL");
  }

  SUBCASE("a task that throws exits with status 1") {
    ftm::supervisor<dual_bank> sup(*pool, {.name = "throws", .intensity = {.max_restarts = 0}},
                                   [](dual_bank&) { throw ftm::invalid_argument("on purpose"); });
    const auto report = sup.run();
    CHECK(report.outcome == ftm::supervision_outcome::gave_up);
    CHECK(fmt::format("{}", report.stats.last_exit) == "exited with status 1");
  }

  SUBCASE("restarts spread wider than the period do not count against the limit") {
    ftm::supervisor<dual_bank> sup(
        *pool, {.name = "slow", .intensity = {.max_restarts = 1, .period = 40ms}},
        [](dual_bank&, ftm::task_context& ctx) {
          std::this_thread::sleep_for(80ms);
          std::_Exit(ctx.start_number() < 5 ? 3 : 0);
        });
    const auto report = sup.run();
    CHECK(report.outcome == ftm::supervision_outcome::completed);
    CHECK(report.stats.restarts == 4);
    CHECK(fmt::format("{}", report) ==
          "task 'slow' completed after 4 restarts; last exit: exited with status 0");
  }

  SUBCASE("a permanent task is restarted after a normal exit too, until stopped") {
    ftm::supervisor<dual_bank> sup(*pool,
                                   {.name = "permanent",
                                    .intensity = {.max_restarts = 100, .period = 60s},
                                    .restart = ftm::restart_policy::permanent},
                                   [](dual_bank&, ftm::task_context& ctx) {
                                     if (ctx.start_number() < 3) return;
                                     for (;;)
                                       std::this_thread::sleep_for(1s);
                                   });
    ftm_test::running_supervisor<dual_bank> runner(sup);
    REQUIRE(eventually([&] { return sup.stats().starts == 3 && sup.task_pid() != 0; }));
    sup.stop();
    const auto report = runner.join();
    CHECK(report.outcome == ftm::supervision_outcome::stopped);
    CHECK(report.stats.restarts == 2);
    CHECK(fmt::format("{}", report) ==
          "task 'permanent' stopped after 2 restarts; last exit: killed by SIGKILL");
  }

  SUBCASE("a second live supervisor of the same task is refused") {
    auto idle = [](dual_bank&, ftm::task_context& ctx) {
      for (;;) {
        ctx.heartbeat();
        std::this_thread::sleep_for(10ms);
      }
    };
    const pid_t first = ::fork();
    REQUIRE(first >= 0);
    if (first == 0) {
      ftm::supervisor<dual_bank> sup(*pool, {.name = "twice"}, idle);
      static_cast<void>(sup.run());
      std::_Exit(0);
    }
    // The first supervisor has started its instance once the pool counts a start.
    REQUIRE(eventually([&] {
      return ftm::atomically(*pool, [](auto& tx) {
               const auto rec =
                   ftm::detail::reserved_root<ftm::detail::task_record>(tx, "ftm.task.twice");
               return tx.open_read(rec)->starts;
             }) == 1;
    }));
    ftm::supervisor<dual_bank> second(*pool, {.name = "twice"}, idle);
    CHECK_THROWS_WITH_AS(second.run(),
                         fmt::format("ftm: usage error: ftm::supervisor: task 'twice' is already "
                                     "supervised by process {}",
                                     first)
                             .c_str(),
                         ftm::usage_error);
    CHECK(second.stats().starts == 0);
    ::kill(first, SIGKILL);
    ::waitpid(first, nullptr, 0);
    // Once the first is dead, its task can be taken over.
    second.stop();
    CHECK(second.run().outcome == ftm::supervision_outcome::stopped);
    CHECK(second.stats().pool_starts == 2);
  }

  SUBCASE("a backup leaves a finished task alone, and waits for an unclaimed one") {
    ftm::supervisor<dual_bank> first(*pool, {.name = "once"}, [](dual_bank&) {});
    CHECK(first.run().outcome == ftm::supervision_outcome::completed);
    ftm::supervisor<dual_bank> backup(*pool, {.name = "once"}, [](dual_bank&) {});
    CHECK(backup.run_as_backup().outcome == ftm::supervision_outcome::completed);
    CHECK(backup.stats().starts == 0);

    ftm::supervisor<dual_bank> waiting(*pool, {.name = "never"}, [](dual_bank&) {});
    ftm_test::running_supervisor<dual_bank> runner(waiting, ftm::claim_policy::after_failure);
    std::this_thread::sleep_for(100ms);
    waiting.stop();
    CHECK(runner.join().outcome == ftm::supervision_outcome::stopped);
    CHECK(waiting.stats().starts == 0);
  }

  SUBCASE("a task name too long for a root is refused") {
    CHECK_THROWS_AS(
        ftm::supervisor<dual_bank>(*pool, {.name = std::string(40, 'x')}, [](dual_bank&) {}),
        ftm::invalid_argument);
  }
}

namespace {

/// The supervisor process of the take-over test: opens the pool file and runs the
/// counter task until it completes; exits 0 if it did, 1 otherwise.
struct supervisor_stats {
  std::atomic<std::uint64_t> took_over;
  std::atomic<std::uint64_t> pool_starts;
  std::atomic<std::uint64_t> undone;
  std::atomic<std::uint32_t> completed;
};

[[noreturn]] void supervise_pool(const std::filesystem::path& path, progress* prog,
                                 supervisor_stats* out) {
  int status = 1;
  try {
    auto pool = pmem::open(path);
    ftm::supervisor<pmem> sup(pool, {.name = "counter", .intensity = {.max_restarts = 0}},
                              increment_task{prog});
    const auto report = sup.run();
    if (out == nullptr) std::_Exit(2);  // the first supervisor is killed before this
    out->took_over.store(report.stats.took_over);
    out->pool_starts.store(report.stats.pool_starts);
    out->undone.store(report.stats.recovered.undone + pool.opening_recovery().undone);
    out->completed.store(report.outcome == ftm::supervision_outcome::completed ? 1 : 0);
    status = 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "supervisor process: %s\n", e.what());
  }
  std::_Exit(status);
}

/// Kills the supervisor process of a pmem pool file while its task commits, starts a
/// new supervisor process on the same file, and checks that it carries on. With
/// `leave_orphan`, the task clears its `PR_SET_PDEATHSIG` and outlives the dead
/// supervisor: the new one must kill it before it recovers and starts its own.
void kill_the_supervisor(bool leave_orphan) {
  const std::filesystem::path path = ftm_test::scratch_file("supervised");
  {
    auto pool = pmem::create(path);
    make_state(pool);
  }
  shared_page<progress> prog;
  prog->clear_pdeathsig.store(leave_orphan ? 1 : 0);
  shared_page<supervisor_stats> second;

  const pid_t s1 = ::fork();
  REQUIRE(s1 >= 0);
  if (s1 == 0) supervise_pool(path, &*prog, nullptr);
  REQUIRE(eventually([&] { return prog->acked_total.load() > 200; }));
  const pid_t instance = prog->instance_pid.load();
  const int instance_fd = ftm::detail::pidfd_open(instance);
  REQUIRE(instance_fd >= 0);
  REQUIRE(::kill(s1, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(s1, &status, 0) == s1);
  pollfd p{instance_fd, POLLIN, 0};
  if (!leave_orphan) {
    // PR_SET_PDEATHSIG: the instance dies with its supervisor.
    CHECK(::poll(&p, 1, 5000) == 1);
  } else {
    const auto acked = prog->acked_total.load();
    CHECK(eventually([&] { return prog->acked_total.load() > acked + 50; }));
    CHECK(::poll(&p, 1, 0) == 0);  // the orphan still runs
  }

  const pid_t s2 = ::fork();
  REQUIRE(s2 >= 0);
  if (s2 == 0) supervise_pool(path, &*prog, &*second);
  REQUIRE(eventually([&] { return prog->instance_pid.load() != instance; }));
  CHECK(::poll(&p, 1, 0) == 1);  // the earlier instance is gone
  ::close(instance_fd);
  const auto acked = prog->acked_total.load();
  REQUIRE(eventually([&] { return prog->acked_total.load() > acked + 200; }));
  {
    auto pool = pmem::open(path);
    ftm::atomically(pool, [](auto& tx) {
      tx.open(tx.open_read(ftm::root<state>(tx, state_root))->count)->stop = 1;
    });
  }
  REQUIRE(::waitpid(s2, &status, 0) == s2);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(second->completed.load() == 1);
  CHECK(second->pool_starts.load() == 2);  // the pool counts the first supervisor's start
  CHECK(second->took_over.load() == (leave_orphan ? 1U : 0U));
  CHECK(prog->overlaps.load() == 0);
  auto pool = pmem::open(path);
  const verdict v = check_pool(pool, *prog, 1);
  MESSAGE(
      fmt::format("orphan left: {}; {} committed increments, {} acknowledged; the new "
                  "supervisor undid {} transactions",
                  leave_orphan, v.committed, v.acked, second->undone.load()));
}

}  // namespace

TEST_CASE("a killed supervisor loses nothing: a new one on the pool file takes over") {
  // pmem only: a dual_bank pool dies with the last process that maps it.
  SUBCASE("its task dies with it") { kill_the_supervisor(false); }
  SUBCASE("its task outlives it, and the new supervisor kills it first") {
    kill_the_supervisor(true);
  }
}

namespace {

struct node_result {
  std::atomic<std::uint32_t> own_outcome;  // 1 + supervision_outcome
  std::atomic<std::uint32_t> peer_outcome;
  std::atomic<std::uint64_t> peer_starts;
  std::atomic<std::uint64_t> peer_recoveries;
};

/// One node of a pair: supervises its own task and backs up its peer's, each in a
/// thread, on the pool file. Exits 0 once both supervisors returned.
[[noreturn]] void run_node(const std::filesystem::path& path, std::string_view own,
                           progress* own_prog, std::string_view peer, progress* peer_prog,
                           node_result* out) {
  int status = 1;
  try {
    auto pool = pmem::open(path);
    ftm::supervisor<pmem> mine(pool, {.name = std::string(own)}, increment_task{own_prog, own});
    ftm::supervisor<pmem> theirs(pool, {.name = std::string(peer)},
                                 increment_task{peer_prog, peer});
    std::exception_ptr error;
    std::thread own_thread([&] {
      try {
        const auto r = mine.run_as_backup(ftm::claim_policy::if_unclaimed);
        out->own_outcome.store(1 + static_cast<std::uint32_t>(r.outcome));
      } catch (...) {
        error = std::current_exception();
      }
    });
    const auto r = theirs.run_as_backup(ftm::claim_policy::after_failure);
    own_thread.join();
    out->peer_outcome.store(1 + static_cast<std::uint32_t>(r.outcome));
    out->peer_starts.store(r.stats.starts);
    out->peer_recoveries.store(r.stats.recoveries);
    if (error) std::rethrow_exception(error);
    status = 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "node %.*s: %s\n", static_cast<int>(own.size()), own.data(), e.what());
  }
  std::_Exit(status);
}

}  // namespace

TEST_CASE("paired nodes: when one node dies, the other takes its task over") {
  const std::filesystem::path path = ftm_test::scratch_file("paired");
  {
    auto pool = pmem::create(path);
    make_state(pool, "pair.a");
    make_state(pool, "pair.b");
  }
  shared_page<progress> pa;
  shared_page<progress> pb;
  shared_page<node_result> ra;
  shared_page<node_result> rb;
  const pid_t a = ::fork();
  REQUIRE(a >= 0);
  if (a == 0) run_node(path, "pair.a", &*pa, "pair.b", &*pb, &*ra);
  const pid_t b = ::fork();
  REQUIRE(b >= 0);
  if (b == 0) run_node(path, "pair.b", &*pb, "pair.a", &*pa, &*rb);

  // Each node runs its own task.
  REQUIRE(eventually([&] { return pa->acked_total.load() > 200 && pb->acked_total.load() > 200; }));
  CHECK(pa->parent_pid.load() == a);
  CHECK(pb->parent_pid.load() == b);
  const pid_t b_instance = pb->instance_pid.load();

  REQUIRE(::kill(b, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(b, &status, 0) == b);
  // Node a takes task b over, and task a goes on.
  REQUIRE(eventually([&] { return pb->instance_pid.load() != b_instance; }));
  CHECK(pb->parent_pid.load() == a);
  const auto acked_a = pa->acked_total.load();
  const auto acked_b = pb->acked_total.load();
  REQUIRE(eventually([&] {
    return pa->acked_total.load() > acked_a + 200 && pb->acked_total.load() > acked_b + 200;
  }));

  {
    auto pool = pmem::open(path);
    for (std::string_view root : {"pair.a", "pair.b"}) {
      ftm::atomically(pool, [&](auto& tx) {
        tx.open(tx.open_read(ftm::root<state>(tx, root))->count)->stop = 1;
      });
    }
  }
  REQUIRE(::waitpid(a, &status, 0) == a);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  constexpr auto completed = 1 + static_cast<std::uint32_t>(ftm::supervision_outcome::completed);
  CHECK(ra->own_outcome.load() == completed);
  CHECK(ra->peer_outcome.load() == completed);
  CHECK(ra->peer_starts.load() == 1);
  CHECK(pa->overlaps.load() == 0);
  CHECK(pb->overlaps.load() == 0);
  auto pool = pmem::open(path);
  const verdict va = check_pool(pool, *pa, 0, "pair.a");
  const verdict vb = check_pool(pool, *pb, 1, "pair.b");
  MESSAGE(fmt::format("task a: {} increments; task b: {} increments, taken over by node a",
                      va.committed, vb.committed));
}

TEST_CASE_TEMPLATE("signal_task(SIGKILL) is true once per instance: kills and restarts agree", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  // Issue 8, item 11: an instance already sent SIGKILL, dying but not yet reaped, was
  // reported signalled again, so counts of kills and restarts disagreed.
  auto pool = ftm_test::engine_factory<E>::make();
  ftm::supervisor<E> sup(
      *pool, {.name = "sleeper", .intensity = {.max_restarts = 1000000, .period = 1s}}, [](E&) {
        for (;;)
          std::this_thread::sleep_for(1ms);
      });
  ftm_test::running_supervisor<E> runner(sup);
  // A failed REQUIRE leaves the test with the task still running: stop it, so that
  // the runner's thread ends.
  struct stop_on_exit {
    ftm::supervisor<E>& s;
    ~stop_on_exit() { s.stop(); }
  } stopper{sup};
  std::atomic<std::uint64_t> kills{0};
  // Bursts paced by progress: each round waits for the instance after the last one
  // killed, then signals four times at once. A call finds the instance it killed
  // dying (refused), or, once the supervisor has restarted the task, the next one.
  constexpr std::uint64_t rounds = 60;
  std::uint64_t refused = 0;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    const bool next =
        eventually([&] { return sup.stats().starts == kills.load() + 1 && sup.task_pid() != 0; });
    INFO(fmt::format("round {}, {} kills: {}", r, kills.load(), sup.stats()));
    REQUIRE(next);
    for (int i = 0; i < 4; ++i) {
      if (sup.signal_task(SIGKILL)) {
        ++kills;
      } else {
        ++refused;
      }
    }
  }
  CHECK(kills.load() >= rounds);
  CHECK(refused > 0);  // not vacuous: some calls found their instance dying
  // Unpaced: two threads kill whatever runs, racing each other and the restarts.
  auto hammer = [&] {
    for (int i = 0; i < 150; ++i) {
      if (sup.signal_task(SIGKILL)) ++kills;
      std::this_thread::sleep_for(std::chrono::microseconds(100 + 150 * (i % 3)));
    }
  };
  std::thread other(hammer);
  hammer();
  other.join();
  // Every kill ends one instance, and each end is followed by one restart.
  REQUIRE(eventually([&] { return sup.stats().starts == kills.load() + 1; }));
  sup.stop();
  const ftm::supervision_report report = runner.join();
  MESSAGE(fmt::format("{} kills; {}", kills.load(), report.stats));
  CHECK(report.outcome == ftm::supervision_outcome::stopped);
  CHECK(report.stats.restarts == kills.load());
  CHECK(report.stats.starts == kills.load() + 1);
  CHECK(kills.load() > rounds);           // the unpaced phase killed too
  CHECK_FALSE(sup.signal_task(SIGKILL));  // nothing runs after run() returned
}
