#ifndef FTM_DETAIL_BANK_WAITING_HPP
#define FTM_DETAIL_BANK_WAITING_HPP

/// \file
/// Waiting for changes: the watchers' table and its futex words, registration, and the
/// wake-up after a commit (or a recovery) that may have changed a watched object.

#include <ftm/detail/bank/descriptors.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
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

/// Waiting for changes (`ftm::watchable_engine`): watchers register in the buckets of
/// the watchers' table (`bank_layout::watch_table`) their objects hash to and sleep on
/// their bucket's futex word, or, when their objects hash to several buckets, on the
/// table's pool-wide word. A commit that wrote a watched object bumps and wakes the
/// words of the buckets it wrote, and the pool-wide word only if a sleeper spread over
/// one of those buckets waits: a sleeper on an unrelated object sleeps on.
///
/// No lost wake-up, without a fence in commit. A watcher registers in its object's
/// bucket (two locked increments: the bucket's count and the pool's), reads the
/// bucket's `changes`, and then checks each object it read: no writer holds it, and its
/// version is the one it read. If not, it does not sleep (its token's `seen` is already
/// out of date). A committer takes the object's lock (a locked compare-and-swap) before
/// it changes it, and checks the counts (a load) after its release, then bumps the
/// bucket's `changes`. Both sides' locked operations and loads are sequentially
/// consistent, so either the committer's check sees the registration and bumps the
/// word (after the watcher's read of it, or before, and then its release came before
/// the watcher's check too), or its lock was taken before the watcher's check, which
/// then sees the writer, or (once released) the new version. An object the watcher
/// holds for writing itself changes under no one else.
///
/// Sleeping, in one bucket: the watcher counts itself in the bucket's `sleepers`, looks
/// at every token's word once more, and sleeps on the bucket's word (FUTEX_WAIT compares
/// it first); the committer bumps the word, then looks at `sleepers`, so either the
/// watcher's last look sees the bump or the committer sees the sleeper and wakes it.
/// Spread over several buckets: the watcher counts itself in each bucket's `spread`,
/// then in `global.sleepers`, reads `global.changes`, looks at every token's word, and
/// sleeps on `global.changes`; the committer bumps the bucket's word, then looks at its
/// `spread`, and if set bumps `global.changes` and then looks at `global.sleepers`. By
/// the same order, either the watcher's look sees the bucket's bump, or the committer
/// sees `spread`, bumps the global word after the watcher read it (its FUTEX_WAIT returns
/// at once) and sees it in `global.sleepers` (and wakes it).
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
    const std::uint32_t seen = w.buckets[b].changes.load(std::memory_order_seq_cst);
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
    for (std::size_t k = 0; k < n; ++k)
      out[k].seen = w.buckets[out[k].slot].changes.load(std::memory_order_seq_cst);
    for (const read_entry& r : set) {
      if (!unchanged(d, r)) {
        for (std::size_t k = 0; k < n; ++k)
          --out[k].seen;  // out of date already: the wait returns at once
        break;
      }
    }
    return n;
  }

  /// Blocks, holding no lock, until a commit may have changed a watched object, or the
  /// deadline passes (false); then unregisters the tokens.
  bool wait(std::span<const watch_token> tokens, std::chrono::steady_clock::time_point deadline) {
    using namespace bank_layout;
    watch_table& w = watches();
    std::uint32_t buckets = 0;  // a bit per bucket of the tokens
    for (const watch_token& t : tokens)
      buckets |= std::uint32_t{1} << (t.slot % watch_buckets);
    const bool spread = std::popcount(buckets) > 1;
    if (spread) {
      for_each_bucket(buckets, [&](std::uint32_t b) {
        w.buckets[b].spread.fetch_add(1, std::memory_order_seq_cst);
      });
    }
    // Whether a commit bumped a token's bucket since the token was made.
    auto changed = [&] {
      return std::any_of(tokens.begin(), tokens.end(), [&](const watch_token& t) {
        return w.buckets[t.slot % watch_buckets].changes.load(std::memory_order_seq_cst) != t.seen;
      });
    };
    bool in_time = true;
    while (!tokens.empty() && !changed()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        in_time = false;
        break;
      }
      const auto left = std::min<std::chrono::nanoseconds>(deadline - now, std::chrono::hours(1));
      timespec ts{};
      ts.tv_sec = static_cast<time_t>(left.count() / 1000000000);
      ts.tv_nsec = static_cast<long>(left.count() % 1000000000);
      // Counted as a sleeper before the last look at the words (see the class comment).
      watch_line& line = spread ? w.global : w.buckets[tokens.front().slot % watch_buckets];
      line.sleepers.fetch_add(1, std::memory_order_seq_cst);
      const std::uint32_t expected =
          spread ? w.global.changes.load(std::memory_order_seq_cst) : tokens.front().seen;
      if (!changed()) {
        // Not FUTEX_PRIVATE_FLAG: watchers and committers are in different processes.
        // Woken or not, the loop looks at the words again: a wake of the pool-wide word
        // may be for another spread sleeper.
        ::syscall(SYS_futex, futex_word(line), FUTEX_WAIT, expected, &ts, nullptr, 0);
      }
      line.sleepers.fetch_sub(1, std::memory_order_release);
    }
    if (spread) {
      for_each_bucket(buckets, [&](std::uint32_t b) {
        w.buckets[b].spread.fetch_sub(1, std::memory_order_release);
      });
    }
    for (const watch_token& t : tokens) {
      w.buckets[t.slot % watch_buckets].watchers.fetch_sub(1, std::memory_order_release);
      w.global.watchers.fetch_sub(1, std::memory_order_release);
    }
    return in_time;
  }

 protected:
  static std::uint32_t* futex_word(bank_layout::watch_line& l) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    return reinterpret_cast<std::uint32_t*>(&l.changes);
  }

  static std::uint32_t watch_bucket(std::uint64_t off) noexcept {
    return static_cast<std::uint32_t>(((off >> 6) * 0x9e3779b97f4a7c15ull >> 32) %
                                      bank_layout::watch_buckets);
  }

  template <class F>
  static void for_each_bucket(std::uint32_t buckets, F f) {
    for (; buckets != 0; buckets &= buckets - 1)
      f(static_cast<std::uint32_t>(std::countr_zero(buckets)));
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

  /// After commit released `d`'s locks: wakes the watchers of the buckets of the
  /// objects it wrote. Without watchers, one plain load (sequentially consistent, as the
  /// class comment needs: a plain load on x86).
  void notify_watchers(descriptor_index d) noexcept {
    using namespace bank_layout;
    watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_seq_cst) == 0) return;
    const std::uint32_t n = descriptor_at(d).count.load(std::memory_order_relaxed);
    const log_entry* log = log_of(d);
    std::uint32_t done = 0;  // a bit per bucket looked at
    bool spread = false;
    for (std::uint32_t i = 0; i < n; ++i) {
      if (log[i].kind != entry_kind::write) continue;
      const std::uint32_t b = watch_bucket(log[i].offset);
      if ((done >> b & 1) != 0) continue;
      done |= std::uint32_t{1} << b;
      if (w.buckets[b].watchers.load(std::memory_order_seq_cst) != 0) spread |= wake_bucket(b);
    }
    if (spread) wake_spread();
  }

  /// Wakes every watcher of the pool, if there is one (after a recovery).
  void wake_watchers() noexcept {
    bank_layout::watch_table& w = watches();
    if (w.global.watchers.load(std::memory_order_seq_cst) == 0) return;
    bool spread = false;
    for (std::uint32_t b = 0; b < bank_layout::watch_buckets; ++b) {
      if (w.buckets[b].watchers.load(std::memory_order_seq_cst) != 0) spread |= wake_bucket(b);
    }
    if (spread) wake_spread();
  }

 private:
  /// Bumps bucket `b`'s word and wakes its sleepers; whether a watcher spread over
  /// several buckets, `b` one of them, sleeps (then the pool-wide word needs a wake).
  bool wake_bucket(std::uint32_t b) noexcept {
    bank_layout::watch_line& l = watches().buckets[b];
    l.changes.fetch_add(1, std::memory_order_seq_cst);
    // A watcher not yet asleep sees the bump before it sleeps: only a sleeping one
    // needs the system call. (One killed asleep leaves the count up: every wake of its
    // bucket then makes the call.)
    if (l.sleepers.load(std::memory_order_seq_cst) != 0) {
      ::syscall(SYS_futex, futex_word(l), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    }
    return l.spread.load(std::memory_order_seq_cst) != 0;
  }

  /// Bumps the pool-wide word and wakes the spread sleepers (each looks at its own
  /// buckets' words and sleeps again if none changed).
  void wake_spread() noexcept {
    bank_layout::watch_line& g = watches().global;
    g.changes.fetch_add(1, std::memory_order_seq_cst);
    if (g.sleepers.load(std::memory_order_seq_cst) != 0) {
      ::syscall(SYS_futex, futex_word(g), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    }
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_WAITING_HPP
