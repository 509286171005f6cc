#ifndef FTM_TOOLS_BENCH_YCSB_HPP
#define FTM_TOOLS_BENCH_YCSB_HPP

/// \file
/// The YCSB core workloads as every system runs them: the operation mix of each
/// (A: 50% read, 50% update; B: 95/5; C: all reads; E: 95% short scans, 5% inserts;
/// F: 50% read, 50% read-modify-write), the key chooser (YCSB's scrambled zipfian, or
/// uniform), the records' bytes and the invariant all records satisfy after a run.
///
/// Differences from YCSB, all so that the check can verify a run: a record is one
/// value of --object-size bytes (YCSB: 10 fields of 100 bytes, updated one at a time);
/// an update reads the record and writes it back with its update counter raised; the
/// keys are 64-bit numbers, scrambled by a bijection so that they spread over hash
/// buckets and over key order as YCSB's hashed keys do.

#include "options.hpp"
#include "system.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace bench::ycsb {

enum class op { read, update, insert, scan, read_modify_write };

/// Whether `w` is one of the YCSB workloads.
inline bool is_ycsb(workload w) noexcept {
  return w == workload::ycsb_a || w == workload::ycsb_b || w == workload::ycsb_c ||
         w == workload::ycsb_e || w == workload::ycsb_f;
}
/// Whether `w` scans key ranges, and so needs an ordered map.
inline bool is_ordered(workload w) noexcept { return w == workload::ycsb_e; }

/// Records loaded before a run when --objects is not given.
inline constexpr std::uint64_t default_records = 100'000;
/// Longest scan of workload E (YCSB's maxscanlength); lengths are uniform in 1..this.
inline constexpr std::uint32_t max_scan_length = 100;

/// The stored key of record number `n`: a bijection of the 64-bit numbers (SplitMix64's
/// finaliser, whose steps are each invertible), so that no two records share a key.
constexpr std::uint64_t key_of(std::uint64_t n) noexcept {
  n = (n ^ (n >> 30)) * 0xbf58476d1ce4e5b9ull;
  n = (n ^ (n >> 27)) * 0x94d049bb133111ebull;
  return n ^ (n >> 31);
}

/// The number of the first record inserted by worker `w` during a run (workload E):
/// each worker numbers its inserts in its own range, far above the loaded records.
constexpr std::uint64_t first_insert(int w) noexcept {
  return (static_cast<std::uint64_t>(w) + 1) << 40;
}

/// YCSB's zipfian choice of an item in [0, n) with constant 0.99 (Gray et al., "Quickly
/// generating billion-record synthetic databases", SIGMOD 1994): item 0 is the most
/// popular. `scrambled` spreads the popular items over the key space, as YCSB does.
class zipfian {
 public:
  explicit zipfian(std::uint64_t n, double theta = 0.99) : n_(n) {
    for (std::uint64_t i = 1; i <= n; ++i)
      zeta_n_ += 1.0 / std::pow(static_cast<double>(i), theta);
    const double zeta2 = 1.0 + 1.0 / std::pow(2.0, theta);
    alpha_ = 1.0 / (1.0 - theta);
    eta_ = (1.0 - std::pow(2.0 / static_cast<double>(n), 1.0 - theta)) / (1.0 - zeta2 / zeta_n_);
    half_pow_theta_ = 1.0 + std::pow(0.5, theta);
  }
  std::uint64_t next(random& r) const noexcept {
    const double u = r.unit();
    const double uz = u * zeta_n_;
    if (uz < 1.0 || n_ == 1) return 0;
    if (uz < half_pow_theta_) return 1;
    const auto i = static_cast<std::uint64_t>(static_cast<double>(n_) *
                                              std::pow(eta_ * u - eta_ + 1.0, alpha_));
    return i < n_ ? i : n_ - 1;
  }
  std::uint64_t scrambled(random& r) const noexcept { return key_of(next(r)) % n_; }

 private:
  std::uint64_t n_;
  double zeta_n_ = 0;
  double alpha_ = 0, eta_ = 0, half_pow_theta_ = 0;
};

/// One operation of a workload: what it does, the record number it starts at, and
/// (scan) how many records it reads.
struct choice {
  op what = op::read;
  std::uint64_t record = 0;
  std::uint32_t length = 0;
};

/// A worker's chooser of operations: the workload's mix, over `n` loaded records.
class chooser {
 public:
  chooser(const options& o, std::uint64_t n, int worker)
      : o_(o),
        n_(n),
        zipf_(o.distribution == key_distribution::zipfian ? n : 1),
        next_insert_(first_insert(worker)) {}

  choice next(random& r) {
    choice c;
    const double u = r.unit();
    switch (o_.load) {
      case workload::ycsb_a: c.what = u < 0.5 ? op::read : op::update; break;
      case workload::ycsb_b: c.what = u < 0.95 ? op::read : op::update; break;
      case workload::ycsb_e: c.what = u < 0.95 ? op::scan : op::insert; break;
      case workload::ycsb_f: c.what = u < 0.5 ? op::read : op::read_modify_write; break;
      default: c.what = op::read; break;
    }
    if (c.what == op::insert) {
      c.record = next_insert_++;
      return c;
    }
    c.record = o_.distribution == key_distribution::zipfian ? zipf_.scrambled(r) : pick(r, n_, o_);
    if (c.what == op::scan) c.length = 1 + static_cast<std::uint32_t>(r.below(max_scan_length));
    return c;
  }

 private:
  const options& o_;
  std::uint64_t n_;
  zipfian zipf_;
  std::uint64_t next_insert_;
};

/// A record's bytes: its number (8 bytes), its update counter (8 bytes), then filler
/// that both determine, so that a torn or misplaced write shows in the check.
inline std::uint8_t filler(std::uint64_t record, std::uint64_t updates, std::size_t i) noexcept {
  return static_cast<std::uint8_t>(record * 31 + updates * 7 + i);
}
inline void fill(unsigned char* v, std::size_t size, std::uint64_t record,
                 std::uint64_t updates) noexcept {
  std::memcpy(v, &record, 8);
  std::memcpy(v + 8, &updates, 8);
  for (std::size_t i = 16; i < size; ++i)
    v[i] = filler(record, updates, i);
}
inline std::uint64_t updates_of(const unsigned char* v) noexcept {
  std::uint64_t u;
  std::memcpy(&u, v + 8, 8);
  return u;
}
/// An update: the record's counter raised by one, its filler rewritten to match.
inline void bump(unsigned char* v, std::size_t size) noexcept {
  std::uint64_t record;
  std::memcpy(&record, v, 8);
  fill(v, size, record, updates_of(v) + 1);
}
/// Sums a read's bytes so that the compiler keeps the read.
inline std::int64_t digest(const unsigned char* v, std::size_t size) noexcept {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < size; i += 8)
    s += v[i];
  return static_cast<std::int64_t>(s);
}

/// The invariant of a YCSB run over every record, given one by one with its stored key:
/// each record is whole (its key, number and filler agree), the loaded records are all
/// there, and the update counters add up to the updates committed (A, B, F) or the
/// records to the loaded ones plus the inserts committed (E). Records given in key order
/// (`in_key_order`, an ordered map's walk) must come in strictly increasing keys.
class invariant {
 public:
  invariant(const options& o, std::size_t size, bool in_key_order = false)
      : o_(o), size_(size), in_key_order_(in_key_order) {}
  void add(std::uint64_t key, const unsigned char* v) {
    if (in_key_order_ && records_ != 0 && key <= last_key_) ++out_of_order_;
    last_key_ = key;
    std::uint64_t record;
    std::memcpy(&record, v, 8);
    const std::uint64_t updates = updates_of(v);
    bool whole = key_of(record) == key;
    for (std::size_t i = 16; whole && i < size_; ++i)
      whole = v[i] == filler(record, updates, i);
    if (!whole) ++broken_;
    updates_ += updates;
    ++records_;
    if (record < first_insert(0)) ++loaded_;
  }
  check_result result(std::uint64_t n, std::uint64_t writes) const {
    if (out_of_order_ != 0) {
      return {false,
              fmt::format("{} records out of key order in the ordered map's walk", out_of_order_)};
    }
    if (broken_ != 0) {
      return {false, fmt::format("{} of {} records are not whole (key, number and bytes "
                                 "disagree)",
                                 broken_, records_)};
    }
    if (loaded_ != n) return {false, fmt::format("{} of the {} loaded records found", loaded_, n)};
    if (o_.load == workload::ycsb_e) {
      if (records_ != n + writes) {
        return {false,
                fmt::format("{} records, {} loaded and {} inserts committed", records_, n, writes)};
      }
      return {true, fmt::format("{} records ({} inserted), every one whole", records_, writes)};
    }
    if (updates_ != writes) {
      return {false, fmt::format("the records count {} updates, the workers committed {}", updates_,
                                 writes)};
    }
    return {true, fmt::format("{} records, {} updates, every record whole", records_, writes)};
  }

 private:
  const options& o_;
  std::size_t size_;
  bool in_key_order_;
  std::uint64_t last_key_ = 0, out_of_order_ = 0;
  std::uint64_t broken_ = 0, updates_ = 0, records_ = 0, loaded_ = 0;
};

}  // namespace bench::ycsb

#endif  // FTM_TOOLS_BENCH_YCSB_HPP
