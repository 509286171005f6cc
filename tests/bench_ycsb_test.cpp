// ftm-bench's YCSB pieces (tools/bench/ycsb.hpp): the key scrambling is a bijection, the
// zipfian chooser favours low items by YCSB's law and stays in range, each workload's
// mix is YCSB's, and the invariant catches a torn record, a lost one and a miscount.

#include "../tools/bench/ycsb.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace ycsb = bench::ycsb;

TEST_CASE("keys of different records differ") {
  std::set<std::uint64_t> keys;
  for (std::uint64_t i = 0; i < 100000; ++i)
    keys.insert(ycsb::key_of(i));
  for (int w = 0; w < 4; ++w)
    for (std::uint64_t i = 0; i < 1000; ++i)
      keys.insert(ycsb::key_of(ycsb::first_insert(w) + i));
  CHECK(keys.size() == 104000);
}

TEST_CASE("the zipfian choice follows its law and stays in range") {
  constexpr std::uint64_t n = 10000;
  const ycsb::zipfian z(n);
  bench::random r(3);
  std::vector<std::uint64_t> count(n);
  constexpr int draws = 400000;
  for (int i = 0; i < draws; ++i) {
    const auto k = z.next(r);
    REQUIRE(k < n);
    ++count[k];
  }
  // P(0) = 1 / zeta(n), P(1) = 2^-0.99 / zeta(n): about 10% and 5% for n = 10,000.
  double zeta = 0;
  for (std::uint64_t i = 1; i <= n; ++i)
    zeta += 1.0 / std::pow(static_cast<double>(i), 0.99);
  CHECK(count[0] / double(draws) == doctest::Approx(1 / zeta).epsilon(0.05));
  CHECK(count[1] / double(draws) == doctest::Approx(std::pow(2.0, -0.99) / zeta).epsilon(0.08));
  std::uint64_t top100 = 0, bottom = 0;
  for (std::uint64_t i = 0; i < 100; ++i)
    top100 += count[i];
  for (std::uint64_t i = n - 100; i < n; ++i)
    bottom += count[i];
  CHECK(top100 > 50 * bottom);
  for (int i = 0; i < 10000; ++i)
    REQUIRE(z.scrambled(r) < n);
}

TEST_CASE("each workload's mix of operations is YCSB's") {
  struct want {
    bench::workload w;
    double reads, scans;  // shares of reads and of scans
  };
  for (const auto& [w, reads, scans] :
       {want{bench::workload::ycsb_a, 0.5, 0}, want{bench::workload::ycsb_b, 0.95, 0},
        want{bench::workload::ycsb_c, 1.0, 0}, want{bench::workload::ycsb_e, 0, 0.95},
        want{bench::workload::ycsb_f, 0.5, 0}}) {
    bench::options o;
    o.load = w;
    ycsb::chooser c(o, 1000, 0);
    bench::random r(5);
    int read = 0, scan = 0, insert = 0;
    std::uint64_t next_insert = ycsb::first_insert(0);
    constexpr int ops = 100000;
    for (int i = 0; i < ops; ++i) {
      const auto ch = c.next(r);
      if (ch.what == ycsb::op::read) ++read;
      if (ch.what == ycsb::op::scan) {
        ++scan;
        REQUIRE((ch.length >= 1 && ch.length <= ycsb::max_scan_length));
      }
      if (ch.what == ycsb::op::insert) {
        ++insert;
        REQUIRE(ch.record == next_insert++);  // inserts take new numbers, in order
      } else {
        REQUIRE(ch.record < 1000);
      }
    }
    CHECK(read / double(ops) == doctest::Approx(reads).epsilon(0.02));
    CHECK(scan / double(ops) == doctest::Approx(scans).epsilon(0.02));
    if (w == bench::workload::ycsb_e)
      CHECK(insert / double(ops) == doctest::Approx(0.05).epsilon(0.1));
  }
}

TEST_CASE("an ordered walk's invariant catches keys out of order") {
  bench::options o;
  o.load = bench::workload::ycsb_e;
  constexpr std::size_t size = 100;
  std::vector<std::pair<std::uint64_t, std::vector<unsigned char>>> records;
  for (std::uint64_t i = 0; i < 10; ++i) {
    records.emplace_back(ycsb::key_of(i), std::vector<unsigned char>(size));
    ycsb::fill(records.back().second.data(), size, i, 0);
  }
  auto walk = [&] {
    ycsb::invariant inv(o, size, /*in_key_order=*/true);
    for (const auto& [key, value] : records)
      inv.add(key, value.data());
    return inv.result(10, 0);
  };
  std::sort(records.begin(), records.end());
  CHECK(walk().ok);
  std::swap(records[3], records[4]);
  const auto r = walk();
  CHECK(!r.ok);
  CHECK(r.message.find("out of key order") != std::string::npos);
}

TEST_CASE("the invariant catches a torn record, a lost one and a miscount") {
  bench::options o;
  o.load = bench::workload::ycsb_a;
  constexpr std::size_t size = 100;
  std::vector<std::vector<unsigned char>> records(10, std::vector<unsigned char>(size));
  for (std::uint64_t i = 0; i < 10; ++i)
    ycsb::fill(records[i].data(), size, i, 0);
  ycsb::bump(records[3].data(), size);
  ycsb::bump(records[3].data(), size);
  auto run = [&](std::size_t count) {
    ycsb::invariant inv(o, size);
    for (std::uint64_t i = 0; i < count; ++i)
      inv.add(ycsb::key_of(i), records[i].data());
    return inv;
  };
  CHECK(run(10).result(10, 2).ok);
  CHECK(!run(10).result(10, 3).ok);  // a miscount
  CHECK(!run(9).result(10, 2).ok);   // a lost record
  records[5][50] ^= 1;               // a torn one
  CHECK(!run(10).result(10, 2).ok);
}
