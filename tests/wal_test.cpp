// The redo log of a `power` pool checked against its pool before recovery replays it:
// a log cut short, a bit flipped in a record, an old copy of the log put back, or the
// log of an earlier `power` period is refused with `ftm::bad_pool` naming the cause,
// and the pool is left as it was; never replayed in part, which would take some objects
// back in time and not others. A mutation loop cuts and flips the log of a cleanly
// closed pool: each mutated log opens with exactly the committed state, or is refused.
#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

using ftm::durability;
using ftm::engines::pmem;
namespace fs = std::filesystem;
namespace redo = ftm::detail::redo;

struct cell {
  std::uint64_t words[40];  // a record of a few hundred bytes
};

constexpr pmem::options power_pool{.bank_size = std::size_t{256} * 1024,
                                   .max_objects_per_transaction = 16,
                                   .level = durability::power,
                                   .log_size = std::size_t{256} * 1024,
                                   .flush = ftm::flush_method::fdatasync};

std::vector<char> read_file(const fs::path& p) {
  std::vector<char> bytes(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void write_file(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

/// Where the mutation runs: tmpfs if there is one (recovery flushes; it costs nothing there).
fs::path work_dir() {
  std::error_code ec;
  if (fs::is_directory("/dev/shm", ec)) {
    const fs::path d = fs::path("/dev/shm") / fmt::format("ftm-wal-test-{}", ::getpid());
    fs::create_directories(d, ec);
    if (!ec) return d;
  }
  return ftm_test::scratch_dir();
}

/// Commits transaction `k`: sets root `r<k>` (new) and the shared root `all` to k.
void commit(pmem& pool, int k) {
  ftm::atomically(pool, [&](auto& tx) {
    auto r = tx.open(tx.template root<cell>(fmt::format("r{}", k).c_str()));
    auto a = tx.open(tx.template root<cell>("all"));
    for (auto& w : r->words)
      w = static_cast<std::uint64_t>(k);
    for (auto& w : a->words)
      w = static_cast<std::uint64_t>(k);
  });
}

/// What a pool holds, read without recovery: each root's name and bytes, as committed.
std::string snapshot(const fs::path& path) {
  const auto view = pmem::inspect(path);
  std::string s;
  for (const auto& r : view.roots()) {
    const auto bytes = view.object(r.offset);
    s +=
        r.name + "=" + std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()) + ";";
  }
  return s;
}

/// The file offsets where the records of the log's current epoch end, in order.
std::vector<std::uint64_t> record_ends(const fs::path& wal) {
  const auto bytes = read_file(wal);
  redo::file_header h{};
  REQUIRE(bytes.size() >= redo::records_begin);
  std::memcpy(&h, bytes.data(), sizeof h);
  std::vector<std::uint64_t> ends;
  for (std::uint64_t off = redo::records_begin;
       off + sizeof(redo::record_header) <= bytes.size();) {
    redo::record_header rh{};
    std::memcpy(&rh, bytes.data() + off, sizeof rh);
    if (rh.epoch != h.epoch || rh.bytes < sizeof rh || rh.bytes > bytes.size() - off) break;
    off += rh.bytes;
    ends.push_back(off);
  }
  return ends;
}

/// A power pool at `path`, cleanly closed after `n` transactions: its log holds a
/// record for each (and those of the roots' creation).
void make_pool(const fs::path& path, int n) {
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
  auto pool = pmem::create(path, power_pool);
  for (int k = 1; k <= n; ++k)
    commit(pool, k);
}

/// Opens `path` (as `pmem::open` without a level does) expecting a refusal whose message
/// holds `cause`; the pool file and its log must be as they were.
void check_refused(const fs::path& path, const std::string& cause) {
  const auto wal = redo::redo_log::path_for(path);
  const auto pool_before = read_file(path);
  const auto wal_before = read_file(wal);
  CHECK_THROWS_WITH_AS(pmem::open(path), doctest::Contains(cause.c_str()), ftm::bad_pool);
  CHECK_THROWS_WITH_AS(pmem::open(path, durability::process), doctest::Contains(cause.c_str()),
                       ftm::bad_pool);
  CHECK_THROWS_WITH_AS(pmem::open(path), doctest::Contains(wal.c_str()), ftm::bad_pool);
  CHECK(read_file(path) == pool_before);
  CHECK(read_file(wal) == wal_before);
  // Read-only, the pool is readable, and its check names the log's problem.
  const auto report = pmem::inspect(path).check();
  REQUIRE_FALSE(report.ok());
  CHECK(report.problems.back().find(cause) != std::string::npos);
}

}  // namespace

TEST_CASE("wal: a log cut after its first record is refused, not replayed over later commits") {
  const fs::path path = work_dir() / "cut.ftm";
  const auto wal = redo::redo_log::path_for(path);
  make_pool(path, 3);
  const auto ends = record_ends(wal);
  REQUIRE(ends.size() == 3);
  fs::resize_file(wal, ends[0]);
  check_refused(path, "breaks off at record 2");
  check_refused(path, fmt::format("offset {}: the file ends", ends[0]));
  fs::remove(path);
  fs::remove(wal);
}

TEST_CASE("wal: a bit flipped in a record is refused, naming the record and its offset") {
  const fs::path path = work_dir() / "flip.ftm";
  const auto wal = redo::redo_log::path_for(path);
  make_pool(path, 3);
  const auto ends = record_ends(wal);
  REQUIRE(ends.size() == 3);
  const auto clean = read_file(wal);
  {
    // In the first record's bytes: the chain breaks there.
    auto bytes = clean;
    bytes[redo::records_begin + sizeof(redo::record_header) + 100] ^= 0x10;
    write_file(wal, bytes);
    check_refused(path,
                  fmt::format("breaks off at record 1 (offset {}: its checksum does not match",
                              redo::records_begin));
  }
  {
    // In the second record's header: its size no longer leads to the third.
    auto bytes = clean;
    bytes[ends[0] + offsetof(redo::record_header, bytes)] ^= 0x08;
    write_file(wal, bytes);
    check_refused(path, fmt::format("breaks off at record 2 (offset {}", ends[0]));
  }
  {
    // In the last record.
    auto bytes = clean;
    bytes[ends[2] - 8] ^= 0x01;
    write_file(wal, bytes);
    check_refused(path, fmt::format("breaks off at record 3 (offset {}", ends[1]));
  }
  write_file(wal, clean);
  {
    auto pool = pmem::open(path);
    CHECK(pool.opening_recovery().redone == 3);
    CHECK(pool.check().ok());
  }
  fs::remove(path);
  fs::remove(wal);
}

TEST_CASE("wal: an old copy of the log put back after more commits is refused") {
  const fs::path path = work_dir() / "old.ftm";
  const auto wal = redo::redo_log::path_for(path);
  make_pool(path, 1);
  SUBCASE("saved while the pool is open, put back after it is closed") {
    std::vector<char> old;
    {
      auto pool = pmem::open(path);
      commit(pool, 2);
      old = read_file(wal);
      commit(pool, 3);
    }
    write_file(wal, old);
    check_refused(path, "the log was truncated, damaged or replaced by an older copy");
  }
  SUBCASE("saved when it is closed, put back after it was opened and written again") {
    const auto old = read_file(wal);
    {
      auto pool = pmem::open(path);  // its recovery starts a new epoch
      commit(pool, 2);
    }
    write_file(wal, old);
    check_refused(path, "is older than the pool");
  }
  SUBCASE("the log of an earlier power period of the pool") {
    const auto old = read_file(wal);
    { auto pool = pmem::open(path, durability::process); }
    {
      auto pool = pmem::open(path, durability::power);  // a new log
      commit(pool, 2);
    }
    write_file(wal, old);
    check_refused(path, "is not the log it was last used with");
  }
  fs::remove(path);
  fs::remove(wal);
}

TEST_CASE("wal: every cut and a sample of bit flips of a log opens as committed or is refused") {
  const fs::path dir = work_dir();
  const fs::path clean_path = dir / "clean.ftm";
  const fs::path path = dir / "mutant.ftm";
  const auto wal = redo::redo_log::path_for(path);
  make_pool(clean_path, 6);
  const auto pool_bytes = read_file(clean_path);
  const auto wal_bytes = read_file(redo::redo_log::path_for(clean_path));
  const std::string committed = snapshot(clean_path);
  const auto ends = record_ends(redo::redo_log::path_for(clean_path));
  REQUIRE(ends.size() == 6);
  const std::uint64_t used = ends.back();

  int opened = 0, refused = 0, cut_refused = 0, flips_in_records_refused = 0;
  // Returns whether the mutated log was refused.
  const auto attempt = [&](const std::vector<char>& log, const std::string& what) {
    write_file(path, pool_bytes);
    write_file(wal, log);
    try {
      {
        auto pool = pmem::open(path);
        CHECK(pool.level() == durability::power);
        const auto c = pool.check();
        CHECK_MESSAGE(c.ok(), what, ": ", c.problems.front());
      }
      CHECK_MESSAGE(snapshot(path) == committed, what, ": opened, but not as committed");
      ++opened;
      return false;
    } catch (const ftm::bad_pool& e) {
      CHECK_MESSAGE(read_file(path) == pool_bytes, what, ": refused, but the pool was changed");
      ++refused;
      return true;
    }
  };

  // Cuts: at every record boundary, in the header, and a sample of offsets.
  std::vector<std::uint64_t> cuts = {0, 8, 40, 64, 100, redo::records_begin};
  for (const auto e : ends)
    cuts.push_back(e);
  std::mt19937_64 rng(20261206);
  for (int i = 0; i < 100; ++i)
    cuts.push_back(rng() % (used + 512));
  int cuts_before_end = 0;
  for (const auto at : cuts) {
    auto log = wal_bytes;
    log.resize(at);
    const bool r = attempt(log, fmt::format("log cut at {}", at));
    if (at < used) {
      ++cuts_before_end;
      CHECK_MESSAGE(r, "log cut at ", at, " (before the last record's end, ", used,
                    ") was not refused");
      cut_refused += r ? 1 : 0;
    }
  }
  // Bit flips: a sample over the header and the records, and a few past them.
  for (int i = 0; i < 500; ++i) {
    const std::uint64_t at = i < 16    ? rng() % 64  // the header and its copy's start
                             : i < 450 ? redo::records_begin + rng() % (used - redo::records_begin)
                                       : used + rng() % 4096;  // past the last record
    auto log = wal_bytes;
    log[at] = static_cast<char>(log[at] ^ (1 << (rng() % 8)));
    const bool r = attempt(log, fmt::format("bit flipped at {}", at));
    if (at >= redo::records_begin && at < used) {
      CHECK_MESSAGE(r, "bit flipped at ", at, " in a record was not refused");
      flips_in_records_refused += r ? 1 : 0;
    }
  }
  MESSAGE(
      fmt::format("{} mutated logs: {} opened as committed, {} refused ({} cuts before the "
                  "end, {} flips in records)",
                  opened + refused, opened, refused, cut_refused, flips_in_records_refused));
  CHECK(cuts_before_end > 80);
  CHECK(cut_refused == cuts_before_end);
  CHECK(flips_in_records_refused == 434);
  CHECK(opened > 0);
  for (const auto& p : {clean_path, path})
    for (const auto& f : {p, redo::redo_log::path_for(p)})
      fs::remove(f);
}
