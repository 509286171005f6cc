/// \file
/// The peers: the same tiny and bank workloads on SQLite and LMDB, when ftm-bench was
/// built with them, at the durability that matches ftm's:
///   dual_bank or pmem/process  SQLite WAL with synchronous=OFF, LMDB with MDB_NOSYNC:
///                              a commit survives the death of the process, not a
///                              power loss;
///   pmem/power                 SQLite WAL with synchronous=FULL, LMDB synced at commit.
/// Each object is a row (SQLite) or a value (LMDB) of the same bytes as ftm's object,
/// read, changed and written back in one transaction. A YCSB record is a row keyed by
/// its 64-bit key (SQLite's INTEGER PRIMARY KEY; LMDB with MDB_INTEGERKEY), and each
/// YCSB operation one transaction, as ftm runs it. Files go beside --path (pmem) or
/// in /dev/shm (dual_bank, which keeps its pool in memory too).

#include "system.hpp"
#include "workload.hpp"
#include "ycsb.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#if FTM_BENCH_HAVE_SQLITE
#include <sqlite3.h>
#endif
#if FTM_BENCH_HAVE_LMDB
#include <lmdb.h>
#endif

namespace bench {
namespace {

/// Where a peer keeps its files for a run.
[[maybe_unused]] std::filesystem::path peer_dir(const options& o, std::string_view peer) {
  std::filesystem::path base = o.engine == engine_kind::pmem
                                   ? std::filesystem::absolute(o.path).parent_path()
                                   : std::filesystem::path("/dev/shm");
  if (!std::filesystem::is_directory(base)) base = std::filesystem::temp_directory_path();
  return base / fmt::format("ftm-bench-{}-{}", peer, ::getpid());
}

[[maybe_unused]] std::string durability_text(const options& o, std::string_view peer) {
  const bool power = o.durability == level::power;
  if (peer == "sqlite") return power ? "sqlite WAL FULL" : "sqlite WAL OFF";
  return power ? "lmdb sync" : "lmdb nosync";
}

#if FTM_BENCH_HAVE_SQLITE

class sqlite_system final : public system {
 public:
  explicit sqlite_system(const options& o) : o_(o) {}
  std::string name() const override { return durability_text(o_, "sqlite"); }

  void setup(int workers) override {
    dir_ = peer_dir(o_, "sqlite");
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    n_ = object_count(o_, workers);
    connection c(*this);
    if (ycsb::is_ycsb(o_.load)) {
      load_ycsb(c);
      return;
    }
    c.exec("CREATE TABLE objects (id INTEGER PRIMARY KEY, value BLOB NOT NULL)");
    std::vector<std::int64_t> value(value_size(o_) / 8, 0);
    if (o_.load == workload::bank) value[0] = initial_balance;
    c.exec("BEGIN");
    sqlite3_stmt* insert = c.prepare("INSERT INTO objects (id, value) VALUES (?, ?)");
    for (std::uint64_t i = 0; i < n_; ++i) {
      sqlite3_bind_int64(insert, 1, static_cast<sqlite3_int64>(i));
      sqlite3_bind_blob(insert, 2, value.data(), static_cast<int>(value.size() * 8), SQLITE_STATIC);
      c.step_done(insert);
    }
    sqlite3_finalize(insert);
    c.exec("COMMIT");
  }

  std::unique_ptr<worker> make_worker(int index) override {
    if (ycsb::is_ycsb(o_.load)) return std::make_unique<sqlite_ycsb_worker>(*this, index);
    return std::make_unique<sqlite_worker>(*this, index);
  }
  std::optional<abort_counts> aborts() override { return std::nullopt; }

  check_result check(std::uint64_t writes) override {
    connection c(*this);
    if (ycsb::is_ycsb(o_.load)) {
      sqlite3_stmt* all = c.prepare("SELECT key, value FROM records");
      ycsb::invariant inv(o_, o_.object_size);
      while (sqlite3_step(all) == SQLITE_ROW) {
        if (static_cast<std::size_t>(sqlite3_column_bytes(all, 1)) != o_.object_size) {
          sqlite3_finalize(all);
          return {false, "a record of the wrong size"};
        }
        inv.add(static_cast<std::uint64_t>(sqlite3_column_int64(all, 0)),
                static_cast<const unsigned char*>(sqlite3_column_blob(all, 1)));
      }
      sqlite3_finalize(all);
      return inv.result(n_, writes);
    }
    sqlite3_stmt* all = c.prepare("SELECT value FROM objects");
    invariant inv(o_);
    std::vector<std::int64_t> v(value_size(o_) / 8);
    std::uint64_t rows = 0;
    while (sqlite3_step(all) == SQLITE_ROW) {
      std::memcpy(v.data(), sqlite3_column_blob(all, 0), v.size() * 8);
      inv.add(v.data());
      ++rows;
    }
    sqlite3_finalize(all);
    if (rows != n_) return {false, fmt::format("{} rows, {} were made", rows, n_)};
    return inv.result(n_, writes);
  }

  void teardown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

 private:
  class connection {
   public:
    explicit connection(sqlite_system& s) {
      const auto file = (s.dir_ / "bench.db").string();
      if (sqlite3_open(file.c_str(), &db_) != SQLITE_OK) fail("open");
      sqlite3_busy_timeout(db_, 60000);
      exec("PRAGMA journal_mode=WAL");
      exec(s.o_.durability == level::power ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=OFF");
    }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() { sqlite3_close_v2(db_); }

    void exec(const char* sql) {
      if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(sql);
    }
    sqlite3_stmt* prepare(const char* sql) {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) != SQLITE_OK) fail(sql);
      return s;
    }
    void step_done(sqlite3_stmt* s) {
      if (sqlite3_step(s) != SQLITE_DONE) fail("step");
      sqlite3_reset(s);
    }
    [[noreturn]] void fail(std::string_view what) {
      throw std::runtime_error(fmt::format("sqlite: {}: {}", what, sqlite3_errmsg(db_)));
    }

   private:
    sqlite3* db_ = nullptr;
  };

  class sqlite_worker final : public worker {
   public:
    sqlite_worker(sqlite_system& s, int index)
        : s_(s), own_(static_cast<std::uint64_t>(index)), c_(s) {
      select_ = c_.prepare("SELECT value FROM objects WHERE id = ?");
      update_ = c_.prepare("UPDATE objects SET value = ? WHERE id = ?");
      a_.resize(value_size(s.o_) / 8);
      b_.resize(a_.size());
    }
    ~sqlite_worker() override {
      sqlite3_finalize(select_);
      sqlite3_finalize(update_);
    }
    sqlite_worker(const sqlite_worker&) = delete;
    sqlite_worker& operator=(const sqlite_worker&) = delete;

    bool run_one(random& r) override {
      const step st = next_step(r, s_.o_, s_.n_, own_);
      const bool bank = s_.o_.load == workload::bank;
      c_.exec(st.read_only ? "BEGIN" : "BEGIN IMMEDIATE");
      read(st.a, a_);
      if (bank) read(st.b, b_);
      if (!st.read_only) {
        apply_write(s_.o_, a_.data(), b_.data(), st.amount);
        write(st.a, a_);
        if (bank) write(st.b, b_);
      }
      c_.exec("COMMIT");
      return st.read_only;
    }

   private:
    void read(std::uint64_t id, std::vector<std::int64_t>& into) {
      sqlite3_bind_int64(select_, 1, static_cast<sqlite3_int64>(id));
      if (sqlite3_step(select_) != SQLITE_ROW) c_.fail("select");
      std::memcpy(into.data(), sqlite3_column_blob(select_, 0), into.size() * 8);
      sqlite3_reset(select_);
    }
    void write(std::uint64_t id, const std::vector<std::int64_t>& from) {
      sqlite3_bind_blob(update_, 1, from.data(), static_cast<int>(from.size() * 8), SQLITE_STATIC);
      sqlite3_bind_int64(update_, 2, static_cast<sqlite3_int64>(id));
      c_.step_done(update_);
    }

    sqlite_system& s_;
    std::uint64_t own_;
    connection c_;
    sqlite3_stmt* select_ = nullptr;
    sqlite3_stmt* update_ = nullptr;
    std::vector<std::int64_t> a_, b_;
  };

  void load_ycsb(connection& c) {
    c.exec("CREATE TABLE records (key INTEGER PRIMARY KEY, value BLOB NOT NULL)");
    std::vector<unsigned char> value(o_.object_size);
    c.exec("BEGIN");
    sqlite3_stmt* insert = c.prepare("INSERT INTO records (key, value) VALUES (?, ?)");
    for (std::uint64_t i = 0; i < n_; ++i) {
      ycsb::fill(value.data(), value.size(), i, 0);
      sqlite3_bind_int64(insert, 1, static_cast<sqlite3_int64>(ycsb::key_of(i)));
      sqlite3_bind_blob(insert, 2, value.data(), static_cast<int>(value.size()), SQLITE_STATIC);
      c.step_done(insert);
    }
    sqlite3_finalize(insert);
    c.exec("COMMIT");
  }

  /// A YCSB operation per transaction: a read or a scan is one SELECT (its own
  /// transaction), an update reads and writes in one BEGIN IMMEDIATE transaction.
  class sqlite_ycsb_worker final : public worker {
   public:
    sqlite_ycsb_worker(sqlite_system& s, int index)
        : c_(s), choose_(s.o_, s.n_, index), value_(s.o_.object_size) {
      select_ = c_.prepare("SELECT value FROM records WHERE key = ?");
      scan_ = c_.prepare("SELECT value FROM records WHERE key >= ? ORDER BY key LIMIT ?");
      update_ = c_.prepare("UPDATE records SET value = ? WHERE key = ?");
      insert_ = c_.prepare("INSERT INTO records (key, value) VALUES (?, ?)");
    }
    ~sqlite_ycsb_worker() override {
      for (auto* st : {select_, scan_, update_, insert_})
        sqlite3_finalize(st);
    }
    sqlite_ycsb_worker(const sqlite_ycsb_worker&) = delete;
    sqlite_ycsb_worker& operator=(const sqlite_ycsb_worker&) = delete;

    bool run_one(random& r) override {
      const ycsb::choice ch = choose_.next(r);
      const auto key = static_cast<sqlite3_int64>(ycsb::key_of(ch.record));
      const auto size = value_.size();
      switch (ch.what) {
        case ycsb::op::read: read(key); return true;
        case ycsb::op::scan: {
          sqlite3_bind_int64(scan_, 1, key);
          sqlite3_bind_int(scan_, 2, static_cast<int>(ch.length));
          std::int64_t sum = 0;
          while (sqlite3_step(scan_) == SQLITE_ROW)
            sum += ycsb::digest(static_cast<const unsigned char*>(sqlite3_column_blob(scan_, 0)),
                                size);
          sqlite3_reset(scan_);
          keep_sum_ += sum;
          return true;
        }
        case ycsb::op::insert:
          ycsb::fill(value_.data(), size, ch.record, 0);
          sqlite3_bind_int64(insert_, 1, key);
          sqlite3_bind_blob(insert_, 2, value_.data(), static_cast<int>(size), SQLITE_STATIC);
          c_.step_done(insert_);
          return false;
        case ycsb::op::update:
        case ycsb::op::read_modify_write:
          c_.exec("BEGIN IMMEDIATE");
          read(key);
          ycsb::bump(value_.data(), size);
          sqlite3_bind_blob(update_, 1, value_.data(), static_cast<int>(size), SQLITE_STATIC);
          sqlite3_bind_int64(update_, 2, key);
          c_.step_done(update_);
          c_.exec("COMMIT");
          return false;
      }
      return true;
    }

   private:
    void read(sqlite3_int64 key) {
      sqlite3_bind_int64(select_, 1, key);
      if (sqlite3_step(select_) != SQLITE_ROW) c_.fail("select: no such record");
      std::memcpy(value_.data(), sqlite3_column_blob(select_, 0), value_.size());
      sqlite3_reset(select_);
    }

    connection c_;
    ycsb::chooser choose_;
    std::vector<unsigned char> value_;
    std::int64_t keep_sum_ = 0;
    sqlite3_stmt* select_ = nullptr;
    sqlite3_stmt* scan_ = nullptr;
    sqlite3_stmt* update_ = nullptr;
    sqlite3_stmt* insert_ = nullptr;
  };

  const options& o_;
  std::filesystem::path dir_;
  std::uint64_t n_ = 0;
};

#endif  // FTM_BENCH_HAVE_SQLITE

#if FTM_BENCH_HAVE_LMDB

class lmdb_system final : public system {
 public:
  explicit lmdb_system(const options& o) : o_(o) {}
  std::string name() const override { return durability_text(o_, "lmdb"); }

  void setup(int workers) override {
    dir_ = peer_dir(o_, "lmdb");
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    n_ = object_count(o_, workers);
    env e(*this);
    MDB_txn* txn = nullptr;
    check_rc(mdb_txn_begin(e.get(), nullptr, 0, &txn), "begin");
    if (ycsb::is_ycsb(o_.load)) {
      std::vector<unsigned char> value(o_.object_size);
      for (std::uint64_t i = 0; i < n_; ++i) {
        std::uint64_t key = ycsb::key_of(i);
        ycsb::fill(value.data(), value.size(), i, 0);
        MDB_val k{sizeof key, &key};
        MDB_val v{value.size(), value.data()};
        check_rc(mdb_put(txn, e.dbi(), &k, &v, 0), "put");
      }
      check_rc(mdb_txn_commit(txn), "commit");
      return;
    }
    std::vector<std::int64_t> value(value_size(o_) / 8, 0);
    if (o_.load == workload::bank) value[0] = initial_balance;
    for (std::uint64_t i = 0; i < n_; ++i) {
      MDB_val k{sizeof i, &i};
      MDB_val v{value.size() * 8, value.data()};
      check_rc(mdb_put(txn, e.dbi(), &k, &v, 0), "put");
    }
    check_rc(mdb_txn_commit(txn), "commit");
  }

  std::unique_ptr<worker> make_worker(int index) override {
    // One environment per process (LMDB forbids using one across fork()).
    {
      const std::lock_guard lock(mutex_);
      if (!env_ || env_pid_ != ::getpid()) {
        env_.release();  // a parent's environment is not this process's to close
        env_ = std::make_unique<env>(*this);
        env_pid_ = ::getpid();
      }
    }
    if (ycsb::is_ycsb(o_.load)) return std::make_unique<lmdb_ycsb_worker>(*this, index);
    return std::make_unique<lmdb_worker>(*this, index);
  }
  std::optional<abort_counts> aborts() override { return std::nullopt; }

  check_result check(std::uint64_t writes) override {
    // LMDB forbids opening one environment twice in a process: reuse this process's.
    std::unique_ptr<env> local;
    env& e = env_ && env_pid_ == ::getpid() ? *env_ : *(local = std::make_unique<env>(*this));
    MDB_txn* txn = nullptr;
    check_rc(mdb_txn_begin(e.get(), nullptr, MDB_RDONLY, &txn), "begin");
    if (ycsb::is_ycsb(o_.load)) {
      ycsb::invariant inv(o_, o_.object_size, /*in_key_order=*/true);
      MDB_cursor* cur = nullptr;
      check_rc(mdb_cursor_open(txn, e.dbi(), &cur), "cursor");
      MDB_val k{}, v{};
      bool sizes_ok = true;
      for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
           rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        std::uint64_t key = 0;
        if (k.mv_size != sizeof key || v.mv_size != o_.object_size) {
          sizes_ok = false;
          break;
        }
        std::memcpy(&key, k.mv_data, sizeof key);
        inv.add(key, static_cast<const unsigned char*>(v.mv_data));
      }
      mdb_cursor_close(cur);
      mdb_txn_abort(txn);
      if (!sizes_ok) return {false, "a record of the wrong size"};
      return inv.result(n_, writes);
    }
    invariant inv(o_);
    std::vector<std::int64_t> v(value_size(o_) / 8);
    for (std::uint64_t i = 0; i < n_; ++i) {
      MDB_val k{sizeof i, &i};
      MDB_val val{};
      check_rc(mdb_get(txn, e.dbi(), &k, &val), "get");
      std::memcpy(v.data(), val.mv_data, v.size() * 8);
      inv.add(v.data());
    }
    mdb_txn_abort(txn);
    return inv.result(n_, writes);
  }

  void teardown() override {
    env_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  [[nodiscard]] bool forkable() const override { return true; }

 private:
  static void check_rc(int rc, std::string_view what) {
    if (rc != MDB_SUCCESS)
      throw std::runtime_error(fmt::format("lmdb: {}: {}", what, mdb_strerror(rc)));
  }

  class env {
   public:
    explicit env(lmdb_system& s) {
      check_rc(mdb_env_create(&env_), "create");
      const std::uint64_t bytes = s.n_ * (value_size(s.o_) + 64) * 4 + (std::uint64_t{64} << 20);
      check_rc(mdb_env_set_mapsize(env_, bytes), "mapsize");
      check_rc(mdb_env_set_maxreaders(env_, 512), "maxreaders");
      const unsigned flags = MDB_NOTLS | (s.o_.durability == level::power ? 0u : MDB_NOSYNC);
      check_rc(mdb_env_open(env_, s.dir_.c_str(), flags, 0644), "open");
      MDB_txn* txn = nullptr;
      check_rc(mdb_txn_begin(env_, nullptr, 0, &txn), "begin");
      // YCSB's 64-bit keys in numeric order (its scans), and faster to compare.
      const unsigned dbi_flags = ycsb::is_ycsb(s.o_.load) ? MDB_INTEGERKEY : 0u;
      check_rc(mdb_dbi_open(txn, nullptr, dbi_flags, &dbi_), "dbi");
      check_rc(mdb_txn_commit(txn), "commit");
    }
    env(const env&) = delete;
    env& operator=(const env&) = delete;
    ~env() { mdb_env_close(env_); }
    MDB_env* get() const noexcept { return env_; }
    MDB_dbi dbi() const noexcept { return dbi_; }

   private:
    MDB_env* env_ = nullptr;
    MDB_dbi dbi_ = 0;
  };

  class lmdb_worker final : public worker {
   public:
    lmdb_worker(lmdb_system& s, int index)
        : s_(s), e_(*s.env_), own_(static_cast<std::uint64_t>(index)) {
      a_.resize(value_size(s.o_) / 8);
      b_.resize(a_.size());
    }
    bool run_one(random& r) override {
      const step st = next_step(r, s_.o_, s_.n_, own_);
      const bool bank = s_.o_.load == workload::bank;
      MDB_txn* txn = nullptr;
      check_rc(mdb_txn_begin(e_.get(), nullptr, st.read_only ? MDB_RDONLY : 0, &txn), "begin");
      read(txn, st.a, a_);
      if (bank) read(txn, st.b, b_);
      if (st.read_only) {
        mdb_txn_abort(txn);
        return true;
      }
      apply_write(s_.o_, a_.data(), b_.data(), st.amount);
      write(txn, st.a, a_);
      if (bank) write(txn, st.b, b_);
      check_rc(mdb_txn_commit(txn), "commit");
      return false;
    }

   private:
    void read(MDB_txn* txn, std::uint64_t id, std::vector<std::int64_t>& into) {
      MDB_val k{sizeof id, &id};
      MDB_val v{};
      check_rc(mdb_get(txn, e_.dbi(), &k, &v), "get");
      std::memcpy(into.data(), v.mv_data, into.size() * 8);
    }
    void write(MDB_txn* txn, std::uint64_t id, const std::vector<std::int64_t>& from) {
      MDB_val k{sizeof id, &id};
      MDB_val v{from.size() * 8, const_cast<std::int64_t*>(from.data())};
      check_rc(mdb_put(txn, e_.dbi(), &k, &v, 0), "put");
    }

    lmdb_system& s_;
    env& e_;
    std::uint64_t own_;
    std::vector<std::int64_t> a_, b_;
  };

  /// A YCSB operation per transaction: reads and scans in read-only transactions, an
  /// update reads and writes in one write transaction.
  class lmdb_ycsb_worker final : public worker {
   public:
    lmdb_ycsb_worker(lmdb_system& s, int index)
        : e_(*s.env_), choose_(s.o_, s.n_, index), value_(s.o_.object_size) {}

    bool run_one(random& r) override {
      const ycsb::choice ch = choose_.next(r);
      std::uint64_t key = ycsb::key_of(ch.record);
      MDB_val k{sizeof key, &key};
      MDB_val v{};
      const bool read_only = ch.what == ycsb::op::read || ch.what == ycsb::op::scan;
      MDB_txn* txn = nullptr;
      check_rc(mdb_txn_begin(e_.get(), nullptr, read_only ? MDB_RDONLY : 0, &txn), "begin");
      switch (ch.what) {
        case ycsb::op::read:
          check_rc(mdb_get(txn, e_.dbi(), &k, &v), "get");
          keep_sum_ += ycsb::digest(static_cast<const unsigned char*>(v.mv_data), value_.size());
          break;
        case ycsb::op::scan: {
          MDB_cursor* cur = nullptr;
          check_rc(mdb_cursor_open(txn, e_.dbi(), &cur), "cursor");
          int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
          for (std::uint32_t n = 0; rc == MDB_SUCCESS && n < ch.length; ++n) {
            keep_sum_ += ycsb::digest(static_cast<const unsigned char*>(v.mv_data), value_.size());
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
          }
          mdb_cursor_close(cur);
          break;
        }
        case ycsb::op::insert:
          ycsb::fill(value_.data(), value_.size(), ch.record, 0);
          v = {value_.size(), value_.data()};
          check_rc(mdb_put(txn, e_.dbi(), &k, &v, 0), "put");
          break;
        case ycsb::op::update:
        case ycsb::op::read_modify_write:
          check_rc(mdb_get(txn, e_.dbi(), &k, &v), "get");
          std::memcpy(value_.data(), v.mv_data, value_.size());
          ycsb::bump(value_.data(), value_.size());
          v = {value_.size(), value_.data()};
          check_rc(mdb_put(txn, e_.dbi(), &k, &v, 0), "put");
          break;
      }
      if (read_only) {
        mdb_txn_abort(txn);
        return true;
      }
      check_rc(mdb_txn_commit(txn), "commit");
      return false;
    }

   private:
    env& e_;
    ycsb::chooser choose_;
    std::vector<unsigned char> value_;
    std::int64_t keep_sum_ = 0;
  };

  const options& o_;
  std::filesystem::path dir_;
  std::uint64_t n_ = 0;
  std::mutex mutex_;
  std::unique_ptr<env> env_;
  pid_t env_pid_ = 0;
};

#endif  // FTM_BENCH_HAVE_LMDB

}  // namespace

std::unique_ptr<system> make_peer(const std::string& name, [[maybe_unused]] const options& o) {
#if FTM_BENCH_HAVE_SQLITE
  if (name == "sqlite") return std::make_unique<sqlite_system>(o);
#endif
#if FTM_BENCH_HAVE_LMDB
  if (name == "lmdb") return std::make_unique<lmdb_system>(o);
#endif
  static_cast<void>(name);
  return nullptr;
}

}  // namespace bench
