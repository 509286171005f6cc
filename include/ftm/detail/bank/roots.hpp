#ifndef FTM_DETAIL_BANK_ROOTS_HPP
#define FTM_DETAIL_BANK_ROOTS_HPP

/// \file
/// The named roots: finding and binding them, and the checks of the roots table.

#include <ftm/detail/bank/allocator.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/layout_diff.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The named roots: a table of 64 entries, itself an object at offset 64 of each bank,
/// locked and copied like any other.
class bank_roots : public bank_allocator {
 public:
  using bank_allocator::bank_allocator;

  /// Reads the table as `open_read` reads any object: the working bank's if `d` holds
  /// it for writing, else the second bank's, checked against its version. A lookup
  /// that raced with a commit of the table, and found something wrong with it, is made
  /// again: only a consistent table is judged.
  std::uint64_t find_root(descriptor_index d, std::string_view name, const root_type& t) {
    using namespace bank_layout;
    check_root_name(name);
    if (header(roots_offset).writer.load(std::memory_order_relaxed) == d + 1) {
      return look_up(roots(), name, t);
    }
    const auto& committed =
        *std::launder(reinterpret_cast<const roots_table*>(b_ + roots_offset + header_size));
    const auto& second = *std::launder(reinterpret_cast<const object_header*>(b_ + roots_offset));
    const object_header& h = header(roots_offset);
    std::uint32_t spins = 0;
    for (;;) {
      const std::uint64_t v = h.version.load(std::memory_order_acquire);
      if ((v & 1) != 0) {
        wait_for_copy(h, roots_offset, v, spins);
        continue;
      }
      auto changed = [&] {
        std::atomic_thread_fence(std::memory_order_acquire);
        return h.version.load(std::memory_order_relaxed) != v;
      };
      std::uint64_t found = 0;
      try {
        [[maybe_unused]] const second_bank_reads unseen;
        if (second.size != sizeof(roots_table)) {
          if (changed()) continue;
          damaged(fmt::format("the roots table has a damaged size {} (expected {})", second.size,
                              sizeof(roots_table)));
        }
        found = look_up(committed, name, t);
      } catch (...) {
        if (!changed()) throw;
        continue;
      }
      if (changed()) continue;
      record_read(d, roots_offset, v);
      return found;
    }
  }

 private:
  std::uint64_t look_up(const bank_layout::roots_table& table, std::string_view name,
                        const root_type& t) const {
    using namespace bank_layout;
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

 public:
  void bind_root(descriptor_index d, std::string_view name, std::uint64_t off, const root_type& t) {
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
          "{}: cannot bind root '{}': all {} root entries are in use", engine_, name, max_roots));
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

 protected:
  static void check_root_name(std::string_view name) {
    if (name.empty() || name.size() >= sizeof(bank_layout::root_entry::name) ||
        name.find('\0') != std::string_view::npos) {
      throw invalid_argument(fmt::format("root name '{}' must have 1 to {} characters and no NUL",
                                         name, sizeof(bank_layout::root_entry::name) - 1));
    }
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_ROOTS_HPP
