#ifndef FTM_DETAIL_FAULT_HPP
#define FTM_DETAIL_FAULT_HPP

/// \file
/// Named fault-injection points, compiled in only when `FTM_FAULT_INJECTION` is 1
/// (the crash tests). An armed point kills the calling process with SIGKILL on its
/// k-th hit, which is how a processor failure looks to the pool.

#include <ftm/detail/config.hpp>

#include <array>
#include <atomic>
#include <string_view>

#if defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION
#include <unistd.h>
#include <csignal>
#include <cstdint>
#endif

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Every fault point there is, by engine: the one place that names them. The crash
/// tests sweep these lists, and `fault_points_check` (a test) fails when a point in the
/// code is missing here, or a point here is in no code.
///
/// The bank engine's points (`dual_bank` and `pmem`, at either durability).
inline constexpr std::array<std::string_view, 13> fault_point_names{
    "lock.after_log_entry",   // write intent logged, lock not yet taken
    "open.after_lock",        // lock taken, object not yet handed out
    "alloc.after_bitmap",     // block marked used in the chunk bitmap
    "alloc.after_header",     // object header written, value not yet built
    "free.after_bitmap",      // destroy cleared the bitmap bit
    "commit.before_state",    // writes done, decision not yet stable
    "commit.after_state",     // descriptor is COMMITTING
    "commit.after_mark",      // versions marked odd, second bank not yet changed
    "commit.mid_redo",        // first object copied to the second bank
    "commit.before_release",  // second bank up to date, locks still held
    "abort.mid_undo",         // first object restored from the second bank
    "recover.mid_undo",       // recovery restored one object of an ACTIVE descriptor
    "recover.mid_redo",       // recovery copied one object of a COMMITTING descriptor
};

/// `pmem`'s points at durability `power`: its redo log.
inline constexpr std::array<std::string_view, 7> log_fault_point_names{
    "log.before_append",     // COMMITTING, the record built, not yet appended
    "log.after_append",      // the record appended, perhaps not on the medium
    "log.after_flush",       // the record on the medium, phase 2 not begun
    "log.mid_flush",         // a group commit's flush done, `durable` not yet advanced
    "log.mid_checkpoint",    // the pool flushed, the new epoch not yet written
    "log.recover_replayed",  // opening: the log replayed onto the second bank
    "log.recover_copied",    // opening: the second bank copied to the working bank
};

#if defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION

/// Atomic counts: the points are reached from several threads at once (group commit).
struct fault_state {
  std::string_view armed;                   // empty: nothing armed (set by one thread)
  std::atomic<std::uint64_t> countdown{0};  // hits left before the kill
  std::array<std::atomic<std::uint64_t>, fault_point_names.size()> hits{};
  std::array<std::atomic<std::uint64_t>, log_fault_point_names.size()> log_hits{};
};

inline fault_state& faults() noexcept {
  static fault_state state;
  return state;
}

/// Arms `name`: the process kills itself on the `k`-th hit (k >= 1).
inline void arm_fault(std::string_view name, std::uint64_t k) noexcept {
  faults().armed = name;
  faults().countdown.store(k);
}

inline void disarm_faults() noexcept { faults().armed = {}; }

/// How often `name` was reached in this process. A fork() child starts with its
/// parent's counts.
inline std::uint64_t fault_hits(std::string_view name) noexcept {
  for (std::size_t i = 0; i < fault_point_names.size(); ++i) {
    if (fault_point_names[i] == name) return faults().hits[i].load(std::memory_order_relaxed);
  }
  for (std::size_t i = 0; i < log_fault_point_names.size(); ++i) {
    if (log_fault_point_names[i] == name)
      return faults().log_hits[i].load(std::memory_order_relaxed);
  }
  return 0;
}

/// Called with the name of every fault point reached, if set: the power-loss test
/// builds its crash images there.
inline void (*fault_observer)(std::string_view name) = nullptr;

inline void fault_point(std::string_view name) noexcept {
  auto& f = faults();
  if (fault_observer != nullptr) fault_observer(name);
  for (std::size_t i = 0; i < fault_point_names.size(); ++i) {
    if (fault_point_names[i] == name) f.hits[i].fetch_add(1, std::memory_order_relaxed);
  }
  for (std::size_t i = 0; i < log_fault_point_names.size(); ++i) {
    if (log_fault_point_names[i] == name) f.log_hits[i].fetch_add(1, std::memory_order_relaxed);
  }
  if (!f.armed.empty() && f.armed == name && f.countdown.fetch_sub(1) == 1) {
    ::kill(::getpid(), SIGKILL);
  }
}

#define FTM_FAULT_POINT(name) ::ftm::detail::fault_point(name)

#else

#define FTM_FAULT_POINT(name) static_cast<void>(0)

#endif

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_FAULT_HPP
