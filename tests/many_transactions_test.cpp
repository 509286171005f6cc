/// Pools made for more transactions at once than the default 64 (the pool option
/// `max_transactions`): more than 64 open together, from threads and from processes,
/// commit; processes killed with SIGKILL in the middle of their commits, with well over
/// 64 descriptors in use, are redone or undone by recovery; the option's bounds.

#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#if !defined(FTM_FAULT_INJECTION) || !FTM_FAULT_INJECTION
#error "many_transactions_test kills processes at fault points: compile with FTM_FAULT_INJECTION=1"
#endif

namespace {

using ftm::engines::dual_bank;
using ftm::engines::pmem;

struct cell {
  BOOST_HANA_DEFINE_STRUCT(cell, (std::int64_t, value), (std::int64_t, writer));
};

/// Counters in memory shared with forked children.
struct shared_counters {
  std::atomic<std::uint32_t> ready;  // transactions begun and written, not yet committed
};

shared_counters* make_shared_counters() {
  void* p = ::mmap(nullptr, sizeof(shared_counters), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return ::new (p) shared_counters{};
}

/// Waits, in bounded steps, until `counter` reaches `n`; false if it does not within a
/// minute (a pool that cannot run `n` transactions at once never gets there).
bool wait_for(const std::atomic<std::uint32_t>& counter, std::uint32_t n) {
  for (int i = 0; i < 60000; ++i) {
    if (counter.load() >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

template <class E>
std::vector<ftm::stable<cell>> make_cells(E& pool, std::uint32_t n) {
  return ftm::atomically(pool, [&](auto& tx) {
    std::vector<ftm::stable<cell>> out;
    for (std::uint32_t i = 0; i < n; ++i)
      out.push_back(tx.create(cell{0, -1}));
    return out;
  });
}

}  // namespace

TEST_CASE("max_transactions: 64 unless chosen, 1 to 1,024, recorded in the pool file") {
  CHECK(dual_bank(std::size_t{1} << 20).max_transactions() == 64);
  CHECK(dual_bank::max_transactions_limit == 1024);
  CHECK(
      dual_bank({.bank_size = std::size_t{1} << 20, .max_transactions = 1024}).max_transactions() ==
      1024);
  for (const std::uint32_t n : {0u, 1025u}) {
    CAPTURE(n);
    const std::string expected =
        fmt::format("max_transactions is {}, but a pool runs 1 to 1024 transactions at once", n);
    CHECK_THROWS_WITH_AS(dual_bank({.bank_size = std::size_t{1} << 20, .max_transactions = n}),
                         doctest::Contains(expected.c_str()), ftm::invalid_argument);
  }
  const auto path = ftm_test::scratch_file("many");
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{1} << 20, .max_transactions = 200});
    CHECK(pool.max_transactions() == 200);
  }
  auto pool = pmem::open(path);  // the pool's count, not the default
  CHECK(pool.max_transactions() == 200);
  CHECK(pmem::inspect(path).header().max_transactions == 200);
  std::filesystem::remove(path);
}

TEST_CASE("300 transactions open at once on threads of one process all commit") {
  // Without the option, the 65th begin() would wait for a descriptor that never frees.
  constexpr std::uint32_t threads = 4, per_thread = 75, total = threads * per_thread;
  dual_bank pool({.bank_size = std::size_t{4} << 20, .max_transactions = total});
  const auto cells = make_cells(pool, total + 1);
  const ftm::stable<cell> shared = cells[total];
  ftm::atomically(pool, [&](auto& tx) { tx.open(shared)->value = 7; });
  std::atomic<std::uint32_t> open{0};
  std::atomic<std::uint32_t> failed{0};
  std::vector<std::thread> workers;
  for (std::uint32_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<std::unique_ptr<ftm::transaction<dual_bank>>> txs;
      for (std::uint32_t k = 0; k < per_thread; ++k) {
        const std::uint32_t i = t * per_thread + k;
        auto& tx = *txs.emplace_back(std::make_unique<ftm::transaction<dual_bank>>(pool));
        tx.begin();
        const std::int64_t seen = tx.open_read(shared)->value;  // read by all of them
        auto c = tx.open(cells[i]);
        c->value = seen + i;
        c->writer = static_cast<std::int64_t>(tx.id());
        ++open;
      }
      // Every transaction of every thread is open before any commits.
      if (!wait_for(open, total)) ++failed;
      for (auto& tx : txs)
        tx->commit();
    });
  }
  for (auto& w : workers)
    w.join();
  REQUIRE(failed == 0);
  std::vector<bool> ids(total, false);
  ftm::atomically(pool, [&](auto& tx) {
    for (std::uint32_t i = 0; i < total; ++i) {
      const cell c = *tx.open_read(cells[i]);
      CHECK(c.value == 7 + i);
      REQUIRE(c.writer >= 0);
      REQUIRE(c.writer < total);
      CHECK_FALSE(ids[static_cast<std::size_t>(c.writer)]);  // one descriptor each
      ids[static_cast<std::size_t>(c.writer)] = true;
    }
  });
  CHECK(pool.check().ok());
}

namespace {

/// What a forked child does once all the transactions are open.
enum class fate { commit, die_after_mark, die_mid_redo, killed_active };

fate fate_of(std::uint32_t i) { return static_cast<fate>(i % 4); }

/// Forks `n` children on `pool` (a pool forked children share), each of which begins a
/// transaction, writes its two cells and waits until all `n` are open, then meets its
/// fate: commits, dies at a commit's fault point (after the marks, or after the first
/// copy: COMMITTING, so recovery redoes it), or waits to be killed by the parent while
/// active (recovery undoes it). Returns once every child is gone.
template <class E>
void run_children(E& pool, const std::vector<ftm::stable<cell>>& a,
                  const std::vector<ftm::stable<cell>>& b, std::uint32_t n) {
  shared_counters* counters = make_shared_counters();
  std::vector<pid_t> pids;
  for (std::uint32_t i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        ftm::transaction<E> tx{pool};
        tx.begin();
        tx.open(a[i])->value = 1;
        tx.open(b[i])->value = 1;
        ++counters->ready;
        if (!wait_for(counters->ready, n)) ::_exit(3);
        switch (fate_of(i)) {
          case fate::commit: break;
          case fate::die_after_mark: ftm::detail::arm_fault("commit.after_mark", 1); break;
          case fate::die_mid_redo: ftm::detail::arm_fault("commit.mid_redo", 1); break;
          case fate::killed_active:
            for (;;)
              ::pause();
        }
        tx.commit();
      } catch (...) {
        code = 2;
      }
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  REQUIRE(wait_for(counters->ready, n));
  for (std::uint32_t i = 0; i < n; ++i) {
    int status = 0;
    if (fate_of(i) == fate::killed_active) ::kill(pids[i], SIGKILL);
    REQUIRE(::waitpid(pids[i], &status, 0) == pids[i]);
    CAPTURE(i);
    if (fate_of(i) == fate::commit) {
      CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    } else {
      CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    }
  }
  ::munmap(counters, sizeof(shared_counters));
}

/// Each pair of cells is whole: both written (committed, or redone) or neither (undone).
template <class E>
void check_pairs(E& pool, const std::vector<ftm::stable<cell>>& a,
                 const std::vector<ftm::stable<cell>>& b, std::uint32_t n) {
  ftm::atomically(pool, [&](auto& tx) {
    for (std::uint32_t i = 0; i < n; ++i) {
      CAPTURE(i);
      const std::int64_t expected = fate_of(i) == fate::killed_active ? 0 : 1;
      CHECK(tx.open_read(a[i])->value == expected);
      CHECK(tx.open_read(b[i])->value == expected);
    }
  });
  CHECK(pool.check().ok());
}

constexpr std::uint32_t children = 160 / ftm_test::sanitizer_divisor;
constexpr std::uint32_t killed_committing = children / 2;  // die_after_mark, die_mid_redo
constexpr std::uint32_t killed_active = children / 4;

}  // namespace

TEST_CASE("160 processes with transactions open at once, half killed mid-commit: dual_bank") {
  dual_bank pool({.bank_size = std::size_t{4} << 20, .max_transactions = children + 8});
  const auto a = make_cells(pool, children);
  const auto b = make_cells(pool, children);
  run_children(pool, a, b, children);
  const ftm::recovery_report r = pool.recover();
  CHECK(r.redone == killed_committing);
  CHECK(r.undone == killed_active);
  check_pairs(pool, a, b, children);
}

TEST_CASE("160 processes with transactions open at once, half killed mid-commit: pmem, reopened") {
  const auto path = ftm_test::scratch_file("many");
  std::vector<ftm::stable<cell>> a, b;
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{4} << 20,
                                    .max_objects_per_transaction = 512,
                                    .max_transactions = children + 8});
    a = make_cells(pool, children);
    b = make_cells(pool, children);
    run_children(pool, a, b, children);
  }
  // The first opener recovers every dead descriptor, then clears what they left.
  auto pool = pmem::open(path);
  CHECK(pool.opening_recovery().redone == killed_committing);
  CHECK(pool.opening_recovery().undone == killed_active);
  check_pairs(pool, a, b, children);
  std::filesystem::remove(path);
}
