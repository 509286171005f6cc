// Rule: a container's view cannot leave the transaction: ftm::atomically cannot
// return it (it would outlive the transaction's locks).
//
// expected-error-gcc: use of deleted function
// expected-error: an opened ftm container cannot be copied or moved: it is bound to its transaction
// expected-error-clang: call to (implicitly-)?deleted (copy |move )?constructor

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <cstdint>

void leak(ftm::engines::dual_bank& pool,
          ftm::stable<ftm::stable_hash_map<std::uint64_t, std::uint64_t>> ref) {
  auto view = ftm::atomically(pool, [&](auto& tx) { return ftm::open_read(tx, ref); });
  static_cast<void>(view);
}
