// What both halves of the ODR test do, compiled once checked (checked.cpp) and once
// unchecked (unchecked.cpp): the same types, so the same inline functions, whose
// bodies FTM_CHECKED changes. Without the ABI namespace (detail/config.hpp) the linker
// would keep one body of each for both halves.
#ifndef FTM_TESTS_ODR_USES_HPP
#define FTM_TESTS_ODR_USES_HPP

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace ftm_odr_test {

struct account {
  std::int64_t balance;
};

struct note {
  std::uint32_t id;
};

// Internal linkage: each half has its own copy of the function (were it one inline
// function, the linker would keep one body for both halves, as it would for ftm's).
namespace {

/// Uses much of the API (so that most headers emit their inline functions), then
/// reads an object through a handle after its transaction committed: the checked
/// half throws `ftm::usage_error`, the unchecked half reads. Returns whether it threw.
bool use_after_commit_throws(const std::filesystem::path& pool_file) {
  ftm::engines::dual_bank pool(std::size_t{1} << 20);
  const auto a = ftm::atomically(pool, [](auto& tx) {
    auto root = ftm::root<account>(tx, "account");
    tx.open(root)->balance = 7;
    return root;
  });
  const auto port =
      ftm::atomically(pool, [](auto& tx) { return ftm::make_port<note>(tx, {.capacity = 4}); });
  ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, port, note{1}); });
  const note received = ftm::atomically(pool, [&](auto& tx) { return ftm::receive(tx, port); });
  if (received.id != 1) throw std::logic_error("the port lost its message");
  {
    auto durable = ftm::engines::pmem::create(pool_file, {.bank_size = std::size_t{1} << 20});
    ftm::atomically(durable, [](auto& tx) { ftm::root<note>(tx, "n"); });
  }
  std::filesystem::remove(pool_file);

  ftm::transaction tx(pool);
  tx.begin();
  auto opened = tx.open(a);
  tx.commit();
  try {
    return opened->balance < 0;  // false: the balance is 7
  } catch (const ftm::error& e) {
    return std::string(e.what()).find("ended") != std::string::npos;
  }
}

}  // namespace
}  // namespace ftm_odr_test

#endif  // FTM_TESTS_ODR_USES_HPP
