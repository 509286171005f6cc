// A reliable key-value server over `ftm::stable_hash_map`: client processes call
// put, get and erase through a stable port; the server is a stable task under
// `ftm::supervisor`, killed with SIGKILL at random intervals in chaos mode (the
// default) and restarted after recovery. Each client owns its keys and keeps a model
// of them, so it checks every reply as it comes: a put applied twice would show as a
// version skipped, a lost one as a version repeated. At the end the demo checks that
// the store holds exactly what the clients' models say.
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
using kv_service = ftm::service_port<kv_request, kv_reply>;

struct server_state {
  ftm::stable<kv_store> store;
  kv_service port;
};

/// The server: one transaction per request. Everything it knows is in the pool, so
/// a restarted instance simply goes on.
void kv_server(pool_type& pool, std::atomic<std::uint64_t>* served) {
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "kv_server")); });
  ftm::serve(pool, st.port, [&](ftm::transaction<pool_type>& tx, const kv_request& req) {
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

struct shared_state {
  std::atomic<bool> go;
  std::atomic<bool> stop;
  std::atomic<std::uint64_t> served;
  std::atomic<std::uint64_t> calls[max_clients];
  std::atomic<std::uint64_t> mismatches[max_clients];
  std::atomic<bool> client_failed[max_clients];
  model_entry models[max_clients][keys_per_client];
};

std::uint64_t key_of(std::uint32_t client, std::uint64_t k) {
  return (std::uint64_t{client} << 32) | k;
}

/// A client process: random puts, gets and erases of its own keys, each reply
/// checked against its model.
[[noreturn]] void client(pool_type& pool, kv_service port, ftm::reply_port<kv_reply> replies,
                         std::uint32_t index, shared_state* shared) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  std::mt19937_64 rng(index + 7);
  model_entry* model = shared->models[index];
  while (!shared->go.load())
    std::this_thread::sleep_for(1ms);
  std::uint64_t n = 0;
  try {
    while (!shared->stop.load()) {
      const std::uint64_t k = rng() % keys_per_client;
      const auto roll = rng() % 100;
      kv_request req{roll < 50   ? kv_request::put
                     : roll < 90 ? kv_request::get
                                 : kv_request::erase,
                     key_of(index, k),
                     (std::uint64_t{index} << 32) | (n + 1),
                     {}};
      std::memcpy(req.data.data(), &req.call_id, sizeof req.call_id);
      const kv_reply rep = ftm::call(pool, port, replies, req);
      model_entry& m = model[k];
      bool ok = true;
      if (req.kind == kv_request::put) {
        const std::uint64_t expect = m.exists ? m.version + 1 : 1;
        ok = rep.found && rep.value.version == expect && rep.value.last_call == req.call_id;
        m = {true, expect, req.call_id};
      } else {
        ok = rep.found == m.exists &&
             (!m.exists || (rep.value.version == m.version && rep.value.last_call == m.last_call));
        if (req.kind == kv_request::erase) m = {false, 0, 0};
      }
      if (!ok) shared->mismatches[index].fetch_add(1);
      shared->calls[index].store(++n);
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
    const auto ps = ftm::port_stats_of(tx, st.port);
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
    st->port = ftm::make_port<ftm::call_request<kv_request, kv_reply>>(
        tx, ftm::port_options{.capacity = 64, .max_deliveries = 0});
  });
  const server_state st = ftm::atomically(
      pool, [](auto& tx) { return *tx.open_read(ftm::root<server_state>(tx, "kv_server")); });

  std::vector<pid_t> clients;
  for (std::uint32_t c = 0; c < o.clients; ++c) {
    const auto replies = ftm::atomically(
        pool, [](auto& tx) { return ftm::make_port<ftm::reply_to_call<kv_reply>>(tx); });
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) client(pool, st.port, replies, c, shared);
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
      o.chaos ? "chaos on: the server is killed with SIGKILL at random intervals" : "no chaos");
  std::mt19937 rng(4321);
  std::uniform_int_distribution<int> interval_ms(5, 150);
  std::uint64_t kills = 0, served_at_start = 0, last_start = 0;
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
  fmt::print("  kills: {}; recoveries: {} (transactions undone: {})\n", kills, s.recoveries,
             s.recovered.undone);
  fmt::print("verification\n");
  int failed = verify(pool, o, *shared);
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
