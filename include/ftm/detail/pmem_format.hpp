#ifndef FTM_DETAIL_PMEM_FORMAT_HPP
#define FTM_DETAIL_PMEM_FORMAT_HPP

/// \file
/// The on-disk format that `ftm::engines::pmem` adds to the bank engine's pool: the
/// redo log's shared state in the pool's header page (`control`), and the redo log
/// file `<pool>.wal` of the `power` level (`file_header`, then records: a
/// `record_header`, and per object an `object_entry` and its bytes padded to 8). Every
/// struct and offset of the log is here; `redo_log.hpp` reads and writes them.

#include <ftm/detail/bank_format.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/durability.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include <pthread.h>

namespace ftm::FTM_ABI_NAMESPACE::detail::redo {

inline constexpr std::uint64_t wal_magic = 0x316c61772d6d7466ull;  // "ftm-wal1"
/// 2: records carry a sequence number and chain their checksums to the file header,
/// whose log id and first sequence number the pool records (`control`).
/// 3: records name the descriptor that committed them (a checkpoint applies the record
/// of a committer that died).
inline constexpr std::uint32_t wal_version = 3;
inline constexpr std::uint64_t records_begin = 4096;  // the file header has the first page

/// Where the cache-line mode keeps a second copy of the file header, written and fenced
/// before the first: only aligned 8-byte stores are sure to reach persistent memory
/// whole, so a power loss may tear the first copy, and the second is then whole.
inline constexpr std::uint64_t header_copy_offset = 64;

/// Where the log's shared state lives in the pool: in the header page, between the
/// pool header and the watchers' table.
inline constexpr std::uint64_t control_offset = 1024;

/// The first bytes of the log file. Rewritten (and flushed) by every checkpoint with a
/// new epoch, which makes every record already in the file stale.
struct file_header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t reserved;
  std::uint64_t pool_id;
  std::uint64_t epoch;
  /// Chosen at random when the file is made; the pool records it, so a log file put in
  /// the place of another (an old copy, another pool's period) is refused.
  std::uint64_t log_id;
  std::uint64_t first_seq;  // the sequence number of the epoch's first record
  std::uint64_t checksum;   // of the fields above
};
static_assert(sizeof(file_header) <= header_copy_offset);

/// One committed transaction: `objects` entries follow, each an `object_entry` and its
/// bytes padded to 8. `checksum` covers everything after itself, up to `bytes`, seeded
/// with the checksum of the record before it (of the file header for the epoch's first):
/// a record is valid only as the successor of the records before it.
struct record_header {
  std::uint64_t checksum;
  std::uint64_t epoch;
  std::uint64_t seq;    // the record before it has seq - 1; they only grow, across epochs
  std::uint64_t bytes;  // the whole record, a multiple of 8
  std::uint32_t objects;
  std::uint32_t descriptor;  // the committer's descriptor + 1
};
struct object_entry {
  std::uint64_t offset;  // in the bank: the bytes phase 2 copies start here
  std::uint32_t length;
  std::uint32_t reserved;
};

/// The log's state shared by every process that has the pool open, in the pool's
/// header page. Positions are absolute byte counts that only grow; a record at position
/// p is at file offset `records_begin + p - base`.
struct control {
  std::uint32_t level;  // the durability of the pool's current users: 0 process, 1 power
  /// How the pool's current (or last) `power` users flush the log: a `flush_method`,
  /// `fdatasync` (0) or `cache_lines` (1).
  std::uint32_t method;
  pthread_mutex_t append;           // serialises appends and checkpoints (robust, process-shared)
  pthread_mutex_t flush;            // one flusher at a time; the others wait for its result
  std::atomic<std::uint64_t> tail;  // end of the last record written
  std::atomic<std::uint64_t> durable;  // the log is on the medium up to here
  std::atomic<std::uint64_t> base;     // position of the current epoch's first record
  std::atomic<std::uint64_t> epoch;
  /// Bit d % 64 of word d / 64: descriptor d's record is logged, its phase 2 not done.
  std::atomic<std::uint64_t> in_flight[bank_layout::max_descriptors / 64];
  std::atomic<std::uint32_t> flushes;   // futex word: bumped after every flush of the log
  std::atomic<std::uint32_t> sleepers;  // committers asleep on `flushes`
  /// What recovery checks the log against, read from the pool as it reached the medium:
  /// `log_id` (of the log file in use), `epoch` (above, stored only once the file's
  /// header has it on the medium) and `durable_seq`, the last record the log holds on
  /// the medium (stored only after the flush). A pool page written back late holds
  /// older values, which ask less of the log: never more than it holds.
  std::atomic<std::uint64_t> log_id;
  std::atomic<std::uint64_t> durable_seq;
  std::atomic<std::uint64_t> tail_seq;  // the last record written
  std::atomic<std::uint64_t> chain;     // its checksum (the header's before the first)
};
static_assert(control_offset + sizeof(control) <= bank_layout::watch_begin);
static_assert(sizeof(bank_layout::pool_header) <= control_offset);

// The format, pinned: a change to any of these is a change of `wal_version` (the log)
// or of `bank_layout::format_version` (`control`, in the pool).
static_assert(sizeof(file_header) == 56 && offsetof(file_header, epoch) == 24 &&
                  offsetof(file_header, checksum) == 48,
              "the redo log's file header is 56 bytes, its checksum last");
static_assert(sizeof(record_header) == 40 && offsetof(record_header, bytes) == 24 &&
                  offsetof(record_header, objects) == 32 &&
                  offsetof(record_header, descriptor) == 36,
              "a redo log record's header is 40 bytes");
static_assert(sizeof(object_entry) == 16 && offsetof(object_entry, length) == 8,
              "a redo log object entry is 16 bytes, its bytes follow it");
static_assert(records_begin % 4096 == 0 &&
                  header_copy_offset + sizeof(file_header) <= records_begin,
              "the log's header and its copy share the first page; records start on a page");
static_assert(offsetof(control, method) == 4 && offsetof(control, append) == 8,
              "control starts with the level and the flush method of the pool's users");
static_assert(static_cast<std::uint32_t>(flush_method::fdatasync) == 0 &&
                  static_cast<std::uint32_t>(flush_method::cache_lines) == 1,
              "control::method records a flush_method: 0 fdatasync, 1 cache_lines");

}  // namespace ftm::FTM_ABI_NAMESPACE::detail::redo

#endif  // FTM_DETAIL_PMEM_FORMAT_HPP
