#ifndef FTM_DETAIL_PROCESS_HPP
#define FTM_DETAIL_PROCESS_HPP

/// \file
/// Who owns a transaction, and whether that owner is still alive. An owner is a
/// process named by its pid and its start time, so a recycled pid is not mistaken
/// for the process that died.

#include <ftm/detail/config.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// (start time << 22) | pid, never 0: fits a 64-bit word, so a slot is claimed
/// and released by one atomic store. Linux pids are below 2^22.
using owner_id = std::uint64_t;
inline constexpr int pid_bits = 22;

struct proc_stat {
  bool exists = false;
  char state = '?';
  std::uint64_t start_time = 0;  // clock ticks since boot
};

inline proc_stat read_proc_stat(pid_t pid) noexcept {
  proc_stat r;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  std::FILE* f = std::fopen(path, "re");
  if (f == nullptr) return r;
  char buf[1024];
  std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  // The command name may hold spaces and parentheses: fields restart after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return r;
  r.exists = true;
  r.state = p[2];
  int field = 3;
  for (const char* q = p + 2; *q != '\0'; ++q) {
    if (*q == ' ') {
      ++field;
      if (field == 22) {
        r.start_time = std::strtoull(q + 1, nullptr, 10);
        break;
      }
    }
  }
  return r;
}

inline owner_id make_owner_id(pid_t pid, std::uint64_t start_time) noexcept {
  return (start_time << pid_bits) | static_cast<std::uint64_t>(pid);
}

inline pid_t owner_pid(owner_id id) noexcept {
  return static_cast<pid_t>(id & ((std::uint64_t{1} << pid_bits) - 1));
}

/// The calling process's owner id, cached; a fork() child recomputes its own.
inline std::atomic<owner_id>& self_cache() noexcept {
  static std::atomic<owner_id> id{0};
  return id;
}

/// Computes and caches the id (the first time, and in a fork() child): out of line.
[[gnu::noinline]] inline owner_id compute_self_owner_id() noexcept {
  static const bool registered = [] {
    ::pthread_atfork(nullptr, nullptr, [] { self_cache().store(0, std::memory_order_relaxed); });
    return true;
  }();
  static_cast<void>(registered);
  const pid_t pid = ::getpid();
  const owner_id id = make_owner_id(pid, read_proc_stat(pid).start_time);
  self_cache().store(id, std::memory_order_relaxed);
  return id;
}

/// One load once cached (every session's transaction asks, in `begin_attached`).
inline owner_id self_owner_id() noexcept {
  const owner_id id = self_cache().load(std::memory_order_relaxed);
  return id != 0 ? id : compute_self_owner_id();
}

/// False once the owner has exited, is a zombie, or its pid now names another process.
inline bool owner_alive(owner_id id) noexcept {
  if (id == 0) return false;
  if (id == self_owner_id()) return true;
  pid_t pid = owner_pid(id);
  auto st = read_proc_stat(pid);
  if (!st.exists || st.state == 'Z' || st.state == 'X') return false;
  return make_owner_id(pid, st.start_time) == id;
}

/// This boot of the machine: owner ids (pid, start time) only mean something within
/// one boot, so a pool that outlives a reboot has no living owners.
inline std::string current_boot_id() {
  std::string id;
  if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "re")) {
    char buf[64] = {};
    if (std::fgets(buf, sizeof buf, f) != nullptr) id = buf;
    std::fclose(f);
  }
  while (!id.empty() && (id.back() == '\n' || id.back() == ' '))
    id.pop_back();
  return id;
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

/// A system-wide monotonic timestamp: orders transactions for wait-die without a
/// shared counter (no global clock on the path of disjoint transactions).
inline std::uint64_t timestamp() noexcept {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PROCESS_HPP
