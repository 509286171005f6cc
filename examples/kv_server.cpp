// A reliable key-value server over `ftm::stable_hash_map`: client processes call
// put, get and erase on a service (`ftm::make_service`) with idempotency keys; the
// server is a stable task under `ftm::supervisor`. In chaos mode (the default) the
// server and the clients are killed with SIGKILL at random intervals: the server is
// restarted after recovery, and a killed client is restarted by its launcher, sends
// its unanswered call again with the same key (`ftm::call_key`) and must get the
// reply the first send got. Each client owns its keys and keeps a model of them
// (in memory that outlives it), so it checks every reply as it comes: a put applied
// twice would show as a version skipped, a lost one as a version repeated. At the end
// the demo checks that the store holds exactly what the clients' models say.
//
//   kv_server [--seconds N] [--clients N] [--no-chaos]
//
// Exit status 0 only if every check holds; ctest runs this program.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/stable_hash_map.hpp>
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
#include <new>
#include <random>
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

// [snippet:kv_store]
/// A value: the payload, how many puts the key has had since it was (re)created, and
/// the call that wrote it last.
struct kv_value {
  std::uint64_t version;
  std::uint64_t last_call;
  std::array<char, 48> data;
};
using kv_store = ftm::stable_hash_map<std::uint64_t, kv_value>;

struct kv_request {
  enum kind_t : std::uint32_t { put, get, erase } kind;
  std::uint64_t key;
  std::uint64_t call_id;
  std::array<char, 48> data;
};
struct kv_reply {
  bool found;
  kv_value value;
};
using kv_service = ftm::service<kv_request, kv_reply>;

struct server_state {
  ftm::stable<kv_store> store;
  kv_service service;  // its request port and the record of the keys it applied
};

/// The server: one transaction per request. Everything it knows is in the pool, so
/// a restarted instance simply goes on.
void kv_server(pool_type& pool, std::atomic<std::uint64_t>* served) {
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "kv_server")); });
  ftm::serve(pool, st.service, [&](ftm::transaction<pool_type>& tx, const kv_request& req) {
    served->fetch_add(1);
    auto store = ftm::open(tx, st.store);  // locks only what each operation touches
    kv_reply reply{};
    if (req.kind == kv_request::put) {
      kv_value& v = store[req.key];  // inserted as version 0 if new
      v = {v.version + 1, req.call_id, req.data};
      reply = {true, v};
    } else if (req.kind == kv_request::get) {
      if (auto it = store.find(req.key); it != store.end()) reply = {true, it->second};
    } else {
      if (auto it = store.find(req.key); it != store.end()) reply = {true, it->second};
      store.erase(req.key);
    }
    return reply;
  });
}
// [end-snippet]

constexpr std::uint32_t max_clients = 8;
constexpr std::uint64_t keys_per_client = 256;

/// A client's model of one of its keys.
struct model_entry {
  bool exists;
  std::uint64_t version;
  std::uint64_t last_call;
};

/// A client's call that may not have been answered: a client killed before it applied
/// the reply to its model sends it again, with the same key, once restarted.
struct pending_call {
  std::atomic<bool> active;
  std::uint64_t sequence;  // the key's sequence number
  kv_request request;
  model_entry before;  // the key's model before the call
};

struct shared_state {
  std::atomic<bool> go;
  std::atomic<bool> stop;
  std::atomic<std::uint64_t> served;
  std::atomic<std::uint64_t> calls[max_clients];
  std::atomic<std::uint64_t> mismatches[max_clients];
  std::atomic<std::uint64_t> resent[max_clients];    // calls sent again after a kill
  std::atomic<std::uint64_t> restarts[max_clients];  // of the client's process
  std::atomic<pid_t> client_pid[max_clients];
  std::atomic<bool> client_failed[max_clients];
  std::uint64_t next_sequence[max_clients];
  pending_call pending[max_clients];
  model_entry models[max_clients][keys_per_client];
};

std::uint64_t key_of(std::uint32_t client, std::uint64_t k) {
  return (std::uint64_t{client} << 32) | k;
}

/// The key's model after `req` got `rep`, from the model before; false in `ok` if the
/// reply is not what the model says it must be.
model_entry next_model(const model_entry& m, const kv_request& req, const kv_reply& rep, bool& ok) {
  if (req.kind == kv_request::put) {
    const std::uint64_t expect = m.exists ? m.version + 1 : 1;
    ok = rep.found && rep.value.version == expect && rep.value.last_call == req.call_id;
    return {true, expect, req.call_id};
  }
  ok = rep.found == m.exists &&
       (!m.exists || (rep.value.version == m.version && rep.value.last_call == m.last_call));
  return req.kind == kv_request::erase ? model_entry{false, 0, 0} : m;
}

/// A client process: random puts, gets and erases of its own keys, each reply
/// checked against its model. A restarted client first finishes the call its
/// predecessor left: the same key and body, so the service answers it from its record
/// if it was applied. Every step is safe to repeat: the model is computed from the
/// state before the call.
[[noreturn]] void client(pool_type& pool, const kv_service& service,
                         ftm::reply_port<kv_reply> replies, std::uint32_t index,
                         shared_state* shared) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  model_entry* model = shared->models[index];
  pending_call& p = shared->pending[index];
  std::uint64_t& next = shared->next_sequence[index];
  std::mt19937_64 rng(index + 7 + 1000 * shared->restarts[index].load());
  while (!shared->go.load())
    std::this_thread::sleep_for(1ms);
  // [snippet:kv_client]
  auto finish = [&](bool again) {
    const ftm::call_key key{index + 1, p.sequence};  // client ids start at 1
    const kv_reply rep = ftm::call(pool, service, replies, key, p.request);
    bool ok = true;
    model[p.request.key % keys_per_client] = next_model(p.before, p.request, rep, ok);
    if (!ok) shared->mismatches[index].fetch_add(1);
    if (again) shared->resent[index].fetch_add(1);
    next = std::max(next, p.sequence + 1);
    shared->calls[index].store(p.sequence);
    p.active.store(false);
  };
  // [end-snippet]
  try {
    if (p.active.load()) finish(true);  // the call a killed predecessor left
    while (!shared->stop.load()) {
      const std::uint64_t k = rng() % keys_per_client;
      const auto roll = rng() % 100;
      const std::uint64_t seq = next;
      p.request = {roll < 50   ? kv_request::put
                   : roll < 90 ? kv_request::get
                               : kv_request::erase,
                   key_of(index, k),
                   (std::uint64_t{index} << 32) | seq,
                   {}};
      std::memcpy(p.request.data.data(), &p.request.call_id, sizeof p.request.call_id);
      p.before = model[k];
      p.sequence = seq;
      p.active.store(true);
      finish(false);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "client %u: %s\n", index, e.what());
    shared->client_failed[index].store(true);
  }
  std::_Exit(0);
}

/// A client's launcher, a process without threads (so that it may fork): runs the
/// client, and after each kill recovers what the client held in the pool and starts
/// it again. Exits 0 when the client ended well.
[[noreturn]] void launcher(pool_type& pool, const kv_service& service,
                           ftm::reply_port<kv_reply> replies, std::uint32_t index,
                           shared_state* shared) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  for (;;) {
    const pid_t pid = ::fork();
    if (pid < 0) std::_Exit(2);
    if (pid == 0) client(pool, service, replies, index, shared);
    shared->client_pid[index].store(pid);
    int status = 0;
    ::waitpid(pid, &status, 0);
    shared->client_pid[index].store(0);
    if (!WIFSIGNALED(status)) {
      std::_Exit(WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1);
    }
    pool.recover();  // the locks and transaction the killed client held
    shared->restarts[index].fetch_add(1);
  }
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
    fmt::print(stderr, "kv_server: --clients must be 1 to {} and --seconds positive\n",
               max_clients);
    std::exit(2);
  }
  return o;
}

/// The store against the clients' models, and its structure. Returns the failures.
int verify(pool_type& pool, const options& o, const shared_state& shared) {
  int failed = 0;
  auto check = [&](bool ok, const std::string& what) {
    fmt::print("  [{}] {}\n", ok ? "ok" : "FAILED", what);
    if (!ok) ++failed;
  };
  std::uint64_t mismatches = 0, calls = 0;
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    mismatches += shared.mismatches[c].load();
    calls += shared.calls[c].load();
  }
  check(mismatches == 0,
        fmt::format("each of the {} replies matched its client's model: no put lost or applied "
                    "twice ({} mismatches)",
                    calls, mismatches));
  ftm::atomically(pool, [&](auto& tx) {
    const server_state st = *tx.open_read(ftm::root<server_state>(tx, "kv_server"));
    auto store = ftm::open_read(tx, st.store);
    bool structure = true;
    try {
      store.verify();
    } catch (const ftm::error& e) {
      fmt::print("  {}\n", e.what());
      structure = false;
    }
    check(structure, "the hash map's structure is valid (every segment, bucket and node walked)");
    std::uint64_t expected = 0, wrong = 0;
    for (std::uint32_t c = 0; c < o.clients; ++c) {
      for (std::uint64_t k = 0; k < keys_per_client; ++k) {
        const model_entry& m = shared.models[c][k];
        expected += m.exists ? 1 : 0;
        const auto it = store.find(key_of(c, k));
        const bool found = it != store.end();
        const bool same =
            found == m.exists &&
            (!found || (it->second.version == m.version && it->second.last_call == m.last_call));
        wrong += same ? 0 : 1;
      }
    }
    check(wrong == 0 && store.size() == expected,
          fmt::format("the store holds exactly the clients' {} keys with their last versions ({} "
                      "differ, {} entries)",
                      expected, wrong, store.size()));
    const auto ps = ftm::port_stats_of(tx, st.service.requests);
    check(ps.depth == 0 && ps.dead_lettered == 0,
          fmt::format("the request port is empty ({} requests redelivered after a kill)",
                      ps.redelivered));
  });
  return failed;
}

template <class T>
T* shared_object() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(2);
  }
  return ::new (p) T{};
}

}  // namespace

int main(int argc, char** argv) {
  const options o = parse(argc, argv);
  pool_type pool(pool_type::options{.bank_size = std::size_t{32} << 20});
  auto* shared = shared_object<shared_state>();

  ftm::atomically(pool, [&](auto& tx) {
    auto st = tx.open(ftm::root<server_state>(tx, "kv_server"));
    st->store = ftm::create<kv_store>(tx);
    ftm::open(tx, st->store).reserve_segments();
    // A service's request port never dead-letters a request for its deliveries alone,
    // and it records each key it applied with its reply.
    st->service = ftm::make_service<kv_request, kv_reply>(tx, {.capacity = 64});
  });
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "kv_server")); });

  // The launchers are processes, forked before any thread starts.
  std::vector<pid_t> clients;
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    shared->next_sequence[c] = 1;
    const auto replies = ftm::atomically(
        pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<kv_reply>>(tx); });
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) launcher(pool, st.service, replies, c, shared);
    clients.push_back(pid);
  }

  ftm::supervisor sup(pool,
                      {.name = "kv_server",
                       .intensity = {.max_restarts = 1'000'000, .period = std::chrono::seconds(1)}},
                      [shared](pool_type& p) { kv_server(p, &shared->served); });
  std::thread backup([&] { sup.run(); });

  fmt::print(
      "kv server: {} clients calling put/get/erase on a stable_hash_map for {} s, {}\n", o.clients,
      o.seconds,
      o.chaos ? "chaos on: the server and the clients are killed with SIGKILL at random intervals"
              : "no chaos");
  std::mt19937 rng(4321);
  std::uniform_int_distribution<int> interval_ms(5, 150);
  std::uint64_t kills = 0, served_at_start = 0, last_start = 0, client_kills = 0;
  std::vector<std::uint64_t> calls_at_kill(o.clients, 0);
  auto next_client_kill = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + std::chrono::duration<double>(o.seconds);
  auto next_kill = t0 + std::chrono::milliseconds(interval_ms(rng));
  shared->go.store(true);
  while (std::chrono::steady_clock::now() < end) {
    const auto now = std::chrono::steady_clock::now();
    if (o.chaos && now >= next_kill) {
      // Kill each instance once it has served, so that calls keep completing.
      const auto s = sup.stats();
      if (s.starts != last_start) {
        last_start = s.starts;
        served_at_start = shared->served.load();
      }
      if (sup.task_pid() != 0 && shared->served.load() > served_at_start) {
        if (sup.signal_task(SIGKILL)) ++kills;
        next_kill = now + std::chrono::milliseconds(interval_ms(rng));
      }
    }
    if (o.chaos && now >= next_client_kill) {
      // Kill a client once it has completed a call since its last kill.
      const std::uint32_t c = static_cast<std::uint32_t>(rng() % o.clients);
      const std::uint64_t done = shared->calls[c].load();
      const pid_t pid = shared->client_pid[c].load();
      if (pid != 0 && done > calls_at_kill[c] && ::kill(pid, SIGKILL) == 0) {
        calls_at_kill[c] = done;
        ++client_kills;
      }
      next_client_kill = now + std::chrono::milliseconds(interval_ms(rng));
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
  sup.stop();
  backup.join();
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::uint64_t calls = 0;
  for (std::uint32_t c = 0; c < o.clients; ++c)
    calls += shared->calls[c].load();
  const auto s = sup.stats();
  fmt::print("summary\n  calls completed: {} in {:.1f} s ({:.0f} per second)\n", calls, elapsed,
             static_cast<double>(calls) / elapsed);
  std::uint64_t resent = 0, restarts = 0;
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    resent += shared->resent[c].load();
    restarts += shared->restarts[c].load();
  }
  fmt::print("  server kills: {}; recoveries: {} (transactions undone: {})\n", kills, s.recoveries,
             s.recovered.undone);
  fmt::print("  client kills: {}; restarts: {}; calls sent again with their keys: {}\n",
             client_kills, restarts, resent);
  fmt::print("verification\n");
  int failed = verify(pool, o, *shared);
  if (!clients_ok) {
    fmt::print("  [FAILED] a client process failed\n");
    ++failed;
  }
  if (o.chaos && (kills == 0 || client_kills == 0 || resent == 0)) {
    fmt::print("  [FAILED] chaos mode killed no server, no client, or no client mid-call\n");
    ++failed;
  }
  fmt::print("{}\n", failed == 0 ? "every call took effect exactly once" : "VERIFICATION FAILED");
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
