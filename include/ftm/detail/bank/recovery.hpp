#ifndef FTM_DETAIL_BANK_RECOVERY_HPP
#define FTM_DETAIL_BANK_RECOVERY_HPP

/// \file
/// Recovery of the descriptors of dead owners, and the first opener's checks and
/// repairs of a pool left by dead processes.

#include <ftm/detail/bank/commit_log.hpp>
#include <ftm/detail/bank/waiting.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Recovery: the transactions of owners that died are undone from the second bank, or
/// completed if they were committing; and, for the first opener of a pool file, the
/// checks and repairs that make a pool left by dead processes safe to use.
class bank_recovery : public bank_watchers {
 public:
  using bank_watchers::bank_watchers;

  /// Aborts the transactions of owners that died (undoing them from the second bank)
  /// and completes those that died while committing. Safe to call at any time, from
  /// any process on the pool, concurrently with live transactions; safe to crash in
  /// and call again.
  recovery_report recover() {
    recovery_report report;
    for (descriptor_index d = 0; d < descriptors_; ++d)
      recover_if_dead(d, report);
    return report;
  }

 protected:
  /// Makes commit and recovery call `log` between their two phases (null: none).
  void set_commit_log(commit_log* log) noexcept { log_ = log; }

  /// Recovers every descriptor in use, alive or not: for a pool whose owners belong to
  /// an earlier boot of the machine, where a pid names some other process now.
  recovery_report recover_from_earlier_boot() {
    recovery_report report;
    for (descriptor_index d = 0; d < descriptors_; ++d)
      recover_if_dead(d, report, /*assume_dead=*/true);
    return report;
  }

  /// The first problem that makes a mapping this process did not format (a pool file)
  /// unsafe to recover, or "" if none: the descriptors that recovery will read (those
  /// of dead owners, or all of them after a reboot) must be within their bounds. Live
  /// owners change theirs concurrently, so they are not read.
  [[nodiscard]] std::string structure_problem(bool earlier_boot) const {
    using namespace bank_layout;
    for (descriptor_index d = 0; d < descriptors_; ++d) {
      const descriptor& s = descriptor_at(d);
      const owner_id owner = s.owner.load(std::memory_order_acquire);
      if (owner == 0) {
        if (auto p = free_descriptor_problem(*this, d); !p.empty()) return p;
        continue;
      }
      if (!earlier_boot && detail::owner_alive(owner)) continue;
      if (auto p = descriptor_problem(*this, d); !p.empty()) return p;
    }
    return {};
  }

  /// The state of each descriptor in use (0 for a free one), as recovery will find it.
  [[nodiscard]] std::vector<std::uint32_t> descriptor_states() const {
    std::vector<std::uint32_t> states(descriptors_);
    for (descriptor_index d = 0; d < descriptors_; ++d) {
      const descriptor& s = descriptor_at(d);
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
  std::uint64_t clear_stale_locks(const std::vector<std::uint32_t>& states) {
    using namespace bank_layout;
    std::uint64_t cleared = 0;
    std::vector<bool> in_use(descriptors_);  // descriptors still owned: their locks are theirs
    for (descriptor_index d = 0; d < descriptors_; ++d) {
      in_use[d] = descriptor_at(d).owner.load(std::memory_order_acquire) != 0;
    }
    // `capacity`: the most bytes the object can have where it is.
    auto settle = [&](std::uint64_t off, std::uint64_t capacity) {
      object_header& h = header(off);
      const std::uint32_t w = h.writer.load(std::memory_order_acquire);
      const std::uint64_t v = h.version.load(std::memory_order_acquire);
      const bool writer_stale = w != 0 && (w > descriptors_ || !in_use[w - 1]);
      // An odd version with no live holder: a commit's mark that outlived it.
      if (!writer_stale && ((v & 1) == 0 || w != 0)) return;
      if (writer_stale) {
        const auto& second = *std::launder(reinterpret_cast<const object_header*>(b_ + off));
        const std::uint64_t size = std::min<std::uint64_t>(std::max(h.size, second.size), capacity);
        const std::uint64_t len = tracked_prefix + size;
        if (w <= states.size() && states[w - 1] == committing) {
          std::memcpy(b_ + off + tracked_offset, a_ + off + tracked_offset, len);
        } else {
          std::memcpy(a_ + off + tracked_offset, b_ + off + tracked_offset, len);
        }
        h.writer.store(0, std::memory_order_release);
      }
      if ((v & 1) != 0) h.version.store(v + 1, std::memory_order_release);
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
  void for_each_held_write(descriptor_index d, F&& f) const {
    using namespace bank_layout;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_acquire);
    const log_entry* log = log_of(d);
    for (std::uint32_t k = 0; k < n; ++k) {
      const log_entry& e = log[k];
      if (e.kind != entry_kind::write || e.length == 0) continue;
      if (header(e.offset).writer.load(std::memory_order_relaxed) != d + 1) continue;
      f(e.offset + tracked_offset, e.length);
    }
  }

  /// Recovers descriptor `d` if its owner died; true if it did.
  bool recover_if_dead(descriptor_index d, recovery_report& report,
                       bool assume_dead = false) noexcept {
    using namespace bank_layout;
    descriptor& s = descriptor_at(d);
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
    if (const std::uint32_t valid = valid_entries(*this, d, count); valid != count) {
      s.count.store(valid, std::memory_order_release);
    }
    const std::uint32_t state = s.state.load(std::memory_order_acquire);
    if (state == committing) {
      if (log_ != nullptr) log_->make_durable(d, true);
      mark_held(d);  // it may have died before its marks: readers must see the change
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

  commit_log* log_ = nullptr;  // pmem's `power` level: called between the phases
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_RECOVERY_HPP
