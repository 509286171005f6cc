#ifndef FTM_TOOLS_BENCH_HISTOGRAM_HPP
#define FTM_TOOLS_BENCH_HISTOGRAM_HPP

/// \file
/// A latency histogram with log-linear buckets, as HdrHistogram lays them out: values
/// below 2^sub_bits nanoseconds each have a bucket of their own; above, every power of
/// two is cut into 2^(sub_bits-1) equal buckets, so a percentile is within 1/2^(sub_bits-1)
/// (under 1%) of the true value, whatever the range. Fixed size, no allocation, no
/// stored samples: a worker records into its own histogram (it may live in memory
/// shared with a parent process), and the runner merges them.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

namespace bench {

class histogram {
 public:
  static constexpr int sub_bits = 8;  // 128 buckets per power of two: < 0.8% error
  static constexpr std::uint64_t sub_count = std::uint64_t{1} << sub_bits;
  static constexpr int magnitudes = 64 - sub_bits + 1;
  static constexpr std::size_t bucket_count = sub_count + (magnitudes - 1) * (sub_count / 2);

  void record(std::uint64_t value) noexcept {
    ++buckets_[index_of(value)];
    ++count_;
    max_ = std::max(max_, value);
    min_ = std::min(min_, value);
    sum_ += value;
  }

  void merge(const histogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i)
      buckets_[i] += other.buckets_[i];
    count_ += other.count_;
    max_ = std::max(max_, other.max_);
    min_ = std::min(min_, other.min_);
    sum_ += other.sum_;
  }

  [[nodiscard]] std::uint64_t count() const noexcept { return count_; }
  [[nodiscard]] std::uint64_t max() const noexcept { return count_ == 0 ? 0 : max_; }
  [[nodiscard]] std::uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; }
  [[nodiscard]] double mean() const noexcept {
    return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_);
  }

  /// The smallest recorded value v such that at least `p` percent of the values are
  /// at most v, to the bucket's precision (the bucket's upper end, never above max).
  [[nodiscard]] std::uint64_t percentile(double p) const noexcept {
    if (count_ == 0) return 0;
    const double wanted = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(count_);
    auto rank = static_cast<std::uint64_t>(wanted);
    if (static_cast<double>(rank) < wanted || rank == 0) ++rank;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += buckets_[i];
      if (seen >= rank) return std::min(upper_of(i), max_);
    }
    return max_;
  }

  /// The bucket a value falls in; public for the tests.
  static std::size_t index_of(std::uint64_t v) noexcept {
    if (v < sub_count) return static_cast<std::size_t>(v);
    const int magnitude = std::bit_width(v) - sub_bits;  // >= 1
    const std::uint64_t sub = v >> magnitude;            // in [sub_count/2, sub_count)
    return static_cast<std::size_t>(sub_count + (magnitude - 1) * (sub_count / 2) +
                                    (sub - sub_count / 2));
  }
  /// The largest value that falls in bucket `i`.
  static std::uint64_t upper_of(std::size_t i) noexcept {
    if (i < sub_count) return i;
    const std::size_t k = i - sub_count;
    const int magnitude = static_cast<int>(k / (sub_count / 2)) + 1;
    const std::uint64_t sub = sub_count / 2 + k % (sub_count / 2);
    return ((sub + 1) << magnitude) - 1;
  }

 private:
  std::array<std::uint64_t, bucket_count> buckets_{};
  std::uint64_t count_ = 0;
  std::uint64_t max_ = 0;
  std::uint64_t min_ = ~std::uint64_t{0};
  std::uint64_t sum_ = 0;
};

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_HISTOGRAM_HPP
