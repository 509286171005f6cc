// A call between two nodes over the NATS bridge (ftm::call on node A, ftm::serve on
// node B, each a pool file with its own supervised bridge tasks), side by side with a
// plain NATS request/reply (core NATS, nothing stored, not reliable), a JetStream
// request/reply without ftm (the floor of any bridge that stores both directions, see
// `floor_server`) and a local ftm::call (client and server on one pool). One
// nats-server, started by the program on 127.0.0.1 with its store in a temporary
// directory.
//
// Each benchmark records every call's latency: the counters p50_us and p99_us are its
// percentiles in microseconds (with 4 threads, the mean of each thread's percentile);
// Google Benchmark's time is the mean. The `threads`
// variants run 4 callers at once (each with its own reply port); the pipeline32
// variants send 32 calls (ftm::pipeline::submit_all) before taking their replies, for
// throughput (items_per_second).
//
//   build/gcc/nats/benchmarks/ftm_nats_bench --benchmark_repetitions=5
//     --benchmark_report_aggregates_only=true   (one line)
//
// libnats starts threads and has global state, so the program forks every process
// that uses it (the bridges, the plain and JetStream responders) before its own first
// use of libnats (the requesters); a task restarted after that would inherit libnats' state
// from this process, so nothing here is killed (the tasks have a lease, as deployed;
// the program says at exit if one was restarted).
#include "../tests/nats_harness.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/nats/bridge.hpp>
#include <ftm/nats/client.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using namespace std::chrono_literals;
using ftm::engines::pmem;

struct request {
  std::uint64_t key;
  std::uint64_t amount;
};
struct response {
  std::uint64_t total;
};
using service = ftm::service_port<request, response>;
using replies = ftm::reply_port<response>;
constexpr std::size_t max_callers = 4;
/// Calls in flight in the pipelined benchmarks.
constexpr std::size_t pipeline_depth = 32;

// The JetStream floor: what any bridge that stores both directions the way PROTOCOL.md
// asks must do at least, with the bridge's own client (same publish path: a window of
// one message with its Nats-Msg-Id, SendAsap; same push consumer, explicit acks) and
// the same stream settings, message sizes and subject shapes as the bridge's, but no
// pool, no transaction and no task between the network and the code: the requester
// publishes the request to B's stream and waits for its PubAck, the responder (a
// process of its own) takes it from its durable consumer, acks it, publishes the reply
// to A's stream and waits for its PubAck, and the requester takes the reply from its
// durable consumer and acks it.
constexpr std::size_t floor_request_size = 8 + sizeof(ftm::call_request<request, response>);
constexpr std::size_t floor_reply_size = 8 + sizeof(ftm::reply_to_call<response>);
constexpr std::string_view floor_request_subject = "floor.B.p.adder";
constexpr std::string_view floor_reply_subject = "floor.A.r.adder.1234567.16";

/// Makes both floor streams, as the bridge makes its own (retrying until the server
/// answers).
void floor_streams(ftm::nats::client& c) {
  while (!c.ensure_stream("FLOOR_B", "floor.B.>", ftm::nats::stream_options{}))
    std::this_thread::sleep_for(20ms);
  while (!c.ensure_stream("FLOOR_A", "floor.A.>", ftm::nats::stream_options{}))
    std::this_thread::sleep_for(20ms);
}

/// Publishes one message as the bridge's outbound task does, again with the same id
/// until JetStream stored it (or had).
void floor_publish(ftm::nats::client& c, std::string_view subject, std::string_view id,
                   std::span<const std::byte> data) {
  const ftm::nats::client::outgoing one{subject, id, data};
  for (;;) {
    const ftm::nats::publish_result r =
        c.publish_window(std::span<const ftm::nats::client::outgoing>(&one, 1)).front();
    if (r == ftm::nats::publish_result::stored || r == ftm::nats::publish_result::duplicate) return;
  }
}

/// The floor's responder: a process of its own, as the bridge's tasks are.
[[noreturn]] void floor_server(const std::string& url) {
  ftm::nats::client c({.servers = {url}});
  floor_streams(c);
  while (!c.open_consumer("FLOOR_B", "floor-server", ftm::nats::consumer_options{}))
    std::this_thread::sleep_for(20ms);
  std::vector<std::byte> reply(floor_reply_size, std::byte{1});
  for (std::uint64_t n = 1;;) {
    const std::optional<ftm::nats::delivery> d = c.next(1000ms);
    if (!d) continue;
    c.ack(*d);
    const std::string id = fmt::format("B/1/{}", n++);
    floor_publish(c, floor_reply_subject, id, reply);
  }
}

/// The floor's requester.
struct floor_client {
  ftm::nats::client c;
  std::uint64_t n = 0;
  std::vector<std::byte> body = std::vector<std::byte>(floor_request_size, std::byte{2});

  explicit floor_client(const std::string& url) : c({.servers = {url}}) {
    floor_streams(c);
    while (!c.open_consumer("FLOOR_A", "floor-client", ftm::nats::consumer_options{}))
      std::this_thread::sleep_for(20ms);
  }

  /// One request and its reply; false if the reply did not come in 2 s.
  bool call() {
    const std::string id = fmt::format("A/1/{}", ++n);
    floor_publish(c, floor_request_subject, id, body);
    const std::optional<ftm::nats::delivery> d = c.next(2000ms);
    if (!d) return false;
    c.ack(*d);
    return true;
  }
};

ftm::task_options forever(const char* name) {
  // The lease of a real deployment (as in the tests and the demo): an instance that
  // stops renewing it (the bridge renews it only while NATS answers; ftm::serve while
  // it waits) is killed and started again. A run where that happened says so at exit.
  return {.name = name,
          .lease = 10000ms,
          .intensity = {.max_restarts = 1000, .period = 1000ms},
          .restart = ftm::restart_policy::permanent};
}

/// The world: a nats-server, nodes A and B over it, and a local server on B.
struct world {
  std::filesystem::path dir;
  std::unique_ptr<ftm_nats_test::nats_server> nats;
  std::unique_ptr<pmem> a, b;
  service proxy{}, remote{}, local{};
  std::array<replies, max_callers> a_replies{}, b_replies{};
  replies a_pipelined{}, b_pipelined{};  // capacity pipeline_depth
  std::vector<std::unique_ptr<ftm::supervisor<pmem>>> sups;
  std::vector<std::thread> threads;
  pid_t plain_responder = -1;
  pid_t floor_responder = -1;
  std::unique_ptr<ftm::nats::client> plain;
  std::unique_ptr<floor_client> jetstream;

  world() {
    char templ[] = "/tmp/ftm-nats-bench-XXXXXX";
    dir = ::mkdtemp(templ);
    nats = std::make_unique<ftm_nats_test::nats_server>(dir / "nats", "bench");
    nats->start();
    a = std::make_unique<pmem>(pmem::creating, dir / "a.ftm", pmem::options{});
    b = std::make_unique<pmem>(pmem::creating, dir / "b.ftm", pmem::options{});
    auto totals_a = ftm::atomically(
        *b, [](auto& tx) { return tx.template create<std::array<std::uint64_t, 8>>(); });
    proxy = ftm::atomically(*a, [](auto& tx) {
      return service(ftm::make_port<ftm::call_request<request, response>>(
          tx, {.capacity = 64, .max_deliveries = 0}));
    });
    for (std::size_t i = 0; i < max_callers; ++i) {
      a_replies[i] = ftm::atomically(*a, [](auto& tx) {
        return replies(ftm::make_port<ftm::reply_to_call<response>>(tx, {.capacity = 16}));
      });
      b_replies[i] = ftm::atomically(*b, [](auto& tx) {
        return replies(ftm::make_port<ftm::reply_to_call<response>>(tx, {.capacity = 16}));
      });
    }
    auto deep = [](auto& tx) {
      return replies(
          ftm::make_port<ftm::reply_to_call<response>>(tx, {.capacity = pipeline_depth}));
    };
    a_pipelined = ftm::atomically(*a, deep);
    b_pipelined = ftm::atomically(*b, deep);
    std::tie(remote, local) = ftm::atomically(*b, [](auto& tx) {
      auto mk = [&] {
        return service(ftm::make_port<ftm::call_request<request, response>>(
            tx, {.capacity = 64, .max_deliveries = 0}));
      };
      return std::pair{mk(), mk()};
    });
    auto opts = [&](const char* name) {
      ftm::nats::node_options o;
      o.name = name;
      o.nats.servers = {nats->url()};
      return o;
    };
    ftm::nats::bridge<pmem> ba(opts("A")), bb(opts("B"));
    ba.bind_service(proxy, "B", "adder");
    bb.expose_service("adder", remote);
    auto server = [totals_a](service svc) {
      return [svc, totals_a](pmem& pool) {
        ftm::serve(pool, svc, [totals_a](ftm::transaction<pmem>& tx, const request& q) {
          auto t = tx.open(totals_a);
          (*t)[q.key % 8] += q.amount;
          return response{(*t)[q.key % 8]};
        });
      };
    };
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*a, forever("nats-out"), ba.outbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*a, forever("nats-in"), ba.inbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*b, forever("nats-out"), bb.outbound_task()));
    sups.push_back(
        std::make_unique<ftm::supervisor<pmem>>(*b, forever("nats-in"), bb.inbound_task()));
    sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*b, forever("remote"), server(remote)));
    sups.push_back(std::make_unique<ftm::supervisor<pmem>>(*b, forever("local"), server(local)));
    for (auto& s : sups)
      threads.emplace_back([p = s.get()] { p->run(); });
    // Every task instance forked before this process uses libnats itself (below): a
    // fork while libnats' start-up holds its global lock leaves the child stuck on it.
    for (auto& s : sups) {
      for (int i = 0; i < 10000 && s->stats().starts == 0; ++i)
        std::this_thread::sleep_for(1ms);
    }
    // The plain responder: a child process of its own.
    plain_responder = ::fork();
    if (plain_responder == 0) {
      ftm::nats::client c({.servers = {nats->url()}});
      c.serve_plain("plain.adder", ~std::uint64_t{0}, [](std::span<const std::byte> in) {
        return std::vector<std::byte>(in.begin(), in.end());
      });
      ::_exit(0);
    }
    floor_responder = ::fork();
    if (floor_responder == 0) floor_server(nats->url());
    plain =
        std::make_unique<ftm::nats::client>(ftm::nats::client_options{.servers = {nats->url()}});
    jetstream = std::make_unique<floor_client>(nats->url());
    // Warm up: the first calls make the streams, consumers and mirrors.
    for (int i = 0; i < 50; ++i)
      ftm::call(*a, proxy, a_replies[0], request{1, 1});
    const std::array<std::byte, 16> ping{};
    for (int i = 0; i < 50 && !plain->request_plain("plain.adder", ping, 2000ms);)
      ++i;
    for (int i = 0; i < 50; ++i)
      jetstream->call();
  }

  ~world() {
    plain.reset();
    jetstream.reset();
    for (const pid_t p : {plain_responder, floor_responder}) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    for (auto& s : sups)
      s->stop();
    for (auto& t : threads)
      t.join();
    for (auto& s : sups) {
      const ftm::task_stats st = s->stats();
      if (st.restarts != 0 || st.lease_kills != 0) {
        std::fprintf(stderr, "ftm_nats_bench: a task was restarted, the numbers are suspect: %s\n",
                     fmt::to_string(st).c_str());
      }
    }
    sups.clear();
    a.reset();
    b.reset();
    nats.reset();
    std::filesystem::remove_all(dir);
  }
};

world* the_world = nullptr;

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100 * static_cast<double>(v.size() - 1);
  return v[std::min(v.size() - 1, static_cast<std::size_t>(std::lround(rank)))];
}

template <class Call>
void measure(benchmark::State& state, Call call) {
  std::vector<double> us;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    call(static_cast<std::size_t>(state.thread_index()));
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["p50_us"] =
      benchmark::Counter(percentile(us, 50), benchmark::Counter::kAvgThreads);
  state.counters["p99_us"] =
      benchmark::Counter(percentile(us, 99), benchmark::Counter::kAvgThreads);
}

void bridged_call(benchmark::State& state) {
  measure(state, [](std::size_t t) {
    benchmark::DoNotOptimize(
        ftm::call(*the_world->a, the_world->proxy, the_world->a_replies[t], request{t, 1}));
  });
}
void local_call(benchmark::State& state) {
  measure(state, [](std::size_t t) {
    benchmark::DoNotOptimize(
        ftm::call(*the_world->b, the_world->local, the_world->b_replies[t], request{t, 1}));
  });
}
/// `pipeline_depth` calls sent in one transaction, then their replies taken: one
/// iteration is the batch (items_per_second counts calls; the latency counters are per
/// batch).
void pipelined(benchmark::State& state, pmem& pool, service svc, replies r) {
  ftm::pipeline<pmem, request, response> p(pool, svc, r);
  std::array<request, pipeline_depth> bodies{};
  for (std::size_t i = 0; i < bodies.size(); ++i)
    bodies[i] = request{i, 1};
  measure(state, [&](std::size_t) {
    const std::vector<ftm::request_id> ids = p.submit_all(std::span<const request>(bodies));
    for (const ftm::request_id id : ids)
      benchmark::DoNotOptimize(p.wait(id));
  });
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(pipeline_depth));
}
void bridged_pipeline(benchmark::State& state) {
  pipelined(state, *the_world->a, the_world->proxy, the_world->a_pipelined);
}
void local_pipeline(benchmark::State& state) {
  pipelined(state, *the_world->b, the_world->local, the_world->b_pipelined);
}
void plain_request(benchmark::State& state) {
  measure(state, [](std::size_t) {
    const std::array<std::byte, sizeof(request)> body{};
    benchmark::DoNotOptimize(the_world->plain->request_plain("plain.adder", body, 2000ms));
  });
}

void jetstream_request(benchmark::State& state) {
  measure(state, [&state](std::size_t) {
    if (!the_world->jetstream->call()) state.SkipWithError("no JetStream reply in 2 s");
  });
}

}  // namespace

BENCHMARK(bridged_call)->Name("nats/ftm_call_between_nodes")->UseRealTime();
BENCHMARK(bridged_call)->Name("nats/ftm_call_between_nodes")->Threads(4)->UseRealTime();
BENCHMARK(plain_request)->Name("nats/plain_request_reply")->UseRealTime();
BENCHMARK(plain_request)->Name("nats/plain_request_reply")->Threads(4)->UseRealTime();
BENCHMARK(jetstream_request)->Name("nats/jetstream_request_reply")->UseRealTime();
BENCHMARK(local_call)->Name("nats/ftm_call_local")->UseRealTime();
BENCHMARK(local_call)->Name("nats/ftm_call_local")->Threads(4)->UseRealTime();
BENCHMARK(bridged_pipeline)->Name("nats/ftm_pipeline32_between_nodes")->UseRealTime();
BENCHMARK(local_pipeline)->Name("nats/ftm_pipeline32_local")->UseRealTime();

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  world w;
  the_world = &w;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  the_world = nullptr;
  return 0;
}
