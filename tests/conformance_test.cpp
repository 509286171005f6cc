// The engine conformance suite: every engine must pass it unchanged.
#include "engines.hpp"
#include "process.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <boost/hana/define_struct.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

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

}  // namespace

template <>
struct fmt::formatter<account> : ftm::reflected_formatter<account> {};

ENGINE_TEST("create, open and commit make a change visible") {
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

ENGINE_TEST("explicit begin, commit and abort, as in the paper") {
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

ENGINE_TEST("a destroyed active transaction aborts, never commits") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });
  {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(a)->balance = 99;
  }
  CHECK(balance_of(*pool, a) == 1);
}

ENGINE_TEST("an exception aborts atomically() and is rethrown") {
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

ENGINE_TEST("aborted create frees, aborted destroy keeps") {
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

ENGINE_TEST("freeing a chunk and allocating other sizes in it, then aborting, leaves it whole") {
  struct hundred {
    std::array<std::uint64_t, 12> words;
  };
  struct forty {
    std::array<std::uint64_t, 5> words;
  };
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{1} << 20);
  // Leave payload bytes in the second bank where smaller blocks' headers will be.
  auto h = ftm::atomically(*pool, [](auto& tx) {
    return tx.create(hundred{{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}});
  });
  ftm::atomically(*pool, [&](auto& tx) { tx.destroy(h); });
  // Not structured bindings: clang 14 cannot capture them in lambdas.
  const auto s0 = ftm::atomically(*pool, [](auto& tx) {
    return tx.create(forty{{1, 1, 1, 1, 1}});
  });
  const auto s1 = ftm::atomically(*pool, [](auto& tx) {
    return tx.create(forty{{2, 2, 2, 2, 2}});
  });
  {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.destroy(s0);
    tx.destroy(s1);  // the chunk is empty now, but only in this transaction
    tx.template create<hundred>();
    tx.abort();
  }
  REQUIRE_MESSAGE(pool->check().ok(), fmt::format("{}", fmt::join(pool->check().problems, "; ")));
  const auto first = ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(s1)->words[0]; });
  CHECK(first == 2);
}

ENGINE_TEST("a write lock lost to an older reader is given back at once") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{10, 0}); });
  ftm::transaction reader{*pool};
  reader.begin({.priority = 1});
  CHECK(reader.open_read(a)->balance == 10);
  ftm::transaction writer{*pool};
  writer.begin({.priority = 2});
  CHECK_THROWS_AS(writer.open(a), ftm::conflict);
  // A transaction that carries on after losing must not find the object "held".
  CHECK_THROWS_AS(writer.open(a), ftm::conflict);
  CHECK_THROWS_AS(writer.commit(), ftm::conflict);
  reader.commit();
  CHECK(balance_of(*pool, a) == 10);
  CHECK(pool->check().ok());
}

ENGINE_TEST("open_read gives a const view; read then write upgrades the lock") {
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

ENGINE_TEST("misuse is a clear run-time error") {
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

ENGINE_TEST("commit, abort or begin inside atomically's function is refused at the call") {
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

ENGINE_TEST("an opened handle that outlives its transaction object is a usage error") {
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

ENGINE_TEST("atomically() inside atomically() on the same pool is refused") {
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

ENGINE_TEST("named roots are found again, and refuse another type") {
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

ENGINE_TEST("linked stable objects") {
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

ENGINE_TEST("large objects span chunks") {
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

ENGINE_TEST("a full pool says so, loses nothing, and works again after a free") {
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

ENGINE_TEST("a transaction that locks too many objects gets a clear error") {
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{4} << 20, 16);
  std::vector<ftm::stable<account>> objs;
  for (int i = 0; i < 20; ++i) {
    objs.push_back(ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); }));
  }
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](auto& tx) {
                                    for (auto o : objs)
                                      tx.open(o)->balance = 0;
                                  }),
                  ftm::capacity_exceeded);
  for (auto o : objs)
    CHECK(balance_of(*pool, o) == 1);
}

ENGINE_TEST("recovery undoes the transaction of a process that died") {
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
}

ENGINE_TEST("a lock held by a dead process is reclaimed by an older waiter") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{8, 0}); });
  ftm::transaction older{*pool};
  older.begin();  // older than anything the child begins
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(a)->balance = 0;
    char c = 1;
    (void)!::write(ready[1], &c, 1);
    ::pause();
    ::_exit(0);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  // The older transaction waits for the dead holder, recovers it and proceeds.
  CHECK(older.open_read(a)->balance == 8);
  older.commit();
  ::close(ready[0]);
  ::close(ready[1]);
}

ENGINE_TEST("a session runs transactions on one descriptor, like atomically() on the pool") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{100, 0}); });
  {
    ftm::session s(*pool);
    for (int i = 0; i < 1000; ++i) {
      ftm::atomically(s, [&](auto& tx) {
        auto acc = tx.open(a);
        acc->balance += 1;
        ++acc->ops;
      });
    }
    // An exception aborts, as with atomically() on the pool.
    CHECK_THROWS_AS(ftm::atomically(s,
                                    [&](auto& tx) {
                                      tx.open(a)->balance = -1;
                                      throw std::runtime_error("no");
                                    }),
                    std::runtime_error);
    // Explicit begin, commit and abort on the session's descriptor.
    auto tx = s.transaction();
    tx.begin();
    tx.open(a)->balance = 0;
    tx.abort();
    tx.begin();
    CHECK(tx.open_read(a)->balance == 1100);
    // One transaction at a time on a session.
    auto second = s.transaction();
    CHECK_THROWS_WITH_AS(second.begin(), doctest::Contains("one transaction at a time"),
                         ftm::usage_error);
    tx.commit();
    // The same pool refuses a nested atomically() whether on the pool or a session.
    CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto&) { ftm::atomically(s, [](auto&) {}); }),
                    ftm::usage_error);
    // An idle session is not a problem for check(); its descriptor is held.
    CHECK(pool->check().ok());
    CHECK(pool->stats().commits >= 1001);
  }
  CHECK(balance_of(*pool, a) == 1100);
  CHECK(pool->check().ok());
}

ENGINE_TEST("sessions hold their descriptors until destroyed, then give them back") {
  auto pool = ftm_test::engine_factory<E>::make();
  std::vector<std::unique_ptr<ftm::session<E>>> sessions;
  for (std::uint32_t i = 0; i + 1 < E::max_transactions; ++i)
    sessions.push_back(std::make_unique<ftm::session<E>>(*pool));
  // One descriptor is left: a transaction that claims it runs, and so does a session's.
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });
  ftm::atomically(*sessions.back(), [&](auto& tx) { tx.open(a)->balance = 2; });
  // With the last one held too, a transaction on the pool could only wait. Each
  // descriptor is now an idle session of this process: a transaction begins on it.
  ftm::session<E> last(*pool);
  auto held = [&] {
    std::uint32_t n = 0;
    for (ftm::tx_id d = 0; d < E::max_transactions; ++d) {
      ftm::transaction<E> tx(*pool, ftm::detail::on_session, d);
      try {
        tx.begin();
        tx.abort();
        ++n;
      } catch (const ftm::usage_error&) {
        // not a session's descriptor (any more)
      }
    }
    return n;
  };
  CHECK(held() == E::max_transactions);
  sessions.clear();
  CHECK(held() == 1);  // `last`'s
  CHECK(balance_of(*pool, a) == 2);
}

ENGINE_TEST("a session belongs to its process: a forked child may not use it, recovery frees it") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{500, 0}); });
  ftm::session<E> parents(*pool);
  int pipe_fd[2];
  REQUIRE(::pipe(pipe_fd) == 0);
  ftm_test::killed_child([&] {
    char verdict = 'n';
    try {
      ftm::atomically(parents, [&](auto& tx) { tx.open(a)->balance = 0; });
    } catch (const ftm::usage_error& e) {
      if (std::string_view(e.what()).find("belongs to the process") != std::string_view::npos)
        verdict = 'y';
    }
    // Its own session, killed in the middle of a transaction.
    ftm::session<E> own(*pool);
    auto tx = own.transaction();
    tx.begin();
    tx.open(a)->balance = -1;
    (void)!::write(pipe_fd[1], &verdict, 1);
    ftm_test::die_now();
  });
  char verdict = 0;
  REQUIRE(::read(pipe_fd[0], &verdict, 1) == 1);
  CHECK(verdict == 'y');
  CHECK_FALSE(pool->check().ok());  // the dead child's descriptor is still held
  const ftm::recovery_report r = pool->recover();
  CHECK(r.undone == 1);
  CHECK(balance_of(*pool, a) == 500);
  ftm::atomically(parents, [&](auto& tx) { tx.open(a)->balance += 1; });
  CHECK(balance_of(*pool, a) == 501);
  CHECK(pool->check().ok());
  ::close(pipe_fd[0]);
  ::close(pipe_fd[1]);
}

TEST_CASE("reflected stable types print and have layout fingerprints") {
  CHECK(fmt::format("{}", account{90, 2}) == "account{balance: 90, ops: 2}");
  CHECK(ftm::layout_description<account>() ==
        "account{balance: i64 @0, ops: u32 @8} (size 16, align 8)");
  CHECK(ftm::layout_fingerprint<account>() != ftm::layout_fingerprint<other_layout>());
  CHECK(ftm::layout_description<node>().find("next: stable<node> @8") != std::string::npos);
  CHECK(fmt::format("{}", ftm::stable<node>{}) == "stable<node>(null)");
  CHECK(fmt::format("{}", ftm::engine_stats{1, 2, 3, 4}) ==
        "commits: 1, aborts: 2, conflicts: 3, retries: 4");
}

TEST_CASE("errors name their cause") {
  const ftm::pool_full e("no room for a thing");
  CHECK(std::string(e.what()) == "ftm: pool full: no room for a thing");
  CHECK(e.code() == ftm::errc::pool_full);
  CHECK_THROWS_WITH_AS(ftm::engines::dual_bank(12345),
                       doctest::Contains("multiple of the chunk size"), ftm::invalid_argument);
  CHECK_THROWS_WITH_AS(ftm::engines::dual_bank(65536), doctest::Contains("too small"),
                       ftm::invalid_argument);
}

TEST_CASE("stable handles are trivially copyable offsets") {
  static_assert(std::is_trivially_copyable_v<ftm::stable<account>>);
  static_assert(sizeof(ftm::stable<account>) == sizeof(std::uint64_t));
  static_assert(ftm::stable_type<account>);
  static_assert(ftm::stable_type<node>);
  static_assert(!ftm::stable_type<std::string>);
  struct with_pointer {
    BOOST_HANA_DEFINE_STRUCT(with_pointer, (int*, p));
  };
  static_assert(!ftm::stable_type<with_pointer>);
  static_assert(!std::is_copy_constructible_v<ftm::opened<account>>);
  static_assert(!std::is_move_constructible_v<ftm::opened<account>>);
}

namespace {
/// Fills its 64-byte block to 8 bytes before the block's end.
struct forty_eight {
  std::uint64_t w[6];
};
}  // namespace

TEST_CASE_TEMPLATE("an abort does not copy a neighbouring object's lock word between banks", E,
                   FTM_TEST_ENGINES) {
  auto pool = ftm_test::engine_factory<E>::make();
  auto [a, b] = ftm::atomically(*pool, [](auto& tx) {
    auto x = tx.create(forty_eight{});
    auto y = tx.create(forty_eight{});
    return std::pair{x, y};
  });
  REQUIRE(b.offset() == a.offset() + 64);  // adjacent blocks
  ftm::transaction<E> reader(*pool);
  reader.begin();
  static_cast<void>(reader.open_read(b));  // b's `readers` word has a bit set
  {
    ftm::transaction<E> writer(*pool);
    writer.begin();
    writer.open(a)->w[0] = 1;
    writer.commit();  // copies a to the second bank
  }
  reader.commit();
  {
    ftm::transaction<E> writer(*pool);
    writer.begin();
    writer.open(a)->w[0] = 2;
    writer.abort();  // copies a back from the second bank
  }
  const auto report = pool->check();
  CHECK_MESSAGE(report.ok(), (report.ok() ? "" : report.problems.front()));
}
