// The paper's section 4.2 reliable server: `read_page` and `write_page` on a stable
// segment of pages, called by several client processes through stable ports. The
// server is a stable task under `ftm::supervisor`; in chaos mode (the default) the
// demo kills it with SIGKILL at random intervals while calls are in flight, and the
// supervisor recovers the pool and restarts it. At the end the demo checks that every
// call took effect exactly once.
//
//   page_server [--seconds N] [--clients N] [--no-chaos]
//
// Exit status 0 only if the exactly-once verification holds; ctest runs this program.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using pool_type = ftm::engines::dual_bank;

// [snippet:segment]
constexpr std::uint32_t page_size = 256;
constexpr std::uint32_t n_pages = 16;
using page = std::array<char, page_size>;

/// The stable segment of section 4.1: a plain class that knows nothing of ftm.
class segment {
 public:
  void read_page(std::uint32_t no_page, page& p) const { p = pages_[no_page % n_pages]; }
  void write_page(std::uint32_t no_page, const page& p) { pages_[no_page % n_pages] = p; }

 private:
  std::array<page, n_pages> pages_{};
};
// [end-snippet]

// [snippet:messages]
/// The paper's `Message`, less what ftm adds around it: `ftm::call` wraps it with a
/// request id (here the client's idempotency key) and the client's reply port (the
/// paper's `sender_port`).
struct page_request {
  enum kind_t : std::uint32_t { read_page, write_page } kind;
  std::uint32_t page_number;
  std::uint64_t call_id;  // chosen by the client: the effect log records it
  page data;              // the page to write
};
struct page_reply {
  std::uint64_t call_id;
  std::uint64_t version;  // the page's write count, as the server's transaction left it
  page data;              // the page read
};
/// A service: its request port, dead-letter port and key table (the keys it applied).
using page_service = ftm::service<page_request, page_reply>;
// [end-snippet]

constexpr std::uint32_t max_clients = 8;
constexpr std::size_t seg_ids = 1000;
constexpr std::size_t max_segments = 1500;  // the effect log holds 1.5 million calls
constexpr std::uint64_t max_calls = seg_ids * max_segments;
constexpr std::int64_t opening_quota = 1'000'000;

struct log_segment {
  std::uint64_t ids[seg_ids];
};
/// Every call the server committed, in order: made to count the effects.
struct effect_log {
  std::uint64_t count;
  ftm::stable<log_segment> segs[max_segments];
};
/// Per-page write counts, and a ledger whose total the server must conserve: each
/// write moves one credit from its client's quota to its page.
struct bookkeeping {
  std::uint64_t version[n_pages];
  std::int64_t client_quota[max_clients];
  std::int64_t page_credit[n_pages];
};
struct server_state {
  ftm::stable<segment> seg;
  ftm::stable<effect_log> log;
  ftm::stable<bookkeeping> books;
  page_service service;
};

/// What the demo shares with its client and server processes (a MAP_SHARED page).
struct shared_state {
  std::atomic<bool> go;
  std::atomic<bool> stop;
  std::atomic<std::uint64_t> calls[max_clients];
  std::atomic<std::uint64_t> served;       // requests handled, committed or not
  std::atomic<std::int64_t> killed_at_ns;  // the last kill not yet followed by a call
  std::atomic<std::uint32_t> n_samples;
  std::int64_t recovery_ns[100000];  // kill to the next instance's first call
  std::atomic<bool> client_failed[max_clients];
};

/// One acknowledged call, as its client saw it.
struct acked_call {
  page_request::kind_t kind;
  std::uint32_t page_number;
  std::uint64_t call_id;
  std::uint64_t version;
  std::uint64_t page_writer;  // a read: the call id stamped in the page it got
};

template <class T>
T* shared_array(std::size_t n) {
  void* p =
      ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(2);
  }
  return ::new (p) T[n]{};
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// The call id a client stamps in the first bytes of the pages it writes.
std::uint64_t writer_of(const page& p) {
  std::uint64_t id = 0;
  std::memcpy(&id, p.data(), sizeof id);
  return id;
}

/// Records, at an instance's first call, how long ago the kill it follows was.
void note_call(shared_state* shared, bool& first_call) {
  shared->served.fetch_add(1);
  if (!first_call) return;
  first_call = false;
  if (const auto k = shared->killed_at_ns.exchange(0); k != 0) {
    const auto n = shared->n_samples.fetch_add(1);
    if (n < std::size(shared->recovery_ns)) shared->recovery_ns[n] = now_ns() - k;
  }
}

// [snippet:server]
/// The server: the paper's loop, one transaction per request (receive, operate on
/// the segment, reply). It runs again from the start after every kill, so all it
/// knows is in the pool.
void page_server(pool_type& pool, shared_state* shared) {
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "page_server")); });
  bool first_call = true;
  auto handle = [&](ftm::transaction<pool_type>& tx, const page_request& req) {
    note_call(shared, first_call);  // for the demo's statistics
    page_reply reply{req.call_id, 0, {}};
    auto books = tx.open(st.books);
    if (req.kind == page_request::write_page) {
      tx.open(st.seg)->write_page(req.page_number, req.data);
      reply.version = ++books->version[req.page_number];
      --books->client_quota[req.call_id >> 32];
      ++books->page_credit[req.page_number];
    } else {
      tx.open_read(st.seg)->read_page(req.page_number, reply.data);
      reply.version = books->version[req.page_number];
    }
    auto log = tx.open(st.log);  // the effect log, for the verification
    if (log->count % seg_ids == 0) log->segs[log->count / seg_ids] = ftm::create<log_segment>(tx);
    tx.open(log->segs[log->count / seg_ids])->ids[log->count % seg_ids] = req.call_id;
    ++log->count;
    return reply;
  };
  ftm::serve(pool, st.service, handle);
}
// [end-snippet]

/// A client process: reads and writes random pages until told to stop, and records
/// what each call returned.
[[noreturn]] void client(pool_type& pool, const page_service& service,
                         ftm::reply_port<page_reply> replies, std::uint32_t index,
                         shared_state* shared, acked_call* acked, std::uint64_t max_own) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  std::mt19937 rng(index + 1);
  std::uniform_int_distribution<std::uint32_t> which(0, n_pages - 1), percent(0, 99);
  while (!shared->go.load())
    std::this_thread::sleep_for(1ms);
  std::uint64_t n = 0;
  try {
    while (!shared->stop.load() && n < max_own) {
      // [snippet:client]
      page_request req{
          page_request::read_page, which(rng), (std::uint64_t{index} << 32) | (n + 1), {}};
      if (percent(rng) < 40) {
        req.kind = page_request::write_page;
        std::memcpy(req.data.data(), &req.call_id, sizeof req.call_id);  // stamp the writer
        std::fill(req.data.begin() + sizeof req.call_id, req.data.end(), char('a' + index));
      }
      // One transaction sends the request, a second waits for its reply. The key
      // (client, call number) makes the call safe to send again after a restart.
      const ftm::call_key key{index + 1, n + 1};
      const page_reply rep = ftm::call(pool, service, replies, key, req);
      // [end-snippet]
      acked[n] = {req.kind, req.page_number, req.call_id, rep.version,
                  req.kind == page_request::read_page ? writer_of(rep.data) : 0};
      ++n;
      shared->calls[index].store(n);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "client %u: %s\n", index, e.what());
    shared->client_failed[index].store(true);
  }
  std::_Exit(0);
}

struct options {
  double seconds = 5;
  std::uint32_t clients = 3;
  bool chaos = true;
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--no-chaos") {
      o.chaos = false;
    } else if (a == "--chaos") {
      o.chaos = true;
    } else if (a == "--seconds" && i + 1 < argc) {
      o.seconds = std::atof(argv[++i]);
    } else if (a == "--clients" && i + 1 < argc) {
      o.clients = static_cast<std::uint32_t>(std::atoi(argv[++i]));
    } else {
      fmt::print(stderr, "usage: {} [--seconds N] [--clients N (1 to {})] [--no-chaos]\n", argv[0],
                 max_clients);
      std::exit(2);
    }
  }
  if (o.clients < 1 || o.clients > max_clients || !(o.seconds > 0)) {
    fmt::print(stderr, "page_server: --clients must be 1 to {} and --seconds positive\n",
               max_clients);
    std::exit(2);
  }
  return o;
}

/// The verification: the checks of tests/exactly_once_test.cpp on the demo's data.
/// Prints each; returns the number that failed.
int verify(pool_type& pool, const options& o, const std::vector<acked_call*>& acked,
           const shared_state& shared,
           const std::vector<ftm::reply_port<page_reply>>& reply_ports) {
  int failed = 0;
  auto check = [&](bool ok, const std::string& what) {
    fmt::print("  [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++failed;
  };
  std::map<std::uint64_t, const acked_call*> by_id;
  std::uint64_t calls = 0, duplicate_replies = 0, writes = 0;
  std::map<std::uint32_t, std::map<std::uint64_t, std::uint64_t>> writer_of_version;
  std::int64_t quota_used[max_clients] = {};
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    for (std::uint64_t i = 0; i < shared.calls[c].load(); ++i) {
      const acked_call& a = acked[c][i];
      if (!by_id.emplace(a.call_id, &a).second) ++duplicate_replies;
      ++calls;
      if (a.kind == page_request::write_page) {
        ++writes;
        ++quota_used[c];
        if (!writer_of_version[a.page_number].emplace(a.version, a.call_id).second)
          ++duplicate_replies;
      }
    }
  }
  ftm::atomically(pool, [&](auto& tx) {
    const server_state st = *tx.open_read(ftm::root<server_state>(tx, "page_server"));
    const auto log = tx.open_read(st.log);
    std::map<std::uint64_t, int> logged;
    for (std::uint64_t i = 0; i < log->count; ++i)
      ++logged[tx.open_read(log->segs[i / seg_ids])->ids[i % seg_ids]];
    std::uint64_t missing = 0, twice = 0, unacked = 0;
    for (const auto& [id, a] : by_id) {
      const auto it = logged.find(id);
      if (it == logged.end()) {
        ++missing;
      } else if (it->second != 1) {
        ++twice;
      }
    }
    for (const auto& [id, n] : logged)
      if (by_id.count(id) == 0) ++unacked;
    check(missing == 0 && twice == 0 && unacked == 0 && log->count == calls,
          fmt::format("each of the {} acknowledged calls is in the effect log exactly once "
                      "({} missing, {} more than once, {} logged but never acknowledged)",
                      calls, missing, twice, unacked));
    check(duplicate_replies == 0,
          fmt::format("each call got exactly one reply ({} duplicates)", duplicate_replies));
    const auto books = tx.open_read(st.books);
    const auto seg = tx.open_read(st.seg);
    std::uint64_t bad_versions = 0, bad_pages = 0;
    for (std::uint32_t p = 0; p < n_pages; ++p) {
      const auto& versions = writer_of_version[p];  // sorted by version
      std::uint64_t expect = 1;
      for (const auto& [v, id] : versions)
        if (v != expect++) ++bad_versions;
      if (books->version[p] != versions.size()) ++bad_versions;
      page last{};
      seg->read_page(p, last);
      const std::uint64_t want = versions.empty() ? 0 : versions.rbegin()->second;
      if (writer_of(last) != want) ++bad_pages;
    }
    check(bad_versions == 0,
          fmt::format("the versions the {} writes saw are exactly 1..n per page", writes));
    check(bad_pages == 0, "each page holds the write with its last version");
    std::uint64_t bad_reads = 0;
    for (const auto& [id, a] : by_id) {
      if (a->kind != page_request::read_page) continue;
      const auto& versions = writer_of_version[a->page_number];
      const auto it = versions.find(a->version);
      const std::uint64_t want = a->version == 0 ? 0 : (it == versions.end() ? ~0ULL : it->second);
      if (a->page_writer != want) ++bad_reads;
    }
    check(bad_reads == 0, fmt::format("each of the {} reads got the page of the write its version "
                                      "names",
                                      calls - writes));
    std::int64_t total = 0;
    bool ledger_ok = true;
    for (std::uint32_t c = 0; c < max_clients; ++c) {
      total += books->client_quota[c];
      if (books->client_quota[c] != opening_quota - quota_used[c]) ledger_ok = false;
    }
    for (std::uint32_t p = 0; p < n_pages; ++p) {
      total += books->page_credit[p];
      if (books->page_credit[p] != static_cast<std::int64_t>(writer_of_version[p].size()))
        ledger_ok = false;
    }
    check(ledger_ok && total == opening_quota * max_clients,
          fmt::format("the ledger's total is conserved ({} credits)", total));
    const auto ps = ftm::port_stats_of(tx, st.service.requests);
    bool replies_empty = true;
    for (const auto& r : reply_ports)
      replies_empty = replies_empty && ftm::port_stats_of(tx, r).depth == 0;
    check(ps.depth == 0 && ps.dead_lettered == 0 && replies_empty,
          fmt::format("the request and reply ports are empty ({} requests redelivered after a "
                      "kill)",
                      ps.redelivered));
  });
  return failed;
}

std::string percentiles(std::vector<std::int64_t> ns) {
  if (ns.empty()) return "no samples";
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) {
    return static_cast<double>(ns[std::min(
               ns.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ns.size())))]) /
           1e6;
  };
  return fmt::format("p50 {:.2f} ms, p99 {:.2f} ms ({} samples)", at(0.5), at(0.99), ns.size());
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  pool_type pool(pool_type::options{.bank_size = std::size_t{32} << 20});
  auto* shared = shared_array<shared_state>(1);
  const std::uint64_t max_own = max_calls / o.clients;
  std::vector<acked_call*> acked;
  for (std::uint32_t c = 0; c < o.clients; ++c)
    acked.push_back(shared_array<acked_call>(max_own));

  ftm::atomically(pool, [&](auto& tx) {
    auto st = tx.open(ftm::root<server_state>(tx, "page_server"));
    st->seg = ftm::create<segment>(tx);
    st->log = ftm::create<effect_log>(tx);
    bookkeeping b{};
    std::fill(std::begin(b.client_quota), std::end(b.client_quota), opening_quota);
    st->books = tx.create(b);
    // A service's request port has no delivery limit: a request is delivered again
    // after each kill of its server. Each client keeps 64 call numbers' replies.
    st->service = ftm::make_service<page_request, page_reply>(
        tx, {.capacity = 64, .window = 64, .max_clients = max_clients});
  });
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "page_server")); });

  // The clients are processes, forked before any thread starts.
  std::vector<ftm::reply_port<page_reply>> reply_ports;
  std::vector<pid_t> clients;
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    reply_ports.push_back(ftm::atomically(
        pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<page_reply>>(tx); }));
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) client(pool, st.service, reply_ports.back(), c, shared, acked[c], max_own);
    clients.push_back(pid);
  }

  // [snippet:supervise]
  // The backup processor: runs the server in a child process and restarts it, after
  // recovering the pool, each time it dies.
  ftm::supervisor sup(pool,
                      {.name = "page_server",
                       .intensity = {.max_restarts = 1'000'000, .period = std::chrono::seconds(1)}},
                      [shared](pool_type& p) { page_server(p, shared); });
  std::thread backup([&] { sup.run(); });  // returns after sup.stop()
  // [end-snippet]

  fmt::print(
      "page server: {} clients calling read_page/write_page on {} pages for {} s, {}\n", o.clients,
      n_pages, o.seconds,
      o.chaos ? "chaos on: the server is killed with SIGKILL at random intervals" : "no chaos");
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> interval_ms(5, 150);
  std::uint64_t kills = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + std::chrono::duration<double>(o.seconds);
  auto next_kill = t0 + std::chrono::milliseconds(interval_ms(rng));
  auto next_status = t0;
  std::uint64_t served_at_start = 0, last_start = 0;
  auto total_calls = [&] {
    std::uint64_t n = 0;
    for (std::uint32_t c = 0; c < o.clients; ++c)
      n += shared->calls[c].load();
    return n;
  };
  auto status = [&] {
    const auto s = sup.stats();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string line =
        fmt::format("[{:5.1f} s] calls: {:8}  kills: {:5}  recoveries: {:5}  server pid: {:7}", t,
                    total_calls(), kills, s.recoveries, sup.task_pid());
    if (tty) {
      fmt::print("\r{}", line);
    } else {
      fmt::print("{}\n", line);
    }
    std::fflush(stdout);
  };
  shared->go.store(true);
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) break;
    if (o.chaos && now >= next_kill) {
      // Kill each instance once it has served, so that calls keep completing.
      const auto s = sup.stats();
      if (s.starts != last_start) {
        last_start = s.starts;
        served_at_start = shared->served.load();
      }
      if (sup.task_pid() != 0 && shared->served.load() > served_at_start) {
        shared->killed_at_ns.store(now_ns());
        if (sup.signal_task(SIGKILL)) ++kills;
        next_kill = now + std::chrono::milliseconds(interval_ms(rng));
      }
    }
    if (now >= next_status) {
      status();
      next_status = now + (tty ? 100ms : 1000ms);
    }
    std::this_thread::sleep_for(1ms);
  }
  shared->stop.store(true);
  bool clients_ok = true;
  for (std::size_t c = 0; c < clients.size(); ++c) {
    int wstatus = 0;
    ::waitpid(clients[c], &wstatus, 0);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0 || shared->client_failed[c].load())
      clients_ok = false;
  }
  status();
  if (tty) fmt::print("\n");
  sup.stop();
  backup.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const auto s = sup.stats();
  std::vector<std::int64_t> samples(
      shared->recovery_ns,
      shared->recovery_ns +
          std::min<std::size_t>(shared->n_samples.load(), std::size(shared->recovery_ns)));
  fmt::print("\nsummary\n");
  fmt::print("  calls completed: {} in {:.1f} s ({:.0f} per second)\n", total_calls(), elapsed,
             static_cast<double>(total_calls()) / elapsed);
  fmt::print("  kills: {}; recoveries: {} (transactions undone: {})\n", kills, s.recoveries,
             s.recovered.undone);
  fmt::print("  recovery time, from the kill to the restarted server's first call: {}\n",
             percentiles(samples));
  fmt::print("exactly-once verification\n");
  int failed = verify(pool, o, acked, *shared, reply_ports);
  if (!clients_ok) {
    fmt::print("  [FAILED] a client process failed\n");
    ++failed;
  }
  if (o.chaos && kills == 0) {
    fmt::print("  [FAILED] chaos mode killed nothing\n");
    ++failed;
  }
  fmt::print("{}\n", failed == 0 ? "every call took effect exactly once" : "VERIFICATION FAILED");
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
