#ifndef FTM_DETAIL_PROTECTED_VIEW_HPP
#define FTM_DETAIL_PROTECTED_VIEW_HPP

/// \file
/// Protected mode's mapping: a second, read-only mapping of a pool that is the only
/// one the program sees, whose pages become writable only while a transaction holds an
/// object on them for writing. The engine keeps writing through its own mapping.

#include <ftm/detail/bank/mapping.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The read-only view of one pool in protected mode, and which of its pages are
/// writable now. `mprotect` is per process while transactions run in several
/// threads: each page of the view counts the objects on it that transactions of this
/// process hold for writing, under one lock, and is writable while its count is not 0.
/// The engine's mapping (the alias the view shares its file with) is never handed out.
class protected_view {
 public:
  /// Maps `map_size` bytes of `fd` read-only beside the engine's mapping at `alias`,
  /// whose working bank begins at `bank_begin` and has `bank_size` bytes; `pool`
  /// describes the pool (to name the object a faulting write hits).
  protected_view(int fd, std::size_t map_size, std::byte* alias, const bank_mapping& pool,
                 std::uint64_t bank_begin, std::string_view name)
      : pool_(pool),
        alias_(alias),
        size_(map_size),
        bank_begin_(bank_begin),
        page_(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE))),
        name_(name) {
    if (bank_begin % page_ != 0) {
      throw usage_error(fmt::format(
          "{}: protected mode needs the banks to start on a page ({} bytes): the control region "
          "has {} bytes (choose another max_objects_per_transaction)",
          pool.engine_name(), page_, bank_begin));
    }
    void* p = ::mmap(nullptr, map_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      throw io_error(e, fmt::format("{}: protected mode: cannot map the pool's view: {}",
                                    pool.engine_name(), std::strerror(e)));
    }
    view_ = static_cast<std::byte*>(p);
    pages_.assign(map_size / page_, 0);
  }

  protected_view(const protected_view&) = delete;
  protected_view& operator=(const protected_view&) = delete;
  ~protected_view() { ::munmap(view_, size_); }

  [[nodiscard]] const std::byte* begin() const noexcept { return view_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::uint64_t bank_begin() const noexcept { return bank_begin_; }
  [[nodiscard]] const bank_mapping& pool() const noexcept { return pool_; }
  [[nodiscard]] std::string_view name() const noexcept { return name_; }

  /// Where the view shows the byte the engine's mapping has at `p`.
  template <class T>
  [[nodiscard]] T* view_of(T* p) const noexcept {
    return reinterpret_cast<T*>(view_ + (reinterpret_cast<const std::byte*>(p) - alias_));
  }

  /// Records that this thread runs descriptor `d`: a violation aborts the faulting
  /// thread's transactions.
  void started(descriptor_index d) noexcept {
    runner_[d].store(::pthread_self(), std::memory_order_relaxed);
  }

  /// Whether the calling thread runs descriptor `d` (safe in a signal handler).
  [[nodiscard]] bool runs(descriptor_index d) const noexcept {
    return runner_[d].load(std::memory_order_relaxed) == ::pthread_self();
  }

  /// Makes the `size` bytes of the object at `off` (of the working bank) writable in
  /// the view for `d`, until `revoke(d)`, and returns where the view shows them.
  void* grant(descriptor_index d, std::uint64_t off, std::uint64_t size) {
    std::byte* data = view_ + bank_begin_ + off + bank_layout::header_size;
    if (size == 0) return data;
    const std::uint64_t first = (bank_begin_ + off + bank_layout::header_size) / page_;
    const std::uint64_t last = (bank_begin_ + off + bank_layout::header_size + size - 1) / page_;
    const std::lock_guard lock(mutex_);
    auto& held = held_[d];
    for (const grant_record& g : held)
      if (g.offset == off) return data;  // opened again by the same transaction
    held.push_back({off, first, last});
    change(first, last, +1);
    return data;
  }

  /// Makes read-only again every page of the view that only `d`'s objects kept
  /// writable, and forgets that `d` runs here. Called as `d` commits or aborts.
  void revoke(descriptor_index d) noexcept {
    runner_[d].store(pthread_t{}, std::memory_order_relaxed);
    auto& held = held_[d];
    // Only the thread that runs `d` changes its list (and a child just forked, alone):
    // a transaction that opened nothing for writing takes no lock.
    if (held.empty()) return;
    const std::lock_guard lock(mutex_);
    for (const grant_record& g : held)
      change(g.first, g.last, -1);
    held.clear();
  }

  /// Around `fork()` (see violation.hpp): the parent holds the lock while it forks, so
  /// that the child's copy is not locked by a thread the child does not have.
  void lock_for_fork() noexcept { mutex_.lock(); }
  void unlock_after_fork() noexcept { mutex_.unlock(); }

  /// In a child just forked: only the forking thread lives on, so the objects other
  /// threads' transactions held are not the child's to write. Their pages become
  /// read-only again (their transactions end in the parent, not here).
  void forget_other_threads() noexcept {
    const pthread_t self = ::pthread_self();
    for (descriptor_index d = 0; d < bank_layout::max_descriptors; ++d) {
      if (held_[d].empty() || runner_[d].load(std::memory_order_relaxed) == self) continue;
      for (const grant_record& g : held_[d])
        change(g.first, g.last, -1);
      held_[d].clear();
      runner_[d].store(pthread_t{}, std::memory_order_relaxed);
    }
  }

 private:
  struct grant_record {
    std::uint64_t offset;       // the object's, in the working bank
    std::uint64_t first, last;  // its bytes' pages in the view
  };

  /// Adds `by` to the count of pages `first..last`, and protects each run of pages
  /// whose count went from 0 or to 0 with one `mprotect`.
  void change(std::uint64_t first, std::uint64_t last, int by) noexcept {
    const int prot = by > 0 ? PROT_READ | PROT_WRITE : PROT_READ;
    std::uint64_t run = 0;
    std::uint64_t run_length = 0;
    auto flush = [&] {
      if (run_length == 0) return;
      if (::mprotect(view_ + run * page_, run_length * page_, prot) != 0) {
        // Out of mappings (vm.max_map_count) or memory: the view no longer says what
        // may be written, so protected mode cannot go on.
        std::fprintf(stderr, "ftm: protected mode: mprotect of %zu bytes failed: %s\n",
                     static_cast<std::size_t>(run_length * page_), std::strerror(errno));
        std::abort();
      }
      run_length = 0;
    };
    for (std::uint64_t p = first; p <= last; ++p) {
      std::uint32_t& n = pages_[p];
      const bool edge = by > 0 ? n++ == 0 : --n == 0;
      if (!edge) {
        flush();
        continue;
      }
      if (run_length == 0) run = p;
      ++run_length;
    }
    flush();
  }

  const bank_mapping& pool_;
  std::byte* alias_;  // the engine's mapping of the same file
  std::byte* view_ = nullptr;
  std::size_t size_;
  std::uint64_t bank_begin_;
  std::size_t page_;
  std::string name_;
  std::mutex mutex_;                  // pages_ and held_
  std::vector<std::uint32_t> pages_;  // per page of the view: objects held writable on it
  std::array<std::vector<grant_record>, bank_layout::max_descriptors> held_;
  std::array<std::atomic<pthread_t>, bank_layout::max_descriptors> runner_{};
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PROTECTED_VIEW_HPP
