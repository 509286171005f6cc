// The reliable page server of examples/page_server.cpp, across two nodes: the clients
// on node A (one pool file), the server and its segment of pages on node B (another
// pool file), and between them the NATS bridge over a nats-server this program starts
// on 127.0.0.1. In chaos mode (the default) it kills, with SIGKILL at random instants
// while calls are in flight, the bridge tasks of both nodes, the server task and the
// nats-server itself; supervisors restart the tasks, the program restarts nats-server
// on its store. A status line shows the calls and kills; at the end it checks that
// every call took effect exactly once.
//
//   nats_page_server [--seconds N] [--clients N] [--no-chaos]
//
// Exit status 0 only if the verification holds.

#include "../tests/nats_harness.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/nats/bridge.hpp>
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
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using ftm::engines::pmem;

constexpr std::uint32_t page_size = 256;
constexpr std::uint32_t n_pages = 16;
using page = std::array<char, page_size>;

struct page_request {
  enum kind_t : std::uint32_t { read_page, write_page } kind;
  std::uint32_t page_number;
  std::uint64_t call_id;
  page data;
};
struct page_reply {
  std::uint64_t call_id;
  std::uint64_t version;  // the page's write count, as the server's transaction left it
  page data;
};
using page_service = ftm::service_port<page_request, page_reply>;

constexpr std::uint32_t max_clients = 8;
constexpr std::size_t seg_ids = 1000;
constexpr std::size_t max_segments = 200;
constexpr std::uint64_t max_calls = seg_ids * max_segments;

struct log_segment {
  std::uint64_t ids[seg_ids];
};
/// Node B: the pages, their write counts, and every call the server committed.
struct server_state {
  page pages[n_pages];
  std::uint64_t version[n_pages];
  std::uint64_t count;
  ftm::stable<log_segment> segs[max_segments];
};

struct acked_call {
  page_request::kind_t kind;
  std::uint32_t page_number;
  std::uint64_t call_id;
  std::uint64_t version;
  std::uint64_t page_writer;  // a read: the call id stamped in the page it got
};

std::uint64_t writer_of(const page& p) {
  std::uint64_t id = 0;
  std::memcpy(&id, p.data(), sizeof id);
  return id;
}

ftm::task_options forever(const char* name) {
  // A lease: an instance that stops making progress (its NATS connection stuck) is
  // killed and started again; the bridge renews it only while NATS answers.
  return {.name = name,
          .lease = 10000ms,
          .intensity = {.max_restarts = 100000000, .period = 1ms},
          .restart = ftm::restart_policy::permanent};
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 5;
  std::uint32_t n_clients = 3;
  bool chaos = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--clients" && i + 1 < argc) {
      n_clients = std::clamp<std::uint32_t>(std::atoi(argv[++i]), 1, max_clients);
    } else if (a == "--no-chaos") {
      chaos = false;
    } else {
      std::fprintf(stderr, "usage: %s [--seconds N] [--clients N] [--no-chaos]\n", argv[0]);
      return 2;
    }
  }
  char templ[] = "/tmp/ftm-nats-pages-XXXXXX";
  const std::filesystem::path dir = ::mkdtemp(templ);
  int status = 1;
  {
    ftm_nats_test::nats_server nats(dir / "nats", "pages");
    nats.start();
    pmem a(pmem::creating, dir / "node-a.ftm", pmem::options{});
    pmem b(pmem::creating, dir / "node-b.ftm", pmem::options{});

    // Node B: the server's state and its service port, exposed as "pages".
    const auto [served, state] = ftm::atomically(b, [](auto& tx) {
      server_state s{};
      for (auto& seg : s.segs)
        seg = ftm::create<log_segment>(tx);
      return std::pair{page_service(ftm::make_port<ftm::call_request<page_request, page_reply>>(
                           tx, {.capacity = 64, .max_deliveries = 0})),
                       tx.create(s)};
    });
    // Node A: a proxy of the remote service, and a reply port per client.
    const page_service proxy = ftm::atomically(a, [](auto& tx) {
      return page_service(ftm::make_port<ftm::call_request<page_request, page_reply>>(
          tx, {.capacity = 64, .max_deliveries = 0, .on_full = ftm::when_full::block}));
    });
    std::vector<ftm::reply_port<page_reply>> replies;
    for (std::uint32_t c = 0; c < n_clients; ++c) {
      replies.push_back(ftm::atomically(a, [](auto& tx) {
        return ftm::reply_port<page_reply>(
            ftm::make_port<ftm::reply_to_call<page_reply>>(tx, {.capacity = 16}));
      }));
    }
    auto node = [&](const char* name) {
      ftm::nats::node_options o;
      o.name = name;
      o.nats.servers = {nats.url()};
      o.nats.timeout = 300ms;
      return o;
    };
    ftm::nats::bridge<pmem> ba(node("A")), bb(node("B"));
    ba.bind_service(proxy, "B", "pages");
    bb.expose_service("pages", served);
    const auto st = state;
    const page_service svc = served;
    std::vector<std::unique_ptr<ftm::supervisor<pmem>>> sups;
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(a, forever("nats-out"), ba.outbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(a, forever("nats-in"), ba.inbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(b, forever("nats-out"), bb.outbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(b, forever("nats-in"), bb.inbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(b, forever("pages"), [st, svc](pmem& pool) {
          ftm::serve(pool, svc, [st](ftm::transaction<pmem>& tx, const page_request& req) {
            auto s = tx.open(st);
            page_reply reply{req.call_id, 0, {}};
            if (req.kind == page_request::write_page) {
              s->pages[req.page_number % n_pages] = req.data;
              reply.version = ++s->version[req.page_number % n_pages];
            } else {
              reply.data = s->pages[req.page_number % n_pages];
              reply.version = s->version[req.page_number % n_pages];
            }
            tx.open(s->segs[s->count / seg_ids])->ids[s->count % seg_ids] = req.call_id;
            ++s->count;
            return reply;
          });
        }));
    std::vector<std::thread> sup_threads;
    sup_threads.reserve(sups.size());
    for (auto& s : sups)
      sup_threads.emplace_back([p = s.get()] { p->run(); });

    // The clients, on node A.
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> calls{0};
    std::mutex mutex;
    std::vector<acked_call> acked;
    std::vector<std::thread> clients;
    for (std::uint32_t c = 0; c < n_clients; ++c) {
      clients.emplace_back([&, c] {
        std::mt19937 rng(c + 1);
        for (std::uint64_t i = 1; !stop.load() && i < max_calls / max_clients; ++i) {
          page_request req{};
          req.kind = rng() % 2 == 0 ? page_request::read_page : page_request::write_page;
          req.page_number = rng() % n_pages;
          req.call_id = (std::uint64_t{c} << 32) | i;
          std::memcpy(req.data.data(), &req.call_id, sizeof req.call_id);
          const page_reply r = ftm::call(a, proxy, replies[c], req);
          const std::lock_guard lock(mutex);
          acked.push_back({req.kind, req.page_number, req.call_id, r.version, writer_of(r.data)});
          calls.fetch_add(1);
        }
      });
    }

    // Chaos, with a status line.
    std::mt19937_64 rng(std::random_device{}());
    std::uint64_t bridge_kills = 0, server_kills = 0, nats_kills = 0;
    const auto t0 = std::chrono::steady_clock::now();
    auto status_line = [&] {
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("\r[%5.1f s] calls %llu | kills: bridges %llu, server %llu, nats-server %llu   ",
                  t, static_cast<unsigned long long>(calls.load()),
                  static_cast<unsigned long long>(bridge_kills),
                  static_cast<unsigned long long>(server_kills),
                  static_cast<unsigned long long>(nats_kills));
      std::fflush(stdout);
    };
    auto last_status = t0;
    while (std::chrono::steady_clock::now() - t0 < std::chrono::duration<double>(seconds)) {
      const std::uint64_t before = calls.load();
      std::this_thread::sleep_for(std::chrono::milliseconds(10 + rng() % 40));
      if (chaos) {
        const auto kind = rng() % 6;
        if (kind < 4) {
          bridge_kills += sups[kind]->signal_task(SIGKILL) ? 1 : 0;
        } else if (kind == 4) {
          server_kills += sups[4]->signal_task(SIGKILL) ? 1 : 0;
        } else {
          nats.kill9();
          nats.start();
          ++nats_kills;
        }
        // Paced by progress: the next kill after the next answered call.
        for (int i = 0; i < 30000 && calls.load() == before; ++i)
          std::this_thread::sleep_for(1ms);
      }
      if (std::chrono::steady_clock::now() - last_status > 250ms) {
        status_line();
        last_status = std::chrono::steady_clock::now();
      }
    }
    stop.store(true);
    for (auto& t : clients)
      t.join();
    status_line();
    std::printf("\n");
    for (auto& s : sups)
      s->stop();
    for (auto& t : sup_threads)
      t.join();

    // Verification: every acknowledged call is in the server's log exactly once, and
    // nothing else is; each page's writes saw versions 1..n; reads saw a page written
    // by an acknowledged write (or never written).
    const server_state s = ftm::atomically(b, [&](auto& tx) { return *tx.open_read(st); });
    std::map<std::uint64_t, int> logged;
    for (std::uint64_t i = 0; i < s.count; ++i) {
      const log_segment seg =
          ftm::atomically(b, [&](auto& tx) { return *tx.open_read(s.segs[i / seg_ids]); });
      ++logged[seg.ids[i % seg_ids]];
    }
    std::uint64_t lost = 0, duplicated = 0, unexpected = 0, bad_versions = 0, bad_reads = 0;
    std::map<std::uint64_t, bool> acked_writes;
    std::array<std::vector<std::uint64_t>, n_pages> versions;
    for (const acked_call& c : acked) {
      const auto it = logged.find(c.call_id);
      if (it == logged.end()) {
        ++lost;
      } else if (it->second > 1) {
        ++duplicated;
      }
      if (c.kind == page_request::write_page) {
        acked_writes[c.call_id] = true;
        versions[c.page_number].push_back(c.version);
      }
    }
    for (const acked_call& c : acked) {
      if (c.kind == page_request::read_page && c.page_writer != 0 &&
          !acked_writes.contains(c.page_writer))
        ++bad_reads;
    }
    for (std::uint32_t p = 0; p < n_pages; ++p) {
      std::sort(versions[p].begin(), versions[p].end());
      for (std::size_t i = 0; i < versions[p].size(); ++i)
        bad_versions += versions[p][i] == i + 1 ? 0 : 1;
      bad_versions += s.version[p] == versions[p].size() ? 0 : 1;
    }
    unexpected = logged.size() > acked.size() ? logged.size() - acked.size() : 0;
    const ftm::nats::bridge_stats sa = ftm::nats::bridge_stats_of(a);
    const ftm::nats::bridge_stats sb = ftm::nats::bridge_stats_of(b);
    std::printf(
        "%zu calls acknowledged, %llu in the server's log; lost %llu, duplicated %llu, "
        "unexpected %llu, page versions wrong %llu, reads of unknown writes %llu\n"
        "bridges: A applied %llu (dropped %llu duplicates), B applied %llu (dropped %llu)\n",
        acked.size(), static_cast<unsigned long long>(s.count),
        static_cast<unsigned long long>(lost), static_cast<unsigned long long>(duplicated),
        static_cast<unsigned long long>(unexpected), static_cast<unsigned long long>(bad_versions),
        static_cast<unsigned long long>(bad_reads), static_cast<unsigned long long>(sa.applied),
        static_cast<unsigned long long>(sa.dropped), static_cast<unsigned long long>(sb.applied),
        static_cast<unsigned long long>(sb.dropped));
    const bool ok = !acked.empty() && lost == 0 && duplicated == 0 && unexpected == 0 &&
                    bad_versions == 0 && bad_reads == 0 && s.count == acked.size();
    std::printf("%s\n",
                ok ? "verified: every call took effect exactly once" : "VERIFICATION FAILED");
    status = ok ? 0 : 1;
  }
  std::filesystem::remove_all(dir);
  return status;
}
