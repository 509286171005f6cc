// The error vocabulary: each kind is an ftm::error and the standard exception that
// fits it, errc is a std::error_code enum, and io_error keeps the system's errno.
#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/error.hpp>

#include <doctest/doctest.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>

#include <sys/resource.h>

#include "engines.hpp"
#include "process.hpp"

TEST_CASE("errc is a std::error_code enum of the ftm category") {
  static_assert(std::is_error_code_enum_v<ftm::errc>);
  const std::error_code ec = ftm::errc::pool_full;
  CHECK(ec);  // no errc is 0, which std::error_code reserves for success
  CHECK(ec == ftm::errc::pool_full);
  CHECK(ec != ftm::errc::conflict);
  CHECK(ec.category() == ftm::error_category());
  CHECK(std::string(ec.category().name()) == "ftm");
  CHECK(ec.message() == "pool full");
  CHECK(ftm::make_error_code(ftm::errc::io_error).message() == "i/o error");
  for (int v = static_cast<int>(ftm::errc::conflict); v <= static_cast<int>(ftm::errc::key_too_old);
       ++v) {
    CHECK(std::error_code(v, ftm::error_category()).message() != "unknown");
  }
}

TEST_CASE("misuse is a std::logic_error, the rest std::runtime_error, both ftm::error") {
  static_assert(std::is_base_of_v<std::logic_error, ftm::usage_error>);
  static_assert(std::is_base_of_v<std::invalid_argument, ftm::invalid_argument>);
  static_assert(std::is_base_of_v<std::runtime_error, ftm::conflict>);
  static_assert(std::is_base_of_v<std::runtime_error, ftm::bad_pool>);
  static_assert(std::is_base_of_v<std::system_error, ftm::io_error>);
  static_assert(std::is_base_of_v<ftm::error, ftm::usage_error>);
  static_assert(std::is_base_of_v<ftm::error, ftm::io_error>);
  static_assert(!std::is_base_of_v<std::runtime_error, ftm::usage_error>);

  try {
    throw ftm::usage_error("the transaction is not active");
  } catch (const std::logic_error& e) {
    CHECK(std::string(e.what()) == "ftm: usage error: the transaction is not active");
  }
  try {
    throw ftm::usage_error("x");
  } catch (const ftm::error& e) {
    CHECK(e.code() == ftm::errc::usage_error);
    CHECK(std::string(e.what()) == "ftm: usage error: x");
  }
  // One std::exception base: a catch of std::exception is not ambiguous.
  try {
    throw ftm::pool_full("no room");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "ftm: pool full: no room");
  }
  // A real misuse from an engine.
  CHECK_THROWS_AS(ftm::engines::dual_bank(ftm::engines::dual_bank::options{.bank_size = 1000}),
                  std::logic_error);
}

TEST_CASE("io_error carries the system's error code") {
  const auto missing = ftm_test::scratch_file("missing");
  try {
    static_cast<void>(ftm::engines::pmem::open(missing));
    FAIL("opened a missing pool");
  } catch (const ftm::io_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK(e.code().category() == std::generic_category());
    CHECK(static_cast<const ftm::error&>(e).code() == ftm::errc::io_error);
    // The message quotes the reason once, as before io_error kept the code.
    const std::string what = e.what();
    CHECK(what.rfind("ftm: i/o error: cannot open the pool file", 0) == 0);
    CHECK(what.find(std::strerror(ENOENT)) == what.rfind(std::strerror(ENOENT)));
  }
  const auto pool = ftm_test::scratch_file("exists");
  { auto p = ftm::engines::pmem::create(pool, {.bank_size = std::size_t{1} << 20}); }
  try {
    static_cast<void>(ftm::engines::pmem::create(pool, {.bank_size = std::size_t{1} << 20}));
    FAIL("created over an existing pool");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::file_exists);
  }
  std::filesystem::remove(pool);
}

// A sanitizer's runtime needs more address space than the limit leaves it.
#if !(defined(FTM_TEST_SANITIZED) && FTM_TEST_SANITIZED)
TEST_CASE("a dual_bank whose memory the system refuses is an io_error with its errno") {
  // In a child whose address space is too small for the pool, mmap fails with ENOMEM:
  // a system failure, not an invalid argument.
  const int status = ftm_test::in_child([] {
    const rlimit small{std::size_t{256} << 20, std::size_t{256} << 20};
    if (::setrlimit(RLIMIT_AS, &small) != 0) return 3;
    try {
      ftm::engines::dual_bank pool(std::size_t{1} << 30);
      return 4;
    } catch (const ftm::io_error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return e.code() == std::errc::not_enough_memory ? 0 : 5;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "not an io_error: %s\n", e.what());
      return 6;
    }
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
#endif
