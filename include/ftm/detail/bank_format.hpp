#ifndef FTM_DETAIL_BANK_FORMAT_HPP
#define FTM_DETAIL_BANK_FORMAT_HPP

/// \file
/// The bank engine's format, in memory and on the medium: every structure of a pool
/// (header, watchers' table, descriptors and their logs, object headers, the roots
/// table, the allocator's chunk records) and every offset, in one place. A pool file
/// is this layout, byte for byte; `format_version` changes with it.
///
///     0      pool_header            (the redo log's state at redo::control_offset)
///     2048   watch_table
///     4096   descriptor[n]          one cache line each; n = the header's `descriptors`
///     logs_begin(n)  log_entry[n][max_entries]  (8192 for the default n = 64)
///     control_size   bank A (working), then bank B (the last committed state), each:
///                      64        the roots table (an object: header, roots_table)
///                      metas_begin  chunk records (objects of meta_stride bytes)
///                      chunks_offset  chunks of chunk_size bytes, cut into blocks

#include <ftm/detail/checksum.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail::bank_layout {

/// The first 16 bytes of every object block, in the working bank. The lock words are
/// not copied between banks; `size` is, so creating and destroying are transactional.
/// Readers take no lock: they read the second bank and check `version` (see
/// docs/design.md, "Invisible reads").
struct object_header {
  std::atomic<std::uint64_t> version;  // even; odd while a commit changes the second bank
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
  // Offsets are below 2^47: `d` (below 1,024) goes above them.
  std::uint64_t x = ((offset ^ std::uint64_t{d} << 54) ^ (std::uint64_t{length} << 40) ^
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

/// The bank engine's transaction handle (`ftm::tx_id`) is the index of the descriptor
/// that runs it, in 0..n (the pool's `descriptors`); a descriptor is reused by later
/// transactions.
using descriptor_index = tx_id;

/// A descriptor's states. Those recovery acts on are far apart in bits (Hamming
/// distance 16 or more, and from 0), so damage to the word never turns one into
/// another: it makes an unknown state, which is refused.
enum descriptor_state : std::uint32_t { idle = 0, active = 0xa5a50f01u, committing = 0x5a5af002u };

/// What a transaction did so far, so that commit skips the passes it does not need.
enum descriptor_flags : std::uint32_t {
  wrote_objects = 1,   // took a write lock: commit has copies to make
  locked_records = 2,  // locked an allocator record (or the roots): a second release pass
  attached = 4,        // held by a session: kept, idle, when a transaction ends
};

/// A transaction descriptor, in shared memory, one cache line of its own; its log
/// is elsewhere.
struct alignas(64) descriptor {
  std::atomic<owner_id> owner;  // 0: free; otherwise the process that runs (or recovers) it
  std::atomic<std::uint32_t> state;
  std::atomic<std::uint32_t> count;  // log entries in use
  std::atomic<std::uint64_t> priority;
  std::atomic<std::uint32_t> doomed;  // lost a conflict: may only abort
  std::uint32_t flags;                // wrote_objects | locked_records: what commit must do
  std::atomic<std::uint64_t> commits, aborts, conflicts, retries;
};
static_assert(sizeof(descriptor) == 64);

inline constexpr std::uint64_t magic = 0x66746d2d64756131ull;  // "ftm-dua1"
/// Transactions at once in one pool: the descriptors it has, chosen when it is made
/// (the header's `descriptors`), at most `max_descriptors`. Each costs 64 bytes and a log
/// of `max_entries` entries, so the default keeps small pools small.
inline constexpr std::uint32_t default_descriptors = 64;
inline constexpr std::uint32_t max_descriptors = 1024;

// The control region: a page of header, the descriptors, then their logs.
inline constexpr std::uint64_t descriptors_begin = 4096;

/// Where the logs of a pool of `n` descriptors begin: on the page after the descriptors.
constexpr std::uint64_t logs_begin(std::uint32_t n) noexcept {
  return descriptors_begin + (std::uint64_t{n} * 64 + 4095) / 4096 * 4096;
}

/// 2: checksums in the header, the descriptors' logs and states, and the roots table;
/// the redo log's state in the header page (`redo::control`) records the log's id and
/// the last record on the medium. 3: those checksums are the redo log's
/// (`detail::checksum`), one function for every format, and a port object begins with
/// its kind (`detail::port_kind`, <ftm/detail/port_format.hpp>). 4: an object's first
/// word is its version (invisible reads), no longer a bit per reading descriptor. 5: the
/// header records how many descriptors the pool has (`descriptors`, was always 64), the
/// log checks take the descriptor's high bits, and the redo log's `in_flight` is a bitmap.
/// 6: each bucket of the watchers' table has its own futex word (`watch_line`): the
/// same bytes, but a watcher of format 5 would sleep on a word a committer of format 6
/// no longer bumps for it.
inline constexpr std::uint32_t format_version = 6;

/// The check word of `n` bytes (a multiple of 8) at `p`, seeded: for the structures a
/// bound cannot check (the header, the roots table's entries).
inline std::uint64_t check_bytes(const void* p, std::size_t n, std::uint64_t seed) noexcept {
  const std::uint64_t h = checksum(p, n, seed);
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
  std::uint32_t descriptors;  // transactions at once: 1..max_descriptors
  std::uint32_t reserved0;
  char boot_id[40];  // the boot the pool's owners belong to (for pools that outlive one)
  /// check_bytes() of `boot_id`; 0 while an opener rewrites it (after recovering every
  /// descriptor of the earlier boot, so the pool counts as of an earlier boot then).
  std::uint64_t boot_check;
  std::uint64_t header_check;  // check_bytes() of the fields before `boot_id`
  /// 1 if the pool's latest opener uses it in protected mode, else 0 (and in pools made
  /// before the field existed): what ftm-inspect shows. Not in any check: it changes.
  std::uint32_t protected_mode;
  std::uint32_t reserved;
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
/// pool). Objects hash to 31 buckets; each bucket's `changes` is the futex word of
/// the watchers whose objects all hash to it, bumped by every commit that writes an
/// object of the bucket while it has watchers, so a commit wakes only the sleepers of
/// the buckets it wrote. `watchers` counts the bucket's watchers, `sleepers` those
/// asleep on its word (or about to be), so a wake makes the system call only when one
/// sleeps, and `spread` the sleepers whose objects hash to several buckets: they sleep
/// on `global.changes` instead, which a commit bumps (and wakes, if `global.sleepers`)
/// only when a bucket it wrote has such a sleeper. `global.watchers` counts the
/// watchers of the whole pool, so a commit with nobody waiting reads one word. Each on
/// its own cache line: committers only read them unless someone waits.
struct alignas(64) watch_line {
  std::atomic<std::uint32_t> changes;
  std::atomic<std::uint32_t> watchers;
  std::atomic<std::uint32_t> sleepers;
  std::atomic<std::uint32_t> spread;  // buckets only
};
inline constexpr std::uint32_t watch_buckets = 31;
struct watch_table {
  watch_line global;
  watch_line buckets[watch_buckets];
};
inline constexpr std::uint64_t watch_begin = 2048;
static_assert(sizeof(pool_header) <= watch_begin);
static_assert(watch_begin + sizeof(watch_table) <= descriptors_begin);

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

/// Whether entry `i` of `table` is consistent: free and not marked bound, or bound,
/// marked, with its check word and NUL-terminated names.
inline bool root_entry_sound(const roots_table& table, std::uint32_t i) noexcept {
  const root_entry& r = table.entries[i];
  const bool marked = (table.in_use >> i & 1) != 0;
  if (r.used == 0) return !marked;
  return marked && r.used == root_check(r) && strnlen(r.name, sizeof r.name) < sizeof r.name &&
         strnlen(r.type, sizeof r.type) < sizeof r.type;
}

/// What is wrong with entry `i` of `table` (see root_entry_sound()).
inline std::string root_entry_problem(const roots_table& table, std::uint32_t i) {
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
  std::uint32_t descriptors = 0;
  std::uint64_t control_size = 0;
  std::uint64_t map_size = 0;

  /// The layout of a pool with banks of `bank_size` bytes and `descriptors`
  /// transactions at once; `who` names the engine in errors.
  static geometry compute(std::uint64_t bank_size, std::uint32_t max_entries, std::string_view who,
                          std::uint32_t descriptors = default_descriptors) {
    if (descriptors < 1 || descriptors > max_descriptors) {
      throw invalid_argument(
          fmt::format("{}: max_transactions is {}, but a pool runs 1 to {} transactions at once",
                      who, descriptors, max_descriptors));
    }
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
    g.descriptors = descriptors;
    g.control_size = align_up(
        logs_begin(descriptors) + std::uint64_t{descriptors} * max_entries * sizeof(log_entry),
        4096);
    g.map_size = g.control_size + 2 * bank_size;
    return g;
  }
};

// The format, checked: a change to any of these is a new `format_version`.
static_assert(sizeof(pool_header) == 144 && offsetof(pool_header, version) == 8 &&
                  offsetof(pool_header, pool_id) == 16 && offsetof(pool_header, map_size) == 64 &&
                  offsetof(pool_header, descriptors) == 72 &&
                  offsetof(pool_header, boot_id) == 80 &&
                  offsetof(pool_header, boot_check) == 120 &&
                  offsetof(pool_header, header_check) == 128 &&
                  offsetof(pool_header, protected_mode) == 136,
              "the pool header's layout is part of the file format");
static_assert(sizeof(watch_line) == 64 && sizeof(watch_table) == 32 * 64,
              "the watchers' table is one cache line per counter pair");
static_assert(offsetof(descriptor, state) == 8 && offsetof(descriptor, count) == 12 &&
                  offsetof(descriptor, priority) == 16 && offsetof(descriptor, doomed) == 24 &&
                  offsetof(descriptor, flags) == 28 && offsetof(descriptor, commits) == 32,
              "a descriptor's layout is part of the file format");
static_assert(descriptors_begin == 4096 && logs_begin(64) == 8192 && logs_begin(65) == 12288,
              "the descriptors follow the header page, their logs the descriptors");
static_assert(offsetof(log_entry, length) == 8 && offsetof(log_entry, kind) == 12 &&
                  offsetof(log_entry, check) == 14,
              "a log entry's second word (length, kind, check) is written by one 8-byte store");
static_assert(offsetof(object_header, writer) == 8 && tracked_offset == 12 && header_size == 16,
              "commits copy an object from its size field on, 4 bytes before its data");
static_assert(offsetof(root_entry, type) == 48 && offsetof(root_entry, fingerprint) == 96 &&
                  offsetof(root_entry, offset) == 104 && offsetof(root_entry, size) == 112 &&
                  offsetof(root_entry, used) == 116 && offsetof(root_entry, layout) == 120,
              "a root entry's layout is part of the file format");
static_assert(sizeof(roots_table) == max_roots * sizeof(root_entry) + 16 &&
                  offsetof(roots_table, in_use) == max_roots * sizeof(root_entry),
              "the roots table: its entries, then the bits of those in use");
static_assert(sizeof(chunk_meta) == 16 + max_blocks / 8 && offsetof(chunk_meta, bitmap) == 16,
              "a chunk record: class, counts, then one bit per smallest block");
static_assert(metas_begin == 8320 && meta_stride == 256 && chunk_size == 65536,
              "the chunk records follow the roots table in each bank");

}  // namespace ftm::FTM_ABI_NAMESPACE::detail::bank_layout

#endif  // FTM_DETAIL_BANK_FORMAT_HPP
