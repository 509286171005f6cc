#ifndef FTM_DETAIL_HEARTBEAT_HPP
#define FTM_DETAIL_HEARTBEAT_HPP

/// \file
/// The heartbeat a supervised task instance renews (see `ftm::supervisor`), apart from
/// the supervisor, so that layers that wait (`ftm::serve`) renew it without depending
/// on process supervision.

#include <ftm/detail/config.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// What the supervisor shares with its task instances: a `MAP_SHARED` anonymous page
/// made before any fork, so it is the same memory in every instance.
struct task_shared {
  std::atomic<std::int64_t> last_beat_ns;  // steady clock, CLOCK_MONOTONIC, system-wide
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free,
              "the heartbeat must be lock-free to be shared between processes");

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

class task_context_base {
 public:
  /// Tells the supervisor this instance is alive and making progress.
  void heartbeat() noexcept {
    shared_->last_beat_ns.store(steady_now_ns(), std::memory_order_relaxed);
  }
  /// The lease the supervisor gave this instance; zero: none.
  [[nodiscard]] std::chrono::milliseconds lease() const noexcept { return lease_; }

 protected:
  task_context_base(task_shared* shared, std::chrono::milliseconds lease) noexcept
      : shared_(shared), lease_(lease) {}

 private:
  task_shared* shared_;
  std::chrono::milliseconds lease_;
};

/// The task context of this process, if it is a task instance.
inline task_context_base*& current_task() noexcept {
  static task_context_base* current = nullptr;
  return current;
}

/// Renews the lease of the task this process runs, if it runs one.
inline void renew_lease() noexcept {
  if (auto* t = current_task()) t->heartbeat();
}

/// How long a loop that waits may go between renewals: a quarter of the lease of the
/// task this process runs, at most `longest` (and `longest` outside a task).
inline std::chrono::steady_clock::duration renewal_slice(
    std::chrono::steady_clock::duration longest) noexcept {
  const task_context_base* t = current_task();
  if (t == nullptr || t->lease().count() <= 0) return longest;
  const std::chrono::steady_clock::duration quarter = t->lease() / 4;
  return std::max(std::min(longest, quarter), std::chrono::steady_clock::duration{1});
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_HEARTBEAT_HPP
