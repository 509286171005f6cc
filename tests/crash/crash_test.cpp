/// \file
/// Crash tests of the dual-bank engines, `ftm::engines::dual_bank` (a shared memfd)
/// and `ftm::engines::pmem` (a pool file): a forked worker runs bank transfers on a
/// pool and dies by SIGKILL, at random instants and at every named fault point (also
/// inside recovery). Then the pool is recovered and every transaction must be
/// all-or-nothing: the pool is quiescent and both banks agree, the total balance is
/// conserved, the per-account operation counters agree with the committed transfer
/// count, exactly one receipt and one large blob are alive and match that count, and
/// the transaction the worker died in is redone exactly when it had reached the
/// COMMITTING state.
///
/// Who recovers: for `dual_bank`, the parent (the paper's backup processor) calls
/// `recover()` on the mapping it shares with the worker. For `pmem`, a fresh process
/// (a forked checker) opens the pool file, whose `open()` recovers before it returns,
/// checks the invariants on its own mapping and reports through a shared page; the
/// parent's mapping only starts the next worker. Recovery killed at its own fault
/// points dies inside `recover()` (dual_bank) or inside `pmem::open()` (pmem), and
/// the next recoverer (or opener) completes it.
///
/// Built with FTM_FAULT_INJECTION=1. Environment knobs, for both engines:
/// FTM_CRASH_KILLS (random kills, default 1000, a quarter in sanitizer builds; at least
/// 200 are made), FTM_CRASH_SEED (seed of the random tests).
///
/// Kills are paced by progress, not by time: a worker is killed at a random instant
/// after its first commit, so that a loaded machine, which slows the workers down,
/// cannot make the kills land before any work (see `wait_for_progress`).

#include "../engines.hpp"

#include <ftm/detail/fault.hpp>
#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if !defined(FTM_FAULT_INJECTION) || !FTM_FAULT_INJECTION
#error "the crash tests need the fault points: compile with FTM_FAULT_INJECTION=1"
#endif

namespace {

// ---- the stable objects -----------------------------------------------------------

constexpr std::size_t bank_bytes = std::size_t{4} << 20;
constexpr std::size_t n_accounts = 256;
constexpr std::int64_t initial_balance = 1000;

struct account {
  std::int64_t balance;
  std::uint64_t ops;  // transfers that touched this account
};

/// One per committed transfer; each transfer creates the next and destroys the last.
struct receipt {
  std::uint64_t seq;  // the audit count of the transfer that made it
  std::uint32_t from;
  std::uint32_t to;
  std::int64_t amount;
};

/// About 80 KiB: a large object over two chunks, so the large-object allocator and
/// its tail metadata are created, freed, undone and redone too.
struct blob {
  static constexpr std::size_t n_words = 10000;
  std::uint64_t seq;
  std::uint64_t words[n_words];
};

struct audit {
  std::uint64_t transfers;  // committed transfers
  std::uint64_t blobs;      // blobs made by committed transfers
  ftm::stable<receipt> last;
  ftm::stable<blob> big;
};

/// The named root: everything the worker finds again after a restart.
struct bank {
  ftm::stable<audit> audit_ref;
  ftm::stable<account> accounts[n_accounts];
};

constexpr std::string_view root_name = "crash.bank";
/// Live objects: the root and its layout description, the audit, one receipt, one blob
/// and the accounts.
constexpr std::uint64_t expected_objects = 5 + n_accounts;

/// How each engine is recovered after a kill.
template <class E>
struct engine_traits;

template <>
struct engine_traits<ftm::engines::dual_bank> {
  static constexpr std::string_view name = "dual_bank";
  /// Recovery and the checks run in the parent, on the mapping it shares with workers.
  static constexpr bool fresh_process = false;
};

template <>
struct engine_traits<ftm::engines::pmem> {
  static constexpr std::string_view name = "pmem";
  /// Recovery and the checks run in a fresh process that opens the pool file.
  static constexpr bool fresh_process = true;
};

template <>
struct engine_traits<ftm_test::pmem_power> {
  static constexpr std::string_view name = "pmem (durability power)";
  static constexpr bool fresh_process = true;
};

template <>
struct engine_traits<ftm_test::pmem_power_lines> {
  static constexpr std::string_view name = "pmem (durability power, cache lines forced)";
  static constexpr bool fresh_process = true;
};

void fill_blob(blob& b, std::uint64_t seq) {
  b.seq = seq;
  b.words[0] = seq;
  b.words[blob::n_words / 2] = ~seq;
  b.words[blob::n_words - 1] = seq * 3 + 1;
}

bool blob_ok(const blob& b) {
  return b.words[0] == b.seq && b.words[blob::n_words / 2] == ~b.seq &&
         b.words[blob::n_words - 1] == b.seq * 3 + 1;
}

/// Thrown inside a transaction that must abort (and so reach `abort.mid_undo`).
struct intended_abort {};

/// What a worker shares with the parent: a plain MAP_SHARED anonymous page, outside
/// the pool, written by the worker after each transfer returns from `atomically`.
struct progress {
  std::atomic<std::uint64_t> committed;  // transfers returned from atomically
  std::atomic<std::uint64_t> attempts;   // transfers started (committing or not)
  std::atomic<std::uint64_t> completed;  // 1 once the worker ran its whole program
  std::atomic<std::uint64_t> hits[ftm::detail::fault_point_names.size()];
};

bool is_recovery_point(std::string_view name) { return name.starts_with("recover."); }

/// A worker killed at one of these had made its decision stable: recovery redoes it.
bool is_after_decision(std::string_view name) {
  return name == "commit.after_state" || name == "commit.after_mark" || name == "commit.mid_redo" ||
         name == "commit.before_release";
}

// ---- the workload -----------------------------------------------------------------

/// This process's session on `pool`, made on first use. A forked child makes its own:
/// the one it inherited belongs to its parent (and is left alone, not detached).
template <class E>
ftm::session<E>& worker_session(E& pool) {
  struct cached {
    pid_t pid = 0;
    E* pool = nullptr;
    std::unique_ptr<ftm::session<E>> session;
  };
  static cached& c = *new cached;  // never destroyed: workers leave through _exit
  if (c.pid != ::getpid() || c.pool != &pool) {
    if (c.pid != ::getpid()) static_cast<void>(c.session.release());
    c.session = std::make_unique<ftm::session<E>>(pool);
    c.pid = ::getpid();
    c.pool = &pool;
  }
  return *c.session;
}

/// One transfer: moves `amount` between two accounts, counts it in both and in the
/// audit, replaces the receipt (freeing the previous one, before or after creating the
/// new one, so a freed block is also reused in the same transaction) and, if
/// `with_blob`, replaces the large blob. Objects are modified as soon as they are
/// opened, so a crash leaves a partly written transaction behind. Throws
/// `intended_abort` at the end if `abort_it`.
template <class E>
void transfer(E& pool, const bank& h, std::mt19937_64& rng, bool abort_it, bool with_blob) {
  const auto from = static_cast<std::uint32_t>(rng() % n_accounts);
  auto to = static_cast<std::uint32_t>(rng() % (n_accounts - 1));
  if (to >= from) ++to;
  const auto amount = static_cast<std::int64_t>(rng() % 100 + 1);
  // Half the transfers run on a session, half claim a descriptor: recovery sees both.
  auto atomically = [&](auto&& f) {
    return from % 2 == 0 ? ftm::atomically(worker_session(pool), f) : ftm::atomically(pool, f);
  };
  atomically([&](auto& tx) {
    {
      auto a = tx.open(h.accounts[from]);
      a->balance -= amount;
      ++a->ops;
    }
    {
      auto b = tx.open(h.accounts[to]);
      b->balance += amount;
      ++b->ops;
    }
    auto au = tx.open(h.audit_ref);
    const std::uint64_t seq = ++au->transfers;
    const ftm::stable<receipt> old = au->last;
    if (seq % 2 == 0) {
      tx.destroy(old);
      au->last = tx.create(receipt{seq, from, to, amount});
    } else {
      au->last = tx.create(receipt{seq, from, to, amount});
      tx.destroy(old);
    }
    if (with_blob) {
      const std::uint64_t bseq = ++au->blobs;
      const ftm::stable<blob> fresh = tx.template create<blob>();
      {
        auto nb = tx.open(fresh);
        fill_blob(*nb, bseq);
      }
      tx.destroy(au->big);
      au->big = fresh;
    }
    if (abort_it) throw intended_abort{};
  });
}

/// Runs one transfer, counting it in `p` once it committed and returned.
template <class E>
void counted_transfer(E& pool, const bank& h, std::mt19937_64& rng, bool abort_it, bool with_blob,
                      progress& p) {
  p.attempts.fetch_add(1, std::memory_order_relaxed);
  try {
    transfer(pool, h, rng, abort_it, with_blob);
  } catch (const intended_abort&) {
    return;
  }
  p.committed.fetch_add(1, std::memory_order_release);
}

/// The worker's program in the fault-point sweeps: a fixed mix of transfers, aborted
/// transfers, and transfers that replace the blob (one of them aborted).
constexpr int program_length = 10;
template <class E>
void run_program(E& pool, const bank& h, std::uint64_t seed, progress& p) {
  std::mt19937_64 rng{seed};
  for (int i = 0; i < program_length; ++i) {
    counted_transfer(pool, h, rng, i % 4 == 3, i == 2 || i == 7, p);
  }
}

template <class E>
bank load_bank(E& pool) {
  return ftm::atomically(pool, [](auto& tx) {
    auto r = tx.template root<bank>(root_name);
    auto v = tx.open_read(r);
    return *v;
  });
}

// ---- processes ----------------------------------------------------------------------

/// Forks a child that runs `body` and exits: 0 if it returned, 3 if it threw. The
/// child never returns into doctest, and `_exit` skips the parent's atexit work.
template <class F>
pid_t spawn(F&& body) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    // A worker must not outlive a test that failed half-way: it would spin forever.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(5);
    int code = 0;
    try {
      body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "crash_test child %d: %s\n", static_cast<int>(::getpid()), e.what());
      code = 3;
    } catch (...) {
      std::fprintf(stderr, "crash_test child %d: unknown exception\n",
                   static_cast<int>(::getpid()));
      code = 4;
    }
    std::fflush(stderr);
    ::_exit(code);
  }
  return pid;
}

int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::system_error(errno, std::generic_category(), "waitpid");
  }
  return status;
}

bool killed(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }
bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("status {:#x}", status);
}

/// Kills are paced by progress, not by time: before a kill, the killer waits here
/// until the worker `pid` has committed a transfer since it started (`counter` passed
/// `from`), so that every kill lands after a commit even on a loaded machine. A worker
/// that ends, or makes no progress for `stall_limit` (a hang, not a slow machine: a
/// commit takes milliseconds), fails the test.
constexpr auto stall_limit = std::chrono::seconds(120);
void wait_for_progress(pid_t pid, const std::atomic<std::uint64_t>& counter, std::uint64_t from) {
  const auto until = std::chrono::steady_clock::now() + stall_limit;
  while (counter.load(std::memory_order_acquire) <= from) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    REQUIRE_MESSAGE(r == 0, fmt::format("worker {} {} before its first commit", pid,
                                        r == pid ? describe(status) : "could not be waited for"));
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until,
                    fmt::format("worker {} committed nothing in {} s", pid, stall_limit.count()));
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : fallback;
}

// ---- checks -----------------------------------------------------------------------

struct totals {
  std::uint64_t kills = 0;
  std::uint64_t recoveries = 0;  // recoveries that found a dead transaction
  std::uint64_t undone = 0;
  std::uint64_t redone = 0;
  std::uint64_t locks_released = 0;

  void add(const ftm::recovery_report& r) {
    undone += r.undone;
    redone += r.redone;
    locks_released += r.locks_released;
    if (r.undone + r.redone > 0) ++recoveries;
  }
};

/// The committed counts read back after a recovery.
struct snapshot {
  std::uint64_t transfers = 0;
  std::uint64_t blobs = 0;
};

/// Checks every invariant of a quiescent, recovered pool; on success stores the
/// committed counts in `out` and returns "", otherwise says what is wrong. Uses no
/// doctest assertion: it also runs in checker processes.
template <class E>
std::string inspect(E& pool, snapshot& out) {
  const auto report = pool.check();
  if (!report.ok()) {
    std::string all;
    for (const auto& problem : report.problems)
      all += "\n  " + problem;
    return fmt::format("pool.check() found {} problems:{}", report.problems.size(), all);
  }
  if (report.objects != expected_objects) {
    return fmt::format("{} live objects, expected {} (leak or lost object)", report.objects,
                       expected_objects);
  }
  // recover() is idempotent: a second call finds nothing to do.
  const auto again = pool.recover();
  if (again.undone + again.redone + again.locks_released != 0) {
    return fmt::format("a second recover() still did something: {}", again);
  }

  struct reading {
    snapshot s;
    std::int64_t total = 0;
    std::uint64_t ops = 0;
    receipt last{};
    std::uint64_t blob_seq = 0;
    bool blob_intact = false;
  };
  const bank h = load_bank(pool);  // found again through the named root
  const reading r = ftm::atomically(pool, [&h](auto& tx) {
    reading o;
    auto au = tx.open_read(h.audit_ref);
    o.s = {au->transfers, au->blobs};
    for (const auto& ref : h.accounts) {
      auto a = tx.open_read(ref);
      o.total += a->balance;
      o.ops += a->ops;
    }
    o.last = *tx.open_read(au->last);
    auto b = tx.open_read(au->big);
    o.blob_seq = b->seq;
    o.blob_intact = blob_ok(*b);
    return o;
  });
  constexpr auto expected_total = static_cast<std::int64_t>(n_accounts) * initial_balance;
  if (r.total != expected_total) {
    return fmt::format("total balance {} is not conserved ({} expected)", r.total, expected_total);
  }
  if (r.ops != 2 * r.s.transfers) {
    return fmt::format("accounts count {} operations, the audit {} transfers (x2 = {})", r.ops,
                       r.s.transfers, 2 * r.s.transfers);
  }
  if (r.last.seq != r.s.transfers) {
    return fmt::format("the live receipt is #{}, the audit counts {} transfers", r.last.seq,
                       r.s.transfers);
  }
  if (r.blob_seq != r.s.blobs || !r.blob_intact) {
    return fmt::format("the live blob is #{} (intact: {}), the audit counts {} blobs", r.blob_seq,
                       r.blob_intact, r.s.blobs);
  }
  out = r.s;
  return {};
}

/// What a checker process (pmem) reports to the parent, on a MAP_SHARED anonymous
/// page. The parent reads it after reaping the checker.
struct checker_report {
  std::uint32_t done;            // 1 once the checker reached its end
  ftm::recovery_report opening;  // what the checker's pmem::open() recovered
  snapshot s;                    // the committed counts, when it verified
  char error[8192];              // "" or what is wrong
};

template <class T>
T* map_shared_page() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
  return ::new (p) T{};
}

// ---- the rig: a pool, its bank, and the pages shared with the children -------------

/// What a recovery did, and the committed counts found after it.
struct outcome {
  ftm::recovery_report rep;
  snapshot s;
};

template <class E>
class rig {
 public:
  static constexpr bool fresh_process = engine_traits<E>::fresh_process;

  rig() : pool_{ftm_test::engine_factory<E>::make(bank_bytes)} {
    progress_ = map_shared_page<progress>();
    checker_ = map_shared_page<checker_report>();
    setup();
  }
  rig(const rig&) = delete;
  rig& operator=(const rig&) = delete;
  ~rig() {
    ::munmap(checker_, sizeof(checker_report));
    ::munmap(progress_, sizeof(progress));
  }

  /// The parent's pool: workers forked from the parent run on its mapping.
  E& pool() { return *pool_; }
  progress& shared() { return *progress_; }

  void reset_progress() {
    progress_->committed.store(0);
    progress_->attempts.store(0);
    progress_->completed.store(0);
    for (auto& h : progress_->hits)
      h.store(0);
  }

  /// After a kill, with no worker running: recovers the pool and checks every
  /// invariant. dual_bank: `recover()` in the parent. pmem: a fresh process opens the
  /// pool file (recovering it), checks it, and opens it once more, which must find
  /// nothing left to recover. `what` names the situation in failure messages.
  outcome recover_and_verify(const std::string& what) {
    INFO("after ", what);
    if constexpr (fresh_process) {
      run_checker(true);
      return {checker_->opening, checker_->s};
    } else {
      const auto rep = pool_->recover();
      snapshot s;
      const std::string problem = inspect(*pool_, s);
      REQUIRE_MESSAGE(problem.empty(), problem);
      return {rep, s};
    }
  }

  /// Recovery alone, while other workers run: the same recoverer, no checks.
  ftm::recovery_report recover_only() {
    if constexpr (fresh_process) {
      run_checker(false);
      return checker_->opening;
    } else {
      return pool_->recover();
    }
  }

  /// Runs a recoverer armed to die at the `k`-th hit of `point`, inside `recover()`
  /// (dual_bank) or inside `pmem::open()` (pmem); returns its wait status.
  int run_killed_recoverer(std::string_view point, std::uint64_t k) {
    const pid_t pid = spawn([&] {
      ftm::detail::arm_fault(point, k);
      if constexpr (fresh_process) {
        [[maybe_unused]] const auto fresh = E::open(pool_->path());
      } else {
        static_cast<void>(pool_->recover());
      }
    });
    return reap(pid);
  }

  /// Whether the pool looks quiescent and consistent. Reads the parent's mapping
  /// without changing anything (no recovery), so a half-recovered pool shows as such.
  bool looks_finished() const { return pool_->check().ok(); }

 private:
  /// pmem: forks a process that opens the pool file on its own mapping (open()
  /// recovers before it returns) and, if `verify`, checks every invariant.
  void run_checker(bool verify) {
    *checker_ = checker_report{};
    const std::filesystem::path path = pool_->path();
    const std::uint64_t id = pool_->pool_id();
    const pid_t pid = spawn([&] {
      checker_report& out = *checker_;
      std::string problem;
      try {
        {
          auto fresh = E::open(path);
          out.opening = fresh.opening_recovery();
          if (fresh.pool_id() != id) {
            problem = fmt::format("the pool file holds pool {:#x}, not {:#x}", fresh.pool_id(), id);
          } else if (verify) {
            problem = inspect(fresh, out.s);
          }
        }
        if (problem.empty() && verify) {
          // Recovery is complete in the file: the next opener finds nothing to do.
          const auto again = E::open(path);
          const auto& r = again.opening_recovery();
          if (r.undone + r.redone + r.locks_released != 0) {
            problem = fmt::format("opening the pool again still recovered something: {}", r);
          }
        }
      } catch (const std::exception& e) {
        problem = fmt::format("the checker failed: {}", e.what());
      }
      const std::size_t n = std::min(problem.size(), sizeof out.error - 1);
      std::memcpy(out.error, problem.data(), n);
      out.error[n] = '\0';
      out.done = 1;
    });
    const int status = reap(pid);
    REQUIRE_MESSAGE(exited_ok(status), fmt::format("the checker process {}", describe(status)));
    REQUIRE(checker_->done == 1);
    REQUIRE_MESSAGE(checker_->error[0] == '\0', std::string(checker_->error));
  }

  void setup() {
    E& pool = *pool_;
    ftm::atomically(pool, [](auto& tx) {
      auto root = tx.template root<bank>(root_name);
      auto b = tx.open(root);
      const auto big = tx.template create<blob>();
      fill_blob(*tx.open(big), 0);
      b->audit_ref = tx.create(audit{0, 0, tx.create(receipt{}), big});
    });
    // In batches: each created object takes a log entry of the creating transaction.
    for (std::size_t first = 0; first < n_accounts; first += 64) {
      ftm::atomically(pool, [first](auto& tx) {
        auto b = tx.open(tx.template root<bank>(root_name));
        for (std::size_t i = first; i < std::min(first + 64, n_accounts); ++i) {
          b->accounts[i] = tx.create(account{initial_balance, 0});
        }
      });
    }
  }

  decltype(ftm_test::engine_factory<E>::make()) pool_;
  progress* progress_ = nullptr;
  checker_report* checker_ = nullptr;
};

/// Checks the outcome of the transaction a worker died in: `base` is the audit count
/// before the worker started, `committed` the transfers it returned from.
void check_outcome(const snapshot& after, std::uint64_t base, std::uint64_t committed,
                   const ftm::recovery_report& rep, bool allow_unreported_commit) {
  const std::uint64_t returned = base + committed;
  INFO(fmt::format("audit before the worker: {}, transfers it returned from: {}, recovery: {}",
                   base, committed, rep));
  if (rep.redone > 0) {
    // The decision was stable: the transfer counts although atomically never returned.
    CHECK(after.transfers == returned + 1);
  } else if (rep.undone > 0) {
    CHECK(after.transfers == returned);
  } else if (allow_unreported_commit) {
    // Killed between transactions: the last one may have committed without the worker
    // having counted it yet.
    CHECK((after.transfers == returned || after.transfers == returned + 1));
  } else {
    CHECK(after.transfers == returned);
  }
}

/// Who recovers, for the summary lines.
template <class E>
constexpr std::string_view recoverer() {
  return engine_traits<E>::fresh_process ? "pmem::open() in a fresh process"
                                         : "recover() in the parent";
}

}  // namespace

// ---- random kills ---------------------------------------------------------------------

TEST_CASE_TEMPLATE("crash: a worker killed by SIGKILL at random instants is recovered", E,
                   FTM_TEST_ENGINES_AND_LINES) {
  rig<E> r;
  E& pool = r.pool();
  // A power pool's commits wait for the disk: a fifth of the kills there, and a
  // sanitizer build a quarter; 200 at least.
  const std::uint64_t asked = env_or("FTM_CRASH_KILLS", 1000);
  const std::uint64_t kills = std::max<std::uint64_t>(
      (ftm_test::transaction_divisor<E> == 1 ? asked : asked / 5) / ftm_test::sanitizer_divisor,
      200);
  const std::uint64_t seed = env_or("FTM_CRASH_SEED", std::random_device{}());
  std::mt19937_64 rng{seed};
  INFO("FTM_CRASH_SEED=", seed);

  totals t;
  std::uint64_t mid_transaction = 0;  // kills that left a transaction for recovery
  std::uint64_t total_committed = 0;
  const auto start = std::chrono::steady_clock::now();
  snapshot before = r.recover_and_verify("setup").s;
  for (std::uint64_t kill = 0; kill < kills; ++kill) {
    r.reset_progress();
    const std::uint64_t child_seed = rng();
    const pid_t pid = spawn([&] {
      const bank h = load_bank(pool);  // found again through the named root
      std::mt19937_64 wrng{child_seed};
      for (std::uint64_t i = 0;; ++i) {
        counted_transfer(pool, h, wrng, wrng() % 6 == 0, wrng() % 16 == 0, r.shared());
      }
    });
    // After its first commit, at a random instant.
    wait_for_progress(pid, r.shared().committed, 0);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3001));
    ::kill(pid, SIGKILL);
    const int status = reap(pid);
    REQUIRE_MESSAGE(killed(status),
                    fmt::format("the worker {} before it was killed", describe(status)));
    ++t.kills;

    const auto [rep, after] =
        r.recover_and_verify(fmt::format("random kill {} (seed {})", kill, seed));
    t.add(rep);
    if (rep.undone + rep.redone > 0) ++mid_transaction;
    REQUIRE(rep.undone + rep.redone <= 1);  // one worker, one transaction at a time
    const std::uint64_t committed = r.shared().committed.load(std::memory_order_acquire);
    total_committed += committed;
    check_outcome(after, before.transfers, committed, rep, true);
    before = after;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(
      "crash/random [{}]: {} kills, {} recoveries of a transaction cut short ({} undone, {} "
      "redone, {} locks released) by {}, {} transfers committed in total, {:.1f} s "
      "(FTM_CRASH_SEED={})\n",
      engine_traits<E>::name, t.kills, t.recoveries, t.undone, t.redone, t.locks_released,
      recoverer<E>(), total_committed, secs, seed);
  std::fflush(stdout);
  CHECK(t.kills >= 200);
  // Not vacuous: some kills must have landed inside a transaction, and every worker
  // committed before its kill.
  CHECK(mid_transaction > 0);
  CHECK(total_committed >= t.kills);
}

// ---- named fault points -------------------------------------------------------------

TEST_CASE_TEMPLATE("crash: a worker killed at every hit of every named fault point is recovered", E,
                   FTM_TEST_ENGINES_AND_LINES) {
  rig<E> r;
  E& pool = r.pool();
  constexpr std::uint64_t max_k = 80;

  totals t;
  std::vector<std::string> summary;
  std::map<std::string_view, bool> hit_at_first;
  const auto start = std::chrono::steady_clock::now();
  snapshot before = r.recover_and_verify("setup").s;
  for (std::size_t pi = 0; pi < ftm::detail::fault_point_names.size(); ++pi) {
    const std::string_view name = ftm::detail::fault_point_names[pi];
    if (is_recovery_point(name)) continue;  // fires inside recovery: see the next test
    std::uint64_t point_kills = 0;
    std::uint64_t hits_when_complete = 0;
    bool completed = false;
    for (std::uint64_t k = 1; k <= max_k && !completed; ++k) {
      r.reset_progress();
      const pid_t pid = spawn([&] {
        // The hit counters are per process and a child starts with its parent's.
        const auto& names = ftm::detail::fault_point_names;
        std::array<std::uint64_t, names.size()> inherited{};
        for (std::size_t i = 0; i < names.size(); ++i)
          inherited[i] = ftm::detail::fault_hits(names[i]);
        const bank h = load_bank(pool);
        ftm::detail::arm_fault(name, k);
        run_program(pool, h, pi * 1000 + k, r.shared());
        ftm::detail::disarm_faults();
        for (std::size_t i = 0; i < names.size(); ++i) {
          r.shared().hits[i].store(ftm::detail::fault_hits(names[i]) - inherited[i]);
        }
        r.shared().completed.store(1);
      });
      const int status = reap(pid);
      const std::string what = fmt::format("a kill at {} (hit {})", name, k);
      INFO(what);
      const std::uint64_t committed = r.shared().committed.load(std::memory_order_acquire);
      if (exited_ok(status)) {
        // The program ended before the k-th hit: nothing to recover.
        completed = true;
        hits_when_complete = r.shared().hits[pi].load();
        REQUIRE(r.shared().completed.load() == 1);
        REQUIRE(committed == static_cast<std::uint64_t>(program_length - program_length / 4));
        const auto [rep, after] = r.recover_and_verify(what + ", which was never reached");
        CHECK(rep.undone + rep.redone == 0);
        CHECK(after.transfers == before.transfers + committed);
        before = after;
        break;
      }
      REQUIRE_MESSAGE(killed(status), fmt::format("the worker {}", describe(status)));
      ++t.kills;
      ++point_kills;
      if (k == 1) hit_at_first[name] = true;
      const auto [rep, after] = r.recover_and_verify(what);
      t.add(rep);
      // The worker died inside exactly one transaction, in the state the point names.
      if (is_after_decision(name)) {
        CHECK(rep.redone == 1);
        CHECK(rep.undone == 0);
      } else {
        CHECK(rep.undone == 1);
        CHECK(rep.redone == 0);
      }
      check_outcome(after, before.transfers, committed, rep, false);
      before = after;
    }
    summary.push_back(fmt::format(
        "{} x{}{}", name, point_kills,
        completed ? fmt::format(" (all {} hits)", hits_when_complete) : std::string(" (capped)")));
  }
  for (const std::string_view name : ftm::detail::fault_point_names) {
    if (is_recovery_point(name)) continue;
    CHECK_MESSAGE(hit_at_first[name], fmt::format("fault point {} was never reached", name));
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(
      "crash/fault points [{}]: {} kills, {} recoveries ({} undone, {} redone) by {}, "
      "{:.1f} s; {}\n",
      engine_traits<E>::name, t.kills, t.recoveries, t.undone, t.redone, recoverer<E>(), secs,
      fmt::join(summary, ", "));
  std::fflush(stdout);
}

// ---- a one-object write: the inline path of open and commit -----------------------------

namespace {
/// The object of a tiny write: its two fields always sum to 0.
struct tiny {
  std::int64_t up;
  std::int64_t down;
};
}  // namespace

// The sweep above runs transfers, which hold two objects and take the general commit.
// A write of one object, read nothing, takes the inline path (`bank_engine::commit`,
// `commit_one`; docs/design.md, "The inline paths of a one-object transaction"), in a
// session and without: a worker is killed at each of its points, and recovery must
// undo it before the decision and redo it after.
TEST_CASE_TEMPLATE("crash: a one-object write killed at each point of its inline path is recovered",
                   E, FTM_TEST_ENGINES) {
  auto made = ftm_test::engine_factory<E>::make(std::size_t{1} << 20);
  E& pool = *made;
  const auto object = ftm::atomically(pool, [](auto& tx) { return tx.create(tiny{0, 0}); });
  auto write = [&](auto& on) {
    ftm::atomically(on, [&](auto& tx) {
      auto r = tx.open(object);
      r->up += 1;
      r->down -= 1;
    });
  };
  std::int64_t expected = 0;
  for (const std::string_view point :
       {"lock.after_log_entry", "open.after_lock", "commit.before_state", "commit.after_state",
        "commit.after_mark", "commit.mid_redo", "commit.before_release"}) {
    for (const bool in_session : {false, true}) {
      const std::string what =
          fmt::format("a kill at {} ({})", point, in_session ? "in a session" : "no session");
      INFO(what);
      const pid_t pid = spawn([&] {
        if (in_session) {
          ftm::session<E> s(pool);
          ftm::detail::arm_fault(point, 1);
          write(s);
        } else {
          ftm::detail::arm_fault(point, 1);
          write(pool);
        }
        ftm::detail::disarm_faults();
      });
      REQUIRE_MESSAGE(killed(reap(pid)), "the worker did not reach " << point);
      const ftm::recovery_report rep = pool.recover();
      if (is_after_decision(point)) {
        CHECK(rep.redone == 1);
        CHECK(rep.undone == 0);
        ++expected;
      } else {
        CHECK(rep.undone == 1);
        CHECK(rep.redone == 0);
      }
      const tiny now = ftm::atomically(pool, [&](auto& tx) { return *tx.open_read(object); });
      CHECK(now.up == expected);
      CHECK(now.down == -expected);
      const auto report = pool.check();
      CHECK_MESSAGE(report.ok(), fmt::format("{}", fmt::join(report.problems, "; ")));
      // The path still works after the recovery, and the next write sees the last one.
      write(pool);
      ++expected;
    }
  }
}

// ---- the redo log's own points (durability power) --------------------------------------

TEST_CASE_TEMPLATE(
    "crash: a power worker killed at every hit of the redo log's points is recovered", E,
    ftm_test::pmem_power, ftm_test::pmem_power_lines) {
  rig<E> r;
  E& pool = r.pool();
  constexpr std::uint64_t max_k = 40;
  totals t;
  std::vector<std::string> summary;
  snapshot before = r.recover_and_verify("setup").s;
  // All after the decision: a kill there leaves a COMMITTING transaction, whose record
  // recovery flushes (or appends again, before the append) before it completes it.
  for (const std::string_view name : {"log.before_append", "log.after_append", "log.after_flush"}) {
    std::uint64_t point_kills = 0;
    bool completed = false;
    for (std::uint64_t k = 1; k <= max_k && !completed; ++k) {
      r.reset_progress();
      const pid_t pid = spawn([&] {
        const bank h = load_bank(pool);
        ftm::detail::arm_fault(name, k);
        run_program(pool, h, 7000 + k, r.shared());
        ftm::detail::disarm_faults();
        r.shared().completed.store(1);
      });
      const int status = reap(pid);
      const std::string what = fmt::format("a kill at {} (hit {})", name, k);
      INFO(what);
      const std::uint64_t committed = r.shared().committed.load(std::memory_order_acquire);
      if (exited_ok(status)) {
        completed = true;
        const auto [rep, after] = r.recover_and_verify(what + ", which was never reached");
        CHECK(rep.undone + rep.redone == 0);
        CHECK(after.transfers == before.transfers + committed);
        before = after;
        break;
      }
      REQUIRE_MESSAGE(killed(status), fmt::format("the worker {}", describe(status)));
      ++t.kills;
      ++point_kills;
      const auto [rep, after] = r.recover_and_verify(what);
      t.add(rep);
      CHECK(rep.redone == 1);
      CHECK(rep.undone == 0);
      check_outcome(after, before.transfers, committed, rep, false);
      before = after;
    }
    CHECK_MESSAGE(point_kills > 0, fmt::format("fault point {} was never reached", name));
    summary.push_back(fmt::format("{} x{}{}", name, point_kills, completed ? "" : " (capped)"));
  }
  fmt::print("crash/log points [{}]: {} kills, {} recoveries ({} redone) by {}; {}\n",
             engine_traits<E>::name, t.kills, t.recoveries, t.redone, recoverer<E>(),
             fmt::join(summary, ", "));
  std::fflush(stdout);
}

// ---- kills during recovery ----------------------------------------------------------

TEST_CASE_TEMPLATE("crash: recovery killed at its own fault points is completed by the next one", E,
                   FTM_TEST_ENGINES_AND_LINES) {
  rig<E> r;
  E& pool = r.pool();

  /// Where the worker dies first, and at which hit; recovery then redoes (after the
  /// decision) or undoes (before it) the worker's transaction, and dies doing so.
  struct scenario {
    std::string_view worker_point;
    std::uint64_t k;
  };
  constexpr std::array<scenario, 10> scenarios{{
      {"commit.after_state", 1},
      {"commit.after_mark", 2},
      {"commit.mid_redo", 2},
      {"commit.before_release", 3},
      {"commit.before_state", 1},
      {"open.after_lock", 3},
      {"alloc.after_header", 2},
      {"free.after_bitmap", 1},
      {"abort.mid_undo", 1},
      {"lock.after_log_entry", 4},
  }};
  constexpr int recoverers_killed = 2;  // recovery dies twice in a row before it succeeds

  totals t;
  std::uint64_t recovery_kills = 0;
  std::map<std::string_view, std::uint64_t> point_kills;
  const auto start = std::chrono::steady_clock::now();
  snapshot before = r.recover_and_verify("setup").s;
  for (std::size_t si = 0; si < scenarios.size(); ++si) {
    const scenario& s = scenarios[si];
    const bool redo = is_after_decision(s.worker_point);
    const std::string_view recovery_point = redo ? "recover.mid_redo" : "recover.mid_undo";
    const std::string what =
        fmt::format("a worker killed at {} (hit {}), then recovery killed at {}", s.worker_point,
                    s.k, recovery_point);
    INFO(what);
    r.reset_progress();
    const pid_t worker = spawn([&] {
      const bank h = load_bank(pool);
      ftm::detail::arm_fault(s.worker_point, s.k);
      run_program(pool, h, 7000 + si, r.shared());
    });
    const int wstatus = reap(worker);
    REQUIRE_MESSAGE(killed(wstatus), fmt::format("the worker {}", describe(wstatus)));
    ++t.kills;
    const std::uint64_t committed = r.shared().committed.load(std::memory_order_acquire);

    for (int attempt = 0; attempt < recoverers_killed; ++attempt) {
      const int rstatus = r.run_killed_recoverer(recovery_point, 1);
      REQUIRE_MESSAGE(killed(rstatus), fmt::format("recoverer {} was not killed at {}: it {}",
                                                   attempt + 1, recovery_point, describe(rstatus)));
      ++t.kills;
      ++recovery_kills;
      ++point_kills[recovery_point];
      // Nothing may look finished yet: the dead recoverer still owns the descriptor.
      REQUIRE_FALSE(r.looks_finished());
    }

    const auto [rep, after] = r.recover_and_verify(what);
    t.add(rep);
    CHECK(rep.redone == (redo ? 1u : 0u));
    CHECK(rep.undone == (redo ? 0u : 1u));
    check_outcome(after, before.transfers, committed, rep, false);
    before = after;
  }
  CHECK(point_kills["recover.mid_redo"] > 0);
  CHECK(point_kills["recover.mid_undo"] > 0);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(
      "crash/recovery [{}]: {} kills ({} of them inside {}: recover.mid_redo x{}, "
      "recover.mid_undo x{}), {} recoveries ({} undone, {} redone), {:.1f} s\n",
      engine_traits<E>::name, t.kills, recovery_kills,
      engine_traits<E>::fresh_process ? "pmem::open()" : "recover()",
      point_kills["recover.mid_redo"], point_kills["recover.mid_undo"], t.recoveries, t.undone,
      t.redone, secs);
  std::fflush(stdout);
}

// ---- several workers, recovery beside the living -------------------------------------

TEST_CASE_TEMPLATE(
    "crash: workers killed one at a time while the others run, recovered beside them", E,
    FTM_TEST_ENGINES_AND_LINES) {
  rig<E> r;
  E& pool = r.pool();
  const snapshot before = r.recover_and_verify("setup").s;
  constexpr std::size_t n_workers = 3;
  const std::uint64_t kills = std::max<std::uint64_t>(
      env_or("FTM_CRASH_KILLS", 1000) / 5 / ftm_test::sanitizer_divisor, 100);
  const std::uint64_t seed = env_or("FTM_CRASH_SEED", std::random_device{}());
  INFO("FTM_CRASH_SEED=", seed);

  // One progress page per worker slot, shared with the workers.
  void* pages = ::mmap(nullptr, n_workers * sizeof(progress), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(pages != MAP_FAILED);
  auto* prog = ::new (pages) progress[n_workers]{};

  std::mt19937_64 rng{seed};
  auto start_worker = [&](std::size_t w) {
    const std::uint64_t worker_seed = rng();
    return spawn([&pool, &prog, w, worker_seed] {
      const bank h = load_bank(pool);
      std::mt19937_64 wrng{worker_seed};
      for (;;)
        counted_transfer(pool, h, wrng, wrng() % 8 == 0, wrng() % 32 == 0, prog[w]);
    });
  };
  std::array<pid_t, n_workers> workers{};
  for (std::size_t w = 0; w < n_workers; ++w)
    workers[w] = start_worker(w);

  totals t;
  std::uint64_t beside = 0;  // recoveries made while other workers were running
  const auto start = std::chrono::steady_clock::now();
  // What each worker slot had committed when its current worker started.
  std::array<std::uint64_t, n_workers> at_start{};
  std::uint64_t paced = 0;  // commits the killer waited for
  for (std::uint64_t k = 0; k < kills; ++k) {
    const std::size_t w = rng() % n_workers;
    // After a commit of this worker, at a random instant.
    wait_for_progress(workers[w], prog[w].committed, at_start[w]);
    ++paced;
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ::kill(workers[w], SIGKILL);
    const int status = reap(workers[w]);
    REQUIRE_MESSAGE(killed(status), fmt::format("worker {} {}", w, describe(status)));
    ++t.kills;
    // The other workers are still running transactions: recovery must leave them be.
    const auto rep = r.recover_only();
    t.add(rep);
    if (rep.undone + rep.redone > 0) ++beside;
    at_start[w] = prog[w].committed.load();
    workers[w] = start_worker(w);
  }
  std::uint64_t committed_before_stop = 0;
  for (std::size_t w = 0; w < n_workers; ++w) {
    committed_before_stop += prog[w].committed.load();
  }
  for (pid_t pid : workers) {
    ::kill(pid, SIGKILL);
    REQUIRE(killed(reap(pid)));
    ++t.kills;
  }
  const auto [rep, after] = r.recover_and_verify("the last kill");
  t.add(rep);

  // Every kill may cut off the count of one transfer that did commit.
  std::uint64_t counted = 0;
  for (std::size_t w = 0; w < n_workers; ++w)
    counted += prog[w].committed.load();
  const std::uint64_t transfers = after.transfers - before.transfers;
  CHECK(transfers >= counted);
  CHECK(transfers <= counted + t.kills);
  CHECK(committed_before_stop >= paced);  // each kill waited for a commit
  CHECK(beside > 0);                      // not vacuous: some recoveries ran beside living workers
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print(
      "crash/beside [{}]: {} kills of {} workers, {} recoveries by {} ({} beside living "
      "workers; {} undone, {} redone, {} locks released), {} transfers committed, {:.1f} s\n",
      engine_traits<E>::name, t.kills, n_workers, t.recoveries, recoverer<E>(), beside, t.undone,
      t.redone, t.locks_released, transfers, secs);
  std::fflush(stdout);
  ::munmap(pages, n_workers * sizeof(progress));
}
