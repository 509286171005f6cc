#ifndef FTM_DETAIL_BANK_CHECK_HPP
#define FTM_DETAIL_BANK_CHECK_HPP

/// \file
/// Checks and reports over a read-only view of a pool: free functions of a
/// `bank_mapping`, so that an engine (`check()`) and a read-only pool file
/// (`ftm::engines::pmem_view`) run the same code, and nothing here can change the pool.

#include <ftm/detail/bank/descriptors.hpp>
#include <ftm/detail/bank/mapping.hpp>
#include <ftm/detail/bank_format.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/inspect.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// What `check()` may take for granted about the pool.
struct check_scope {
  /// Transactions may be running: a descriptor of a living process is no problem,
  /// and the objects any descriptor logged are not compared (a dead owner's
  /// descriptor is still reported, since it needs recovery).
  bool in_use = false;
  /// The owners ran before a reboot of the machine, so none of them is alive.
  bool earlier_boot = false;
};

/// "idle", "active", "committing", or "unknown".
constexpr std::string_view state_name(std::uint32_t state) noexcept {
  switch (state) {
    case bank_layout::idle: return "idle";
    case bank_layout::active: return "active";
    case bank_layout::committing: return "committing";
    default: return "unknown";
  }
}

/// Verifies the pool as `check()` does, within `scope`. Only reads the mapping (it
/// runs on a read-only one), and stays within it however damaged the pool is.
[[nodiscard]] inline check_report check_pool(const bank_mapping& pool, check_scope scope) {
  using namespace bank_layout;
  check_report r;
  r.chunks = pool.nchunks();
  auto problem = [&](std::string s) { r.problems.push_back(std::move(s)); };
  const auto& ph = *reinterpret_cast<const pool_header*>(pool.base());
  if (ph.header_check != header_check_of(ph)) problem("the pool header fails its check");
  if (ph.boot_check != 0 && ph.boot_check != boot_check_of(ph)) {
    problem("the pool header's boot id fails its check");
  }
  // Objects that running (or dead, unrecovered) transactions hold: locked, and
  // perhaps different between the banks, as they should be.
  std::vector<std::uint64_t> held;
  for (descriptor_index d = 0; d < pool.descriptors(); ++d) {
    const auto& s = pool.descriptor_at(d);
    const detail::owner_id o = s.owner.load(std::memory_order_acquire);
    if (o == 0) {
      if (auto p = free_descriptor_problem(pool, d); !p.empty()) problem(std::move(p));
      continue;
    }
    // A live process's idle session holds its descriptor between transactions.
    const bool idle_session = (s.flags & attached) != 0 && s.state.load() == idle;
    if (!scope.in_use && !(idle_session && detail::owner_alive(o))) {
      problem(fmt::format("descriptor {} is in use by pid {} (state {})", d, detail::owner_pid(o),
                          s.state.load()));
      continue;
    }
    if (auto p = descriptor_problem(pool, d); !p.empty()) {
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
      held.push_back(pool.log_of(d)[i].offset);
  }
  std::sort(held.begin(), held.end());
  auto is_held = [&](std::uint64_t off) {
    return std::binary_search(held.begin(), held.end(), off);
  };
  // Checks the object at `off` (a multiple of 64 inside the bank); false if its
  // header is unusable. `expected`: its size if fixed, else 0.
  auto object = [&](std::uint64_t off, std::string_view what, std::uint64_t expected) {
    const object_header& h = pool.header(off);
    if ((expected != 0 && h.size != expected) || h.size > pool.bank_size() - off - header_size) {
      problem(fmt::format("{} at offset {} has a damaged size {}", what, off, h.size));
      return false;
    }
    if (is_held(off)) return true;
    if (h.writer.load() != 0) {
      problem(fmt::format("{} at offset {} is still locked", what, off));
    } else if ((h.version.load() & 1) != 0) {
      problem(
          fmt::format("{} at offset {} is marked as changing (an odd version), but no "
                      "transaction holds it",
                      what, off));
    }
    const std::uint64_t len = tracked_prefix + h.size;
    if (std::memcmp(pool.working_bank() + off + tracked_offset,
                    pool.second_bank() + off + tracked_offset, len) != 0) {
      problem(fmt::format("{} at offset {} differs between the banks", what, off));
    }
    return true;
  };
  std::vector<std::uint64_t> live;  // offsets of live objects, ascending
  auto count_live = [&](std::uint64_t off) {
    live.push_back(off);
    ++r.objects;
    r.bytes_in_use += pool.header(off).size;
  };
  const bool roots_usable = object(roots_offset, "the roots table", sizeof(roots_table));
  for (std::uint64_t c = 0; c < pool.nchunks(); ++c) {
    if (!object(pool.meta_offset(c), fmt::format("the metadata of chunk {}", c),
                sizeof(chunk_meta))) {
      continue;
    }
    const chunk_meta& m = pool.meta(c);
    if (m.cls == cls_free) {
      ++r.free_chunks;
      r.bytes_free += chunk_size;
    } else if (m.cls >= 1 && m.cls <= nclasses) {
      const std::uint64_t bs = pool.block_size(m.cls);
      if (m.nblocks != chunk_size / bs) {
        problem(fmt::format("chunk {} of {}-byte blocks counts {} blocks", c, bs, m.nblocks));
        continue;
      }
      // A transaction that holds the chunk's record may be between setting a bit and
      // the object's size: only what is out of bounds is skipped then, unreported.
      const bool changing = is_held(pool.meta_offset(c));
      std::uint32_t bits = 0;
      for (std::uint32_t i = 0; i < m.nblocks; ++i) {
        if ((m.bitmap[i / 64] >> (i % 64) & 1) == 0) continue;
        ++bits;
        const std::uint64_t off = pool.chunk_base(c) + i * bs;
        const std::uint32_t size = pool.header(off).size;
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
      const std::uint64_t off = pool.chunk_base(c);
      const std::uint32_t size = pool.header(off).size;
      if (m.nblocks == 0 || m.nblocks > pool.nchunks() - c) {
        problem(fmt::format("large object in chunk {} spans {} chunks, past the end of the pool", c,
                            m.nblocks));
        continue;
      }
      if (size == 0 || size + header_size > std::uint64_t{m.nblocks} * chunk_size) {
        if (!is_held(pool.meta_offset(c))) {
          problem(fmt::format("large object at offset {} has size {} in {} chunks", off, size,
                              m.nblocks));
        }
        continue;
      }
      if (object(off, "large object", 0)) count_live(off);
    } else if (m.cls == cls_large_tail) {
      const chunk_meta* h = m.head < c ? &pool.meta(m.head) : nullptr;
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
      const root_entry& e = pool.roots().entries[i];
      if (!root_entry_sound(pool.roots(), i)) {
        problem(root_entry_problem(pool.roots(), i));
      } else if (e.used == 0) {
        continue;
      } else if (!is_live(e.offset) || pool.header(e.offset).size != e.size) {
        problem(fmt::format("root '{}' names no live object of its size", e.name));
      } else if (e.layout != 0 && !is_live(e.layout)) {
        problem(fmt::format("root '{}' names no live layout description", e.name));
      }
    }
  }
  return r;
}

/// The descriptors in use; `earlier_boot` as in `check_scope`. Only reads.
[[nodiscard]] inline std::vector<descriptor_report> descriptors_in_use(const bank_mapping& pool,
                                                                       bool earlier_boot = false) {
  std::vector<descriptor_report> out;
  for (descriptor_index d = 0; d < pool.descriptors(); ++d) {
    const auto& s = pool.descriptor_at(d);
    const detail::owner_id o = s.owner.load(std::memory_order_acquire);
    if (o == 0) continue;
    descriptor_report r;
    r.index = d;
    r.pid = detail::owner_pid(o);
    r.alive = !earlier_boot && detail::owner_alive(o);
    r.state = s.state.load(std::memory_order_acquire);
    r.count = s.count.load(std::memory_order_acquire);
    r.state_text = state_name(r.state);
    const bank_layout::log_entry* log = pool.log_of(d);
    for (std::uint32_t i = 0; i < std::min(r.count, pool.max_entries()); ++i)
      r.log.push_back({log[i].offset, log[i].length, static_cast<lock_kind>(log[i].kind)});
    out.push_back(std::move(r));
  }
  return out;
}

/// The named roots in the committed state. Only reads.
[[nodiscard]] inline std::vector<root_report> root_entries(const bank_mapping& pool) {
  using namespace bank_layout;
  std::vector<root_report> out;
  const auto& table =
      *reinterpret_cast<const roots_table*>(pool.second_bank() + roots_offset + header_size);
  for (const root_entry& e : table.entries) {
    if (e.used == 0) continue;
    out.push_back({std::string(e.name, strnlen(e.name, sizeof e.name)),
                   std::string(e.type, strnlen(e.type, sizeof e.type)), e.fingerprint, e.offset,
                   e.size, e.layout});
  }
  return out;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_CHECK_HPP
