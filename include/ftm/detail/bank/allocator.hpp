#ifndef FTM_DETAIL_BANK_ALLOCATOR_HPP
#define FTM_DETAIL_BANK_ALLOCATOR_HPP

/// \file
/// The allocator: size classes, chunk records, small and large objects.

#include <ftm/detail/bank/locks.hpp>
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
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The allocator: chunks of 64 KiB, cut into blocks of one size class or joined for a
/// large object. Its records (one per chunk) are objects, locked and copied between the
/// banks like any other, so allocation is transactional and recovers.
class bank_allocator : public bank_locks {
 public:
  bank_allocator(std::byte* base, const bank_layout::geometry& g, std::string_view engine)
      : bank_locks(base, g, engine),
        class_hint_(std::make_unique<std::atomic<std::uint8_t>[]>(g.nchunks)) {}

  allocation allocate(descriptor_index d, const object_type& t) {
    using namespace bank_layout;
    if (t.align > header_size) {
      throw invalid_argument(fmt::format("{}: {} needs alignment {}, at most {} is supported",
                                         engine_, t.name, t.align, header_size));
    }
    if (t.size > max_object_size) {
      throw invalid_argument(
          fmt::format("{}: a {} has {} bytes, more than the largest object ({} bytes: an "
                      "object's size is recorded in 32 bits)",
                      engine_, t.name, t.size, max_object_size));
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
        fmt::format("{}: no room for a {} ({} bytes) in a pool of {} chunks of {} bytes", engine_,
                    t.name, t.size, nchunks_, chunk_size));
  }

  void deallocate(descriptor_index d, std::uint64_t off, const object_type& t) {
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

 protected:
  /// Whether chunk `c` is free in the committed state (the second bank), whatever the
  /// working bank says: a chunk freed by a running transaction is not free yet.
  bool committed_free(std::uint64_t c) const noexcept {
    using namespace bank_layout;
    return reinterpret_cast<const chunk_meta*>(b_ + meta_offset(c) + header_size)->cls == cls_free;
  }

  // ---- allocation --------------------------------------------------------------

  allocation take_block(descriptor_index d, std::uint64_t c, bank_layout::chunk_meta& m,
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
  /// writer word (which commits never copy between the banks), nor the size that abort
  /// restores from the second bank (a handle whose creation was undone would find a
  /// stray size).
  void clear_headers(std::uint64_t c, std::uint64_t block) noexcept {
    using namespace bank_layout;
    for (std::uint64_t off = chunk_base(c); off < chunk_base(c) + chunk_size; off += block) {
      std::memset(b_ + off, 0, header_size);
      // The version moves on instead, even: a doomed reader that recorded an earlier
      // object here must not find its version again.
      object_header& h = header(off);
      const std::uint64_t v = h.version.load(std::memory_order_relaxed);
      h.version.store((v | 1) + 1, std::memory_order_relaxed);
      h.writer.store(0, std::memory_order_relaxed);
      h.size = 0;
    }
  }

  /// Makes a new object at `off`, write-locked by `d`, so that abort and recovery
  /// treat its creation like any other write.
  allocation place_object(descriptor_index d, std::uint64_t off, const object_type& t) {
    using namespace bank_layout;
    push_entry(d, off, entry_kind::write, static_cast<std::uint32_t>(tracked_prefix + t.size));
    descriptor_at(d).flags |= wrote_objects;
    object_header& h = header(off);
    // The version goes on from the block's last object (a reader that still names the
    // offset must see a change), even: zeroed headers and freed objects' both are.
    const std::uint64_t v = h.version.load(std::memory_order_relaxed);
    if ((v & 1) != 0) h.version.store(v + 1, std::memory_order_relaxed);
    h.writer.store(d + 1, std::memory_order_release);
    h.size = static_cast<std::uint32_t>(t.size);
    store_barrier();
    FTM_FAULT_POINT("alloc.after_header");
    return {off, a_ + off + header_size};
  }

  allocation allocate_large(descriptor_index d, const object_type& t) {
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
        "{}: no room for a {} ({} bytes): it needs {} free contiguous chunks of {} bytes, "
        "the pool has {} chunks",
        engine_, t.name, t.size, k, chunk_size, nchunks_));
  }

  // Hints of this process only, never trusted without the chunk's lock.
  std::unique_ptr<std::atomic<std::uint8_t>[]> class_hint_;
  std::atomic<std::uint64_t> class_start_[bank_layout::nclasses + 1]{};
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_ALLOCATOR_HPP
