#ifndef FTM_BENCHMARKS_WORKLOAD_HPP
#define FTM_BENCHMARKS_WORKLOAD_HPP

/// \file
/// What every system in the benchmark works on: a 64-byte record of eight 8-byte
/// fields, and the libitm peer's entry points, compiled apart with `-fgnu-tm`.

#include <cstdint>

namespace ftm_bench {

/// The object of every workload: one cache line of eight 8-byte fields.
struct record {
  std::int64_t field[8];
};
static_assert(sizeof(record) == 64, "the workloads are defined on 64-byte objects");

/// A record alone on its cache lines, so objects of different threads never share one.
struct alignas(64) itm_slot {
  record value;
};

#ifndef FTM_BENCH_NO_ITM
/// The tiny write in a GCC transaction: changes two fields of `r`.
void itm_tiny_write(record& r) noexcept;
/// The read-only transaction: reads two fields of `r`.
std::int64_t itm_read(const record& r) noexcept;
#endif

}  // namespace ftm_bench

#endif  // FTM_BENCHMARKS_WORKLOAD_HPP
