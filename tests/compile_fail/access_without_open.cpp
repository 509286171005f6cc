// Rule: a stable<T> is a pool offset, not a pointer; T is reached only by opening
// the handle in a transaction, so every access is logged and locked.
//
// expected-error-gcc: gives no access to
// expected-error-clang: gives no access to

#include <ftm/ftm.hpp>

struct account {
  long balance;
};

long peek(ftm::stable<account> ref) { return ref->balance; }
