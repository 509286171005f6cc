#ifndef FTM_DETAIL_TASK_PROCESS_HPP
#define FTM_DETAIL_TASK_PROCESS_HPP

/// \file
/// The supervisor's child-process handling: forking a task instance that waits for
/// a go-ahead, watching it through a pidfd and its heartbeat lease, killing and
/// reaping it, and waiting for processes that are not our children (an earlier
/// supervisor's instance, a peer supervisor). Nothing here touches the pool: what the
/// pool records about a task is `detail/task_record.hpp`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/heartbeat.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <utility>

#include <poll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

inline int pidfd_open(pid_t pid) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

inline int pidfd_send_signal(int pidfd, int sig) noexcept {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

/// Waits until the process behind `pidfd` has ended (it need not be our child).
inline void wait_pidfd(int pidfd) noexcept {
  pollfd p{pidfd, POLLIN, 0};
  while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
}

/// Kills the process `owner` (pid and start time) if it still runs, and waits for its
/// end; true if it was killed here.
inline bool kill_and_wait(owner_id owner) noexcept {
  if (owner == 0 || owner == self_owner_id() || !owner_alive(owner)) return false;
  const int fd = pidfd_open(owner_pid(owner));
  if (fd < 0) return false;
  bool killed = false;
  // Only once the pidfd is open does "alive" prove it names the same process.
  if (owner_alive(owner)) {
    static_cast<void>(pidfd_send_signal(fd, SIGKILL));
    wait_pidfd(fd);
    killed = true;
  }
  ::close(fd);
  return killed;
}

/// Waits until the process `owner` has ended, polling `stopped()` every `poll`: returns
/// early once it is true.
template <class Stopped>
void wait_for_exit(owner_id owner, std::chrono::milliseconds poll, Stopped stopped) {
  const int fd = pidfd_open(owner_pid(owner));
  if (fd < 0) return;
  // Only once the pidfd is open does "alive" prove it names the same process.
  if (owner_alive(owner)) {
    while (!stopped()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(poll.count())) > 0) break;
    }
  }
  ::close(fd);
}

/// How a task instance ended, as `waitid` tells it.
struct process_end {
  bool exited = false;  // it exited with status `value`; otherwise signal `value` killed it
  int value = 0;
  bool lease_expired = false;  // killed here for missing its heartbeat lease
};

/// One task instance at a time: a child process forked to run the task, its pidfd and
/// its heartbeat page (shared with the child). `start`, `watch` and `reap` are for the
/// supervising thread; `kill`, `signal` and `pid` are safe from any thread.
class task_process {
 public:
  /// `task` names the task in error messages.
  explicit task_process(std::string task) : task_(std::move(task)) {
    void* p = ::mmap(nullptr, sizeof(task_shared), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      throw io_error(
          e, fmt::format("ftm::supervisor: cannot map the heartbeat page: {}", std::strerror(e)));
    }
    shared_ = ::new (p) task_shared{};
  }
  task_process(const task_process&) = delete;
  task_process& operator=(const task_process&) = delete;

  /// Kills and reaps an instance that still runs (it must not outlive its supervisor).
  ~task_process() {
    static_cast<void>(kill());
    if (pid_ > 0) reap();
    if (go_ >= 0) ::close(go_);
    ::munmap(shared_, sizeof(task_shared));
  }

  /// The heartbeat page the instance renews its lease in.
  [[nodiscard]] task_shared* shared() const noexcept { return shared_; }

  /// Forks an instance that dies with the calling thread (`PR_SET_PDEATHSIG`) and
  /// waits, before it runs anything, for `go(start_number)`; then it calls
  /// `main(start_number)` and exits with the status that returns. An instance never
  /// given the go-ahead exits with status 111. Returns its pid.
  template <class Main>
  pid_t start(Main& main) {
    // A socket, not a pipe: a send to an instance killed before it read gives EPIPE
    // (MSG_NOSIGNAL), where a pipe would raise SIGPIPE in the supervisor.
    int go[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go) != 0) fail("make a socket pair");
    shared_->last_beat_ns.store(steady_now_ns(), std::memory_order_relaxed);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      ::close(go[0]);
      ::close(go[1]);
      fail("fork");
    }
    if (pid == 0) {
      ::close(go[1]);
      child(go[0], parent, main);
    }
    ::close(go[0]);
    const int fd = pidfd_open(pid);
    if (fd < 0) {
      ::close(go[1]);  // the child reads end-of-file and leaves
      ::kill(pid, SIGKILL);
      int status = 0;
      ::waitpid(pid, &status, 0);
      fail("open a pidfd on the task");
    }
    const std::lock_guard lock(mutex_);
    pid_ = pid;
    pidfd_ = fd;
    killed_ = false;
    go_ = go[1];
    return pid;
  }

  /// Lets the started instance run, with its start number; or, with `run` false, makes
  /// it exit without running.
  void go(std::uint64_t start_number, bool run = true) noexcept {
    if (go_ < 0) return;
    // A short write only happens if the instance died.
    if (run) static_cast<void>(::send(go_, &start_number, sizeof start_number, MSG_NOSIGNAL));
    ::close(go_);
    go_ = -1;
  }

  /// Whether the instance runs and has not been sent SIGKILL. A dead process's pidfd
  /// stays valid, and signals to it succeed, until it is reaped.
  [[nodiscard]] bool live() const noexcept {
    const std::lock_guard lock(mutex_);
    return live_locked();
  }

  /// Sends SIGKILL to the instance unless it was sent already; true if this call sent it.
  bool kill() noexcept {
    const std::lock_guard lock(mutex_);
    if (pidfd_ < 0 || killed_) return false;
    killed_ = true;
    return pidfd_send_signal(pidfd_, SIGKILL) == 0;
  }

  /// Sends `sig` to the running instance; true only if a live instance was signalled.
  /// The signal never reaches a process that merely reuses the instance's pid.
  bool signal(int sig) noexcept {
    const std::lock_guard lock(mutex_);
    if (!live_locked()) return false;
    if (pidfd_send_signal(pidfd_, sig) != 0) return false;
    if (sig == SIGKILL) killed_ = true;
    return true;
  }

  /// The running instance's pid, or 0 between instances.
  [[nodiscard]] pid_t pid() const noexcept {
    const std::lock_guard lock(mutex_);
    return pidfd_ >= 0 ? pid_ : 0;
  }

  /// Waits for the instance to end, killing it if it does not renew its lease within
  /// `lease` (zero: no lease); reaps it.
  process_end watch(std::chrono::milliseconds lease) {
    bool lease_kill = false;
    bool dying = false;  // SIGKILL was sent: only its end is left to wait for
    const auto lease_ns = std::chrono::nanoseconds(lease).count();
    for (;;) {
      int timeout = -1;
      if (lease_ns > 0 && !dying) {
        const auto left =
            shared_->last_beat_ns.load(std::memory_order_relaxed) + lease_ns - steady_now_ns();
        if (left <= 0) {
          // Hung or stopped: SIGKILL ends a stopped process too. Not a lease kill if
          // the instance was killed already (by `signal` or `kill`).
          lease_kill = kill();
          dying = true;
          continue;
        }
        timeout = static_cast<int>(left / 1'000'000 + 1);
      }
      pollfd p{pidfd_, POLLIN, 0};
      const int r = ::poll(&p, 1, timeout);
      if (r > 0) break;
      if (r < 0 && errno != EINTR) fail("poll the task's pidfd");
    }
    process_end end = reap();
    end.lease_expired = lease_kill && !end.exited && end.value == SIGKILL;
    return end;
  }

  /// Collects the ended instance, so that no trace of it is left when recovery begins.
  process_end reap() {
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED) != 0 && errno == EINTR) {
    }
    process_end end;
    end.exited = info.si_code == CLD_EXITED;
    end.value = info.si_status;
    const std::lock_guard lock(mutex_);
    ::close(pidfd_);
    pidfd_ = -1;
    pid_ = 0;
    return end;
  }

 private:
  bool live_locked() const noexcept {
    if (pidfd_ < 0 || killed_) return false;
    pollfd p{pidfd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 0;  // readable once the process has ended
  }

  /// The child side: dies with the supervisor, waits for its go-ahead, runs `main`.
  template <class Main>
  [[noreturn]] static void child(int go, pid_t parent, Main& main) noexcept {
    // The parent may have died before prctl: then getppid() already names another.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(111);
    std::uint64_t start_number = 0;
    ssize_t n = 0;
    while ((n = ::read(go, &start_number, sizeof start_number)) < 0 && errno == EINTR) {
    }
    ::close(go);
    if (n != static_cast<ssize_t>(sizeof start_number)) ::_exit(111);  // never recorded
    // _exit: the parent's atexit handlers and buffers belong to the parent.
    ::_exit(main(start_number));
  }

  [[noreturn]] void fail(std::string_view what) const {
    const int e = errno;
    throw io_error(
        e, fmt::format("ftm::supervisor: task '{}': cannot {}: {}", task_, what, std::strerror(e)));
  }

  std::string task_;
  task_shared* shared_ = nullptr;
  int go_ = -1;  // the write end of the instance's go-ahead socket, until `go`

  mutable std::mutex mutex_;  // guards what other threads see: the pid and pidfd
  pid_t pid_ = 0;
  int pidfd_ = -1;
  bool killed_ = false;  // the instance was sent SIGKILL: it is dying
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_TASK_PROCESS_HPP
