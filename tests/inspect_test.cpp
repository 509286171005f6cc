// tools/ftm-inspect, run as a separate program on pool files made here: a fresh
// pool, one with objects and roots, one left by a killed writer, damaged files, and
// pools with ports (listed from the port directory, with their depths and counts).
#include "engines.hpp"
#include "process.hpp"

#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using ftm::engines::pmem;
namespace fs = std::filesystem;
namespace layout = ftm::detail::bank_layout;

struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance), (std::uint32_t, ops));
};

struct order {
  BOOST_HANA_DEFINE_STRUCT(order, (std::uint32_t, id), (std::int64_t, amount));
};

constexpr pmem::options small{.bank_size = std::size_t{1} << 20, .max_objects_per_transaction = 16};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct run_result {
  int status = -1;  // exit status, or -1 if the tool did not exit normally
  std::string out;
  std::string err;
};

/// Runs ftm-inspect with `args`; returns its exit status, stdout and stderr.
run_result inspect(const std::string& args) {
  const fs::path out = ftm_test::scratch_file("out");
  const fs::path err = ftm_test::scratch_file("err");
  const std::string cmd =
      fmt::format("'{}' {} >'{}' 2>'{}'", FTM_INSPECT_PATH, args, out.string(), err.string());
  const int w = std::system(cmd.c_str());
  run_result r;
  r.status = WIFEXITED(w) ? WEXITSTATUS(w) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

bool matches(const std::string& text, const std::string& pattern) {
  return std::regex_search(text, std::regex(pattern));
}

#define CHECK_MATCH(text, pattern) CHECK_MESSAGE(matches(text, pattern), pattern, "\n", text)

}  // namespace

TEST_CASE("ftm-inspect shows a fresh pool") {
  const fs::path path = ftm_test::scratch_file();
  std::uint64_t id = 0;
  std::uint64_t chunks = 0;
  {
    auto pool = pmem::create(path, small);
    id = pool.pool_id();
    chunks = pool.check().chunks;
  }
  const auto r = inspect(path.string());
  CHECK(r.status == 0);
  CHECK(r.err.empty());
  CHECK_MATCH(r.out, "magic +0x66746d2d64756131 \\(ftm-dua1\\)");
  CHECK_MATCH(r.out, fmt::format("format version +{}\n", layout::format_version));
  CHECK_MATCH(r.out, fmt::format("pool id +{:#018x}\n", id));
  CHECK_MATCH(r.out,
              fmt::format("bank size +1048576 bytes \\({} chunks of 65536 bytes\\)", chunks));
  CHECK_MATCH(r.out, "log capacity +16 objects per transaction");
  CHECK_MATCH(r.out, "descriptors +64 \\(transactions at once\\)\n");
  CHECK_MATCH(r.out, fmt::format("file size +{} bytes", fs::file_size(path)));
  CHECK_MATCH(r.out, "\\(this boot\\)");
  CHECK_MATCH(r.out, "durability +process\n");
  CHECK_MATCH(r.out, "protected mode +off\n");
  CHECK_MATCH(r.out, "roots \\(0\\)\n");
  CHECK_MATCH(r.out, fmt::format("chunks +{0} in all, 0 in use, {0} free", chunks));
  CHECK_MATCH(r.out, "objects +0 live, 0 bytes");
  CHECK_MATCH(r.out, fmt::format("bytes free +{}", chunks * 65536));
  CHECK_MATCH(r.out, "descriptors in use \\(0\\)\n");
  CHECK(r.out.find("check:") == std::string::npos);  // only with --check

  const auto c = inspect("--check " + path.string());
  CHECK(c.status == 0);
  CHECK_MATCH(c.out, "check: ok\n");
}

TEST_CASE("ftm-inspect shows whether a pool's latest opener uses protected mode") {
  const fs::path path = ftm_test::scratch_file();
  auto opts = small;
  opts.protected_mode = true;
  bool keys = false;
  {
    auto pool = pmem::create(path, opts);
    keys = pool.uses_protection_keys();
  }
  // The mechanism this process used (protection keys where the CPU and kernel have them).
  const char* expected = keys ? "protected mode +on, with protection keys \\(its latest opener's"
                              : "protected mode +on, with mprotect \\(its latest opener";
  CHECK_MATCH(inspect(path.string()).out, expected);
  { auto pool = pmem::open(path); }
  CHECK_MATCH(inspect(path.string()).out, "protected mode +off\n");
  {
    auto pool = pmem::open(path, opts);
    CHECK_MATCH(inspect(path.string()).out, "protected mode +on");  // while it is open
  }
}

TEST_CASE("ftm-inspect shows a power pool's durability and how its redo log is flushed") {
  const fs::path path = ftm_test::scratch_file();
  auto opts = small;
  opts.level = ftm::durability::power;
  opts.flush = ftm::flush_method::fdatasync;
  {
    auto pool = pmem::create(path, opts);
    const auto r = inspect(path.string());  // while it is open
    CHECK(r.status == 0);
    CHECK_MATCH(r.out, "durability +power, redo log flushed by fdatasync\n");
  }
  const auto r = inspect(path.string());  // its last users'
  CHECK_MATCH(r.out, "durability +power, redo log flushed by fdatasync\n");
  fs::remove(ftm::detail::redo::redo_log::path_for(path));
}

TEST_CASE("ftm-inspect --check reports a power pool's missing or cut redo log") {
  const fs::path path = ftm_test::scratch_file();
  const auto wal = ftm::detail::redo::redo_log::path_for(path);
  auto opts = small;
  opts.level = ftm::durability::power;
  {
    auto pool = pmem::create(path, opts);
    for (int i = 0; i < 3; ++i) {
      ftm::atomically(pool, [](auto& tx) { ++tx.open(ftm::root<account>(tx, "acct"))->ops; });
    }
  }
  const auto ok = inspect("--check " + path.string());
  CHECK(ok.status == 0);
  CHECK_MATCH(ok.out, "check: ok\n");
  const std::string log = read_text(wal);
  {
    // Cut after its first record: recovery would take the pool back two transactions.
    ftm::detail::redo::record_header rh{};
    std::memcpy(&rh, log.data() + ftm::detail::redo::records_begin, sizeof rh);
    fs::resize_file(wal, ftm::detail::redo::records_begin + rh.bytes);
    const auto r = inspect("--check " + path.string());
    CHECK(r.status == 1);
    CHECK_MATCH(r.out, "check: 1 problem\n");
    CHECK_MATCH(r.out, "breaks off at record 2 .*the log was truncated, damaged or replaced");
  }
  fs::remove(wal);
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 1);
  CHECK(r.out.find("check: ok") == std::string::npos);
  CHECK_MATCH(r.out, "redo log +.*\\.wal MISSING \\(pmem::open refuses the pool\\)\n");
  CHECK_MATCH(r.out, "check: 1 problem\n");
  CHECK_MATCH(r.out, "its redo log '.*\\.wal' is missing");
  // The data is there to rescue.
  CHECK_MATCH(r.out, "'acct' +type");
}

TEST_CASE("ftm-inspect shows the roots and the space of a pool with objects") {
  const fs::path path = ftm_test::scratch_file();
  ftm::check_report expected;
  {
    auto pool = pmem::create(path, small);
    ftm::atomically(pool, [](auto& tx) {
      tx.open(ftm::root<account>(tx, "acct"))->balance = 42;
      *tx.open(ftm::root<std::uint64_t>(tx, "counter")) = 7;
      for (int i = 0; i < 5; ++i)
        tx.create(account{i, 0});
    });
    expected = pool.check();
    REQUIRE(expected.ok());
  }
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 0);
  CHECK_MATCH(r.out, "roots \\(2\\)\n");
  CHECK_MATCH(r.out,
              "'acct'  type [^\n]*account  size 16  fingerprint 0x[0-9a-f]{16}  offset [0-9]+");
  CHECK_MATCH(r.out, "'counter'  type [^\n]*  size 8  fingerprint 0x[0-9a-f]{16}");
  CHECK_MATCH(r.out,
              fmt::format("objects +{} live, {} bytes", expected.objects, expected.bytes_in_use));
  CHECK(expected.objects >= 7);  // 2 roots, 5 objects, and the roots' layout descriptions
  CHECK_MATCH(r.out, fmt::format("chunks +{} in all, {} in use, {} free", expected.chunks,
                                 expected.chunks - expected.free_chunks, expected.free_chunks));
  CHECK_MATCH(r.out, fmt::format("bytes free +{} ", expected.bytes_free));
  CHECK_MATCH(r.out, "check: ok\n");
}

TEST_CASE("ftm-inspect shows the descriptor a killed writer left, and changes nothing") {
  const fs::path path = ftm_test::scratch_file();
  { auto pool = pmem::create(path, small); }
  const pid_t child = ftm_test::killed_child([&] {
    auto pool = pmem::open(path);
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 1; });
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -1;  // never committed
    ftm_test::die_now();
  });
  const std::string before = read_text(path);

  const auto r = inspect(path.string());
  CHECK(r.status == 0);  // showing a pool is fine; only --check judges it
  CHECK_MATCH(r.out, "descriptors in use \\(1\\)\n");
  CHECK_MATCH(r.out, fmt::format("#[0-9]+  pid {} \\(dead\\)  active  1 log entries\n", child));
  // The roots table was read: readers take no lock, so the log does not list it.
  CHECK_FALSE(matches(r.out, "read +offset"));
  CHECK_MATCH(r.out,
              "write +offset [0-9]+  length 20\n");  // the account: its size word and 16 bytes
  CHECK_MATCH(r.out, "'acct'  type [^\n]*account");

  const auto c = inspect("--check " + path.string());
  CHECK(c.status == 1);
  CHECK_MATCH(c.out, "check: 1 problem\n");
  CHECK_MATCH(c.out,
              fmt::format("  - descriptor [0-9]+ belongs to pid {}, which is dead \\(active, "
                          "1 log entries\\): opening the pool for writing recovers it",
                          child));
  CHECK(read_text(path) == before);  // inspected as it was left: nothing recovered

  {
    auto pool = pmem::open(path);  // recovers
    CHECK(pool.opening_recovery().undone == 1);
  }
  const auto after = inspect("--check " + path.string());
  CHECK(after.status == 0);
  CHECK_MATCH(after.out, "descriptors in use \\(0\\)\n");
  CHECK_MATCH(after.out, "check: ok\n");
}

TEST_CASE("ftm-inspect shows the pool's number of descriptors, and dead writers beyond 64") {
  const fs::path path = ftm_test::scratch_file();
  constexpr int writers = 70;
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 128,
                                    .max_transactions = 100});
  }
  const pid_t child = ftm_test::killed_child([&] {
    auto pool = pmem::open(path);
    const auto accounts = ftm::atomically(pool, [](auto& tx) {
      std::vector<ftm::stable<account>> out;
      for (int i = 0; i < writers; ++i)
        out.push_back(tx.create(account{i, 0}));
      return out;
    });
    // 70 transactions open at once, each writing its own account, never committed.
    std::vector<std::unique_ptr<ftm::transaction<pmem>>> txs;
    for (int i = 0; i < writers; ++i) {
      auto& tx = *txs.emplace_back(std::make_unique<ftm::transaction<pmem>>(pool));
      tx.begin();
      tx.open(accounts[static_cast<std::size_t>(i)])->balance = -1;
    }
    ftm_test::die_now();
  });
  const auto r = inspect(path.string());
  CHECK(r.status == 0);
  CHECK_MATCH(r.out, "descriptors +100 \\(transactions at once\\)\n");
  CHECK_MATCH(r.out, fmt::format("descriptors in use \\({}\\)\n", writers));
  CHECK_MATCH(r.out, fmt::format("#69  pid {} \\(dead\\)  active  1 log entries\n", child));
  const auto c = inspect("--check " + path.string());
  CHECK(c.status == 1);
  CHECK_MATCH(c.out, fmt::format("check: {} problems\n", writers));
  {
    auto pool = pmem::open(path);  // recovers all of them
    CHECK(pool.opening_recovery().undone == writers);
    CHECK(pool.max_transactions() == 100);
  }
  const auto after = inspect("--check " + path.string());
  CHECK(after.status == 0);
  CHECK_MATCH(after.out, "descriptors in use \\(0\\)\n");
  CHECK_MATCH(after.out, "check: ok\n");
}

TEST_CASE(
    "ftm-inspect shows a living writer's transaction as no problem, unless from an earlier boot") {
  const fs::path path = ftm_test::scratch_file();
  {
    auto pool = pmem::create(path, small);
    ftm::atomically(pool, [](auto& tx) { tx.open(ftm::root<account>(tx, "acct"))->balance = 1; });
  }
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto pool = pmem::open(path);
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -1;  // locked and changed, not committed
    char c = 1;
    static_cast<void>(::write(ready[1], &c, 1));
    ::pause();
    ::_exit(0);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  const auto r = inspect("--check " + path.string());
  {
    // As if the machine had rebooted since: the same descriptor's owner is dead.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    layout::pool_header h{};
    f.read(reinterpret_cast<char*>(&h), sizeof h);
    layout::set_boot_id(h, "an-earlier-boot");  // with its check word
    f.seekp(0);
    f.write(reinterpret_cast<const char*>(&h), sizeof h);
  }
  const auto rebooted = inspect("--check " + path.string());
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
  CHECK(r.status == 0);
  CHECK_MATCH(r.out, fmt::format("#[0-9]+  pid {} \\(alive\\)  active  1 log entries\n", child));
  CHECK_MATCH(r.out, "check: ok\n");
  CHECK(rebooted.status == 1);
  CHECK_MATCH(rebooted.out, "boot id +an-earlier-boot \\(an earlier boot: every owner is dead\\)");
  CHECK_MATCH(rebooted.out, fmt::format("#[0-9]+  pid {} \\(dead\\)  active", child));
  CHECK_MATCH(rebooted.out, "check: 1 problem\n");
}

TEST_CASE("ftm-inspect refuses a damaged file with an ftm error, and lists damaged structures") {
  const fs::path path = ftm_test::scratch_file();
  std::uint64_t acct = 0;
  {
    auto pool = pmem::create(path, small);
    acct = ftm::atomically(pool, [](auto& tx) {
      auto a = ftm::root<account>(tx, "acct");
      tx.open(a)->balance = 42;
      return a.offset();
    });
  }
  auto patch = [&](std::uint64_t off, auto value) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(off));
    f.write(reinterpret_cast<const char*>(&value), sizeof value);
  };
  const std::string pristine = read_text(path);
  // The header says what the file is: a foreign magic is refused before anything else.
  patch(0, std::uint64_t{0x1234});
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 2);
  CHECK(r.out.empty());
  CHECK_MATCH(r.err, fmt::format("^ftm-inspect: ftm: bad pool: '{}' cannot be used: it is not an "
                                 "ftm pool",
                                 path.string()));

  const auto missing = inspect((ftm_test::scratch_dir() / "missing.ftm").string());
  CHECK(missing.status == 2);
  CHECK_MATCH(missing.err,
              "ftm: i/o error: cannot open the pool file '.*missing.ftm': No such file");

  const auto bad_args = inspect("--frobnicate " + path.string());
  CHECK(bad_args.status == 2);
  CHECK_MATCH(bad_args.err, "usage: ftm-inspect");

  // A sound header over damaged structures: shown, and --check lists the damage. The
  // account's size, in both banks, no longer matches its root or its block.
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << pristine;
  }
  const std::uint64_t control = fs::file_size(path) - 2 * small.bank_size;
  for (const std::uint64_t bank : {control, control + small.bank_size})
    patch(bank + acct + offsetof(layout::object_header, size), std::uint32_t{1000});
  const auto d = inspect("--check " + path.string());
  CHECK(d.status == 1);
  CHECK_MATCH(d.out, "pool ");
  CHECK_MATCH(d.out, "check: [0-9]+ problems?\n");
  CHECK_MATCH(d.out, fmt::format("  - object at offset {} has size 1000 in a 64-byte block", acct));
  CHECK_MATCH(d.out, "  - root 'acct' names no live object of its size");
}

namespace {

/// Three ports with history: `orders` with messages waiting, one of them delivered to
/// an aborted receive, and one redelivered; `jobs`, whose poison message went to
/// `dead`.
struct port_scene {
  ftm::stable_port<order> orders, jobs, dead;
};

template <class E>
std::optional<order> receive_then(E& pool, ftm::stable_port<order> p, bool commit) {
  ftm::transaction tx{pool};
  tx.begin();
  auto m = ftm::try_receive(tx, p);
  if (commit) {
    tx.commit();
  } else {
    tx.abort();
  }
  return m;
}

port_scene make_port_scene(pmem& pool) {
  port_scene s;
  s.orders = ftm::atomically(pool, [](auto& tx) {
    return ftm::make_port<order>(tx, {.capacity = 4, .max_deliveries = 0});
  });
  s.dead =
      ftm::atomically(pool, [](auto& tx) { return ftm::make_port<order>(tx, {.capacity = 8}); });
  s.jobs = ftm::atomically(pool, [&](auto& tx) {
    return ftm::make_port<order>(tx, {.capacity = 4, .max_deliveries = 1}, s.dead);
  });
  ftm::atomically(pool, [&](auto& tx) {
    for (std::uint32_t id : {1, 2, 3})
      ftm::send(tx, s.orders, order{id, 10});
    for (std::uint32_t id : {7, 8})
      ftm::send(tx, s.jobs, order{id, 70});
  });
  CHECK(receive_then(pool, s.orders, true)->id == 1);
  CHECK(receive_then(pool, s.orders, false)->id == 2);
  CHECK(receive_then(pool, s.orders, true)->id == 2);   // redelivered
  CHECK(receive_then(pool, s.orders, false)->id == 3);  // in flight
  CHECK(receive_then(pool, s.jobs, false)->id == 7);    // its one delivery
  CHECK(receive_then(pool, s.jobs, true)->id == 8);     // 7 went to `dead`
  return s;
}

/// The line ftm-inspect prints for `p`, as a pattern, from the port's own statistics.
std::string port_line(pmem& pool, ftm::stable_port<order> p, std::uint64_t dead_letter = 0) {
  const auto st = ftm::atomically(pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
  return fmt::format(
      "  offset {}  [^\n]*order  depth {}/{}  in flight {}  sent {}  received {}  redelivered {}  "
      "dead-lettered {}{}\n",
      p.offset(), st.depth, st.capacity, st.in_flight, st.sent, st.received, st.redelivered,
      st.dead_lettered,
      dead_letter == 0 ? std::string() : fmt::format("  dead letters to offset {}", dead_letter));
}

}  // namespace

TEST_CASE("ftm-inspect lists the ports with their depths and counts") {
  const fs::path path = ftm_test::scratch_file();
  std::string orders_line, jobs_line, dead_line;
  port_scene s;
  {
    auto pool = pmem::create(path, small);
    s = make_port_scene(pool);
    const auto o =
        ftm::atomically(pool, [&](auto& tx) { return ftm::port_stats_of(tx, s.orders); });
    CHECK(fmt::format("{}", o) ==
          "depth: 1/4, in flight: 1, sent: 3, received: 2, deliveries: 4, redelivered: 1, "
          "dead-lettered: 0");
    orders_line = port_line(pool, s.orders);
    jobs_line = port_line(pool, s.jobs, s.dead.offset());
    dead_line = port_line(pool, s.dead);
    CHECK(jobs_line.find("depth 0/4  in flight 0  sent 2  received 1  redelivered 0  "
                         "dead-lettered 1  dead letters to offset") != std::string::npos);
    CHECK(dead_line.find("depth 1/8  in flight 0  sent 1  received 0") != std::string::npos);
  }
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 0);
  CHECK(r.err.empty());
  CHECK_MATCH(r.out, "'ftm.ports'  type [^\n]*port_directory  size 32 ");
  CHECK_MATCH(r.out, "\nports \\(3\\)\n");
  CHECK_MATCH(r.out, orders_line);
  CHECK_MATCH(r.out, jobs_line);
  CHECK_MATCH(r.out, dead_line);
  CHECK_MATCH(r.out, "check: ok\n");

  // The tool reads committed bytes through a bounds-checked accessor.
  const auto view = pmem::inspect(path);
  CHECK(view.object(s.orders.offset()).size() == sizeof(ftm::detail::port_header));
  CHECK_THROWS_AS(static_cast<void>(view.object(s.orders.offset() + 8)), ftm::bad_pool);
  CHECK_THROWS_AS(static_cast<void>(view.object(small.bank_size)), ftm::bad_pool);
  CHECK_THROWS_AS(static_cast<void>(view.object(small.bank_size - 64)), ftm::bad_pool);
}

TEST_CASE("ftm-inspect lists committed ports of other processes, and no aborted or killed one") {
  const fs::path path = ftm_test::scratch_file();
  { auto pool = pmem::create(path, small); }
  ftm_test::killed_child([&] {
    auto pool = pmem::open(path);
    ftm::atomically(pool, [](auto& tx) { return ftm::make_port<order>(tx, {.capacity = 5}); });
    ftm::transaction tx{pool};
    tx.begin();
    static_cast<void>(ftm::make_port<order>(tx, {.capacity = 7}));  // never committed
    ftm_test::die_now();
  });
  {
    auto pool = pmem::open(path);  // recovers the killed transaction
    ftm::transaction tx{pool};
    tx.begin();
    static_cast<void>(ftm::make_port<order>(tx, {.capacity = 9}));
    tx.abort();
  }
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 0);
  CHECK_MATCH(r.out, "\nports \\(1\\)\n");
  CHECK_MATCH(r.out, "  offset [0-9]+  [^\n]*order  depth 0/5  in flight 0  sent 0");
  CHECK(r.out.find("/7 ") == std::string::npos);
  CHECK(r.out.find("/9 ") == std::string::npos);
  CHECK_MATCH(r.out, "check: ok\n");
}

TEST_CASE("ftm-inspect --check flags damaged port headers, on a copy of the pool") {
  const fs::path path = ftm_test::scratch_file();
  port_scene s;
  {
    auto pool = pmem::create(path, small);
    s = make_port_scene(pool);
  }
  const fs::path copy = ftm_test::scratch_file("copy");
  fs::copy_file(path, copy);
  const std::uint64_t control = fs::file_size(copy) - 2 * small.bank_size;
  auto patch = [&](std::uint64_t port, std::size_t field, auto value) {
    std::fstream f(copy, std::ios::in | std::ios::out | std::ios::binary);
    for (const std::uint64_t bank : {control, control + small.bank_size}) {
      f.seekp(static_cast<std::streamoff>(bank + port + layout::header_size + field));
      f.write(reinterpret_cast<const char*>(&value), sizeof value);
    }
  };
  using ftm::detail::port_header;
  patch(s.orders.offset(), offsetof(port_header, head), std::uint64_t{9});
  patch(s.jobs.offset(), offsetof(port_header, capacity), std::uint32_t{99});
  patch(s.dead.offset(), offsetof(port_header, fingerprint), std::uint64_t{0x5eed});
  patch(s.dead.offset(), offsetof(port_header, kind), std::uint32_t{0});
  // The directory's own count of ports, too.
  std::uint64_t directory = 0;
  for (const auto& r : pmem::inspect(copy).roots())
    if (r.name == "ftm.ports") directory = r.offset;
  REQUIRE(directory != 0);
  patch(directory, offsetof(ftm::detail::port_directory, ports), std::uint64_t{4});
  const auto d = inspect("--check " + copy.string());
  CHECK(d.status == 1);
  CHECK_MATCH(d.out, "\nports \\(3\\)\n");
  CHECK_MATCH(d.out, fmt::format("  offset {}  [^\n]*order  capacity 4  \\(damaged: see --check\\)",
                                 s.jobs.offset()));
  CHECK_MATCH(d.out, fmt::format("  - port at offset {} \\([^\n]*order\\): its head 9 is past its "
                                 "tail 3\n",
                                 s.orders.offset()));
  CHECK_MATCH(d.out, fmt::format("  - port at offset {} \\([^\n]*order\\): it counts 2 receives "
                                 "and 0 dead letters, but its head is 9\n",
                                 s.orders.offset()));
  CHECK_MATCH(d.out, fmt::format("  - port at offset {} \\([^\n]*order\\): its header's capacity "
                                 "99 is not the directory's 4\n",
                                 s.jobs.offset()));
  CHECK_MATCH(
      d.out, fmt::format("  - port at offset {} \\([^\n]*order\\): its header's message "
                         "fingerprint 0x0000000000005eed is not the directory's 0x[0-9a-f]{{16}}\n",
                         s.dead.offset()));
  CHECK_MATCH(d.out, fmt::format("  - port at offset {} \\([^\n]*order\\): its first bytes say "
                                 "kind 0x00000000, not a port's 0x32747270\n",
                                 s.dead.offset()));
  CHECK_MATCH(d.out, "  - the port directory counts 4 ports, but its blocks list 3\n");
  CHECK_MATCH(d.out, "check: 6 problems\n");
  // Without --check the pool is shown, and the damage is not judged.
  CHECK(inspect(copy.string()).status == 0);
  // The original is untouched and sound.
  const auto ok = inspect("--check " + path.string());
  CHECK(ok.status == 0);
  CHECK_MATCH(ok.out, "check: ok\n");
}

namespace {
using label_t = char[8];
/// A reflected root that holds containers through handles.
struct catalog {
  BOOST_HANA_DEFINE_STRUCT(catalog, (std::uint64_t, revision), (label_t, label),
                           (ftm::stable<ftm::stable_string>, notes),
                           (ftm::stable<ftm::stable_map<std::uint64_t, std::uint64_t>>, index));
};
}  // namespace

TEST_CASE("ftm-inspect decodes each root's value and walks its containers") {
  const fs::path path = ftm_test::scratch_file();
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{8} << 20});
    ftm::atomically(pool, [](auto& tx) {
      auto kv =
          ftm::open(tx, ftm::root<ftm::stable_hash_map<std::uint64_t, std::uint64_t>>(tx, "kv"));
      for (std::uint64_t k = 0; k < 700; ++k)
        kv.insert_or_assign(k, k * k);
      ftm::open(tx, ftm::root<ftm::stable_string>(tx, "text")).assign(std::string(10000, 'x'));
      auto numbers = ftm::open(tx, ftm::root<ftm::stable_vector<std::uint64_t>>(tx, "numbers"));
      for (std::uint64_t i = 0; i < 1000; ++i)
        numbers.push_back(i);
      auto c = tx.open(ftm::root<catalog>(tx, "catalog"));
      c->revision = 3;
      std::strcpy(c->label, "books");
      c->notes = tx.template create<ftm::stable_string>();
      ftm::open(tx, c->notes).assign("hello");
      c->index = tx.template create<ftm::stable_map<std::uint64_t, std::uint64_t>>();
      auto index = ftm::open(tx, c->index);
      for (std::uint64_t k = 0; k < 300; ++k)
        index.insert(k, k);
    });
  }
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 0);
  // 700 entries: 256 segments and the table, their bucket pages, and the nodes.
  CHECK_MATCH(r.out, "stable_hash_map at offset [0-9]+: 700 elements, storage [0-9]+ objects");
  CHECK_MATCH(r.out,
              "stable_string at offset [0-9]+: 10000 bytes, storage 6 objects, [0-9]+ bytes");
  CHECK_MATCH(r.out, "stable_vector at offset [0-9]+: 1000 elements, storage 5 objects");
  CHECK_MATCH(r.out,
              "value \\{revision: 3, label: \"books\", notes: stable<stable_string>@[0-9]+, "
              "index: stable<stable_map<[^\n]*>>@[0-9]+\\}");
  CHECK_MATCH(r.out, "stable_string at offset [0-9]+: 5 bytes, storage 4 objects");
  CHECK_MATCH(r.out, "stable_map at offset [0-9]+: 300 elements, storage [0-9]+ objects");
  CHECK(r.out.find("damaged") == std::string::npos);
  CHECK_MATCH(r.out, "check: ok\n");
}

TEST_CASE("ftm-inspect shows maps of stable_string keys and values by kind and size") {
  const fs::path path = ftm_test::scratch_file();
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{16} << 20});
    ftm::atomically(pool, [](auto& tx) {
      auto names = ftm::open(
          tx, ftm::root<ftm::stable_hash_map<ftm::stable_string, ftm::stable_string>>(tx, "names"));
      for (int k = 0; k < 40; ++k) {
        names.insert_or_assign("a key longer than sixteen bytes " + std::to_string(k),
                               std::string(k == 7 ? 70000 : 300, 'v'));
      }
      auto sorted = ftm::open(
          tx, ftm::root<ftm::stable_map<ftm::stable_string, std::uint64_t>>(tx, "sorted"));
      for (std::uint64_t k = 0; k < 250; ++k)
        sorted.insert("word " + std::to_string(k), k);
    });
  }
  const auto r = inspect("--check " + path.string());
  CHECK(r.status == 0);
  CHECK_MATCH(r.out, "stable_hash_map at offset [0-9]+: 40 elements, storage [0-9]+ objects");
  CHECK_MATCH(r.out, "stable_map at offset [0-9]+: 250 elements, storage [0-9]+ objects");
  CHECK(r.out.find("damaged") == std::string::npos);
  CHECK_MATCH(r.out, "check: ok\n");
}
