// Rule: a lock is not a stable type, nor a type that holds one: in a pool it would be
// shared by every process that maps it, and a lock held by a process that died stays
// held; the transaction's own locks isolate the object.
//
// expected-error: T cannot be copied; a lock \(std::mutex\) or an atomic
// expected-error: use plain members and let the transaction isolate them

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <mutex>

struct guarded {
  std::mutex lock;
  long balance;
};

long read(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<guarded> ref) {
  return tx.open_read(ref)->balance;
}
