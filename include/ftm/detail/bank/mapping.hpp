#ifndef FTM_DETAIL_BANK_MAPPING_HPP
#define FTM_DETAIL_BANK_MAPPING_HPP

/// \file
/// The bank engine's mapping: where each structure of bank_format.hpp lies in a pool,
/// as references. Nothing here changes the pool but `format()`, which makes a new one.

#include <ftm/detail/bank_format.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

using bank_layout::descriptor_index;

/// The addresses of a bank-engine pool in one mapping: the control region (header,
/// watchers' table, descriptors, logs), then the working bank and the second bank. What
/// every other part of the engine reads and writes through; `check_pool()` and the
/// other free functions of check.hpp read a pool through it alone (a read-only view).
class bank_mapping {
 public:
  using descriptor = bank_layout::descriptor;
  using log_entry = bank_layout::log_entry;
  using owner_id = detail::owner_id;

  /// The pool mapped at `base`, laid out as `g`; `engine` names the engine in errors
  /// ("dual_bank", "pmem").
  bank_mapping(std::byte* base, const bank_layout::geometry& g, std::string_view engine) noexcept
      : engine_(engine),
        base_(base),
        a_(base + g.control_size),
        b_(base + g.control_size + g.bank_size),
        control_size_(g.control_size),
        bank_size_(g.bank_size),
        nchunks_(g.nchunks),
        chunks_offset_(g.chunks_offset),
        logs_begin_(bank_layout::logs_begin(g.descriptors)),
        max_entries_(g.max_entries),
        descriptors_(g.descriptors) {}

  bank_mapping(const bank_mapping&) = delete;
  bank_mapping& operator=(const bank_mapping&) = delete;
  ~bank_mapping() = default;

  [[nodiscard]] std::string_view engine_name() const noexcept { return engine_; }
  [[nodiscard]] std::size_t bank_size() const noexcept { return bank_size_; }
  [[nodiscard]] std::uint64_t nchunks() const noexcept { return nchunks_; }
  [[nodiscard]] std::uint64_t chunks_offset() const noexcept { return chunks_offset_; }
  [[nodiscard]] std::uint32_t max_entries() const noexcept { return max_entries_; }
  /// How many transactions run at once: the pool's descriptors, 0..descriptors() - 1.
  [[nodiscard]] std::uint32_t descriptors() const noexcept { return descriptors_; }
  /// Where the descriptors' logs begin in the control region.
  [[nodiscard]] std::uint64_t logs_begin() const noexcept { return logs_begin_; }
  [[nodiscard]] std::byte* base() const noexcept { return base_; }
  [[nodiscard]] std::byte* working_bank() const noexcept { return a_; }
  [[nodiscard]] std::byte* second_bank() const noexcept { return b_; }

  /// Names the pool in the errors its damage causes (`ftm::bad_pool`).
  void set_pool_name(std::string_view name) { pool_name_ = fmt::format("'{}': ", name); }

  descriptor& descriptor_at(descriptor_index d) const noexcept {
    return *std::launder(reinterpret_cast<descriptor*>(base_ + bank_layout::descriptors_begin +
                                                       d * sizeof(descriptor)));
  }

  log_entry* log_of(descriptor_index d) const noexcept {
    return reinterpret_cast<log_entry*>(base_ + logs_begin_) + std::uint64_t{d} * max_entries_;
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

  bank_layout::watch_table& watches() const noexcept {
    return *std::launder(
        reinterpret_cast<bank_layout::watch_table*>(base_ + bank_layout::watch_begin));
  }

  std::uint64_t chunk_base(std::uint64_t c) const noexcept {
    return chunks_offset_ + c * bank_layout::chunk_size;
  }

  std::uint64_t chunk_of(std::uint64_t off) const noexcept {
    return (off - chunks_offset_) / bank_layout::chunk_size;
  }

  static std::uint64_t block_size(std::uint32_t cls) noexcept {
    return bank_layout::min_block << (cls - 1);
  }

  static std::uint32_t class_for(std::uint64_t total) noexcept {
    return static_cast<std::uint32_t>(std::bit_width(std::max<std::uint64_t>(total, 64) - 1)) - 5;
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
    h->descriptors = g.descriptors;
    pool_header whole = *h;
    whole.magic = magic;  // stored last, below
    h->header_check = header_check_of(whole);
    set_boot_id(*h, current_boot_id());
    for (descriptor_index d = 0; d < g.descriptors; ++d)
      ::new (base_ + descriptors_begin + d * sizeof(descriptor)) descriptor{};
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

 protected:
  std::string_view engine_;    // the engine's name, first in the messages it raises
  std::string pool_name_;      // "'<file>': ", or empty: prefixes damage errors
  std::byte* base_ = nullptr;  // the mapping: control region, then the two banks
  std::byte* a_ = nullptr;     // the working bank
  std::byte* b_ = nullptr;     // the second bank: the last committed state
  std::size_t control_size_ = 0;
  std::size_t bank_size_ = 0;
  std::uint64_t nchunks_ = 0;
  std::uint64_t chunks_offset_ = 0;
  std::uint64_t logs_begin_ = 0;
  std::uint32_t max_entries_ = 0;
  std::uint32_t descriptors_ = 0;  // the pool's, at most bank_layout::max_descriptors
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_MAPPING_HPP
