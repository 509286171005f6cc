// Concurrency: serializable transfers among many accounts, and the wait-die policy.
#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

namespace {

struct account {
  std::int64_t balance;
  std::uint64_t version;  // incremented by every transaction that writes the account
};

/// What one committed transaction saw and did: the versions it read, the versions
/// it wrote. Enough to rebuild the precedence graph.
struct tx_record {
  std::vector<std::pair<std::uint32_t, std::uint64_t>> reads;
  std::vector<std::pair<std::uint32_t, std::uint64_t>> writes;
};

/// Conflict-serializability: the graph writer(v) -> reader(v) -> writer(v+1) over
/// every account must be acyclic, and every version written exactly once.
bool serializable(const std::vector<tx_record>& txs, std::size_t accounts, std::string& why) {
  const std::size_t n = txs.size();
  std::vector<std::map<std::uint64_t, std::size_t>> writer(accounts);
  for (std::size_t t = 0; t < n; ++t) {
    for (auto [acct, v] : txs[t].writes) {
      if (!writer[acct].emplace(v, t).second) {
        why = fmt::format("version {} of account {} was written twice (lost update)", v, acct);
        return false;
      }
    }
  }
  std::vector<std::vector<std::size_t>> next(n);
  std::vector<std::size_t> indegree(n, 0);
  auto edge = [&](std::size_t from, std::size_t to) {
    if (from == to) return;
    next[from].push_back(to);
    ++indegree[to];
  };
  for (std::size_t t = 0; t < n; ++t) {
    for (auto [acct, v] : txs[t].reads) {
      if (v != 0) {
        auto w = writer[acct].find(v);
        if (w == writer[acct].end()) {
          why = fmt::format("account {} was read at version {}, which no committed tx wrote", acct,
                            v);
          return false;
        }
        edge(w->second, t);
      }
      if (auto w = writer[acct].find(v + 1); w != writer[acct].end()) edge(t, w->second);
    }
    for (auto [acct, v] : txs[t].writes) {
      if (auto w = writer[acct].find(v + 1); w != writer[acct].end()) edge(t, w->second);
    }
  }
  std::vector<std::size_t> ready;
  for (std::size_t t = 0; t < n; ++t) {
    if (indegree[t] == 0) ready.push_back(t);
  }
  std::size_t ordered = 0;
  while (!ready.empty()) {
    auto t = ready.back();
    ready.pop_back();
    ++ordered;
    for (auto u : next[t]) {
      if (--indegree[u] == 0) ready.push_back(u);
    }
  }
  if (ordered != n) {
    why =
        fmt::format("the precedence graph has a cycle ({} of {} transactions ordered)", ordered, n);
    return false;
  }
  return true;
}

template <class E>
void random_transfers(unsigned threads, std::uint32_t accounts, unsigned per_thread) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{8} << 20);
  constexpr std::int64_t initial = 1000;
  std::vector<ftm::stable<account>> acct(accounts);
  ftm::atomically(*pool, [&](auto& tx) {
    for (auto& a : acct)
      a = tx.create(account{initial, 0});
  });

  std::vector<std::vector<tx_record>> logs(threads);
  std::atomic<unsigned> started{0};
  std::atomic<unsigned> full_audits{0};
  std::atomic<bool> audit_failed{false};
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      // Odd threads keep a session; even ones claim a descriptor per transaction.
      std::optional<ftm::session<E>> session;
      if (t % 2 == 1) session.emplace(*pool);
      auto atomically = [&](auto&& f) {
        return session ? ftm::atomically(*session, f) : ftm::atomically(*pool, f);
      };
      std::mt19937 rng(1234 + t);
      std::uniform_int_distribution<std::uint32_t> pick(0, accounts - 1);
      ++started;  // start together, so the transactions overlap
      while (started.load() < threads)
        std::this_thread::yield();
      for (unsigned i = 0; i < per_thread; ++i) {
        tx_record rec;
        if (i % 50 == 49) {
          // A read-only audit of every account: a consistent snapshot sums to the total.
          std::int64_t sum = atomically([&](auto& tx) {
            rec = {};
            std::int64_t s = 0;
            for (std::uint32_t k = 0; k < accounts; ++k) {
              auto v = tx.open_read(acct[k]);
              s += v->balance;
              rec.reads.emplace_back(k, v->version);
            }
            return s;
          });
          if (sum != initial * accounts) audit_failed = true;
          ++full_audits;
        } else {
          const std::uint32_t from = pick(rng);
          std::uint32_t to = pick(rng);
          if (to == from) to = (to + 1) % accounts;
          const std::int64_t amount = static_cast<std::int64_t>(rng() % 100);
          atomically([&](auto& tx) {
            rec = {};
            auto a = tx.open(acct[from]);
            auto b = tx.open(acct[to]);
            rec.reads.emplace_back(from, a->version);
            rec.reads.emplace_back(to, b->version);
            a->balance -= amount;
            b->balance += amount;
            rec.writes.emplace_back(from, ++a->version);
            rec.writes.emplace_back(to, ++b->version);
          });
        }
        logs[t].push_back(std::move(rec));
      }
    });
  }
  for (auto& w : workers)
    w.join();

  std::int64_t total = 0;
  ftm::atomically(*pool, [&](auto& tx) {
    for (auto a : acct)
      total += tx.open_read(a)->balance;
  });
  CHECK(total == initial * accounts);
  CHECK_FALSE(audit_failed.load());
  std::vector<tx_record> all;
  for (auto& l : logs)
    all.insert(all.end(), l.begin(), l.end());
  std::string why;
  CHECK_MESSAGE(serializable(all, accounts, why), why);
  const auto s = pool->stats();
  MESSAGE(fmt::format("{} threads, {} transactions, {} full audits; {}", threads, all.size(),
                      full_audits.load(), s));
  CHECK(s.commits >= all.size());
}

}  // namespace

TEST_CASE_TEMPLATE("random transfers among 1,000 accounts are serializable", E, FTM_TEST_ENGINES) {
  constexpr unsigned n = ftm_test::transaction_divisor<E>;
  SUBCASE("2 threads") { random_transfers<E>(2, 1000, 10000 / n); }
  SUBCASE("4 threads") { random_transfers<E>(4, 1000, 5000 / n); }
}

TEST_CASE_TEMPLATE("hot spot: 4 threads on 4 accounts conflict, retry and conserve", E,
                   FTM_TEST_ENGINES) {
  random_transfers<E>(4, 4, 5000 / ftm_test::transaction_divisor<E>);
}

TEST_CASE("the serializability checker catches lost updates and cycles") {
  std::string why;
  // Two transactions both read version 0 of account 0 and both wrote version 1.
  std::vector<tx_record> lost{{{{0, 0}}, {{0, 1}}}, {{{0, 0}}, {{0, 1}}}};
  CHECK_FALSE(serializable(lost, 1, why));
  CHECK(why.find("lost update") != std::string::npos);
  // T0 reads a@0 and writes b@1; T1 reads b@0 and writes a@1: each must precede the other.
  std::vector<tx_record> cycle{{{{0, 0}}, {{1, 1}}}, {{{1, 0}}, {{0, 1}}}};
  CHECK_FALSE(serializable(cycle, 2, why));
  CHECK(why.find("cycle") != std::string::npos);
  std::vector<tx_record> fine{{{{0, 0}}, {{0, 1}}}, {{{0, 1}}, {{0, 2}}}};
  CHECK(serializable(fine, 1, why));
}

TEST_CASE_TEMPLATE("wait-die: the younger dies, the older waits", E, FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto x = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });

  // Ages are explicit here: an engine may take a transaction's age as late as its
  // first conflict, so the order of begin() calls alone does not fix it.
  const ftm::begin_options old_age{.priority = 1}, young_age{.priority = 2};

  SUBCASE("a younger transaction that meets an older one's lock dies at once") {
    ftm::transaction older{*pool};
    older.begin(old_age);
    older.open(x)->balance = 2;
    std::thread([&] {
      ftm::transaction younger{*pool};
      younger.begin(young_age);
      CHECK_THROWS_AS(younger.open_read(x), ftm::conflict);
      // Having lost, it may only abort: a commit is refused.
      CHECK_THROWS_AS(younger.commit(), ftm::conflict);
    }).join();
    older.commit();
    CHECK(pool->stats().conflicts >= 1);
  }

  SUBCASE("an older transaction waits for a younger one's lock") {
    ftm::transaction older{*pool};
    older.begin(old_age);
    std::atomic<int> stage{0};
    std::atomic<bool> committed{false};
    std::thread younger_thread([&] {
      ftm::transaction younger{*pool};
      younger.begin(young_age);
      younger.open(x)->balance = 3;
      stage = 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      committed = true;
      younger.commit();
    });
    while (stage.load() == 0)
      std::this_thread::yield();
    const auto seen = older.open_read(x)->balance;  // blocks until the younger commits
    CHECK(committed.load());
    CHECK(seen == 3);
    older.commit();
    younger_thread.join();
  }

  SUBCASE("atomically() retries a conflict until the lock is free") {
    ftm::transaction holder{*pool};
    holder.begin(old_age);
    holder.open(x)->balance = 10;
    std::thread retrier(
        [&] { ftm::atomically(*pool, [&](auto& tx) { tx.open(x)->balance += 5; }); });
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    holder.commit();
    retrier.join();
    CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(x)->balance; }) == 15);
    CHECK(pool->stats().retries >= 1);
  }

  SUBCASE("a deadlock is broken: both transfers complete") {
    auto y = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });
    std::atomic<int> arrived{0};
    auto cross = [&](ftm::stable<account> first, ftm::stable<account> second) {
      bool waited = false;
      ftm::atomically(*pool, [&](auto& tx) {
        tx.open(first)->balance += 1;
        if (!waited) {  // both hold their first lock before either asks for the second
          waited = true;
          ++arrived;
          while (arrived.load() < 2)
            std::this_thread::yield();
        }
        tx.open(second)->balance -= 1;
      });
    };
    std::thread t1(cross, x, y);
    std::thread t2(cross, y, x);
    t1.join();
    t2.join();
    auto [bx, by] = ftm::atomically(*pool, [&](auto& tx) {
      return std::pair{tx.open_read(x)->balance, tx.open_read(y)->balance};
    });
    CHECK(bx == 1);
    CHECK(by == 1);
    CHECK(pool->stats().conflicts >= 1);
  }
}

TEST_CASE_TEMPLATE("concurrent allocation and roots", E, FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{8} << 20);
  constexpr unsigned threads = 4;
  std::vector<std::vector<ftm::stable<account>>> made(threads);
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto root =
          ftm::atomically(*pool, [](auto& tx) { return tx.template root<account>("shared"); });
      for (int i = 0; i < 300; ++i) {
        made[t].push_back(ftm::atomically(*pool, [&](auto& tx) {
          tx.open(root)->balance += 1;
          return tx.create(account{static_cast<std::int64_t>(t), static_cast<std::uint64_t>(i)});
        }));
        if (i % 3 == 0) {
          auto victim = made[t][made[t].size() / 2];
          ftm::atomically(*pool, [&](auto& tx) { tx.destroy(victim); });
          made[t].erase(made[t].begin() + static_cast<std::ptrdiff_t>(made[t].size() / 2));
        }
      }
    });
  }
  for (auto& w : workers)
    w.join();
  auto root = ftm::atomically(*pool, [](auto& tx) { return tx.template root<account>("shared"); });
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(root)->balance; }) == 1200);
  // Every surviving object is distinct and holds what its creator wrote.
  std::map<std::uint64_t, int> seen;
  for (unsigned t = 0; t < threads; ++t) {
    for (auto ref : made[t]) {
      CHECK(++seen[ref.offset()] == 1);
      CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(ref)->balance; }) == t);
    }
  }
}
