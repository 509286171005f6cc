/// \file
/// The runner: workers share a control block and their counters through an anonymous
/// shared mapping, so the same code serves threads of this process and threads of
/// forked worker processes.

#include "runner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

namespace bench {
namespace {

enum phase : int { starting = -1, warming = 0, measuring = 1, stopping = 2 };
enum worker_state : int { running = 0, finished = 1, failed = 2 };

struct alignas(64) worker_slot {
  std::atomic<std::uint64_t> measured{0};
  std::atomic<std::uint64_t> reads{0};
  std::atomic<std::uint64_t> writes{0};  // writing transactions, warm-up included
  std::atomic<std::uint64_t> done_ns{0};
  std::atomic<std::uint64_t> cpu_ns{0};
  std::atomic<int> ready{0};
  std::atomic<int> state{running};
  char error[256]{};
  histogram latency;
};

struct control {
  std::atomic<int> phase{starting};
};

std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

std::uint64_t thread_cpu_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

/// CPU time of process `pid` so far (user and system), from /proc; 0 if unknown.
std::uint64_t process_cpu_ns(int pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  if (close == std::string::npos) return 0;
  // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
  std::vector<std::string> fields;
  std::size_t at = close + 2;
  while (at < text.size() && fields.size() < 13) {
    const auto end = text.find(' ', at);
    fields.push_back(text.substr(at, end - at));
    if (end == std::string::npos) break;
    at = end + 1;
  }
  if (fields.size() < 13) return 0;
  const auto ticks = std::stoull(fields[11]) + std::stoull(fields[12]);
  return ticks * (1000000000u / static_cast<std::uint64_t>(::sysconf(_SC_CLK_TCK)));
}

/// Shared with forked workers: the control block, then one slot per worker.
class shared_block {
 public:
  explicit shared_block(int workers) : workers_(workers) {
    bytes_ = sizeof(control) + 64 + sizeof(worker_slot) * static_cast<std::size_t>(workers);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
    base_ = static_cast<std::byte*>(p);
    ::new (base_) control{};
    for (int i = 0; i < workers; ++i)
      ::new (&slot(i)) worker_slot{};
  }
  shared_block(const shared_block&) = delete;
  shared_block& operator=(const shared_block&) = delete;
  ~shared_block() { ::munmap(base_, bytes_); }

  control& ctl() noexcept { return *std::launder(reinterpret_cast<control*>(base_)); }
  worker_slot& slot(int i) noexcept {
    return *std::launder(reinterpret_cast<worker_slot*>(
        base_ + 64 + sizeof(worker_slot) * static_cast<std::size_t>(i)));
  }
  int workers() const noexcept { return workers_; }

 private:
  int workers_;
  std::size_t bytes_ = 0;
  std::byte* base_ = nullptr;
};

/// The body of one worker thread.
void work(system& sys, const options& o, shared_block& shared, int index, std::uint64_t quota) {
  worker_slot& me = shared.slot(index);
  auto& phase_word = shared.ctl().phase;
  try {
    auto w = sys.make_worker(index);
    random r(o.seed * 0x100000001b3ull + static_cast<std::uint64_t>(index) + 1);
    me.ready.store(1, std::memory_order_release);
    while (phase_word.load(std::memory_order_acquire) == starting)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    bool measured_phase = false;
    std::uint64_t prev = 0, cpu0 = 0, measured = 0, reads = 0, writes = 0;
    for (;;) {
      const int ph = phase_word.load(std::memory_order_relaxed);
      if (ph == stopping) break;
      if (ph == measuring && !measured_phase) {
        measured_phase = true;
        cpu0 = thread_cpu_ns();
        prev = now_ns();
      }
      const bool read_only = w->run_one(r);
      if (!read_only) me.writes.store(++writes, std::memory_order_relaxed);
      if (measured_phase) {
        const std::uint64_t t = now_ns();
        me.latency.record(t - prev);
        prev = t;
        if (read_only) me.reads.store(++reads, std::memory_order_relaxed);
        me.measured.store(++measured, std::memory_order_relaxed);
        if (quota != 0 && measured == quota) break;
      }
    }
    me.cpu_ns.store(measured_phase ? thread_cpu_ns() - cpu0 : 0, std::memory_order_relaxed);
    me.done_ns.store(now_ns(), std::memory_order_relaxed);
    me.state.store(finished, std::memory_order_release);
  } catch (const std::exception& e) {
    std::snprintf(me.error, sizeof me.error, "%s", e.what());
    me.ready.store(1, std::memory_order_release);
    me.state.store(failed, std::memory_order_release);
    phase_word.store(stopping, std::memory_order_release);
  }
}

/// The workers of one process: threads, joined before returning.
void work_in_threads(system& sys, const options& o, shared_block& shared, int first, int threads,
                     std::uint64_t total_quota) {
  std::vector<std::thread> pool;
  const auto workers = static_cast<std::uint64_t>(shared.workers());
  for (int t = 0; t < threads; ++t) {
    const int index = first + t;
    std::uint64_t quota = 0;
    if (total_quota != 0) {
      const auto i = static_cast<std::uint64_t>(index);
      quota = total_quota / workers + (i < total_quota % workers ? 1 : 0);
      if (quota == 0) {  // more workers than transactions: this one has none to run
        shared.slot(index).ready.store(1);
        shared.slot(index).state.store(finished);
        continue;
      }
    }
    pool.emplace_back([&, index, quota] { work(sys, o, shared, index, quota); });
  }
  for (auto& t : pool)
    t.join();
}

class progress_line {
 public:
  explicit progress_line(const options& o) : on_(o.progress && ::isatty(STDERR_FILENO) != 0) {}
  void show(const std::string& text) {
    if (on_) fmt::print(stderr, "\r\033[K{}", text);
  }
  void clear() {
    if (on_) fmt::print(stderr, "\r\033[K");
  }

 private:
  bool on_;
};

}  // namespace

run_result run(system& sys, const options& o, int threads) {
  const int workers = threads * o.processes;
  run_result out;
  out.system = sys.name();
  out.threads = threads;
  out.processes = o.processes;
  out.workers = workers;
  progress_line line(o);
  line.show(
      fmt::format("{}: setting up {} worker{}", out.system, workers, workers == 1 ? "" : "s"));
  sys.setup(workers);
  shared_block shared(workers);
  auto& phase_word = shared.ctl().phase;

  std::vector<pid_t> children;
  std::thread local;
  if (o.processes == 1) {
    local = std::thread([&] { work_in_threads(sys, o, shared, 0, threads, o.transactions); });
  } else {
    if (!sys.forkable())
      throw usage_error(fmt::format("{} cannot run in several processes", out.system));
    std::fflush(nullptr);
    for (int p = 0; p < o.processes; ++p) {
      const pid_t pid = ::fork();
      if (pid < 0) {
        phase_word.store(stopping);
        throw std::system_error(errno, std::generic_category(), "fork a worker process");
      }
      if (pid == 0) {
        work_in_threads(sys, o, shared, p * threads, threads, o.transactions);
        ::_exit(0);  // the parent owns the pool: no destructors here
      }
      children.push_back(pid);
    }
  }
  auto join = [&] {
    if (local.joinable()) local.join();
    for (const pid_t pid : children) {
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        throw std::runtime_error(fmt::format("a worker process ended with status {:#x}", status));
      }
    }
    children.clear();
  };
  auto first_error = [&]() -> std::string {
    for (int i = 0; i < workers; ++i) {
      if (shared.slot(i).state.load(std::memory_order_acquire) == failed) {
        return fmt::format("worker {}: {}", i, shared.slot(i).error);
      }
    }
    return {};
  };
  auto fail = [&](const std::string& why) {
    phase_word.store(stopping);
    join();
    line.clear();
    sys.teardown();
    throw std::runtime_error(why);
  };

  // A worker process that died (a crash, a kill) never reports: notice it by its exit.
  auto child_died = [&]() -> std::string {
    for (auto it = children.begin(); it != children.end(); ++it) {
      int status = 0;
      if (::waitpid(*it, &status, WNOHANG) == *it) {
        children.erase(it);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          return fmt::format("a worker process ended with status {:#x}", status);
        }
        return {};
      }
    }
    return {};
  };

  // Every worker made (sessions attached, connections opened) before the clock starts.
  const auto start_deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  for (bool all = false; !all;) {
    all = true;
    for (int i = 0; i < workers; ++i)
      all = all && shared.slot(i).ready.load(std::memory_order_acquire) != 0;
    if (auto e = child_died(); !e.empty()) fail(e);
    if (!all && std::chrono::steady_clock::now() > start_deadline) {
      fail("the workers did not start within 5 minutes");
    }
    if (!all) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (auto e = first_error(); !e.empty()) fail(e);

  using clock = std::chrono::steady_clock;
  phase_word.store(warming, std::memory_order_release);
  const auto warm_end = clock::now() + std::chrono::duration_cast<clock::duration>(
                                           std::chrono::duration<double>(o.warmup));
  while (clock::now() < warm_end && first_error().empty()) {
    line.show(
        fmt::format("{}, {} worker{}: warming up", out.system, workers, workers == 1 ? "" : "s"));
    std::this_thread::sleep_for(std::min<clock::duration>(
        std::chrono::milliseconds(100),
        std::chrono::duration_cast<clock::duration>(warm_end - clock::now())));
  }
  const auto before = sys.aborts();
  const int server = sys.server_pid();
  const std::uint64_t server_cpu0 = server > 0 ? process_cpu_ns(server) : 0;
  const std::uint64_t t0 = now_ns();
  phase_word.store(measuring, std::memory_order_release);

  auto measured_so_far = [&] {
    std::uint64_t n = 0;
    for (int i = 0; i < workers; ++i)
      n += shared.slot(i).measured.load(std::memory_order_relaxed);
    return n;
  };
  auto all_finished = [&] {
    for (int i = 0; i < workers; ++i) {
      if (shared.slot(i).state.load(std::memory_order_acquire) == running) return false;
    }
    return true;
  };
  std::uint64_t t1 = 0;
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (auto e = first_error(); !e.empty()) fail(e);
    if (auto e = child_died(); !e.empty()) fail(e);
    const std::uint64_t t = now_ns();
    const double elapsed = static_cast<double>(t - t0) / 1e9;
    const auto now_aborts = sys.aborts();
    const std::uint64_t n = measured_so_far();
    line.show(fmt::format(
        "{}, {} worker{}: {:.0f} tx/s{}, {:.1f} s", out.system, workers, workers == 1 ? "" : "s",
        static_cast<double>(n) / elapsed,
        before && now_aborts
            ? fmt::format(", {:.0f} aborts/s",
                          static_cast<double>(now_aborts->aborts - before->aborts) / elapsed)
            : std::string(),
        elapsed));
    if (o.transactions == 0 && elapsed >= o.duration) {
      phase_word.store(stopping, std::memory_order_release);
      t1 = now_ns();
      break;
    }
    if (o.transactions != 0 && all_finished()) {
      phase_word.store(stopping, std::memory_order_release);
      for (int i = 0; i < workers; ++i)
        t1 = std::max(t1, shared.slot(i).done_ns.load());
      break;
    }
  }
  const std::uint64_t server_cpu1 = server > 0 ? process_cpu_ns(server) : 0;
  join();
  line.clear();
  if (auto e = first_error(); !e.empty()) {
    sys.teardown();
    throw std::runtime_error(e);
  }
  const auto after = sys.aborts();

  out.seconds = static_cast<double>(t1 - t0) / 1e9;
  std::uint64_t writes = 0, cpu = 0;
  for (int i = 0; i < workers; ++i) {
    worker_slot& s = shared.slot(i);
    out.transactions += s.measured.load();
    out.read_only += s.reads.load();
    writes += s.writes.load();
    cpu += s.cpu_ns.load();
    out.latency.merge(s.latency);
  }
  out.cpu_seconds = static_cast<double>(cpu + (server_cpu1 - server_cpu0)) / 1e9;
  if (before && after) {
    out.counts_aborts = true;
    out.aborts = after->aborts - before->aborts;
    out.conflicts = after->conflicts - before->conflicts;
    out.retries = after->retries - before->retries;
  }
  if (o.check) {
    out.checked = true;
    try {
      out.check = sys.check(writes + (o.miscount_for_test ? 1 : 0));
    } catch (const std::exception& e) {
      out.check = {false, fmt::format("the check failed: {}", e.what())};
    }
  }
  sys.teardown();
  return out;
}

}  // namespace bench
