// The README's example: two accounts, one atomic transfer. Built and run by ctest,
// and quoted in README.md between the snippet markers.
// [snippet:quick_start]
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

struct account {
  long balance;
};  // a stable type: trivially copyable, no pointers

int main() {
  ftm::engines::dual_bank pool{1 << 20};  // two banks of 1 MiB, in shared memory
  using transaction = ftm::transaction<ftm::engines::dual_bank>;

  const auto a = ftm::atomically(pool, [](transaction& tx) { return tx.create(account{100}); });
  const auto b = ftm::atomically(pool, [](transaction& tx) { return tx.create(account{0}); });
  ftm::atomically(pool, [&](transaction& tx) {  // all or nothing, retried on conflict
    auto from = tx.open(a);
    auto to = tx.open(b);
    from->balance -= 30;
    to->balance += 30;
  });
  long left = ftm::atomically(pool, [&](transaction& tx) { return tx.open_read(a)->balance; });
  fmt::print("{} left; {}\n", left, pool.stats());
  return left == 70 ? 0 : 1;
}
// [end-snippet]
