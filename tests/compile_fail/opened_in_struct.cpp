// Rule: an opened<T> cannot leave its scope inside another object either: returning
// a struct that holds one needs to move it; the diagnostic quotes the rule and the fix.
//
// expected-error: ftm::opened<T> cannot be copied or moved: it is bound to its transaction

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
struct account {
  long balance;
};

struct view {
  ftm::opened<account> acc;
  long seen;
};

view look(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> ref) {
  view v{tx.open(ref), 0};
  v.seen = v.acc->balance;
  return v;
}
