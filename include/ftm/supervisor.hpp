#ifndef FTM_SUPERVISOR_HPP
#define FTM_SUPERVISOR_HPP

/// \file
/// Stable tasks and failover (the paper's backup processor): `ftm::supervisor` runs
/// an entry point in a child process attached to a pool, watches it through a pidfd
/// and a heartbeat lease, and when it dies recovers the pool and starts the entry
/// point again from the beginning, within OTP-style restart limits.

#include <ftm/detail/config.hpp>
#include <ftm/detail/heartbeat.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/detail/task_process.hpp>
#include <ftm/detail/task_record.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

#include <sys/types.h>

namespace ftm::FTM_ABI_NAMESPACE {

/// How a task process ended.
struct exit_cause {
  enum class kind : std::uint8_t {
    none,    ///< no instance has ended yet
    exited,  ///< it called exit (or returned from its entry point): `value` is the status
    killed,  ///< a signal ended it: `value` is the signal number
  };
  kind how = kind::none;
  int value = 0;
  /// The supervisor killed it because it missed its heartbeat lease.
  bool lease_expired = false;

  [[nodiscard]] bool normal() const noexcept { return how == kind::exited && value == 0; }
};

/// At most `max_restarts` restarts within any `period`; one more and the supervisor
/// gives up (OTP's restart intensity).
struct restart_intensity {
  std::uint32_t max_restarts = 3;
  std::chrono::milliseconds period{5000};
};

/// Which ends of a task call for a restart (OTP's child restart types).
enum class restart_policy {
  transient,  ///< restart after an abnormal end only; an exit with status 0 completes
  permanent,  ///< restart after every end, even an exit with status 0
};

/// When `supervisor::run_as_backup()` takes a task that no live process supervises.
enum class claim_policy {
  now,            ///< at once, as `run()` does
  if_unclaimed,   ///< also at once if no supervisor ever claimed it (a node's own task)
  after_failure,  ///< only once a supervisor that claimed it has died (the peer's task)
};

/// How a supervisor runs its task.
struct task_options {
  /// Names the task in reports and its record in the pool (root `ftm.task.<name>`):
  /// a new supervisor with the same name on the same pool takes the task over.
  std::string name = "task";
  /// A live task must call `heartbeat()` at least this often, or it is killed as hung;
  /// zero: no lease, only death is detected.
  std::chrono::milliseconds lease{0};
  restart_intensity intensity{};
  restart_policy restart = restart_policy::transient;
};

/// What a supervisor has done so far. Printable with fmt.
struct task_stats {
  std::string name;
  std::uint64_t starts = 0;       ///< instances this supervisor started
  std::uint64_t restarts = 0;     ///< starts after the first
  std::uint64_t recoveries = 0;   ///< `recover()` calls, at take-over and after each end
  std::uint64_t lease_kills = 0;  ///< instances killed for missing their lease
  std::uint64_t took_over = 0;    ///< instances of an earlier supervisor killed at take-over
  std::uint64_t pool_starts = 0;  ///< instances started on this pool, by every supervisor
  exit_cause last_exit{};
  std::chrono::nanoseconds last_recovery_time{0};
  recovery_report last_recovery{};
  recovery_report recovered{};  ///< summed over every recovery
};

/// Why `supervisor::run()` returned.
enum class supervision_outcome {
  completed,  ///< the task ended normally (transient tasks)
  gave_up,    ///< the restart limit was reached
  stopped,    ///< `stop()` was called
};

/// The result of `supervisor::run()`. Printable with fmt: a task that gave up reads
/// "task 'counter' gave up after 3 restarts: it may restart at most 3 times within
/// 5000 ms; last exit: exited with status 3".
struct supervision_report {
  supervision_outcome outcome = supervision_outcome::completed;
  restart_intensity intensity{};
  task_stats stats{};
};

/// What a running task instance is given: its name, which start of the task it is,
/// and the heartbeat that keeps its lease.
class task_context : public detail::task_context_base {
 public:
  task_context(detail::task_shared* shared, std::string_view name, std::uint64_t start,
               std::chrono::milliseconds lease = {}) noexcept
      : task_context_base(shared, lease), name_(name), start_(start) {}

  [[nodiscard]] std::string_view name() const noexcept { return name_; }
  /// 1 for the first instance ever started on this pool, counted across supervisors.
  [[nodiscard]] std::uint64_t start_number() const noexcept { return start_; }
  /// True if an earlier instance ran (and died, or was killed) before this one.
  [[nodiscard]] bool restarted() const noexcept { return start_ > 1; }

 private:
  std::string_view name_;
  std::uint64_t start_;
};

/// Renews the lease of the task this process runs; does nothing outside a task.
/// For code deep inside a task that has no `task_context` at hand.
inline void heartbeat() noexcept { detail::renew_lease(); }

/// A task's entry point: called with the pool and the instance's context.
template <class F, class E>
concept task_entry = std::invocable<F&, E&, task_context&> || std::invocable<F&, E&>;

/// Runs a stable task and keeps it running: the paper's backup processor.
///
/// `run()` forks a child process that calls the entry point on the same engine object
/// (for `dual_bank` the memfd mapping, for `pmem` the file mapping, both `MAP_SHARED`
/// and so inherited by the child). It watches the child with a pidfd. When the child
/// ends, it reaps it, calls `engine.recover()`, which undoes the transactions the child
/// left active, and forks a new child that starts the entry point from the beginning.
/// A child that does not call `heartbeat()` within the lease (hung, or stopped with
/// SIGSTOP) is killed with SIGKILL and reaped first: recovery only begins once the
/// process is gone, so two instances never run at once.
///
/// The entry point's effects on stable objects happen once per committed transaction;
/// it may itself run many times, so it must find its progress in the pool, not in
/// its own memory.
///
/// Laws the compiler cannot check:
/// - An instance runs only after the pool records it (root `ftm.task.<name>`); it dies
///   with the supervisor that started it (`PR_SET_PDEATHSIG`, set by the thread that
///   calls `run()`, which must outlive the task).
/// - A new supervisor on the same pool with the same task name kills the instance the
///   pool records, if it still runs, and waits for its end before it recovers.
/// - At most one live process supervises a task: the pool records it, `run()` is
///   refused while another live process holds the task, and `run_as_backup()` waits
///   for that process to die (paired nodes).
/// - A pool whose last user dies is gone with `dual_bank`: take-over by a new
///   supervisor needs a pool that outlives processes, like `pmem`.
template <engine E>
class supervisor {
  static_assert(fork_shared_engine<E>,
                "ftm::supervisor requires an engine that models ftm::fork_shared_engine: it "
                "runs the task in a forked child and, when the child dies, recovers the "
                "child's transactions in the parent, so the child must share the engine's "
                "state; an in-process engine (ftm::engines::reference) cannot; use "
                "ftm::engines::dual_bank or ftm::engines::pmem");

 public:
  /// Supervises `entry`, called as `entry(engine, context)` or `entry(engine)`.
  /// Throws `ftm::invalid_argument` for a bad name or limits.
  template <class F>
  requires task_entry<F, E> supervisor(E& engine, task_options options, F entry)
      : engine_(&engine), options_(std::move(options)), process_(options_.name) {
    static_assert(std::is_copy_constructible_v<F>,
                  "ftm::supervisor requires the entry point to be copyable: it is called "
                  "again, from the beginning, in every new instance of the task");
    if constexpr (std::invocable<F&, E&, task_context&>) {
      entry_ = std::move(entry);
    } else {
      entry_ = [f = std::move(entry)](E& e, task_context&) mutable { f(e); };
    }
    record_name_ = fmt::format("{}{}", detail::task_record_prefix, options_.name);
    if (options_.name.empty() || record_name_.size() > max_record_name) {
      throw invalid_argument(
          fmt::format("ftm::supervisor: the task name '{}' must have 1 to {} characters",
                      options_.name, max_record_name - detail::task_record_prefix.size()));
    }
    if (options_.intensity.period.count() <= 0) {
      throw invalid_argument(fmt::format(
          "ftm::supervisor: task '{}': the restart period must be positive", options_.name));
    }
    stats_.name = options_.name;
  }

  supervisor(const supervisor&) = delete;
  supervisor& operator=(const supervisor&) = delete;

  /// Kills a task instance that still runs (it must not outlive its supervisor).
  ~supervisor() {
    const std::lock_guard lock(mutex_);
    stop_ = true;
    static_cast<void>(process_.kill());  // `process_` reaps it when it is destroyed
  }

  /// Takes the task over on the pool, then runs and restarts it until it completes,
  /// reaches its restart limit, or `stop()` is called. Blocks the calling thread,
  /// which must live as long as the task (it is the task's parent for
  /// `PR_SET_PDEATHSIG`). Throws `ftm::usage_error` if another live process
  /// supervises the task, `ftm::io_error` if a process cannot be made.
  supervision_report run() {
    const detail::task_claim c = claim_task(claim_policy::now);
    if (c.holder != 0) {
      throw usage_error(
          fmt::format("ftm::supervisor: task '{}' is already supervised by process {}",
                      options_.name, detail::owner_pid(c.holder)));
    }
    return supervise(c.previous);
  }

  /// Backs the task up (the paper's dynamic redundancy): waits while another live
  /// process supervises it, then takes it over and runs it as `run()` does. With
  /// `claim_policy::after_failure` it also waits while no supervisor ever claimed the
  /// task, so a backup started before the task's own node does not take it first.
  /// A task that completed, or whose supervisor gave up, is not taken over: returns
  /// that outcome at once. `stop()` ends the wait (`stopped`).
  supervision_report run_as_backup(claim_policy policy = claim_policy::after_failure) {
    for (;;) {
      {
        const std::lock_guard lock(mutex_);
        if (stop_) return report(supervision_outcome::stopped);
      }
      const detail::task_claim c = claim_task(policy);
      if (c.finished != detail::task_end::running) {
        return report(c.finished == detail::task_end::completed ? supervision_outcome::completed
                                                                : supervision_outcome::gave_up);
      }
      if (c.holder == 0) return supervise(c.previous);
      if (c.holder == detail::unclaimed_task) {
        std::this_thread::sleep_for(backup_poll);
      } else {
        detail::wait_for_exit(c.holder, backup_poll, [this] {
          const std::lock_guard lock(mutex_);
          return stop_;
        });
      }
    }
  }

  /// Makes `run()` kill the running instance, recover, and return `stopped`.
  /// Safe to call from any thread, before or during `run()`.
  void stop() noexcept {
    const std::lock_guard lock(mutex_);
    stop_ = true;
    static_cast<void>(process_.kill());
  }

  /// Sends `sig` to the running instance; true only if a live instance was signalled:
  /// false if none runs, or if the instance has ended or was sent SIGKILL already (it
  /// is dying, not yet reaped). So each `signal_task(SIGKILL)` that returns true ends
  /// one instance, and is followed by one restart (within the restart limits). Safe
  /// from any thread: the signal never reaches a process that merely reuses the
  /// instance's pid.
  bool signal_task(int sig) noexcept { return process_.signal(sig); }

  /// The running instance's pid, or 0 between instances.
  [[nodiscard]] pid_t task_pid() const noexcept { return process_.pid(); }

  /// A snapshot of what the supervisor did so far; safe from any thread.
  [[nodiscard]] task_stats stats() const {
    const std::lock_guard lock(mutex_);
    return stats_;
  }

  [[nodiscard]] const task_options& options() const noexcept { return options_; }

 private:
  static constexpr std::size_t max_record_name = 47;  // a root name's limit

  supervision_report report(supervision_outcome outcome) const {
    return {outcome, options_.intensity, stats_};
  }

  static constexpr std::chrono::milliseconds backup_poll{50};

  /// Claims the task in the pool (see `detail::claim_task`).
  detail::task_claim claim_task(claim_policy policy) {
    return detail::claim_task(*engine_, record_name_,
                              {.backup = policy != claim_policy::now,
                               .after_failure = policy == claim_policy::after_failure});
  }

  /// Records how the task ended, so that backups leave a finished task alone.
  supervision_report finish(supervision_outcome outcome) {
    if (outcome != supervision_outcome::stopped) {
      detail::record_end(*engine_, record_name_,
                         outcome == supervision_outcome::completed ? detail::task_end::completed
                                                                   : detail::task_end::gave_up);
    }
    return report(outcome);
  }

  /// Runs the claimed task: see `run()`.
  supervision_report supervise(detail::owner_id previous) {
    take_over(previous);
    std::deque<std::chrono::steady_clock::time_point> recent;  // restart times
    for (;;) {
      start_instance();
      const exit_cause cause = watch();
      recover();
      {
        const std::lock_guard lock(mutex_);
        stats_.last_exit = cause;
        if (stop_) return report(supervision_outcome::stopped);
      }
      if (cause.normal() && options_.restart == restart_policy::transient) {
        return finish(supervision_outcome::completed);
      }
      const auto now = std::chrono::steady_clock::now();
      while (!recent.empty() && now - recent.front() > options_.intensity.period)
        recent.pop_front();
      if (recent.size() >= options_.intensity.max_restarts) {
        return finish(supervision_outcome::gave_up);
      }
      recent.push_back(now);
      const std::lock_guard lock(mutex_);
      ++stats_.restarts;
    }
  }

  /// Makes sure no instance started by an earlier supervisor still runs, then recovers
  /// what it left. The child of a dead supervisor is killed by `PR_SET_PDEATHSIG`, but
  /// that signal may still be on its way when a new supervisor starts, or the task
  /// may have cleared it.
  void take_over(detail::owner_id previous) {
    if (detail::kill_and_wait(previous)) {
      const std::lock_guard lock(mutex_);
      ++stats_.took_over;
    }
    recover();
  }

  void recover() {
    const auto t0 = std::chrono::steady_clock::now();
    const recovery_report r = engine_->recover();
    const auto t1 = std::chrono::steady_clock::now();
    const std::lock_guard lock(mutex_);
    ++stats_.recoveries;
    stats_.last_recovery = r;
    stats_.last_recovery_time = t1 - t0;
    stats_.recovered.undone += r.undone;
    stats_.recovered.redone += r.redone;
    stats_.recovered.locks_released += r.locks_released;
  }

  /// Forks an instance, records it in the pool, and only then lets it run: an instance
  /// the pool does not name never runs the entry point.
  void start_instance() {
    auto main = [this](std::uint64_t start_number) noexcept { return run_entry(start_number); };
    const pid_t pid = process_.start(main);
    bool stop_now = false;
    {
      const std::lock_guard lock(mutex_);
      stop_now = stop_;
      ++stats_.starts;
    }
    std::uint64_t start_number = 0;
    try {
      const detail::owner_id owner =
          detail::make_owner_id(pid, detail::read_proc_stat(pid).start_time);
      start_number = detail::record_start(*engine_, record_name_, owner);
    } catch (...) {
      process_.go(0, false);
      throw;  // ~supervisor kills and reaps the child
    }
    {
      const std::lock_guard lock(mutex_);
      stats_.pool_starts = start_number;
    }
    if (stop_now) static_cast<void>(process_.kill());
    process_.go(start_number);
  }

  /// The instance's side, once the pool records it: runs the entry point and returns
  /// the process's exit status.
  int run_entry(std::uint64_t start_number) noexcept {
    task_context context(process_.shared(), options_.name, start_number, options_.lease);
    detail::current_task() = &context;
    context.heartbeat();
    int status = 0;
    try {
      entry_(*engine_, context);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ftm: task '%s' failed: %s\n", options_.name.c_str(), e.what());
      status = 1;
    } catch (...) {
      std::fprintf(stderr, "ftm: task '%s' failed: an unknown exception\n", options_.name.c_str());
      status = 1;
    }
    std::fflush(stderr);
    return status;
  }

  /// Waits for the instance to end, killing it if its lease expires; reaps it.
  exit_cause watch() {
    const detail::process_end end = process_.watch(options_.lease);
    exit_cause cause;
    cause.how = end.exited ? exit_cause::kind::exited : exit_cause::kind::killed;
    cause.value = end.value;
    cause.lease_expired = end.lease_expired;
    if (end.lease_expired) {
      const std::lock_guard lock(mutex_);
      ++stats_.lease_kills;
    }
    return cause;
  }

  E* engine_;
  task_options options_;
  std::function<void(E&, task_context&)> entry_;
  std::string record_name_;
  detail::task_process process_;  // the running instance

  mutable std::mutex mutex_;  // guards what other threads see: stop_, stats_
  bool stop_ = false;
  task_stats stats_;
};

}  // namespace ftm::FTM_ABI_NAMESPACE

/// "exited with status 3", "killed by SIGKILL", "killed by SIGKILL (its 200 ms lease
/// expired)".
template <>
struct fmt::formatter<ftm::exit_cause> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::exit_cause& c, FormatContext& ctx) const {
    switch (c.how) {
      case ftm::exit_cause::kind::none: return fmt::format_to(ctx.out(), "none yet");
      case ftm::exit_cause::kind::exited:
        return fmt::format_to(ctx.out(), "exited with status {}", c.value);
      case ftm::exit_cause::kind::killed: break;
    }
    const char* abbrev = ::sigabbrev_np(c.value);
    auto out = abbrev != nullptr ? fmt::format_to(ctx.out(), "killed by SIG{}", abbrev)
                                 : fmt::format_to(ctx.out(), "killed by signal {}", c.value);
    if (c.lease_expired) out = fmt::format_to(out, " (its heartbeat lease expired)");
    return out;
  }
};

template <>
struct fmt::formatter<ftm::task_stats> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::task_stats& s, FormatContext& ctx) const {
    return fmt::format_to(
        ctx.out(),
        "task '{}': starts: {}, restarts: {}, recoveries: {}, lease kills: {}, taken over: {}, "
        "starts on the pool: {}, last exit: {}, last recovery: {:.1f} us ({}), recovered in all: "
        "{}",
        s.name, s.starts, s.restarts, s.recoveries, s.lease_kills, s.took_over, s.pool_starts,
        s.last_exit, std::chrono::duration<double, std::micro>(s.last_recovery_time).count(),
        s.last_recovery, s.recovered);
  }
};

template <>
struct fmt::formatter<ftm::supervision_report> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::supervision_report& r, FormatContext& ctx) const {
    const auto& s = r.stats;
    switch (r.outcome) {
      case ftm::supervision_outcome::completed:
        return fmt::format_to(ctx.out(), "task '{}' completed after {} restarts; last exit: {}",
                              s.name, s.restarts, s.last_exit);
      case ftm::supervision_outcome::stopped:
        return fmt::format_to(ctx.out(), "task '{}' stopped after {} restarts; last exit: {}",
                              s.name, s.restarts, s.last_exit);
      case ftm::supervision_outcome::gave_up: break;
    }
    return fmt::format_to(ctx.out(),
                          "task '{}' gave up after {} restarts: it may restart at most {} times "
                          "within {} ms; last exit: {}",
                          s.name, s.restarts, r.intensity.max_restarts, r.intensity.period.count(),
                          s.last_exit);
  }
};

#endif  // FTM_SUPERVISOR_HPP
