// The engines every conformance suite runs over, and how a test makes one.
#ifndef FTM_TESTS_ENGINES_HPP
#define FTM_TESTS_ENGINES_HPP

#include <ftm/engines/dual_bank.hpp>

#include <cstddef>
#include <memory>

namespace ftm_test {

template <class E>
struct engine_factory;

template <>
struct engine_factory<ftm::engines::dual_bank> {
  static std::unique_ptr<ftm::engines::dual_bank> make(std::size_t bank_size = std::size_t{4} << 20,
                                                       std::uint32_t max_objects = 1024) {
    return std::make_unique<ftm::engines::dual_bank>(ftm::engines::dual_bank::options{
        .bank_size = bank_size, .max_objects_per_transaction = max_objects});
  }
};

}  // namespace ftm_test

// The list TEST_CASE_TEMPLATE instantiates; the persistent engine joins it later.
#define FTM_TEST_ENGINES ftm::engines::dual_bank

#endif
