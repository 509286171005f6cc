// Rule: an opened<T> cannot leave the scope that opened it (it is neither copyable
// nor movable), so returning a named handle from a function does not compile.
//
// expected-error-gcc: use of deleted function
// expected-error: ftm::opened<T> cannot be copied or moved: it is bound to its transaction
// expected-error-clang: call to deleted constructor

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

struct account {
  long balance;
};

ftm::opened<account> leak(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  ftm::opened<account> acc = tx.open(ref);
  acc->balance += 10;
  return acc;
}
