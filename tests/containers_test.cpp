// The stable containers on every engine: contents, growth past one chunk, abort,
// reopening a pool, the views' rules at run time, and standard algorithms on a read view.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/stable_vector.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <ranges>
#include <stdexcept>
#include <vector>

namespace {

using ftm_test::engine_factory;

struct point {
  std::int64_t x;
  std::int64_t y;
};

}  // namespace

ENGINE_TEST("stable_vector grows past many chunks and reads back, all or nothing") {
  auto pool = engine_factory<E>::make(std::size_t{16} << 20);
  using tx_t = ftm::transaction<E>;
  auto ref = ftm::atomically(
      *pool, [](tx_t& tx) { return tx.template root<ftm::stable_vector<std::uint64_t>>("v"); });
  // 200,000 elements: 1.6 MB, 391 chunks of 4 KiB, in transactions of 20,000 (a
  // transaction locks at most 1,024 objects: chunks, directories, allocator records).
  const std::uint64_t n = 200000 / ftm_test::transaction_divisor<E>;
  for (std::uint64_t base = 0; base < n; base += 20000) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      std::vector<std::uint64_t> batch;
      for (std::uint64_t i = base; i < std::min(n, base + 20000); ++i)
        batch.push_back(i * 3);
      v.append(batch);
    });
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    REQUIRE(v.size() == n);
    CHECK(v[0] == 0);  // NOLINT
    CHECK(v.at(n - 1) == (n - 1) * 3);
    CHECK(std::ranges::is_sorted(v));
    CHECK(std::accumulate(v.begin(), v.end(), std::uint64_t{0}) == 3 * (n * (n - 1) / 2));
    CHECK(std::ranges::find(v, 3 * 777) - v.begin() == 777);
    CHECK_THROWS_AS(static_cast<void>(v.at(n)), ftm::invalid_argument);
  });
  // An aborted change leaves the vector as it was.
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto v = ftm::open(tx, ref);
                                    v.resize(10);
                                    v.push_back(42);
                                    v[0] = 99;
                                    throw stop{};
                                  }),
                  stop);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    CHECK(v.size() == n);
    CHECK(v.back() == (n - 1) * 3);
    CHECK(v.front() == 0);
  });
  // Shrinking frees the chunks: the pool has room for the whole again, many times.
  for (int round = 0; round < 3; ++round) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      v.resize(5);
      CHECK(v.size() == 5);
    });
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      v.resize(n);  // grows again, the new elements zero
      CHECK(v[4] == 12);
      CHECK(v[5] == 0);
      CHECK(v[n - 1] == 0);
    });
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open(tx, ref);
    v.clear();
    CHECK(v.empty());
  });
}

ENGINE_TEST("stable_vector of structs: push, pop, set, copy out") {
  auto pool = engine_factory<E>::make();
  using tx_t = ftm::transaction<E>;
  auto ref = ftm::atomically(
      *pool, [](tx_t& tx) { return tx.template create<ftm::stable_vector<point>>(); });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open(tx, ref);
    for (std::int64_t i = 0; i < 1000; ++i)
      v.push_back({i, -i});
    v.pop_back();
    v.set(3, {7, 7});
    CHECK_THROWS_AS(v.set(999, {0, 0}), ftm::invalid_argument);
  });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    REQUIRE(v.size() == 999);
    std::vector<point> out(10);
    v.copy_to(250, out);
    CHECK(out[9].x == 259);
    CHECK(v[3].y == 7);
    CHECK(std::ranges::count_if(v, [](const point& p) { return p.x + p.y == 0; }) == 998);
  });
}

TEST_CASE("a container view used after its transaction ended is refused") {
  auto pool = engine_factory<ftm::engines::dual_bank>::make();
  ftm::transaction<ftm::engines::dual_bank> tx(*pool);
  tx.begin();
  auto ref = tx.create<ftm::stable_vector<int>>();
  auto v = ftm::open(tx, ref);
  v.push_back(1);
  tx.commit();
#if FTM_CHECKED
  CHECK_THROWS_AS(v.push_back(2), ftm::usage_error);
#endif
  tx.begin();
  CHECK(ftm::open_read(tx, ref).size() == 1);
  CHECK_THROWS_AS(ftm::open_read(tx, ftm::stable<ftm::stable_vector<int>>{}), ftm::usage_error);
  tx.commit();
}
