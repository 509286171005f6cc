/// \file
/// The issue-3 benchmark: stable ports and reliable servers, side by side with a
/// lock-and-condition-variable queue that is not transactional, in one binary.
///
///   call/<where>/<system>     round trip of one call: the client sends a request and
///                             waits for its reply; the server echoes the request's
///                             64-byte body and adds 1 to a counter (for ftm, a field
///                             of a stable object, in the transaction that receives the
///                             request and sends the reply),
///   oneway/<where>/<system>   one-way throughput: a sender sends 64-byte messages, one
///                             per transaction, a receiver takes them, one per
///                             transaction (ports of capacity 64 that block when full),
///   call/3-client-processes/<ftm|ftm-pipelined>
///                             three client processes call one server process, 600
///                             calls each per iteration: `ftm::call` one at a time, or
///                             `ftm::pipeline` with 16 calls in flight (sent as one
///                             batch, one transaction), replies matched by id,
///   commit/capacity/<ftm|ftm-pmem>/<n>
///                             a send and a receive, one transaction each, on one
///                             thread, to a port of capacity n (16 to 4,096),
///   receivers/threads/ftm/<n> n threads drain a port of 1,024 messages, one message
///                             and a microsecond of work per transaction,
///   recovery/processes/ftm    a server process is killed with SIGKILL while a client
///                             process keeps calling it; the time of `recover()` and
///                             the time until a restarted server answers a call.
///
/// <where> is `threads` (the server or receiver is a second thread of this process)
/// or `processes` (it is a forked child; the pool is a `MAP_SHARED` mapping). Systems:
///   ftm          `ftm::serve` / `ftm::call` (and `ftm::atomically(pool, f)` for the
///                one-way rows) on an `ftm::engines::dual_bank` pool,
///   ftm-session  the same transactions on an `ftm::session` at each end (a descriptor
///                held across transactions; `ftm::call` and `ftm::serve` take an
///                engine, so this row spells out their two transactions and loop),
///   ftm-pmem     `ftm::serve` / `ftm::call` on an `ftm::engines::pmem` pool file
///                (process durability: nothing is flushed at commit),
///   ftm-protected  `ftm::serve` / `ftm::call` on a `dual_bank` pool in protected mode,
///   mutex        between threads: a bounded ring guarded by a `std::mutex` with two
///                `std::condition_variable`s (not empty, not full) per direction,
///   pthread      between processes: the same ring in a `MAP_SHARED` page, guarded by
///                a process-shared `pthread_mutex_t` and `pthread_cond_t`s.
/// The baselines carry the same message types as ftm (the request with its id and
/// reply-port fields, the reply with its id), so the bytes moved are the same.
///
/// Every benchmark checks its results: each reply is the echo of its own request, the
/// server's counter equals the calls answered (exactly once, also across the kills),
/// each message arrives once and in order, and the ports are empty at the end. main()
/// fails if any check failed.

#include "workload.hpp"

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/session.hpp>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <pthread.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace ftm_bench {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

using request = ftm::call_request<record, record>;
using reply = ftm::reply_to_call<record>;

/// Every port holds this many messages; a full one makes its sender wait.
constexpr std::uint32_t capacity = 64;

/// A request body whose first field is this asks a baseline server or a receiver to stop.
constexpr std::int64_t stop_mark = -1;

/// Set by any failed check; main() fails if it is set.
std::atomic<bool> failed{false};

/// Kills per repetition of the recovery benchmark (`--port_bench_kills=N`).
int kills_per_run = 50;

void fail(benchmark::State& state, const std::string& why) {
  std::fprintf(stderr, "port_bench: check failed: %s\n", why.c_str());
  failed = true;
  state.SkipWithError(why.c_str());  // copied: the row shows why
}

/// The body of message `i`: every field derived from `i`, so an echo is checked whole.
record body_of(std::int64_t i) {
  record r{};
  for (int f = 0; f < 8; ++f)
    r.field[f] = i * 8 + f;
  r.field[0] = i;
  return r;
}

bool same(const record& a, const record& b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// ---- processes ---------------------------------------------------------------------

/// Forks a child that runs `body` and exits with its result (1 if it throws). The
/// child dies with the thread that forked it, so no child outlives a failed run.
template <class F>
pid_t fork_child(F&& body) {
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("port_bench: fork");
    std::exit(2);
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int rc = 1;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "port_bench: child: %s\n", e.what());
    }
    ::_exit(rc);
  }
  return pid;
}

/// Waits for a child; true if it exited with status 0.
bool reap(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/// A pipe that tells a child to stop when the parent closes its write end.
struct stop_pipe {
  int fd[2] = {-1, -1};
  stop_pipe() {
    if (::pipe(fd) != 0) {
      std::perror("port_bench: pipe");
      std::exit(2);
    }
  }
  stop_pipe(const stop_pipe&) = delete;
  stop_pipe& operator=(const stop_pipe&) = delete;
  ~stop_pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (fd[0] >= 0) ::close(fd[0]);
    fd[0] = -1;
  }
  void close_write() {
    if (fd[1] >= 0) ::close(fd[1]);
    fd[1] = -1;
  }
  /// In the child: a thread that requests `source`'s stop when the parent closes.
  std::thread watch(std::stop_source source) {
    close_write();
    return std::thread([this, source]() mutable {
      char c;
      while (::read(fd[0], &c, 1) > 0) {
      }
      source.request_stop();
    });
  }
};

/// An object of type T in a `MAP_SHARED` anonymous mapping, shared with forked children.
template <class T>
class shared_page {
 public:
  shared_page() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("port_bench: mmap");
      std::exit(2);
    }
    value_ = ::new (p) T();
  }
  shared_page(const shared_page&) = delete;
  shared_page& operator=(const shared_page&) = delete;
  ~shared_page() {
    value_->~T();
    ::munmap(value_, sizeof(T));
  }
  T* operator->() const noexcept { return value_; }
  T& operator*() const noexcept { return *value_; }

 private:
  T* value_;
};

// ---- ftm pools -------------------------------------------------------------------------

template <class E>
struct pool_maker;

template <>
struct pool_maker<ftm::engines::dual_bank> {
  static std::shared_ptr<ftm::engines::dual_bank> make() {
    return std::make_shared<ftm::engines::dual_bank>(std::size_t{1} << 20);
  }
};

template <>
struct pool_maker<ftm::engines::pmem> {
  static std::shared_ptr<ftm::engines::pmem> make() {
    static std::atomic<int> n{0};
    const auto path = std::filesystem::temp_directory_path() /
                      fmt::format("ftm-port-bench-{}-{}.ftm", ::getpid(), n++);
    auto* pool = new ftm::engines::pmem(
        ftm::engines::pmem::create(path, {.bank_size = std::size_t{1} << 20}));
    // The deleter runs in the process that made the pool only: children _exit.
    return std::shared_ptr<ftm::engines::pmem>(pool, [path](ftm::engines::pmem* p) {
      delete p;
      std::filesystem::remove(path);
    });
  }
};

/// `dual_bank` in protected mode (`options::protected_mode`), a type of its own for
/// the `ftm-protected` rows.
class protected_dual_bank : public ftm::engines::dual_bank {
 public:
  protected_dual_bank()
      : dual_bank(options{.bank_size = std::size_t{1} << 20, .protected_mode = true}) {}
};

template <>
struct pool_maker<protected_dual_bank> {
  static std::shared_ptr<protected_dual_bank> make() {
    return std::make_shared<protected_dual_bank>();
  }
};

/// A pool with a service port, a reply port and the server's counter.
template <class E>
struct service {
  std::shared_ptr<E> pool = pool_maker<E>::make();
  ftm::stable<record> counter;
  ftm::service_port<record, record> port;
  ftm::reply_port<record> replies;

  explicit service(std::uint32_t requests = capacity) {
    counter = ftm::atomically(*pool, [](auto& tx) { return tx.create(record{}); });
    // No delivery limit: a request a killed server held is delivered again, however often.
    const ftm::port_options options{
        .capacity = capacity, .max_deliveries = 0, .on_full = ftm::when_full::block};
    ftm::port_options request_options = options;
    request_options.capacity = requests;
    port = ftm::atomically(*pool,
                           [&](auto& tx) { return ftm::make_port<request>(tx, request_options); });
    replies = ftm::atomically(*pool, [&](auto& tx) { return ftm::make_port<reply>(tx, options); });
  }

  /// The handler: echoes the body and adds 1 to the counter's first field.
  auto handler() const {
    return [counter = counter](ftm::transaction<E>& tx, const record& body) {
      tx.open(counter)->field[0] += 1;
      return body;
    };
  }

  std::int64_t handled() const {
    return ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(counter)->field[0]; });
  }

  /// Checks that the counter says `calls` and that both ports are empty; reports
  /// the pool's transactions per call (commits, aborts: waits and lost conflicts).
  void verify(benchmark::State& state, std::int64_t calls) const {
    const ftm::engine_stats st = pool->stats();
    const double per_call = calls > 0 ? 1.0 / static_cast<double>(calls) : 0.0;
    state.counters["commits/op"] = static_cast<double>(st.commits) * per_call;
    state.counters["aborts/op"] = static_cast<double>(st.aborts) * per_call;
    state.counters["conflicts/op"] = static_cast<double>(st.conflicts) * per_call;
    const std::int64_t n = handled();
    if (n != calls)
      fail(state, fmt::format("the server handled {} calls, {} were answered", n, calls));
    const auto in = ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, port); });
    const auto out =
        ftm::atomically(*pool, [&](auto& tx) { return ftm::port_stats_of(tx, replies); });
    if (in.depth != 0 || out.depth != 0)
      fail(state, fmt::format("ports not empty at the end: requests {}; replies {}", in, out));
  }
};

/// `ftm::serve` and `ftm::call`'s wait before a blocking receive
/// (`ftm::detail::await_message`) on a session: a read-only transaction watches the
/// port if it is empty, then waits outside any transaction; false on time-out.
template <class E, class Msg>
bool await_on_session(ftm::session<E>& session, ftm::stable_port<Msg> port,
                      clock_type::time_point deadline) {
  for (;;) {
    const auto token =
        ftm::atomically(session, [&](ftm::transaction<E>& tx) -> std::optional<ftm::watch_token> {
          if (ftm::port_stats_of(tx, port).depth != 0) return std::nullopt;
          return tx.engine().watch(tx.id(), port.offset());
        });
    if (!token) return true;
    if (!session.engine().wait(std::span<const ftm::watch_token>(&*token, 1), deadline))
      return false;
  }
}

/// The session server: `ftm::serve`'s loop on a session's descriptor.
template <class E>
std::uint64_t serve_on_session(const service<E>& s, std::stop_token stop) {
  ftm::session<E> session(*s.pool);
  auto handler = s.handler();
  std::uint64_t served = 0;
  while (!stop.stop_requested()) {
    if (!await_on_session(session, s.port, clock_type::now() + 100ms)) continue;
    const bool answered = ftm::atomically(session, [&](ftm::transaction<E>& tx) {
      auto r = ftm::receive_for(tx, s.port, 100ms);
      if (!r) return false;
      const record result = handler(tx, r->body);
      ftm::send(tx, r->reply_to, reply{r->id, result});
      return true;
    });
    if (answered) ++served;
  }
  return served;
}

/// The session client: `ftm::call`'s two transactions on a session's descriptor.
template <class E>
record call_on_session(ftm::session<E>& session, const service<E>& s, const record& body) {
  const ftm::request_id id = ftm::next_request_id();
  ftm::atomically(session, [&](ftm::transaction<E>& tx) {
    ftm::send(tx, s.port, request{id, s.replies, body});
  });
  await_on_session(session, s.replies, clock_type::time_point::max());
  return ftm::atomically(session, [&](ftm::transaction<E>& tx) {
    for (;;) {
      const reply r = ftm::receive(tx, s.replies);
      if (r.id == id) return r.body;
    }
  });
}

/// Runs the server of a `call` benchmark until `stop`; the loop of `ftm::serve`, or
/// its session twin.
template <class E, bool UseSession>
std::uint64_t run_server(const service<E>& s, std::stop_token stop) {
  if constexpr (UseSession) {
    return serve_on_session(s, stop);
  } else {
    return ftm::serve(*s.pool, s.port, s.handler(), stop);
  }
}

/// The client's calls, timed; each reply must be the echo of its request.
template <class E, bool UseSession>
std::int64_t client_calls(benchmark::State& state, const service<E>& s) {
  std::optional<ftm::session<E>> session;
  if constexpr (UseSession) session.emplace(*s.pool);
  std::int64_t i = 0;
  for (auto _ : state) {
    const record body = body_of(i);
    record got;
    if constexpr (UseSession) {
      got = call_on_session(*session, s, body);
    } else {
      got = ftm::call(*s.pool, s.port, s.replies, body);
    }
    if (!same(got, body)) {
      fail(state, fmt::format("call {} answered with the body of call {}", i, got.field[0]));
      break;
    }
    ++i;
  }
  return i;
}

template <class E, bool UseSession>
void ftm_call_threads(benchmark::State& state) {
  service<E> s;
  std::jthread server([&](std::stop_token stop) { run_server<E, UseSession>(s, stop); });
  const std::int64_t calls = client_calls<E, UseSession>(state, s);
  server.request_stop();
  server.join();
  s.verify(state, calls);
  state.SetItemsProcessed(calls);
}

template <class E, bool UseSession>
void ftm_call_processes(benchmark::State& state) {
  service<E> s;
  stop_pipe stopper;
  const pid_t server = fork_child([&] {
    std::stop_source source;
    std::thread watcher = stopper.watch(source);
    run_server<E, UseSession>(s, source.get_token());
    watcher.join();
    return 0;
  });
  stopper.close_read();
  const std::int64_t calls = client_calls<E, UseSession>(state, s);
  stopper.close_write();
  if (!reap(server)) fail(state, "the server process failed");
  s.verify(state, calls);
  state.SetItemsProcessed(calls);
}

// ---- several client processes: synchronous and pipelined calls ----------------------

/// Client processes of the `clients` rows, calls per client and round, and the calls a
/// pipelined client keeps in flight.
constexpr int n_clients = 3;
constexpr std::int64_t calls_per_client = 600;
constexpr std::int64_t pipeline_depth = 16;

/// One round per iteration: `n_clients` forked clients each make `calls_per_client`
/// calls to one server process, synchronously (`ftm::call`) or pipelined
/// (`ftm::pipeline`, batches of `pipeline_depth` sent in one transaction). Timed from
/// the start signal until every client is done (forks outside the time).
template <bool Pipelined>
void ftm_call_clients(benchmark::State& state) {
  using E = ftm::engines::dual_bank;
  service<E> s;
  std::array<ftm::reply_port<record>, n_clients> replies;
  for (auto& r : replies)
    r = ftm::atomically(*s.pool,
                        [](auto& tx) { return ftm::make_port<reply>(tx, {.capacity = 64}); });
  stop_pipe stopper;
  const pid_t server = fork_child([&] {
    std::stop_source source;
    std::thread watcher = stopper.watch(source);
    run_server<E, false>(s, source.get_token());
    watcher.join();
    return 0;
  });
  stopper.close_read();
  std::int64_t calls = 0;
  for (auto _ : state) {
    int go[2];
    if (::pipe(go) != 0) std::exit(2);
    std::array<pid_t, n_clients> clients{};
    for (int c = 0; c < n_clients; ++c) {
      clients[c] = fork_child([&, c] {
        ::close(go[1]);
        char x;
        if (::read(go[0], &x, 1) != 0) return 2;
        const std::int64_t base = (calls + c * calls_per_client) * 16;
        if constexpr (Pipelined) {
          ftm::pipeline<E, record, record> pipe(*s.pool, s.port, replies[c]);
          std::vector<record> bodies;
          for (std::int64_t i = 0; i < calls_per_client; i += pipeline_depth) {
            bodies.clear();
            for (std::int64_t k = i; k < std::min(i + pipeline_depth, calls_per_client); ++k)
              bodies.push_back(body_of(base + k));
            const auto ids = pipe.submit_all(std::span<const record>(bodies));
            for (std::size_t k = 0; k < ids.size(); ++k)
              if (!same(pipe.wait(ids[k]), bodies[k])) return 3;
          }
        } else {
          for (std::int64_t i = 0; i < calls_per_client; ++i) {
            const record body = body_of(base + i);
            if (!same(ftm::call(*s.pool, s.port, replies[c], body), body)) return 3;
          }
        }
        return 0;
      });
    }
    ::close(go[0]);
    const auto start = clock_type::now();
    ::close(go[1]);  // the start signal
    bool ok = true;
    for (const pid_t c : clients)
      ok = reap(c) && ok;
    state.SetIterationTime(std::chrono::duration<double>(clock_type::now() - start).count());
    if (!ok) {
      fail(state, "a client process failed (a reply that was not the echo of its call?)");
      break;
    }
    calls += n_clients * calls_per_client;
  }
  stopper.close_write();
  if (!reap(server)) fail(state, "the server process failed");
  const std::int64_t n = s.handled();
  if (n != calls)
    fail(state, fmt::format("the server handled {} calls, {} were answered", n, calls));
  state.SetItemsProcessed(calls);
}

// ---- ftm one-way -----------------------------------------------------------------------

/// A one-way port of 64-byte messages.
struct oneway_ftm {
  std::shared_ptr<ftm::engines::dual_bank> pool = pool_maker<ftm::engines::dual_bank>::make();
  ftm::stable_port<record> port = ftm::atomically(*pool, [](auto& tx) {
    return ftm::make_port<record>(
        tx, {.capacity = capacity, .max_deliveries = 0, .on_full = ftm::when_full::block});
  });
};

/// What a receiver found: messages taken, and whether each came once and in order.
struct receipt_count {
  std::atomic<std::int64_t> received{0};
  std::atomic<bool> in_order{true};
};

template <bool UseSession>
void ftm_receive_all(const oneway_ftm& w, receipt_count& out) {
  using E = ftm::engines::dual_bank;
  std::optional<ftm::session<E>> session;
  if constexpr (UseSession) session.emplace(*w.pool);
  std::int64_t expected = 0;
  for (;;) {
    const auto take = [&](ftm::transaction<E>& tx) { return ftm::receive(tx, w.port); };
    record m;
    if constexpr (UseSession) {
      m = ftm::atomically(*session, take);
    } else {
      m = ftm::atomically(*w.pool, take);
    }
    if (m.field[0] == stop_mark) break;
    if (!same(m, body_of(expected))) out.in_order = false;
    ++expected;
  }
  out.received = expected;
}

template <bool UseSession>
std::int64_t ftm_send_all(benchmark::State& state, const oneway_ftm& w) {
  using E = ftm::engines::dual_bank;
  std::optional<ftm::session<E>> session;
  if constexpr (UseSession) session.emplace(*w.pool);
  const auto send = [&](const record& m) {
    const auto put = [&](ftm::transaction<E>& tx) { ftm::send(tx, w.port, m); };
    if constexpr (UseSession) {
      ftm::atomically(*session, put);
    } else {
      ftm::atomically(*w.pool, put);
    }
  };
  std::int64_t i = 0;
  for (auto _ : state)
    send(body_of(i++));
  // Untimed: the receiver is at most `capacity` messages behind.
  record last{};
  last.field[0] = stop_mark;
  send(last);
  return i;
}

void check_oneway(benchmark::State& state, std::int64_t sent, const receipt_count& got) {
  if (got.received != sent)
    fail(state, fmt::format("{} messages sent, {} received", sent, got.received.load()));
  if (!got.in_order) fail(state, "a message came out of order, twice, or changed");
  state.SetItemsProcessed(sent);
}

template <bool UseSession>
void ftm_oneway_threads(benchmark::State& state) {
  oneway_ftm w;
  receipt_count got;
  std::thread receiver([&] { ftm_receive_all<UseSession>(w, got); });
  const std::int64_t sent = ftm_send_all<UseSession>(state, w);
  receiver.join();
  check_oneway(state, sent, got);
}

template <bool UseSession>
void ftm_oneway_processes(benchmark::State& state) {
  oneway_ftm w;
  shared_page<receipt_count> got;
  const pid_t receiver = fork_child([&] {
    ftm_receive_all<UseSession>(w, *got);
    return 0;
  });
  const std::int64_t sent = ftm_send_all<UseSession>(state, w);
  if (!reap(receiver)) fail(state, "the receiver process failed");
  check_oneway(state, sent, *got);
}

// ---- commit cost by capacity, and receivers of one port -----------------------------------

/// One iteration: a transaction that sends a 64-byte message to a port of `capacity`
/// (the argument) and one that receives it, on one thread. The time of a port
/// operation should not depend on how many messages the port could hold.
template <class E>
void ftm_commit_by_capacity(benchmark::State& state) {
  const auto cap = static_cast<std::uint32_t>(state.range(0));
  std::shared_ptr<E> pool = pool_maker<E>::make();
  const auto port = ftm::atomically(*pool, [&](auto& tx) {
    return ftm::make_port<record>(tx, {.capacity = cap, .max_deliveries = 0});
  });
  std::int64_t i = 0;
  for (auto _ : state) {
    const record m = body_of(i);
    ftm::atomically(*pool, [&](ftm::transaction<E>& tx) { ftm::send(tx, port, m); });
    const auto got =
        ftm::atomically(*pool, [&](ftm::transaction<E>& tx) { return ftm::try_receive(tx, port); });
    if (!got || !same(*got, m)) {
      fail(state, fmt::format("message {} did not come back", i));
      break;
    }
    ++i;
  }
  state.SetItemsProcessed(i);
}

/// Messages drained per iteration by the `receivers/<n>` rows.
constexpr std::uint32_t drain_messages = 1024;

/// Handler work inside each receive's transaction: about a microsecond of arithmetic.
std::uint64_t handler_work(std::uint64_t x) {
  for (int k = 0; k < 400; ++k)
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
  return x;
}

/// One iteration: a port filled with `drain_messages` (untimed), then `n` receiver
/// threads (the argument) drain it, one message and a microsecond of work per
/// transaction. Receivers that run in parallel make the time per message fall with n.
void ftm_parallel_receivers(benchmark::State& state) {
  using E = ftm::engines::dual_bank;
  const auto n = static_cast<int>(state.range(0));
  std::shared_ptr<E> pool = std::make_shared<E>(std::size_t{1} << 21);
  const auto port = ftm::atomically(*pool, [&](auto& tx) {
    return ftm::make_port<record>(tx, {.capacity = drain_messages, .max_deliveries = 0});
  });
  std::int64_t total = 0;
  for (auto _ : state) {
    state.PauseTiming();
    for (std::uint32_t k = 0; k < drain_messages; ++k)
      ftm::atomically(*pool, [&](ftm::transaction<E>& tx) { ftm::send(tx, port, body_of(k)); });
    state.ResumeTiming();
    std::atomic<std::int64_t> got{0};
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&] {
        std::uint64_t sink = 0;
        for (;;) {
          const auto m = ftm::atomically(*pool, [&](ftm::transaction<E>& tx) {
            auto msg = ftm::try_receive(tx, port);
            if (msg) sink += handler_work(static_cast<std::uint64_t>(msg->field[0]));
            return msg;
          });
          if (!m) break;
          got.fetch_add(1, std::memory_order_relaxed);
        }
        benchmark::DoNotOptimize(sink);
      });
    }
    for (auto& t : threads)
      t.join();
    if (got != drain_messages) {
      fail(state, fmt::format("{} of {} messages received", got.load(), drain_messages));
      break;
    }
    total += drain_messages;
  }
  state.SetItemsProcessed(total);
}

// ---- the baselines -------------------------------------------------------------------------

/// A bounded FIFO between threads: a ring guarded by a std::mutex, with a condition
/// variable for each of "not empty" and "not full".
template <class T>
class thread_queue {
 public:
  void push(const T& v) {
    std::unique_lock lock(mutex_);
    not_full_.wait(lock, [&] { return tail_ - head_ < capacity; });
    ring_[tail_++ % capacity] = v;
    lock.unlock();
    not_empty_.notify_one();
  }
  T pop() {
    std::unique_lock lock(mutex_);
    not_empty_.wait(lock, [&] { return tail_ != head_; });
    const T v = ring_[head_++ % capacity];
    lock.unlock();
    not_full_.notify_one();
    return v;
  }

 private:
  std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::array<T, capacity> ring_{};
  std::uint64_t head_ = 0;
  std::uint64_t tail_ = 0;
};

/// The same FIFO for processes: lives in a `MAP_SHARED` page, and its mutex and
/// condition variables are process-shared.
template <class T>
class shared_queue {
 public:
  shared_queue() {
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&mutex_, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_cond_init(&not_empty_, &ca);
    pthread_cond_init(&not_full_, &ca);
    pthread_condattr_destroy(&ca);
  }
  shared_queue(const shared_queue&) = delete;
  shared_queue& operator=(const shared_queue&) = delete;
  ~shared_queue() {
    pthread_cond_destroy(&not_full_);
    pthread_cond_destroy(&not_empty_);
    pthread_mutex_destroy(&mutex_);
  }
  void push(const T& v) {
    pthread_mutex_lock(&mutex_);
    while (tail_ - head_ == capacity)
      pthread_cond_wait(&not_full_, &mutex_);
    ring_[tail_++ % capacity] = v;
    pthread_mutex_unlock(&mutex_);
    pthread_cond_signal(&not_empty_);
  }
  T pop() {
    pthread_mutex_lock(&mutex_);
    while (tail_ == head_)
      pthread_cond_wait(&not_empty_, &mutex_);
    const T v = ring_[head_++ % capacity];
    pthread_mutex_unlock(&mutex_);
    pthread_cond_signal(&not_full_);
    return v;
  }

 private:
  pthread_mutex_t mutex_;
  pthread_cond_t not_empty_;
  pthread_cond_t not_full_;
  std::array<T, capacity> ring_{};
  std::uint64_t head_ = 0;
  std::uint64_t tail_ = 0;
};

/// A request queue, a reply queue and the server's counter.
template <template <class> class Queue>
struct channel {
  Queue<request> requests;
  Queue<reply> replies;
  std::int64_t handled = 0;  // the server's alone until it stops
};

/// The baseline server: the same echo and counter as ftm's handler, until a stop mark.
template <template <class> class Queue>
void baseline_serve(channel<Queue>& c) {
  for (;;) {
    const request r = c.requests.pop();
    if (r.body.field[0] == stop_mark) return;
    ++c.handled;
    c.replies.push(reply{r.id, r.body});
  }
}

template <template <class> class Queue>
std::int64_t baseline_calls(benchmark::State& state, channel<Queue>& c) {
  std::int64_t i = 0;
  for (auto _ : state) {
    const record body = body_of(i);
    const ftm::request_id id = ftm::next_request_id();
    c.requests.push(request{id, {}, body});
    reply r = c.replies.pop();
    while (r.id != id)
      r = c.replies.pop();
    if (!same(r.body, body)) {
      fail(state, fmt::format("call {} answered with the body of call {}", i, r.body.field[0]));
      break;
    }
    ++i;
  }
  record stop{};
  stop.field[0] = stop_mark;
  c.requests.push(request{{}, {}, stop});
  return i;
}

void baseline_verify(benchmark::State& state, std::int64_t handled, std::int64_t calls) {
  if (handled != calls)
    fail(state, fmt::format("the server handled {} calls, {} were answered", handled, calls));
  state.SetItemsProcessed(calls);
}

void mutex_call_threads(benchmark::State& state) {
  auto c = std::make_unique<channel<thread_queue>>();
  std::thread server([&] { baseline_serve(*c); });
  const std::int64_t calls = baseline_calls(state, *c);
  server.join();
  baseline_verify(state, c->handled, calls);
}

void pthread_call_processes(benchmark::State& state) {
  shared_page<channel<shared_queue>> c;
  const pid_t server = fork_child([&] {
    baseline_serve(*c);
    return 0;
  });
  const std::int64_t calls = baseline_calls(state, *c);
  if (!reap(server)) fail(state, "the server process failed");
  baseline_verify(state, c->handled, calls);
}

template <template <class> class Queue>
struct oneway_channel {
  Queue<record> messages;
  receipt_count got;
};

template <template <class> class Queue>
void baseline_receive_all(oneway_channel<Queue>& c) {
  std::int64_t expected = 0;
  for (;;) {
    const record m = c.messages.pop();
    if (m.field[0] == stop_mark) break;
    if (!same(m, body_of(expected))) c.got.in_order = false;
    ++expected;
  }
  c.got.received = expected;
}

template <template <class> class Queue>
std::int64_t baseline_send_all(benchmark::State& state, oneway_channel<Queue>& c) {
  std::int64_t i = 0;
  for (auto _ : state)
    c.messages.push(body_of(i++));
  record last{};
  last.field[0] = stop_mark;
  c.messages.push(last);
  return i;
}

void mutex_oneway_threads(benchmark::State& state) {
  auto c = std::make_unique<oneway_channel<thread_queue>>();
  std::thread receiver([&] { baseline_receive_all(*c); });
  const std::int64_t sent = baseline_send_all(state, *c);
  receiver.join();
  check_oneway(state, sent, c->got);
}

void pthread_oneway_processes(benchmark::State& state) {
  shared_page<oneway_channel<shared_queue>> c;
  const pid_t receiver = fork_child([&] {
    baseline_receive_all(*c);
    return 0;
  });
  const std::int64_t sent = baseline_send_all(state, *c);
  if (!reap(receiver)) fail(state, "the receiver process failed");
  check_oneway(state, sent, c->got);
}

// ---- recovery after a kill -------------------------------------------------------------

/// What the load process reports.
struct load_state {
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> answered{0};
  std::atomic<std::int64_t> wrong{0};
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto at = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(at, v.size() - 1)];
}

/// Requests the load process keeps in flight: the service port's capacity in the
/// recovery benchmark. Enough that the server always has one to handle (so most
/// kills land inside a transaction), few enough that the probe call waits behind
/// only a handful.
constexpr std::uint32_t load_window = 4;

/// The load process: one thread sends requests as fast as the server takes them
/// (each send waits while `load_window` are queued), another takes the replies and
/// checks that each is the echo of the next request, in order. Stops sending when
/// told, and returns once every request it sent is answered.
int run_load(const service<ftm::engines::dual_bank>& s, ftm::reply_port<record> replies,
             load_state& load) {
  using E = ftm::engines::dual_bank;
  std::atomic<std::int64_t> sent{0};
  std::atomic<bool> done{false};
  std::thread sender([&] {
    std::int64_t i = 0;
    while (!load.stop.load()) {
      ftm::atomically(*s.pool, [&](ftm::transaction<E>& tx) {
        ftm::send(tx, s.port, request{ftm::next_request_id(), replies, body_of(i)});
      });
      sent = ++i;
    }
    done = true;
  });
  std::int64_t got = 0;
  for (;;) {
    const bool finished = done.load();
    if (finished && got == sent.load()) break;
    const auto r = ftm::atomically(
        *s.pool, [&](ftm::transaction<E>& tx) { return ftm::receive_for(tx, replies, 100ms); });
    if (!r) continue;
    if (!same(r->body, body_of(got))) ++load.wrong;
    load.answered = ++got;
  }
  sender.join();
  return 0;
}

/// Each iteration: while a client process keeps the server busy, the server process
/// is killed with SIGKILL at a random instant; the benchmark thread, as the backup
/// (what `ftm::supervisor` does: reap, recover, fork), reaps it, runs `recover()`,
/// forks a new server and makes a call of its own (queued behind at most
/// `load_window` load requests). The iteration's time (manual) is from the reaping to
/// that call's reply; the counters give the p50 and p99 of `recover()` alone and of
/// the whole restart, in microseconds, how many kills left a transaction to undo or
/// complete (the server was killed inside one, not while it waited for a request),
/// and the p50 and p99 of `recover()` for those kills alone. At the end the counter must equal the
/// calls answered: every call took effect exactly once across all the kills.
void ftm_recovery(benchmark::State& state) {
  using E = ftm::engines::dual_bank;
  service<E> s(load_window);
  // The load's replies come on a port of their own; `s.replies` is the probe's.
  const auto load_replies = ftm::atomically(*s.pool, [](auto& tx) {
    return ftm::make_port<reply>(
        tx, {.capacity = capacity, .max_deliveries = 0, .on_full = ftm::when_full::block});
  });
  shared_page<load_state> load;
  // Forked while this process has one thread, as is every server below.
  const pid_t client = fork_child([&] { return run_load(s, load_replies, *load); });
  const auto start_server = [&] {
    return fork_child([&] {
      ftm::serve(*s.pool, s.port, s.handler());
      return 0;
    });
  };
  pid_t server = start_server();
  std::mt19937 random(12345);
  std::uniform_int_distribution<int> delay_us(200, 3000);
  std::vector<double> recover_us, undo_us, restart_us;
  std::int64_t probes = 0, mid_transaction = 0;
  for (auto _ : state) {
    // Mid-load: the client got an answer from this server, then a random pause.
    const std::int64_t before = load->answered.load();
    while (load->answered.load() == before && load->wrong.load() == 0)
      std::this_thread::sleep_for(50us);
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(random)));
    ::kill(server, SIGKILL);
    ::waitpid(server, nullptr, 0);
    const auto t0 = clock_type::now();
    const ftm::recovery_report report = s.pool->recover();
    const auto t1 = clock_type::now();
    server = start_server();
    const record body = body_of(1'000'000 + probes);
    const auto r = ftm::call_for(*s.pool, s.port, s.replies, body, 30s);
    const auto t2 = clock_type::now();
    if (!r || !same(*r, body)) {
      fail(state, "the restarted server did not answer the probe call");
      break;
    }
    ++probes;
    if (report.undone + report.redone != 0) {
      ++mid_transaction;
      undo_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    state.SetIterationTime(std::chrono::duration<double>(t2 - t0).count());
    recover_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    restart_us.push_back(std::chrono::duration<double, std::micro>(t2 - t0).count());
  }
  load->stop = true;
  if (!reap(client)) fail(state, "the load client process failed");
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  s.pool->recover();
  if (load->wrong != 0)
    fail(state, fmt::format("{} load calls went unanswered or wrong", load->wrong.load()));
  s.verify(state, load->answered + probes);
  state.counters["kills"] = static_cast<double>(probes);
  state.counters["killed_in_tx"] = static_cast<double>(mid_transaction);
  state.counters["load_calls"] = static_cast<double>(load->answered);
  state.counters["recover_p50_us"] = percentile(recover_us, 0.5);
  state.counters["recover_p99_us"] = percentile(recover_us, 0.99);
  state.counters["recover_in_tx_p50_us"] = percentile(undo_us, 0.5);
  state.counters["recover_in_tx_p99_us"] = percentile(undo_us, 0.99);
  state.counters["restart_p50_us"] = percentile(restart_us, 0.5);
  state.counters["restart_p99_us"] = percentile(restart_us, 0.99);
}

// ---- registration ------------------------------------------------------------------------

void add(const char* name, void (*run)(benchmark::State&)) {
  benchmark::RegisterBenchmark(name, run)->UseRealTime();
}

void register_all() {
  using ftm::engines::dual_bank;
  using ftm::engines::pmem;
  add("call/threads/ftm", ftm_call_threads<dual_bank, false>);
  add("call/threads/ftm-session", ftm_call_threads<dual_bank, true>);
  add("call/threads/ftm-pmem", ftm_call_threads<pmem, false>);
  add("call/threads/ftm-protected", ftm_call_threads<protected_dual_bank, false>);
  add("call/threads/mutex", mutex_call_threads);
  add("call/processes/ftm", ftm_call_processes<dual_bank, false>);
  add("call/processes/ftm-session", ftm_call_processes<dual_bank, true>);
  add("call/processes/ftm-pmem", ftm_call_processes<pmem, false>);
  add("call/processes/ftm-protected", ftm_call_processes<protected_dual_bank, false>);
  add("call/processes/pthread", pthread_call_processes);
  benchmark::RegisterBenchmark("call/3-client-processes/ftm", ftm_call_clients<false>)
      ->UseManualTime();
  benchmark::RegisterBenchmark("call/3-client-processes/ftm-pipelined", ftm_call_clients<true>)
      ->UseManualTime();
  for (const char* name : {"commit/capacity/ftm", "commit/capacity/ftm-pmem"}) {
    auto* b = benchmark::RegisterBenchmark(name, std::string_view(name).ends_with("pmem")
                                                     ? ftm_commit_by_capacity<pmem>
                                                     : ftm_commit_by_capacity<dual_bank>);
    b->UseRealTime();
    for (const int c : {16, 64, 256, 1024, 4096})
      b->Arg(c);
  }
  benchmark::RegisterBenchmark("receivers/threads/ftm", ftm_parallel_receivers)
      ->UseRealTime()
      ->Arg(1)
      ->Arg(2);
  add("oneway/threads/ftm", ftm_oneway_threads<false>);
  add("oneway/threads/ftm-session", ftm_oneway_threads<true>);
  add("oneway/threads/mutex", mutex_oneway_threads);
  add("oneway/processes/ftm", ftm_oneway_processes<false>);
  add("oneway/processes/ftm-session", ftm_oneway_processes<true>);
  add("oneway/processes/pthread", pthread_oneway_processes);
  benchmark::RegisterBenchmark("recovery/processes/ftm", ftm_recovery)
      ->Iterations(kills_per_run)
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}

/// Takes this program's own flags out of argv, before Google Benchmark sees it.
bool parse_own_flags(int& argc, char** argv) {
  constexpr std::string_view kills = "--port_bench_kills=";
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with(kills)) {
      kills_per_run = std::atoi(arg.substr(kills.size()).data());
      if (kills_per_run < 1) {
        std::fprintf(stderr, "port_bench: --port_bench_kills needs a positive number\n");
        return false;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return true;
}

}  // namespace
}  // namespace ftm_bench

int main(int argc, char** argv) {
  using namespace ftm_bench;
  if (!parse_own_flags(argc, argv)) return 1;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("recovery kills per run", std::to_string(kills_per_run));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (failed) {
    std::fprintf(stderr, "ftm_port_bench: a check failed (see above)\n");
    return 1;
  }
  std::fprintf(stderr, "ftm_port_bench: every call answered once, every message counted\n");
  return 0;
}
