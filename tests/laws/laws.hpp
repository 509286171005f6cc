// The engine laws as a test suite: what every model of `ftm::engine` guarantees,
// checked through the public API (`ftm::transaction`, `ftm::atomically`), never
// through how an engine keeps it. docs/design.md, "Adding an engine", says how to run
// it on a new engine; tests/laws/laws_test.cpp runs it on ftm's own.
//
//   FTM_ENGINE_LAWS(E...)              atomicity (commit, abort, exceptions),
//                                      isolation (serializability, no torn reads),
//                                      roots, usage errors: every engine
//   FTM_FORK_SHARED_ENGINE_LAWS(E...)  all of the above, and the laws across processes
//                                      (a child killed mid-transaction is undone, its
//                                      locks freed; what it committed stays): engines
//                                      that model `ftm::fork_shared_engine`
//
// A test makes its pool with `ftm_test::engine_factory<E>::make(bytes)`, which for an
// engine constructible from a capacity in bytes needs no specialization.
//
// Include this header in one source file of a test executable: it defines the tests.
#ifndef FTM_TESTS_LAWS_LAWS_HPP
#define FTM_TESTS_LAWS_LAWS_HPP

#include "../engines.hpp"
#include "../process.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace ftm_laws {

struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance), (std::uint32_t, ops));
};

struct node {
  BOOST_HANA_DEFINE_STRUCT(node, (std::int32_t, value), (ftm::stable<node>, next));
};

struct big {
  std::array<std::uint8_t, 100000> bytes;
};

struct other_layout {
  BOOST_HANA_DEFINE_STRUCT(other_layout, (std::int32_t, balance), (std::uint32_t, ops));
};

template <class E>
std::int64_t balance_of(E& e, ftm::stable<account> a) {
  return ftm::atomically(e, [&](auto& tx) { return tx.open_read(a)->balance; });
}

}  // namespace ftm_laws

using namespace ftm_laws;  // NOLINT: the law bodies name the types above unqualified

// ---- atomicity, roots, usage errors: every engine -----------------------------------

TEST_CASE_TEMPLATE_DEFINE("atomicity: a commit makes every effect visible to later transactions", E,
                          ftm_law_commit_visible) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{100, 0}); });
  CHECK(a);
  CHECK(balance_of(*pool, a) == 100);
  ftm::atomically(*pool, [&](auto& tx) {
    auto acc = tx.open(a);
    acc->balance -= 30;
    ++acc->ops;
  });
  CHECK(balance_of(*pool, a) == 70);
}

TEST_CASE_TEMPLATE_DEFINE("atomicity: explicit begin, commit and abort, as in the paper", E,
                          ftm_law_explicit_transactions) {
  auto pool = ftm_test::engine_factory<E>::make();
  ftm::transaction tx{*pool};
  CHECK_FALSE(tx.active());
  tx.begin();
  auto a = tx.create(account{5, 0});
  tx.commit();
  CHECK_FALSE(tx.active());

  tx.begin();
  tx.open(a)->balance = 1000;
  tx.abort();
  CHECK(balance_of(*pool, a) == 5);

  tx.begin();  // the same transaction object begins again
  {
    auto acc = tx.open(a);
    acc->balance = 6;
    acc.close();
    CHECK_FALSE(acc.is_open());
  }
  tx.commit();
  CHECK(balance_of(*pool, a) == 6);
}

TEST_CASE_TEMPLATE_DEFINE("atomicity: a destroyed active transaction aborts, never commits", E,
                          ftm_law_destroyed_aborts) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });
  {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(a)->balance = 99;
  }
  CHECK(balance_of(*pool, a) == 1);
}

TEST_CASE_TEMPLATE_DEFINE(
    "atomicity: an exception aborts atomically(), undoing its writes and creations, and is "
    "rethrown",
    E, ftm_law_exception_aborts) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{10, 0}); });
  ftm::stable<account> created;
  CHECK_THROWS_WITH_AS(ftm::atomically(*pool,
                                       [&](auto& tx) {
                                         tx.open(a)->balance = -1;
                                         created = tx.create(account{7, 7});
                                         throw std::runtime_error("insufficient funds");
                                       }),
                       "insufficient funds", std::runtime_error);
  CHECK(balance_of(*pool, a) == 10);
  // The object created by the aborted transaction does not exist.
  CHECK_THROWS_AS(balance_of(*pool, created), ftm::usage_error);
  const auto s = pool->stats();
  CHECK(s.aborts >= 1);
}

TEST_CASE_TEMPLATE_DEFINE("atomicity: an aborted create frees, an aborted destroy keeps", E,
                          ftm_law_aborted_create_destroy) {
  auto pool = ftm_test::engine_factory<E>::make();
  ftm::transaction tx{*pool};
  tx.begin();
  auto gone = tx.create(account{1, 0});
  tx.abort();
  try {
    balance_of(*pool, gone);
    FAIL("opening an object whose creation aborted must throw");
  } catch (const ftm::usage_error& e) {
    CHECK(std::string(e.what()).find("never committed") != std::string::npos);
  }

  auto kept = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{2, 0}); });
  tx.begin();
  tx.destroy(kept);
  tx.abort();
  CHECK(balance_of(*pool, kept) == 2);

  ftm::atomically(*pool, [&](auto& t) { t.destroy(kept); });
  CHECK_THROWS_AS(balance_of(*pool, kept), ftm::usage_error);
  // Destroying twice is caught too.
  CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto& t) { t.destroy(kept); }), ftm::usage_error);
}

TEST_CASE_TEMPLATE_DEFINE(
    "atomicity: an abort restores a large object, which can be destroyed and made again", E,
    ftm_law_large_objects) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto b = ftm::atomically(*pool, [](auto& tx) { return ftm::create<big>(tx); });
  ftm::atomically(*pool, [&](auto& tx) {
    auto v = tx.open(b);
    v->bytes.front() = 1;
    v->bytes.back() = 2;
  });
  ftm::transaction tx{*pool};
  tx.begin();
  tx.open(b)->bytes.back() = 9;
  tx.abort();
  auto back = ftm::atomically(*pool, [&](auto& t) { return t.open_read(b)->bytes.back(); });
  CHECK(back == 2);
  ftm::atomically(*pool, [&](auto& t) { t.destroy(b); });
  auto again = ftm::atomically(*pool, [](auto& tx) { return tx.template create<big>(); });
  CHECK(again);
}

TEST_CASE_TEMPLATE_DEFINE(
    "atomicity: a full pool says so, loses nothing, and works again after a free", E,
    ftm_law_full_pool) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{1} << 20);
  auto keep = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{77, 0}); });
  std::vector<ftm::stable<big>> bigs;
  try {
    for (;;)
      bigs.push_back(ftm::atomically(*pool, [](auto& tx) { return tx.template create<big>(); }));
  } catch (const ftm::pool_full& e) {
    CHECK(std::string(e.what()).find("no room") != std::string::npos);
  }
  REQUIRE_FALSE(bigs.empty());
  // Small objects until full, in one transaction that then aborts: nothing leaks.
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [](auto& tx) {
                                    for (;;)
                                      tx.create(account{1, 1});
                                  }),
                  ftm::error);
  CHECK(balance_of(*pool, keep) == 77);
  ftm::atomically(*pool, [&](auto& tx) { tx.destroy(bigs.back()); });
  bigs.pop_back();
  CHECK(ftm::atomically(*pool, [](auto& tx) { return tx.template create<big>(); }));
  CHECK_THROWS_AS(
      ftm::atomically(*pool,
                      [](auto& tx) { return tx.template create<std::array<char, 64 << 20>>(); }),
      ftm::pool_full);
}

TEST_CASE_TEMPLATE_DEFINE(
    "isolation: a transaction sees its own writes through every view; open_read's is const", E,
    ftm_law_own_writes) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{3, 0}); });
  ftm::atomically(*pool, [&](auto& tx) {
    auto r = tx.open_read(a);
    static_assert(std::is_const_v<std::remove_reference_t<decltype(*r)>>);
    const auto before = r->balance;
    auto w = tx.open(a);
    w->balance = before * 2;
    CHECK(r->balance == 6);  // both views see the transaction's own write
  });
  CHECK(balance_of(*pool, a) == 6);
}

TEST_CASE_TEMPLATE_DEFINE("objects: linked stable objects are read back through their links", E,
                          ftm_law_linked_objects) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto head = ftm::atomically(*pool, [](auto& tx) {
    ftm::stable<node> h;
    for (int i = 0; i < 100; ++i)
      h = tx.create(node{i, h});
    return h;
  });
  int sum = ftm::atomically(*pool, [&](auto& tx) {
    int s = 0;
    for (auto n = head; n;) {
      auto view = tx.open_read(n);
      s += view->value;
      n = view->next;
    }
    return s;
  });
  CHECK(sum == 4950);
}

TEST_CASE_TEMPLATE_DEFINE(
    "roots: named roots are found again, refuse another type, and vanish with an abort", E,
    ftm_law_roots) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto r1 = ftm::atomically(*pool, [](auto& tx) { return tx.template root<account>("bank"); });
  CHECK(balance_of(*pool, r1) == 0);  // value-initialised
  ftm::atomically(*pool, [&](auto& tx) { tx.open(r1)->balance = 42; });
  auto r2 = ftm::atomically(*pool, [](auto& tx) { return ftm::root<account>(tx, "bank"); });
  CHECK(r1 == r2);
  CHECK(balance_of(*pool, r2) == 42);
  try {
    ftm::atomically(*pool, [](auto& tx) { return tx.template root<other_layout>("bank"); });
    FAIL("a root of another type must be refused");
  } catch (const ftm::type_mismatch& e) {
    const std::string what = e.what();
    CHECK(what.find("'bank'") != std::string::npos);
    CHECK(what.find("other_layout") != std::string::npos);
    // The field that differs is named.
    CHECK(what.find(
              "field 1 is `balance: i64 @0` in the pool but `balance: i32 @0` in the program") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(ftm::atomically(*pool, [](auto& tx) { return tx.template root<account>(""); }),
                  ftm::invalid_argument);
  // A root created in an aborted transaction does not exist.
  {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.template root<account>("ghost");
    tx.abort();
  }
  auto ghost = ftm::atomically(*pool, [](auto& tx) { return tx.template root<account>("ghost"); });
  CHECK(balance_of(*pool, ghost) == 0);
}

TEST_CASE_TEMPLATE_DEFINE("usage errors: misuse is a clear run-time error", E, ftm_law_misuse) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{3, 0}); });
  ftm::transaction tx{*pool};
  CHECK_THROWS_WITH_AS(tx.open(a), doctest::Contains("not active"), ftm::usage_error);
  CHECK_THROWS_AS(tx.commit(), ftm::usage_error);
  tx.begin();
  CHECK_THROWS_WITH_AS(tx.begin(), doctest::Contains("already active"), ftm::usage_error);
  CHECK_THROWS_WITH_AS(tx.open(ftm::stable<account>{}), doctest::Contains("null"),
                       ftm::usage_error);
  // A handle of the wrong type for the object it names.
  ftm::stable<big> wrong{ftm::detail::from_offset, a.offset()};
  CHECK_THROWS_WITH_AS(tx.open(wrong), doctest::Contains("bytes"), ftm::usage_error);
  tx.abort();
#if FTM_CHECKED
  tx.begin();
  auto acc = tx.open(a);
  acc.close();
  CHECK_THROWS_WITH_AS(static_cast<void>(acc->balance), doctest::Contains("after close"),
                       ftm::usage_error);
  auto again = tx.open(a);
  tx.commit();
  CHECK_THROWS_WITH_AS(static_cast<void>(again->balance), doctest::Contains("transaction ended"),
                       ftm::usage_error);
#endif
}

TEST_CASE_TEMPLATE_DEFINE(
    "usage errors: commit, abort or begin inside atomically's function is refused at the call", E,
    ftm_law_atomically_owns) {
  // Issue 8, item 12: the work was committed (or undone), then atomically reported
  // "the transaction is not active (call begin() first)".
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{3, 0}); });
  CHECK_THROWS_WITH_AS(ftm::atomically(*pool,
                                       [&](auto& tx) {
                                         tx.open(a)->balance = 10;
                                         tx.commit();
                                       }),
                       doctest::Contains("ftm::atomically, which commits it for you"),
                       ftm::usage_error);
  CHECK(balance_of(*pool, a) == 3);  // refused, so nothing was committed
  CHECK_THROWS_WITH_AS(ftm::atomically(*pool,
                                       [&](auto& tx) {
                                         tx.open(a)->balance = 11;
                                         tx.abort();
                                       }),
                       doctest::Contains("aborts it for you when your function throws"),
                       ftm::usage_error);
  CHECK(balance_of(*pool, a) == 3);
  CHECK_THROWS_WITH_AS(ftm::atomically(*pool, [&](auto& tx) { tx.begin(); }),
                       doctest::Contains("ftm::atomically, which began it"), ftm::usage_error);
  // Refused at the call, before any effect: a function that catches the refusal goes
  // on in the same transaction, which atomically then commits.
  const auto seen = ftm::atomically(*pool, [&](auto& tx) {
    tx.open(a)->balance = 5;
    try {
      tx.commit();
    } catch (const ftm::usage_error&) {
    }
    return tx.open_read(a)->balance;
  });
  CHECK(seen == 5);
  CHECK(balance_of(*pool, a) == 5);
  if constexpr (ftm::session_engine<E>) {
    ftm::session s{*pool};
    CHECK_THROWS_AS(ftm::atomically(s, [&](auto& tx) { tx.commit(); }), ftm::usage_error);
    CHECK_THROWS_AS(ftm::atomically(s, [&](auto& tx) { tx.abort(); }), ftm::usage_error);
    // The session's own explicit transactions still commit and abort as they please.
    auto tx = s.transaction();
    tx.begin();
    tx.open(a)->balance = 6;
    tx.commit();
    CHECK(balance_of(*pool, a) == 6);
  }
  // An explicit transaction still does.
  ftm::transaction tx{*pool};
  tx.begin();
  tx.open(a)->balance = 7;
  tx.abort();
  tx.begin();
  tx.open(a)->balance = 8;
  tx.commit();
  CHECK(balance_of(*pool, a) == 8);
}

TEST_CASE_TEMPLATE_DEFINE("usage errors: an opened handle that outlives its transaction object", E,
                          ftm_law_outlived_handle) {
  // Issue 8, item 13: the handle read its destroyed transaction (a heap-use-after-free
  // in checked builds, and in every build when it was closed or destroyed).
  auto pool = ftm_test::engine_factory<E>::make();
  std::array<ftm::stable<account>, 3> objects{};
  for (auto& o : objects)
    o = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{3, 0}); });
  for (const bool commit : {false, true}) {
    CAPTURE(commit);
    auto tx = std::make_unique<ftm::transaction<E>>(*pool);
    tx->begin();
    auto first = tx->open(objects[0]);
    auto middle = tx->open(objects[1]);
    auto last = tx->open_read(objects[2]);
    first->balance = 40;
    middle.close();  // leaves the transaction's list of open handles from its middle
    if (commit) tx->commit();
    tx.reset();  // destroyed (an active one aborts)
    CHECK_FALSE(first.is_open());
    CHECK_FALSE(last.is_open());
#if FTM_CHECKED
    CHECK_THROWS_WITH_AS(static_cast<void>(first->balance),
                         doctest::Contains("after its transaction object was destroyed"),
                         ftm::usage_error);
    CHECK_THROWS_WITH_AS(static_cast<void>(last->balance),
                         doctest::Contains("after its transaction object was destroyed"),
                         ftm::usage_error);
    CHECK_THROWS_WITH_AS(static_cast<void>(middle->balance), doctest::Contains("after close"),
                         ftm::usage_error);
#endif
    first.close();  // harmless, as is the destructor of `last` that follows
    CHECK(balance_of(*pool, objects[0]) == (commit ? 40 : 3));
  }
  // The pool is still usable: nothing was left locked.
  ftm::atomically(*pool, [&](auto& tx) {
    for (auto& o : objects)
      tx.open(o)->balance = 1;
  });
}

TEST_CASE_TEMPLATE_DEFINE(
    "usage errors: atomically() inside atomically() on the same pool is refused", E,
    ftm_law_nested_atomically) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto other = ftm_test::engine_factory<E>::make();
  CHECK_THROWS_WITH_AS(ftm::atomically(*pool, [&](auto&) { ftm::atomically(*pool, [](auto&) {}); }),
                       doctest::Contains("inside ftm::atomically on the same pool"),
                       ftm::usage_error);
  // Another pool is independent, and the refusal left no scope behind.
  CHECK(ftm::atomically(
            *pool, [&](auto&) { return ftm::atomically(*other, [](auto&) { return 1; }); }) == 1);
  CHECK(ftm::atomically(*pool, [](auto&) { return 2; }) == 2);
}

// ---- isolation: every engine --------------------------------------------------------

namespace ftm_laws {

struct versioned_account {
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
inline bool serializable(const std::vector<tx_record>& txs, std::size_t accounts,
                         std::string& why) {
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
  std::vector<ftm::stable<versioned_account>> acct(accounts);
  ftm::atomically(*pool, [&](auto& tx) {
    for (auto& a : acct)
      a = tx.create(versioned_account{initial, 0});
  });

  std::vector<std::vector<tx_record>> logs(threads);
  std::atomic<unsigned> started{0};
  std::atomic<unsigned> full_audits{0};
  std::atomic<bool> audit_failed{false};
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      // Odd threads keep a session; even ones claim a descriptor per transaction.
      auto atomically = [&](auto&& f) {
        if constexpr (ftm::session_engine<E>) {
          std::optional<ftm::session<E>> session;
          if (t % 2 == 1) session.emplace(*pool);
          return session ? ftm::atomically(*session, f) : ftm::atomically(*pool, f);
        } else {
          return ftm::atomically(*pool, f);
        }
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

}  // namespace ftm_laws

namespace ftm_laws {
/// An object whose words a writer always sets alike: a reader that sees two that
/// differ saw a write half-done.
struct wide {
  std::array<std::uint64_t, 64> words;
};

/// Writes `w` whole `rounds` times, every word of round `i` set to `i`: the writer that
/// the isolation laws race their readers against.
template <class E>
void write_whole_rounds(E& pool, ftm::stable<wide> w, std::uint64_t rounds) {
  for (std::uint64_t i = 1; i <= rounds; ++i) {
    ftm::atomically(pool, [&](auto& tx) {
      auto v = tx.open(w);
      for (auto& word : v->words)
        word = i;
    });
  }
}
}  // namespace ftm_laws

TEST_CASE_TEMPLATE_DEFINE("isolation: a reader never sees an object half-written", E,
                          ftm_law_no_torn_reads) {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = ftm::atomically(*pool, [](auto& tx) { return tx.create(wide{}); });
  const std::uint64_t rounds = 2000 / ftm_test::transaction_divisor<E>;
  std::atomic<bool> torn{false};
  std::thread writer([&] { write_whole_rounds(*pool, w, rounds); });
  std::uint64_t last = 0;
  for (std::uint64_t r = 0; r < rounds && last < rounds; ++r) {
    last = ftm::atomically(*pool, [&](auto& tx) {
      auto v = tx.open_read(w);
      for (auto word : v->words)
        if (word != v->words[0]) torn = true;
      return v->words[0];
    });
  }
  writer.join();
  CHECK_FALSE(torn.load());
  const auto final_value = ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(w)->words; });
  CHECK(final_value.front() == rounds);
  CHECK(final_value.back() == rounds);
}

TEST_CASE_TEMPLATE_DEFINE(
    "isolation: the parts of an object one transaction reads are of one value", E,
    ftm_law_parts_of_one_value) {
  // Through `detail::byte_access::open_read_part`, as the containers read: an engine
  // that models `ftm::partial_read_engine` copies each part, and one that does not is
  // read whole once; either way no two parts read with one record may differ.
  auto pool = ftm_test::engine_factory<E>::make();
  const auto w = ftm::atomically(*pool, [](auto& tx) { return tx.create(wide{}); });
  const ftm::object_type type = ftm::detail::object_type_of<wide>;
  const std::uint64_t rounds = 2000 / ftm_test::transaction_divisor<E>;
  std::atomic<bool> mixed{false};
  std::thread writer([&] { write_whole_rounds(*pool, w, rounds); });
  std::uint64_t last = 0;
  for (std::uint64_t r = 0; r < 4 * rounds && last < rounds; ++r) {
    last = ftm::atomically(*pool, [&](auto& tx) {
      std::uint64_t seen = 0;
      std::uint64_t first = 0;
      for (std::size_t k = 0; k < 64; ++k) {
        const std::size_t i = (k * 37 + r) % 64;  // the words in an order of their own
        std::uint64_t word = 0;
        std::memcpy(&word,
                    ftm::detail::byte_access::open_read_part(tx, w.offset(), type, 8 * i, 8, seen),
                    8);
        if (k == 0) first = word;
        if (word != first) mixed = true;
      }
      return first;
    });
  }
  writer.join();
  CHECK_FALSE(mixed.load());
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

TEST_CASE_TEMPLATE_DEFINE("isolation: random transfers among 1,000 accounts are serializable", E,
                          ftm_law_random_transfers) {
  constexpr unsigned n = ftm_test::transaction_divisor<E>;
  SUBCASE("2 threads") { random_transfers<E>(2, 1000, 10000 / n); }
  SUBCASE("4 threads") { random_transfers<E>(4, 1000, 5000 / n); }
}

TEST_CASE_TEMPLATE_DEFINE(
    "isolation: 4 threads on 4 hot accounts are serializable and conserve the total", E,
    ftm_law_hot_spot) {
  random_transfers<E>(4, 4, 5000 / ftm_test::transaction_divisor<E>);
}

TEST_CASE_TEMPLATE_DEFINE(
    "isolation: concurrent allocation and roots lose nothing and share nothing", E,
    ftm_law_concurrent_allocation) {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{8} << 20);
  constexpr unsigned threads = 4;
  std::vector<std::vector<ftm::stable<versioned_account>>> made(threads);
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto root = ftm::atomically(
          *pool, [](auto& tx) { return tx.template root<versioned_account>("shared"); });
      for (int i = 0; i < 300; ++i) {
        made[t].push_back(ftm::atomically(*pool, [&](auto& tx) {
          tx.open(root)->balance += 1;
          return tx.create(
              versioned_account{static_cast<std::int64_t>(t), static_cast<std::uint64_t>(i)});
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
  auto root = ftm::atomically(
      *pool, [](auto& tx) { return tx.template root<versioned_account>("shared"); });
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

// ---- across processes: fork-shared engines -------------------------------------------

TEST_CASE_TEMPLATE_DEFINE(
    "recovery: a process killed mid-transaction is undone, and recovery is idempotent", E,
    ftm_law_killed_mid_transaction) {
  static_assert(ftm::fork_shared_engine<E>,
                "FTM_FORK_SHARED_ENGINE_LAWS is for engines that model ftm::fork_shared_engine; "
                "use FTM_ENGINE_LAWS");
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{500, 0}); });
  ftm_test::killed_child([&] {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(a)->balance = -1;
    tx.create(account{1, 1});
    ftm_test::die_now();  // the processor fails mid-transaction
  });
  const ftm::recovery_report r = pool->recover();
  CHECK(r.undone == 1);
  CHECK(r.locks_released >= 2);
  CHECK(balance_of(*pool, a) == 500);
  // Recovery is idempotent: nothing left to do.
  const ftm::recovery_report again = pool->recover();
  CHECK(again.undone + again.redone == 0);
  CHECK(fmt::format("{}", r) ==
        fmt::format("undone: 1, redone: 0, locks released: {}", r.locks_released));
  // Its locks are free: the object can be written again.
  ftm::atomically(*pool, [&](auto& tx) { tx.open(a)->balance = 501; });
  CHECK(balance_of(*pool, a) == 501);
}

namespace ftm_laws {
/// What a worker process tells its parent: how many transfers it committed.
struct worker_progress {
  std::atomic<std::uint64_t> committed{0};
};
}  // namespace ftm_laws

TEST_CASE_TEMPLATE_DEFINE(
    "atomicity and durability: a process killed at any instant of its transfers leaves each "
    "whole, and keeps every one it committed",
    E, ftm_law_killed_at_any_instant) {
  static_assert(ftm::fork_shared_engine<E>,
                "FTM_FORK_SHARED_ENGINE_LAWS is for engines that model ftm::fork_shared_engine; "
                "use FTM_ENGINE_LAWS");
  constexpr std::uint32_t accounts = 8;
  constexpr std::int64_t initial = 1000;
  auto pool = ftm_test::engine_factory<E>::make();
  std::vector<ftm::stable<account>> acct(accounts);
  // `ledger.balance` counts the committed transfers: the durability witness.
  const auto ledger = ftm::atomically(*pool, [&](auto& tx) {
    for (auto& a : acct)
      a = tx.create(account{initial, 0});
    return tx.create(account{0, 0});
  });
  auto* progress = static_cast<worker_progress*>(::mmap(
      nullptr, sizeof(worker_progress), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(progress != MAP_FAILED);
  ::new (progress) worker_progress{};
  const std::uint64_t target = 200 / ftm_test::transaction_divisor<E>;

  for (int round = 0; round < 3; ++round) {
    CAPTURE(round);
    const std::uint64_t before = progress->committed.load();
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
      std::mt19937 rng(static_cast<unsigned>(::getpid()));
      for (std::uint64_t i = 0; i < 100'000'000; ++i) {  // until killed
        const std::uint32_t from = rng() % accounts;
        const std::uint32_t to = (from + 1 + rng() % (accounts - 1)) % accounts;
        ftm::atomically(*pool, [&](auto& tx) {
          auto a = tx.open(acct[from]);
          a->balance -= 7;
          ++a->ops;
          tx.open(ledger)->balance += 1;
          tx.open(acct[to])->balance += 7;
        });
        progress->committed.fetch_add(1);
      }
      ::_exit(0);
    }
    // The parent audits while the child transfers: no audit sees a transfer half-done.
    std::uint64_t audits = 0;
    for (std::uint64_t i = 0; i < 50'000'000 && progress->committed.load() < before + target; ++i) {
      const std::int64_t sum = ftm::atomically(*pool, [&](auto& tx) {
        std::int64_t s = 0;
        for (auto a : acct)
          s += tx.open_read(a)->balance;
        return s;
      });
      CHECK(sum == initial * accounts);
      ++audits;
      if (i % 64 == 63) std::this_thread::yield();
    }
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(progress->committed.load() >= before + target);
    pool->recover();
    const std::uint64_t reported = progress->committed.load();
    // Every lock the child held is free: write every account and the ledger.
    const auto [sum, transfers] = ftm::atomically(*pool, [&](auto& tx) {
      std::int64_t s = 0;
      for (auto a : acct) {
        auto v = tx.open(a);
        s += v->balance;
      }
      return std::pair{s, tx.open(ledger)->balance};
    });
    MESSAGE(fmt::format("round {}: {} transfers reported committed, {} in the pool, {} audits",
                        round, reported, transfers, audits));
    CHECK(sum == initial * accounts);
    // Each reported commit is kept; the transfer in flight may have committed unreported.
    CHECK(static_cast<std::uint64_t>(transfers) >= reported);
    CHECK(static_cast<std::uint64_t>(transfers) <= reported + 1);
    progress->committed.store(static_cast<std::uint64_t>(transfers));
  }
  progress->~worker_progress();
  ::munmap(progress, sizeof(worker_progress));
}

// ---- instantiation --------------------------------------------------------------------

/// Runs the laws every engine keeps on each engine listed: `FTM_ENGINE_LAWS(my_engine);`.
#define FTM_ENGINE_LAWS(...)                                              \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_commit_visible, __VA_ARGS__);         \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_explicit_transactions, __VA_ARGS__);  \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_destroyed_aborts, __VA_ARGS__);       \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_exception_aborts, __VA_ARGS__);       \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_aborted_create_destroy, __VA_ARGS__); \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_large_objects, __VA_ARGS__);          \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_full_pool, __VA_ARGS__);              \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_own_writes, __VA_ARGS__);             \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_linked_objects, __VA_ARGS__);         \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_roots, __VA_ARGS__);                  \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_misuse, __VA_ARGS__);                 \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_atomically_owns, __VA_ARGS__);        \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_outlived_handle, __VA_ARGS__);        \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_nested_atomically, __VA_ARGS__);      \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_no_torn_reads, __VA_ARGS__);          \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_parts_of_one_value, __VA_ARGS__);     \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_random_transfers, __VA_ARGS__);       \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_hot_spot, __VA_ARGS__);               \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_concurrent_allocation, __VA_ARGS__)

/// Runs every law, those across processes too, on each engine listed, which must
/// model `ftm::fork_shared_engine`: `FTM_FORK_SHARED_ENGINE_LAWS(my_engine);`.
#define FTM_FORK_SHARED_ENGINE_LAWS(...)                                  \
  FTM_ENGINE_LAWS(__VA_ARGS__);                                           \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_killed_mid_transaction, __VA_ARGS__); \
  TEST_CASE_TEMPLATE_INVOKE(ftm_law_killed_at_any_instant, __VA_ARGS__)

#endif  // FTM_TESTS_LAWS_LAWS_HPP
