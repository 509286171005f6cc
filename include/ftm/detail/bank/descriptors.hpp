#ifndef FTM_DETAIL_BANK_DESCRIPTORS_HPP
#define FTM_DETAIL_BANK_DESCRIPTORS_HPP

/// \file
/// Descriptors and their logs: a transaction's record of what it locked, the copies
/// between the banks that commit (redo) and abort (undo) make from it, and the checks
/// a dead owner's descriptor passes before recovery acts on it.

#include <ftm/detail/bank/mapping.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define FTM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FTM_TSAN 1
#endif
#endif
#ifdef FTM_TSAN
// ThreadSanitizer's annotations (its runtime defines them).
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#endif

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The engine's reads of the second bank without a lock, which a commit may be
/// changing meanwhile: each is checked against the object's version afterwards (a
/// seqlock) and made again if it moved, which ThreadSanitizer cannot model. Under it,
/// those reads are not recorded. The program never reads the second bank itself: it
/// reads the copy `open_read` made (see `bank_locks::read_committed`).
struct second_bank_reads {
#ifdef FTM_TSAN
  second_bank_reads() noexcept { AnnotateIgnoreReadsBegin(__FILE__, __LINE__); }
  ~second_bank_reads() { AnnotateIgnoreReadsEnd(__FILE__, __LINE__); }
#else
  second_bank_reads() noexcept = default;
#endif
  second_bank_reads(const second_bank_reads&) = delete;
  second_bank_reads& operator=(const second_bank_reads&) = delete;
};

/// Where a transaction keeps the copies of the objects it read: blocks of the
/// process's memory that stay put until the transaction ends (the program holds
/// pointers into them), reused by the descriptor's next transaction. In protected mode
/// (`show_read_only()`) each block is a memfd mapped twice: the engine copies into the
/// writable mapping, the program gets the read-only one, so a write through a read view
/// faults like a write to the pool (and `locate()` names the object it copies).
class read_copies {
 public:
  read_copies() = default;
  read_copies(const read_copies&) = delete;
  read_copies& operator=(const read_copies&) = delete;

  /// `n` bytes, 16-aligned, valid until `clear()`.
  std::byte* take(std::size_t n) {
    n = (n + 15) & ~std::size_t{15};
    if (current_ < blocks_.size() && used_ + n <= blocks_[current_].size) {
      std::byte* p = blocks_[current_].bytes + used_;
      used_ += n;
      return p;
    }
    return take_slow(n);
  }
  void clear() noexcept {
    current_ = 0;
    used_ = 0;
    origins_.clear();
  }

  /// From now on, blocks have a read-only mapping for the program (protected mode).
  void show_read_only() noexcept {
    blocks_.clear();
    clear();
    read_only_ = true;
  }

  /// Where the program sees the copy at `p`, the latest `take()`: `p` itself, or in
  /// protected mode its read-only mapping, recorded as the copy of the `size` bytes
  /// at pool offset `off`.
  const std::byte* shown(std::byte* p, std::uint32_t size, std::uint64_t off) {
    if (!read_only_) return p;
    const block& b = blocks_[current_];
    const std::byte* v = b.view + (p - b.bytes);
    origins_.push_back({v, size, off});
    return v;
  }

  /// If `a` is in a read-only copy this descriptor handed out since it began, sets
  /// `off` to the pool offset of the byte it copies (for protected mode's report).
  bool locate(const std::byte* a, std::uint64_t& off) const noexcept {
    for (const origin& o : origins_) {
      if (a >= o.view && a < o.view + o.size) {
        off = o.offset + static_cast<std::uint64_t>(a - o.view);
        return true;
      }
    }
    return false;
  }

 private:
  static constexpr std::size_t block_size = std::size_t{64} << 10;
  struct block {
    std::byte* bytes = nullptr;       // where the engine copies
    const std::byte* view = nullptr;  // where the program reads (bytes, unless read-only)
    std::size_t size = 0;
    bool mapped = false;
    block(std::size_t n, bool read_only) : size(n) {
      if (!read_only) {
        bytes = new std::byte[n];
        view = bytes;
        return;
      }
      // A memfd mapped twice (shared: the two mappings are one memory).
      n = (n + 4095) & ~std::size_t{4095};
      size = n;
      const int fd = ::memfd_create("ftm-read-copies", MFD_CLOEXEC);
      if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(n)) != 0) {
        const int e = errno;
        if (fd >= 0) ::close(fd);
        throw io_error(
            e, fmt::format("protected mode: cannot make a read copy block: {}", std::strerror(e)));
      }
      void* w = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      void* r = w == MAP_FAILED ? MAP_FAILED : ::mmap(nullptr, n, PROT_READ, MAP_SHARED, fd, 0);
      const int e = errno;
      ::close(fd);
      if (r == MAP_FAILED) {
        if (w != MAP_FAILED) ::munmap(w, n);
        throw io_error(
            e, fmt::format("protected mode: cannot map a read copy block: {}", std::strerror(e)));
      }
      bytes = static_cast<std::byte*>(w);
      view = static_cast<const std::byte*>(r);
      mapped = true;
    }
    block(block&& o) noexcept
        : bytes(std::exchange(o.bytes, nullptr)),
          view(std::exchange(o.view, nullptr)),
          size(o.size),
          mapped(o.mapped) {}
    block& operator=(block&&) = delete;
    ~block() {
      if (bytes == nullptr) return;
      if (mapped) {
        ::munmap(bytes, size);
        ::munmap(const_cast<std::byte*>(view), size);
      } else {
        delete[] bytes;
      }
    }
  };
  struct origin {
    const std::byte* view;
    std::uint32_t size;
    std::uint64_t offset;
  };
  std::byte* take_slow(std::size_t n) {
    // The next block that has room (blocks are kept across transactions), or a new one.
    for (++current_; current_ < blocks_.size(); ++current_) {
      if (n <= blocks_[current_].size) {
        used_ = n;
        return blocks_[current_].bytes;
      }
    }
    blocks_.emplace_back(std::max(n, block_size), read_only_);
    current_ = blocks_.size() - 1;
    used_ = n;
    return blocks_.back().bytes;
  }
  std::vector<block> blocks_;
  std::size_t current_ = 0;
  std::size_t used_ = 0;
  bool read_only_ = false;
  std::vector<origin> origins_;  // protected mode: what each read-only copy copies
};

/// What a descriptor is for the transaction that holds it: its log of the objects it
/// locked (written before each lock is taken), the copies between the banks that commit
/// and abort make from it, the release of its locks, and its start and end.
class bank_descriptors : public bank_mapping {
 public:
  bank_descriptors(std::byte* base, const bank_layout::geometry& g, std::string_view engine)
      : bank_mapping(base, g, engine), mine_(std::make_unique<in_process[]>(g.descriptors)) {}

 protected:
  /// An object a transaction read, and the version it read: the read set, which lives
  /// in the process (a reader holds no lock, so recovery has nothing to do for it).
  struct read_entry {
    std::uint64_t offset;
    std::uint64_t version;
  };

  /// The read set of descriptor `d` in this process: only the thread that runs `d`'s
  /// transaction touches it. Cleared when a transaction begins.
  std::vector<read_entry>& reads(descriptor_index d) noexcept { return mine_[d].reads; }

  /// The copies of the objects descriptor `d` read, in this process.
  read_copies& copies(descriptor_index d) noexcept { return mine_[d].copies; }

  /// Whether every object `d` read still has the version it read (none changed in the
  /// second bank since). `writing`: also refuse an object another transaction holds for
  /// writing, which is about to change (a transaction that writes must see its reads
  /// unlocked and unchanged while it holds its own write locks: serializability).
  [[nodiscard]] bool reads_valid(descriptor_index d, bool writing) const noexcept {
    std::atomic_thread_fence(std::memory_order_acquire);  // the reads before the checks
    for (const read_entry& r : mine_[d].reads) {
      const bank_layout::object_header& h = header(r.offset);
      if (writing) {
        const std::uint32_t w = h.writer.load(std::memory_order_seq_cst);
        if (w != 0 && w != d + 1) return false;
      }
      if (h.version.load(std::memory_order_acquire) != r.version) return false;
    }
    return true;
  }

  static void bump(std::atomic<std::uint64_t>& counter) noexcept {
    // Only the descriptor's owner writes its counters: no read-modify-write needed.
    // Release (a plain store on x86): commits and aborts are the generation that
    // stale_lock() reads, after the locks they follow are released.
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }

  /// Makes a claimed descriptor active for a new transaction.
  void activate(descriptor& s, const begin_options& o) noexcept {
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
  static void finish(descriptor& s, bool release = false) noexcept {
    using namespace bank_layout;
    s.count.store(0, std::memory_order_relaxed);
    s.state.store(idle, std::memory_order_release);
    if (release || (s.flags & attached) == 0) {
      s.flags = 0;
      s.owner.store(0, std::memory_order_release);
    }
  }

  /// Copies the tracked bytes of one object between the banks. Small objects are
  /// copied inline: the 8-byte size, then the object in 16-byte pieces, rounded up.
  /// Every block ends on a 64-byte boundary and its object starts 16 bytes in, so the
  /// rounding stays in the block (rounding from the size field instead would copy the
  /// next block's `version` word when the object ends 8 bytes before its block does).
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

  /// Marks the version of every object `d` holds for writing odd: their second-bank
  /// bytes are about to change, and a reader that sees the mark, or sees it come and
  /// go, knows its copy of them is out of date. Every mark is set before the first copy
  /// (a reader must not see one object of the commit new and another old, both
  /// unchanged); `release_locks` makes them even again, one higher.
  void mark_held(descriptor_index d) noexcept {
    using namespace bank_layout;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = log_of(d);
    for (std::uint32_t k = 0; k < n; ++k) {
      const log_entry& e = log[k];
      if (e.kind != entry_kind::write || e.length == 0) continue;
      object_header& h = header(e.offset);
      if (h.writer.load(std::memory_order_acquire) != d + 1) continue;
      const std::uint64_t v = h.version.load(std::memory_order_relaxed);
      if ((v & 1) == 0) h.version.store(v + 1, std::memory_order_relaxed);
    }
    store_barrier();  // the marks before the copies
  }

  /// Copies every object `d` holds for writing between the banks: to the second bank
  /// (redo, oldest first) or back from it (undo, newest first). `fault_point` fires
  /// after the first copy, for the crash tests.
  template <bool Redo>
  void copy_held(descriptor_index d, [[maybe_unused]] std::string_view fault_point) noexcept {
    using namespace bank_layout;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = log_of(d);
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
  std::uint64_t release_locks(descriptor_index d, bool with_records = true) noexcept {
    using namespace bank_layout;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = log_of(d);
    std::uint64_t released = 0;
    // The log holds write entries only (readers take no lock; a read entry is damage).
    auto release = [&](bool records) {
      for (std::uint32_t i = 0; i < n; ++i) {
        if ((log[i].offset < chunks_offset_) != records) continue;
        object_header& h = header(log[i].offset);
        if (log[i].kind == entry_kind::write && h.writer.load(std::memory_order_relaxed) == d + 1) {
          // A marked version (the second bank changed) becomes even, one higher: the
          // readers that read the old bytes fail their validation.
          const std::uint64_t v = h.version.load(std::memory_order_relaxed);
          if ((v & 1) != 0) h.version.store(v + 1, std::memory_order_release);
          h.writer.store(0, std::memory_order_release);
          ++released;
        }
      }
    };
    release(false);
    if (with_records) release(true);
    return released;
  }

  /// Logs the intent to lock before taking the lock, so a crash in between leaves
  /// nothing held that recovery cannot see.
  log_entry& push_entry(descriptor_index d, std::uint64_t off, bank_layout::entry_kind kind,
                        std::uint32_t length = 0) {
    descriptor& s = descriptor_at(d);
    const std::uint32_t n = s.count.load(std::memory_order_relaxed);
    if (n == max_entries_) [[unlikely]]
      refuse_entry();
    log_entry& e = log_of(d)[n];
    e.offset = off;
    set_entry(e, d, length, kind);
    s.count.store(n + 1, std::memory_order_release);
    return e;
  }

  /// Out of line, so that `push_entry` inlines.
  [[noreturn, gnu::cold, gnu::noinline]] void refuse_entry() const {
    throw capacity_exceeded(
        fmt::format("{0}: a transaction may write at most {1} objects (creations, destructions and "
                    "allocator records count; reads do not): make the pool with a larger "
                    "{0}::options::max_objects_per_transaction, or split the writes",
                    engine_, max_entries_));
  }

  /// Writes the length and kind of `e`, an entry of `d`, with their check: one store.
  static void set_entry(log_entry& e, descriptor_index d, std::uint32_t length,
                        bank_layout::entry_kind kind) noexcept {
    const std::uint64_t word = length | std::uint64_t{static_cast<std::uint16_t>(kind)} << 32 |
                               std::uint64_t{bank_layout::entry_check(d, e.offset, length, kind)}
                                   << 48;
    static_assert(offsetof(log_entry, length) == 8 && offsetof(log_entry, check) == 14);
    std::memcpy(reinterpret_cast<char*>(&e) + offsetof(log_entry, length), &word, sizeof word);
  }

 private:
  /// A descriptor's read set and copies, a cache line of their own: threads on
  /// different descriptors must not share a line they write at every read.
  struct alignas(64) in_process {
    std::vector<read_entry> reads;
    read_copies copies;
  };
  std::unique_ptr<in_process[]> mine_;  // one per descriptor of the pool
};

// What recovery and `check_pool()` verify before they trust a descriptor.

/// How many of the first `n` (at most its capacity) log entries of `d` are within
/// their bounds and pass their check.
[[nodiscard]] inline std::uint32_t valid_entries(const bank_mapping& m, descriptor_index d,
                                                 std::uint32_t n) noexcept {
  using namespace bank_layout;
  const bank_layout::log_entry* log = m.log_of(d);
  n = std::min(n, m.max_entries());
  for (std::uint32_t i = 0; i < n; ++i) {
    const bank_layout::log_entry& e = log[i];
    if ((e.kind != entry_kind::read && e.kind != entry_kind::write) || e.offset < roots_offset ||
        e.offset >= m.bank_size() || e.offset % min_block != 0 ||
        e.length > m.bank_size() - e.offset - tracked_offset ||
        e.check != entry_check(d, e.offset, e.length, e.kind)) {
      return i;
    }
  }
  return n;
}

/// What is wrong with free descriptor `d`, or "" if nothing (or if a transaction
/// took it meanwhile). A free descriptor logs nothing (ending a transaction clears
/// its log before freeing it), and `begin()` appends to the log it finds: stale
/// entries would be released, or copied between banks, at the end of the next
/// transaction that takes it.
[[nodiscard]] inline std::string free_descriptor_problem(const bank_mapping& m,
                                                         descriptor_index d) {
  const bank_layout::descriptor& s = m.descriptor_at(d);
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
[[nodiscard]] inline std::string descriptor_problem(const bank_mapping& m, descriptor_index d) {
  using namespace bank_layout;
  const bank_layout::descriptor& s = m.descriptor_at(d);
  const auto state = s.state.load(std::memory_order_relaxed);
  const auto n = s.count.load(std::memory_order_relaxed);
  const std::uint64_t at = descriptors_begin + d * sizeof(descriptor);
  if (state != idle && state != active && state != committing) {
    return fmt::format("descriptor {} (offset {}) has an unknown state {:#x}", d, at, state);
  }
  if (n > m.max_entries()) {
    return fmt::format("descriptor {} (offset {}) logs {} objects, more than its capacity {}", d,
                       at, n, m.max_entries());
  }
  const std::uint32_t valid = valid_entries(m, d, n);
  if (valid < n) {
    const bank_layout::log_entry& e = m.log_of(d)[valid];
    return fmt::format(
        "descriptor {} has a malformed log entry {} (offset {} in the file: object offset {}, "
        "length {}, kind {}, check {:#06x})",
        d, valid, m.logs_begin() + (std::uint64_t{d} * m.max_entries() + valid) * sizeof(log_entry),
        e.offset, e.length, static_cast<unsigned>(e.kind), e.check);
  }
  return {};
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_DESCRIPTORS_HPP
