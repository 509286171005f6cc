// Rule: an opened<T> is bound to its transaction, so a lambda cannot capture it by
// value (a copy) or by move; the diagnostic quotes the rule and the fix.
//
// expected-error: ftm::opened<T> cannot be copied or moved: it is bound to its transaction

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <utility>

struct account {
  long balance;
};

auto later(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  auto acc = tx.open(ref);
  return [held = std::move(acc)] { return held->balance; };
}
