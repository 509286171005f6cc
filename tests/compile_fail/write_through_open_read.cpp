// Rule: open_read grants a read-only view; writing needs tx.open(ref), which takes
// the write lock and logs the old value.
//
// expected-error-gcc: assignment of member .* in read-only object
// expected-error-clang: cannot assign to .* const

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

struct account {
  long balance;
};

void deposit(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  auto view = tx.open_read(ref);
  view->balance = 100;
}
