// Rule: a container is opened through its view (ftm::open, ftm::open_read), not as a
// plain object with tx.open, which would give its root object only.
//
// expected-error: ftm::opened<T>: T is an ftm container; tx.open and tx.open_read would
// expected-error: open it with ftm::open\(tx, ref\) or ftm::open_read\(tx, ref\)

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

void peek(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<ftm::stable_string> ref) {
  auto s = tx.open_read(ref);
  static_cast<void>(s);
}
