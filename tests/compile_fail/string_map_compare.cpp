// Rule: a stable_map with stable_string keys orders them by their bytes (as
// std::string_view does) and takes no comparator of its own.
//
// expected-error: stable_map<ftm::stable_string, V, Compare> orders string keys by their bytes

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <cstdint>
#include <functional>

void make(ftm::transaction<ftm::engines::dual_bank>& tx) {
  using map_t =
      ftm::stable_map<ftm::stable_string, std::uint64_t, std::greater<ftm::stable_string>>;
  static_cast<void>(tx.create<map_t>());
}
