#ifndef FTM_ENGINES_REFERENCE_HPP
#define FTM_ENGINES_REFERENCE_HPP

/// \file
/// `ftm::engines::reference`: the smallest engine that keeps `ftm::engine`'s laws, in
/// one process. Start here to write an engine of your own (docs/design.md, "Adding
/// an engine"); the law suite in `tests/laws/` says whether it is right.

#include <ftm/detail/config.hpp>
#include <ftm/detail/layout_diff.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::engines {

/// An in-process engine: a mutex and an undo log. Models `ftm::engine`,
/// `ftm::unlogged_write_engine` and `ftm::watchable_engine`, so `ftm::stable<T>`,
/// `ftm::transaction`, `ftm::atomically`, blocking waits and ports run on it. Not
/// `ftm::fork_shared_engine` (its memory is the process's own, so `ftm::supervisor`
/// refuses it), nor `ftm::session_engine`.
///
/// How it keeps the laws:
/// - Isolation: one transaction at a time. `begin()` waits until no other
///   transaction runs, `commit()` and `abort()` let the next one in. Serializable by
///   construction, and never a conflict; the price is that transactions never overlap.
/// - Atomicity: the first `open_write` of an object saves its bytes in the undo log;
///   so do `allocate`, `deallocate` and `bind_root`, each in its own kind of entry.
///   `abort()` replays the log backwards; `commit()` drops it (and only then frees
///   what the transaction deallocated).
/// - Durability: none beyond the engine object; a commit is visible to every later
///   transaction. Recovery: the process that could die holding a transaction is the
///   one that holds the engine, so `recover()` has nothing to do.
///
/// Objects live in one array allocated up front, addressed by offsets (offset 0 is
/// never an object), placed first-fit. A thread may run one transaction at a time on
/// it: beginning a second while the first runs would wait forever, and is refused.
class reference {
 public:
  /// `close` does nothing: the transaction holds the whole engine until it ends.
  static constexpr bool close_is_noop = true;

  /// An engine with room for `capacity` bytes of objects.
  explicit reference(std::size_t capacity = std::size_t{1} << 20) : memory_(capacity / unit + 2) {
    // Unit 0 stays unused, so that no object is at offset 0.
    free_.emplace(unit, (memory_.size() - 1) * unit);
  }
  reference(const reference&) = delete;
  reference& operator=(const reference&) = delete;

  // ---- transactions (ftm::transactional_engine) ----------------------------------

  tx_id begin(begin_options options = {}) {
    std::unique_lock lock(mutex_);
    if (running_ && holder_ == std::this_thread::get_id()) {
      throw usage_error(
          "reference: this thread already runs a transaction on this engine, which runs one "
          "at a time: a second would wait for the first forever; end the first one");
    }
    idle_.wait(lock, [&] { return !running_; });
    running_ = true;
    holder_ = std::this_thread::get_id();
    current_ = ++last_id_;
    if (options.attempt > 0) ++stats_.retries;
    return current_;
  }

  void commit(tx_id t) {
    std::lock_guard lock(mutex_);
    require_current(t, "commit");
    bool changed = !written_.empty();
    for (const undo_entry& u : undo_) {
      changed = true;
      if (u.what == undo_entry::deallocated) release(u.offset);
    }
    ++stats_.commits;
    if (changed) {
      ++changes_;
      if (waiters_ > 0) changed_.notify_all();
    }
    end_transaction();
  }

  void abort(tx_id t) noexcept {
    std::lock_guard lock(mutex_);
    if (!running_ || t != current_) return;
    for (auto u = undo_.rbegin(); u != undo_.rend(); ++u) {
      switch (u->what) {
        case undo_entry::wrote:
          std::memcpy(at(u->offset), u->before.data(), u->before.size());
          break;
        case undo_entry::allocated: release(u->offset); break;
        case undo_entry::deallocated: objects_.at(u->offset).destroyed = false; break;
        case undo_entry::bound_root: roots_.erase(u->root); break;
      }
    }
    ++stats_.aborts;
    end_transaction();
  }

  // ---- objects (ftm::allocating_engine, ftm::object_engine) ----------------------

  allocation allocate(tx_id t, const object_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "allocate");
    if (type.align > max_stable_alignment) {
      throw invalid_argument(fmt::format("reference: {} needs alignment {}, more than {}",
                                         type.name, type.align, max_stable_alignment));
    }
    const std::uint64_t size = (std::max<std::uint64_t>(type.size, 1) + unit - 1) / unit * unit;
    auto hole = std::find_if(free_.begin(), free_.end(), [&](auto& h) { return h.second >= size; });
    if (hole == free_.end()) {
      throw pool_full(fmt::format("reference: no room for {} ({} bytes) in {} bytes", type.name,
                                  type.size, (memory_.size() - 1) * unit));
    }
    const std::uint64_t offset = hole->first;
    if (hole->second > size) free_.emplace(offset + size, hole->second - size);
    free_.erase(hole);
    objects_.emplace(offset, object{type.size, size, false});
    undo_.push_back({undo_entry::allocated, offset, {}, {}});
    std::memset(at(offset), 0, size);
    return {offset, at(offset)};
  }

  void deallocate(tx_id t, std::uint64_t offset, const object_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "destroy");
    live_object(offset, type, "destroy").destroyed = true;
    undo_.push_back({undo_entry::deallocated, offset, {}, {}});
  }

  void* open_write(tx_id t, std::uint64_t offset, const object_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "open");
    const object& o = live_object(offset, type, "open");
    if (written_.find(offset) == written_.end()) {
      written_.emplace(offset, undo_.size());
      const std::byte* p = at(offset);
      undo_.push_back({undo_entry::wrote, offset, {p, p + o.size}, {}});
    }
    return at(offset);
  }

  const void* open_read(tx_id t, std::uint64_t offset, const object_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "open_read");
    live_object(offset, type, "open_read");
    return at(offset);
  }

  void close(tx_id, std::uint64_t) noexcept {}

  // ---- roots (ftm::rooted_engine) ------------------------------------------------

  std::uint64_t find_root(tx_id t, std::string_view name, const root_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "root");
    require_root_name(name);
    const auto r = roots_.find(name);
    if (r == roots_.end()) return 0;
    if (r->second.fingerprint != type.fingerprint || r->second.size != type.object.size) {
      const std::string why = detail::layout_difference(r->second.layout, type.layout);
      throw type_mismatch(fmt::format(
          "reference: root '{}' holds an object of type {} ({} bytes); the program asked for "
          "type {} ({} bytes){}{}",
          name, r->second.type, r->second.size, type.object.name, type.object.size,
          why.empty() ? "" : ": ", why));
    }
    return r->second.offset;
  }

  void bind_root(tx_id t, std::string_view name, std::uint64_t offset, const root_type& type) {
    std::lock_guard lock(mutex_);
    require_current(t, "root");
    require_root_name(name);
    if (roots_.find(name) != roots_.end()) {
      throw usage_error(fmt::format("reference: root '{}' is already bound", name));
    }
    roots_.emplace(std::string(name),
                   root{offset, type.object.size, type.fingerprint, std::string(type.object.name),
                        std::string(type.layout)});
    undo_.push_back({undo_entry::bound_root, 0, {}, std::string(name)});
  }

  // ---- recovery (ftm::recoverable_engine) ----------------------------------------

  /// Nothing to do: no transaction outlives the process that runs it and the engine.
  recovery_report recover() noexcept { return {}; }

  [[nodiscard]] engine_stats stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
  }

  // ---- ftm::unlogged_write_engine ------------------------------------------------

  /// Writes bytes that an abort keeps: into the object and into its saved image.
  void write_through(tx_id t, std::uint64_t offset, std::size_t at_byte, const void* src,
                     std::size_t n) {
    std::lock_guard lock(mutex_);
    require_current(t, "write_through");
    const auto w = written_.find(offset);
    if (w == written_.end()) {
      throw usage_error(fmt::format(
          "reference: write_through at offset {}: the transaction did not open it for writing",
          offset));
    }
    undo_entry& saved = undo_[w->second];
    if (at_byte > saved.before.size() || n > saved.before.size() - at_byte) {
      throw usage_error(fmt::format(
          "reference: write_through of bytes [{}, {}) of the {}-byte object at offset {}", at_byte,
          at_byte + n, saved.before.size(), offset));
    }
    std::memcpy(at(offset) + at_byte, src, n);
    std::memcpy(saved.before.data() + at_byte, src, n);
  }

  // ---- ftm::watchable_engine -----------------------------------------------------
  //
  // One counter of committed changes stands for every object: a watcher reads it while
  // its transaction holds the engine, so a commit after that changes it, and `wait`
  // sees the change whether it came before the wait or during it.

  watch_token watch(tx_id t, std::uint64_t offset) {
    std::lock_guard lock(mutex_);
    require_current(t, "watch");
    if (objects_.find(offset) == objects_.end()) {
      throw usage_error(fmt::format("reference: watch: no object at offset {}", offset));
    }
    return {0, changes_};
  }

  std::size_t watch_all(tx_id t, std::span<watch_token> out) {
    std::lock_guard lock(mutex_);
    require_current(t, "watch_all");
    if (out.empty()) return 0;
    out[0] = {0, changes_};
    return 1;
  }

  bool wait(std::span<const watch_token> tokens, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    const auto changed = [&] {
      return std::any_of(tokens.begin(), tokens.end(),
                         [&](const watch_token& w) { return w.seen != changes_; });
    };
    ++waiters_;
    bool woken = true;
    if (deadline == std::chrono::steady_clock::time_point::max()) {
      changed_.wait(lock, changed);
    } else {
      woken = changed_.wait_until(lock, deadline, changed);
    }
    --waiters_;
    return woken;
  }

 private:
  /// Objects are placed at multiples of this, so every stable type is aligned.
  static constexpr std::size_t unit = max_stable_alignment;
  struct alignas(unit) unit_storage {
    std::byte bytes[unit];
  };

  struct object {
    std::size_t size;      ///< the type's size
    std::uint64_t extent;  ///< the bytes it occupies, a multiple of `unit`
    bool destroyed;        ///< deallocated by the running transaction
  };

  struct root {
    std::uint64_t offset;
    std::size_t size;
    std::uint64_t fingerprint;
    std::string type;
    std::string layout;
  };

  /// What the running transaction did, to be undone if it aborts.
  struct undo_entry {
    enum kind { wrote, allocated, deallocated, bound_root } what;
    std::uint64_t offset;
    std::vector<std::byte> before;  ///< `wrote`: the object's bytes when first opened
    std::string root;               ///< `bound_root`: its name
  };

  std::byte* at(std::uint64_t offset) noexcept {
    return reinterpret_cast<std::byte*>(memory_.data()) + offset;
  }

  void require_current(tx_id t, std::string_view what) const {
    if (!running_ || t != current_) {
      throw usage_error(
          fmt::format("reference: {}: transaction {} is not the one running", what, t));
    }
  }

  object& live_object(std::uint64_t offset, const object_type& type, std::string_view what) {
    const auto o = objects_.find(offset);
    if (o == objects_.end() || o->second.destroyed) {
      throw usage_error(fmt::format(
          "reference: {}: no object at offset {} (never created, destroyed, or created by a "
          "transaction that never committed)",
          what, offset));
    }
    if (o->second.size != type.size) {
      throw usage_error(
          fmt::format("reference: {}: the object at offset {} has {} bytes, but {} has {} bytes",
                      what, offset, o->second.size, type.name, type.size));
    }
    return o->second;
  }

  static void require_root_name(std::string_view name) {
    if (name.empty()) throw invalid_argument("reference: a root name must not be empty");
  }

  /// Gives an object's bytes back to the free ranges, merged with its neighbours.
  void release(std::uint64_t offset) noexcept {
    const auto o = objects_.find(offset);
    std::uint64_t start = offset;
    std::uint64_t size = o->second.extent;
    objects_.erase(o);
    auto next = free_.lower_bound(start);
    if (next != free_.end() && next->first == start + size) {
      size += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == start) {
        start = prev->first;
        size += prev->second;
        free_.erase(prev);
      }
    }
    free_.emplace(start, size);
  }

  void end_transaction() noexcept {
    undo_.clear();
    written_.clear();
    running_ = false;
    idle_.notify_one();
  }

  std::vector<unit_storage> memory_;
  std::map<std::uint64_t, std::uint64_t> free_;  ///< free ranges: offset -> bytes
  std::map<std::uint64_t, object> objects_;      ///< every object, by offset
  std::map<std::string, root, std::less<>> roots_;

  // The running transaction: every member below is guarded by `mutex_`.
  mutable std::mutex mutex_;
  std::condition_variable idle_;     ///< no transaction runs
  std::condition_variable changed_;  ///< a commit changed something
  bool running_ = false;
  std::thread::id holder_;
  tx_id current_ = 0;
  tx_id last_id_ = 0;
  std::vector<undo_entry> undo_;
  std::unordered_map<std::uint64_t, std::size_t> written_;  ///< offset -> its `wrote` entry
  std::uint32_t changes_ = 0;                               ///< commits that changed something
  std::uint32_t waiters_ = 0;
  engine_stats stats_;
};

}  // namespace ftm::FTM_ABI_NAMESPACE::engines

#endif  // FTM_ENGINES_REFERENCE_HPP
