// The engines every conformance suite runs over, and how a test makes one.
#ifndef FTM_TESTS_ENGINES_HPP
#define FTM_TESTS_ENGINES_HPP

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <unistd.h>

namespace ftm_test {

/// Whether the suites run their pools in protected mode: the environment variable
/// FTM_TEST_PROTECTED=1 (the `.protected` CTest entries) turns it on for every pool the
/// factories below make.
inline bool protected_pools() {
  static const bool on = [] {
    const char* v = std::getenv("FTM_TEST_PROTECTED");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

/// How a test makes a fresh pool of engine `E` with `bank_size` bytes of objects: by
/// default `E(bank_size)`, for an engine constructible from a capacity in bytes
/// (`ftm::engines::reference`); the engines below say otherwise.
template <class E>
struct engine_factory {
  static std::unique_ptr<E> make(std::size_t bank_size = std::size_t{4} << 20,
                                 std::uint32_t /*max_objects*/ = 1024) {
    return std::make_unique<E>(bank_size);
  }
};

template <>
struct engine_factory<ftm::engines::dual_bank> {
  static std::unique_ptr<ftm::engines::dual_bank> make(std::size_t bank_size = std::size_t{4} << 20,
                                                       std::uint32_t max_objects = 1024) {
    return std::make_unique<ftm::engines::dual_bank>(
        ftm::engines::dual_bank::options{.bank_size = bank_size,
                                         .max_objects_per_transaction = max_objects,
                                         .protected_mode = protected_pools()});
  }
};

/// A directory of this test process for pool files, removed at exit.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::string templ = (std::filesystem::temp_directory_path() / "ftm-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    return std::filesystem::path(templ);
  }();
  // Registered once `dir` exists, so it runs before `dir` is destroyed.
  static const pid_t owner = ::getpid();
  static const bool cleanup = [] {
    std::atexit([] {
      // Forked children leave through _exit; only the process that made it cleans up.
      if (::getpid() == owner) std::filesystem::remove_all(scratch_dir());
    });
    return true;
  }();
  static_cast<void>(cleanup);
  return dir;
}

/// A fresh pool file name in the scratch directory.
inline std::filesystem::path scratch_file(const char* stem = "pool") {
  static std::atomic<unsigned> n{0};
  return scratch_dir() / (std::string(stem) + "-" + std::to_string(n++) + ".ftm");
}

/// Closes a pool of a file (`ftm::engines::pmem` or a type derived from it) and
/// removes its files.
struct pool_file_deleter {
  template <class Pool>
  void operator()(Pool* p) const {
    const auto path = p->path();
    delete p;
    std::filesystem::remove(path);
    std::filesystem::remove(ftm::detail::redo::redo_log::path_for(path));
  }
};

/// `ftm::engines::pmem` with durability `power`: a type of its own, so that the
/// suites' type lists run every test on it too.
class pmem_power : public ftm::engines::pmem {
 public:
  pmem_power(const std::filesystem::path& path, std::size_t bank_size, std::uint32_t max_objects)
      : pmem(creating, path,
             {.bank_size = bank_size,
              .max_objects_per_transaction = max_objects,
              .level = ftm::durability::power,
              .log_size = std::size_t{1} << 20,
              .protected_mode = protected_pools()}) {}

  /// Opens a pool with durability `power`, as every user of a `power` pool must.
  static ftm::engines::pmem open(const std::filesystem::path& path) {
    return ftm::engines::pmem::open(path, ftm::durability::power);
  }
};

template <>
struct engine_factory<pmem_power> {
  static std::unique_ptr<pmem_power, pool_file_deleter> make(std::size_t bank_size = std::size_t{4}
                                                                                     << 20,
                                                             std::uint32_t max_objects = 1024) {
    return std::unique_ptr<pmem_power, pool_file_deleter>(
        new pmem_power(scratch_file(), bank_size, max_objects));
  }
};

#if defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION
/// `pmem_power` with its redo log flushed by cache lines (`ftm::flush_method::
/// cache_lines`). No file system here maps with MAP_SYNC, so the mode is forced on the
/// page cache (a switch of the fault-injection builds): what runs is its order of
/// stores, flushes and fences, on memory a power loss would not keep.
class pmem_power_lines : public ftm::engines::pmem {
 public:
  pmem_power_lines(const std::filesystem::path& path, std::size_t bank_size,
                   std::uint32_t max_objects)
      : pmem(creating, path, options_for(bank_size, max_objects)) {}

  /// Opens a pool as its other users do: `power`, by cache lines.
  static ftm::engines::pmem open(const std::filesystem::path& path) {
    return ftm::engines::pmem::open(path, options_for(std::size_t{4} << 20, 1024));
  }

 private:
  static options options_for(std::size_t bank_size, std::uint32_t max_objects) {
    ftm::detail::redo::force_cache_lines_on_page_cache = true;
    return {.bank_size = bank_size,
            .max_objects_per_transaction = max_objects,
            .level = ftm::durability::power,
            .log_size = std::size_t{1} << 20,
            .flush = ftm::flush_method::cache_lines,
            .protected_mode = protected_pools()};
  }
};

template <>
struct engine_factory<pmem_power_lines> {
  static std::unique_ptr<pmem_power_lines, pool_file_deleter> make(
      std::size_t bank_size = std::size_t{4} << 20, std::uint32_t max_objects = 1024) {
    return std::unique_ptr<pmem_power_lines, pool_file_deleter>(
        new pmem_power_lines(scratch_file(), bank_size, max_objects));
  }
};
#endif

template <>
struct engine_factory<ftm::engines::pmem> {
  static std::unique_ptr<ftm::engines::pmem, pool_file_deleter> make(
      std::size_t bank_size = std::size_t{4} << 20, std::uint32_t max_objects = 1024) {
    return std::unique_ptr<ftm::engines::pmem, pool_file_deleter>(new ftm::engines::pmem(
        ftm::engines::pmem::create(scratch_file(), {.bank_size = bank_size,
                                                    .max_objects_per_transaction = max_objects,
                                                    .protected_mode = protected_pools()})));
  }
};

/// By how much a suite divides its transaction counts for engine `E`: a `power`
/// commit waits for a device flush (about 100 us), so it runs a tenth of them.
template <class E>
inline constexpr unsigned transaction_divisor = 1;
template <>
inline constexpr unsigned transaction_divisor<pmem_power> = 10;
#if defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION
/// Its commits flush no file, but each crash test's recovery rebuilds the pool from
/// the log in a fresh process: a fifth, to keep the suites short.
template <>
inline constexpr unsigned transaction_divisor<pmem_power_lines> = 5;
#endif

/// By how much the longest tests divide their work in a sanitizer build (ASan, UBSan,
/// TSan: FTM_TEST_SANITIZED), which runs several times slower, so that the CI stages
/// stay within their time budget on a loaded 2-core machine.
#if defined(FTM_TEST_SANITIZED) && FTM_TEST_SANITIZED
inline constexpr unsigned sanitizer_divisor = 4;
#else
inline constexpr unsigned sanitizer_divisor = 1;
#endif

}  // namespace ftm_test

// The list TEST_CASE_TEMPLATE instantiates.
#define FTM_TEST_ENGINES ftm::engines::dual_bank, ftm::engines::pmem, ftm_test::pmem_power

#if defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION
// With the cache-line mode too, which only the fault-injection builds can force.
#define FTM_TEST_ENGINES_AND_LINES FTM_TEST_ENGINES, ftm_test::pmem_power_lines
#endif

// A test case run once for each engine of FTM_TEST_ENGINES, as `E`.
#define ENGINE_TEST(name) TEST_CASE_TEMPLATE(name, E, FTM_TEST_ENGINES)

#endif
