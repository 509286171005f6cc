/// \file
/// GCC's libitm as a peer: the same workloads as `__transaction_atomic` blocks. This
/// file alone is compiled with `-fgnu-tm`, so the other systems are built as usual.

#include "workload.hpp"

namespace ftm_bench {

void itm_tiny_write(record& r) noexcept {
  __transaction_atomic {
    r.field[0] += 1;
    r.field[1] -= 1;
  }
}

std::int64_t itm_read(const record& r) noexcept {
  std::int64_t sum = 0;
  __transaction_atomic { sum = r.field[0] + r.field[1]; }
  return sum;
}

}  // namespace ftm_bench
