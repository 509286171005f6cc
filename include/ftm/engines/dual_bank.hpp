#ifndef FTM_ENGINES_DUAL_BANK_HPP
#define FTM_ENGINES_DUAL_BANK_HPP

/// \file
/// `ftm::engines::dual_bank`: the paper's STM board in software, in shared memory.

#include <ftm/detail/config.hpp>
#include <ftm/detail/protected_bank.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include <sys/mman.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A shared memory region no file names: a memfd, mapped once with `MAP_SHARED`, so
/// that a `fork()`ed child maps the same pages.
class memfd_region {
 protected:
  explicit memfd_region(std::size_t size) : size_(size) {
    fd_ = ::memfd_create("ftm-dual-bank", MFD_CLOEXEC);
    if (fd_ < 0) fail("memfd_create");
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) fail("ftruncate");
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) fail("mmap");
    base_ = static_cast<std::byte*>(p);
  }
  memfd_region(const memfd_region&) = delete;
  memfd_region& operator=(const memfd_region&) = delete;
  ~memfd_region() {
    ::munmap(base_, size_);
    ::close(fd_);
  }

  [[nodiscard]] std::byte* region() const noexcept { return base_; }
  [[nodiscard]] int region_fd() const noexcept { return fd_; }

 private:
  [[noreturn]] void fail(std::string_view what) {
    const int e = errno;
    if (fd_ >= 0) ::close(fd_);
    throw io_error(
        e, fmt::format("dual_bank: {} of {} bytes failed: {}", what, size_, std::strerror(e)));
  }

  std::byte* base_ = nullptr;
  int fd_ = -1;
  std::size_t size_;
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

namespace ftm::FTM_ABI_NAMESPACE::engines {

/// The in-memory dual-bank engine. Models `ftm::fork_shared_engine`.
///
/// Isolation is strict two-phase locking at open (shared for read, exclusive for
/// write, upgrade allowed); a transaction that must not wait for an older one's lock
/// dies with `ftm::conflict` (wait-die), which `atomically()` retries. Up to
/// `options::max_transactions` transactions (64 unless chosen, at most 1,024) run at
/// once per pool; `begin()` waits for a free descriptor beyond.
///
/// The pool is a `MAP_SHARED` memfd mapping: a `fork()`ed child uses the same pool.
/// When a process dies, any survivor calls `recover()`: transactions that were
/// active are undone from the second bank, those that were committing are completed.
class dual_bank : private detail::memfd_region, public detail::protectable_bank {
 public:
  /// The memfd mapping is `MAP_SHARED`: a forked child uses the same pool.
  static constexpr bool fork_shared = true;

  explicit dual_bank(std::size_t bank_size) : dual_bank(options{.bank_size = bank_size}) {}
  explicit dual_bank(options opts)
      : dual_bank(
            detail::bank_layout::geometry::compute(opts.bank_size, opts.max_objects_per_transaction,
                                                   "dual_bank", opts.max_transactions),
            opts.protected_mode) {}

  /// The memfd behind the pool, for handing it to another process.
  [[nodiscard]] int fd() const noexcept { return region_fd(); }

 private:
  dual_bank(const detail::bank_layout::geometry& g, bool protected_mode)
      : memfd_region(g.map_size), protectable_bank(region(), g, /*fresh=*/true, "dual_bank") {
    if (protected_mode) protect(region_fd(), g.map_size, "dual_bank");
    record_mode();
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::engines

#endif  // FTM_ENGINES_DUAL_BANK_HPP
