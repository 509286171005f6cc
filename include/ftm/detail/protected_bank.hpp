#ifndef FTM_DETAIL_PROTECTED_BANK_HPP
#define FTM_DETAIL_PROTECTED_BANK_HPP

/// \file
/// The bank engine with protected mode as an option: what both shipped engines run.
/// Off, each entry point below costs one test of a pointer that is null; on, the
/// program sees the pool only through a read-only view (protected_view.hpp) whose
/// pages a transaction's objects opened for writing make writable until it ends.

#include <ftm/detail/bank_engine.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/protected_view.hpp>
#include <ftm/detail/violation.hpp>
#include <ftm/engine.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// `bank_engine`, and its protected mode (`protect()`, chosen by the engine's options).
/// Every address it hands out is in the view then; the engine itself (locks, logs,
/// copies between banks, recovery) keeps writing through its own mapping.
class protectable_bank : public bank_engine {
 public:
  using bank_engine::bank_engine;

  protectable_bank(const protectable_bank&) = delete;
  protectable_bank& operator=(const protectable_bank&) = delete;
  ~protectable_bank() {
    if (guard_) unregister_protected_pool(&registration_);
  }

  /// Whether this process sees the pool in protected mode.
  [[nodiscard]] bool protected_mode() const noexcept { return guard_ != nullptr; }

  /// Whether protected mode uses memory protection keys here (each thread writes only
  /// the objects its own transactions opened), rather than `mprotect` alone.
  [[nodiscard]] bool uses_protection_keys() const noexcept {
    return guard_ != nullptr && guard_->uses_keys();
  }

  /// How this process protects the pool, in words: "off", "protection keys", or
  /// "mprotect" and why not keys (e.g. "mprotect (pkey_alloc failed: ...)").
  [[nodiscard]] std::string protection_mechanism() const {
    if (guard_ == nullptr) return "off";
    if (guard_->uses_keys()) return "protection keys";
    return "mprotect (" + std::string(guard_->why_not_keys()) + ")";
  }

  descriptor_index begin(begin_options o = {}) {
    const descriptor_index d = bank_engine::begin(o);
    if (guard_) [[unlikely]]
      guard_->started(d);
    return d;
  }

  void begin_attached(descriptor_index d, begin_options o = {}) {
    bank_engine::begin_attached(d, o);
    if (guard_) [[unlikely]]
      guard_->started(d);
  }

  void commit(descriptor_index d) {
    // Read-only again before the commit copies them: no write lands after the decision.
    if (guard_) [[unlikely]]
      guard_->revoke(d);
    bank_engine::commit(d);
  }

  void abort(descriptor_index d) noexcept {
    if (guard_) [[unlikely]]
      guard_->revoke(d);
    bank_engine::abort(d);
  }

  void* open_write(descriptor_index d, std::uint64_t off, const object_type& t) {
    void* p = bank_engine::open_write(d, off, t);
    if (guard_) [[unlikely]]
      return guard_->grant(d, off, t.size);
    return p;
  }

  const void* open_read(descriptor_index d, std::uint64_t off, const object_type& t) {
    const void* p = bank_engine::open_read(d, off, t);
    if (guard_) [[unlikely]]
      return shown(d, off, t, p);
    return p;
  }

  const void* open_read_part(descriptor_index d, std::uint64_t off, const object_type& t,
                             std::size_t at, std::size_t n, std::uint64_t& seen) {
    const void* p = bank_engine::open_read_part(d, off, t, at, n, seen);
    if (guard_) [[unlikely]]
      return shown_part(d, off + bank_layout::header_size + at, n, p);
    return p;
  }

  allocation allocate(descriptor_index d, const object_type& t) {
    allocation a = bank_engine::allocate(d, t);
    if (guard_) [[unlikely]]
      a.storage = guard_->grant(d, a.offset, t.size);
    return a;
  }

 protected:
  /// Turns protected mode on for this process: the pool, `map_size` bytes of `fd`
  /// (which the engine maps at `base()`), is seen through a read-only view from now on.
  /// `name` names the pool in violation reports. Call before any transaction begins.
  void protect(int fd, std::size_t map_size, std::string_view name) {
    guard_ =
        std::make_unique<protected_view>(fd, map_size, base(), static_cast<bank_mapping&>(*this),
                                         static_cast<std::uint64_t>(working_bank() - base()), name);
    for (descriptor_index d = 0; d < descriptors(); ++d)
      copies(d).show_read_only();
    registration_ = {guard_.get(), this,
                     [](void* e, descriptor_index d) noexcept {
                       static_cast<protectable_bank*>(e)->bank_engine::abort(d);
                     },
                     [](void* e, const std::byte* a, std::uint64_t& off) noexcept {
                       return static_cast<protectable_bank*>(e)->locate_copy(a, off);
                     }};
    register_protected_pool(&registration_);
  }

  /// Records in the pool's header whether its latest opener uses protected mode: 0
  /// off, 1 with `mprotect`, 2 with protection keys.
  void record_mode() noexcept {
    auto& h = *reinterpret_cast<bank_layout::pool_header*>(base());
    std::atomic_ref<std::uint32_t>(h.protected_mode)
        .store(guard_ ? (guard_->uses_keys() ? 2 : 1) : 0, std::memory_order_relaxed);
  }

 private:
  /// Where the program sees what `open_read` returned at `p`: in the view if it is in
  /// the pool (an object `d` holds for writing), else a copy from the second bank, in
  /// its read-only mapping (a write through it faults like a write to the pool).
  const void* shown(descriptor_index d, std::uint64_t off, const object_type& t, const void* p) {
    const auto* b = static_cast<const std::byte*>(p);
    if (b >= base() && b < base() + guard_->size()) return guard_->view_of(p);
    return copies(d).shown(const_cast<std::byte*>(b), t.size, off + bank_layout::header_size);
  }

  /// `shown` for `n` bytes at pool offset `at` (a part, see `open_read_part`).
  const void* shown_part(descriptor_index d, std::uint64_t at, std::size_t n, const void* p) {
    const auto* b = static_cast<const std::byte*>(p);
    if (b >= base() && b < base() + guard_->size()) return guard_->view_of(p);
    return copies(d).shown(const_cast<std::byte*>(b), static_cast<std::uint32_t>(n), at);
  }

  /// The pool offset of the byte a read-only copy handed to this thread shows at `a`
  /// (for the fault handler: only this thread's descriptors' records are read).
  bool locate_copy(const std::byte* a, std::uint64_t& off) noexcept {
    for (descriptor_index d = 0; d < descriptors(); ++d) {
      if (guard_->runs(d) && copies(d).locate(a, off)) return true;
    }
    return false;
  }

  std::unique_ptr<protected_view> guard_;  // null: not protected (the fast path)
  protected_pool registration_{};
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PROTECTED_BANK_HPP
