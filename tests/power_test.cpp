// ftm::engines::pmem with durability `power`: what survives a power loss, simulated
// by the power-loss simulator (support/power_loss.hpp: the redo log's I/O seam records its
// writes and flushes and the pool's checkpoints), then
// recovering every crash image those allow, with the log flushed by fdatasync and by
// cache lines; group commit across processes; a killed committer; the refusal of a
// second durability level; the cache-line mode's refusal without MAP_SYNC. Built with
// FTM_FAULT_INJECTION.
#include "engines.hpp"
#include "process.hpp"
#include "support/power_loss.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using namespace ftm_test::power_loss;

struct counter {
  std::uint64_t value;
};

constexpr pmem::options power_small{.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 256 * 1024};

std::uint64_t records_in_log(pmem& pool) {
  // Checked against a pool that recorded nothing of it: every valid record counts.
  redo::control nothing{};
  redo::redo_log log(redo::redo_log::path_for(pool.path()), pool.pool_id(), -1, &nothing, 0);
  nothing.log_id = log.log_id();
  return log
      .replay(
          0, pool.bank_size(), [](void*, std::uint64_t, std::uint32_t, const std::byte*) {},
          nullptr, "")
      .records;
}

std::uint64_t value_of(pmem& pool, const char* name) {
  return ftm::atomically(
      pool, [&](auto& tx) { return tx.open_read(tx.template root<counter>(name))->value; });
}

}  // namespace

// In a sanitizer build, the heaviest scenarios recover one image in
// ftm_test::sanitizer_divisor, and their thresholds scale with it.
constexpr std::uint64_t image_sample = ftm_test::sanitizer_divisor;

TEST_CASE("power: every crash image of a simulated power loss recovers to a prefix") {
  power_loss_sim sim(20261127);
  sim.sample = image_sample;
  const auto r = sim.run(30);
  MESSAGE(fmt::format("power loss: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 800 / image_sample);
  CHECK(r.recovery_crashes > 50 / image_sample);
  CHECK(r.checkpoints > 3);
}

TEST_CASE("power: every subset of a group commit's pending sectors recovers to a prefix") {
  power_loss_sim sim(20261128);
  sim.sample = image_sample;
  const auto r = sim.run_group(1, 4);
  MESSAGE(fmt::format("power loss, group commit: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  // The scenario must reach the large subsets it is for.
  CHECK(r.max_exhaustive_n >= 12);
  CHECK(r.recovery_crashes > 50 / image_sample);
}

TEST_CASE("power: the power-loss checker catches a commit acknowledged before its flush") {
  power_loss_sim sim(7, false);
  sim.order = power_loss_sim::broken::ack_before_flush;
  const auto r = sim.run(4);
  // And in group commit, where the committers' records are written before one flushes.
  power_loss_sim group(8, false);
  group.order = power_loss_sim::broken::ack_before_flush;
  const auto g = group.run_group(1, 2);
  MESSAGE(fmt::format("broken order (ack before flush): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  MESSAGE(
      fmt::format("broken order (ack before flush), group commit: {} of {} images failed, "
                  "e.g. {}",
                  g.failures, g.images, g.first_failure));
  CHECK(r.failures > 0);
  CHECK(g.failures > 0);
}

TEST_CASE("power: the power-loss checker catches phase 2 run before the append") {
  power_loss_sim sim(11, false);
  sim.order = power_loss_sim::broken::redo_before_append;
  const auto r = sim.run(12);
  MESSAGE(fmt::format("broken order (phase 2 before append): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  CHECK(r.failures > 0);
}

namespace power_containers {

using hash_t = ftm::stable_hash_map<std::uint64_t, std::uint64_t>;
using tree_t = ftm::stable_map<std::uint64_t, std::uint64_t>;
using text_t = ftm::stable_string;
using numbers_t = ftm::stable_vector<std::uint64_t>;

/// The root: the four containers.
struct roots {
  ftm::stable<hash_t> hash;
  ftm::stable<tree_t> tree;
  ftm::stable<text_t> text;
  ftm::stable<numbers_t> numbers;
};

/// Keys that all fall in the hash map's segment 0, so that a few dozen of them split
/// its buckets (a segment splits one when it holds more than 6 per bucket).
std::vector<std::uint64_t> one_segment_keys() {
  std::vector<std::uint64_t> keys;
  for (std::uint64_t k = 1; keys.size() < 28; ++k) {
    if (ftm::stable_hash<std::uint64_t>{}(k) % ftm::detail::hash_segments == 0) keys.push_back(k);
  }
  return keys;
}

/// The containers' content after some transactions.
struct model {
  std::map<std::uint64_t, std::uint64_t> hash;
  std::map<std::uint64_t, std::uint64_t> tree;
  std::string text;
  std::vector<std::uint64_t> numbers;
};

/// Transaction `k` on the containers (`m` or the pool's): inserts into the hash map
/// that split its buckets, inserts into the ordered map that split its leaves and its
/// root, erases from both, a string that grows past 4 KiB chunks and is cut back, a
/// vector that grows and shrinks.
template <class Hash, class Tree, class Text, class Numbers>
void apply(std::uint64_t k, Hash&& hash, Tree&& tree, Text&& text, Numbers&& numbers) {
  static const std::vector<std::uint64_t> keys = one_segment_keys();
  std::mt19937_64 rng(k * 0x9e3779b97f4a7c15ULL);
  for (int i = 0; i < 3; ++i)
    hash(keys[rng() % keys.size()], k);
  hash(keys[rng() % keys.size()], 0);  // 0: erase
  for (int i = 0; i < 9; ++i)
    tree(rng() % 200, k);
  tree(rng() % 200, 0);
  std::string more(600 + rng() % 900, 'a');
  for (auto& c : more)
    c = static_cast<char>('a' + rng() % 26);
  text(more, k % 9 == 0);  // every 9th: cut back to a third first
  numbers(k, k % 7 == 0);  // every 7th: cut back to 5 first
}

model model_after(std::uint64_t transactions) {
  model m;
  for (std::uint64_t k = 1; k <= transactions; ++k) {
    apply(
        k,
        [&](std::uint64_t key, std::uint64_t v) {
          if (v == 0)
            m.hash.erase(key);
          else
            m.hash[key] = v;
        },
        [&](std::uint64_t key, std::uint64_t v) {
          if (v == 0)
            m.tree.erase(key);
          else
            m.tree[key] = v;
        },
        [&](const std::string& more, bool cut) {
          if (cut) m.text.resize(m.text.size() / 3);
          m.text += more;
        },
        [&](std::uint64_t v, bool cut) {
          if (cut) m.numbers.resize(std::min<std::size_t>(m.numbers.size(), 5));
          for (std::uint64_t j = 0; j < 3; ++j)
            m.numbers.push_back(v * 4 + j);
        });
  }
  return m;
}

std::uint64_t fold(std::uint64_t h, std::uint64_t w) { return mix(h, w); }

/// The state the simulator compares: each container's size and a hash of its content.
template <class Hash, class Tree, class Text, class Numbers>
state fingerprint(const Hash& hash, const Tree& tree, const Text& text, const Numbers& numbers) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> entries;
  for (const auto& e : hash)
    entries.emplace_back(e.first, e.second);
  std::sort(entries.begin(), entries.end());
  std::uint64_t h = 1, t = 2, x = 3, n = 4, tree_size = 0;
  for (const auto& [k, v] : entries)
    h = fold(fold(h, k), v);
  for (const auto& e : tree) {
    t = fold(fold(t, e.first), e.second);
    ++tree_size;
  }
  std::uint64_t text_size = 0;
  for (const char c : text) {
    x = fold(x, static_cast<unsigned char>(c));
    ++text_size;
  }
  std::uint64_t numbers_size = 0;
  for (const std::uint64_t v : numbers) {
    n = fold(n, v);
    ++numbers_size;
  }
  return {entries.size(), h, tree_size, t, text_size, x, numbers_size, n};
}

power_loss_sim::scenario containers() {
  power_loss_sim::scenario sc;
  sc.options = {.bank_size = std::size_t{1} << 20,
                .max_objects_per_transaction = 256,
                .log_size = 128 * 1024};  // small: records of up to 30 KiB force checkpoints
  sc.setup = [](ftm::transaction<pmem>& tx) {
    auto r = tx.open(tx.root<roots>("containers"));
    r->hash = tx.create<hash_t>();
    r->tree = tx.create<tree_t>();
    r->text = tx.create<text_t>();
    r->numbers = tx.create<numbers_t>();
  };
  sc.step = [](ftm::transaction<pmem>& tx, std::uint64_t k) {
    const roots r = *tx.open_read(tx.root<roots>("containers"));
    auto hash = ftm::open(tx, r.hash);
    auto tree = ftm::open(tx, r.tree);
    auto text = ftm::open(tx, r.text);
    auto numbers = ftm::open(tx, r.numbers);
    apply(
        k,
        [&](std::uint64_t key, std::uint64_t v) {
          if (v == 0)
            hash.erase(key);
          else
            hash.insert_or_assign(key, v);
        },
        [&](std::uint64_t key, std::uint64_t v) {
          if (v == 0)
            tree.erase(key);
          else
            tree.insert_or_assign(key, v);
        },
        [&](const std::string& more, bool cut) {
          if (cut) text.resize(text.size() / 3);
          text.append(more);
        },
        [&](std::uint64_t v, bool cut) {
          if (cut) numbers.resize(std::min<std::uint64_t>(numbers.size(), 5));
          for (std::uint64_t j = 0; j < 3; ++j)
            numbers.push_back(v * 4 + j);
        });
  };
  sc.model = [](std::uint64_t k) {
    const model m = model_after(k);
    return fingerprint(m.hash, m.tree, m.text, m.numbers);
  };
  sc.read = [](pmem& pool, state& out, std::string& why) {
    try {
      out = ftm::atomically(pool, [&](ftm::transaction<pmem>& tx) {
        const roots r = *tx.open_read(tx.root<roots>("containers"));
        auto hash = ftm::open_read(tx, r.hash);
        auto tree = ftm::open_read(tx, r.tree);
        auto text = ftm::open_read(tx, r.text);
        auto numbers = ftm::open_read(tx, r.numbers);
        hash.verify();
        tree.verify();
        return fingerprint(hash, tree, text, numbers);
      });
      return true;
    } catch (const ftm::bad_pool& e) {
      why = fmt::format("a container's structure is broken: {}", e.what());
      return false;
    }
  };
  return sc;
}

}  // namespace power_containers

TEST_CASE("power: containers recover all or nothing from every simulated power loss") {
  // The model must reach what the case is for: splits of both maps and string chunks.
  const auto m = power_containers::model_after(24);
  REQUIRE(m.hash.size() > 13);  // past two bucket splits of segment 0
  REQUIRE(m.tree.size() > 64);  // past one leaf (and a new root)
  REQUIRE(m.text.size() > 8192);
  power_loss_sim sim(20261207);
  sim.sample = image_sample;
  const auto r = sim.run_scenario(power_containers::containers(), 24);
  MESSAGE(fmt::format("power loss, containers: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 2000 / image_sample);
  CHECK(r.checkpoints > 1);
}

TEST_CASE("power: the power-loss checker catches containers torn by phase 2 before the append") {
  power_loss_sim sim(20261208, false);
  sim.order = power_loss_sim::broken::redo_before_append;
  const auto r = sim.run_scenario(power_containers::containers(), 6);
  MESSAGE(fmt::format("broken order, containers: {} of {} images failed, e.g. {}", r.failures,
                      r.images, r.first_failure));
  CHECK(r.failures > 0);
}

namespace power_string_maps {

using hash_t = ftm::stable_hash_map<ftm::stable_string, ftm::stable_string>;
using tree_t = ftm::stable_map<ftm::stable_string, ftm::stable_string>;

struct roots {
  ftm::stable<hash_t> hash;
  ftm::stable<tree_t> tree;
};

/// Key `k`: inline, 40 bytes sharing a 30-byte prefix (a 64-byte block), or 4,200
/// bytes sharing 4,100 (chunks).
std::string key(std::uint64_t k) {
  switch (k % 3) {
    case 0: return "s" + std::to_string(k);
    case 1: return "a shared prefix, 30 bytes long" + std::to_string(k * 7919);
    default: return std::string(4100, 'q') + std::to_string(k) + std::string(90, 'r');
  }
}

/// Transaction `k`: three inserts or overwrites (values inline, in a block, or of 5,000
/// to 9,000 bytes in chunks) and an erase, the same in both maps; `put(key, value)`,
/// an empty `value` erasing.
template <class Put>
void apply(std::uint64_t k, Put&& put) {
  std::mt19937_64 rng(k * 0x9e3779b97f4a7c15ULL + 3);
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t kind = rng() % 6;
    std::string v(kind == 0  ? 5000 + rng() % 4000
                  : kind < 3 ? 1 + rng() % 16
                             : 17 + rng() % 300,
                  '\0');
    for (auto& c : v)
      c = static_cast<char>('a' + rng() % 26);
    put(key(rng() % 40), v);
  }
  put(key(rng() % 40), std::string());
}

state fingerprint_of(const std::map<std::string, std::string>& m) {
  std::uint64_t h = 5;
  for (const auto& [k, v] : m)
    h = mix(mix(h, std::hash<std::string>{}(k)), std::hash<std::string>{}(v));
  return {m.size(), h};
}

power_loss_sim::scenario scenario() {
  power_loss_sim::scenario sc;
  // A transaction writes up to about 200 KiB (chunks and their directories): a log of
  // 1 MiB holds several, so checkpoints happen and the log never grows.
  sc.options = {.bank_size = std::size_t{4} << 20,
                .max_objects_per_transaction = 256,
                .log_size = std::size_t{1} << 20};
  sc.setup = [](ftm::transaction<pmem>& tx) {
    auto r = tx.open(tx.root<roots>("string maps"));
    r->hash = tx.create<hash_t>();
    r->tree = tx.create<tree_t>();
  };
  sc.step = [](ftm::transaction<pmem>& tx, std::uint64_t k) {
    const roots r = *tx.open_read(tx.root<roots>("string maps"));
    auto hash = ftm::open(tx, r.hash);
    auto tree = ftm::open(tx, r.tree);
    apply(k, [&](const std::string& key, const std::string& v) {
      if (v.empty()) {
        hash.erase(key);
        tree.erase(key);
      } else {
        hash.insert_or_assign(key, v);
        tree.insert_or_assign(key, v);
      }
    });
  };
  sc.model = [](std::uint64_t k) {
    std::map<std::string, std::string> m;
    for (std::uint64_t i = 1; i <= k; ++i) {
      apply(i, [&](const std::string& key, const std::string& v) {
        if (v.empty())
          m.erase(key);
        else
          m[key] = v;
      });
    }
    const state one = fingerprint_of(m);
    state both = one;
    both.insert(both.end(), one.begin(), one.end());
    return both;
  };
  sc.read = [](pmem& pool, state& out, std::string& why) {
    try {
      out = ftm::atomically(pool, [&](ftm::transaction<pmem>& tx) {
        const roots r = *tx.open_read(tx.root<roots>("string maps"));
        auto hash = ftm::open_read(tx, r.hash);
        auto tree = ftm::open_read(tx, r.tree);
        hash.verify();
        tree.verify();
        std::map<std::string, std::string> from_hash;
        for (const auto& e : hash)
          from_hash.emplace(e.first.str(), e.second.str());
        std::map<std::string, std::string> from_tree;
        for (const auto& e : tree)
          from_tree.emplace_hint(from_tree.end(), e.first.str(), e.second.str());
        state both = fingerprint_of(from_hash);
        const state t = fingerprint_of(from_tree);
        both.insert(both.end(), t.begin(), t.end());
        return both;
      });
      return true;
    } catch (const ftm::bad_pool& e) {
      why = fmt::format("a map's structure is broken: {}", e.what());
      return false;
    }
  };
  return sc;
}

}  // namespace power_string_maps

TEST_CASE("power: maps of owned strings recover all or nothing from every simulated power loss") {
  power_loss_sim sim(20261209);
  sim.sample = image_sample;
  const auto r = sim.run_scenario(power_string_maps::scenario(), 14);
  MESSAGE(fmt::format("power loss, maps of strings: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 500 / image_sample);
}

TEST_CASE("power: the power-loss checker catches maps of strings torn by phase 2 first") {
  power_loss_sim sim(20261210, false);
  sim.order = power_loss_sim::broken::redo_before_append;
  const auto r = sim.run_scenario(power_string_maps::scenario(), 4);
  MESSAGE(fmt::format("broken order, maps of strings: {} of {} images failed, e.g. {}", r.failures,
                      r.images, r.first_failure));
  CHECK(r.failures > 0);
}

namespace {

/// Makes a pool at `path` with `opts` and four counters, then has two processes, two
/// threads each, add `per_thread` to a counter of their own (transactions that conflict
/// wait for each other's whole commit, flush included, and could not share one).
/// `observe`, in memory shared by the processes, sees the log's writes and flushes.
/// Returns whether a fresh process alone on the pool, opened with `opts`, rebuilt
/// every count and passes `also`.
bool commit_from_two_processes(const fs::path& path, const pmem::options& opts, int per_thread,
                               redo::log_io* observe, const std::function<bool(pmem&)>& also = {}) {
  const char* const names[4] = {"p0", "p1", "c0", "c1"};
  {
    auto pool = pmem::create(path, opts);
    ftm::atomically(pool, [&](auto& tx) {
      for (const char* name : names)
        static_cast<void>(tx.template root<counter>(name));
    });
  }
  redo::io_seam = observe;
  auto work = [&](int first) {
    auto pool = pmem::open(path, opts);
    std::vector<std::thread> ts;
    for (int t = first; t < first + 2; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          ftm::atomically(pool,
                          [&](auto& tx) { ++tx.open(tx.template root<counter>(names[t]))->value; });
        }
      });
    }
    for (auto& t : ts)
      t.join();
  };
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    work(2);
    ::_exit(0);
  }
  work(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  redo::io_seam = nullptr;
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const int fresh = in_child([&] {
    auto pool = pmem::open(path, opts);
    bool ok = pool.check().ok();
    for (const char* name : names)
      ok = ok && value_of(pool, name) == static_cast<std::uint64_t>(per_thread);
    return ok && (!also || also(pool)) ? 0 : 1;
  });
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
  return WIFEXITED(fresh) && WEXITSTATUS(fresh) == 0;
}

/// A committer killed before and after its append, in a child; the parent's recovery
/// makes it durable and completes it, with exactly one record for it in the log.
void check_killed_committer(const pmem::options& opts) {
  for (const char* point : {"log.before_append", "log.after_append"}) {
    CAPTURE(point);
    const fs::path path = ftm_test::scratch_file("power");
    auto pool = pmem::create(path, opts);
    ftm::atomically(pool, [](auto& tx) { tx.template root<counter>("x"); });
    const std::uint64_t before = records_in_log(pool);
    const int status = in_child([&] {
      auto mine = pmem::open(path, durability::power);
      ftm::detail::arm_fault(point, 1);
      ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
      return 0;
    });
    REQUIRE(WIFSIGNALED(status));
    const auto report = pool.recover();
    CHECK(report.redone == 1);
    CHECK(value_of(pool, "x") == 7);
    // Exactly one record for it: the child's, or recovery's when the child had none.
    CHECK(records_in_log(pool) == before + 1);
    CHECK(pool.check().ok());
  }
}

}  // namespace

TEST_CASE("power: two processes commit at once and share flushes (group commit)") {
  struct counts final : redo::log_io {
    std::atomic<std::uint64_t> flushes{0};
    void flush(redo::redo_log& log) noexcept override {
      flushes.fetch_add(1);
      log_io::flush(log);
    }
  };
  const ftm_test::shared_page<counts> page;
  counts* shared = page.get();
  constexpr int per_thread = 150;
  // The fresh process replays the log of a pool no one uses.
  CHECK(
      commit_from_two_processes(ftm_test::scratch_file("power"), power_small, per_thread, shared));
  const std::uint64_t commits = 4 * per_thread;
  const std::uint64_t flushes = shared->flushes.load();
  MESSAGE(fmt::format("group commit: {} commits by 4 threads in 2 processes, {} log flushes",
                      commits, flushes));
  CHECK(flushes < commits);
}

TEST_CASE("power: a committer killed mid-commit is made durable and completed by another process") {
  check_killed_committer(power_small);
}

TEST_CASE("power: committers asleep behind a flusher that dies take the flush over") {
  const fs::path path = ftm_test::scratch_file("power");
  auto pool = pmem::create(path, power_small);
  ftm::atomically(pool, [](auto& tx) {
    tx.template root<counter>("x");
    tx.template root<counter>("y");
  });
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  static int ready_fd = -1;
  ready_fd = ready[1];
  // The child stops forever inside its flush, holding the flush lock.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto mine = pmem::open(path, durability::power);
    ftm::detail::fault_observer = [](std::string_view name) {
      if (name != "log.mid_flush") return;
      const char c = 1;
      static_cast<void>(::write(ready_fd, &c, 1));
      for (;;)
        ::pause();
    };
    ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
    ::_exit(1);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  // Committers here find the flush lock taken and sleep until the flush ends.
  std::atomic<int> done{0};
  std::vector<std::thread> committers;
  for (int i = 0; i < 3; ++i) {
    committers.emplace_back([&] {
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("y"))->value; });
      ++done;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(done.load() == 0);  // still waiting for the stopped flusher
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (done.load() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (done.load() < 3) {
    for (auto& t : committers)
      t.detach();  // stuck for good: joining them would hang the test
    FAIL("committers still wait 10 s after their flusher died");
  }
  for (auto& t : committers)
    t.join();  // one of them took the dead flusher's lock over
  ::close(ready[0]);
  ::close(ready[1]);
  pool.recover();
  CHECK(value_of(pool, "x") == 7);  // the dead flusher's record was logged: redone
  CHECK(value_of(pool, "y") == 3);
  CHECK(pool.check().ok());
}

TEST_CASE("power: checkpoints keep the log header's copy current, whatever the flush method") {
  // A pool flushed by fdatasync may later be flushed by cache lines, whose readers fall
  // back to the copy when the first header is torn: a stale copy would name an old epoch.
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 16 * 1024});
    REQUIRE(pool.log_flush() == ftm::flush_method::fdatasync);
    ftm::atomically(pool, [](auto& tx) { tx.template root<counter>("x"); });
    for (int i = 0; i < 400; ++i)  // 16 KiB of log: several checkpoints
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  const int fd = ::open(redo::redo_log::path_for(path).c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  redo::file_header first{}, copy{};
  REQUIRE(::pread(fd, &first, sizeof first, 0) == static_cast<ssize_t>(sizeof first));
  REQUIRE(::pread(fd, &copy, sizeof copy, redo::header_copy_offset) ==
          static_cast<ssize_t>(sizeof copy));
  ::close(fd);
  CHECK(first.epoch > 1);  // checkpoints happened
  CHECK(copy.checksum == redo::header_checksum(copy));
  CHECK(copy.epoch == first.epoch);
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
}

TEST_CASE("power: of two processes creating one pool at once, the loser leaves the winner's log") {
  struct race {
    std::atomic<int> ready{0}, go{0}, tried{0};
    std::atomic<int> result[2]{};  // 1 created, 2 refused: the file exists, 3 other
  };
  int wins = 0;
  for (int round = 0; round < 20; ++round) {
    const ftm_test::shared_page<race> page;
    race* r = page.get();
    const fs::path path = ftm_test::scratch_file("race");
    pid_t kids[2];
    for (int c = 0; c < 2; ++c) {
      kids[c] = ::fork();
      REQUIRE(kids[c] >= 0);
      if (kids[c] != 0) continue;
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ++r->ready;
      while (r->go.load() == 0) {
      }
      try {
        auto pool = pmem::create(path, power_small);
        r->result[c] = 1;
        ++r->tried;
        while (r->tried.load() < 2)  // the loser has done all it does
          std::this_thread::yield();
        ftm::atomically(pool,
                        [&](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 40 + c; });
        ::_exit(0);  // no close: the next opener rebuilds from the log
      } catch (const ftm::io_error& e) {
        r->result[c] =
            std::string_view(e.what()).find("the file exists") != std::string_view::npos ? 2 : 3;
      } catch (...) {
        r->result[c] = 3;
      }
      ++r->tried;
      ::_exit(0);
    }
    while (r->ready.load() < 2)
      std::this_thread::yield();
    r->go = 1;
    for (const pid_t k : kids)
      ::waitpid(k, nullptr, 0);
    const int first = r->result[0].load(), second = r->result[1].load();
    CAPTURE(round);
    CAPTURE(first);
    CAPTURE(second);
    const int winner = first == 1 ? 0 : 1;
    REQUIRE((winner == 0 ? first : second) == 1);
    REQUIRE((winner == 0 ? second : first) == 2);
    const int status = in_child([&] {
      auto pool = pmem::open(path, durability::power);
      return value_of(pool, "x") == static_cast<std::uint64_t>(40 + winner) ? 0 : 1;
    });
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    wins += winner;
    fs::remove(path);
    fs::remove(redo::redo_log::path_for(path));
  }
  MESSAGE(fmt::format("20 creation races, the second process won {} of them", wins));
}

TEST_CASE("power: a pool open with one durability level refuses an opener asking for the other") {
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    CHECK(pool.level() == durability::power);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 1; });
    CHECK_THROWS_WITH_AS(pmem::open(path, durability::process),
                         doctest::Contains("open with durability power"), ftm::usage_error);
    auto second = pmem::open(path, durability::power);
    ftm::atomically(second, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    CHECK(value_of(pool, "x") == 2);
  }
  {
    // No one has it open: an explicit `process` opener may take it, and then decides.
    auto pool = pmem::open(path, durability::process);
    CHECK(pool.level() == durability::process);
    CHECK(value_of(pool, "x") == 2);
    CHECK_THROWS_AS(pmem::open(path, durability::power), ftm::usage_error);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  {
    auto pool = pmem::open(path, durability::power);
    CHECK(pool.level() == durability::power);
    CHECK(value_of(pool, "x") == 3);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  auto pool = pmem::open(path);  // the level recorded: power
  CHECK(pool.level() == durability::power);
  CHECK(value_of(pool, "x") == 4);
  CHECK(pool.check().ok());
}

TEST_CASE("power: read-only transactions, and every transaction at process, touch no log") {
  struct counts final : redo::log_io {
    std::uint64_t writes = 0, flushes = 0, pool_flushes = 0;
    void write(redo::redo_log& log, std::uint64_t offset, const std::byte* p,
               std::size_t n) noexcept override {
      ++writes;
      log_io::write(log, offset, p, n);
    }
    void flush(redo::redo_log& log) noexcept override {
      ++flushes;
      log_io::flush(log);
    }
    void flush_pool(redo::redo_log& log) noexcept override {
      ++pool_flushes;
      log_io::flush_pool(log);
    }
  } seen;
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 5; });
    redo::io_seam = &seen;
    for (int i = 0; i < 20; ++i)
      CHECK(value_of(pool, "x") == 5);
    CHECK(seen.writes + seen.flushes + seen.pool_flushes == 0);
    // The seam is live: one writing commit is one record and one flush.
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    CHECK(seen.writes == 1);
    CHECK(seen.flushes == 1);
    redo::io_seam = nullptr;
  }
  {
    auto pool = pmem::open(path, durability::process);  // switches: flushes, then no more
    redo::io_seam = &seen;
    seen = counts{};
    for (int i = 0; i < 20; ++i) {
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    }
    CHECK(value_of(pool, "x") == 26);
    CHECK(seen.writes + seen.flushes + seen.pool_flushes == 0);
    redo::io_seam = nullptr;
  }
}

TEST_CASE("power: a missing or foreign redo log is a bad pool, and the pool is left as it was") {
  const fs::path path = ftm_test::scratch_file("power");
  const fs::path other = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 9; });
    auto second = pmem::create(other, power_small);
  }
  const auto wal = redo::redo_log::path_for(path);
  const auto bytes = read_all(path);
  fs::rename(wal, wal.string() + ".away");
  CHECK_THROWS_WITH_AS(pmem::open(path, durability::power), doctest::Contains("is missing"),
                       ftm::bad_pool);
  CHECK(read_all(path) == bytes);
  fs::copy_file(redo::redo_log::path_for(other), wal);
  CHECK_THROWS_WITH_AS(pmem::open(path, durability::process),
                       doctest::Contains("belongs to another pool"), ftm::bad_pool);
  CHECK(read_all(path) == bytes);
  fs::remove(wal);
  fs::rename(wal.string() + ".away", wal);
  {
    auto pool = pmem::open(path, durability::process);  // from power to process
    CHECK(value_of(pool, "x") == 9);
  }
  // A foreign log beside a `process` pool is replaced when the pool goes to `power`.
  fs::remove(wal);
  fs::copy_file(redo::redo_log::path_for(other), wal);
  {
    auto pool = pmem::open(path, durability::power);
    CHECK(value_of(pool, "x") == 9);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  auto pool = pmem::open(path, durability::power);  // alone: rebuilt from the new log
  CHECK(value_of(pool, "x") == 10);
}

TEST_CASE(
    "power: a checkpoint completes a dead committer, and one killed mid-checkpoint is redone") {
  struct counts final : redo::log_io {
    std::uint64_t pool_flushes = 0;
    void flush_pool(redo::redo_log& log) noexcept override {
      ++pool_flushes;
      log_io::flush_pool(log);
    }
  } seen;
  const fs::path path = ftm_test::scratch_file("power");
  auto opts = power_small;
  opts.log_size = 64 * 1024;  // a checkpoint every dozen 5 KiB records
  auto pool = pmem::create(path, opts);
  ftm::atomically(pool, [](auto& tx) {
    static_cast<void>(tx.template root<counter>("x"));
    static_cast<void>(tx.template root<blob>("big"));
  });
  auto write_big = [](pmem& p, std::uint64_t v) {
    ftm::atomically(p, [&](auto& tx) {
      auto b = tx.open(tx.template root<blob>("big"));
      std::fill(std::begin(b->words), std::end(b->words), v);
    });
  };
  // A committer dies with its record logged and its phase 2 not done.
  const int died = in_child([&] {
    auto mine = pmem::open(path, durability::power);
    ftm::detail::arm_fault("log.after_append", 1);
    ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
    return 0;
  });
  REQUIRE(WIFSIGNALED(died));
  redo::io_seam = &seen;
  for (std::uint64_t v = 1; v <= 30; ++v)
    write_big(pool, v);  // fills the log: a checkpoint must wait for the dead one
  CHECK(seen.pool_flushes > 0);
  CHECK(value_of(pool, "x") == 7);
  // A process dies in a checkpoint, holding the append lock.
  const int died_again = in_child([&] {
    auto mine = pmem::open(path, durability::power);
    ftm::detail::arm_fault("log.mid_checkpoint", 1);
    for (std::uint64_t v = 100; v < 200; ++v)
      write_big(mine, v);
    return 0;
  });
  REQUIRE(WIFSIGNALED(died_again));
  const auto before = seen.pool_flushes;
  write_big(pool, 500);  // its append finds the lock's owner dead and checkpoints again
  CHECK(seen.pool_flushes > before);
  redo::io_seam = nullptr;
  CHECK(pool.check().ok());
  // A fresh process, alone on the pool: it rebuilds it from the log.
  const int fresh = in_child([&] {
    auto p = pmem::open(path, durability::power);
    return value_of(p, "x") == 7 &&
                   ftm::atomically(p,
                                   [](auto& tx) {
                                     return tx.open_read(tx.template root<blob>("big"))->words[639];
                                   }) == 500 &&
                   p.check().ok()
               ? 0
               : 1;
  });
  CHECK(WIFEXITED(fresh));
  CHECK(WEXITSTATUS(fresh) == 0);
}

// ---- the cache-line mode (ftm::flush_method::cache_lines) ------------------------------
//
// No file system here maps with MAP_SYNC (no DAX device): these tests force the mode
// on the page cache (redo::force_cache_lines_on_page_cache), where its stores are not
// durable, and check what it does and in which order: which bytes each fence makes
// durable, in the simulator above.

namespace {

/// Turns the forced cache-line mode on (or off) for a scope.
class forced_cache_lines {
 public:
  explicit forced_cache_lines(bool on = true) : was_(redo::force_cache_lines_on_page_cache) {
    redo::force_cache_lines_on_page_cache = on;
  }
  forced_cache_lines(const forced_cache_lines&) = delete;
  forced_cache_lines& operator=(const forced_cache_lines&) = delete;
  ~forced_cache_lines() { redo::force_cache_lines_on_page_cache = was_; }

 private:
  bool was_;
};

constexpr pmem::options lines_small{.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 256 * 1024,
                                    .flush = ftm::flush_method::cache_lines};

/// Whether a file in `dir` maps with MAP_SYNC (a DAX file system).
bool maps_with_map_sync(const fs::path& dir) {
  const fs::path probe = dir / fmt::format("ftm-map-sync-probe-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, 4096) == 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
  const bool ok = p != MAP_FAILED;
  if (ok) ::munmap(p, 4096);
  ::close(fd);
  fs::remove(probe);
  return ok;
}

}  // namespace

TEST_CASE("power, cache lines: every crash image of a simulated power loss recovers to a prefix") {
  power_loss_sim sim(20261128, true, ftm::flush_method::cache_lines);
  sim.sample = image_sample;
  const auto r = sim.run(30);
  MESSAGE(fmt::format("power loss, cache lines: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.unit == 8);
  CHECK(r.images > 800 / image_sample);
  CHECK(r.recovery_crashes > 50 / image_sample);
  CHECK(r.checkpoints > 3);
  CHECK(r.line_fences > 30);  // one per record, two per new epoch: the mode was used
  // A record is hundreds of words: its fence is sampled, a new epoch's header enumerated.
  CHECK(r.sampled_points > 0);
  CHECK(r.max_n > 100);
}

TEST_CASE("power, cache lines: a group commit's crash images recover to a prefix") {
  // Each append fences its own record: the round's records are never pending together.
  power_loss_sim sim(20261129, true, ftm::flush_method::cache_lines);
  const auto r = sim.run_group(1, 4);
  MESSAGE(fmt::format("power loss, cache lines, group commit: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.line_fences >= 4);
}

TEST_CASE("power, cache lines: the power-loss checker catches a record's last line not flushed") {
  power_loss_sim sim(13, false, ftm::flush_method::cache_lines);
  sim.order = power_loss_sim::broken::short_flush;
  const auto r = sim.run(4);
  MESSAGE(fmt::format("broken flush (last line left out): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  CHECK(r.failures > 0);
}

TEST_CASE("power, cache lines: the power-loss checker catches an epoch header torn with no copy") {
  power_loss_sim sim(17, false, ftm::flush_method::cache_lines);
  sim.order = power_loss_sim::broken::single_header;
  const auto r = sim.run(20);
  MESSAGE(fmt::format("broken header (no second copy): {} of {} images failed, e.g. {}", r.failures,
                      r.images, r.first_failure));
  CHECK(r.checkpoints > 1);
  CHECK(r.failures > 0);
}

TEST_CASE(
    "power: flush_method::cache_lines where the log cannot map with MAP_SYNC is an io_error, "
    "and automatic flushes with fdatasync there") {
  const forced_cache_lines off(false);
  std::vector<fs::path> dirs{ftm_test::scratch_dir()};
  if (fs::is_directory("/dev/shm")) dirs.emplace_back("/dev/shm");  // tmpfs
  for (const auto& dir : dirs) {
    CAPTURE(dir);
    const fs::path path = dir / fmt::format("ftm-lines-{}.ftm", ::getpid());
    const fs::path wal = redo::redo_log::path_for(path);
    if (maps_with_map_sync(dir)) {
      // A DAX file system: the mode is there, and automatic takes it.
      MESSAGE(fmt::format("{} maps with MAP_SYNC: cache lines are used", dir.string()));
      auto pool = pmem::create(path, lines_small);
      CHECK(pool.log_flush() == ftm::flush_method::cache_lines);
      auto other = pmem::open(path, durability::power);
      CHECK(other.log_flush() == ftm::flush_method::cache_lines);
    } else {
      const std::string names_log =
          fmt::format("cannot flush the redo log '{}' by cache lines", wal.string());
      CHECK_THROWS_WITH_AS(pmem::create(path, lines_small), doctest::Contains(names_log.c_str()),
                           ftm::io_error);
      CHECK_THROWS_WITH_AS(pmem::create(path, lines_small), doctest::Contains("MAP_SYNC"),
                           ftm::io_error);
      CHECK(!fs::exists(path));  // nothing made
      CHECK(!fs::exists(wal));
      {
        auto pool = pmem::create(path, power_small);  // automatic
        CHECK(pool.log_flush() == ftm::flush_method::fdatasync);
        ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 3; });
      }
      // Alone on the pool, a cache-line opener recovers it and then cannot flush: the
      // pool is left as the log says.
      CHECK_THROWS_WITH_AS(pmem::open(path, lines_small), doctest::Contains("MAP_SYNC"),
                           ftm::io_error);
      auto pool = pmem::open(path, durability::power);
      CHECK(pool.log_flush() == ftm::flush_method::fdatasync);
      CHECK(value_of(pool, "x") == 3);
      CHECK(pool.check().ok());
    }
    fs::remove(path);
    fs::remove(wal);
  }
  // A `process` pool has no log to flush.
  const fs::path path = ftm_test::scratch_file("process");
  auto pool = pmem::create(path);
  CHECK(!pool.log_flush().has_value());
}

TEST_CASE("power, cache lines: every process of a pool flushes its log the same way") {
  const forced_cache_lines on;
  const fs::path path = ftm_test::scratch_file("power");
  auto pool = pmem::create(path, lines_small);
  CHECK(pool.log_flush() == ftm::flush_method::cache_lines);
  ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 1; });
  auto by_sync = power_small;
  by_sync.flush = ftm::flush_method::fdatasync;
  CHECK_THROWS_WITH_AS(pmem::open(path, by_sync),
                       doctest::Contains("redo log flushed by cache_lines in other processes"),
                       ftm::usage_error);
  auto second = pmem::open(path, durability::power);  // automatic: as the others do
  CHECK(second.log_flush() == ftm::flush_method::cache_lines);
  ftm::atomically(second, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  CHECK(value_of(pool, "x") == 2);
  const auto seen = pmem::inspect(path).header();
  CHECK(seen.level == durability::power);
  CHECK(seen.log_flush == ftm::flush_method::cache_lines);
}

TEST_CASE("power, cache lines: two processes commit at once, without a log fdatasync") {
  const forced_cache_lines on;
  struct counts final : redo::log_io {
    std::atomic<std::uint64_t> syncs{0}, fences{0};
    void flush(redo::redo_log& log) noexcept override {
      syncs.fetch_add(1);
      log_io::flush(log);
    }
    void persist(redo::redo_log& log, std::uint64_t offset, std::size_t n) noexcept override {
      (offset + n > log.mapped_bytes() ? syncs : fences).fetch_add(1);  // past it: fdatasync
      log_io::persist(log, offset, n);
    }
  };
  const ftm_test::shared_page<counts> page;
  counts* shared = page.get();
  constexpr int per_thread = 300;
  // The fresh process alone on the pool rebuilds it from the log: no record was lost
  // or mixed with another.
  CHECK(commit_from_two_processes(ftm_test::scratch_file("power"), lines_small, per_thread, shared,
                                  [](pmem& pool) {
                                    return pool.log_flush() == ftm::flush_method::cache_lines &&
                                           pool.opening_recovery().redone > 0;
                                  }));
  MESSAGE(fmt::format("cache lines: {} commits by 4 threads in 2 processes, {} fences, {} syncs",
                      4 * per_thread, shared->fences.load(), shared->syncs.load()));
  CHECK(shared->syncs.load() == 0);
  CHECK(shared->fences.load() >= 4 * per_thread);
}

TEST_CASE("power, cache lines: a committer killed mid-commit is completed by another process") {
  const forced_cache_lines on;
  check_killed_committer(lines_small);
}
