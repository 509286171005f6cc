/// \file
/// The issue-4 benchmark: durable small transactions, side by side in one run. Each
/// transaction updates one 64-byte record among 10,000 (it reads the record, adds 1
/// to its counter, rewrites the whole record) and commits. The systems:
///   ftm_process      `ftm::engines::pmem` on a pool file, durability `process` (no
///                    flush at commit),
///   dual_bank        `ftm::engines::dual_bank` in memory, the reference for `process`,
///   pmdk_fs          PMDK libpmemobj on the file system (not pmem, so it msyncs),
///   pmdk_shm_forced_nondurable
///                    PMDK on /dev/shm with PMEM_IS_PMEM_FORCE=1: NOT durable (tmpfs;
///                    its flushes are cache-line flushes of DRAM), run in a child
///                    process because libpmem reads the variable once, at load,
///   sqlite_wal_full  SQLite, WAL journal, synchronous=FULL,
///   sqlite_wal_off   SQLite, WAL journal, synchronous=OFF (not durable),
///   lmdb_sync        LMDB with its default syncs,
///   lmdb_nosync      LMDB with MDB_NOSYNC (not durable),
///   redo_fdatasync   a hand-written redo log: one pwrite and one fdatasync per
///                    transaction, the floor for one sync per commit.
///   ftm_power        `ftm::engines::pmem`, durability `power`: a redo log beside the
///                    pool, one shared fdatasync per group of concurrent commits.
///   ftm_power_lines_shm_forced_nondurable
///                    `power` with the redo log flushed by cache lines
///                    (`ftm::flush_method::cache_lines`), forced on /dev/shm: NOT
///                    durable (tmpfs has no MAP_SYNC; the stores, CLWB and SFENCE of a
///                    DAX file system, on DRAM). The row beside pmdk_shm_forced_nondurable.
///
/// Every system keeps its files in one directory (`--dir=PATH`, or the environment
/// variable FTM_DURABLE_BENCH_DIR, or by default a directory under the build tree),
/// inside a fresh subdirectory that is removed at the end. Benchmarks are named
/// update/<system>/real_time/threads:<n>; with n threads, thread t updates only the
/// records whose index is t modulo n, so no two threads ever want the same record.
/// Every run of every system visits the same pseudo-random sequence of records.
///
/// After the run main() checks every system: each record must be whole (its fields
/// follow from its counter) and the counters must add up to the transactions done.

#include "workload.hpp"

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <benchmark/benchmark.h>
#include <fmt/format.h>
// Each peer is built in when CMake found its development package (FTM_BENCH_HAVE_*).
#if FTM_BENCH_HAVE_PMDK
#include <libpmem.h>
#include <libpmemobj.h>
#endif
#if FTM_BENCH_HAVE_LMDB
#include <lmdb.h>
#endif
#if FTM_BENCH_HAVE_SQLITE
#include <sqlite3.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace ftm_bench {
namespace {

namespace fs = std::filesystem;

constexpr std::uint32_t record_count = 10'000;
constexpr int max_threads = 8;
static_assert(record_count % max_threads == 0, "each thread gets the same number of records");

/// A record as it is first stored: counter 0, and the fields that follow from it.
record initial_record() {
  record r{};
  for (int k = 1; k < 8; ++k)
    r.field[k] = k;
  return r;
}

/// The update of every transaction: the counter goes up by one and the other seven
/// fields are rewritten from it, so all 64 bytes change and a torn record shows.
void bump(record& r) {
  r.field[0] += 1;
  for (int k = 1; k < 8; ++k)
    r.field[k] = r.field[0] + k;
}

/// Whether a record is whole: its fields follow from its counter.
bool whole(const record& r) {
  for (int k = 1; k < 8; ++k) {
    if (r.field[k] != r.field[0] + k) return false;
  }
  return true;
}

/// The records one thread visits: pseudo-random (splitmix64) among those whose index
/// is `stripe` modulo `stripes`. The same seed gives every system the same sequence.
class record_sequence {
 public:
  record_sequence(int stripe, int stripes)
      : state_(0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(stripe + 1)),
        stripe_(static_cast<std::uint32_t>(stripe)),
        stripes_(static_cast<std::uint32_t>(stripes)) {}

  std::uint32_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return stripe_ + stripes_ * static_cast<std::uint32_t>(z % (record_count / stripes_));
  }

 private:
  std::uint64_t state_;
  std::uint32_t stripe_;
  std::uint32_t stripes_;
};

/// Adds up the counters of `records` and checks that each record is whole.
struct tally {
  std::uint64_t sum = 0;
  std::uint64_t broken = 0;
  void add(const record& r) {
    sum += static_cast<std::uint64_t>(r.field[0]);
    if (!whole(r)) ++broken;
  }
};

[[noreturn]] void fail(std::string_view what) { throw std::runtime_error(std::string(what)); }
[[noreturn]] void fail_errno(std::string_view what, const fs::path& file) {
  throw std::runtime_error(fmt::format("{} '{}': {}", what, file.string(), std::strerror(errno)));
}

/// The entries of the redo log's ring: 2^16 (8 MiB) unless `--redo_log_slots=N` says
/// otherwise; the smoke test makes it small, so that its short runs reuse the ring.
std::uint64_t& redo_log_slots() {
  static std::uint64_t slots = 1 << 16;
  return slots;
}

/// The directory every system keeps its files in; set by main() before any runs.
fs::path& work_dir() {
  static fs::path dir;
  return dir;
}

/// What main() needs of every system: its name, and the check after the run.
class system_base {
 public:
  explicit system_base(std::string name) : name_(std::move(name)) {}
  system_base(const system_base&) = delete;
  system_base& operator=(const system_base&) = delete;
  virtual ~system_base() = default;

  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  /// Transactions committed over all runs, to compare with the counters.
  std::atomic<std::uint64_t> done{0};

  /// Checks the stored records against `done`; prints what is wrong.
  bool verify() {
    std::string problem;
    try {
      problem = judge(read_all());
    } catch (const std::exception& e) {
      problem = e.what();
    }
    if (!problem.empty()) {
      fmt::print(stderr, "{}: {}\n", name_, problem);
      return false;
    }
    fmt::print(stderr, "{}: {} transactions, all records whole\n", name_, done.load());
    return true;
  }

 protected:
  /// Reads every record back from where the system keeps it.
  virtual tally read_all() = 0;

 private:
  /// What is wrong with the records read back, or nothing.
  std::string judge(const tally& t) const {
    if (t.broken != 0) return fmt::format("{} torn records", t.broken);
    if (t.sum != done.load()) {
      return fmt::format("the counters add up to {}, but {} transactions committed", t.sum,
                         done.load());
    }
    return {};
  }

  std::string name_;
};

// ---- ftm ---------------------------------------------------------------------------

/// ftm on any engine: the records are 10,000 stable objects.
template <class Engine>
class ftm_system : public system_base {
 public:
  /// `make` returns the pool (engines do not move, so it is made in place).
  template <class Make>
  ftm_system(std::string name, Make make) : system_base(std::move(name)), pool_(make()) {
    records_.reserve(record_count);
    constexpr std::uint32_t batch = 500;  // well under max_objects_per_transaction
    for (std::uint32_t first = 0; first < record_count; first += batch) {
      auto made = ftm::atomically(pool_, [](auto& tx) {
        std::vector<ftm::stable<record>> some;
        for (std::uint32_t i = 0; i < batch; ++i)
          some.push_back(tx.create(initial_record()));
        return some;
      });
      records_.insert(records_.end(), made.begin(), made.end());
    }
  }

  void update(std::uint32_t i) {
    ftm::atomically(pool_, [&](auto& tx) { bump(*tx.open(records_[i])); });
  }

 protected:
  tally read_all() override {
    tally t;
    for (const auto& ref : records_) {
      t.add(ftm::atomically(pool_, [&](auto& tx) { return *tx.open_read(ref); }));
    }
    const auto report = pool_.check();
    for (const auto& problem : report.problems)
      fmt::print(stderr, "{}: {}\n", name(), problem);
    if (!report.ok()) fail("the pool check failed");
    return t;
  }

 private:
  Engine pool_;
  std::vector<ftm::stable<record>> records_;
};

/// A dual-bank pool's banks: 10,000 records of 128-byte blocks, with room to spare.
constexpr std::size_t ftm_bank_size = std::size_t{4} << 20;

class ftm_process_system final : public ftm_system<ftm::engines::pmem> {
 public:
  ftm_process_system()
      : ftm_system("ftm_process", [] {
          return ftm::engines::pmem::create(work_dir() / "ftm.pool", {.bank_size = ftm_bank_size});
        }) {}
};

class ftm_power_system final : public ftm_system<ftm::engines::pmem> {
 public:
  ftm_power_system()
      : ftm_system("ftm_power", [] {
          return ftm::engines::pmem::create(
              work_dir() / "ftm-power.pool",
              {.bank_size = ftm_bank_size, .level = ftm::durability::power});
        }) {}
};

/// A directory of its own under /dev/shm, made once and removed at exit.
const fs::path& shm_dir() {
  static const fs::path dir = [] {
    char dir_template[] = "/dev/shm/ftm-durable-bench-lines.XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) fail_errno("cannot create", "/dev/shm");
    return fs::path(dir_template);
  }();
  return dir;
}

class ftm_power_lines_forced_system final : public ftm_system<ftm::engines::pmem> {
 public:
  ftm_power_lines_forced_system()
      : ftm_system("ftm_power_lines_shm_forced_nondurable", [] {
          // Not durable: see the file comment. `cache_lines` throws unless it is used.
          ftm::detail::redo::force_cache_lines_on_page_cache = true;
          return ftm::engines::pmem::create(shm_dir() / "ftm-power-lines.pool",
                                            {.bank_size = ftm_bank_size,
                                             .level = ftm::durability::power,
                                             .flush = ftm::flush_method::cache_lines});
        }) {}
  ~ftm_power_lines_forced_system() override {
    std::error_code ignored;
    fs::remove_all(shm_dir(), ignored);
  }
};

class dual_bank_system final : public ftm_system<ftm::engines::dual_bank> {
 public:
  dual_bank_system()
      : ftm_system("dual_bank", [] {
          return ftm::engines::dual_bank(
              ftm::engines::dual_bank::options{.bank_size = ftm_bank_size});
        }) {}
};

// ---- PMDK libpmemobj -----------------------------------------------------------------
#if FTM_BENCH_HAVE_PMDK

/// The records as the root object of a libpmemobj pool.
class pmdk_pool {
 public:
  /// Opens the pool at `path`, creating and filling it first if there is none.
  explicit pmdk_pool(const fs::path& path) {
    if (fs::exists(path)) {
      pop_ = pmemobj_open(path.c_str(), layout);
    } else {
      pop_ = pmemobj_create(path.c_str(), layout, pool_size, 0644);
    }
    if (pop_ == nullptr) {
      fail(fmt::format("libpmemobj cannot open '{}': {}", path.string(), pmemobj_errormsg()));
    }
    root_ = pmemobj_root(pop_, sizeof(record) * record_count);
    records_ = static_cast<record*>(pmemobj_direct(root_));
    if (records_ == nullptr) {
      pmemobj_close(pop_);
      fail(fmt::format("libpmemobj: no root object in '{}'", path.string()));
    }
    if (!whole(records_[0])) initialise();  // a new root object is all zeros
  }
  pmdk_pool(const pmdk_pool&) = delete;
  pmdk_pool& operator=(const pmdk_pool&) = delete;
  ~pmdk_pool() { pmemobj_close(pop_); }

  /// Whether libpmem treats the records as persistent memory (flushes cache lines)
  /// rather than as a mapped file (msync).
  [[nodiscard]] bool is_pmem() const {
    return pmem_is_pmem(records_, sizeof(record) * record_count) != 0;
  }

  void update(std::uint32_t i) {
    volatile bool aborted = false;  // set after a longjmp
    TX_BEGIN(pop_) {
      pmemobj_tx_add_range(root_, std::uint64_t{i} * sizeof(record), sizeof(record));
      bump(records_[i]);
    }
    TX_ONABORT { aborted = true; }
    TX_END
    if (aborted) fail(fmt::format("libpmemobj aborted a transaction: {}", pmemobj_errormsg()));
  }

  [[nodiscard]] tally read_all() const {
    tally t;
    for (std::uint32_t i = 0; i < record_count; ++i)
      t.add(records_[i]);
    return t;
  }

 private:
  static constexpr const char* layout = "ftm_durable_bench";
  static constexpr std::size_t pool_size = std::size_t{16} << 20;

  void initialise() {
    volatile bool aborted = false;  // set after a longjmp
    TX_BEGIN(pop_) {
      pmemobj_tx_add_range(root_, 0, sizeof(record) * record_count);
      for (std::uint32_t i = 0; i < record_count; ++i)
        records_[i] = initial_record();
    }
    TX_ONABORT { aborted = true; }
    TX_END
    if (aborted) fail(fmt::format("libpmemobj cannot fill the pool: {}", pmemobj_errormsg()));
  }

  PMEMobjpool* pop_ = nullptr;
  PMEMoid root_{};
  record* records_ = nullptr;
};

class pmdk_fs_system final : public system_base {
 public:
  pmdk_fs_system() : system_base("pmdk_fs"), pool_(work_dir() / "pmdk.pool") {
    // With PMEM_IS_PMEM_FORCE=1 in the environment libpmem would skip every msync and
    // this row would measure a pool that is not durable.
    if (pool_.is_pmem()) {
      fail("libpmem takes the pool file for persistent memory (is PMEM_IS_PMEM_FORCE set?)");
    }
  }
  void update(std::uint32_t i) { pool_.update(i); }

 protected:
  tally read_all() override { return pool_.read_all(); }

 private:
  pmdk_pool pool_;
};

/// PMDK on /dev/shm with PMEM_IS_PMEM_FORCE=1, each run in a child process, because
/// libpmem reads PMEM_IS_PMEM_FORCE once, when it is loaded, and the pmdk_fs row must
/// run without it. The child times its own transactions (see pmdk_forced_child()).
class pmdk_shm_forced_system final : public system_base {
 public:
  pmdk_shm_forced_system() : system_base("pmdk_shm_forced_nondurable") {
    char dir_template[] = "/dev/shm/ftm-durable-bench.XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) fail_errno("cannot create", "/dev/shm");
    dir_ = dir_template;
  }
  ~pmdk_shm_forced_system() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  /// Runs `n` transactions in a child; returns the seconds they took.
  double run(std::uint64_t n) {
    const child_result r = spawn(n);
    if (r.sum != done.load() + n) {
      fail(fmt::format("after {} more transactions the counters add up to {}, expected {}", n,
                       r.sum, done.load() + n));
    }
    return r.seconds;
  }

 protected:
  tally read_all() override {
    const child_result r = spawn(0);
    tally t;
    t.sum = r.sum;
    t.broken = r.broken;
    return t;
  }

 private:
  struct child_result {
    double seconds = 0;
    std::uint64_t sum = 0;
    std::uint64_t broken = 0;
  };

  child_result spawn(std::uint64_t n) const {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) fail("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);

    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::string_view(*e).starts_with("PMEM_IS_PMEM_FORCE=")) continue;
      env_strings.emplace_back(*e);
    }
    env_strings.emplace_back("PMEM_IS_PMEM_FORCE=1");
    std::vector<char*> envp;
    for (auto& s : env_strings)
      envp.push_back(s.data());
    envp.push_back(nullptr);

    std::string self = "/proc/self/exe";
    std::string flag = std::string(child_flag);
    std::string pool = (dir_ / "pmdk.pool").string();
    std::string count = std::to_string(n);
    std::array<char*, 5> argv{self.data(), flag.data(), pool.data(), count.data(), nullptr};

    pid_t pid = 0;
    const int rc = posix_spawn(&pid, self.c_str(), &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (rc != 0) {
      ::close(out[0]);
      fail(fmt::format("cannot start the PMDK child: {}", std::strerror(rc)));
    }
    std::string text;
    char buf[256];
    for (ssize_t got; (got = ::read(out[0], buf, sizeof buf)) != 0;) {
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) break;
      text.append(buf, static_cast<std::size_t>(got));
    }
    ::close(out[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    child_result r;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        std::sscanf(text.c_str(), "%lf %lu %lu", &r.seconds, &r.sum, &r.broken) != 3) {
      fail(fmt::format("the PMDK child failed (status {:#x}, output '{}')", status, text));
    }
    return r;
  }

  fs::path dir_;

 public:
  static constexpr std::string_view child_flag = "--pmdk-forced-child";
};

/// The child of pmdk_shm_forced_system: `argv`: the pool path and the number of
/// transactions. Prints the seconds they took, the counters' sum and the number of
/// torn records.
int pmdk_forced_child(int argc, char** argv) {
  try {
    if (argc != 4) fail("usage: ftm_durable_bench --pmdk-forced-child POOL COUNT");
    const std::uint64_t n = std::stoull(argv[3]);
    pmdk_pool pool(argv[2]);
    if (!pool.is_pmem()) fail("libpmem does not take /dev/shm for pmem: PMEM_IS_PMEM_FORCE unset?");
    record_sequence sequence(0, 1);
    const auto start = std::chrono::steady_clock::now();
    for (std::uint64_t k = 0; k < n; ++k)
      pool.update(sequence.next());
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    const tally t = pool.read_all();
    std::printf("%.9f %lu %lu\n", took.count(), static_cast<unsigned long>(t.sum),
                static_cast<unsigned long>(t.broken));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pmdk child: %s\n", e.what());
    return 1;
  }
}

#endif  // FTM_BENCH_HAVE_PMDK

// ---- SQLite ---------------------------------------------------------------------------
#if FTM_BENCH_HAVE_SQLITE

/// A table of 10,000 64-byte blobs in WAL mode. Each thread has its own connection
/// and prepared statements; a transaction reads the blob, updates it by rowid and
/// commits. SQLite lets one writer in at a time: the threads take turns through a
/// mutex rather than through SQLite's busy handler, which sleeps for milliseconds.
class sqlite_system : public system_base {
 public:
  sqlite_system(std::string name, std::string_view synchronous)
      : system_base(name), path_(work_dir() / (name + ".db")) {
    for (auto& c : connections_)
      c.open(path_, synchronous);
    auto& c = connections_[0];
    c.exec("CREATE TABLE records(id INTEGER PRIMARY KEY, data BLOB NOT NULL)");
    c.exec("BEGIN");
    sqlite3_stmt* insert = c.prepare("INSERT INTO records(id, data) VALUES(?1, ?2)");
    const record r = initial_record();
    for (std::uint32_t i = 0; i < record_count; ++i) {
      sqlite3_bind_int64(insert, 1, i);
      sqlite3_bind_blob(insert, 2, &r, sizeof r, SQLITE_STATIC);
      c.step(insert, SQLITE_DONE);
      sqlite3_reset(insert);
    }
    sqlite3_finalize(insert);
    c.exec("COMMIT");
    for (auto& k : connections_)
      k.prepare_statements();
  }

  void update(int thread, std::uint32_t i) {
    std::lock_guard lock(writer_);
    connection& c = connections_[static_cast<std::size_t>(thread)];
    c.step(c.begin, SQLITE_DONE);
    sqlite3_reset(c.begin);
    sqlite3_bind_int64(c.select, 1, i);
    c.step(c.select, SQLITE_ROW);
    record r;
    if (sqlite3_column_bytes(c.select, 0) != sizeof r) fail("sqlite: a blob has the wrong size");
    std::memcpy(&r, sqlite3_column_blob(c.select, 0), sizeof r);
    sqlite3_reset(c.select);
    bump(r);
    sqlite3_bind_blob(c.update, 1, &r, sizeof r, SQLITE_STATIC);
    sqlite3_bind_int64(c.update, 2, i);
    c.step(c.update, SQLITE_DONE);
    sqlite3_reset(c.update);
    c.step(c.commit, SQLITE_DONE);
    sqlite3_reset(c.commit);
  }

 protected:
  tally read_all() override {
    auto& c = connections_[0];
    sqlite3_stmt* check = c.prepare("PRAGMA quick_check");
    c.step(check, SQLITE_ROW);
    const std::string verdict = reinterpret_cast<const char*>(sqlite3_column_text(check, 0));
    sqlite3_finalize(check);
    if (verdict != "ok") fail(fmt::format("PRAGMA quick_check: {}", verdict));
    tally t;
    std::uint32_t rows = 0;
    sqlite3_stmt* all = c.prepare("SELECT data FROM records");
    for (int rc; (rc = sqlite3_step(all)) != SQLITE_DONE; ++rows) {
      if (rc != SQLITE_ROW) fail(fmt::format("sqlite: {}", sqlite3_errmsg(c.db)));
      record r;
      if (sqlite3_column_bytes(all, 0) != sizeof r) fail("sqlite: a blob has the wrong size");
      std::memcpy(&r, sqlite3_column_blob(all, 0), sizeof r);
      t.add(r);
    }
    sqlite3_finalize(all);
    if (rows != record_count) fail(fmt::format("sqlite: {} rows, expected {}", rows, record_count));
    return t;
  }

 private:
  struct connection {
    sqlite3* db = nullptr;
    sqlite3_stmt* begin = nullptr;
    sqlite3_stmt* select = nullptr;
    sqlite3_stmt* update = nullptr;
    sqlite3_stmt* commit = nullptr;

    connection() = default;
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() {
      for (sqlite3_stmt* s : {begin, select, update, commit})
        sqlite3_finalize(s);
      sqlite3_close(db);
    }

    void open(const fs::path& path, std::string_view synchronous) {
      if (sqlite3_open_v2(path.c_str(), &db,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                          nullptr) != SQLITE_OK) {
        fail(fmt::format("sqlite cannot open '{}': {}", path.string(), sqlite3_errmsg(db)));
      }
      sqlite3_busy_timeout(db, 60'000);
      exec("PRAGMA journal_mode=WAL");
      exec(fmt::format("PRAGMA synchronous={}", synchronous));
    }
    void exec(const std::string& sql) {
      char* message = nullptr;
      if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
        const std::string why = message != nullptr ? message : "?";
        sqlite3_free(message);
        fail(fmt::format("sqlite: {}: {}", sql, why));
      }
    }
    sqlite3_stmt* prepare(const char* sql) {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK) {
        fail(fmt::format("sqlite: {}: {}", sql, sqlite3_errmsg(db)));
      }
      return s;
    }
    void prepare_statements() {
      begin = prepare("BEGIN IMMEDIATE");
      select = prepare("SELECT data FROM records WHERE id = ?1");
      update = prepare("UPDATE records SET data = ?1 WHERE id = ?2");
      commit = prepare("COMMIT");
    }
    void step(sqlite3_stmt* s, int expected) {
      const int rc = sqlite3_step(s);
      if (rc != expected) {
        fail(fmt::format("sqlite: {}: {}", sqlite3_sql(s), sqlite3_errmsg(db)));
      }
    }
  };

  fs::path path_;
  std::array<connection, max_threads> connections_;
  std::mutex writer_;
};

class sqlite_wal_full_system final : public sqlite_system {
 public:
  sqlite_wal_full_system() : sqlite_system("sqlite_wal_full", "FULL") {}
};
class sqlite_wal_off_system final : public sqlite_system {
 public:
  sqlite_wal_off_system() : sqlite_system("sqlite_wal_off", "OFF") {}
};

#endif  // FTM_BENCH_HAVE_SQLITE

// ---- LMDB ------------------------------------------------------------------------------
#if FTM_BENCH_HAVE_LMDB

/// 10,000 records under integer keys in one LMDB file. LMDB serialises write
/// transactions itself (a mutex in its lock file), so threads just begin them.
class lmdb_system : public system_base {
 public:
  lmdb_system(std::string name, unsigned extra_flags)
      : system_base(name), path_(work_dir() / (name + ".mdb")) {
    check(mdb_env_create(&env_), "mdb_env_create");
    check(mdb_env_set_mapsize(env_, std::size_t{64} << 20), "mdb_env_set_mapsize");
    check(mdb_env_open(env_, path_.c_str(), MDB_NOSUBDIR | extra_flags, 0644), "mdb_env_open");
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_INTEGERKEY, &dbi_), "mdb_dbi_open");
    record r = initial_record();
    for (std::uint32_t i = 0; i < record_count; ++i) {
      MDB_val key{sizeof i, &i};
      MDB_val value{sizeof r, &r};
      check(mdb_put(txn, dbi_, &key, &value, MDB_APPEND), "mdb_put");
    }
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  ~lmdb_system() override { mdb_env_close(env_); }

  void update(std::uint32_t i) {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    MDB_val key{sizeof i, &i};
    MDB_val value;
    record r;
    if (int rc = mdb_get(txn, dbi_, &key, &value); rc != 0 || value.mv_size != sizeof r) {
      mdb_txn_abort(txn);
      fail(fmt::format("lmdb: record {} is missing or has the wrong size ({})", i,
                       mdb_strerror(rc)));
    }
    std::memcpy(&r, value.mv_data, sizeof r);
    bump(r);
    value = {sizeof r, &r};
    if (int rc = mdb_put(txn, dbi_, &key, &value, 0); rc != 0) {
      mdb_txn_abort(txn);
      check(rc, "mdb_put");
    }
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }

 protected:
  tally read_all() override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
    tally t;
    for (std::uint32_t i = 0; i < record_count; ++i) {
      MDB_val key{sizeof i, &i};
      MDB_val value;
      record r;
      if (mdb_get(txn, dbi_, &key, &value) != 0 || value.mv_size != sizeof r) {
        mdb_txn_abort(txn);
        fail(fmt::format("lmdb: record {} is missing or has the wrong size", i));
      }
      std::memcpy(&r, value.mv_data, sizeof r);
      t.add(r);
    }
    mdb_txn_abort(txn);
    return t;
  }

 private:
  static void check(int rc, std::string_view what) {
    if (rc != 0) fail(fmt::format("lmdb: {}: {}", what, mdb_strerror(rc)));
  }

  fs::path path_;
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
};

class lmdb_sync_system final : public lmdb_system {
 public:
  lmdb_sync_system() : lmdb_system("lmdb_sync", 0) {}
};
class lmdb_nosync_system final : public lmdb_system {
 public:
  lmdb_nosync_system() : lmdb_system("lmdb_nosync", MDB_NOSYNC) {}
};

#endif  // FTM_BENCH_HAVE_LMDB

// ---- the hand-written redo log ---------------------------------------------------------

/// The floor for one sync per commit. A commit appends the record's new bytes, its
/// offset and a checksum to a log file with one pwrite, makes the log durable with one
/// fdatasync, then writes the record into the data file without a sync. The log is a
/// ring, written over in place (its blocks are allocated and written once at the
/// start, so an fdatasync has no file metadata to write); before a half of the ring is
/// reused, every earlier transaction has been applied and the data file is synced (a
/// checkpoint), so a crash loses nothing that the log no longer holds. Recovery would
/// replay the log's valid entries in sequence order over the data file; verify() does
/// exactly that and compares the result with what the transactions wrote.
class redo_log_system final : public system_base {
 public:
  redo_log_system()
      : system_base("redo_fdatasync"),
        log_path_(work_dir() / "redo.log"),
        data_path_(work_dir() / "redo.data"),
        log_slots(redo_log_slots()),
        half(log_slots / 2),
        image_(record_count, initial_record()) {
    log_fd_ = ::open(log_path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd_ < 0) fail_errno("cannot create", log_path_);
    data_fd_ = ::open(data_path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (data_fd_ < 0) fail_errno("cannot create", data_path_);
    const std::vector<entry> zeros(log_slots, entry{});
    write_all(log_fd_, zeros.data(), sizeof(entry) * log_slots, 0, log_path_);
    write_all(data_fd_, image_.data(), sizeof(record) * record_count, 0, data_path_);
    if (::fsync(log_fd_) != 0) fail_errno("cannot sync", log_path_);
    if (::fsync(data_fd_) != 0) fail_errno("cannot sync", data_path_);
  }
  ~redo_log_system() override {
    ::close(log_fd_);
    ::close(data_fd_);
  }

  void update(std::uint32_t i) {
    // A record's lock is held until its new bytes are in the data file. With n
    // threads, thread t only touches records equal to t modulo n, and so only locks
    // equal to t modulo n: the threads never wait for each other here.
    std::lock_guard lock(record_locks_[i % record_locks_.size()]);
    entry e{};
    e.data = image_[i];
    bump(e.data);
    e.offset = std::uint64_t{i} * sizeof(record);
    e.seq = next_seq_.fetch_add(1);
    e.checksum = e.compute_checksum();
    checkpoint_before(e.seq);
    write_all(log_fd_, &e, sizeof e, (e.seq % log_slots) * sizeof e, log_path_);
    if (::fdatasync(log_fd_) != 0) fail_errno("cannot sync", log_path_);
    // Committed. Now the data file, which the next checkpoint syncs.
    write_all(data_fd_, &e.data, sizeof e.data, e.offset, data_path_);
    image_[i] = e.data;
    applied_.fetch_add(1);
  }

 protected:
  /// Recovers as after a crash: the data file, then the log's valid entries replayed
  /// in sequence order. The result must equal what the transactions wrote.
  tally read_all() override {
    std::vector<record> recovered(record_count);
    read_all_bytes(data_fd_, recovered.data(), sizeof(record) * record_count, data_path_);
    std::vector<entry> log(log_slots);
    read_all_bytes(log_fd_, log.data(), sizeof(entry) * log_slots, log_path_);
    std::erase_if(log, [](const entry& e) { return e.checksum != e.compute_checksum(); });
    std::sort(log.begin(), log.end(), [](const entry& a, const entry& b) { return a.seq < b.seq; });
    const std::uint64_t expected_entries = std::min<std::uint64_t>(next_seq_.load(), log_slots);
    if (log.size() != expected_entries) {
      fail(
          fmt::format("the log holds {} valid entries, expected {}", log.size(), expected_entries));
    }
    for (const entry& e : log) {
      if (e.offset % sizeof(record) != 0 || e.offset / sizeof(record) >= record_count) {
        fail(fmt::format("log entry {} names offset {}", e.seq, e.offset));
      }
      recovered[e.offset / sizeof(record)] = e.data;
    }
    tally t;
    for (std::uint32_t i = 0; i < record_count; ++i) {
      if (std::memcmp(&recovered[i], &image_[i], sizeof(record)) != 0) {
        fail(fmt::format("record {} recovers to counter {}, but was written with {}", i,
                         recovered[i].field[0], image_[i].field[0]));
      }
      t.add(recovered[i]);
    }
    return t;
  }

 private:
  /// One log entry, two per cache line pair: what a commit appends.
  struct entry {
    std::uint64_t seq;
    std::uint64_t offset;  ///< where `data` goes in the data file
    record data;
    std::uint64_t checksum;  ///< FNV-1a of the fields above; zero bytes never match
    std::uint64_t padding[5];

    [[nodiscard]] std::uint64_t compute_checksum() const {
      std::uint64_t h = 0xcbf29ce484222325ULL;
      auto mix = [&h](const void* p, std::size_t n) {
        for (std::size_t k = 0; k < n; ++k) {
          h ^= static_cast<const unsigned char*>(p)[k];
          h *= 0x100000001b3ULL;
        }
      };
      mix(&seq, sizeof seq);
      mix(&offset, sizeof offset);
      mix(&data, sizeof data);
      return h;
    }
  };
  static_assert(sizeof(entry) == 128);

  /// Before entry `seq` overwrites the first slot of a half of the ring, that half's
  /// old entries must be in the synced data file: the thread with that sequence
  /// number waits for all earlier transactions to finish, syncs the data file and
  /// lets the rest of the half go; the others of that half wait for it.
  void checkpoint_before(std::uint64_t seq) {
    if (seq < log_slots) return;  // the first pass over the ring overwrites nothing
    const std::uint64_t start = seq - seq % half;
    if (seq == start) {
      while (applied_.load() < start)
        std::this_thread::yield();
      if (::fdatasync(data_fd_) != 0) fail_errno("cannot sync", data_path_);
      checkpointed_.store(start);
    } else {
      while (checkpointed_.load() < start)
        std::this_thread::yield();
    }
  }

  static void write_all(int fd, const void* p, std::size_t n, std::uint64_t at,
                        const fs::path& file) {
    const auto* bytes = static_cast<const std::byte*>(p);
    while (n > 0) {
      const ssize_t done = ::pwrite(fd, bytes, n, static_cast<off_t>(at));
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) fail_errno("cannot write", file);
      bytes += done;
      at += static_cast<std::uint64_t>(done);
      n -= static_cast<std::size_t>(done);
    }
  }
  static void read_all_bytes(int fd, void* p, std::size_t n, const fs::path& file) {
    auto* bytes = static_cast<std::byte*>(p);
    std::uint64_t at = 0;
    while (n > 0) {
      const ssize_t got = ::pread(fd, bytes, n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) fail_errno("cannot read", file);
      bytes += got;
      at += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }

  fs::path log_path_;
  fs::path data_path_;
  const std::uint64_t log_slots;  ///< entries in the ring
  const std::uint64_t half;       ///< entries between two checkpoints
  int log_fd_ = -1;
  int data_fd_ = -1;
  std::vector<record> image_;  ///< the data file's records as committed (a buffer pool)
  std::array<std::mutex, 64> record_locks_;
  std::atomic<std::uint64_t> next_seq_{0};
  std::atomic<std::uint64_t> applied_{0};
  std::atomic<std::uint64_t> checkpointed_{0};
};

// ---- the benchmarks ---------------------------------------------------------------------

/// Every system made so far, in the order they were made; main() checks and then
/// destroys them.
std::vector<std::unique_ptr<system_base>>& systems() {
  static std::vector<std::unique_ptr<system_base>> all;
  return all;
}
std::mutex systems_mutex;

/// One instance per system, made on first use (its files created then, outside the
/// timed loop) by whichever benchmark thread comes first; the others wait for it.
template <class System>
System& instance() {
  static System* const system = [] {
    auto owned = std::make_unique<System>();
    System* raw = owned.get();
    const std::lock_guard lock(systems_mutex);
    systems().push_back(std::move(owned));
    return raw;
  }();
  return *system;
}

/// Set when a benchmark stopped with an error; main() then fails.
std::atomic<bool> any_error{false};

void skip_with_error(benchmark::State& state, const std::string& why) {
  any_error = true;
  state.SkipWithError(why.c_str());
}

/// Calls `system.update` with or without the thread index, as it takes it.
template <class System>
void update(System& system, int thread, std::uint32_t i) {
  if constexpr (requires { system.update(thread, i); }) {
    system.update(thread, i);
  } else {
    system.update(i);
  }
}

template <class System>
void run_updates(benchmark::State& state) {
  System* system = nullptr;
  try {
    system = &instance<System>();
  } catch (const std::exception& e) {
    skip_with_error(state, e.what());
    return;
  }
  record_sequence sequence(state.thread_index(), state.threads());
  std::string error;
  for (auto _ : state) {
    try {
      update(*system, state.thread_index(), sequence.next());
    } catch (const std::exception& e) {
      error = e.what();
      break;
    }
  }
  if (!error.empty()) {
    skip_with_error(state, error);
    return;
  }
  system->done += state.iterations();
  state.SetItemsProcessed(state.iterations());
}

#if FTM_BENCH_HAVE_PMDK
/// The PMDK row on /dev/shm: one child process per run times the transactions.
void run_pmdk_forced(benchmark::State& state) {
  try {
    auto& system = instance<pmdk_shm_forced_system>();
    const double seconds = system.run(state.max_iterations);
    system.done += state.max_iterations;
    const double each = seconds / static_cast<double>(state.max_iterations);
    for (auto _ : state)
      state.SetIterationTime(each);
    state.SetItemsProcessed(state.iterations());
  } catch (const std::exception& e) {
    skip_with_error(state, e.what());
  }
}
#endif

template <class System>
void register_updates(const char* name, std::initializer_list<int> thread_counts) {
  for (int threads : thread_counts) {
    benchmark::RegisterBenchmark(fmt::format("update/{}", name).c_str(), run_updates<System>)
        ->Threads(threads)
        ->UseRealTime();
  }
}

void register_all() {
  // One thread: every system.
  register_updates<ftm_process_system>("ftm_process", {1});
  register_updates<ftm_power_system>("ftm_power", {1});
  register_updates<dual_bank_system>("dual_bank", {1});
#if FTM_BENCH_HAVE_PMDK
  register_updates<pmdk_fs_system>("pmdk_fs", {1});
  benchmark::RegisterBenchmark("update/pmdk_shm_forced_nondurable", run_pmdk_forced)
      ->UseManualTime();
#endif
  register_updates<ftm_power_lines_forced_system>("ftm_power_lines_shm_forced_nondurable", {1});
#if FTM_BENCH_HAVE_SQLITE
  register_updates<sqlite_wal_full_system>("sqlite_wal_full", {1});
  register_updates<sqlite_wal_off_system>("sqlite_wal_off", {1});
#endif
#if FTM_BENCH_HAVE_LMDB
  register_updates<lmdb_sync_system>("lmdb_sync", {1});
  register_updates<lmdb_nosync_system>("lmdb_nosync", {1});
#endif
  register_updates<redo_log_system>("redo_fdatasync", {1});
  // Eight committing threads, each on its own records: does a commit share its sync?
  register_updates<ftm_process_system>("ftm_process", {max_threads});
  register_updates<ftm_power_system>("ftm_power", {max_threads});
  register_updates<ftm_power_lines_forced_system>("ftm_power_lines_shm_forced_nondurable",
                                                  {max_threads});
  register_updates<dual_bank_system>("dual_bank", {max_threads});
#if FTM_BENCH_HAVE_PMDK
  register_updates<pmdk_fs_system>("pmdk_fs", {max_threads});
#endif
#if FTM_BENCH_HAVE_SQLITE
  register_updates<sqlite_wal_full_system>("sqlite_wal_full", {max_threads});
#endif
#if FTM_BENCH_HAVE_LMDB
  register_updates<lmdb_sync_system>("lmdb_sync", {max_threads});
#endif
  register_updates<redo_log_system>("redo_fdatasync", {max_threads});
}

/// With `--claim_one_more_for_test`, main() counts one transaction more for every
/// system than it ran before checking them, as if a commit had been lost: every check
/// must then fail (the test durable_bench_detects_lost_update).
bool claim_one_more_for_test = false;

/// Takes `--dir=PATH` and `--redo_log_slots=N` out of the arguments; the rest go to Google
/// Benchmark.
fs::path take_own_flags(int& argc, char** argv) {
  fs::path dir;
  int kept = 1;
  for (int k = 1; k < argc; ++k) {
    const std::string_view arg = argv[k];
    if (arg.starts_with("--dir=")) {
      dir = arg.substr(6);
    } else if (arg.starts_with("--redo_log_slots=")) {
      const auto slots = std::strtoull(argv[k] + 17, nullptr, 10);
      if (slots < 2 * max_threads || slots % 2 != 0) {
        std::fprintf(stderr, "ftm_durable_bench: --redo_log_slots must be even and at least %d\n",
                     2 * max_threads);
        std::exit(2);
      }
      redo_log_slots() = slots;
    } else if (arg == "--claim_one_more_for_test") {
      claim_one_more_for_test = true;
    } else {
      argv[kept++] = argv[k];
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  if (dir.empty()) {
    if (const char* env = std::getenv("FTM_DURABLE_BENCH_DIR"); env != nullptr && *env != 0) {
      dir = env;
    } else {
      dir = FTM_DURABLE_BENCH_DEFAULT_DIR;
    }
  }
  return dir;
}

}  // namespace
}  // namespace ftm_bench

int main(int argc, char** argv) {
  using namespace ftm_bench;
#if FTM_BENCH_HAVE_PMDK
  if (argc >= 2 && argv[1] == pmdk_shm_forced_system::child_flag) {
    return pmdk_forced_child(argc, argv);
  }
#endif
  const fs::path parent = take_own_flags(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  // A fresh directory of our own inside the one given, so nothing else is touched.
  std::error_code ec;
  fs::create_directories(parent, ec);
  std::string dir_template = (parent / "run.XXXXXX").string();
  if (ec || ::mkdtemp(dir_template.data()) == nullptr) {
    std::fprintf(stderr, "ftm_durable_bench: cannot create a directory in '%s': %s\n",
                 parent.c_str(), ec ? ec.message().c_str() : std::strerror(errno));
    return 1;
  }
  work_dir() = dir_template;
  benchmark::AddCustomContext("dir", work_dir().string());

  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  bool ok = true;
  if (claim_one_more_for_test) {
    for (auto& system : systems())
      system->done += 1;
  }
  for (auto& system : systems())
    ok = system->verify() && ok;
  systems().clear();
  fs::remove_all(work_dir(), ec);
  if (!ok) {
    std::fprintf(stderr, "ftm_durable_bench: a system's records are wrong after the run\n");
    return 1;
  }
  if (any_error) {
    std::fprintf(stderr, "ftm_durable_bench: a benchmark stopped with an error\n");
    return 1;
  }
  return 0;
}
