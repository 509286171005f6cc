/// \file
/// Crash tests of the stable containers: a worker process changes a `stable_hash_map`,
/// a `stable_map`, both again with `stable_string` keys and values the maps own (keys
/// that share a 30-byte prefix or a whole chunk, values past a chunk), a `stable_string`
/// and a `stable_vector` in a pool file, one
/// deterministic operation per transaction (inserts that split buckets, leaves and
/// inner nodes, erases, string growth past chunks and shrinking, vector growth and
/// shrinking), and is killed by SIGKILL at a random instant after it has committed.
/// The parent then opens the pool (which recovers it), walks every container
/// (`verify()`), and compares its content with a model that has applied exactly the
/// operations the pool's own counter says committed: all or nothing. On `pmem` with
/// durability `process` and `power`.
///
/// Kills are paced by progress: the parent waits until the worker has committed since
/// it started, then sleeps a random 0-3 ms (0-30 ms for `power`). FTM_CRASH_KILLS sets the number
/// of kills (default 40, a quarter in sanitizer builds; `power`, whose commits wait for the disk,
/// half as many); FTM_CRASH_SEED the seed.

#include "../engines.hpp"

#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

using pool_t = ftm::engines::pmem;
using tx_t = ftm::transaction<pool_t>;
using hash_t = ftm::stable_hash_map<std::uint64_t, std::uint64_t>;
using tree_t = ftm::stable_map<std::uint64_t, std::uint64_t>;
using string_hash_t = ftm::stable_hash_map<ftm::stable_string, ftm::stable_string>;
using string_tree_t = ftm::stable_map<ftm::stable_string, ftm::stable_string>;

/// The pool's record of the work: the containers and how many operations committed.
struct workload {
  ftm::stable<hash_t> hash;
  ftm::stable<tree_t> tree;
  ftm::stable<ftm::stable_string> text;
  ftm::stable<ftm::stable_vector<std::uint64_t>> numbers;
  ftm::stable<string_hash_t> string_hash;
  ftm::stable<string_tree_t> string_tree;
  std::uint64_t applied;
};

/// What operation `i` does, the same in the worker and in the model.
struct operation {
  std::uint64_t inserts[4];
  std::uint64_t erase;
  std::string append;
  std::uint64_t shrink_text_to;  // ~0: keep
  std::uint64_t push;
  std::uint64_t shrink_numbers_to;  // ~0: keep
  std::string string_keys[3];
  std::string string_values[3];
  std::string string_erase;
};

constexpr std::uint64_t key_range = 6000;
constexpr std::uint64_t keep = ~std::uint64_t{0};
// The maps of strings settle near three quarters of this many keys: about 9 KiB each
// per map (a key past 4 KiB takes two directory objects and two chunks), 8 MiB in all,
// well inside the 32 MiB bank however many operations a fast machine runs.
constexpr std::uint64_t string_key_range = 600;

/// String key `k`: short, 40 bytes sharing a 30-byte prefix, or 4,200 bytes sharing
/// 4,100 (past the first chunk).
std::string string_key(std::uint64_t k) {
  switch (k % 3) {
    case 0: return "s" + std::to_string(k);
    case 1: return "a shared prefix, 30 bytes long" + std::to_string(k * 7919);
    default: return std::string(4100, 'q') + std::to_string(k) + std::string(90, 'r');
  }
}

operation operation_at(std::uint64_t i, std::uint64_t text_size, std::uint64_t numbers_size) {
  std::mt19937_64 rng(i * 0x9e3779b97f4a7c15ULL + 1);
  operation op{};
  for (auto& k : op.inserts)
    k = rng() % key_range;
  op.erase = rng() % key_range;
  // Grows by 1-9 KiB, so appends cross chunks of 4 KiB; past 96 KiB, shrinks.
  op.append.resize(1024 + rng() % 8192);
  for (auto& c : op.append)
    c = static_cast<char>('a' + rng() % 26);
  op.shrink_text_to = text_size > 96 * 1024 ? rng() % 8192 : keep;
  op.push = i;
  op.shrink_numbers_to = numbers_size > 6000 ? rng() % 600 : keep;
  for (int j = 0; j < 3; ++j) {
    op.string_keys[j] = string_key(rng() % string_key_range);
    // Mostly inline or short; one in eight between 5,000 and 13,000 bytes (2-4 chunks).
    op.string_values[j].resize(rng() % 8 == 0 ? 5000 + rng() % 8000 : rng() % 40);
    for (auto& c : op.string_values[j])
      c = static_cast<char>('A' + rng() % 26);
  }
  op.string_erase = string_key(rng() % string_key_range);
  return op;
}

struct model {
  std::unordered_map<std::uint64_t, std::uint64_t> hash;
  std::map<std::uint64_t, std::uint64_t> tree;
  std::string text;
  std::vector<std::uint64_t> numbers;
  std::unordered_map<std::string, std::string> string_hash;
  std::map<std::string, std::string> string_tree;
  std::uint64_t applied = 0;

  void apply_next() {
    const std::uint64_t i = ++applied;
    const operation op = operation_at(i, text.size(), numbers.size());
    for (std::uint64_t k : op.inserts) {
      hash[k] = i;
      tree[k] = i;
    }
    hash.erase(op.erase);
    tree.erase(op.erase);
    if (op.shrink_text_to != keep) text.resize(op.shrink_text_to);
    text += op.append;
    if (op.shrink_numbers_to != keep) numbers.resize(op.shrink_numbers_to);
    for (int j = 0; j < 8; ++j)
      numbers.push_back(op.push * 8 + j);
    for (int j = 0; j < 3; ++j) {
      string_hash[op.string_keys[j]] = op.string_values[j];
      string_tree[op.string_keys[j]] = op.string_values[j];
    }
    string_hash.erase(op.string_erase);
    string_tree.erase(op.string_erase);
  }
};

/// Operation `w.applied + 1`, in the worker's transaction.
void apply_next(tx_t& tx, ftm::stable<workload> ref) {
  auto w = tx.open(ref);
  const std::uint64_t i = ++w->applied;
  auto hash = ftm::open(tx, w->hash);
  auto tree = ftm::open(tx, w->tree);
  auto text = ftm::open(tx, w->text);
  auto numbers = ftm::open(tx, w->numbers);
  const operation op = operation_at(i, text.size(), numbers.size());
  for (std::uint64_t k : op.inserts) {
    hash.insert_or_assign(k, i);
    tree.insert_or_assign(k, i);
  }
  hash.erase(op.erase);
  tree.erase(op.erase);
  if (op.shrink_text_to != keep) text.resize(op.shrink_text_to);
  text.append(op.append);
  if (op.shrink_numbers_to != keep) numbers.resize(op.shrink_numbers_to);
  for (std::uint64_t j = 0; j < 8; ++j)
    numbers.push_back(op.push * 8 + j);
  auto string_hash = ftm::open(tx, w->string_hash);
  auto string_tree = ftm::open(tx, w->string_tree);
  for (int j = 0; j < 3; ++j) {
    string_hash.insert_or_assign(op.string_keys[j], op.string_values[j]);
    string_tree.insert_or_assign(op.string_keys[j], op.string_values[j]);
  }
  string_hash.erase(op.string_erase);
  string_tree.erase(op.string_erase);
}

/// Walks every container and compares it with the model; the number of operations the
/// pool says committed.
std::uint64_t verify(pool_t& pool, model& m, const char* when) {
  return ftm::atomically(pool, [&](tx_t& tx) {
    INFO(when);
    const auto ref = tx.root<workload>("work");
    const auto w = tx.open_read(ref);
    while (m.applied < w->applied)
      m.apply_next();
    REQUIRE(m.applied == w->applied);
    auto hash = ftm::open_read(tx, w->hash);
    auto tree = ftm::open_read(tx, w->tree);
    auto text = ftm::open_read(tx, w->text);
    auto numbers = ftm::open_read(tx, w->numbers);
    hash.verify();
    tree.verify();
    REQUIRE(hash.size() == m.hash.size());
    for (const auto& e : hash)
      REQUIRE(m.hash.at(e.first) == e.second);
    REQUIRE(std::ranges::equal(tree, m.tree, [](const auto& a, const auto& b) {
      return a.first == b.first && a.second == b.second;
    }));
    REQUIRE(text.size() == m.text.size());
    REQUIRE(text == m.text);
    REQUIRE(std::ranges::equal(numbers, m.numbers));
    auto string_hash = ftm::open_read(tx, w->string_hash);
    auto string_tree = ftm::open_read(tx, w->string_tree);
    string_hash.verify();
    string_tree.verify();
    REQUIRE(string_hash.size() == m.string_hash.size());
    for (const auto& e : string_hash)
      REQUIRE(e.second == m.string_hash.at(e.first.str()));
    REQUIRE(std::ranges::equal(string_tree, m.string_tree, [](const auto& a, const auto& b) {
      return a.first == b.first && a.second == b.second;
    }));
    return w->applied;
  });
}

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : fallback;
}

/// The worker's count of commits, in memory shared with the parent.
struct progress {
  std::atomic<std::uint64_t> committed;
};

template <ftm::durability Level>
void run_kills(std::uint64_t default_kills) {
  const auto path = ftm_test::scratch_file("containers");
  {
    auto pool = pool_t::create(path, {.bank_size = std::size_t{32} << 20,
                                      .max_objects_per_transaction = 16384,
                                      .level = Level,
                                      .log_size = std::size_t{8} << 20});
    ftm::atomically(pool, [](tx_t& tx) {
      auto w = tx.open(tx.root<workload>("work"));
      w->hash = tx.create<hash_t>();
      w->tree = tx.create<tree_t>();
      w->text = tx.create<ftm::stable_string>();
      w->numbers = tx.create<ftm::stable_vector<std::uint64_t>>();
      w->string_hash = tx.create<string_hash_t>();
      w->string_tree = tx.create<string_tree_t>();
    });
  }
  void* page =
      ::mmap(nullptr, sizeof(progress), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  auto* shared = ::new (page) progress{};

  const std::uint64_t kills = std::max<std::uint64_t>(
      env_or("FTM_CRASH_KILLS", default_kills) / ftm_test::sanitizer_divisor, 5);
  const std::uint64_t seed = env_or("FTM_CRASH_SEED", std::random_device{}());
  INFO("FTM_CRASH_SEED=", seed);
  std::mt19937_64 rng(seed);
  model m;
  std::uint64_t mid = 0;  // kills after which the pool held more than the worker reported
  for (std::uint64_t kill = 0; kill < kills; ++kill) {
    shared->committed.store(0);
    std::fflush(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(5);
      try {
        auto pool = pool_t::open(path, Level);
        const auto ref = ftm::atomically(pool, [](tx_t& tx) { return tx.root<workload>("work"); });
        for (;;) {
          ftm::atomically(pool, [&](tx_t& tx) { apply_next(tx, ref); });
          shared->committed.fetch_add(1, std::memory_order_release);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "containers crash worker: %s\n", e.what());
      }
      ::_exit(3);
    }
    // After its first commit, at a random instant.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (shared->committed.load(std::memory_order_acquire) == 0) {
      int status = 0;
      REQUIRE_MESSAGE(::waitpid(pid, &status, WNOHANG) == 0, "the worker ended before a commit");
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "the worker committed nothing");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    // A `power` commit waits for the disk: a longer window, to let several commit.
    std::this_thread::sleep_for(
        std::chrono::microseconds(rng() % (Level == ftm::durability::power ? 30001 : 3001)));
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
      REQUIRE(errno == EINTR);
    REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL),
                    "the worker was not killed: wait status " << status);

    const std::uint64_t before = m.applied;
    const std::uint64_t reported = shared->committed.load();
    auto pool = pool_t::open(path, Level);  // recovers what the worker left
    const std::uint64_t applied = verify(pool, m, "after a kill");
    // Every commit the worker saw return is there; at most the one it died in besides.
    CHECK(applied >= before + reported);
    CHECK(applied <= before + reported + 1);
    if (applied == before + reported + 1) ++mid;
  }
  MESSAGE(
      fmt::format("{} kills, {} operations committed, {} committed but not reported; "
                  "string {} bytes, hash map {} keys, ordered map {} keys, maps of strings {} "
                  "and {} keys",
                  kills, m.applied, mid, m.text.size(), m.hash.size(), m.tree.size(),
                  m.string_hash.size(), m.string_tree.size()));
  ::munmap(page, sizeof(progress));
  std::filesystem::remove(path);
  std::filesystem::remove(ftm::detail::redo::redo_log::path_for(path));
}

}  // namespace

TEST_CASE("crash: container operations killed at random instants are all or nothing (process)") {
  run_kills<ftm::durability::process>(40);
}

TEST_CASE("crash: container operations killed at random instants are all or nothing (power)") {
  run_kills<ftm::durability::power>(20);
}
