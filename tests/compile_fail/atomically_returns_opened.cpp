// Rule: ftm::atomically commits before it returns, which closes every object the
// transaction opened; a returned opened<T> would dangle, so the result type is
// rejected.
//
// expected-error-gcc: must not return an opened handle
// expected-error-clang: must not return an opened handle

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

struct account {
  long balance;
};

void leak(ftm::engines::dual_bank& pool, ftm::stable<account> ref) {
  ftm::atomically(pool, [&](auto& tx) { return tx.open(ref); });
}
