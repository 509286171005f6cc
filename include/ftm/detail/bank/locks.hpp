#ifndef FTM_DETAIL_BANK_LOCKS_HPP
#define FTM_DETAIL_BANK_LOCKS_HPP

/// \file
/// The objects' locks: taking them (wait-die), waiting for them, and the checks of a
/// handle and its object's size as it is opened.

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

/// The locks: each object's header holds a writer and a reader bit per descriptor.
/// Strict two-phase locking at open, wait-die between transactions, and the recovery of
/// a holder whose process died, while waiting for its lock.
class bank_locks : public bank_recovery {
 public:
  using bank_recovery::bank_recovery;

  /// Opens the object at `off` for writing (its handle checked): `d` holds it then.
  void* open_write(descriptor_index d, std::uint64_t off, const object_type& t) {
    check_handle(off, t);
    acquire_write(d, off, t.size);
    check_size(off, t);
    return a_ + off + bank_layout::header_size;
  }

  const void* open_read(descriptor_index d, std::uint64_t off, const object_type& t) {
    check_handle(off, t);
    acquire_read(d, off);
    check_size(off, t);
    return a_ + off + bank_layout::header_size;
  }

 protected:
  static std::uint64_t bit(descriptor_index d) noexcept { return std::uint64_t{1} << d; }

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

  /// Whether the lock on `off` that names `h` (as its writer, or `reader`) is stale: `h`
  /// runs no transaction, before and after the lock word was read, and ended none in
  /// between (its commits and aborts, bumped before it is freed, are a generation), so
  /// the lock was not taken and released meanwhile. Seen twice, a while apart.
  bool stale_lock(descriptor_index h, std::uint64_t off, bool reader) const {
    const descriptor& s = descriptor_at(h);
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
    std::uint32_t spins = 0;
    for (;;) {
      std::uint32_t w = 0;
      if (h.writer.compare_exchange_strong(w, me, std::memory_order_seq_cst)) break;
      try {
        wait_or_die(d, w - 1, off, spins);
      } catch (...) {
        descriptor_at(d).count.fetch_sub(1, std::memory_order_release);  // forget the intent
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
          const auto reader = static_cast<descriptor_index>(std::countr_zero(rest));
          if (!older(d, reader)) wait_or_die(d, reader, off, spins, true);  // throws
        }
        wait_or_die(d, static_cast<descriptor_index>(std::countr_zero(r)), off, spins, true);
      }
    } catch (...) {
      unlock_last(d, off);
      throw;
    }
    set_length(d, e, off, expected);
    FTM_FAULT_POINT("open.after_lock");
  }

  /// One step of waiting for `holder`'s lock on `off`: dies if `d` is the younger,
  /// reclaims the lock if its holder's process died. Never waits for a descriptor that
  /// runs no transaction: a lock that names one is damage (`ftm::bad_pool`).
  void wait_or_die(descriptor_index d, descriptor_index holder, std::uint64_t off,
                   std::uint32_t& spins, bool reader = false) {
    if (holder >= bank_layout::max_descriptors) {
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
    if (!fits && off < chunks_offset_) {
      damaged(fmt::format("the {} at offset {} has a damaged size {} (expected {})",
                          off == roots_offset ? "roots table" : "chunk record", off, size,
                          expected));
    }
  }

  void acquire_read(descriptor_index d, std::uint64_t off) {
    using namespace bank_layout;
    object_header& h = header(off);
    const std::uint32_t me = d + 1;
    if (h.writer.load(std::memory_order_relaxed) == me ||
        (h.readers.load(std::memory_order_relaxed) & bit(d)) != 0) {
      return;
    }
    push_entry(d, off, entry_kind::read);
    if (off < chunks_offset_) descriptor_at(d).flags |= locked_records;
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
    if ((h.readers.load(std::memory_order_seq_cst) & ~bit(d)) != 0) {
      unlock_last(d, off);
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
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_LOCKS_HPP
