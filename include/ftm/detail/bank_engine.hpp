#ifndef FTM_DETAIL_BANK_ENGINE_HPP
#define FTM_DETAIL_BANK_ENGINE_HPP

/// \file
/// The dual-bank engine's algorithm: the paper's STM board in software. A pool of two
/// banks of equal size in one shared mapping: the working bank is changed in place
/// under each object's lock, the second bank keeps the last committed state.
/// Descriptors, locks and allocator metadata live in the same mapping, so the pool
/// outlives any process that dies in the middle of a transaction, and a survivor
/// recovers it. `ftm::engines::dual_bank` runs it on a memfd, `ftm::engines::pmem` on
/// a file.

#include <ftm/detail/bank/check.hpp>
#include <ftm/detail/bank/roots.hpp>
#include <ftm/detail/bank_format.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/inspect.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <thread>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The dual-bank algorithm over a mapped pool, whoever owns the mapping: a memfd
/// (`ftm::engines::dual_bank`) or a file (`ftm::engines::pmem`). Models `ftm::engine`.
///
/// Isolation: writers take an exclusive lock at open, kept to the end (two-phase);
/// readers take none, read the second bank and validate the versions they read (see
/// docs/design.md, "Invisible reads"). A writer that must not wait for an older one's
/// lock dies with `ftm::conflict` (wait-die), and so does a transaction whose reads
/// went out of date; `atomically()` retries both. Up to `options::max_transactions`
/// transactions (64 unless chosen, at most 1,024) run at once per pool; `begin()` waits
/// for a free descriptor beyond.
/// When a process dies, any survivor calls `recover()`: transactions that were active
/// are undone from the second bank, those that were committing are completed.
///
/// Composed of one class per role, each over the one before it (bank/*.hpp): the
/// mapping, descriptors, waiting, recovery, locks, allocator, roots; this class adds
/// the transaction's life (begin, open, commit, abort). No virtual call on these paths
/// but the durability hook (`commit_log`), which `process` pools do not have.
class bank_engine : protected bank_roots {
 public:
  // The engine's interface from its parts (the rest of them is its own business).
  using bank_allocator::allocate;
  using bank_allocator::deallocate;
  using bank_locks::open_read;
  using bank_locks::open_read_part;
  using bank_locks::open_write;
  using bank_locks::valid;
  using bank_mapping::bank_size;
  using bank_recovery::recover;
  using bank_roots::bind_root;
  using bank_roots::find_root;
  using bank_watchers::wait;
  using bank_watchers::watch;
  using bank_watchers::watch_all;

  /// How a pool is sized, when it is made.
  struct options {
    std::size_t bank_size = std::size_t{32} << 20;     ///< bytes per bank (multiple of 64 KiB)
    std::uint32_t max_objects_per_transaction = 1024;  ///< log capacity of a descriptor
    bool protected_mode = false;  ///< the program may write only objects it opened for writing
    /// Transactions at once (descriptors), 1 to `max_transactions_limit`; each costs
    /// 64 bytes and a log of `max_objects_per_transaction` 16-byte entries.
    std::uint32_t max_transactions = bank_layout::default_descriptors;
  };

  static constexpr std::size_t chunk_size = bank_layout::chunk_size;
  /// The most transactions a pool can be made to run at once.
  static constexpr std::uint32_t max_transactions_limit = bank_layout::max_descriptors;

  /// How many transactions this pool runs at once (chosen when it was made).
  [[nodiscard]] std::uint32_t max_transactions() const noexcept { return descriptors(); }

  using check_report = ftm::check_report;
  using check_scope = detail::check_scope;

  /// Runs the engine named `engine` ("dual_bank", "pmem": it names the engine in the
  /// errors it raises) on the mapping at `base`, laid out as `g`; `fresh` formats it.
  bank_engine(std::byte* base, const bank_layout::geometry& g, bool fresh, std::string_view engine)
      : bank_roots(base, g, engine) {
    if (fresh) format(g);
  }

  bank_engine(const bank_engine&) = delete;
  bank_engine& operator=(const bank_engine&) = delete;
  ~bank_engine() = default;

  descriptor_index begin(begin_options o = {}) {
    using namespace bank_layout;
    const owner_id me = detail::self_owner_id();
    thread_local std::uint32_t hint = 0;  // constant-initialised: no guard on each access
    for (std::uint32_t round = 0;; ++round) {
      const std::uint32_t n = descriptors_;
      descriptor_index d = hint < n ? hint : 0;  // a hint from a larger pool starts at 0
      for (std::uint32_t i = 0; i < n; ++i, d = d + 1 == n ? 0 : d + 1) {
        descriptor& s = descriptor_at(d);
        owner_id expected = 0;
        if (s.owner.load(std::memory_order_relaxed) == 0 &&
            s.owner.compare_exchange_strong(expected, me, std::memory_order_acquire)) {
          hint = d;
          // 0: the age is taken when a conflict first asks for it (see priority()).
          s.flags = 0;
          reads(d).clear();
          copies(d).clear();
          activate(s, o);
          return d;
        }
      }
      // Every descriptor is busy: wait, and reclaim those whose owners died.
      if (round % 64 == 63) recover();
      std::this_thread::yield();
    }
  }

  /// Claims a descriptor for a session (`ftm::session`): it stays this process's,
  /// idle between transactions, until `detach()`, so `begin_attached()` needs no
  /// atomic read-modify-write. Waits, as `begin()` does, while all are in use.
  descriptor_index attach() {
    const descriptor_index d = begin();
    descriptor& s = descriptor_at(d);
    s.flags = bank_layout::attached;
    s.state.store(bank_layout::idle, std::memory_order_release);
    return d;
  }

  /// Begins a transaction on a descriptor that `attach()` gave this process.
  void begin_attached(descriptor_index d, begin_options o = {}) {
    using namespace bank_layout;
    descriptor& s = descriptor_at(d);
    if (d >= descriptors_ || s.owner.load(std::memory_order_relaxed) != detail::self_owner_id() ||
        (s.flags & attached) == 0 || s.state.load(std::memory_order_relaxed) != idle) [[unlikely]] {
      refuse_session(d);
    }
    reads(d).clear();
    copies(d).clear();
    activate(s, o);
  }

  /// Out of line, so that `begin_attached` stays small enough to inline.
  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_session(descriptor_index d) {
    throw usage_error(fmt::format(
        "descriptor {} is not an idle session of this process: a session belongs to the "
        "process that made it, and runs one transaction at a time",
        d));
  }

  /// Gives a session's descriptor back. Its transaction, if any, must have ended.
  void detach(descriptor_index d) noexcept {
    descriptor& s = descriptor_at(d);
    if (s.owner.load(std::memory_order_relaxed) != detail::self_owner_id()) return;
    s.flags = 0;
    s.owner.store(0, std::memory_order_release);
  }

  /// Commits `d`. The two common transactions of one object take an inline path: one
  /// that read at most one object and holds no lock (nothing to check, copy, release
  /// or wake), and one that read nothing and holds one object's lock and no allocator
  /// record, at `process` durability (`commit_one`). Each makes the same stores, in
  /// the same order, at the same fault points, as `commit_general` would.
  void commit(descriptor_index d) {
    using namespace bank_layout;
    descriptor& s = descriptor_at(d);
    const std::size_t nreads = reads(d).size();
    if (s.doomed.load(std::memory_order_relaxed) == 0 && nreads <= 1) [[likely]] {
      const std::uint32_t n = s.count.load(std::memory_order_relaxed);
      const std::uint32_t did = s.flags & (wrote_objects | locked_records);
      if (did == 0 && n == 0) {
        // Read-only, one object at most: serialized at its read (see below).
        bump(s.commits);
        finish(s);
        return;
      }
      if (did == wrote_objects && n == 1 && nreads == 0 && log_ == nullptr) {
        FTM_FAULT_POINT("commit.before_state");
        s.state.store(committing, std::memory_order_release);
        store_barrier();
        FTM_FAULT_POINT("commit.after_state");
        commit_one(d);
        notify_watchers(d);
        bump(s.commits);
        finish(s);
        return;
      }
    }
    commit_general(d);
  }

  /// Every other commit: validation of the reads, and the two phases over the log.
  [[gnu::noinline]] void commit_general(descriptor_index d) {
    using namespace bank_layout;
    descriptor& s = descriptor_at(d);
    if (s.doomed.load(std::memory_order_relaxed) != 0) {
      abort(d);
      throw conflict("commit: the transaction lost a lock conflict earlier and was aborted");
    }
    // What it read must be as it read it: unchanged, and (if it writes) held by no
    // other writer, while this one holds its write locks. A transaction that only
    // read one object saw one committed value of it (the copy between two equal
    // versions): it is serialized at that read, and has nothing to check.
    const bool writes = (s.flags & wrote_objects) != 0;
    if ((writes || reads(d).size() > 1) && !reads_valid(d, writes)) {
      bump(s.conflicts);
      abort(d);
      throw conflict(
          "commit: an object the transaction read was changed, or is being "
          "written, by another transaction");
    }
    if (!writes && s.count.load(std::memory_order_relaxed) == 0) {
      // Read-only: it holds nothing, so there is nothing to copy, release or wake.
      bump(s.commits);
      finish(s);
      return;
    }
    if (writes) {
      FTM_FAULT_POINT("commit.before_state");
      // Phase 1: the decision is stable. Phase 2: bring the second bank up to date.
      s.state.store(committing, std::memory_order_release);
      store_barrier();
      FTM_FAULT_POINT("commit.after_state");
      if (log_ != nullptr) log_->make_durable(d, false);
      if (s.count.load(std::memory_order_relaxed) == 1 && (s.flags & locked_records) == 0) {
        commit_one(d);
      } else {
        mark_held(d);
        FTM_FAULT_POINT("commit.after_mark");
        copy_held<true>(d, "commit.mid_redo");
        if (log_ != nullptr) log_->applied(d);
        FTM_FAULT_POINT("commit.before_release");
        release_locks(d, (s.flags & locked_records) != 0);
      }
    } else {
      release_locks(d, (s.flags & locked_records) != 0);
    }
    notify_watchers(d);
    bump(s.commits);
    finish(s);
  }

  /// The second phase of a commit that holds one object and no allocator record (a
  /// tiny write): `mark_held`, `copy_held` and `release_locks` for that one entry, with
  /// the same stores in the same order and the same fault points, in one pass.
  [[gnu::always_inline]] inline void commit_one(descriptor_index d) noexcept {
    using namespace bank_layout;
    const log_entry& e = log_of(d)[0];
    object_header& h = header(e.offset);
    const bool held = e.kind == entry_kind::write && e.offset >= chunks_offset_ &&
                      h.writer.load(std::memory_order_acquire) == d + 1;
    const bool copied = held && e.length != 0;
    std::uint64_t v = h.version.load(std::memory_order_relaxed);
    if (copied && (v & 1) == 0) h.version.store(++v, std::memory_order_relaxed);
    store_barrier();  // the mark before the copy
    FTM_FAULT_POINT("commit.after_mark");
    if (copied) {
      redo(e);
      FTM_FAULT_POINT("commit.mid_redo");
    }
    store_barrier();
    if (log_ != nullptr) log_->applied(d);
    FTM_FAULT_POINT("commit.before_release");
    if (held) {
      if ((v & 1) != 0) h.version.store(v + 1, std::memory_order_release);
      h.writer.store(0, std::memory_order_release);
    }
  }

  void abort(descriptor_index d) noexcept {
    descriptor& s = descriptor_at(d);
    copy_held<false>(d, "abort.mid_undo");
    release_locks(d, (s.flags & bank_layout::locked_records) != 0);
    bump(s.aborts);
    finish(s);
  }

  /// Locks are held until the transaction ends (strict two-phase locking).
  void close(descriptor_index, std::uint64_t) noexcept {}
  /// Tells the transaction layer that `close` has nothing to do.
  static constexpr bool close_is_noop = true;

  /// Writes bytes `[at, at + n)` of the object at `off`, which `d` holds for writing,
  /// in both banks: the second bank is what abort and recovery restore, so neither
  /// undoes the write (models `ftm::unlogged_write_engine`). The second bank first:
  /// a crash between the two copies is undone to the new bytes.
  void write_through(descriptor_index d, std::uint64_t off, std::size_t at, const void* src,
                     std::size_t n) {
    using namespace bank_layout;
    if (off < roots_offset || off >= bank_size_ || off % min_block != 0 ||
        header(off).writer.load(std::memory_order_relaxed) != d + 1) {
      throw usage_error(fmt::format(
          "write_through: the transaction does not hold the object at offset {} for writing", off));
    }
    if (at > header(off).size || n > header(off).size - at) {
      throw usage_error(
          fmt::format("write_through: bytes {}..{} are outside the {}-byte object at "
                      "offset {}",
                      at, at + n, header(off).size, off));
    }
    // A write that no abort undoes must not rest on reads that are out of date.
    if (!reads_valid(d, false)) {
      lose(d, "write_through: an object the transaction read was changed by a commit since");
    }
    // The second bank changes in place: its readers must see the version move.
    std::atomic<std::uint64_t>& version = header(off).version;
    const std::uint64_t v = version.load(std::memory_order_relaxed) | 1;
    version.store(v, std::memory_order_relaxed);
    store_barrier();
    std::memcpy(b_ + off + header_size + at, src, n);
    store_barrier();
    std::memcpy(a_ + off + header_size + at, src, n);
    version.store(v + 1, std::memory_order_release);
    // Its own move of the version is no change to what the transaction read (it holds
    // the object, so no other commit came between): a read of it stays valid.
    for (read_entry& r : reads(d)) {
      if (r.offset == off) r.version = v + 1;
    }
  }

  [[nodiscard]] engine_stats stats() const {
    engine_stats total;
    for (descriptor_index d = 0; d < descriptors_; ++d) {
      const auto& s = descriptor_at(d);
      total.commits += s.commits.load(std::memory_order_relaxed);
      total.aborts += s.aborts.load(std::memory_order_relaxed);
      total.conflicts += s.conflicts.load(std::memory_order_relaxed);
      total.retries += s.retries.load(std::memory_order_relaxed);
    }
    return total;
  }

  /// Verifies the pool while no transaction runs: no descriptor in use, no lock held,
  /// the allocator's bitmaps agree with its counts, every live object has a header,
  /// and both banks hold the same bytes for every object (the committed state).
  [[nodiscard]] check_report check() const { return check(check_scope{}); }

  /// Verifies the pool as `check()` does, within `scope` (see `check_pool()`).
  [[nodiscard]] check_report check(check_scope scope) const { return check_pool(*this, scope); }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_ENGINE_HPP
