/// \file
/// ftm_ycsb_bench: YCSB-style workloads over 1,000,000 keys (8-byte keys, 100-byte
/// values, uniform key choice), one operation per transaction:
///
///   A  50% reads, 50% updates        B  95% reads, 5% updates
///   C  100% reads                    E  95% short scans (1 to 50 entries in key order),
///                                       5% inserts of new keys
///
/// Systems, each beside the ftm level that survives the same failures:
///
///   std             std::unordered_map (std::map for E) + std::shared_mutex: not
///                   crash-safe, the speed reference
///   ftm_process     ftm::stable_hash_map (stable_map for E) in a pmem pool at
///                   durability `process` (survives the death of processes)
///   lmdb_nosync     LMDB with MDB_WRITEMAP | MDB_NOSYNC (survives process death)
///   sqlite_wal      SQLite, WAL, synchronous=NORMAL (survives process death)
///   ftm_power       the same at durability `power` (survives power loss)
///   lmdb_sync       LMDB with its default syncs (survives power loss)
///
/// Each row reports ops per second (items_per_second) and bytes_per_entry: the
/// storage of the loaded data divided by the keys (heap growth for std, the containers'
/// objects with their headers for ftm, pages in use for LMDB and SQLite).
///
///   ftm_ycsb_bench [--dir DIR] [--keys N] [google benchmark flags]
///
/// Files go to DIR (default: the build tree), one subdirectory removed at exit.
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <malloc.h>
#include <unistd.h>

#if FTM_BENCH_HAVE_LMDB
#include <lmdb.h>
#endif
#if FTM_BENCH_HAVE_SQLITE
#include <sqlite3.h>
#endif

namespace {

namespace fs = std::filesystem;

std::uint64_t n_keys = 1'000'000;
fs::path dir;

struct value100 {
  char bytes[100];
};

/// The i-th key: scrambled, so neither insertion order nor key order follows i.
std::uint64_t key_of(std::uint64_t i) { return ftm::detail::mix64(i + 1) >> 1; }

value100 value_for(std::uint64_t k, std::uint64_t version) {
  value100 v{};
  std::memcpy(v.bytes, &k, 8);
  std::memcpy(v.bytes + 8, &version, 8);
  return v;
}

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "ftm_ycsb_bench: %s\n", why.c_str());
  std::exit(1);
}

/// Bytes the allocator has handed out and not taken back (freed memory it keeps for
/// reuse does not count, unlike the RSS).
std::uint64_t heap_bytes() { return mallinfo2().uordblks; }

/// One system under test; `ordered` systems serve workload E.
class system_base {
 public:
  virtual ~system_base() = default;
  virtual void read(std::uint64_t key) = 0;
  virtual void update(std::uint64_t key, const value100& v) = 0;
  virtual void insert(std::uint64_t key, const value100& v) { update(key, v); }
  virtual std::uint64_t scan(std::uint64_t from, std::uint64_t n) = 0;
  double bytes_per_entry = 0;
};

// ---- std::unordered_map / std::map + std::shared_mutex --------------------------

template <class Map>
class std_system final : public system_base {
 public:
  std_system() {
    const auto before = heap_bytes();
    if constexpr (requires(Map m) { m.reserve(1); }) map_.reserve(n_keys);
    for (std::uint64_t i = 0; i < n_keys; ++i)
      map_.emplace(key_of(i), value_for(key_of(i), 0));
    bytes_per_entry = static_cast<double>(heap_bytes() - before) / static_cast<double>(n_keys);
  }
  void read(std::uint64_t key) override {
    std::shared_lock lock(mutex_);
    auto it = map_.find(key);
    benchmark::DoNotOptimize(it->second.bytes[20]);
  }
  void update(std::uint64_t key, const value100& v) override {
    std::unique_lock lock(mutex_);
    map_[key] = v;
  }
  std::uint64_t scan(std::uint64_t from, std::uint64_t n) override {
    if constexpr (requires(Map m, std::uint64_t k) { m.lower_bound(k); }) {
      std::shared_lock lock(mutex_);
      std::uint64_t got = 0;
      for (auto it = map_.lower_bound(from); it != map_.end() && got < n; ++it, ++got)
        benchmark::DoNotOptimize(it->second.bytes[20]);
      return got;
    } else {
      fail("scan on an unordered map");
    }
  }

 private:
  std::shared_mutex mutex_;
  Map map_;
};

// ---- ftm ------------------------------------------------------------------------

using pool_t = ftm::engines::pmem;
using tx_t = ftm::transaction<pool_t>;
using hash_t = ftm::stable_hash_map<std::uint64_t, value100>;
using tree_t = ftm::stable_map<std::uint64_t, value100>;

template <bool Ordered>
class ftm_system final : public system_base {
 public:
  explicit ftm_system(ftm::durability level)
      : path_(dir / fmt::format("ftm-{}-{}.pool", Ordered ? "tree" : "hash",
                                level == ftm::durability::power ? "power" : "process")),
        pool_(pool_t::create(path_, {.bank_size = std::size_t{768} << 20,
                                     .max_objects_per_transaction = 8192,
                                     .level = level})) {
    ref_ = ftm::atomically(pool_, [](tx_t& tx) { return tx.root<container>("ycsb"); });
    if constexpr (!Ordered) {
      ftm::atomically(pool_, [&](tx_t& tx) { ftm::open(tx, ref_).reserve_segments(); });
    }
    constexpr std::uint64_t batch = 1000;  // keys per loading transaction
    for (std::uint64_t b = 0; b < n_keys; b += batch) {
      ftm::atomically(pool_, [&](tx_t& tx) {
        auto m = ftm::open(tx, ref_);
        for (std::uint64_t i = b; i < std::min(n_keys, b + batch); ++i)
          m.insert(key_of(i), value_for(key_of(i), 0));
      });
    }
    const auto view = pool_t::inspect(path_);
    for (const auto& r : view.roots()) {
      if (r.name != "ycsb") continue;
      const auto bytes = view.object(r.layout);
      const auto v = ftm::decode_root(
          view, r, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
      const auto& c = v.containers.at(0);
      if (c.size != n_keys) fail(fmt::format("{} holds {} keys, not {}", c.kind, c.size, n_keys));
      bytes_per_entry =
          static_cast<double>(c.bytes + c.objects * ftm::detail::bank_layout::header_size) /
          static_cast<double>(n_keys);
    }
  }
  ~ftm_system() override {
    fs::remove(path_);
    fs::remove(ftm::detail::redo::redo_log::path_for(path_));
  }
  void read(std::uint64_t key) override {
    ftm::atomically(pool_, [&](tx_t& tx) {
      auto m = ftm::open_read(tx, ref_);
      benchmark::DoNotOptimize(m.find(key)->second.bytes[20]);
    });
  }
  void update(std::uint64_t key, const value100& v) override {
    ftm::atomically(pool_, [&](tx_t& tx) { ftm::open(tx, ref_).insert_or_assign(key, v); });
  }
  std::uint64_t scan(std::uint64_t from, std::uint64_t n) override {
    if constexpr (Ordered) {
      return ftm::atomically(pool_, [&](tx_t& tx) {
        auto m = ftm::open_read(tx, ref_);
        std::uint64_t got = 0;
        for (auto it = m.lower_bound(from); it != m.end() && got < n; ++it, ++got)
          benchmark::DoNotOptimize(it->second.bytes[20]);
        return got;
      });
    } else {
      fail("scan on a hash map");
    }
  }

 private:
  using container = std::conditional_t<Ordered, tree_t, hash_t>;
  fs::path path_;
  pool_t pool_;
  ftm::stable<container> ref_;
};

// ---- LMDB -----------------------------------------------------------------------

#if FTM_BENCH_HAVE_LMDB
class lmdb_system final : public system_base {
 public:
  explicit lmdb_system(unsigned flags) : path_(dir / fmt::format("lmdb-{:x}.mdb", flags)) {
    check(mdb_env_create(&env_), "mdb_env_create");
    check(mdb_env_set_mapsize(env_, std::size_t{2} << 30), "mdb_env_set_mapsize");
    check(mdb_env_set_maxreaders(env_, 16), "mdb_env_set_maxreaders");
    check(mdb_env_open(env_, path_.c_str(), MDB_NOSUBDIR | flags, 0644), "mdb_env_open");
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    check(mdb_dbi_open(txn, nullptr, MDB_INTEGERKEY, &dbi_), "mdb_dbi_open");
    for (std::uint64_t i = 0; i < n_keys; ++i) {
      std::uint64_t k = key_of(i);
      value100 v = value_for(k, 0);
      MDB_val key{sizeof k, &k}, val{sizeof v, &v};
      check(mdb_put(txn, dbi_, &key, &val, 0), "mdb_put");
    }
    check(mdb_txn_commit(txn), "mdb_txn_commit");
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info(env_, &info);
    mdb_env_stat(env_, &st);
    bytes_per_entry =
        static_cast<double>((info.me_last_pgno + 1) * st.ms_psize) / static_cast<double>(n_keys);
  }
  ~lmdb_system() override {
    mdb_env_close(env_);
    fs::remove(path_);
    fs::remove(path_.string() + "-lock");
  }
  void read(std::uint64_t k) override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
    MDB_val key{sizeof k, &k}, val;
    check(mdb_get(txn, dbi_, &key, &val), "mdb_get");
    benchmark::DoNotOptimize(static_cast<const char*>(val.mv_data)[20]);
    mdb_txn_abort(txn);
  }
  void update(std::uint64_t k, const value100& v) override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    MDB_val key{sizeof k, &k}, val{sizeof v, const_cast<value100*>(&v)};
    check(mdb_put(txn, dbi_, &key, &val, 0), "mdb_put");
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  std::uint64_t scan(std::uint64_t from, std::uint64_t n) override {
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
    MDB_cursor* cur = nullptr;
    check(mdb_cursor_open(txn, dbi_, &cur), "mdb_cursor_open");
    MDB_val key{sizeof from, &from}, val;
    std::uint64_t got = 0;
    for (int rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE); rc == 0 && got < n;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT), ++got)
      benchmark::DoNotOptimize(static_cast<const char*>(val.mv_data)[20]);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return got;
  }

 private:
  static void check(int rc, const char* what) {
    if (rc != 0) fail(fmt::format("{}: {}", what, mdb_strerror(rc)));
  }
  fs::path path_;
  MDB_env* env_ = nullptr;
  MDB_dbi dbi_ = 0;
};
#endif

// ---- SQLite ---------------------------------------------------------------------

#if FTM_BENCH_HAVE_SQLITE
class sqlite_system final : public system_base {
 public:
  sqlite_system() : path_(dir / "sqlite.db") {
    auto& c = conn(0);
    c.exec("BEGIN");
    for (std::uint64_t i = 0; i < n_keys; ++i) {
      const value100 v = value_for(key_of(i), 0);
      c.put(key_of(i), v);
    }
    c.exec("COMMIT");
    sqlite3_stmt* s =
        c.prepare("SELECT page_count * page_size FROM pragma_page_count, pragma_page_size");
    sqlite3_step(s);
    bytes_per_entry = static_cast<double>(sqlite3_column_int64(s, 0)) / static_cast<double>(n_keys);
    sqlite3_finalize(s);
  }
  ~sqlite_system() override {
    conns_.clear();
    for (const char* suffix : {"", "-wal", "-shm"})
      fs::remove(path_.string() + suffix);
  }
  void read(std::uint64_t k) override {
    auto& c = conn(thread_index());
    sqlite3_bind_int64(c.get, 1, static_cast<sqlite3_int64>(k));
    if (sqlite3_step(c.get) != SQLITE_ROW) fail("sqlite: a key is missing");
    benchmark::DoNotOptimize(static_cast<const char*>(sqlite3_column_blob(c.get, 0))[20]);
    sqlite3_reset(c.get);
  }
  void update(std::uint64_t k, const value100& v) override { conn(thread_index()).put(k, v); }
  std::uint64_t scan(std::uint64_t from, std::uint64_t n) override {
    auto& c = conn(thread_index());
    sqlite3_bind_int64(c.range, 1, static_cast<sqlite3_int64>(from));
    sqlite3_bind_int64(c.range, 2, static_cast<sqlite3_int64>(n));
    std::uint64_t got = 0;
    while (sqlite3_step(c.range) == SQLITE_ROW) {
      benchmark::DoNotOptimize(static_cast<const char*>(sqlite3_column_blob(c.range, 0))[20]);
      ++got;
    }
    sqlite3_reset(c.range);
    return got;
  }
  static thread_local int thread_slot;

 private:
  static int thread_index() { return thread_slot; }
  struct connection {
    sqlite3* db = nullptr;
    sqlite3_stmt* get = nullptr;
    sqlite3_stmt* set = nullptr;
    sqlite3_stmt* range = nullptr;
    explicit connection(const fs::path& path) {
      if (sqlite3_open_v2(path.c_str(), &db,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                          nullptr) != SQLITE_OK)
        fail(fmt::format("sqlite cannot open '{}'", path.string()));
      sqlite3_busy_timeout(db, 60'000);
      exec("PRAGMA journal_mode=WAL");
      exec("PRAGMA synchronous=NORMAL");
    }
    ~connection() {
      for (sqlite3_stmt* s : {get, set, range})
        sqlite3_finalize(s);
      sqlite3_close(db);
    }
    void exec(const char* sql) {
      if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK)
        fail(fmt::format("sqlite: {}: {}", sql, sqlite3_errmsg(db)));
    }
    sqlite3_stmt* prepare(const char* sql) {
      sqlite3_stmt* s = nullptr;
      if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK)
        fail(fmt::format("sqlite: {}: {}", sql, sqlite3_errmsg(db)));
      return s;
    }
    void prepare_all() {
      get = prepare("SELECT v FROM kv WHERE k = ?");
      set = prepare("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)");
      range = prepare("SELECT v FROM kv WHERE k >= ? ORDER BY k LIMIT ?");
    }
    void put(std::uint64_t k, const value100& v) {
      sqlite3_bind_int64(set, 1, static_cast<sqlite3_int64>(k));
      sqlite3_bind_blob(set, 2, &v, sizeof v, SQLITE_STATIC);
      if (sqlite3_step(set) != SQLITE_DONE) fail(fmt::format("sqlite put: {}", sqlite3_errmsg(db)));
      sqlite3_reset(set);
    }
  };
  connection& conn(int i) {
    std::lock_guard lock(mutex_);
    if (conns_.size() <= static_cast<std::size_t>(i)) conns_.resize(i + 1);
    if (!conns_[i]) {
      conns_[i] = std::make_unique<connection>(path_);
      if (i == 0 && !created_) {
        created_ = true;
        conns_[i]->exec("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v BLOB NOT NULL)");
      }
      conns_[i]->prepare_all();
    }
    return *conns_[i];
  }
  fs::path path_;
  std::mutex mutex_;
  bool created_ = false;
  std::vector<std::unique_ptr<connection>> conns_;
};
thread_local int sqlite_system::thread_slot = 0;
#endif

// ---- the workloads ----------------------------------------------------------------

enum class workload { a, b, c, e };

/// Each system is loaded once, the first time a row needs it, and kept for its rows.
std::map<std::string, std::unique_ptr<system_base>>& systems() {
  static std::map<std::string, std::unique_ptr<system_base>> s;
  return s;
}

system_base& get_system(const std::string& name) {
  static std::mutex m;
  std::lock_guard lock(m);
  auto& s = systems()[name];
  if (s) return *s;
  // One loaded system at a time besides this one: the pools are large.
  for (auto& [other, sys] : systems())
    if (other != name) sys.reset();
  if (name == "std")
    s = std::make_unique<std_system<std::unordered_map<std::uint64_t, value100>>>();
  if (name == "std_ordered") s = std::make_unique<std_system<std::map<std::uint64_t, value100>>>();
  if (name == "ftm_process") s = std::make_unique<ftm_system<false>>(ftm::durability::process);
  if (name == "ftm_process_ordered")
    s = std::make_unique<ftm_system<true>>(ftm::durability::process);
  if (name == "ftm_power") s = std::make_unique<ftm_system<false>>(ftm::durability::power);
#if FTM_BENCH_HAVE_LMDB
  if (name == "lmdb_nosync") s = std::make_unique<lmdb_system>(MDB_WRITEMAP | MDB_NOSYNC);
  if (name == "lmdb_sync") s = std::make_unique<lmdb_system>(0);
#endif
#if FTM_BENCH_HAVE_SQLITE
  if (name == "sqlite_wal") s = std::make_unique<sqlite_system>();
#endif
  if (!s) fail("unknown system " + name);
  return *s;
}

void run(benchmark::State& state, std::string name, workload w) {
  if ((w == workload::e) && (name == "std" || name == "ftm_process")) name += "_ordered";
  system_base& sys = get_system(name);
#if FTM_BENCH_HAVE_SQLITE
  sqlite_system::thread_slot = state.thread_index();
#endif
  std::mt19937_64 rng(state.thread_index() * 7919 + 17);
  static std::atomic<std::uint64_t> next_insert{0};
  std::uint64_t version = 1;
  for (auto _ : state) {
    const auto roll = rng() % 100;
    const std::uint64_t key = key_of(rng() % n_keys);
    switch (w) {
      case workload::a:
      case workload::b:
        if (roll < (w == workload::a ? 50u : 95u)) {
          sys.read(key);
        } else {
          sys.update(key, value_for(key, version++));
        }
        break;
      case workload::c: sys.read(key); break;
      case workload::e:
        if (roll < 95) {
          benchmark::DoNotOptimize(sys.scan(key, 1 + rng() % 50));
        } else {
          const std::uint64_t k = key_of(n_keys + next_insert.fetch_add(1));
          sys.insert(k, value_for(k, 0));
        }
        break;
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["bytes_per_entry"] =
      benchmark::Counter(sys.bytes_per_entry, benchmark::Counter::kAvgThreads);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> args;
  dir = fs::path(FTM_YCSB_BENCH_DEFAULT_DIR);
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--dir" && i + 1 < argc) {
      dir = argv[++i];
    } else if (a == "--keys" && i + 1 < argc) {
      n_keys = std::strtoull(argv[++i], nullptr, 0);
    } else {
      args.push_back(argv[i]);
    }
  }
  dir /= fmt::format("ycsb-{}", ::getpid());
  fs::create_directories(dir);
  std::vector<std::string> names = {"std", "ftm_process", "ftm_power"};
#if FTM_BENCH_HAVE_LMDB
  names.insert(names.end(), {"lmdb_nosync", "lmdb_sync"});
#endif
#if FTM_BENCH_HAVE_SQLITE
  names.push_back("sqlite_wal");
#endif
  // Rows grouped by system, so that each is loaded once.
  for (const auto& name : names) {
    for (auto [w, letter] : {std::pair{workload::a, "A"}, std::pair{workload::b, "B"},
                             std::pair{workload::c, "C"}, std::pair{workload::e, "E"}}) {
      // power and synced LMDB wait for the disk on every write: A (the goal's row) only.
      if ((name == "ftm_power" || name == "lmdb_sync") && w != workload::a && w != workload::c)
        continue;
      auto* b = benchmark::RegisterBenchmark(fmt::format("ycsb_{}/{}", letter, name).c_str(), run,
                                             name, w)
                    ->Threads(1)
                    ->Threads(2)
                    ->UseRealTime();
      // The goal for power names 8 writers: they wait on the disk, not on the 2 cores.
      if ((name == "ftm_power" || name == "lmdb_sync") && w == workload::a) b->Threads(8);
    }
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  systems().clear();
  fs::remove_all(dir);
  return 0;
}
