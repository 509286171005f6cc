#ifndef FTM_DETAIL_PROTECTED_VIEW_HPP
#define FTM_DETAIL_PROTECTED_VIEW_HPP

/// \file
/// Protected mode's mapping: a second, read-only mapping of a pool that is the only
/// one the program sees, whose pages become writable only while a transaction holds an
/// object on them for writing. The engine keeps writing through its own mapping.
/// Two mechanisms: memory protection keys where the CPU and kernel have them (a page
/// held by one transaction is writable by its thread only), `mprotect` elsewhere (by
/// every thread of the process).

#include <ftm/detail/bank/mapping.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/protected_keys.hpp>
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
/// writable now, by whom.
///
/// Each page of the view counts the objects on it that transactions of this process
/// hold for writing (under one lock), and has a tag:
/// - read-only: count 0, `PROT_READ`, no thread writes it;
/// - shared: `PROT_READ | PROT_WRITE` with the default key, so writable by every thread
///   (`mprotect` is per process). The `mprotect` mechanism has only these two tags;
/// - a key slot (protection keys only): writable only by the thread whose transaction
///   holds that slot, and only while it holds an object for writing. Each writing
///   transaction takes a free slot (its last one if free) at its first open for
///   writing, and its thread allows the slot's key in its own rights register (one
///   instruction); at commit or abort the thread disallows it again. Pages keep their
///   slot's tag after the transaction (a cache: the next transaction of that slot that
///   opens the same object needs no system call); before the slot's key is allowed
///   again, every cached page the new transaction does not open goes back to
///   read-only, so a thread can write only the pages of objects it holds now. A page
///   that two transactions hold at once becomes shared, and one whose transaction
///   found no free slot is shared, as with `mprotect`.
/// The engine's mapping (the alias the view shares its file with) is never handed out.
class protected_view {
 public:
  /// Key slots per view: transactions that write at once, each with its own key. The
  /// process has 15 keys in all, for every pool and for the program.
  static constexpr std::size_t max_keys = 4;

  /// Maps `map_size` bytes of `fd` read-only beside the engine's mapping at `alias`,
  /// whose working bank begins at `bank_begin` and has `bank_size` bytes; `pool`
  /// describes the pool (to name the object a faulting write hits). Uses protection
  /// keys if `protection_keys()` says they work and this view gets at least one.
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
    tags_.assign(map_size / page_, read_only);
    isolated_.assign(map_size / page_, false);
    slot_of_.fill(no_slot);
    last_slot_.fill(no_slot);
    const protection_keys_support keys = protection_keys();
    if (keys.available) {
      while (nkeys_ < max_keys) {
        const int k = allocate_protection_key(&why_not_keys_);
        if (k < 0) break;
        keys_[nkeys_++] = k;
      }
      if (nkeys_ == 0)
        why_not_keys_ = "no protection key was left for this pool (" + why_not_keys_ + ")";
    } else {
      why_not_keys_ = keys.reason;
    }
  }

  protected_view(const protected_view&) = delete;
  protected_view& operator=(const protected_view&) = delete;
  ~protected_view() {
    ::munmap(view_, size_);
    for (std::size_t s = 0; s < nkeys_; ++s)
      free_protection_key(keys_[s]);
  }

  [[nodiscard]] const std::byte* begin() const noexcept { return view_; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::uint64_t bank_begin() const noexcept { return bank_begin_; }
  [[nodiscard]] const bank_mapping& pool() const noexcept { return pool_; }
  [[nodiscard]] std::string_view name() const noexcept { return name_; }

  /// Whether this view uses protection keys (else `mprotect` alone), and if not, why.
  [[nodiscard]] bool uses_keys() const noexcept { return nkeys_ > 0; }
  [[nodiscard]] std::string_view why_not_keys() const noexcept { return why_not_keys_; }

  /// Where the view shows the byte the engine's mapping has at `p`.
  template <class T>
  [[nodiscard]] T* view_of(T* p) const noexcept {
    return reinterpret_cast<T*>(view_ + (reinterpret_cast<const std::byte*>(p) - alias_));
  }

  /// Records that this thread runs descriptor `d`: a violation aborts the faulting
  /// thread's transactions. With keys, also sets this thread's rights for the view's
  /// keys: read all, write none but those of slots its transactions hold now (a
  /// thread older than the keys may not even read them; one made by a thread inside a
  /// transaction inherited its rights).
  void started(descriptor_index d) noexcept {
    runner_[d].store(::pthread_self(), std::memory_order_relaxed);
    if (nkeys_ == 0) return;
    const pthread_t self = ::pthread_self();
    const std::uint32_t now = read_key_rights();
    std::uint32_t want = now;
    for (std::size_t s = 0; s < nkeys_; ++s) {
      want &= ~(key_access_disabled(keys_[s]) | key_write_disabled(keys_[s]));
      if (enabled_by_[s].load(std::memory_order_relaxed) != self)
        want |= key_write_disabled(keys_[s]);
    }
    if (want != now) write_key_rights(want);
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
    const bool first_grant = held.empty();
    if (first_grant && nkeys_ > 0) take_slot(d, first, last);
    held.push_back({off, first, last});
    const std::uint8_t slot = slot_of_[d];
    change(first, last, +1, slot == no_slot ? shared : tag_of(slot));
    if (first_grant && slot != no_slot) {
      // Only now, with every page of the slot's tag one that `d` holds: this thread
      // may write them.
      enabled_by_[slot].store(::pthread_self(), std::memory_order_relaxed);
      write_key_rights(read_key_rights() &
                       ~(key_access_disabled(keys_[slot]) | key_write_disabled(keys_[slot])));
    }
    return data;
  }

  /// Makes read-only again every page of the view that only `d`'s objects kept
  /// writable (with keys: this thread writes none of them any more), and forgets that
  /// `d` runs here. Called as `d` commits or aborts, by the thread that runs it.
  void revoke(descriptor_index d) noexcept {
    runner_[d].store(pthread_t{}, std::memory_order_relaxed);
    auto& held = held_[d];
    // Only the thread that runs `d` changes its list (and a child just forked, alone):
    // a transaction that opened nothing for writing takes no lock.
    if (held.empty()) return;
    const std::lock_guard lock(mutex_);
    const std::uint8_t slot = slot_of_[d];
    if (slot != no_slot && enabled_by_[slot].load(std::memory_order_relaxed) == ::pthread_self()) {
      // First: no write of this thread lands once the counts say the pages are free.
      write_key_rights(read_key_rights() | key_write_disabled(keys_[slot]));
      enabled_by_[slot].store(pthread_t{}, std::memory_order_relaxed);
    }
    release(d);
  }

  /// Around `fork()` (see violation.hpp): the parent holds the lock while it forks, so
  /// that the child's copy is not locked by a thread the child does not have.
  void lock_for_fork() noexcept { mutex_.lock(); }
  void unlock_after_fork() noexcept { mutex_.unlock(); }

  /// In a child just forked: only the forking thread lives on, so the objects other
  /// threads' transactions held are not the child's to write. Their pages become
  /// read-only again, or stay tagged with keys the forking thread does not allow
  /// (their transactions end in the parent, not here).
  void forget_other_threads() noexcept {
    const pthread_t self = ::pthread_self();
    for (descriptor_index d = 0; d < bank_layout::max_descriptors; ++d) {
      if (held_[d].empty() || runner_[d].load(std::memory_order_relaxed) == self) continue;
      const std::uint8_t slot = slot_of_[d];
      if (slot != no_slot) enabled_by_[slot].store(pthread_t{}, std::memory_order_relaxed);
      release(d);
      runner_[d].store(pthread_t{}, std::memory_order_relaxed);
    }
  }

 private:
  struct grant_record {
    std::uint64_t offset;       // the object's, in the working bank
    std::uint64_t first, last;  // its bytes' pages in the view
  };

  // Page tags: read-only, shared, or 1 + a key slot.
  static constexpr std::uint8_t read_only = 0;
  static constexpr std::uint8_t shared = 0xff;
  static constexpr std::uint8_t no_slot = 0xff;
  static constexpr std::uint8_t tag_of(std::uint8_t slot) noexcept {
    return static_cast<std::uint8_t>(slot + 1);
  }

  /// Gives `d` a free key slot (its last one if free), whose cached pages outside
  /// pages `first..last` (the object `d` opens first) go back to read-only; none free:
  /// `d`'s pages will be shared.
  void take_slot(descriptor_index d, std::uint64_t first, std::uint64_t last) noexcept {
    std::uint8_t slot = no_slot;
    if (last_slot_[d] != no_slot && slot_holder_[last_slot_[d]] == no_descriptor) {
      slot = last_slot_[d];
    } else {
      for (std::size_t s = 0; s < nkeys_; ++s) {
        if (slot_holder_[s] == no_descriptor) {
          slot = static_cast<std::uint8_t>(s);
          break;
        }
      }
    }
    slot_of_[d] = slot;
    if (slot == no_slot) return;
    slot_holder_[slot] = d;
    last_slot_[d] = slot;
    const std::uint8_t tag = tag_of(slot);
    for (const grant_record& g : cached_[slot]) {
      for (std::uint64_t p = g.first; p <= g.last; ++p) {
        if (tags_[p] != tag || pages_[p] != 0 || (p >= first && p <= last)) continue;
        protect_run(p, 1, read_only);
        tags_[p] = read_only;
      }
    }
    cached_[slot].clear();
  }

  /// Lowers the counts of `d`'s pages, gives back its slot, and forgets its objects.
  /// The slot's key is not allowed by any thread now.
  void release(descriptor_index d) noexcept {
    auto& held = held_[d];
    for (const grant_record& g : held)
      change(g.first, g.last, -1, read_only);
    const std::uint8_t slot = slot_of_[d];
    if (slot != no_slot) {
      // Its pages keep the slot's tag: the next transaction on the slot starts there.
      cached_[slot].insert(cached_[slot].end(), held.begin(), held.end());
      slot_holder_[slot] = no_descriptor;
      slot_of_[d] = no_slot;
    }
    held.clear();
  }

  /// Adds `by` (+1 or -1) to the count of pages `first..last`. Adding, each page gets
  /// tag `tag` (shared or a slot's) if it had none, or becomes shared if another
  /// slot's transaction holds it; taking away, a shared page whose count reaches 0
  /// becomes read-only (a slot's page keeps its tag). Each run of pages whose
  /// protection changes the same way is one system call.
  void change(std::uint64_t first, std::uint64_t last, int by, std::uint8_t tag) noexcept {
    std::uint64_t run = 0;
    std::uint64_t run_length = 0;
    std::uint8_t run_tag = read_only;
    auto flush = [&] {
      if (run_length == 0) return;
      protect_run(run, run_length, run_tag);
      run_length = 0;
    };
    for (std::uint64_t p = first; p <= last; ++p) {
      std::uint32_t& n = pages_[p];
      const std::uint8_t was = tags_[p];
      std::uint8_t next = was;
      if (by > 0) {
        if (was == read_only || (was != shared && was != tag && n == 0)) {
          next = tag;  // free, or another slot's page no transaction holds now
        } else if (was != tag) {
          next = shared;  // held by another slot's transaction too
        }
        ++n;
      } else {
        if (--n == 0 && was == shared) next = read_only;
      }
      if (next == was) {
        flush();
        continue;
      }
      tags_[p] = next;
      if (by > 0) isolate(p);
      if (run_length > 0 && next != run_tag) flush();
      if (run_length == 0) {
        run = p;
        run_tag = next;
      }
      ++run_length;
    }
    flush();
  }

  /// Pages of the view whose protection changes get a kernel mapping (VMA) of their
  /// own, once: then an `mprotect` of the page neither splits the view's mapping in
  /// three nor merges it back (which costs more than the change itself: about 5 us a
  /// pair against 2 us on the test VM). A page is isolated by an `madvise` flag its
  /// neighbours do not have (even pages MADV_DONTDUMP, odd MADV_RANDOM: harmless for
  /// the view, which a core dump need not hold, since the engine's mapping holds the
  /// same bytes), so the kernel never merges it with them. At most
  /// `max_isolated_pages` (the mappings count against vm.max_map_count); beyond, or
  /// if `madvise` refuses, pages are protected as before, splitting the mapping.
  static constexpr std::size_t max_isolated_pages = 8192;

  void isolate(std::uint64_t p) noexcept {
    if (!isolating_ || isolated_[p]) return;
    if (isolated_pages_ == max_isolated_pages ||
        ::madvise(view_ + p * page_, page_, p % 2 == 0 ? MADV_DONTDUMP : MADV_RANDOM) != 0) {
      isolating_ = false;
      return;
    }
    isolated_[p] = true;
    ++isolated_pages_;
  }

  /// Gives `length` pages from page `first` the protection of `tag`.
  void protect_run(std::uint64_t first, std::uint64_t length, std::uint8_t tag) noexcept {
    const int prot = tag == read_only ? PROT_READ : PROT_READ | PROT_WRITE;
    void* at = view_ + first * page_;
    const std::size_t n = length * page_;
    // With keys, the default key 0 must be set again explicitly (mprotect keeps a key).
    const int r = nkeys_ == 0 ? ::mprotect(at, n, prot)
                              : protect_with_key(at, n, prot,
                                                 tag == read_only || tag == shared
                                                     ? 0
                                                     : keys_[static_cast<std::size_t>(tag - 1)]);
    if (r != 0) {
      // Out of mappings (vm.max_map_count) or memory: the view no longer says what
      // may be written, so protected mode cannot go on.
      std::fprintf(stderr, "ftm: protected mode: %s of %zu bytes failed: %s\n",
                   nkeys_ == 0 ? "mprotect" : "pkey_mprotect", n, std::strerror(errno));
      std::abort();
    }
  }

  static constexpr descriptor_index no_descriptor = bank_layout::max_descriptors;

  const bank_mapping& pool_;
  std::byte* alias_;  // the engine's mapping of the same file
  std::byte* view_ = nullptr;
  std::size_t size_;
  std::uint64_t bank_begin_;
  std::size_t page_;
  std::string name_;
  std::mutex mutex_;                  // everything below but runner_ and enabled_by_
  std::vector<std::uint32_t> pages_;  // per page of the view: objects held writable on it
  std::vector<std::uint8_t> tags_;    // per page: read_only, shared, or 1 + a key slot
  std::vector<bool> isolated_;        // per page: a mapping of its own (see isolate())
  std::size_t isolated_pages_ = 0;
  bool isolating_ = true;  // false once the budget is spent or madvise refused
  std::array<std::vector<grant_record>, bank_layout::max_descriptors> held_;
  std::array<std::atomic<pthread_t>, bank_layout::max_descriptors> runner_{};
  // Protection keys (none: `mprotect` alone).
  std::array<int, max_keys> keys_{};
  std::size_t nkeys_ = 0;
  std::string why_not_keys_;
  std::array<descriptor_index, max_keys> slot_holder_ = filled(no_descriptor);
  std::array<std::atomic<pthread_t>, max_keys> enabled_by_{};           // who allows the key now
  std::array<std::vector<grant_record>, max_keys> cached_;              // pages tagged last time
  std::array<std::uint8_t, bank_layout::max_descriptors> slot_of_{};    // now
  std::array<std::uint8_t, bank_layout::max_descriptors> last_slot_{};  // the one before

  static constexpr std::array<descriptor_index, max_keys> filled(descriptor_index v) noexcept {
    std::array<descriptor_index, max_keys> a{};
    a.fill(v);
    return a;
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PROTECTED_VIEW_HPP
