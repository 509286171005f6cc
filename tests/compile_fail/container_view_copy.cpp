// Rule: a container's view is bound to its transaction like an opened<T>, so it
// cannot be copied (nor moved, nor returned from the function that opened it).
//
// expected-error-gcc: use of deleted function
// expected-error: an opened ftm container cannot be copied or moved: it is bound to its transaction
// expected-error-clang: call to (implicitly-)?deleted (copy )?constructor

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

void append(ftm::transaction<ftm::engines::dual_bank>& tx,
            ftm::stable<ftm::stable_vector<int>> ref) {
  auto v = ftm::open(tx, ref);
  auto copy = v;
  copy.push_back(1);
}
