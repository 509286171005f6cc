/// \file
/// The issue-2 benchmark: a tiny write transaction (open one 64-byte object, change
/// two 8-byte fields, commit) and a read-only one (read two fields), and a read-mostly
/// mix of them (nine reads, one write; single and shared only), each run
///   single     1 thread,
///   disjoint   2 threads, each on its own object (objects 256 bytes apart),
///   shared     2 threads on one object,
/// by three systems side by side:
///   ftm        `ftm::atomically(pool, f)` on an `ftm::engines::dual_bank` pool, which
///              claims a transaction descriptor for each transaction,
///   ftm-session  `ftm::atomically(session, f)`: each thread keeps an `ftm::session`
///              (a descriptor held across its transactions) on such a pool,
///   ftm-protected, ftm-session-protected  the same on a pool in protected mode
///              (`options::protected_mode`: the program sees the pool read-only but
///              the objects its transactions opened for writing),
///   mutex      a `std::mutex` per object (alignas(64)) and an undo copy: the write
///              saves the 64-byte object before changing it, as an undo log would,
///              and discards the copy at "commit",
///   itm        GCC's libitm, `__transaction_atomic` (g++ builds without sanitizers
///              only; see itm_peer.cpp),
///   mprotect-pair  (single only) the system calls protected mode cannot do without
///              when it uses `mprotect`, and nothing else: the object's page of a
///              shared mapping made writable, the two fields changed, the page made
///              read-only again; its read is a plain read,
///   pkey-switch  (single only, where the CPU and kernel have protection keys) the same
///              with a protection key: the thread's rights changed twice (WRPKRU).
///
/// Benchmarks are named <workload>/<sharing>/<system>, so the systems of one case are
/// adjacent rows. items_per_second is the throughput of all threads together. After
/// the run, main() checks every object (each write adds 1 to one field and takes 1
/// from the other, so their sum stays 0) and the pool's consistency.

#include "workload.hpp"

#include <ftm/detail/protected_keys.hpp>
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

namespace ftm_bench {
namespace {

constexpr int max_threads = 2;

enum class sharing { single, disjoint, shared };

/// The object a thread works on: its own in the disjoint case, object 0 otherwise.
int object_index(const benchmark::State& state, sharing mode) {
  return mode == sharing::disjoint ? state.thread_index() : 0;
}

/// Keeps the objects of different threads 256 bytes apart: no shared cache line, and
/// no pair of lines that the adjacent-line prefetcher fetches together.
template <class T>
struct alignas(256) apart {
  T value;
};

// ---- ftm ------------------------------------------------------------------------

/// `ftm::atomically` on the pool, or with `UseSession` on each thread's session; with
/// `Protected`, on a pool in protected mode.
template <bool UseSession, bool Protected = false>
struct ftm_system {
  static constexpr const char* name = UseSession
                                          ? (Protected ? "ftm-session-protected" : "ftm-session")
                                          : (Protected ? "ftm-protected" : "ftm");

  ftm::engines::dual_bank pool{ftm::engines::dual_bank::options{.bank_size = std::size_t{1} << 20,
                                                                .protected_mode = Protected}};
  std::array<ftm::stable<record>, max_threads> objects;

  ftm_system() {
    // A 64-byte record takes a 128-byte block; a spacer between two objects puts
    // them 256 bytes apart, as the other systems' objects are.
    for (auto& object : objects) {
      object = ftm::atomically(pool, [](auto& tx) { return tx.create(record{}); });
      ftm::atomically(pool, [](auto& tx) { tx.create(record{}); });
    }
  }

  /// Runs `f` in a transaction, on this thread's session if `UseSession`.
  template <class F>
  auto atomically(F&& f) {
    if constexpr (UseSession) {
      // One per benchmark thread, given back when the thread ends.
      thread_local ftm::session<ftm::engines::dual_bank> session(pool);
      return ftm::atomically(session, std::forward<F>(f));
    } else {
      return ftm::atomically(pool, std::forward<F>(f));
    }
  }

  void tiny_write(int i) {
    atomically([&](auto& tx) {
      auto r = tx.open(objects[i]);
      r->field[0] += 1;
      r->field[1] -= 1;
    });
  }

  std::int64_t read(int i) {
    return atomically([&](auto& tx) {
      auto r = tx.open_read(objects[i]);
      return r->field[0] + r->field[1];
    });
  }

  bool verify() {
    bool ok = true;
    for (int i = 0; i < max_threads; ++i) {
      if (read(i) != 0) {
        std::fprintf(stderr, "%s: object %d lost an update\n", name, i);
        ok = false;
      }
    }
    const auto report = pool.check();
    for (const auto& problem : report.problems)
      std::fprintf(stderr, "%s: %s\n", name, problem.c_str());
    fmt::print(stderr, "{} pool: {}\n", name, pool.stats());
    return ok && report.ok();
  }
};

// ---- std::mutex + undo copy -------------------------------------------------------

struct alignas(64) guarded {
  std::mutex mutex;
  record value;
};

/// The before-image of the object being written, as an undo log would keep it.
struct undo_log {
  record saved;
  record* where = nullptr;
};
thread_local undo_log undo;

struct mutex_system {
  static constexpr const char* name = "mutex";

  std::array<apart<guarded>, max_threads> objects{};

  void tiny_write(int i) {
    guarded& g = objects[i].value;
    std::lock_guard lock(g.mutex);
    undo.saved = g.value;
    undo.where = &g.value;
    benchmark::DoNotOptimize(undo);  // the copy is made, as a real undo log's would be
    g.value.field[0] += 1;
    g.value.field[1] -= 1;
    undo.where = nullptr;  // commit: the before-image is discarded
  }

  std::int64_t read(int i) {
    guarded& g = objects[i].value;
    std::lock_guard lock(g.mutex);
    return g.value.field[0] + g.value.field[1];
  }

  bool verify() {
    bool ok = true;
    for (int i = 0; i < max_threads; ++i) {
      if (read(i) != 0) {
        std::fprintf(stderr, "mutex: object %d lost an update\n", i);
        ok = false;
      }
    }
    return ok;
  }
};

// ---- the floor of the dual-bank design ---------------------------------------------

/// The memory operations a dual-bank transaction cannot do without, and nothing else:
/// no API layer, no checks, no recovery information beyond the minimum. On a
/// descriptor the thread holds (as a session does): mark it active, log the object
/// before locking it, take the object's write lock with one compare-and-swap, change
/// the object, mark the decision, mark the version odd, copy the object's 72 tracked
/// bytes to the second bank, set the version even, release the lock, mark the
/// descriptor idle. The read takes no lock, as ftm's does: it copies the object from
/// the second bank between two loads of its version, records the version in a read
/// set in the thread, reads its copy, and checks the version again at the end. What ftm spends
/// above this row is its layers; what this row spends above `mutex` is the design.
struct floor_system {
  static constexpr const char* name = "floor";

  struct alignas(64) object {
    std::atomic<std::uint64_t> version{0};
    std::atomic<std::uint32_t> writer{0};
    std::uint32_t size = sizeof(record);
    record value{};
  };
  struct log_entry {
    std::uint64_t offset;
    std::uint32_t length;
    std::uint32_t kind;
  };
  struct alignas(64) descriptor {
    std::atomic<std::uint32_t> state{0};
    std::atomic<std::uint32_t> count{0};
    log_entry log[4];
  };
  struct read_entry {
    std::uint64_t offset;
    std::uint64_t version;
  };

  std::array<apart<object>, max_threads> bank_a{};
  std::array<apart<object>, max_threads> bank_b{};
  std::atomic<int> threads_seen{0};

  /// This thread's descriptor, its number (writer id - 1) and its read set.
  struct session {
    apart<descriptor> d;
    int n;
    read_entry reads[4];
    std::uint32_t nreads;
    record copy;
  };
  session& mine() {
    thread_local session s{{}, threads_seen.fetch_add(1) % 64, {}, 0, {}};
    return s;
  }

  void tiny_write(int i) {
    session& s = mine();
    descriptor& d = s.d.value;
    object& o = bank_a[i].value;
    const auto me = static_cast<std::uint32_t>(s.n + 1);
    d.state.store(1, std::memory_order_release);
    d.log[0] = log_entry{static_cast<std::uint64_t>(i), 0, 2};
    d.count.store(1, std::memory_order_release);
    std::uint32_t free = 0;
    while (!o.writer.compare_exchange_weak(free, me, std::memory_order_seq_cst))
      free = 0;
    d.log[0].length = static_cast<std::uint32_t>(8 + o.size);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    o.value.field[0] += 1;
    o.value.field[1] -= 1;
    d.state.store(2, std::memory_order_release);
    const std::uint64_t v = o.version.load(std::memory_order_relaxed);
    o.version.store(v + 1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    auto* to = reinterpret_cast<std::byte*>(&bank_b[i].value.size);
    const auto* from = reinterpret_cast<const std::byte*>(&o.size);
    __builtin_memcpy(to, from, 8);
    for (std::uint32_t k = 8; k < d.log[0].length; k += 16)
      __builtin_memcpy(to + k, from + k, 16);
    o.version.store(v + 2, std::memory_order_release);
    o.writer.store(0, std::memory_order_release);
    d.count.store(0, std::memory_order_relaxed);
    d.state.store(0, std::memory_order_release);
  }

  std::int64_t read(int i) {
    session& s = mine();
    descriptor& d = s.d.value;
    object& o = bank_a[i].value;
    const object& committed = bank_b[i].value;
    for (;;) {
      d.state.store(1, std::memory_order_release);
      s.nreads = 0;
      std::uint64_t v = o.version.load(std::memory_order_acquire);
      while ((v & 1) != 0)
        v = o.version.load(std::memory_order_acquire);
      __builtin_memcpy(&s.copy, &committed.value, sizeof(record));  // the reader's own copy
      std::atomic_thread_fence(std::memory_order_acquire);
      if (o.version.load(std::memory_order_relaxed) != v) continue;
      s.reads[s.nreads++] = read_entry{static_cast<std::uint64_t>(i), v};
      benchmark::DoNotOptimize(s.copy);
      const std::int64_t sum = s.copy.field[0] + s.copy.field[1];
      std::atomic_thread_fence(std::memory_order_acquire);
      const bool valid = o.version.load(std::memory_order_relaxed) == s.reads[0].version;
      d.state.store(0, std::memory_order_release);
      if (valid) return sum;
    }
  }

  bool verify() {
    bool ok = true;
    for (int i = 0; i < max_threads; ++i) {
      if (read(i) != 0 || bank_b[i].value.value.field[0] + bank_b[i].value.value.field[1] != 0) {
        std::fprintf(stderr, "floor: object %d lost an update\n", i);
        ok = false;
      }
    }
    return ok;
  }
};

// ---- the floor of protected mode -------------------------------------------------------

/// A tiny write's two protection changes alone, on one page of a shared mapping:
/// with `mprotect` (a system call each, as protected mode's `mprotect` mechanism pays
/// per writing transaction), or with a protection key (`Keys`: one unprivileged
/// instruction each). What protected mode spends above these rows is its own work.
template <bool Keys>
struct protect_floor_system {
  static constexpr const char* name = Keys ? "pkey-switch" : "mprotect-pair";

  std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  record* object = nullptr;
  int key = 0;

  protect_floor_system() {
    void* p = ::mmap(nullptr, page, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) std::abort();
    object = static_cast<record*>(p);
    if constexpr (Keys) {
      key = ftm::detail::allocate_protection_key(nullptr);
      if (key < 0 || ftm::detail::protect_with_key(p, page, PROT_READ | PROT_WRITE, key) != 0) {
        std::abort();
      }
    }
  }

  void tiny_write(int) {
    if constexpr (Keys) {
      const std::uint32_t rights = ftm::detail::read_key_rights();
      ftm::detail::write_key_rights(rights & ~ftm::detail::key_write_disabled(key));
      object->field[0] += 1;
      object->field[1] -= 1;
      ftm::detail::write_key_rights(rights | ftm::detail::key_write_disabled(key));
    } else {
      ::mprotect(object, page, PROT_READ | PROT_WRITE);
      object->field[0] += 1;
      object->field[1] -= 1;
      ::mprotect(object, page, PROT_READ);
    }
  }

  std::int64_t read(int) { return object->field[0] + object->field[1]; }

  bool verify() {
    if (read(0) == 0) return true;
    std::fprintf(stderr, "%s: the object lost an update\n", name);
    return false;
  }
};

// ---- libitm -------------------------------------------------------------------------

#ifndef FTM_BENCH_NO_ITM
struct itm_system {
  static constexpr const char* name = "itm";

  std::array<apart<record>, max_threads> objects{};

  void tiny_write(int i) { itm_tiny_write(objects[i].value); }
  std::int64_t read(int i) { return itm_read(objects[i].value); }

  bool verify() {
    bool ok = true;
    for (int i = 0; i < max_threads; ++i) {
      if (read(i) != 0) {
        std::fprintf(stderr, "itm: object %d lost an update\n", i);
        ok = false;
      }
    }
    return ok;
  }
};
#endif

// ---- the benchmarks -------------------------------------------------------------------

/// One instance per system, made on first use by whichever thread comes first; the
/// others wait for it (a function-local static), so every thread sees it initialised.
template <class System>
System& instance() {
  static System system;
  return system;
}

template <class System>
void tiny_write(benchmark::State& state, sharing mode) {
  System& system = instance<System>();
  const int i = object_index(state, mode);
  for (auto _ : state)
    system.tiny_write(i);
  state.SetItemsProcessed(state.iterations());
}

template <class System>
void read_only(benchmark::State& state, sharing mode) {
  System& system = instance<System>();
  const int i = object_index(state, mode);
  for (auto _ : state)
    benchmark::DoNotOptimize(system.read(i));
  state.SetItemsProcessed(state.iterations());
}

/// Nine read-only transactions, then a tiny write: a read-mostly mix (10% writes).
template <class System>
void read_mostly(benchmark::State& state, sharing mode) {
  System& system = instance<System>();
  const int i = object_index(state, mode);
  std::uint32_t k = 0;
  for (auto _ : state) {
    if (++k == 10) {
      k = 0;
      system.tiny_write(i);
    } else {
      benchmark::DoNotOptimize(system.read(i));
    }
  }
  state.SetItemsProcessed(state.iterations());
}

template <class System>
void register_case(const char* workload, void (*run)(benchmark::State&, sharing), sharing mode) {
  static constexpr const char* sharing_names[] = {"single", "disjoint", "shared"};
  const std::string name =
      fmt::format("{}/{}/{}", workload, sharing_names[static_cast<int>(mode)], System::name);
  benchmark::RegisterBenchmark(name.c_str(),
                               [run, mode](benchmark::State& state) { run(state, mode); })
      ->Threads(mode == sharing::single ? 1 : 2)
      ->UseRealTime();
}

template <class... Systems>
void register_all() {
  for (sharing mode : {sharing::single, sharing::disjoint, sharing::shared}) {
    (register_case<Systems>("tiny_write", tiny_write<Systems>, mode), ...);
  }
  for (sharing mode : {sharing::single, sharing::disjoint, sharing::shared}) {
    (register_case<Systems>("read_only", read_only<Systems>, mode), ...);
  }
  for (sharing mode : {sharing::single, sharing::shared}) {
    (register_case<Systems>("read_mostly", read_mostly<Systems>, mode), ...);
  }
}

template <class... Systems>
bool verify_all() {
  bool ok = true;
  ((ok = instance<Systems>().verify() && ok), ...);  // checks every system, even after a failure
  return ok;
}

#ifdef FTM_BENCH_NO_ITM
#define FTM_BENCH_SYSTEMS                                                               \
  ftm_system<false>, ftm_system<true>, ftm_system<false, true>, ftm_system<true, true>, \
      floor_system, mutex_system
#else
#define FTM_BENCH_SYSTEMS                                                               \
  ftm_system<false>, ftm_system<true>, ftm_system<false, true>, ftm_system<true, true>, \
      floor_system, mutex_system, itm_system
#endif

}  // namespace
}  // namespace ftm_bench

int main(int argc, char** argv) {
  using namespace ftm_bench;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
#ifdef FTM_BENCH_NO_ITM
  benchmark::AddCustomContext("itm", "not built (needs g++ and a build without sanitizers)");
#endif
  register_all<FTM_BENCH_SYSTEMS>();
  // One thread only: a page another thread makes read-only under a writer faults.
  register_case<protect_floor_system<false>>("tiny_write", tiny_write<protect_floor_system<false>>,
                                             sharing::single);
  const bool keys = ftm::detail::protection_keys().available;
  if (keys) {
    register_case<protect_floor_system<true>>("tiny_write", tiny_write<protect_floor_system<true>>,
                                              sharing::single);
  } else {
    benchmark::AddCustomContext("pkey-switch", "not run: " + ftm::detail::protection_keys().reason);
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  bool floors = instance<protect_floor_system<false>>().verify();
  if (keys) floors = instance<protect_floor_system<true>>().verify() && floors;
  if (!verify_all<FTM_BENCH_SYSTEMS>() || !floors) {
    std::fprintf(stderr, "ftm_bench: an object is inconsistent after the run\n");
    return 1;
  }
  return 0;
}
