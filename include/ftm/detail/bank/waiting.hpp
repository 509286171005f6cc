#ifndef FTM_DETAIL_BANK_WAITING_HPP
#define FTM_DETAIL_BANK_WAITING_HPP

/// \file
/// Waiting for changes: the watchers' table and its futex, registration, and the
/// wake-up after a commit (or a recovery) that may have changed a watched object.

#include <ftm/detail/bank/descriptors.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Waiting for changes (`ftm::watchable_engine`): watchers register in the watchers'
/// table and sleep on its futex word; commits that wrote a watched object wake them.
///
/// No lost wake-up, without a fence in commit. A watcher registers (two locked
/// increments), reads `changes`, and then checks each object it read: no writer holds
/// it, and its version is the one it read. If not, it does not sleep (its token's
/// `seen` is already out of date). A committer takes the object's lock (a locked
/// compare-and-swap) before it changes it, and checks the counts (a load) after its
/// release. Both sides' locked operations and loads are sequentially consistent, so
/// either the committer's check sees the registration and wakes, or its lock was taken
/// before the watcher's check, which then sees the writer, or (once released) the new
/// version. An object the watcher holds for writing itself changes under no one else.
class bank_watchers : public bank_descriptors {
 public:
  using bank_descriptors::bank_descriptors;

  /// Registers interest in the object at `off`, which `d` read or holds for writing.
  watch_token watch(descriptor_index d, std::uint64_t off) {
    using namespace bank_layout;
    const bool written = off >= roots_offset && off < bank_size_ && off % min_block == 0 &&
                         header(off).writer.load(std::memory_order_relaxed) == d + 1;
    const auto& set = reads(d);
    const auto read =
        std::find_if(set.begin(), set.end(), [&](const read_entry& r) { return r.offset == off; });
    if (!written && read == set.end()) {
      throw usage_error(
          fmt::format("watch: the transaction did not open the object at offset {}", off));
    }
    watch_table& w = watches();
    const std::uint32_t b = watch_bucket(off);
    w.buckets[b].watchers.fetch_add(1, std::memory_order_seq_cst);
    w.global.watchers.fetch_add(1, std::memory_order_seq_cst);
    const std::uint32_t seen = w.global.changes.load(std::memory_order_seq_cst);
    // Changed since it was read, or about to: the wait must not sleep.
    if (!written && !unchanged(d, *read)) return {b, seen - 1};
    return {b, seen};
  }

  /// Registers interest in every object `d` holds a lock on (but the allocator's
  /// records), one token per bucket; returns how many tokens it filled.
  std::size_t watch_all(descriptor_index d, std::span<watch_token> out) {
    using namespace bank_layout;
    watch_table& w = watches();
    bool taken[watch_buckets] = {};
    std::size_t n = 0;
    const std::uint32_t count = descriptor_at(d).count.load(std::memory_order_relaxed);
    const log_entry* log = log_of(d);
    const auto& set = reads(d);
    for (std::size_t i = 0; i < count + set.size() && n < out.size(); ++i) {
      const std::uint64_t off = i < count ? log[i].offset : set[i - count].offset;
      if (off >= metas_begin && off < chunks_offset_) continue;  // allocation, not data
      const std::uint32_t b = watch_bucket(off);
      if (taken[b]) continue;
      taken[b] = true;
      w.buckets[b].watchers.fetch_add(1, std::memory_order_seq_cst);
      w.global.watchers.fetch_add(1, std::memory_order_seq_cst);
      out[n++] = watch_token{b, 0};
    }
    // Read after every registration, then the reads checked (see above).
    std::uint32_t seen = w.global.changes.load(std::memory_order_seq_cst);
    for (const read_entry& r : set) {
      if (!unchanged(d, r)) {
        --seen;  // out of date already: the wait returns at once
        break;
      }
    }
    for (std::size_t k = 0; k < n; ++k)
      out[k].seen = seen;
    return n;
  }

  /// Blocks, holding no lock, until a commit may have changed a watched object, or the
  /// deadline passes (false); then unregisters the tokens.
  bool wait(std::span<const watch_token> tokens, std::chrono::steady_clock::time_point deadline) {
    using namespace bank_layout;
    watch_table& w = watches();
    bool in_time = true;
    if (!tokens.empty()) {
      const std::uint32_t seen = tokens.front().seen;  // the oldest: any change since counts
      while (w.global.changes.load(std::memory_order_acquire) == seen) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
          in_time = false;
          break;
        }
        const auto left = std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::hours(1));
        timespec ts{};
        ts.tv_sec = static_cast<time_t>(left.count() / 1000000000);
        ts.tv_nsec = static_cast<long>(left.count() % 1000000000);
        // Counted as a sleeper before the last look at `changes` (both sequentially
        // consistent, as `wake_watchers`' bump and its look at `sleepers`): either the
        // waker sees the sleeper and wakes it, or this look sees the bump.
        w.global.sleepers.fetch_add(1, std::memory_order_seq_cst);
        long woken = -1;
        if (w.global.changes.load(std::memory_order_seq_cst) == seen) {
          // Not FUTEX_PRIVATE_FLAG: watchers and committers are in different processes.
          woken = ::syscall(SYS_futex, futex_word(w), FUTEX_WAIT, seen, &ts, nullptr, 0);
        }
        w.global.sleepers.fetch_sub(1, std::memory_order_release);
        if (woken == 0) break;
      }
    }
    for (const watch_token& t : tokens) {
      w.buckets[t.slot % watch_buckets].watchers.fetch_sub(1, std::memory_order_release);
      w.global.watchers.fetch_sub(1, std::memory_order_release);
    }
    return in_time;
  }

 protected:
  static std::uint32_t* futex_word(bank_layout::watch_table& w) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return reinterpret_cast<std::uint32_t*>(&w.global.changes);
  }

  static std::uint32_t watch_bucket(std::uint64_t off) noexcept {
    return static_cast<std::uint32_t>(((off >> 6) * 0x9e3779b97f4a7c15ull >> 32) %
                                      bank_layout::watch_buckets);
  }

  /// Whether the object of read entry `r` still has the version `d` read, and no other
  /// transaction holds it: the writer first, then the version (a released writer's
  /// version is then seen; see the class comment).
  bool unchanged(descriptor_index d, const read_entry& r) const noexcept {
    const bank_layout::object_header& h = header(r.offset);
    const std::uint32_t holder = h.writer.load(std::memory_order_seq_cst);
    if (holder != 0 && holder != d + 1) return false;
    return h.version.load(std::memory_order_seq_cst) == r.version;
  }

  /// After commit released `d`'s locks: wakes the watchers if it wrote an object that
  /// hashes to a bucket with watchers. Without watchers, one plain load (sequentially
  /// consistent, as the class comment needs: a plain load on x86).
  void notify_watchers(descriptor_index d) noexcept {
    using namespace bank_layout;
    watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_seq_cst) == 0) return;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_relaxed);
    const log_entry* log = log_of(d);
    for (std::uint32_t i = 0; i < n; ++i) {
      if (log[i].kind == entry_kind::write &&
          w.buckets[watch_bucket(log[i].offset)].watchers.load(std::memory_order_relaxed) != 0) {
        wake_watchers();
        return;
      }
    }
  }

  /// Wakes every watcher of the pool, if there is one.
  void wake_watchers() noexcept {
    bank_layout::watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_seq_cst) == 0) return;
    w.global.changes.fetch_add(1, std::memory_order_seq_cst);
    // A watcher not yet asleep sees the bump before it sleeps: only a sleeping one
    // needs the system call. (One killed asleep leaves the count up: every wake then
    // makes the call, as all did before the count.)
    if (w.global.sleepers.load(std::memory_order_seq_cst) == 0) return;
    ::syscall(SYS_futex, futex_word(w), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_WAITING_HPP
