#ifndef FTM_DETAIL_BANK_LOCKS_HPP
#define FTM_DETAIL_BANK_LOCKS_HPP

/// \file
/// The objects' locks: taking them (wait-die), waiting for them, reading without them
/// (invisible reads), and the checks of a handle and its object's size as it is opened.

#include <ftm/detail/bank/recovery.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The locks: each object's header holds its writer and its version. Writers lock at
/// open until the end (two-phase), wait-die between them, and recover a holder whose
/// process died while waiting for its lock; readers take no lock, and record the
/// version they read in the second bank.
class bank_locks : public bank_recovery {
 public:
  using bank_recovery::bank_recovery;

  /// Opens the object at `off` for writing (its handle checked): `d` holds it then.
  void* open_write(descriptor_index d, std::uint64_t off, const object_type& t) {
    check_handle(off, t);
    acquire_write(d, off, t.size);
    if (const std::uint32_t size = header(off).size; size != t.size) [[unlikely]] {
      refuse_write_size(d, off, t, size);
    }
    return a_ + off + bank_layout::header_size;
  }

  /// Opens the object at `off` for reading, without a lock: an object `d` holds for
  /// writing is read in the working bank; any other is copied from the second bank,
  /// the committed state, with the version it has there recorded in `d`'s read set
  /// (see docs/design.md, "Invisible reads").
  const void* open_read(descriptor_index d, std::uint64_t off, const object_type& t) {
    using namespace bank_layout;
    check_handle(off, t);
    const object_header& h = header(off);
    if (h.writer.load(std::memory_order_relaxed) == d + 1) {
      check_size(off, t);
      return a_ + off + header_size;
    }
    // The common case inline: no commit is copying the object, and none came between
    // the two loads of its version. Anything else goes the long way, which waits.
    const std::uint64_t v = h.version.load(std::memory_order_acquire);
    std::byte* copy = nullptr;
    if ((v & 1) == 0) [[likely]] {
      const auto& second = *std::launder(reinterpret_cast<const object_header*>(b_ + off));
      std::uint32_t size = 0;
      {
        [[maybe_unused]] const second_bank_reads unseen;
        size = second.size;
        if (size == t.size) [[likely]] {
          copy = copies(d).take(size);
          copy_object(copy, b_ + off + header_size, size);
        }
      }
      std::atomic_thread_fence(std::memory_order_acquire);  // the copy before the check
      if (size == t.size && h.version.load(std::memory_order_relaxed) == v) [[likely]] {
        record_read(d, off, v);
        return copy;
      }
    }
    return read_committed(d, off, t, copy);
  }

  /// Opens bytes `[at, at + n)` of the object at `off` for reading (see
  /// `ftm::partial_read_engine`): as `open_read`, copying only those bytes. `seen` is 0
  /// before the first part of the object `d` reads; that part records the object in
  /// `d`'s read set and `seen` keeps its version (plus one, so never 0). A later part
  /// that finds another version loses: parts of two commits are never mixed.
  const void* open_read_part(descriptor_index d, std::uint64_t off, const object_type& t,
                             std::size_t at, std::size_t n, std::uint64_t& seen) {
    using namespace bank_layout;
    check_handle(off, t);
    if (at > t.size || n > t.size - at) [[unlikely]]
      refuse_part(off, t, at, n);
    if (header(off).writer.load(std::memory_order_relaxed) == d + 1) {
      check_size(off, t);
      return a_ + off + header_size + at;
    }
    return read_part_committed(d, off, t, at, n, seen);
  }

  /// Whether every object `d` read is unchanged since: a transaction that is not may
  /// have seen a mix of commits, and can only abort (`ftm::atomically` asks when its
  /// function throws; see docs/reference.md).
  [[nodiscard]] bool valid(descriptor_index d) const noexcept { return reads_valid(d, false); }

 protected:
  /// A transaction's age for wait-die, taken from the clock the first time a conflict
  /// needs it and fixed from then on, so every decision about it agrees.
  std::uint64_t priority(descriptor_index d) const noexcept {
    auto& p = descriptor_at(d).priority;
    std::uint64_t v = p.load(std::memory_order_acquire);
    if (v == 0) {
      const std::uint64_t now = detail::timestamp() | 1;
      if (p.compare_exchange_strong(v, now, std::memory_order_acq_rel)) v = now;
    }
    return v;
  }

  /// Wait-die: `d` may wait for `holder` only if `d` is older.
  bool older(descriptor_index d, descriptor_index holder) const noexcept {
    const auto pd = priority(d);
    const auto ph = priority(holder);
    return pd < ph || (pd == ph && d < holder);
  }

  /// Whether descriptor `h` runs a transaction (only a running one holds locks).
  bool running(descriptor_index h) const noexcept {
    const descriptor& s = descriptor_at(h);
    return s.owner.load(std::memory_order_acquire) != 0 &&
           s.state.load(std::memory_order_acquire) != bank_layout::idle;
  }

  /// Whether the lock on `off` that names `h` as its writer is stale: `h`
  /// runs no transaction, before and after the lock word was read, and ended none in
  /// between (its commits and aborts, bumped before it is freed, are a generation), so
  /// the lock was not taken and released meanwhile. Seen twice, a while apart.
  bool stale_lock(descriptor_index h, std::uint64_t off) const {
    const descriptor& s = descriptor_at(h);
    auto ended = [&] {
      return s.commits.load(std::memory_order_acquire) + s.aborts.load(std::memory_order_acquire);
    };
    auto names = [&] { return header(off).writer.load(std::memory_order_seq_cst) == h + 1; };
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

  /// `expected`: the size the object must have (its type's, or the allocator's record's),
  /// so that commit and abort never copy more than the object, whatever its header says.
  void acquire_write(descriptor_index d, std::uint64_t off, std::uint64_t expected) {
    using namespace bank_layout;
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    if (h.writer.load(std::memory_order_relaxed) == me) return;
    log_entry& e = push_entry(d, off, entry_kind::write);
    descriptor_at(d).flags |= off < chunks_offset_ ? locked_records | wrote_objects : wrote_objects;
    FTM_FAULT_POINT("lock.after_log_entry");
    std::uint32_t w = 0;
    if (!h.writer.compare_exchange_strong(w, me, std::memory_order_seq_cst)) [[unlikely]] {
      wait_for_lock(d, off, w);
    }
    // Readers hold no lock: those that read the object validate its version instead.
    set_length(d, e, off, expected);
    FTM_FAULT_POINT("open.after_lock");
  }

  /// The lock on `off` was held by `w` (d + 1 of its holder): waits for it, or dies,
  /// until `d` holds it. Out of line: a lock is usually free.
  [[gnu::noinline]] void wait_for_lock(descriptor_index d, std::uint64_t off, std::uint32_t w) {
    bank_layout::object_header& h = header(off);
    std::uint32_t spins = 0;
    for (;;) {
      try {
        wait_or_die(d, w - 1, off, spins);
      } catch (...) {
        descriptor_at(d).count.fetch_sub(1, std::memory_order_release);  // forget the intent
        throw;
      }
      w = 0;
      if (h.writer.compare_exchange_strong(w, d + 1, std::memory_order_seq_cst)) return;
    }
  }

  /// One step of waiting for `holder`'s lock on `off`: dies if `d` is the younger,
  /// reclaims the lock if its holder's process died. Never waits for a descriptor that
  /// runs no transaction: a lock that names one is damage (`ftm::bad_pool`).
  void wait_or_die(descriptor_index d, descriptor_index holder, std::uint64_t off,
                   std::uint32_t& spins) {
    if (holder >= descriptors_) {
      throw usage_error(
          fmt::format("the lock word at offset {} is corrupt: is the handle valid?", off));
    }
    if (!running(holder) && stale_lock(holder, off)) {
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
      descriptor& s = descriptor_at(d);
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

  /// Records in `e`, the entry of the object at `off` that `d` now holds for writing,
  /// what commit and abort copy: its size field and, if its size is `expected`, the
  /// object (otherwise the caller refuses to write it). A record of the allocator or
  /// the roots table of another size is damage.
  void set_length(descriptor_index d, log_entry& e, std::uint64_t off, std::uint64_t expected) {
    using namespace bank_layout;
    const std::uint32_t size = header(off).size;
    const bool fits = size == expected;
    set_entry(e, d, static_cast<std::uint32_t>(tracked_prefix + (fits ? size : 0)),
              entry_kind::write);
    store_barrier();  // the undo length is in the log before the caller's first write
    if (!fits && off < chunks_offset_) [[unlikely]]
      refuse_record_size(off, size, expected);
  }

  [[noreturn, gnu::cold, gnu::noinline]] void refuse_record_size(std::uint64_t off,
                                                                 std::uint32_t size,
                                                                 std::uint64_t expected) const {
    damaged(fmt::format("the {} at offset {} has a damaged size {} (expected {})",
                        off == bank_layout::roots_offset ? "roots table" : "chunk record", off,
                        size, expected));
  }

  /// `open_write` found the object's size is not its type's: a stale handle, if the
  /// transaction's reads are out of date; else the caller's mistake.
  [[noreturn, gnu::cold, gnu::noinline]] void refuse_write_size(descriptor_index d,
                                                                std::uint64_t off,
                                                                const object_type& t,
                                                                std::uint32_t size) {
    if (!reads_valid(d, false)) {
      lose(d, "the transaction read an object that changed since");  // a stale handle
    }
    refuse_size(off, t, size);
  }

  /// Copies the object at `off`, of type `t`, from the second bank into `d`'s copies,
  /// as one committed value (the version did not move around the copy), records it in
  /// `d`'s read set and returns the copy: the program reads it, never the second bank,
  /// so what it opened stays whole and unchanged while it is open. Waits while a
  /// commit copies the object to the second bank (its version is odd), recovering the
  /// committer if its process died.
  /// `copy`: room `open_read` took for the object already, or null.
  [[gnu::noinline]] const void* read_committed(descriptor_index d, std::uint64_t off,
                                               const object_type& t, std::byte* copy = nullptr) {
    return read_versioned<false>(d, off, t, 0, t.size, nullptr, copy);
  }

  /// `read_committed` for bytes `[at, at + n)` of the object: the same loop, the same
  /// version protocol, with `seen` (see `open_read_part`) deciding whether this part
  /// records the object or must find the version an earlier part recorded.
  const void* read_part_committed(descriptor_index d, std::uint64_t off, const object_type& t,
                                  std::size_t at, std::size_t n, std::uint64_t& seen) {
    return read_versioned<true>(d, off, t, at, n, &seen, nullptr);
  }

  /// The one versioned copy loop behind both: the whole object (`Part` false: `at` 0,
  /// `n` its size, recorded in the read set) or a part of it (`*seen`: 0 before the
  /// object's first part, then its version + 1, which every later part must find).
  template <bool Part>
  const void* read_versioned(descriptor_index d, std::uint64_t off, const object_type& t,
                             std::size_t at, std::size_t n, std::uint64_t* seen, std::byte* copy) {
    using namespace bank_layout;
    const object_header& h = header(off);
    const auto& second = *std::launder(reinterpret_cast<const object_header*>(b_ + off));
    std::uint32_t spins = 0;
    for (;;) {
      const std::uint64_t v = h.version.load(std::memory_order_acquire);
      if constexpr (Part) {
        if (*seen != 0 && v + 1 != *seen) [[unlikely]] {
          lose(d,
               "an object this transaction read in parts was changed by a commit between two "
               "of its parts");
        }
      }
      if ((v & 1) != 0) {
        wait_for_copy(h, off, v, spins);
        continue;
      }
      std::uint32_t size = 0;
      {
        [[maybe_unused]] const second_bank_reads unseen;
        size = second.size;
        if (size == t.size) {
          if (copy == nullptr) copy = copies(d).take(n);
          if constexpr (Part) {
            copy_part(copy, b_ + off + header_size + at, n);
          } else {
            copy_object(copy, b_ + off + header_size, size);
          }
        }
      }
      std::atomic_thread_fence(std::memory_order_acquire);  // the copy before the check
      if (h.version.load(std::memory_order_relaxed) != v) continue;
      if (size != t.size) {
        if (!reads_valid(d, false)) lose(d, "the transaction read an object that changed since");
        refuse_size(off, t, size);
      }
      if (!Part || *seen == 0) {
        record_read(d, off, v);
        if constexpr (Part) *seen = v + 1;
      }
      return copy;
    }
  }

  /// Copies `n` bytes of a part: whole words inline (a part is a field or an entry, most
  /// often a multiple of 8), exactly `n` bytes, never past the part.
  static void copy_part(std::byte* to, const std::byte* from, std::size_t n) noexcept {
    if (n <= 256 && n % 8 == 0) {
      for (std::size_t i = 0; i < n; i += 8)
        __builtin_memcpy(to + i, from + i, 8);
      return;
    }
    std::memcpy(to, from, n);
  }

  /// Copies an object's `size` bytes out of the second bank: small ones inline, in
  /// 16-byte pieces rounded up (the copy's room is rounded up too, and the rounding
  /// stays in the object's block, which ends on a 64-byte boundary 16 bytes after the
  /// object's start: see `copy_tracked`), without a call to `memcpy`.
  static void copy_object(std::byte* to, const std::byte* from, std::uint32_t size) noexcept {
    if (size > 256) {
      std::memcpy(to, from, size);
      return;
    }
    for (std::uint32_t i = 0; i < size; i += 16)
      __builtin_memcpy(to + i, from + i, 16);
  }

  /// Adds the object at `off`, read at version `v`, to `d`'s read set. Every time the
  /// set doubles, checks it whole: a transaction that keeps reading after its reads
  /// went out of date learns it within as many reads as it made.
  void record_read(descriptor_index d, std::uint64_t off, std::uint64_t v) {
    auto& set = reads(d);
    set.push_back({off, v});
    const std::size_t n = set.size();
    if (n >= 2 && (n & (n - 1)) == 0) [[unlikely]]
      check_reads(d, n);
  }

  [[gnu::cold, gnu::noinline]] void check_reads(descriptor_index d, std::size_t n) {
    if (!reads_valid(d, false)) {
      lose(d,
           fmt::format("an object this transaction read (of {}) was changed by a commit since", n));
    }
  }

  /// One step of waiting for the commit that marked the object at `off` (its version
  /// `v`, odd): its holder copies it to the second bank and releases it. A holder whose
  /// process died is recovered. A mark that no transaction holds is damage: a release
  /// makes the version even before it clears the writer, so a version still `v` after
  /// the writer was seen clear was never released.
  void wait_for_copy(const bank_layout::object_header& h, std::uint64_t off, std::uint64_t v,
                     std::uint32_t& spins) {
    ++spins;
    if (spins < 64) {
      detail::cpu_relax();
      return;
    }
    if (spins % 256 == 0) {
      const std::uint32_t w = h.writer.load(std::memory_order_acquire);
      if (w == 0 || w > descriptors_) {
        if (h.version.load(std::memory_order_acquire) == v) {
          damaged(
              fmt::format("the object at offset {} is marked as being committed, but no "
                          "transaction holds it",
                          off));
        }
      } else if (!running(w - 1) && stale_lock(w - 1, off)) {
        damaged(
            fmt::format("the object at offset {} is locked by descriptor {}, which runs no "
                        "transaction (a stale lock: opening the pool when no other process "
                        "has it open clears it)",
                        off, w - 1));
      } else {
        recovery_report ignored;
        recover_if_dead(w - 1, ignored);
      }
    }
    std::this_thread::yield();
  }

  /// Ends `d`'s chances: it may only abort (`commit()` then throws `conflict`).
  [[noreturn]] void lose(descriptor_index d, const std::string& why) {
    descriptor& s = descriptor_at(d);
    s.doomed.store(1, std::memory_order_relaxed);
    bump(s.conflicts);
    throw conflict(why);
  }

  /// Tries to lock chunk `c`'s metadata without waiting (another allocator holding it
  /// will use another chunk). `held` tells whether `d` held it already.
  bool try_lock_meta(descriptor_index d, std::uint64_t c, bool& held) {
    using namespace bank_layout;
    const std::uint64_t off = meta_offset(c);
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    held = h.writer.load(std::memory_order_relaxed) == me;
    if (held) return true;
    if (h.writer.load(std::memory_order_relaxed) != 0) return false;
    log_entry& e = push_entry(d, off, entry_kind::write);
    descriptor_at(d).flags |= locked_records | wrote_objects;
    std::uint32_t w = 0;
    if (!h.writer.compare_exchange_strong(w, me, std::memory_order_seq_cst)) {
      descriptor_at(d).count.fetch_sub(1, std::memory_order_release);
      return false;
    }
    set_length(d, e, off, sizeof(chunk_meta));
    return true;
  }

  /// Releases the lock of the newest log entry, unchanged, and forgets the entry.
  void unlock_last(descriptor_index d, std::uint64_t off) noexcept {
    header(off).writer.store(0, std::memory_order_release);
    descriptor_at(d).count.fetch_sub(1, std::memory_order_release);
  }

  void check_handle(std::uint64_t off, const object_type& t) const {
    if (off < chunks_offset_ || off >= bank_size_ || off % bank_layout::min_block != 0)
        [[unlikely]] {
      refuse_handle(off, t);
    }
  }
  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_handle(std::uint64_t off,
                                                                   const object_type& t) {
    throw usage_error(fmt::format(
        "the handle to a {} (offset {}) does not name an object of this pool", t.name, off));
  }

  void check_size(std::uint64_t off, const object_type& t) const {
    const std::uint32_t size = header(off).size;
    if (size != t.size) [[unlikely]]
      refuse_size(off, t, size);
  }

  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_part(std::uint64_t off,
                                                                 const object_type& t,
                                                                 std::size_t at, std::size_t n) {
    throw usage_error(fmt::format("bytes [{}, {}) are not inside the {} at offset {} ({} bytes)",
                                  at, at + n, t.name, off, t.size));
  }

  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_size(std::uint64_t off,
                                                                 const object_type& t,
                                                                 std::uint32_t size) {
    if (size == 0) {
      throw usage_error(fmt::format(
          "no {} at offset {}: the object was destroyed, or its creation never committed", t.name,
          off));
    }
    throw usage_error(
        fmt::format("the object at offset {} has {} bytes, but the handle is for a {} ({} bytes)",
                    off, size, t.name, t.size));
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_LOCKS_HPP
