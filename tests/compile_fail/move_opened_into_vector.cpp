// Rule: an opened<T> is bound to its transaction, so it cannot be moved into a
// container either; the diagnostic quotes the rule and the fix.
//
// expected-error: ftm::opened<T> cannot be copied or moved: it is bound to its transaction

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <utility>
#include <vector>

struct account {
  long balance;
};

void keep(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  std::vector<ftm::opened<account>> handles;
  auto acc = tx.open(ref);
  handles.push_back(std::move(acc));
}
