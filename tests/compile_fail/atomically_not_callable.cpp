// Rule: ftm::atomically calls its function with the transaction; a function that takes
// no transaction (or another type) gets the rule and the fix in ftm's words.
//
// expected-error: ftm::atomically requires f to be callable as f\(tx\)

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
long total(ftm::engines::dual_bank& pool) {
  return ftm::atomically(pool, [] { return 1L; });
}
