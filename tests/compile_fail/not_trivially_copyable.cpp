// Rule: the pool copies objects byte by byte (between banks, across processes), so
// only trivially copyable types may be created in it.
//
// expected-error-gcc: requires [^ ]*t[^ ]* to be a stable type
// expected-error-gcc: trivially copyable
// expected-error-clang: requires [^ ]*t[^ ]* to be a stable type
// expected-error-clang: trivially copyable

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <string>

void store_name(ftm::transaction<ftm::engines::dual_bank>& tx) {
  auto name = tx.create(std::string{"alice"});
  static_cast<void>(name);
}
