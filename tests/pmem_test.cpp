// ftm::engines::pmem: what a pool file adds to the conformance suite. The pool
// outlives its processes, is checked before it is trusted, and recovers on open.
#include "engines.hpp"
#include "process.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using ftm_test::in_child;

using ftm::engines::pmem;
namespace fs = std::filesystem;
namespace layout = ftm::detail::bank_layout;

struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance), (std::uint32_t, ops));
};

// The same root, declared differently by a later version of a program.
struct account_v2 {
  BOOST_HANA_DEFINE_STRUCT(account_v2, (std::int64_t, balance), (std::uint64_t, ops));
};

constexpr pmem::options small{.bank_size = std::size_t{1} << 20};

std::vector<char> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// A pool file holding the root "acct" with balance 42.
fs::path make_pool() {
  const fs::path path = ftm_test::scratch_file();
  auto pool = pmem::create(path, small);
  ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 42; });
  return path;
}

std::int64_t balance_in(pmem& pool) {
  return ftm::atomically(
      pool, [](auto& tx) { return tx.open_read(ftm::root<account>(tx, "acct"))->balance; });
}

}  // namespace

TEST_CASE("a pool file keeps what was committed when every process has closed it") {
  const fs::path path = make_pool();
  std::uint64_t id = 0;
  {
    auto pool = pmem::open(path);
    CHECK(balance_in(pool) == 42);
    id = pool.pool_id();
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 43; });
  }
  // Another process maps it at another address and finds the same objects by offset.
  const int status = in_child([&] {
    auto pool = pmem::open(path);
    return balance_in(pool) == 43 && pool.pool_id() == id && pool.check().ok() ? 0 : 1;
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  auto again = pmem::open_or_create(path);
  CHECK(balance_in(again) == 43);
  CHECK(again.opening_recovery().undone + again.opening_recovery().redone == 0);
}

TEST_CASE("a pool made in place: on the heap, in an optional, as create and open make it") {
  // A pool does not move, so these are the ways to hold one that create() and open()
  // cannot return into.
  const fs::path path = ftm_test::scratch_file();
  {
    auto pool = std::make_unique<pmem>(pmem::creating, path, small);
    ftm::atomically(*pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 7; });
    // Creating over an existing pool is refused, as create() refuses it.
    CHECK_THROWS_AS(pmem(pmem::creating, path, small), ftm::io_error);
  }
  std::optional<pmem> again;
  again.emplace(pmem::opening, path, pmem::options{});
  CHECK(balance_in(*again) == 7);
  CHECK(again->level() == ftm::durability::process);
  again.reset();
  fs::remove(path);
}

TEST_CASE("opening the pool recovers the transaction of a process that was killed") {
  const fs::path path = make_pool();
  ftm_test::killed_child([&] {
    auto pool = pmem::open(path);
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 50; });
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -1;  // never committed
    tx.create(account{7, 7});
    ftm_test::die_now();
  });
  // A fresh process opens the pool: recovery runs before open() returns.
  const int status = in_child([&] {
    auto pool = pmem::open(path);
    const auto& r = pool.opening_recovery();
    if (r.undone != 1 || r.redone != 0) return 2;
    return balance_in(pool) == 50 && pool.check().ok() ? 0 : 3;
  });
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("two processes use one pool file at once") {
  const fs::path path = make_pool();
  auto pool = pmem::open(path);
  constexpr int n = 2000;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto own = pmem::open(path);  // its own mapping, not the parent's
    for (int i = 0; i < n; ++i) {
      ftm::atomically(own, [](auto& tx) {
        auto a = tx.open(ftm::root<account>(tx, "acct"));
        a->balance += 1;
        ++a->ops;
      });
    }
    ::_exit(0);
  }
  for (int i = 0; i < n; ++i) {
    ftm::atomically(pool, [](auto& tx) {
      auto a = tx.open(ftm::root<account>(tx, "acct"));
      a->balance -= 1;
      ++a->ops;
    });
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  auto [balance, ops] = ftm::atomically(pool, [](auto& tx) {
    auto a = tx.open_read(ftm::root<account>(tx, "acct"));
    return std::pair{a->balance, a->ops};
  });
  CHECK(balance == 42);
  CHECK(ops == 2 * n);
}

TEST_CASE("a changed root type is refused, naming the field") {
  const fs::path path = make_pool();
  auto pool = pmem::open(path);
  try {
    ftm::atomically(pool, [](auto& tx) { return ftm::root<account_v2>(tx, "acct"); });
    FAIL("a root of another layout must be refused");
  } catch (const ftm::type_mismatch& e) {
    const std::string what = e.what();
    CHECK(what.find("'acct'") != std::string::npos);
    CHECK(what.find("`ops: u32 @8` in the pool but `ops: u64 @8` in the program") !=
          std::string::npos);
  }
  CHECK(balance_in(pool) == 42);
}

TEST_CASE("owners from an earlier boot are recovered even if their pid is in use") {
  const fs::path path = make_pool();
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto pool = pmem::open(path);
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -5;
    char c = 1;
    static_cast<void>(::write(ready[1], &c, 1));
    ::pause();
    ::_exit(0);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  {
    // As if the machine had rebooted since: the pool's boot is not this one.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    layout::pool_header h{};
    f.read(reinterpret_cast<char*>(&h), sizeof h);
    layout::set_boot_id(h, "an-earlier-boot");  // with its check word
    f.seekp(0);
    f.write(reinterpret_cast<const char*>(&h), sizeof h);
  }
  auto pool = pmem::open(path);  // the child is alive, but its pid means nothing now
  CHECK(pool.opening_recovery().undone == 1);
  CHECK(balance_in(pool) == 42);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE("bad pool files get an error that names the cause, and are left as they were") {
  const fs::path good = make_pool();
  const std::vector<char> pristine = read_all(good);

  struct damage {
    const char* what;
    std::function<void(std::vector<char>&)> apply;
    const char* expected;
  };
  auto put = [](std::vector<char>& b, std::size_t off, auto value) {
    std::memcpy(b.data() + off, &value, sizeof value);
  };
  // A descriptor left by a process that is gone: recovery would read its log.
  const std::uint64_t dead_owner = ftm::detail::make_owner_id(1, 12345);
  const std::vector<damage> cases{
      {"truncated to half", [](auto& b) { b.resize(b.size() / 2); }, "truncated"},
      {"shorter than a header", [](auto& b) { b.resize(10); }, "fewer than a pool header"},
      {"grown", [](auto& b) { b.resize(b.size() + 4096); }, "grown"},
      {"foreign magic", [&](auto& b) { put(b, 0, std::uint64_t{0x1234}); }, "not an ftm pool"},
      {"random bytes",
       [](auto& b) {
         std::mt19937_64 rng{7};
         for (auto& c : b)
           c = static_cast<char>(rng());
       },
       "not an ftm pool"},
      {"a newer format version",
       [&](auto& b) { put(b, offsetof(layout::pool_header, version), std::uint32_t{99}); },
       "newer than this ftm"},
      {"a damaged size in the header",
       [&](auto& b) { put(b, offsetof(layout::pool_header, bank_size), std::uint64_t{12345}); },
       "header is damaged"},
      // Derived naively, the layout of banks this large took hours to compute.
      {"an enormous bank size",
       [&](auto& b) { put(b, offsetof(layout::pool_header, bank_size), std::uint64_t{1} << 62); },
       "header is damaged (banks of 4611686018427387904 bytes, more than"},
      {"a damaged layout in the header",
       [&](auto& b) { put(b, offsetof(layout::pool_header, chunks_offset), std::uint64_t{64}); },
       "header is damaged"},
      {"a descriptor in an unknown state",
       [&](auto& b) {
         put(b, layout::descriptors_begin + offsetof(layout::descriptor, owner), dead_owner);
         put(b, layout::descriptors_begin + offsetof(layout::descriptor, state), std::uint32_t{7});
       },
       "unknown state"},
      {"a descriptor logging more than it can",
       [&](auto& b) {
         put(b, layout::descriptors_begin + offsetof(layout::descriptor, owner), dead_owner);
         put(b, layout::descriptors_begin + offsetof(layout::descriptor, count),
             std::uint32_t{1u << 30});
       },
       "more than its capacity"},
      // Found by tests/fuzz: begin() appended to the stale log, past its end.
      {"a free descriptor with a log",
       [&](auto& b) {
         put(b,
             layout::descriptors_begin + 3 * sizeof(layout::descriptor) +
                 offsetof(layout::descriptor, count),
             std::uint32_t{57856});
       },
       "descriptor 3 is free but records 57856 log entries"},

  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    const fs::path path = ftm_test::scratch_file("damaged");
    std::vector<char> bytes = pristine;
    c.apply(bytes);
    write_all(path, bytes);
    try {
      auto pool = pmem::open(path);
      FAIL("a damaged pool must be refused");
    } catch (const ftm::bad_pool& e) {
      const std::string what = e.what();
      CHECK_MESSAGE(what.find(c.expected) != std::string::npos, what);
      CHECK(what.find(path.string()) != std::string::npos);
    }
    CHECK(read_all(path) == bytes);  // refused, not repaired or overwritten
  }

  CHECK_THROWS_WITH_AS(pmem::open(ftm_test::scratch_dir() / "missing.ftm"),
                       doctest::Contains("No such file"), ftm::io_error);
  CHECK_THROWS_WITH_AS(pmem::create(good, small), doctest::Contains("the file exists"),
                       ftm::io_error);
  CHECK_THROWS_AS(pmem::create(ftm_test::scratch_file(), {.bank_size = 1000}),
                  ftm::invalid_argument);
  // Refusals leak nothing: each used to keep the file open.
  const auto open_files = [] {
    return std::distance(fs::directory_iterator("/proc/self/fd"), fs::directory_iterator{});
  };
  const fs::path foreign = ftm_test::scratch_file("foreign");
  write_all(foreign, std::vector<char>(4096, 'x'));
  const auto files_before = open_files();
  for (int i = 0; i < 20; ++i) {
    CHECK_THROWS_AS(pmem::open(foreign), ftm::bad_pool);
    CHECK_THROWS_AS(pmem::inspect(foreign), ftm::bad_pool);
  }
  CHECK(open_files() == files_before);
  // The good pool was never touched.
  CHECK(read_all(good) == pristine);
  auto pool = pmem::open(good);
  CHECK(balance_in(pool) == 42);
}

namespace {

/// Sets or clears the immutable attribute of `path` (chattr +i / -i), which stops
/// writes even by root; false if the file system refuses it.
bool set_immutable(const fs::path& path, bool on) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  int flags = 0;
  bool ok = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
  if (ok) {
    flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
    ok = ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
  }
  ::close(fd);
  return ok;
}

}  // namespace

TEST_CASE("a read-only pool file is refused with the cause, left unchanged, and can be inspected") {
  const fs::path path = make_pool();
  const std::vector<char> before = read_all(path);
  // Root writes through any permission bits; only an immutable file stops it.
  const bool as_root = ::geteuid() == 0;
  if (as_root) {
    if (!set_immutable(path, true)) {
      MESSAGE("skipped: the file system of ", path.string(), " refuses the immutable attribute");
      return;
    }
  } else {
    fs::permissions(path, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  }
  struct restore {
    fs::path path;
    bool as_root;
    ~restore() {
      if (as_root) {
        set_immutable(path, false);
      } else {
        fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
      }
    }
  } restore_on_exit{path, as_root};

  try {
    auto pool = pmem::open(path);
    FAIL("a read-only pool must be refused");
  } catch (const ftm::io_error& e) {
    const std::string what = e.what();
    CHECK_MESSAGE(what.find(fmt::format("cannot open the pool file '{}' for writing",
                                        path.string())) != std::string::npos,
                  what);
    CHECK_MESSAGE(
        what.find(as_root ? "Operation not permitted" : "Permission denied") != std::string::npos,
        what);
    CHECK_MESSAGE(
        what.find(as_root ? "the file is read-only: it is immutable"
                          : "the file is read-only: no write permission") != std::string::npos,
        what);
  }
  CHECK_THROWS_AS(pmem::open_or_create(path), ftm::io_error);

  // Inspection needs no write access.
  const auto view = pmem::inspect(path);
  CHECK(view.header().version == layout::format_version);
  REQUIRE(view.roots().size() == 1);
  CHECK(view.roots()[0].name == "acct");
  CHECK(view.roots()[0].size == sizeof(account));
  CHECK(view.descriptors().empty());
  CHECK(view.check().ok());
  CHECK(read_all(path) == before);
}

TEST_CASE("pmem::inspect maps the pool read-only and recovers nothing") {
  const fs::path path = make_pool();
  ftm_test::killed_child([&] {
    auto pool = pmem::open(path);
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -1;
    ftm_test::die_now();
  });
  const std::vector<char> before = read_all(path);
  {
    const auto view = pmem::inspect(path);
    const auto ds = view.descriptors();
    REQUIRE(ds.size() == 1);
    CHECK_FALSE(ds[0].alive);
    CHECK(ds[0].state_name() == "active");
    CHECK(ds[0].count == 1);  // the write; the roots table's lookup logs nothing
    const auto report = view.check();
    REQUIRE(report.problems.size() == 1);
    CHECK(report.problems[0].find("which is dead") != std::string::npos);
  }
  CHECK(read_all(path) == before);
  auto pool = pmem::open(path);
  CHECK(pool.opening_recovery().undone == 1);
  CHECK(balance_in(pool) == 42);
}

TEST_CASE("pmem::open without a level keeps the level recorded in the pool") {
  const fs::path path = ftm_test::scratch_file();
  const auto wal = ftm::detail::redo::redo_log::path_for(path);
  auto power = small;
  power.level = ftm::durability::power;
  {
    auto pool = pmem::create(path, power);
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 1; });
  }
  {
    auto pool = pmem::open(path);  // nobody has it open, and it was power: still power
    CHECK(pool.level() == ftm::durability::power);
    CHECK(pool.log_flush().has_value());
    auto second = pmem::open(path);  // as its users
    CHECK(second.level() == ftm::durability::power);
  }
  {
    pmem::options no_level;
    no_level.bank_size = small.bank_size;
    auto pool = pmem::open(path, no_level);
    CHECK(pool.level() == ftm::durability::power);
  }
  CHECK(pmem::open_or_create(path).level() == ftm::durability::power);
  // Only an explicit level downgrades; then the pool records process.
  CHECK(pmem::open(path, ftm::durability::process).level() == ftm::durability::process);
  CHECK(pmem::open(path).level() == ftm::durability::process);
  CHECK(pmem::create(ftm_test::scratch_file()).level() == ftm::durability::process);
  fs::remove(wal);
}

TEST_CASE("a power pool whose redo log is missing: open refuses, naming it; inspect reads it") {
  const fs::path path = ftm_test::scratch_file();
  const auto wal = ftm::detail::redo::redo_log::path_for(path);
  auto power = small;
  power.level = ftm::durability::power;
  {
    auto pool = pmem::create(path, power);
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 7; });
  }
  fs::remove(wal);
  const auto before = read_all(path);
  for (const auto level : {std::optional<ftm::durability>{}, std::optional{ftm::durability::power},
                           std::optional{ftm::durability::process}}) {
    CHECK_THROWS_WITH_AS(
        pmem::open(path, level),
        doctest::Contains(fmt::format("its redo log '{}' is missing", wal.string()).c_str()),
        ftm::bad_pool);
  }
  CHECK(read_all(path) == before);
  CHECK_FALSE(fs::exists(wal));
  // Read-only, its data can be rescued, and its check says what is wrong.
  const auto view = pmem::inspect(path);
  CHECK(view.header().level == ftm::durability::power);
  CHECK(view.header().log_missing);
  CHECK(view.header().log_path == wal);
  REQUIRE(view.roots().size() == 1);
  const auto bytes = view.object(view.roots()[0].offset);
  account a{};
  REQUIRE(bytes.size() == sizeof a);
  std::memcpy(&a, bytes.data(), sizeof a);
  CHECK(a.balance == 7);
  const auto report = view.check();
  REQUIRE(report.problems.size() == 1);
  CHECK(report.problems[0].find(fmt::format("redo log '{}' is missing", wal.string())) !=
        std::string::npos);
  CHECK(read_all(path) == before);
}

namespace {

/// The message of the `Error` that `f` throws, or "" if it throws none.
template <class Error, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

#define CHECK_MESSAGE_HAS(text, part)                                        \
  do {                                                                       \
    const std::string check_text_ = (text);                                  \
    CHECK_MESSAGE(check_text_.find(part) != std::string::npos, check_text_); \
  } while (false)

/// The errors a bank engine raises from its allocator and its descriptors' logs, each
/// expected to begin with `name`, the engine's.
template <class Engine>
void check_messages_name(Engine& e, std::string_view name) {
  const auto d = e.begin();
  CHECK_MESSAGE_HAS(message_of<ftm::invalid_argument>([&] {
                      e.allocate(d, ftm::object_type{8, 32, "aligned"});
                    }),
                    fmt::format("{}: aligned needs alignment 32", name));
  CHECK_MESSAGE_HAS(message_of<ftm::pool_full>([&] {
                      e.allocate(d, ftm::object_type{std::size_t{4} << 20, 8, "big"});
                    }),
                    fmt::format("{}: no room for a big", name));
  // Each small object locks its chunk's record and itself: the log of 4 overflows.
  CHECK_MESSAGE_HAS(
      message_of<ftm::capacity_exceeded>([&] {
        for (int i = 0; i < 8; ++i)
          e.allocate(d, ftm::object_type{100 + 100 * static_cast<std::size_t>(i), 8, "small"});
      }),
      fmt::format("a larger {}::options::max_objects_per_transaction", name));
  e.abort(d);
  CHECK(e.check().ok());
}

}  // namespace

TEST_CASE("errors raised by the bank engine name the engine that raised them") {
  SUBCASE("pmem") {
    auto pool = pmem::create(ftm_test::scratch_file(),
                             {.bank_size = std::size_t{1} << 20, .max_objects_per_transaction = 4});
    check_messages_name(pool, "pmem");
  }
  SUBCASE("dual_bank") {
    ftm::engines::dual_bank pool(ftm::engines::dual_bank::options{
        .bank_size = std::size_t{1} << 20, .max_objects_per_transaction = 4});
    check_messages_name(pool, "dual_bank");
  }
}
