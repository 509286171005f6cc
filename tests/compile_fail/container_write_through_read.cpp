// Rule: a container opened with ftm::open_read gives const access: its elements cannot
// be written (open it with ftm::open to change it).
//
// expected-error-gcc: assignment of read-only location
// expected-error-clang: cannot assign to return value because function 'operator\[\]'

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

void bump(ftm::transaction<ftm::engines::dual_bank>& tx,
          ftm::stable<ftm::stable_vector<long>> ref) {
  auto v = ftm::open_read(tx, ref);
  v[0] = 1;
}
