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

#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/detail/layout_diff.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail::bank_layout {

/// The first 16 bytes of every object block, in the working bank. The lock words are
/// not copied between banks; `size` is, so creating and destroying are transactional.
struct object_header {
  std::atomic<std::uint64_t> readers;  // bit d: descriptor d holds the shared lock
  std::atomic<std::uint32_t> writer;   // d + 1 of the exclusive holder, or 0
  std::uint32_t size;                  // bytes of the object; 0 once destroyed
};
static_assert(sizeof(object_header) == 16);
inline constexpr std::uint64_t header_size = sizeof(object_header);
inline constexpr std::uint64_t tracked_offset = offsetof(object_header, size);  // copies start here
inline constexpr std::uint64_t tracked_prefix = header_size - tracked_offset;

enum class entry_kind : std::uint16_t { read = 1, write = 2 };

/// A 16-bit check of a log entry of descriptor `d`: recovery acts on the entries of a
/// dead descriptor, so a damaged one (a flipped offset would undo the wrong object and
/// leave the right one locked) must be told from a good one. One multiplication: it is
/// computed twice for every lock a transaction takes.
constexpr std::uint16_t entry_check(std::uint32_t d, std::uint64_t offset, std::uint32_t length,
                                    entry_kind kind) noexcept {
  std::uint64_t x = ((offset | d) ^ (std::uint64_t{length} << 40) ^
                     (std::uint64_t{static_cast<std::uint16_t>(kind)} << 36)) *
                    0x9e3779b97f4a7c15ull;
  return static_cast<std::uint16_t>((x ^ (x >> 23)) >> 48);
}

/// One object a transaction locked. `length` is what commit and abort copy between
/// the banks, filled in once the lock is held (0: nothing to copy). The second word
/// (length, kind, check) is written by one 8-byte store, so a process that dies while
/// writing it leaves the old entry or the new one, each with its check.
struct log_entry {
  std::uint64_t offset;
  std::uint32_t length;
  entry_kind kind;
  std::uint16_t check;  // entry_check() of the descriptor, offset, length and kind
};
static_assert(sizeof(log_entry) == 16);

/// A descriptor's states. Those recovery acts on are far apart in bits (Hamming
/// distance 16 or more, and from 0), so damage to the word never turns one into
/// another: it makes an unknown state, which is refused.
enum slot_state : std::uint32_t { idle = 0, active = 0xa5a50f01u, committing = 0x5a5af002u };

/// What a transaction did so far, so that commit skips the passes it does not need.
enum slot_flags : std::uint32_t {
  wrote_objects = 1,   // took a write lock: commit has copies to make
  locked_records = 2,  // locked an allocator record (or the roots): a second release pass
  attached = 4,        // held by a session: kept, idle, when a transaction ends
};

/// A transaction descriptor, in shared memory, one cache line of its own; its log
/// is elsewhere.
struct alignas(64) slot {
  std::atomic<owner_id> owner;  // 0: free; otherwise the process that runs (or recovers) it
  std::atomic<std::uint32_t> state;
  std::atomic<std::uint32_t> count;  // log entries in use
  std::atomic<std::uint64_t> priority;
  std::atomic<std::uint32_t> doomed;  // lost a conflict: may only abort
  std::uint32_t flags;                // wrote_objects | locked_records: what commit must do
  std::atomic<std::uint64_t> commits, aborts, conflicts, retries;
};
static_assert(sizeof(slot) == 64);

inline constexpr std::uint64_t magic = 0x66746d2d64756131ull;  // "ftm-dua1"
inline constexpr std::uint32_t max_slots = 64;                 // one bit each in `readers`

// The control region: a page of header, the descriptors, then their logs.
inline constexpr std::uint64_t slots_begin = 4096;
inline constexpr std::uint64_t logs_begin = slots_begin + max_slots * 64;

/// 2: checksums in the header, the descriptors' logs and states, and the roots table;
/// the redo log's state in the header page (`redo::control`) records the log's id and
/// the last record on the medium.
inline constexpr std::uint32_t format_version = 2;

/// A 64-bit checksum of `n` bytes (a multiple of 8) at `p`, seeded: for the
/// structures a bound cannot check (the header, the roots table's entries).
inline std::uint64_t check_bytes(const void* p, std::size_t n, std::uint64_t seed) noexcept {
  std::uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ull);
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, static_cast<const char*>(p) + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 29;
  // Never 0 (the boot check's "being rewritten"), nor one bit away from it.
  return std::popcount(h) < 2 ? h ^ 0x8000000000000101ull : h;
}

/// The first bytes of the mapping (and of a pool file): what the pool is and how it
/// is laid out, so that a pool file can be checked before it is trusted.
struct pool_header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t max_entries;
  std::uint64_t pool_id;
  std::uint64_t bank_size;
  std::uint64_t nchunks;
  std::uint64_t metas_offset;
  std::uint64_t chunks_offset;
  std::uint64_t control_size;
  std::uint64_t map_size;
  char boot_id[40];  // the boot the pool's owners belong to (for pools that outlive one)
  /// check_bytes() of `boot_id`; 0 while an opener rewrites it (after recovering every
  /// descriptor of the earlier boot, so the pool counts as of an earlier boot then).
  std::uint64_t boot_check;
  std::uint64_t header_check;  // check_bytes() of the fields before `boot_id`
};
inline constexpr std::uint64_t header_check_seed = 0x6865616465723a32ull;
inline constexpr std::uint64_t boot_check_seed = 0x626f6f7469643a32ull;

/// The check word of the static fields of `h`.
inline std::uint64_t header_check_of(const pool_header& h) noexcept {
  return check_bytes(&h, offsetof(pool_header, boot_id), header_check_seed);
}

/// The check word of `h`'s boot id.
inline std::uint64_t boot_check_of(const pool_header& h) noexcept {
  return check_bytes(h.boot_id, sizeof h.boot_id, boot_check_seed);
}

/// Records `boot` as the boot of `h`'s owners: the check word is 0 while the id
/// changes, so a process that dies in between leaves a pool of an earlier boot.
inline void set_boot_id(pool_header& h, std::string_view boot) noexcept {
  std::atomic_ref<std::uint64_t>(h.boot_check).store(0, std::memory_order_seq_cst);
  std::memset(h.boot_id, 0, sizeof h.boot_id);
  std::memcpy(h.boot_id, boot.data(), std::min(boot.size(), sizeof h.boot_id - 1));
  std::atomic_ref<std::uint64_t>(h.boot_check).store(boot_check_of(h), std::memory_order_seq_cst);
}

/// The watchers' table, in the control page after the pool header (zero in a fresh
/// pool and in pool files made before it existed). `global.changes` is the futex
/// word watchers sleep on, bumped by every wake; `global.watchers` counts the
/// watchers of the whole pool, so a commit with nobody waiting reads one word; each
/// bucket counts the watchers of the objects that hash to it. Each on its own cache
/// line: committers only read them unless someone waits.
struct alignas(64) watch_line {
  std::atomic<std::uint32_t> changes;
  std::atomic<std::uint32_t> watchers;
};
inline constexpr std::uint32_t watch_buckets = 31;
struct watch_table {
  watch_line global;
  watch_line buckets[watch_buckets];
};
inline constexpr std::uint64_t watch_begin = 2048;
static_assert(sizeof(pool_header) <= watch_begin);
static_assert(watch_begin + sizeof(watch_table) <= slots_begin);

/// A named root: its name, its type's name and fingerprint, and the object.
struct root_entry {
  char name[48];
  char type[48];
  std::uint64_t fingerprint;
  std::uint64_t offset;
  std::uint32_t size;
  std::uint32_t used;    // 0: free; otherwise root_check() of the entry
  std::uint64_t layout;  // a stable object holding the type's layout description, or 0
};
static_assert(sizeof(root_entry) == 128);
inline constexpr std::uint32_t max_roots = 64;
/// The roots, and which entries are in use: an entry cleared by damage is told from
/// one never bound by its bit in `in_use`.
struct roots_table {
  root_entry entries[max_roots];
  std::uint64_t in_use;  // bit i: entries[i] is bound
  std::uint64_t reserved;
};
static_assert(max_roots <= 64);

/// The `used` word of a bound root entry: a check of the rest of it, never 0.
inline std::uint32_t root_check(const root_entry& e) noexcept {
  root_entry copy = e;
  copy.used = 0;
  const std::uint64_t h = check_bytes(&copy, sizeof copy, 0x726f6f74733a3200ull);
  return static_cast<std::uint32_t>(h ^ (h >> 32)) | 1u;
}

inline constexpr std::uint64_t chunk_size = 64 * 1024;
inline constexpr std::uint64_t min_block = 64;
inline constexpr std::uint32_t nclasses = 10;  // blocks of 64 B .. 32 KiB
inline constexpr std::uint32_t max_blocks = chunk_size / min_block;

/// Chunk classes: 0 free, 1..nclasses small blocks of (64 << (cls - 1)) bytes,
/// then the chunks of a large object.
inline constexpr std::uint32_t cls_free = 0;
inline constexpr std::uint32_t cls_large_head = nclasses + 1;
inline constexpr std::uint32_t cls_large_tail = nclasses + 2;

/// The allocator's record of one chunk: itself a stable object, locked and copied
/// between banks like any other, so allocation is transactional and recovers.
struct chunk_meta {
  std::uint32_t cls;
  std::uint32_t nblocks;  // small: blocks in the chunk; large head: chunks in the object
  std::uint32_t used;
  std::uint32_t head;  // large tail: index of the head chunk
  std::uint64_t bitmap[max_blocks / 64];
};
inline constexpr std::uint64_t meta_stride = 256;
static_assert(header_size + sizeof(chunk_meta) <= meta_stride);

inline constexpr std::uint64_t roots_offset = 64;  // offset 0 stays the null handle
inline constexpr std::uint64_t metas_begin =
    (roots_offset + header_size + sizeof(roots_table) + 63) / 64 * 64;

constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

/// Orders the stores before it before the stores after it, as seen by a survivor of
/// a crash. x86 keeps stores in order; the compiler must not reorder them either.
inline void store_barrier() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  std::atomic_signal_fence(std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

/// 128 TiB: no bank is larger (a pool header that says so is damaged).
inline constexpr std::uint64_t max_bank_size = std::uint64_t{1} << 47;

/// The largest object: its size, and its size with the 4 bytes of the header that
/// commits copy, are recorded in 32 bits.
inline constexpr std::uint64_t max_object_size = std::uint64_t{UINT32_MAX} - header_size;

/// Sizes and offsets of a pool, derived from its bank size and log capacity.
struct geometry {
  std::uint64_t bank_size = 0;
  std::uint64_t nchunks = 0;
  std::uint64_t chunks_offset = 0;
  std::uint32_t max_entries = 0;
  std::uint64_t control_size = 0;
  std::uint64_t map_size = 0;

  /// The layout of a pool with banks of `bank_size` bytes; `who` names the engine in
  /// errors.
  static geometry compute(std::uint64_t bank_size, std::uint32_t max_entries,
                          std::string_view who) {
    if (bank_size % chunk_size != 0) {
      throw invalid_argument(
          fmt::format("{}: bank size {} is not a multiple of the chunk size ({} bytes)", who,
                      bank_size, chunk_size));
    }
    if (max_entries < 4) {
      throw invalid_argument(fmt::format(
          "{}: max_objects_per_transaction is {}, at least 4 are needed", who, max_entries));
    }
    if (bank_size > max_bank_size) {
      throw invalid_argument(fmt::format("{}: bank size {} is more than the largest, {} bytes", who,
                                         bank_size, max_bank_size));
    }
    // The largest n whose records and chunks fit: align_up(M + n S, C) + n C <= B, with
    // B a multiple of C, holds exactly when M + n S <= B - n C (a ceiling is at most
    // an integer when its argument is), that is n <= (B - M) / (C + S).
    const std::uint64_t n =
        bank_size < metas_begin ? 0 : (bank_size - metas_begin) / (chunk_size + meta_stride);
    if (n < 2) {
      throw invalid_argument(
          fmt::format("{}: bank size {} is too small: at least {} bytes are needed", who, bank_size,
                      align_up(metas_begin + 2 * meta_stride, chunk_size) + 2 * chunk_size));
    }
    geometry g;
    g.bank_size = bank_size;
    g.nchunks = n;
    g.chunks_offset = align_up(metas_begin + n * meta_stride, chunk_size);
    g.max_entries = max_entries;
    g.control_size =
        align_up(logs_begin + std::uint64_t{max_slots} * max_entries * sizeof(log_entry), 4096);
    g.map_size = g.control_size + 2 * bank_size;
    return g;
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail::bank_layout

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A durability layer that commit calls between its two phases (`pmem`'s `power`
/// level keeps a redo log with it). Without one (`process`), commit calls nothing.
class commit_log {
 public:
  /// Returns once the after-images of every object `d` holds for writing are on the
  /// medium; called after phase 1 (COMMITTING) and before phase 2, by the committer or
  /// (`recovering`) by whoever completes a dead committer's phase 2.
  virtual void make_durable(tx_id d, bool recovering) noexcept = 0;
  /// Phase 2 of `d` is complete: the second bank holds its after-images.
  virtual void applied(tx_id d) noexcept = 0;

 protected:
  commit_log() = default;
  commit_log(const commit_log&) = default;
  commit_log& operator=(const commit_log&) = default;
  ~commit_log() = default;
};

/// The dual-bank algorithm over a mapped pool, whoever owns the mapping: a memfd
/// (`ftm::engines::dual_bank`) or a file (`ftm::engines::pmem`). Models `ftm::engine`.
///
/// Isolation is strict two-phase locking at open (shared for read, exclusive for
/// write, upgrade allowed); a transaction that must not wait for an older one's lock
/// dies with `ftm::conflict` (wait-die), which `atomically()` retries. Up to 64
/// transactions run at once per pool; `begin()` waits for a free descriptor beyond.
/// When a process dies, any survivor calls `recover()`: transactions that were active
/// are undone from the second bank, those that were committing are completed.
class bank_engine {
 public:
  /// How a pool is sized, when it is made.
  struct options {
    std::size_t bank_size = std::size_t{32} << 20;     ///< bytes per bank (multiple of 64 KiB)
    std::uint32_t max_objects_per_transaction = 1024;  ///< log capacity of a descriptor
  };

  static constexpr std::size_t chunk_size = bank_layout::chunk_size;
  static constexpr std::uint32_t max_transactions = bank_layout::max_slots;

  /// What `check()` found; `ok()` when the pool is quiescent and consistent.
  struct check_report {
    std::uint64_t objects = 0;
    std::uint64_t bytes_in_use = 0;  ///< bytes of live objects (without headers)
    std::uint64_t free_chunks = 0;
    std::uint64_t chunks = 0;
    std::uint64_t bytes_free = 0;  ///< bytes in free chunks and free blocks (with headers)
    std::vector<std::string> problems;
    [[nodiscard]] bool ok() const noexcept { return problems.empty(); }
  };

  /// Runs the engine on the mapping at `base`, laid out as `g`; `fresh` formats it.
  bank_engine(std::byte* base, const bank_layout::geometry& g, bool fresh)
      : base_(base),
        a_(base + g.control_size),
        b_(base + g.control_size + g.bank_size),
        bank_size_(g.bank_size),
        nchunks_(g.nchunks),
        chunks_offset_(g.chunks_offset),
        max_entries_(g.max_entries),
        class_hint_(std::make_unique<std::atomic<std::uint8_t>[]>(g.nchunks)) {
    if (fresh) format(g);
  }

  bank_engine(const bank_engine&) = delete;
  bank_engine& operator=(const bank_engine&) = delete;
  ~bank_engine() = default;

  [[nodiscard]] std::size_t bank_size() const noexcept { return bank_size_; }

  // ---- ftm::engine -------------------------------------------------------------

  tx_id begin(begin_options o = {}) {
    using namespace bank_layout;
    const owner_id me = detail::self_owner_id();
    thread_local std::uint32_t hint = 0;  // constant-initialised: no guard on each access
    for (std::uint32_t round = 0;; ++round) {
      for (std::uint32_t i = 0; i < max_slots; ++i) {
        const tx_id d = (hint + i) % max_slots;
        slot& s = slot_at(d);
        owner_id expected = 0;
        if (s.owner.load(std::memory_order_relaxed) == 0 &&
            s.owner.compare_exchange_strong(expected, me, std::memory_order_acquire)) {
          hint = d;
          // 0: the age is taken when a conflict first asks for it (see priority()).
          s.flags = 0;
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
  tx_id attach() {
    const tx_id d = begin();
    slot& s = slot_at(d);
    s.flags = bank_layout::attached;
    s.state.store(bank_layout::idle, std::memory_order_release);
    return d;
  }

  /// Begins a transaction on a descriptor that `attach()` gave this process.
  void begin_attached(tx_id d, begin_options o = {}) {
    using namespace bank_layout;
    slot& s = slot_at(d);
    if (d >= max_slots || s.owner.load(std::memory_order_relaxed) != detail::self_owner_id() ||
        (s.flags & attached) == 0 || s.state.load(std::memory_order_relaxed) != idle) {
      throw usage_error(fmt::format(
          "descriptor {} is not an idle session of this process: a session belongs to the "
          "process that made it, and runs one transaction at a time",
          d));
    }
    activate(s, o);
  }

  /// Gives a session's descriptor back. Its transaction, if any, must have ended.
  void detach(tx_id d) noexcept {
    slot& s = slot_at(d);
    if (s.owner.load(std::memory_order_relaxed) != detail::self_owner_id()) return;
    s.flags = 0;
    s.owner.store(0, std::memory_order_release);
  }

  void commit(tx_id d) {
    using namespace bank_layout;
    slot& s = slot_at(d);
    if (s.doomed.load(std::memory_order_relaxed) != 0) {
      abort(d);
      throw conflict("commit: the transaction lost a lock conflict earlier and was aborted");
    }
    if ((s.flags & wrote_objects) != 0) {
      FTM_FAULT_POINT("commit.before_state");
      // Phase 1: the decision is stable. Phase 2: bring the second bank up to date.
      s.state.store(committing, std::memory_order_release);
      store_barrier();
      FTM_FAULT_POINT("commit.after_state");
      if (log_ != nullptr) log_->make_durable(d, false);
      copy_held<true>(d, "commit.mid_redo");
      if (log_ != nullptr) log_->applied(d);
      FTM_FAULT_POINT("commit.before_release");
    }
    release_locks(d, (s.flags & locked_records) != 0);
    notify_watchers(d);
    bump(s.commits);
    finish(s);
  }

  void abort(tx_id d) noexcept {
    slot& s = slot_at(d);
    copy_held<false>(d, "abort.mid_undo");
    release_locks(d, (s.flags & bank_layout::locked_records) != 0);
    bump(s.aborts);
    finish(s);
  }

  allocation allocate(tx_id d, const object_type& t) {
    using namespace bank_layout;
    if (t.align > header_size) {
      throw invalid_argument(
          fmt::format("dual_bank: {} needs alignment {}, at most {} is supported", t.name, t.align,
                      header_size));
    }
    if (t.size > max_object_size) {
      throw invalid_argument(
          fmt::format("dual_bank: a {} has {} bytes, more than the largest object ({} bytes: an "
                      "object's size is recorded in 32 bits)",
                      t.name, t.size, max_object_size));
    }
    const std::uint64_t total = t.size + header_size;
    if (total > chunk_size / 2) return allocate_large(d, t);
    const std::uint32_t cls = class_for(total);
    // First the chunks known to hold this class, then any chunk (a free one is claimed).
    for (int pass = 0; pass < 2; ++pass) {
      const std::uint64_t start = class_start_[cls].load(std::memory_order_relaxed);
      for (std::uint64_t i = 0; i < nchunks_; ++i) {
        const std::uint64_t c = (start + i) % nchunks_;
        const bool known = class_hint_[c].load(std::memory_order_relaxed) == cls;
        if (known != (pass == 0)) continue;
        bool held = false;
        if (!try_lock_meta(d, c, held)) continue;
        chunk_meta& m = meta(c);
        class_hint_[c].store(static_cast<std::uint8_t>(m.cls), std::memory_order_relaxed);
        // A chunk this transaction emptied keeps its old layout until it ends: blocks of
        // another size would start inside the freed objects, whose bytes abort restores,
        // and the freed objects' lock words, which commit releases, would lie inside the
        // new blocks' data.
        if (m.cls == cls_free && held) continue;
        if (m.cls == cls_free) {
          m.cls = cls;
          m.nblocks = static_cast<std::uint32_t>(chunk_size / block_size(cls));
          m.used = 0;
          m.head = 0;
          std::memset(m.bitmap, 0, sizeof m.bitmap);
          clear_headers(c, block_size(cls));
          class_hint_[c].store(static_cast<std::uint8_t>(cls), std::memory_order_relaxed);
        }
        if (m.cls == cls && m.used < m.nblocks) {
          class_start_[cls].store(c, std::memory_order_relaxed);
          return take_block(d, c, m, t);
        }
        if (!held) unlock_last(d, meta_offset(c));
      }
    }
    throw pool_full(
        fmt::format("dual_bank: no room for a {} ({} bytes) in a pool of {} chunks of {} bytes",
                    t.name, t.size, nchunks_, chunk_size));
  }

  void deallocate(tx_id d, std::uint64_t off, const object_type& t) {
    using namespace bank_layout;
    open_write(d, off, t);
    const std::uint64_t c = chunk_of(off);
    acquire_write(d, meta_offset(c), sizeof(chunk_meta));
    chunk_meta& m = meta(c);
    if (m.cls == cls_large_head) {
      if (off != chunk_base(c) || m.nblocks == 0 || m.nblocks > nchunks_ - c) {
        damaged(
            fmt::format("the record of chunk {} (offset {}) says a large object of {} chunks "
                        "starts there, which does not fit the pool of {} chunks or offset {}",
                        c, meta_offset(c), m.nblocks, nchunks_, off));
      }
      // Every tail first: one that is not this object's is damage, and nothing is freed.
      for (std::uint32_t k = 1; k < m.nblocks; ++k) {
        acquire_write(d, meta_offset(c + k), sizeof(chunk_meta));
        const chunk_meta& tail = meta(c + k);
        if (tail.cls != cls_large_tail || tail.head != c) {
          damaged(
              fmt::format("the record of chunk {} (offset {}) does not continue the large "
                          "object of chunk {} (class {}, head {})",
                          c + k, meta_offset(c + k), c, tail.cls, tail.head));
        }
      }
      for (std::uint32_t k = 1; k < m.nblocks; ++k) {
        meta(c + k) = chunk_meta{};
        class_hint_[c + k].store(cls_free, std::memory_order_relaxed);
      }
      m = chunk_meta{};
    } else {
      if (m.cls < 1 || m.cls > nclasses) {
        damaged(fmt::format("the record of chunk {} (offset {}) has an unknown class {}", c,
                            meta_offset(c), m.cls));
      }
      const std::uint64_t bs = block_size(m.cls);
      const std::uint64_t idx = (off - chunk_base(c)) / bs;
      if ((off - chunk_base(c)) % bs != 0 || idx >= m.nblocks || m.used == 0 ||
          (m.bitmap[idx / 64] >> (idx % 64) & 1) == 0) {
        damaged(
            fmt::format("the record of chunk {} (offset {}) does not hold the object at "
                        "offset {} (class {}, {} of {} blocks used)",
                        c, meta_offset(c), off, m.cls, m.used, m.nblocks));
      }
      m.bitmap[idx / 64] &= ~(std::uint64_t{1} << (idx % 64));
      if (--m.used == 0) m = chunk_meta{};  // an empty chunk can serve any class again
    }
    class_hint_[c].store(static_cast<std::uint8_t>(m.cls), std::memory_order_relaxed);
    FTM_FAULT_POINT("free.after_bitmap");
    header(off).size = 0;
  }

  void* open_write(tx_id d, std::uint64_t off, const object_type& t) {
    check_handle(off, t);
    acquire_write(d, off, t.size);
    check_size(off, t);
    return a_ + off + bank_layout::header_size;
  }

  const void* open_read(tx_id d, std::uint64_t off, const object_type& t) {
    check_handle(off, t);
    acquire_read(d, off);
    check_size(off, t);
    return a_ + off + bank_layout::header_size;
  }

  /// Locks are held until the transaction ends (strict two-phase locking).
  void close(tx_id, std::uint64_t) noexcept {}
  /// Tells the transaction layer that `close` has nothing to do.
  static constexpr bool close_is_noop = true;

  /// Writes bytes `[at, at + n)` of the object at `off`, which `d` holds for writing,
  /// in both banks: the second bank is what abort and recovery restore, so neither
  /// undoes the write (models `ftm::unlogged_write_engine`). The second bank first:
  /// a crash between the two copies is undone to the new bytes.
  void write_through(tx_id d, std::uint64_t off, std::size_t at, const void* src, std::size_t n) {
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
    std::memcpy(b_ + off + header_size + at, src, n);
    store_barrier();
    std::memcpy(a_ + off + header_size + at, src, n);
  }

  std::uint64_t find_root(tx_id d, std::string_view name, const root_type& t) {
    using namespace bank_layout;
    check_root_name(name);
    acquire_read(d, roots_offset);
    const roots_table& table = roots();
    for (std::uint32_t i = 0; i < max_roots; ++i) {
      const root_entry& r = table.entries[i];
      // Which entries are bound is checked on every lookup, an entry's own check word
      // when it matches (or when nothing does, below): one checksum per lookup.
      if ((r.used != 0) != ((table.in_use >> i & 1) != 0)) damaged(root_entry_problem(table, i));
      if (r.used == 0 || name != std::string_view(r.name, strnlen(r.name, sizeof r.name))) {
        continue;
      }
      if (!root_entry_sound(table, i)) damaged(root_entry_problem(table, i));
      if (r.fingerprint != t.fingerprint || r.size != t.object.size) {
        std::string why;
        if (r.layout != 0) {
          if (!object_fits(r.layout)) {
            why = fmt::format("its layout description (offset {}) is damaged", r.layout);
          } else {
            const std::string_view stored(
                reinterpret_cast<const char*>(a_ + r.layout + header_size), header(r.layout).size);
            why = layout_difference(stored, t.layout);
          }
        }
        throw type_mismatch(fmt::format(
            "root '{}' holds an object of type {} ({} bytes, layout fingerprint {:#x}); the "
            "program asked for type {} ({} bytes, layout fingerprint {:#x}){}{}",
            name, std::string_view(r.type, strnlen(r.type, sizeof r.type)), r.size, r.fingerprint,
            t.object.name, t.object.size, t.fingerprint, why.empty() ? "" : ": ", why));
      }
      if (r.offset < chunks_offset_ || r.offset >= bank_size_ || r.offset % min_block != 0) {
        damaged(
            fmt::format("root '{}' (entry {} of the roots table) names offset {}, where no "
                        "object can be",
                        name, i, r.offset));
      }
      return r.offset;
    }
    // Not found: a damaged name must not pass for a root never bound (the caller binds
    // a new, empty one).
    for (std::uint32_t i = 0; i < max_roots; ++i)
      if (!root_entry_sound(table, i)) damaged(root_entry_problem(table, i));
    return 0;
  }

  void bind_root(tx_id d, std::string_view name, std::uint64_t off, const root_type& t) {
    using namespace bank_layout;
    check_root_name(name);
    acquire_write(d, roots_offset, sizeof(roots_table));
    roots_table& table = roots();
    root_entry* free_entry = nullptr;
    std::uint32_t free_index = 0;
    for (std::uint32_t i = 0; i < max_roots; ++i) {
      root_entry& r = table.entries[i];
      if (!root_entry_sound(table, i)) damaged(root_entry_problem(table, i));
      if (r.used != 0 && name == std::string_view(r.name, strnlen(r.name, sizeof r.name))) {
        throw usage_error(fmt::format("root '{}' is already bound", name));
      }
      if (r.used == 0 && free_entry == nullptr) {
        free_entry = &r;
        free_index = i;
      }
    }
    if (free_entry == nullptr) {
      throw capacity_exceeded(fmt::format(
          "dual_bank: cannot bind root '{}': all {} root entries are in use", name, max_roots));
    }
    std::uint64_t layout = 0;
    if (!t.layout.empty()) {
      const allocation a = allocate(d, object_type{t.layout.size(), 1, "layout description"});
      std::memcpy(a.storage, t.layout.data(), t.layout.size());
      layout = a.offset;
    }
    root_entry& r = *free_entry;
    r = root_entry{};
    r.layout = layout;
    std::memcpy(r.name, name.data(), name.size());
    const auto type = t.object.name.substr(0, sizeof r.type - 1);
    std::memcpy(r.type, type.data(), type.size());
    r.fingerprint = t.fingerprint;
    r.offset = off;
    r.size = static_cast<std::uint32_t>(t.object.size);
    r.used = root_check(r);
    table.in_use |= std::uint64_t{1} << free_index;
  }

  // ---- waiting for changes (ftm::watchable_engine) -----------------------------
  //
  // No lost wake-up, without a fence in commit: a watcher registers (two locked
  // increments) and reads `changes` while its transaction still holds a lock on the
  // object, and only then ends the transaction. A committer that changes the object
  // later must take that lock after the watcher released it, so the release and the
  // acquire order the registration before the committer's check of the counts (a
  // plain load after its own release): it sees the watcher and bumps `changes`, and
  // the watcher's futex wait, made with the value it read under the lock, returns at
  // once or is woken. A committer that held the lock before the watcher took it made
  // its change visible to the watcher's transaction, which then does not wait.

  /// Registers interest in the object at `off`, which `d` holds a lock on.
  watch_token watch(tx_id d, std::uint64_t off) {
    using namespace bank_layout;
    if (off < roots_offset || off >= bank_size_ || off % min_block != 0 ||
        (header(off).writer.load(std::memory_order_relaxed) != d + 1 &&
         (header(off).readers.load(std::memory_order_relaxed) & bit(d)) == 0)) {
      throw usage_error(
          fmt::format("watch: the transaction holds no lock on the object at offset {}", off));
    }
    watch_table& w = watches();
    const std::uint32_t b = watch_bucket(off);
    w.buckets[b].watchers.fetch_add(1, std::memory_order_seq_cst);
    w.global.watchers.fetch_add(1, std::memory_order_seq_cst);
    return {b, w.global.changes.load(std::memory_order_seq_cst)};
  }

  /// Registers interest in every object `d` holds a lock on (but the allocator's
  /// records), one token per bucket; returns how many tokens it filled.
  std::size_t watch_all(tx_id d, std::span<watch_token> out) {
    using namespace bank_layout;
    watch_table& w = watches();
    bool taken[watch_buckets] = {};
    std::size_t n = 0;
    const std::uint32_t count = slot_at(d).count.load(std::memory_order_relaxed);
    const log_entry* log = entries(d);
    for (std::uint32_t i = 0; i < count && n < out.size(); ++i) {
      const std::uint64_t off = log[i].offset;
      if (off >= metas_begin && off < chunks_offset_) continue;  // allocation, not data
      const std::uint32_t b = watch_bucket(off);
      if (taken[b]) continue;
      taken[b] = true;
      w.buckets[b].watchers.fetch_add(1, std::memory_order_seq_cst);
      w.global.watchers.fetch_add(1, std::memory_order_seq_cst);
      out[n++] = watch_token{b, 0};
    }
    // Read after every registration, while the locks are still held (see above).
    const std::uint32_t seen = w.global.changes.load(std::memory_order_seq_cst);
    for (std::size_t k = 0; k < n; ++k)
      out[k].seen = seen;
    return n;
  }

  /// Blocks, holding no lock, until a commit may have changed a watched object, or the
  /// deadline passes (false); then unregisters the tokens.
  bool wait(std::span<const watch_token> tokens, std::chrono::steady_clock::time_point deadline) {
    using namespace bank_layout;
    watch_table& w = watches();
    bool in_time = true;
    if (!tokens.empty()) {
      const std::uint32_t seen = tokens.front().seen;  // the oldest: any change since counts
      while (w.global.changes.load(std::memory_order_acquire) == seen) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
          in_time = false;
          break;
        }
        const auto left = std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::hours(1));
        timespec ts{};
        ts.tv_sec = static_cast<time_t>(left.count() / 1000000000);
        ts.tv_nsec = static_cast<long>(left.count() % 1000000000);
        // Not FUTEX_PRIVATE_FLAG: watchers and committers are in different processes.
        if (::syscall(SYS_futex, futex_word(w), FUTEX_WAIT, seen, &ts, nullptr, 0) == 0) break;
      }
    }
    for (const watch_token& t : tokens) {
      w.buckets[t.slot % watch_buckets].watchers.fetch_sub(1, std::memory_order_release);
      w.global.watchers.fetch_sub(1, std::memory_order_release);
    }
    return in_time;
  }

  /// Aborts the transactions of owners that died (undoing them from the second bank)
  /// and completes those that died while committing. Safe to call at any time, from
  /// any process on the pool, concurrently with live transactions; safe to crash in
  /// and call again.
  recovery_report recover() {
    recovery_report report;
    for (tx_id d = 0; d < max_transactions; ++d)
      recover_if_dead(d, report);
    return report;
  }

  [[nodiscard]] engine_stats stats() const {
    engine_stats total;
    for (tx_id d = 0; d < max_transactions; ++d) {
      const auto& s = slot_at(d);
      total.commits += s.commits.load(std::memory_order_relaxed);
      total.aborts += s.aborts.load(std::memory_order_relaxed);
      total.conflicts += s.conflicts.load(std::memory_order_relaxed);
      total.retries += s.retries.load(std::memory_order_relaxed);
    }
    return total;
  }

  /// What `check()` may take for granted about the pool.
  struct check_scope {
    /// Transactions may be running: a descriptor of a living process is no problem,
    /// and the objects any descriptor logged are not compared (a dead owner's
    /// descriptor is still reported, since it needs recovery).
    bool in_use = false;
    /// The owners ran before a reboot of the machine, so none of them is alive.
    bool earlier_boot = false;
  };

  /// Verifies the pool while no transaction runs: no descriptor in use, no lock held,
  /// the allocator's bitmaps agree with its counts, every live object has a header,
  /// and both banks hold the same bytes for every object (the committed state).
  [[nodiscard]] check_report check() const { return check(check_scope{}); }

  /// Verifies the pool as `check()` does, within `scope`. Only reads the mapping (it
  /// runs on a read-only one), and stays within it however damaged the pool is.
  [[nodiscard]] check_report check(check_scope scope) const {
    using namespace bank_layout;
    check_report r;
    r.chunks = nchunks_;
    auto problem = [&](std::string s) { r.problems.push_back(std::move(s)); };
    const auto& ph = *reinterpret_cast<const pool_header*>(base_);
    if (ph.header_check != header_check_of(ph)) problem("the pool header fails its check");
    if (ph.boot_check != 0 && ph.boot_check != boot_check_of(ph)) {
      problem("the pool header's boot id fails its check");
    }
    // Objects that running (or dead, unrecovered) transactions hold: locked, and
    // perhaps different between the banks, as they should be.
    std::vector<std::uint64_t> held;
    for (tx_id d = 0; d < max_transactions; ++d) {
      const auto& s = slot_at(d);
      const owner_id o = s.owner.load(std::memory_order_acquire);
      if (o == 0) {
        if (auto p = free_descriptor_problem(d); !p.empty()) problem(std::move(p));
        continue;
      }
      // A live process's idle session holds its descriptor between transactions.
      const bool idle_session = (s.flags & attached) != 0 && s.state.load() == idle;
      if (!scope.in_use && !(idle_session && detail::owner_alive(o))) {
        problem(fmt::format("descriptor {} is in use by pid {} (state {})", d, detail::owner_pid(o),
                            s.state.load()));
        continue;
      }
      if (auto p = descriptor_problem(d); !p.empty()) {
        problem(std::move(p));
        continue;
      }
      if (scope.earlier_boot || !detail::owner_alive(o)) {
        problem(fmt::format(
            "descriptor {} belongs to pid {}, which is dead ({}, {} log entries): opening the pool "
            "for writing recovers it",
            d, detail::owner_pid(o), state_name(s.state.load()), s.count.load()));
      }
      const std::uint32_t n = s.count.load(std::memory_order_acquire);
      for (std::uint32_t i = 0; i < n; ++i)
        held.push_back(entries(d)[i].offset);
    }
    std::sort(held.begin(), held.end());
    auto is_held = [&](std::uint64_t off) {
      return std::binary_search(held.begin(), held.end(), off);
    };
    // Checks the object at `off` (a multiple of 64 inside the bank); false if its
    // header is unusable. `expected`: its size if fixed, else 0.
    auto object = [&](std::uint64_t off, std::string_view what, std::uint64_t expected) {
      const object_header& h = header(off);
      if ((expected != 0 && h.size != expected) || h.size > bank_size_ - off - header_size) {
        problem(fmt::format("{} at offset {} has a damaged size {}", what, off, h.size));
        return false;
      }
      if (is_held(off)) return true;
      if (h.writer.load() != 0 || h.readers.load() != 0) {
        problem(fmt::format("{} at offset {} is still locked", what, off));
      }
      const std::uint64_t len = tracked_prefix + h.size;
      if (std::memcmp(a_ + off + tracked_offset, b_ + off + tracked_offset, len) != 0) {
        problem(fmt::format("{} at offset {} differs between the banks", what, off));
      }
      return true;
    };
    std::vector<std::uint64_t> live;  // offsets of live objects, ascending
    auto count_live = [&](std::uint64_t off) {
      live.push_back(off);
      ++r.objects;
      r.bytes_in_use += header(off).size;
    };
    const bool roots_usable = object(roots_offset, "the roots table", sizeof(roots_table));
    for (std::uint64_t c = 0; c < nchunks_; ++c) {
      if (!object(meta_offset(c), fmt::format("the metadata of chunk {}", c), sizeof(chunk_meta))) {
        continue;
      }
      const chunk_meta& m = meta(c);
      if (m.cls == cls_free) {
        ++r.free_chunks;
        r.bytes_free += chunk_size;
      } else if (m.cls >= 1 && m.cls <= nclasses) {
        const std::uint64_t bs = block_size(m.cls);
        if (m.nblocks != chunk_size / bs) {
          problem(fmt::format("chunk {} of {}-byte blocks counts {} blocks", c, bs, m.nblocks));
          continue;
        }
        // A transaction that holds the chunk's record may be between setting a bit and
        // the object's size: only what is out of bounds is skipped then, unreported.
        const bool changing = is_held(meta_offset(c));
        std::uint32_t bits = 0;
        for (std::uint32_t i = 0; i < m.nblocks; ++i) {
          if ((m.bitmap[i / 64] >> (i % 64) & 1) == 0) continue;
          ++bits;
          const std::uint64_t off = chunk_base(c) + i * bs;
          const std::uint32_t size = header(off).size;
          if (size == 0 || size + header_size > bs) {
            if (!changing) {
              problem(
                  fmt::format("object at offset {} has size {} in a {}-byte block", off, size, bs));
            }
            continue;
          }
          if (object(off, "object", 0)) count_live(off);
        }
        if (bits != m.used && !changing) {
          problem(fmt::format("chunk {} counts {} blocks in use, its bitmap {}", c, m.used, bits));
        }
        r.bytes_free += (m.nblocks - bits) * bs;
      } else if (m.cls == cls_large_head) {
        const std::uint64_t off = chunk_base(c);
        const std::uint32_t size = header(off).size;
        if (m.nblocks == 0 || m.nblocks > nchunks_ - c) {
          problem(fmt::format("large object in chunk {} spans {} chunks, past the end of the pool",
                              c, m.nblocks));
          continue;
        }
        if (size == 0 || size + header_size > std::uint64_t{m.nblocks} * chunk_size) {
          if (!is_held(meta_offset(c))) {
            problem(fmt::format("large object at offset {} has size {} in {} chunks", off, size,
                                m.nblocks));
          }
          continue;
        }
        if (object(off, "large object", 0)) count_live(off);
      } else if (m.cls == cls_large_tail) {
        const chunk_meta* h = m.head < c ? &meta(m.head) : nullptr;
        if (h == nullptr || h->cls != cls_large_head || c - m.head >= h->nblocks) {
          problem(fmt::format("chunk {} continues a large object at chunk {}, which is not one", c,
                              m.head));
        }
      } else {
        problem(fmt::format("chunk {} has unknown class {}", c, m.cls));
      }
    }
    auto is_live = [&](std::uint64_t off) {
      return std::binary_search(live.begin(), live.end(), off);
    };
    // A transaction binding a root may not have placed its object yet.
    if (roots_usable && !is_held(roots_offset)) {
      for (std::uint32_t i = 0; i < max_roots; ++i) {
        const root_entry& e = roots().entries[i];
        if (!root_entry_sound(roots(), i)) {
          problem(root_entry_problem(roots(), i));
        } else if (e.used == 0) {
          continue;
        } else if (!is_live(e.offset) || header(e.offset).size != e.size) {
          problem(fmt::format("root '{}' names no live object of its size", e.name));
        } else if (e.layout != 0 && !is_live(e.layout)) {
          problem(fmt::format("root '{}' names no live layout description", e.name));
        }
      }
    }
    return r;
  }

  /// A descriptor in use, as `descriptors_in_use()` reads it.
  struct descriptor_report {
    tx_id index = 0;
    pid_t pid = 0;      ///< the owner's process id
    bool alive = true;  ///< false once the owner died (recovery will undo or complete it)
    std::uint32_t state = 0;
    std::uint32_t count = 0;                  ///< log entries, as recorded
    std::vector<bank_layout::log_entry> log;  ///< those within the log's capacity
    [[nodiscard]] std::string_view state_name() const noexcept {
      return bank_engine::state_name(state);
    }
  };

  /// The descriptors in use; `earlier_boot` as in `check_scope`. Only reads.
  [[nodiscard]] std::vector<descriptor_report> descriptors_in_use(bool earlier_boot = false) const {
    std::vector<descriptor_report> out;
    for (tx_id d = 0; d < max_transactions; ++d) {
      const auto& s = slot_at(d);
      const owner_id o = s.owner.load(std::memory_order_acquire);
      if (o == 0) continue;
      descriptor_report r;
      r.index = d;
      r.pid = detail::owner_pid(o);
      r.alive = !earlier_boot && detail::owner_alive(o);
      r.state = s.state.load(std::memory_order_acquire);
      r.count = s.count.load(std::memory_order_acquire);
      const log_entry* log = entries(d);
      r.log.assign(log, log + std::min(r.count, max_entries_));
      out.push_back(std::move(r));
    }
    return out;
  }

  /// A named root, as `root_entries()` reads it.
  struct root_report {
    std::string name;
    std::string type;  ///< the type's name, cut to 47 characters
    std::uint64_t fingerprint = 0;
    std::uint64_t offset = 0;
    std::uint32_t size = 0;
  };

  /// The named roots in the committed state. Only reads.
  [[nodiscard]] std::vector<root_report> root_entries() const {
    using namespace bank_layout;
    std::vector<root_report> out;
    const auto& table = *reinterpret_cast<const roots_table*>(b_ + roots_offset + header_size);
    for (const root_entry& e : table.entries) {
      if (e.used == 0) continue;
      out.push_back({std::string(e.name, strnlen(e.name, sizeof e.name)),
                     std::string(e.type, strnlen(e.type, sizeof e.type)), e.fingerprint, e.offset,
                     e.size});
    }
    return out;
  }

  /// "idle", "active", "committing", or "unknown".
  static std::string_view state_name(std::uint32_t state) noexcept {
    switch (state) {
      case bank_layout::idle: return "idle";
      case bank_layout::active: return "active";
      case bank_layout::committing: return "committing";
      default: return "unknown";
    }
  }

 protected:
  /// Recovers every descriptor in use, alive or not: for a pool whose owners belong to
  /// an earlier boot of the machine, where a pid names some other process now.
  recovery_report recover_from_earlier_boot() {
    recovery_report report;
    for (tx_id d = 0; d < max_transactions; ++d)
      recover_if_dead(d, report, /*assume_dead=*/true);
    return report;
  }

  /// The first problem that makes a mapping this process did not format (a pool file)
  /// unsafe to recover, or "" if none: the descriptors that recovery will read (those
  /// of dead owners, or all of them after a reboot) must be within their bounds. Live
  /// owners change theirs concurrently, so they are not read.
  [[nodiscard]] std::string structure_problem(bool earlier_boot) const {
    using namespace bank_layout;
    for (tx_id d = 0; d < max_transactions; ++d) {
      const slot& s = slot_at(d);
      const owner_id owner = s.owner.load(std::memory_order_acquire);
      if (owner == 0) {
        if (auto p = free_descriptor_problem(d); !p.empty()) return p;
        continue;
      }
      if (!earlier_boot && detail::owner_alive(owner)) continue;
      if (auto p = descriptor_problem(d); !p.empty()) return p;
    }
    return {};
  }

  /// What is wrong with free descriptor `d`, or "" if nothing (or if a transaction
  /// took it meanwhile). A free descriptor logs nothing (ending a transaction clears
  /// its log before freeing it), and `begin()` appends to the log it finds: stale
  /// entries would be released, or copied between banks, at the end of the next
  /// transaction that takes it.
  [[nodiscard]] std::string free_descriptor_problem(tx_id d) const {
    const slot& s = slot_at(d);
    // A transaction that took the descriptor and ended between the two reads of its
    // owner has counted a commit or an abort.
    auto ended = [&] {
      return s.commits.load(std::memory_order_acquire) + s.aborts.load(std::memory_order_acquire);
    };
    const std::uint64_t before = ended();
    const std::uint32_t n = s.count.load(std::memory_order_acquire);
    if (n == 0 || s.owner.load(std::memory_order_acquire) != 0 || ended() != before) return {};
    return fmt::format("descriptor {} is free but records {} log entries", d, n);
  }

  /// What makes descriptor `d`'s state or log unsafe to act on, or "" if nothing.
  [[nodiscard]] std::string descriptor_problem(tx_id d) const {
    using namespace bank_layout;
    const slot& s = slot_at(d);
    const auto state = s.state.load(std::memory_order_relaxed);
    const auto n = s.count.load(std::memory_order_relaxed);
    const std::uint64_t at = slots_begin + d * sizeof(slot);
    if (state != idle && state != active && state != committing) {
      return fmt::format("descriptor {} (offset {}) has an unknown state {:#x}", d, at, state);
    }
    if (n > max_entries_) {
      return fmt::format("descriptor {} (offset {}) logs {} objects, more than its capacity {}", d,
                         at, n, max_entries_);
    }
    const std::uint32_t valid = valid_entries(d, n);
    if (valid < n) {
      const log_entry& e = entries(d)[valid];
      return fmt::format(
          "descriptor {} has a malformed log entry {} (offset {} in the file: object offset {}, "
          "length {}, kind {}, check {:#06x})",
          d, valid, logs_begin + (std::uint64_t{d} * max_entries_ + valid) * sizeof(log_entry),
          e.offset, e.length, static_cast<unsigned>(e.kind), e.check);
    }
    return {};
  }

  /// How many of the first `n` (at most its capacity) log entries of `d` are within
  /// their bounds and pass their check.
  [[nodiscard]] std::uint32_t valid_entries(tx_id d, std::uint32_t n) const noexcept {
    using namespace bank_layout;
    const log_entry* log = entries(d);
    n = std::min(n, max_entries_);
    for (std::uint32_t i = 0; i < n; ++i) {
      const log_entry& e = log[i];
      if ((e.kind != entry_kind::read && e.kind != entry_kind::write) || e.offset < roots_offset ||
          e.offset >= bank_size_ || e.offset % min_block != 0 ||
          e.length > bank_size_ - e.offset - tracked_offset ||
          e.check != entry_check(d, e.offset, e.length, e.kind)) {
        return i;
      }
    }
    return n;
  }

  /// Makes commit and recovery call `log` between their two phases (null: none).
  void set_commit_log(commit_log* log) noexcept { log_ = log; }

  /// Names the pool in the errors its damage causes (`ftm::bad_pool`).
  void set_pool_name(std::string_view name) { pool_name_ = fmt::format("'{}': ", name); }

  /// The state of each descriptor in use (0 for a free one), as recovery will find it.
  [[nodiscard]] std::array<std::uint32_t, bank_layout::max_slots> descriptor_states() const {
    std::array<std::uint32_t, bank_layout::max_slots> states{};
    for (tx_id d = 0; d < max_transactions; ++d) {
      const slot& s = slot_at(d);
      if (s.owner.load(std::memory_order_acquire) != 0) {
        states[d] = s.state.load(std::memory_order_acquire);
      }
    }
    return states;
  }

  /// For the first process to open a pool file, after recovery, while no transaction
  /// runs: a lock still set on a live object (the roots table, a chunk record, an
  /// allocated block) names a descriptor that holds it no more (damage, or a dead
  /// owner's log that lost the entry). Each is cleared, and the object settled as its
  /// holder's recovery would have: completed (copied to the second bank) if `states`
  /// says the holder was committing, else restored from the second bank. Locks of
  /// descriptors still in use are left alone. Returns how many objects it unlocked.
  std::uint64_t clear_stale_locks(const std::array<std::uint32_t, bank_layout::max_slots>& states) {
    using namespace bank_layout;
    std::uint64_t cleared = 0;
    std::uint64_t in_use = 0;  // descriptors still owned: their locks are theirs
    for (tx_id d = 0; d < max_transactions; ++d) {
      if (slot_at(d).owner.load(std::memory_order_acquire) != 0) in_use |= bit(d);
    }
    // `capacity`: the most bytes the object can have where it is.
    auto settle = [&](std::uint64_t off, std::uint64_t capacity) {
      object_header& h = header(off);
      const std::uint32_t w = h.writer.load(std::memory_order_acquire);
      const std::uint64_t r = h.readers.load(std::memory_order_acquire);
      const bool writer_stale = w != 0 && (w > max_slots || (in_use & bit(w - 1)) == 0);
      if (!writer_stale && (r & ~in_use) == 0) return;
      if (writer_stale) {
        const auto& second = *std::launder(reinterpret_cast<const object_header*>(b_ + off));
        const std::uint64_t size = std::min<std::uint64_t>(std::max(h.size, second.size), capacity);
        const std::uint64_t len = tracked_prefix + size;
        if (w <= max_slots && states[w - 1] == committing) {
          std::memcpy(b_ + off + tracked_offset, a_ + off + tracked_offset, len);
        } else {
          std::memcpy(a_ + off + tracked_offset, b_ + off + tracked_offset, len);
        }
        h.writer.store(0, std::memory_order_release);
      }
      h.readers.fetch_and(in_use, std::memory_order_release);
      ++cleared;
    };
    // The records first: the blocks are found from them once they are settled.
    settle(roots_offset, sizeof(roots_table));
    for (std::uint64_t c = 0; c < nchunks_; ++c)
      settle(meta_offset(c), sizeof(chunk_meta));
    for (std::uint64_t c = 0; c < nchunks_; ++c) {
      if (header(meta_offset(c)).size != sizeof(chunk_meta)) continue;
      const chunk_meta& m = meta(c);
      if (m.cls >= 1 && m.cls <= nclasses && m.nblocks == chunk_size / block_size(m.cls)) {
        const std::uint64_t bs = block_size(m.cls);
        for (std::uint32_t i = 0; i < m.nblocks; ++i) {
          if ((m.bitmap[i / 64] >> (i % 64) & 1) != 0) {
            settle(chunk_base(c) + i * bs, bs - header_size);
          }
        }
      } else if (m.cls == cls_large_head && m.nblocks >= 1 && m.nblocks <= nchunks_ - c) {
        settle(chunk_base(c), m.nblocks * chunk_size - header_size);
      }
    }
    store_barrier();
    return cleared;
  }

  /// Calls `f(offset, length)` for every object `d` holds for writing: the bytes that
  /// phase 2 copies, `length` of them from `offset` in each bank.
  template <class F>
  void for_each_held_write(tx_id d, F&& f) const {
    using namespace bank_layout;
    const std::uint32_t n = slot_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = entries(d);
    for (std::uint32_t k = 0; k < n; ++k) {
      const log_entry& e = log[k];
      if (e.kind != entry_kind::write || e.length == 0) continue;
      if (header(e.offset).writer.load(std::memory_order_relaxed) != d + 1) continue;
      f(e.offset + tracked_offset, e.length);
    }
  }

  /// Recovers descriptor `d` if its owner died; true if it did.
  bool recover_one(tx_id d) noexcept {
    recovery_report ignored;
    return recover_if_dead(d, ignored);
  }

 private:
  using slot = bank_layout::slot;
  using log_entry = bank_layout::log_entry;
  using owner_id = detail::owner_id;

  static void bump(std::atomic<std::uint64_t>& counter) noexcept {
    // Only the descriptor's owner writes its counters: no read-modify-write needed.
    // Release (a plain store on x86): commits and aborts are the generation that
    // stale_lock() reads, after the locks they follow are released.
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }

  void format(const bank_layout::geometry& g) {
    using namespace bank_layout;
    auto* h = ::new (base_) pool_header{};
    h->version = format_version;
    h->max_entries = g.max_entries;
    h->pool_id = timestamp() ^ (std::uint64_t{static_cast<std::uint32_t>(::getpid())} << 32);
    h->bank_size = g.bank_size;
    h->nchunks = g.nchunks;
    h->metas_offset = metas_begin;
    h->chunks_offset = g.chunks_offset;
    h->control_size = g.control_size;
    h->map_size = g.map_size;
    pool_header whole = *h;
    whole.magic = magic;  // stored last, below
    h->header_check = header_check_of(whole);
    set_boot_id(*h, current_boot_id());
    for (tx_id d = 0; d < max_slots; ++d)
      ::new (base_ + slots_begin + d * sizeof(slot)) slot{};
    for (std::byte* bank : {a_, b_}) {
      auto init = [&](std::uint64_t off, std::uint32_t size) {
        auto* oh = ::new (bank + off) object_header{};
        oh->size = size;
      };
      init(roots_offset, sizeof(roots_table));
      for (std::uint64_t c = 0; c < nchunks_; ++c)
        init(meta_offset(c), sizeof(chunk_meta));
    }
    store_barrier();
    h->magic = magic;  // last: a pool with its magic is a whole pool
  }

  // ---- layout ----------------------------------------------------------------

  slot& slot_at(tx_id d) const noexcept {
    return *std::launder(
        reinterpret_cast<slot*>(base_ + bank_layout::slots_begin + d * sizeof(slot)));
  }
  log_entry* entries(tx_id d) const noexcept {
    return reinterpret_cast<log_entry*>(base_ + bank_layout::logs_begin) +
           std::uint64_t{d} * max_entries_;
  }
  bank_layout::object_header& header(std::uint64_t off) const noexcept {
    return *std::launder(reinterpret_cast<bank_layout::object_header*>(a_ + off));
  }
  static std::uint64_t meta_offset(std::uint64_t c) noexcept {
    return bank_layout::metas_begin + c * bank_layout::meta_stride;
  }
  bank_layout::chunk_meta& meta(std::uint64_t c) const noexcept {
    return *reinterpret_cast<bank_layout::chunk_meta*>(a_ + meta_offset(c) +
                                                       bank_layout::header_size);
  }
  bank_layout::roots_table& roots() const noexcept {
    return *reinterpret_cast<bank_layout::roots_table*>(a_ + bank_layout::roots_offset +
                                                        bank_layout::header_size);
  }
  std::uint64_t chunk_base(std::uint64_t c) const noexcept {
    return chunks_offset_ + c * chunk_size;
  }
  std::uint64_t chunk_of(std::uint64_t off) const noexcept {
    return (off - chunks_offset_) / chunk_size;
  }
  static std::uint64_t block_size(std::uint32_t cls) noexcept {
    return bank_layout::min_block << (cls - 1);
  }
  static std::uint32_t class_for(std::uint64_t total) noexcept {
    return static_cast<std::uint32_t>(std::bit_width(std::max<std::uint64_t>(total, 64) - 1)) - 5;
  }

  // ---- checks ----------------------------------------------------------------

  void check_handle(std::uint64_t off, const object_type& t) const {
    if (off < chunks_offset_ || off >= bank_size_ || off % bank_layout::min_block != 0) {
      throw usage_error(fmt::format(
          "the handle to a {} (offset {}) does not name an object of this pool", t.name, off));
    }
  }

  void check_size(std::uint64_t off, const object_type& t) const {
    const std::uint32_t size = header(off).size;
    if (size == t.size) return;
    if (size == 0) {
      throw usage_error(fmt::format(
          "no {} at offset {}: the object was destroyed, or its creation never committed", t.name,
          off));
    }
    throw usage_error(
        fmt::format("the object at offset {} has {} bytes, but the handle is for a {} ({} bytes)",
                    off, size, t.name, t.size));
  }

  static void check_root_name(std::string_view name) {
    if (name.empty() || name.size() >= sizeof(bank_layout::root_entry::name) ||
        name.find('\0') != std::string_view::npos) {
      throw invalid_argument(fmt::format("root name '{}' must have 1 to {} characters and no NUL",
                                         name, sizeof(bank_layout::root_entry::name) - 1));
    }
  }

  /// Throws `ftm::bad_pool`: the pool's structures are damaged (`what` says which, and
  /// where: offsets in the working bank, which starts `control_size` bytes into the file).
  [[noreturn]] void damaged(std::string_view what) const {
    throw bad_pool(fmt::format("{}{} (the pool is damaged)", pool_name_, what));
  }

  /// Whether an object's header and its recorded size fit at `off` in the bank.
  bool object_fits(std::uint64_t off) const noexcept {
    using namespace bank_layout;
    return off >= chunks_offset_ && off < bank_size_ && off % min_block == 0 &&
           header(off).size <= bank_size_ - off - header_size;
  }

  /// Whether entry `i` of `table` is consistent: free and not marked bound, or bound,
  /// marked, with its check word and NUL-terminated names.
  static bool root_entry_sound(const bank_layout::roots_table& table, std::uint32_t i) noexcept {
    using namespace bank_layout;
    const root_entry& r = table.entries[i];
    const bool marked = (table.in_use >> i & 1) != 0;
    if (r.used == 0) return !marked;
    return marked && r.used == root_check(r) && strnlen(r.name, sizeof r.name) < sizeof r.name &&
           strnlen(r.type, sizeof r.type) < sizeof r.type;
  }

  /// What is wrong with entry `i` of `table` (see root_entry_sound()).
  static std::string root_entry_problem(const bank_layout::roots_table& table, std::uint32_t i) {
    using namespace bank_layout;
    const root_entry& r = table.entries[i];
    const std::uint64_t at = roots_offset + header_size + i * sizeof(root_entry);
    if (r.used == 0) {
      return fmt::format(
          "entry {} of the roots table (offset {}) is empty, but the table records "
          "it bound: a root was lost",
          i, at);
    }
    if ((table.in_use >> i & 1) == 0) {
      return fmt::format(
          "entry {} of the roots table (offset {}) is bound, but the table records "
          "it free",
          i, at);
    }
    return fmt::format("entry {} of the roots table (offset {}) fails its check", i, at);
  }

  // ---- the log ---------------------------------------------------------------

  /// Logs the intent to lock before taking the lock, so a crash in between leaves
  /// nothing held that recovery cannot see.
  log_entry& push_entry(tx_id d, std::uint64_t off, bank_layout::entry_kind kind,
                        std::uint32_t length = 0) {
    slot& s = slot_at(d);
    const std::uint32_t n = s.count.load(std::memory_order_relaxed);
    if (n == max_entries_) {
      throw capacity_exceeded(
          fmt::format("a transaction may lock at most {} objects (dual_bank::options::"
                      "max_objects_per_transaction)",
                      max_entries_));
    }
    log_entry& e = entries(d)[n];
    e.offset = off;
    set_entry(e, d, length, kind);
    s.count.store(n + 1, std::memory_order_release);
    return e;
  }

  /// Writes the length and kind of `e`, an entry of `d`, with their check: one store.
  static void set_entry(log_entry& e, tx_id d, std::uint32_t length,
                        bank_layout::entry_kind kind) noexcept {
    const std::uint64_t word = length | std::uint64_t{static_cast<std::uint16_t>(kind)} << 32 |
                               std::uint64_t{bank_layout::entry_check(d, e.offset, length, kind)}
                                   << 48;
    static_assert(offsetof(log_entry, length) == 8 && offsetof(log_entry, check) == 14);
    std::memcpy(reinterpret_cast<char*>(&e) + offsetof(log_entry, length), &word, sizeof word);
  }

  // ---- locks -----------------------------------------------------------------

  static std::uint64_t bit(tx_id d) noexcept { return std::uint64_t{1} << d; }

  /// A transaction's age for wait-die, taken from the clock the first time a conflict
  /// needs it and fixed from then on, so every decision about it agrees.
  std::uint64_t priority(tx_id d) const noexcept {
    auto& p = slot_at(d).priority;
    std::uint64_t v = p.load(std::memory_order_acquire);
    if (v == 0) {
      const std::uint64_t now = detail::timestamp() | 1;
      if (p.compare_exchange_strong(v, now, std::memory_order_acq_rel)) v = now;
    }
    return v;
  }

  /// Wait-die: `d` may wait for `holder` only if `d` is older.
  bool older(tx_id d, tx_id holder) const noexcept {
    const auto pd = priority(d);
    const auto ph = priority(holder);
    return pd < ph || (pd == ph && d < holder);
  }

  /// Whether descriptor `h` runs a transaction (only a running one holds locks).
  bool running(tx_id h) const noexcept {
    const slot& s = slot_at(h);
    return s.owner.load(std::memory_order_acquire) != 0 &&
           s.state.load(std::memory_order_acquire) != bank_layout::idle;
  }

  /// Whether the lock on `off` that names `h` (as its writer, or `reader`) is stale: `h`
  /// runs no transaction, before and after the lock word was read, and ended none in
  /// between (its commits and aborts, bumped before it is freed, are a generation), so
  /// the lock was not taken and released meanwhile. Seen twice, a while apart.
  bool stale_lock(tx_id h, std::uint64_t off, bool reader) const {
    const slot& s = slot_at(h);
    auto ended = [&] {
      return s.commits.load(std::memory_order_acquire) + s.aborts.load(std::memory_order_acquire);
    };
    auto names = [&] {
      const bank_layout::object_header& oh = header(off);
      return reader ? (oh.readers.load(std::memory_order_seq_cst) & bit(h)) != 0
                    : oh.writer.load(std::memory_order_seq_cst) == h + 1;
    };
    for (int look = 0; look < 2; ++look) {
      if (look == 1) {
        for (int i = 0; i < 16; ++i)
          std::this_thread::yield();
      }
      const std::uint64_t before = ended();
      if (running(h) || !names() || running(h) || ended() != before) return false;
    }
    return true;
  }

  /// One step of waiting for `holder`'s lock on `off`: dies if `d` is the younger,
  /// reclaims the lock if its holder's process died. Never waits for a descriptor that
  /// runs no transaction: a lock that names one is damage (`ftm::bad_pool`).
  void wait_or_die(tx_id d, tx_id holder, std::uint64_t off, std::uint32_t& spins,
                   bool reader = false) {
    if (holder >= max_transactions) {
      throw usage_error(
          fmt::format("the lock word at offset {} is corrupt: is the handle valid?", off));
    }
    if (!running(holder) && stale_lock(holder, off, reader)) {
      damaged(
          fmt::format("the {} at offset {} is locked by descriptor {}, which runs no "
                      "transaction (a stale lock: opening the pool when no other process "
                      "has it open clears it)",
                      off == bank_layout::roots_offset ? "roots table"
                      : off < chunks_offset_           ? "chunk record"
                                                       : "object",
                      off, holder));
    }
    if (!older(d, holder)) {
      // Dying for a holder that is dead itself would only repeat: recover it instead.
      recovery_report ignored;
      if (recover_if_dead(holder, ignored)) return;
      slot& s = slot_at(d);
      s.doomed.store(1, std::memory_order_relaxed);
      bump(s.conflicts);
      throw conflict(fmt::format("the object at offset {} is locked by an older transaction", off));
    }
    ++spins;
    if (spins < 64) {
      detail::cpu_relax();
      return;
    }
    if (spins % 256 == 0) {
      recovery_report ignored;
      if (recover_if_dead(holder, ignored)) return;
    }
    std::this_thread::yield();
  }

  /// `expected`: the size the object must have (its type's, or the allocator's record's),
  /// so that commit and abort never copy more than the object, whatever its header says.
  void acquire_write(tx_id d, std::uint64_t off, std::uint64_t expected) {
    using namespace bank_layout;
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    if (h.writer.load(std::memory_order_relaxed) == me) return;
    log_entry& e = push_entry(d, off, entry_kind::write);
    slot_at(d).flags |= off < chunks_offset_ ? locked_records | wrote_objects : wrote_objects;
    FTM_FAULT_POINT("lock.after_log_entry");
    std::uint32_t spins = 0;
    for (;;) {
      std::uint32_t w = 0;
      if (h.writer.compare_exchange_strong(w, me, std::memory_order_seq_cst)) break;
      try {
        wait_or_die(d, w - 1, off, spins);
      } catch (...) {
        slot_at(d).count.fetch_sub(1, std::memory_order_release);  // forget the intent
        throw;
      }
    }
    // Exclusive: wait for the readers (other than ourselves, when upgrading) to leave.
    // Losing here gives the lock back at once: a transaction that goes on after the
    // conflict must not find the object already "held", with nothing logged to undo.
    try {
      for (;;) {
        std::uint64_t r = h.readers.load(std::memory_order_seq_cst) & ~bit(d);
        if (r == 0) break;
        for (std::uint64_t rest = r; rest != 0; rest &= rest - 1) {
          const auto reader = static_cast<tx_id>(std::countr_zero(rest));
          if (!older(d, reader)) wait_or_die(d, reader, off, spins, true);  // throws
        }
        wait_or_die(d, static_cast<tx_id>(std::countr_zero(r)), off, spins, true);
      }
    } catch (...) {
      unlock_last(d, off);
      throw;
    }
    set_length(d, e, off, expected);
    FTM_FAULT_POINT("open.after_lock");
  }

  /// Records in `e`, the entry of the object at `off` that `d` now holds for writing,
  /// what commit and abort copy: its size field and, if its size is `expected`, the
  /// object (otherwise the caller refuses to write it). A record of the allocator or
  /// the roots table of another size is damage.
  void set_length(tx_id d, log_entry& e, std::uint64_t off, std::uint64_t expected) {
    using namespace bank_layout;
    const std::uint32_t size = header(off).size;
    const bool fits = size == expected;
    set_entry(e, d, static_cast<std::uint32_t>(tracked_prefix + (fits ? size : 0)),
              entry_kind::write);
    store_barrier();  // the undo length is in the log before the caller's first write
    if (!fits && off < chunks_offset_) {
      damaged(fmt::format("the {} at offset {} has a damaged size {} (expected {})",
                          off == roots_offset ? "roots table" : "chunk record", off, size,
                          expected));
    }
  }

  void acquire_read(tx_id d, std::uint64_t off) {
    using namespace bank_layout;
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    if (h.writer.load(std::memory_order_relaxed) == me ||
        (h.readers.load(std::memory_order_relaxed) & bit(d)) != 0) {
      return;
    }
    push_entry(d, off, entry_kind::read);
    if (off < chunks_offset_) slot_at(d).flags |= locked_records;
    std::uint32_t spins = 0;
    for (;;) {
      h.readers.fetch_or(bit(d), std::memory_order_seq_cst);
      std::uint32_t w = h.writer.load(std::memory_order_seq_cst);
      if (w == 0) break;
      h.readers.fetch_and(~bit(d), std::memory_order_seq_cst);
      while (w != 0) {
        wait_or_die(d, w - 1, off, spins);
        w = h.writer.load(std::memory_order_acquire);
      }
    }
  }

  /// Tries to lock chunk `c`'s metadata without waiting (another allocator holding it
  /// will use another chunk). `held` tells whether `d` held it already.
  bool try_lock_meta(tx_id d, std::uint64_t c, bool& held) {
    using namespace bank_layout;
    const std::uint64_t off = meta_offset(c);
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    held = h.writer.load(std::memory_order_relaxed) == me;
    if (held) return true;
    if (h.writer.load(std::memory_order_relaxed) != 0) return false;
    log_entry& e = push_entry(d, off, entry_kind::write);
    slot_at(d).flags |= locked_records | wrote_objects;
    std::uint32_t w = 0;
    if (!h.writer.compare_exchange_strong(w, me, std::memory_order_seq_cst)) {
      slot_at(d).count.fetch_sub(1, std::memory_order_release);
      return false;
    }
    if ((h.readers.load(std::memory_order_seq_cst) & ~bit(d)) != 0) {
      unlock_last(d, off);
      return false;
    }
    set_length(d, e, off, sizeof(chunk_meta));
    return true;
  }

  /// Whether chunk `c` is free in the committed state (the second bank), whatever the
  /// working bank says: a chunk freed by a running transaction is not free yet.
  bool committed_free(std::uint64_t c) const noexcept {
    using namespace bank_layout;
    return reinterpret_cast<const chunk_meta*>(b_ + meta_offset(c) + header_size)->cls == cls_free;
  }

  /// Releases the lock of the newest log entry, unchanged, and forgets the entry.
  void unlock_last(tx_id d, std::uint64_t off) noexcept {
    header(off).writer.store(0, std::memory_order_release);
    slot_at(d).count.fetch_sub(1, std::memory_order_release);
  }

  // ---- allocation --------------------------------------------------------------

  allocation take_block(tx_id d, std::uint64_t c, bank_layout::chunk_meta& m,
                        const object_type& t) {
    using namespace bank_layout;
    std::uint32_t idx = max_blocks;
    for (std::uint32_t w = 0; w < max_blocks / 64; ++w) {
      if (m.bitmap[w] != ~std::uint64_t{0}) {
        idx = w * 64 + static_cast<std::uint32_t>(std::countr_one(m.bitmap[w]));
        break;
      }
    }
    if (m.nblocks != chunk_size / block_size(m.cls) || idx >= m.nblocks) {
      damaged(
          fmt::format("the record of chunk {} (offset {}) counts {} of {} blocks in use, but "
                      "its bitmap has no free block",
                      c, meta_offset(c), m.used, m.nblocks));
    }
    m.bitmap[idx / 64] |= std::uint64_t{1} << (idx % 64);
    ++m.used;
    FTM_FAULT_POINT("alloc.after_bitmap");
    return place_object(d, chunk_base(c) + idx * block_size(m.cls), t);
  }

  /// Zeroes, in both banks, the header of every block of chunk `c` cut in blocks of
  /// `block` bytes, as the chunk is given to objects. The chunk is free in the committed
  /// state and this transaction holds its record, so the bytes are no object's; they
  /// may be an earlier object's data, and no header may be taken from them: not the
  /// lock words (which commits never copy between the banks), nor the size that abort
  /// restores from the second bank (a handle whose creation was undone would find a
  /// stray size).
  void clear_headers(std::uint64_t c, std::uint64_t block) noexcept {
    using namespace bank_layout;
    for (std::uint64_t off = chunk_base(c); off < chunk_base(c) + chunk_size; off += block) {
      std::memset(b_ + off, 0, header_size);
      std::memset(a_ + off, 0, header_size);
    }
  }

  /// Makes a new object at `off`, write-locked by `d`, so that abort and recovery
  /// treat its creation like any other write.
  allocation place_object(tx_id d, std::uint64_t off, const object_type& t) {
    using namespace bank_layout;
    push_entry(d, off, entry_kind::write, static_cast<std::uint32_t>(tracked_prefix + t.size));
    slot_at(d).flags |= wrote_objects;
    object_header& h = header(off);
    h.readers.store(0, std::memory_order_relaxed);
    h.writer.store(d + 1, std::memory_order_release);
    h.size = static_cast<std::uint32_t>(t.size);
    store_barrier();
    FTM_FAULT_POINT("alloc.after_header");
    return {off, a_ + off + header_size};
  }

  allocation allocate_large(tx_id d, const object_type& t) {
    using namespace bank_layout;
    const std::uint64_t k = (t.size + header_size + chunk_size - 1) / chunk_size;
    std::vector<std::uint64_t> locked;  // metadata this attempt locked, newest last
    for (std::uint64_t c = 0; k <= nchunks_ && c + k <= nchunks_; ++c) {
      bool usable = true;
      for (std::uint64_t i = 0; i < k && usable; ++i) {
        bool held = false;
        usable = try_lock_meta(d, c + i, held);
        if (usable && !held) locked.push_back(c + i);
        // Not a chunk this transaction emptied (see allocate()): free since it began.
        usable = usable && !held && meta(c + i).cls == cls_free && committed_free(c + i);
      }
      if (!usable) {
        for (; !locked.empty(); locked.pop_back())
          unlock_last(d, meta_offset(locked.back()));
        continue;
      }
      meta(c) = chunk_meta{cls_large_head, static_cast<std::uint32_t>(k), 1, 0, {}};
      class_hint_[c].store(cls_large_head, std::memory_order_relaxed);
      for (std::uint64_t i = 1; i < k; ++i) {
        meta(c + i) = chunk_meta{cls_large_tail, 0, 0, static_cast<std::uint32_t>(c), {}};
        class_hint_[c + i].store(cls_large_tail, std::memory_order_relaxed);
      }
      clear_headers(c, chunk_size);
      FTM_FAULT_POINT("alloc.after_bitmap");
      return place_object(d, chunk_base(c), t);
    }
    throw pool_full(fmt::format(
        "dual_bank: no room for a {} ({} bytes): it needs {} free contiguous chunks of {} bytes, "
        "the pool has {} chunks",
        t.name, t.size, k, chunk_size, nchunks_));
  }

  // ---- commit, abort, recovery -------------------------------------------------

  /// Copies the tracked bytes of one object between the banks. Small objects are
  /// copied inline: the 8-byte size, then the object in 16-byte pieces, rounded up.
  /// Every block ends on a 64-byte boundary and its object starts 16 bytes in, so the
  /// rounding stays in the block (rounding from the size field instead would copy the
  /// next block's `readers` word when the object ends 8 bytes before its block does).
  static void copy_tracked(std::byte* to, const std::byte* from, std::uint32_t length) noexcept {
    if (length > 256) {
      std::memcpy(to, from, length);
      return;
    }
    __builtin_memcpy(to, from, bank_layout::tracked_prefix);
    for (std::uint32_t i = bank_layout::tracked_prefix; i < length; i += 16)
      __builtin_memcpy(to + i, from + i, 16);
  }
  void redo(const log_entry& e) noexcept {
    using namespace bank_layout;
    copy_tracked(b_ + e.offset + tracked_offset, a_ + e.offset + tracked_offset, e.length);
  }
  void undo(const log_entry& e) noexcept {
    using namespace bank_layout;
    copy_tracked(a_ + e.offset + tracked_offset, b_ + e.offset + tracked_offset, e.length);
  }

  /// Copies every object `d` holds for writing between the banks: to the second bank
  /// (redo, oldest first) or back from it (undo, newest first). `fault_point` fires
  /// after the first copy, for the crash tests.
  template <bool Redo>
  void copy_held(tx_id d, [[maybe_unused]] std::string_view fault_point) noexcept {
    using namespace bank_layout;
    const std::uint32_t n = slot_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = entries(d);
    bool first = true;
    for (std::uint32_t k = 0; k < n; ++k) {
      const log_entry& e = log[Redo ? k : n - 1 - k];
      if (e.kind != entry_kind::write || e.length == 0) continue;
      // Acquire: `d` took this lock with a read-modify-write, so reading it orders the
      // previous holder's copies (released in the unlock `d` followed) before ours.
      if (header(e.offset).writer.load(std::memory_order_acquire) != d + 1) continue;
      if constexpr (Redo) {
        redo(e);
      } else {
        undo(e);
      }
      if (first) FTM_FAULT_POINT(fault_point);
      first = false;
    }
    store_barrier();
  }

  /// Releases every lock `d` holds; returns how many. Objects first, the allocator's
  /// chunk records last: once a chunk's record is free, another transaction may hand
  /// out a block this one destroyed, and that block's lock must be free by then (a
  /// process that dies between the two leaves only a record locked, which blocks
  /// allocation in that chunk until it is recovered, never a free block locked).
  /// `with_records` false skips the second pass (a transaction that locked no record).
  std::uint64_t release_locks(tx_id d, bool with_records = true) noexcept {
    using namespace bank_layout;
    const std::uint32_t n = slot_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = entries(d);
    std::uint64_t released = 0;
    for (const bool records : {false, true}) {
      if (records && !with_records) break;
      for (std::uint32_t i = 0; i < n; ++i) {
        if ((log[i].offset < chunks_offset_) != records) continue;
        object_header& h = header(log[i].offset);
        if (log[i].kind == entry_kind::write) {
          if (h.writer.load(std::memory_order_relaxed) == d + 1) {
            h.writer.store(0, std::memory_order_release);
            ++released;
          }
        } else if ((h.readers.fetch_and(~bit(d), std::memory_order_release) & bit(d)) != 0) {
          ++released;
        }
      }
    }
    return released;
  }

  /// Makes a claimed descriptor active for a new transaction.
  void activate(slot& s, const begin_options& o) noexcept {
    using namespace bank_layout;
    // 0: the age is taken when a conflict first asks for it (see priority()).
    s.priority.store(o.priority, std::memory_order_relaxed);
    s.doomed.store(0, std::memory_order_relaxed);
    s.flags &= attached;
    if (o.attempt != 0) bump(s.retries);
    s.state.store(active, std::memory_order_release);
  }

  /// Ends a transaction: the descriptor is free again, or idle in its session.
  /// Recovery passes `release` to free a dead owner's session descriptor too.
  static void finish(slot& s, bool release = false) noexcept {
    using namespace bank_layout;
    s.count.store(0, std::memory_order_relaxed);
    s.state.store(idle, std::memory_order_release);
    if (release || (s.flags & attached) == 0) {
      s.flags = 0;
      s.owner.store(0, std::memory_order_release);
    }
  }

  /// Recovers descriptor `d` if its owner died; true if it did.
  bool recover_if_dead(tx_id d, recovery_report& report, bool assume_dead = false) noexcept {
    using namespace bank_layout;
    slot& s = slot_at(d);
    owner_id owner = s.owner.load(std::memory_order_acquire);
    if (owner == 0 || (!assume_dead && detail::owner_alive(owner))) return false;
    // Claim it: a recoverer that dies here leaves it to the next one.
    if (!s.owner.compare_exchange_strong(owner, detail::self_owner_id(),
                                         std::memory_order_acq_rel)) {
      return false;
    }
    // Damage found here (opening refuses it; a process that corrupts the pool's memory
    // can leave it): only the entries before the first bad one are acted on.
    const std::uint32_t count = s.count.load(std::memory_order_acquire);
    if (const std::uint32_t valid = valid_entries(d, count); valid != count) {
      s.count.store(valid, std::memory_order_release);
    }
    const std::uint32_t state = s.state.load(std::memory_order_acquire);
    if (state == committing) {
      if (log_ != nullptr) log_->make_durable(d, true);
      copy_held<true>(d, "recover.mid_redo");
      if (log_ != nullptr) log_->applied(d);
      ++report.redone;
    } else if (state == active) {
      copy_held<false>(d, "recover.mid_undo");
      ++report.undone;
    }
    report.locks_released += release_locks(d);
    finish(s, /*release=*/true);
    // Its commit may have changed what someone waits for, and it wakes no one now.
    wake_watchers();
    return true;
  }

  // ---- waking watchers -----------------------------------------------------------

  bank_layout::watch_table& watches() const noexcept {
    return *std::launder(
        reinterpret_cast<bank_layout::watch_table*>(base_ + bank_layout::watch_begin));
  }
  static std::uint32_t* futex_word(bank_layout::watch_table& w) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return reinterpret_cast<std::uint32_t*>(&w.global.changes);
  }
  static std::uint32_t watch_bucket(std::uint64_t off) noexcept {
    return static_cast<std::uint32_t>(((off >> 6) * 0x9e3779b97f4a7c15ull >> 32) %
                                      bank_layout::watch_buckets);
  }

  /// After commit released `d`'s locks: wakes the watchers if it wrote an object that
  /// hashes to a bucket with watchers. Without watchers, one plain load.
  void notify_watchers(tx_id d) noexcept {
    using namespace bank_layout;
    watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_relaxed) == 0) return;
    const std::uint32_t n = slot_at(d).count.load(std::memory_order_relaxed);
    const log_entry* log = entries(d);
    for (std::uint32_t i = 0; i < n; ++i) {
      if (log[i].kind == entry_kind::write &&
          w.buckets[watch_bucket(log[i].offset)].watchers.load(std::memory_order_relaxed) != 0) {
        wake_watchers();
        return;
      }
    }
  }

  /// Wakes every watcher of the pool, if there is one.
  void wake_watchers() noexcept {
    bank_layout::watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_seq_cst) == 0) return;
    w.global.changes.fetch_add(1, std::memory_order_seq_cst);
    ::syscall(SYS_futex, futex_word(w), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  }

  std::string pool_name_;      // "'<file>': ", or empty: prefixes damage errors
  commit_log* log_ = nullptr;  // pmem's `power` level: called between the phases
  std::byte* base_ = nullptr;  // the mapping: control region, then the two banks
  std::byte* a_ = nullptr;     // the working bank
  std::byte* b_ = nullptr;     // the second bank: the last committed state
  std::size_t bank_size_ = 0;
  std::uint64_t nchunks_ = 0;
  std::uint64_t chunks_offset_ = 0;
  std::uint32_t max_entries_ = 0;
  // Hints of this process only, never trusted without the chunk's lock.
  std::unique_ptr<std::atomic<std::uint8_t>[]> class_hint_;
  std::atomic<std::uint64_t> class_start_[bank_layout::nclasses + 1]{};
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_ENGINE_HPP
