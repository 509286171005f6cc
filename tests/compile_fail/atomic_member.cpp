// Rule: an atomic is not a stable type: in a pool it would be shared by every process
// that maps it, and recovery cannot restore it; the transaction isolates plain members.
//
// expected-error: T cannot be copied; a lock \(std::mutex\) or an atomic
// expected-error: recovery cannot restore it

#include <atomic>
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

ftm::stable<std::atomic<long>> make(ftm::transaction<ftm::engines::dual_bank>& tx) {
  return tx.create<std::atomic<long>>(0);
}
