// Two nodes exchange calls over a 3-node JetStream cluster whose streams have 3
// replicas; the leader of node B's stream is killed with SIGKILL mid-run (twice, each
// time after the cluster recovered from the last kill and the killed server came
// back), and a bridge task now and then; then the checker of two_nodes.hpp.
#include "nats_harness.hpp"
#include "two_nodes.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <csignal>

namespace {

using namespace ftm_nats_test;

TEST_CASE("calls between nodes are exactly once while the stream leader of a cluster dies") {
  nats_cluster cluster(ftm_test::scratch_dir() / "nats-cluster");
  cluster.start();
  two_nodes w(cluster.urls(), 3, 1000ms);
  w.start_clients();
  REQUIRE(w.wait_progress(0, 50, 120s));
  std::vector<std::string> killed;
  for (int round = 0; round < 2; ++round) {
    std::string leader;
    for (int i = 0; i < 200 && leader.empty(); ++i) {
      leader = cluster.leader_of("FTM_B");
      if (leader.empty()) std::this_thread::sleep_for(50ms);
    }
    REQUIRE_MESSAGE(!leader.empty(), "no member reports a leader of FTM_B");
    const std::size_t i = cluster.index_of(leader);
    REQUIRE(i < cluster.size());
    const std::uint64_t before = w.done();
    cluster[i].kill9();
    killed.push_back(leader);
    // A bridge dies too while the cluster elects a new leader.
    w.sup(static_cast<std::size_t>(round) * 2).signal_task(SIGKILL);
    REQUIRE_MESSAGE(w.wait_progress(before, 100, 120s),
                    fmt::format("no progress after the leader {} was killed", leader));
    cluster[i].start();
    REQUIRE(w.wait_progress(w.done(), 50, 120s));
  }
  const ftm::nats::bridge_stats a = w.stats_a(), b = w.stats_b();
  MESSAGE(
      fmt::format("{} calls; leaders killed: {}, {}; A: published {} ({} duplicate), "
                  "applied {}, dropped {}; B: published {} ({} duplicate), applied {}, "
                  "dropped {}",
                  w.done(), killed[0], killed[1], a.published, a.duplicates, a.applied, a.dropped,
                  b.published, b.duplicates, b.applied, b.dropped));
  CHECK(killed.size() == 2);
  w.check(300);
}

}  // namespace
