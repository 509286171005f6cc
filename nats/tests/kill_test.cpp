// Two nodes exchange calls (ftm::call on node A, ftm::serve on node B) over one
// nats-server while the four bridge tasks, the server task and the nats-server are
// killed with SIGKILL at random instants; then the checker of two_nodes.hpp.
//
// FTM_NATS_KILLS sets the kills of each kind (bridges, server, nats-server; default
// 300, a quarter of that in sanitizer builds). The killer paces its kills by
// progress: after each kill it waits until another call was answered, then kills at a
// random instant within the next few milliseconds.
#include "nats_harness.hpp"
#include "two_nodes.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <csignal>
#include <cstdlib>
#include <random>

namespace {

using namespace ftm_nats_test;

std::uint64_t kills_per_kind() {
  std::uint64_t k = 300;
  if (const char* e = std::getenv("FTM_NATS_KILLS")) k = std::strtoull(e, nullptr, 10);
  return std::max<std::uint64_t>(1, k / ftm_test::sanitizer_divisor);
}

TEST_CASE("calls between nodes are exactly once while bridges, server and nats-server die") {
  const std::uint64_t per_kind = kills_per_kind();
  nats_server ns(ftm_test::scratch_dir() / "nats-kill", "s");
  ns.start();
  two_nodes w({ns.url()}, 1, 300ms);
  w.start_clients();
  REQUIRE(w.wait_progress(0, 20, 120s));

  std::mt19937_64 rng(std::random_device{}());
  std::uint64_t bridge_kills = 0, server_kills = 0, nats_kills = 0;
  std::array<std::uint64_t, 4> per_bridge{};
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t round = 0; round < 20 * per_kind; ++round) {
    if (bridge_kills >= per_kind && server_kills >= per_kind && nats_kills >= per_kind) break;
    const std::uint64_t from = w.done();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    switch (round % 3) {
      case 0:
        if (nats_kills < per_kind) {
          ns.kill9();
          std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
          ns.start();
          ++nats_kills;
        }
        break;
      case 1:
        if (bridge_kills < per_kind) {
          const std::size_t i = rng() % 4;
          if (w.sup(i).signal_task(SIGKILL)) {
            ++bridge_kills;
            ++per_bridge[i];
          }
        }
        break;
      default:
        if (server_kills < per_kind && w.sup(4).signal_task(SIGKILL)) ++server_kills;
        break;
    }
    REQUIRE_MESSAGE(w.wait_progress(from, 1, 90s),
                    fmt::format("no call answered for 90 s after round {}", round));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const ftm::nats::bridge_stats a = w.stats_a(), b = w.stats_b();
  MESSAGE(fmt::format(
      "{:.1f} s: {} calls; kills: {} bridges (A out {}, A in {}, B out {}, B in {}), {} "
      "server, {} nats-server; A: published {} ({} duplicate), applied {}, dropped {}, "
      "held {}, resyncs {}; B: published {} ({} duplicate), applied {}, dropped {}, held {}, "
      "resyncs {}",
      secs, w.done(), bridge_kills, per_bridge[0], per_bridge[1], per_bridge[2], per_bridge[3],
      server_kills, nats_kills, a.published, a.duplicates, a.applied, a.dropped, a.held, a.resyncs,
      b.published, b.duplicates, b.applied, b.dropped, b.held, b.resyncs));
  // Not vacuous: every kind of kill as often as asked, and the protocol's defences
  // were exercised (duplicates dropped by hw or answered "duplicate" by JetStream).
  CHECK(bridge_kills >= per_kind);
  CHECK(server_kills >= per_kind);
  CHECK(nats_kills >= per_kind);
  CHECK(a.dropped + b.dropped + a.duplicates + b.duplicates > 0);
  CHECK(a.rejected + b.rejected == 0);
  w.check(std::max<std::uint64_t>(3 * per_kind, 100));
}

}  // namespace
