// The stable containers on every engine: contents, growth past one chunk, abort,
// reopening a pool, the views' rules at run time, and standard algorithms on a read view.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <ranges>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using ftm_test::engine_factory;

/// A stable object that holds a container: through its handle, like any link.
struct document {
  ftm::stable<ftm::stable_string> body;
  std::uint64_t revision;
};

/// Bytes that differ from position to position, so a misplaced chunk shows.
std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

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

ENGINE_TEST("stable_string of 1.5 MiB: grows, is replaced in place, reads back, aborts cleanly") {
  auto pool = engine_factory<E>::make(std::size_t{16} << 20);
  using tx_t = ftm::transaction<E>;
  const std::string big = pattern((std::size_t{3} << 20) / 2, 1);  // 384 chunks
  auto doc = ftm::atomically(*pool, [&](tx_t& tx) {
    auto d = tx.template root<document>("doc");
    auto o = tx.open(d);
    o->body = tx.template create<ftm::stable_string>();
    auto s = ftm::open(tx, o->body);
    s.assign(big.substr(0, std::size_t{1} << 20));  // 1 MiB in one transaction
    return d;
  });
  auto body = ftm::atomically(*pool, [&](tx_t& tx) { return tx.open_read(doc)->body; });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open(tx, body);
    s += std::string_view(big).substr(std::size_t{1} << 20);  // grows by 0.5 MiB
    tx.open(doc)->revision = 2;
  });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open_read(tx, body);
    REQUIRE(s.size() == big.size());
    CHECK(s == big);
    CHECK(s.str() == big);
    CHECK(s.substr(4090, 20) == big.substr(4090, 20));
    CHECK(s.compare(big.substr(0, 100)) > 0);
    CHECK(std::ranges::equal(s, big));
    CHECK(std::ranges::count(s, big[7]) == std::ranges::count(big, big[7]));
  });
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto s = ftm::open(tx, body);
                                    s.replace(5000, "changed");
                                    s.resize(10);
                                    s.append(std::string(200000, 'x'));
                                    throw stop{};
                                  }),
                  stop);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open(tx, body);
    CHECK(s == big);
    s.replace(big.size() - 3, "tail!");  // past the end: grows by two
    s[0] = '#';
  });
  std::string expect = big;
  expect.replace(expect.size() - 3, 3, "tail!");
  expect[0] = '#';
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open_read(tx, body);
    CHECK(s == expect);
    CHECK(tx.open_read(doc)->revision == 2);
  });
}

TEST_CASE("stable_string survives closing and reopening a pool file") {
  const auto path = ftm_test::scratch_file("string");
  const std::string text = pattern(300000, 9);
  {
    auto pool = ftm::engines::pmem::create(path, {.bank_size = std::size_t{8} << 20});
    ftm::atomically(pool, [&](ftm::transaction<ftm::engines::pmem>& tx) {
      auto s = tx.root<ftm::stable_string>("text");
      ftm::open(tx, s).assign(text);
    });
  }
  auto pool = ftm::engines::pmem::open(path);
  ftm::atomically(pool, [&](ftm::transaction<ftm::engines::pmem>& tx) {
    auto s = ftm::open_read(tx, tx.root<ftm::stable_string>("text"));
    CHECK(s.size() == text.size());
    CHECK(s == text);
  });
}
