// ftm-bench's latency histogram (tools/bench/histogram.hpp): buckets cover every
// 64-bit value, a value's bucket holds it, and percentiles are within the buckets'
// precision of the exact ones.

#include "../tools/bench/histogram.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

using bench::histogram;

TEST_CASE("every value falls in a bucket whose range holds it") {
  std::mt19937_64 rng(7);
  std::vector<std::uint64_t> values = {
      0, 1, 255, 256, 257, 511, 512, 1000, 65535, 65536, ~std::uint64_t{0}, ~std::uint64_t{0} - 1};
  for (int i = 0; i < 20000; ++i)
    values.push_back(rng() >> (rng() % 64));
  for (const auto v : values) {
    const auto i = histogram::index_of(v);
    REQUIRE(i < histogram::bucket_count);
    CHECK(histogram::upper_of(i) >= v);
    if (i > 0) CHECK(histogram::upper_of(i - 1) < v);
  }
  CHECK(histogram::index_of(~std::uint64_t{0}) == histogram::bucket_count - 1);
}

TEST_CASE("buckets are contiguous and ascending") {
  for (std::size_t i = 1; i < histogram::bucket_count; ++i) {
    REQUIRE(histogram::upper_of(i) > histogram::upper_of(i - 1));
    REQUIRE(histogram::index_of(histogram::upper_of(i - 1) + 1) == i);
  }
}

TEST_CASE("percentiles are within 1% of the exact ones, count, min, max and mean exact") {
  std::mt19937_64 rng(11);
  std::lognormal_distribution<double> latency(8.0, 1.5);  // a long tail around 3 us
  std::vector<std::uint64_t> values;
  histogram h;
  for (int i = 0; i < 100000; ++i) {
    const auto v = static_cast<std::uint64_t>(latency(rng));
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  for (const double p : {50.0, 90.0, 99.0, 99.9, 100.0}) {
    const auto rank = static_cast<std::size_t>(std::max(1.0, std::ceil(p / 100.0 * values.size())));
    const auto exact = static_cast<double>(values[rank - 1]);
    const auto got = static_cast<double>(h.percentile(p));
    CAPTURE(p);
    CHECK(got >= exact);
    CHECK(got <= exact * 1.01 + 1);
  }
  CHECK(h.count() == values.size());
  CHECK(h.min() == values.front());
  CHECK(h.max() == values.back());
  double sum = 0;
  for (const auto v : values)
    sum += static_cast<double>(v);
  CHECK(h.mean() == doctest::Approx(sum / values.size()));
}

TEST_CASE("merging two histograms is recording both") {
  histogram a, b, both;
  for (std::uint64_t v = 1; v < 5000; v += 7) {
    (v % 2 ? a : b).record(v * 13);
    both.record(v * 13);
  }
  a.merge(b);
  for (const double p : {1.0, 50.0, 99.0, 100.0})
    CHECK(a.percentile(p) == both.percentile(p));
  CHECK(a.count() == both.count());
  CHECK(a.max() == both.max());
  CHECK(a.min() == both.min());
}

TEST_CASE("an empty histogram reports zeros") {
  const histogram h;
  CHECK(h.count() == 0);
  CHECK(h.percentile(99) == 0);
  CHECK(h.max() == 0);
  CHECK(h.min() == 0);
}
