// Pool files meet the file system: a full one, odd names and files that are not pools,
// sizes beyond what a pool can hold. Each gets an ftm error that names the file and
// the cause, at create or open, never a hang, a SIGBUS or a std::filesystem error.
#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
namespace layout = ftm::detail::bank_layout;
using ftm::engines::dual_bank;
using ftm::engines::pmem;

struct small_object {
  std::uint64_t a, b;
};

/// What a child reported, and whether it ended in time.
struct child_result {
  bool in_time = false;
  int status = 0;
  std::string report;  // what `body` returned: "" when all went as expected
};

/// Runs `body` in a child that dies with the test; kills it if it has not ended after
/// `timeout` (a hang fails the test instead of stopping the suite).
child_result in_child(const std::function<std::string()>& body,
                      std::chrono::seconds timeout = std::chrono::seconds(60)) {
  int out[2];
  REQUIRE(::pipe(out) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::close(out[0]);
    std::string r;
    try {
      r = body();
    } catch (const std::exception& e) {
      r = fmt::format("threw {}", e.what());
    }
    static_cast<void>(::write(out[1], r.data(), r.size()));
    ::_exit(0);
  }
  ::close(out[1]);
  child_result result;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const pid_t done = ::waitpid(pid, &result.status, WNOHANG);
    if (done == pid) {
      result.in_time = true;
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &result.status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;)
    result.report.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  return result;
}

/// "" if `f` throws an `Error` whose message holds each of `parts`; what it did else.
template <class Error, class F>
std::string expect_error(F&& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
    return "no error; ";
  } catch (const Error& e) {
    const std::string what = e.what();
    for (const auto part : parts) {
      if (what.find(part) == std::string::npos) {
        return fmt::format("'{}' does not say '{}'; ", what, part);
      }
    }
    return "";
  } catch (const std::exception& e) {
    return fmt::format("another error: {}; ", e.what());
  }
}

/// Checks that `expr` throws an `Error` whose message holds each of the strings after it.
#define EXPECT_ERROR(Error, expr, ...)                                                             \
  do {                                                                                             \
    const std::string why_ = expect_error<Error>([&] { static_cast<void>(expr); }, {__VA_ARGS__}); \
    CHECK_MESSAGE(why_.empty(), why_);                                                             \
  } while (false)

constexpr pmem::options small{.bank_size = std::size_t{1} << 20};
constexpr pmem::options small_power{.bank_size = std::size_t{1} << 20,
                                    .level = ftm::durability::power,
                                    .log_size = std::size_t{1} << 20};

}  // namespace

// ---- item 8: files that are not pools, names the file system refuses -------------

TEST_CASE("a FIFO, a directory or a device is refused at once, not waited on") {
  const fs::path fifo = ftm_test::scratch_file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  // In a child: before the fix, opening the FIFO waited for a writer forever.
  const auto r = in_child([&] {
    std::string report;
    report += expect_error<ftm::bad_pool>([&] { static_cast<void>(pmem::inspect(fifo)); },
                                          {fifo.string(), "a FIFO, not a regular file"});
    report += expect_error<ftm::bad_pool>([&] { static_cast<void>(pmem::open(fifo)); },
                                          {fifo.string(), "a FIFO"});
    report += expect_error<ftm::bad_pool>([&] { static_cast<void>(pmem::open_or_create(fifo)); },
                                          {"a FIFO"});
    report += expect_error<ftm::bad_pool>(
        [&] { static_cast<void>(pmem::inspect(ftm_test::scratch_dir())); }, {"a directory"});
    report += expect_error<ftm::bad_pool>([&] { static_cast<void>(pmem::open("/dev/zero")); },
                                          {"'/dev/zero'", "a character device"});
    return report;
  });
  CHECK_MESSAGE(r.in_time, "inspect or open waited on the FIFO");
  CHECK_MESSAGE(r.report.empty(), r.report);
}

TEST_CASE("a symbolic link loop, a name too long and a directory named <pool>.wal get ftm errors") {
  // A loop of symbolic links.
  const fs::path a = ftm_test::scratch_file("loop-a");
  const fs::path b = ftm_test::scratch_file("loop-b");
  fs::create_symlink(b, a);
  fs::create_symlink(a, b);
  EXPECT_ERROR(ftm::io_error, pmem::create(a, small), a.string(), "symbolic links");
  EXPECT_ERROR(ftm::io_error, pmem::create(a, small_power), a.string(), "symbolic links");
  EXPECT_ERROR(ftm::io_error, pmem::open_or_create(a), a.string(), "symbolic links");
  EXPECT_ERROR(ftm::io_error, pmem::open(a), a.string(), "symbolic links");
  EXPECT_ERROR(ftm::io_error, pmem::inspect(a), a.string(), "symbolic links");

  // A path longer than PATH_MAX.
  std::string name = ftm_test::scratch_dir().string();
  while (name.size() <= PATH_MAX)
    name += "/directory";
  const fs::path too_long = name + "/pool.ftm";
  EXPECT_ERROR(ftm::io_error, pmem::create(too_long, small), "File name too long");
  EXPECT_ERROR(ftm::io_error, pmem::create(too_long, small_power), "File name too long");
  EXPECT_ERROR(ftm::io_error, pmem::open_or_create(too_long, small), "File name too long");
  EXPECT_ERROR(ftm::io_error, pmem::open(too_long), "File name too long");

  // A directory, not empty, where the redo log goes: creating a power pool, and
  // opening a process pool at power.
  const fs::path pool = ftm_test::scratch_file("walled");
  const fs::path wal = ftm::detail::redo::redo_log::path_for(pool);
  fs::create_directory(wal);
  { std::ofstream(wal / "a file") << "x"; }
  EXPECT_ERROR(ftm::io_error, pmem::create(pool, small_power), wal.string(), "directory");
  EXPECT_ERROR(ftm::io_error, pmem::open_or_create(pool, small_power), wal.string(), "directory");
  CHECK_FALSE(fs::exists(pool));  // nothing made
  { auto p = pmem::create(pool, small); }
  EXPECT_ERROR(ftm::io_error, pmem::open(pool, ftm::durability::power), wal.string(), "directory");
  CHECK(fs::exists(wal / "a file"));  // not removed
  auto p = pmem::open(pool);          // still a good pool at process
  CHECK(p.check().ok());
}

TEST_CASE("bank sizes beyond 2^47 bytes are refused at once, for options too") {
  // Before the fix, 2^62 took hours to lay out and 2^64 - 64 KiB wrapped to bad_alloc:
  // in a child, so that a hang fails the test.
  const auto r = in_child(
      [] {
        std::string report;
        for (const std::uint64_t size : {std::uint64_t{1} << 62, ~std::uint64_t{0} - 65535,
                                         (std::uint64_t{1} << 47) + 65536}) {
          report += expect_error<ftm::invalid_argument>(
              [&] { layout::geometry::compute(size, 1024, "pmem"); },
              {fmt::format("bank size {} is more than the largest", size)});
          report += expect_error<ftm::invalid_argument>(
              [&] { pmem::create(ftm_test::scratch_file("huge"), {.bank_size = size}); },
              {"is more than the largest"});
          report += expect_error<ftm::invalid_argument>(
              [&] { dual_bank{dual_bank::options{.bank_size = size}}; },
              {"is more than the largest"});
        }
        return report;
      },
      std::chrono::seconds(60));
  CHECK_MESSAGE(r.in_time, "the layout of an enormous bank took more than a minute");
  CHECK_MESSAGE(r.report.empty(), r.report);
  // The largest is laid out at once.
  const auto g = layout::geometry::compute(std::uint64_t{1} << 47, 1024, "pmem");
  CHECK(g.nchunks * layout::chunk_size + g.chunks_offset <= std::uint64_t{1} << 47);
}

TEST_CASE("the layout is computed in one step, as the search it replaced found it") {
  // The largest chunk count whose records and chunks fit, found by the old search (down
  // from the bank's chunk count), against the formula, for banks of 2 to 20,000 chunks.
  for (std::uint64_t k = 2; k <= 20000; ++k) {
    const std::uint64_t bank = k * layout::chunk_size;
    std::uint64_t n = k;
    while (n > 0 &&
           layout::align_up(layout::metas_begin + n * layout::meta_stride, layout::chunk_size) +
                   n * layout::chunk_size >
               bank)
      --n;
    if (n < 2) {
      CHECK_THROWS_AS(layout::geometry::compute(bank, 4, "pmem"), ftm::invalid_argument);
      continue;
    }
    const auto g = layout::geometry::compute(bank, 4, "pmem");
    REQUIRE_MESSAGE(g.nchunks == n, fmt::format("banks of {} chunks", k));
    CHECK(g.chunks_offset ==
          layout::align_up(layout::metas_begin + n * layout::meta_stride, layout::chunk_size));
  }
}

TEST_CASE("an object of 2^32 bytes or more is refused at create, not truncated") {
  using huge = std::array<char, std::size_t{1} << 32>;
  // A small pool: before the fix it said "no room" (pool_full), as if the size were fine.
  auto pool = ftm_test::engine_factory<dual_bank>::make(std::size_t{1} << 20);
  EXPECT_ERROR(ftm::invalid_argument,
               ftm::atomically(*pool, [](auto& tx) { tx.template create<huge>(); }),
               "has 4294967296 bytes, more than the largest object", "32 bits");
  // A pool with room for it (a sparse memfd, and a log that can lock its 65,537 chunk
  // records): before the fix it was made with its size truncated to 0.
  dual_bank roomy(dual_bank::options{.bank_size = (std::size_t{1} << 32) + (std::size_t{1} << 25),
                                     .max_objects_per_transaction = 70000});
  const ftm::tx_id d = roomy.begin();
  for (const std::uint64_t size :
       {std::uint64_t{1} << 32, (std::uint64_t{1} << 32) + 64, std::uint64_t{UINT32_MAX} - 8}) {
    CAPTURE(size);
    CHECK_THROWS_AS(roomy.allocate(d, ftm::object_type{size, 8, "huge"}), ftm::invalid_argument);
  }
  roomy.abort(d);
  CHECK(roomy.check().ok());
}

// ---- item 4: a file system without room ---------------------------------------------

namespace {

/// In a child with a mount namespace of its own: a tmpfs of `bytes` at a new directory
/// `dir`, gone with the child. "" or why not (no privilege).
std::string mount_small_tmpfs(const fs::path& dir, std::size_t bytes) {
  if (::unshare(CLONE_NEWNS) != 0) return fmt::format("unshare: {}", std::strerror(errno));
  if (::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return fmt::format("mount --make-rprivate /: {}", std::strerror(errno));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fmt::format("mkdir {}: {}", dir.string(), ec.message());
  const std::string opts = fmt::format("size={}", bytes);
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
    return fmt::format("mount -t tmpfs: {}", std::strerror(errno));
  }
  return "";
}

}  // namespace

TEST_CASE("a pool or a redo log without room on its file system is refused at create") {
  const fs::path dir = ftm_test::scratch_dir() / "small-tmpfs";
  const auto r = in_child([&] {
    if (auto why = mount_small_tmpfs(dir, std::size_t{4} << 20); !why.empty()) {
      return "skipped: " + why;
    }
    std::string report;
    // 2 x 4 MiB of banks on a 4 MiB file system: before the fix, create succeeded and
    // the first transaction to touch a page past the room died with SIGBUS.
    const fs::path pool = dir / "pool.ftm";
    report += expect_error<ftm::io_error>(
        [&] { pmem::create(pool, {.bank_size = std::size_t{4} << 20}); },
        {pool.string(), "No space left on device"});
    // The pool fits (about 3 MiB), its 8 MiB log does not: before the fix the error
    // named a stale errno ("No such file or directory").
    report += expect_error<ftm::io_error>(
        [&] {
          pmem::create(pool, {.bank_size = std::size_t{1} << 20,
                              .level = ftm::durability::power,
                              .log_size = std::size_t{8} << 20});
        },
        {ftm::detail::redo::redo_log::path_for(pool).string(), "No space left on device"});
    // Nothing is left behind, and a pool that fits is made.
    for (const auto& e : fs::directory_iterator(dir))
      report += fmt::format("left behind: {}; ", e.path().string());
    auto ok = pmem::create(pool, small);
    ftm::atomically(ok, [](auto& tx) { tx.create(small_object{1, 2}); });
    if (!ok.check().ok()) report += "the pool that fits does not check; ";
    return report;
  });
  REQUIRE(r.in_time);
  REQUIRE_MESSAGE(WIFEXITED(r.status), "the child died: ", r.status, " ", r.report);
  if (r.report.starts_with("skipped")) {
    MESSAGE("the tmpfs case is ", r.report, " (it needs root); the RLIMIT_FSIZE case runs");
  } else {
    CHECK_MESSAGE(r.report.empty(), r.report);
  }
}

TEST_CASE("a file size limit (RLIMIT_FSIZE) refuses the pool or its log at create, naming why") {
  // Needs no privilege. The limit is not a multiple of the log's 1 MiB writes, so the
  // write that reaches it is short: before the fix the error named a stale errno.
  const auto r = in_child([&] {
    std::signal(SIGXFSZ, SIG_IGN);
    std::string report;
    const rlimit limit{std::size_t{4} << 20 | std::size_t{1} << 19, RLIM_INFINITY};  // 4.5 MiB
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) return fmt::format("setrlimit: {}", errno);
    const fs::path big = ftm_test::scratch_file("limited");
    report +=
        expect_error<ftm::io_error>([&] { pmem::create(big, {.bank_size = std::size_t{4} << 20}); },
                                    {big.string(), "File too large"});
    const fs::path pool = ftm_test::scratch_file("limited-log");
    const fs::path wal = ftm::detail::redo::redo_log::path_for(pool);
    report += expect_error<ftm::io_error>(
        [&] {
          pmem::create(pool, {.bank_size = std::size_t{1} << 20,
                              .level = ftm::durability::power,
                              .log_size = std::size_t{8} << 20});
        },
        {wal.string(), "File too large"});
    if (fs::exists(pool) || fs::exists(wal)) report += "a file was left behind; ";
    // Opening a process pool at power makes the log too.
    { auto p = pmem::create(pool, small); }
    report += expect_error<ftm::io_error>(
        [&] {
          pmem::open(pool, {.level = ftm::durability::power, .log_size = std::size_t{8} << 20});
        },
        {wal.string(), "File too large"});
    auto p = pmem::open(pool);
    if (!p.check().ok()) report += "the pool does not check after the refusal; ";
    return report;
  });
  REQUIRE(r.in_time);
  REQUIRE_MESSAGE(WIFEXITED(r.status), "the child died: ", r.status, " ", r.report);
  CHECK_MESSAGE(r.report.empty(), r.report);
}
