/// \file
/// The consumer test's program: one account, one withdrawal, one check.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <cstdio>

struct account {
  long balance;
};

int main() {
  ftm::engines::dual_bank pool{1 << 20};
  auto ref = ftm::atomically(pool, [](auto& tx) { return tx.create(account{100}); });
  ftm::atomically(pool, [&](auto& tx) {
    auto acc = tx.open(ref);
    acc->balance -= 10;
  });
  long balance = ftm::atomically(pool, [&](auto& tx) {
    auto acc = tx.open_read(ref);
    return acc->balance;
  });
  if (balance != 90) {
    std::fprintf(stderr, "ftm consumer: balance is %ld, expected 90\n", balance);
    return 1;
  }
  std::puts("ftm consumer: ok");
  return 0;
}
