// Rule: an opened<T> is bound to its transaction and closed exactly once, so it
// cannot be copied.
//
// expected-error-gcc: use of deleted function
// expected-error: ftm::opened<T> cannot be copied or moved: it is bound to its transaction
// expected-error-clang: call to deleted constructor

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

struct account {
  long balance;
};

void deposit(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  auto acc = tx.open(ref);
  auto copy = acc;
  copy->balance += 10;
}
