#ifndef FTM_TOOLS_BENCH_WORKLOAD_HPP
#define FTM_TOOLS_BENCH_WORKLOAD_HPP

/// \file
/// The tiny and bank workloads as every system runs them: which objects a transaction
/// takes, what a write does to their 8-byte words, and the invariant that the words of
/// all objects satisfy after the run. ftm and the peers share these, so they run the
/// same workload and are checked by the same rule.

#include "options.hpp"
#include "system.hpp"
#include "ycsb.hpp"

#include <fmt/format.h>

#include <cstdint>

namespace bench {

/// Every bank account's balance at the start.
inline constexpr std::int64_t initial_balance = 1000;

/// The value of object `i`: `size` bytes, 8-byte fields.
inline std::uint32_t value_size(const options& o) {
  return o.load == workload::bank ? 16 : o.object_size;  // bank: balance, transfers
}
inline std::uint64_t object_count(const options& o, int workers) {
  if (o.load == workload::bank) return o.objects == 0 ? 1000 : o.objects;
  if (ycsb::is_ycsb(o.load)) return o.objects == 0 ? ycsb::default_records : o.objects;
  return o.objects == 0 ? static_cast<std::uint64_t>(workers) : o.objects;
}

/// Applies one write of the workload to the values `a` (and `b`, bank's second account).
inline void apply_write(const options& o, std::int64_t* a, std::int64_t* b, std::int64_t amount) {
  if (o.load == workload::bank) {
    a[0] -= amount;
    b[0] += amount;
    ++a[1];
    ++b[1];
    return;
  }
  for (std::uint32_t k = 0; k + 1 < o.fields; ++k)
    a[k] += 1;
  a[o.fields - 1] -= static_cast<std::int64_t>(o.fields - 1);
}

/// Checks the workload's invariant over every object's value, given one by one.
class invariant {
 public:
  explicit invariant(const options& o) : o_(o) {}
  void add(const std::int64_t* v) {
    if (o_.load == workload::bank) {
      total_ += v[0];
      legs_ += v[1];
      return;
    }
    std::int64_t sum = 0;
    for (std::uint32_t k = 0; k < o_.fields; ++k)
      sum += v[k];
    if (sum != 0) ++unbalanced_;
    total_ += v[0];
    ++objects_;
  }
  check_result result(std::uint64_t n, std::uint64_t writes) const {
    if (o_.load == workload::bank) {
      const auto expected = static_cast<std::int64_t>(n) * initial_balance;
      if (total_ != expected) {
        return {false, fmt::format("the accounts hold {} in all, {} was put in", total_, expected)};
      }
      if (legs_ != 2 * static_cast<std::int64_t>(writes)) {
        return {false, fmt::format("the accounts took part in {} transfers' legs, the workers "
                                   "committed {} transfers",
                                   legs_, writes)};
      }
      return {true, fmt::format("{} transfers among {} accounts, total conserved", writes, n)};
    }
    if (unbalanced_ != 0) return {false, fmt::format("{} objects unbalanced", unbalanced_)};
    if (total_ != static_cast<std::int64_t>(writes)) {
      return {false,
              fmt::format("the objects count {} writes, the workers committed {}", total_, writes)};
    }
    return {true, fmt::format("{} writes in {} objects, every object balanced", writes, objects_)};
  }

 private:
  const options& o_;
  std::int64_t total_ = 0;
  std::int64_t legs_ = 0;  // bank: transfers counted by both their accounts
  std::uint64_t unbalanced_ = 0;
  std::uint64_t objects_ = 0;
};

/// The two objects a transaction works on, and whether it only reads.
struct step {
  std::uint64_t a = 0, b = 0;
  bool read_only = false;
  std::int64_t amount = 0;
};
inline step next_step(random& r, const options& o, std::uint64_t n, std::uint64_t own) {
  step s;
  if (o.load == workload::tiny && o.objects == 0) {
    s.a = own % n;
  } else {
    s.a = pick(r, n, o);
  }
  s.b = pick(r, n, o);
  if (s.b == s.a) s.b = (s.a + 1) % n;
  s.read_only = o.read_ratio > 0 && r.unit() < o.read_ratio;
  s.amount = static_cast<std::int64_t>(1 + r.below(100));
  return s;
}

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_WORKLOAD_HPP
