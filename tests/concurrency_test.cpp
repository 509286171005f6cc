// Concurrency on the dual-bank engines: their wait-die policy. Serializability, which
// every engine keeps, is a law (tests/laws/).
#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

namespace {

struct account {
  std::int64_t balance;
  std::uint64_t version;
};

}  // namespace

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
      // A read takes no lock: it sees the committed state, with no conflict.
      CHECK(younger.open_read(x)->balance == 1);
      CHECK_THROWS_AS(younger.open(x), ftm::conflict);
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
    const auto seen = older.open(x)->balance;  // blocks until the younger commits
    CHECK(committed.load());
    CHECK(seen == 3);
    older.commit();
    younger_thread.join();
  }

  SUBCASE("atomically() retries a conflict until the lock is free") {
    ftm::transaction holder{*pool};
    holder.begin(old_age);
    holder.open(x)->balance = 10;
    const auto conflicts_before = pool->stats().conflicts;
    std::thread retrier(
        [&] { ftm::atomically(*pool, [&](auto& tx) { tx.open(x)->balance += 5; }); });
    // Until the retrier has met the lock and lost (not a fixed sleep: on a loaded
    // machine the thread may not run for a while). Bounded: it cannot get past the lock.
    for (long i = 0; i < 100000000 && pool->stats().conflicts == conflicts_before; ++i)
      std::this_thread::yield();
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
