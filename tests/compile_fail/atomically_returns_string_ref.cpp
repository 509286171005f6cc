// Rule: a string key or value a map gives (ftm::string_ref) reads the pool through its
// transaction; ftm::atomically commits before it returns, so it refuses to return one
// (or an entry holding one): copy the text out with str().
//
// expected-error: must not return an opened handle

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <cstdint>

void leak(ftm::engines::dual_bank& pool,
          ftm::stable<ftm::stable_hash_map<std::uint64_t, ftm::stable_string>> ref) {
  auto value = ftm::atomically(pool, [&](auto& tx) { return ftm::open_read(tx, ref).at(7); });
  static_cast<void>(value);
}
