// The reference engine (ftm::engines::reference) beyond the laws it passes
// (tests/laws/): its own rule (one transaction per thread at a time), and the layers
// above the concept that run on it: ports, with their delivery counts written
// through an abort, and blocking receives woken by a commit in another thread.
#include <ftm/engines/reference.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <thread>

namespace {

struct order {
  std::uint32_t id;
  std::int64_t amount;
};

struct counter {
  std::int64_t value;
};

}  // namespace

static_assert(ftm::engine<ftm::engines::reference>);
static_assert(ftm::unlogged_write_engine<ftm::engines::reference>);
static_assert(ftm::watchable_engine<ftm::engines::reference>);
static_assert(!ftm::fork_shared_engine<ftm::engines::reference>);
static_assert(!ftm::session_engine<ftm::engines::reference>);

TEST_CASE("reference: a thread's second transaction at once is refused, not a deadlock") {
  ftm::engines::reference pool;
  ftm::transaction first{pool};
  first.begin();
  ftm::transaction second{pool};
  CHECK_THROWS_WITH_AS(second.begin(), doctest::Contains("one at a time"), ftm::usage_error);
  first.commit();
  second.begin();  // the first has ended: the engine is free again
  second.commit();
}

TEST_CASE("reference: a transaction in another thread waits for the running one to end") {
  ftm::engines::reference pool;
  const auto c = ftm::atomically(pool, [](auto& tx) { return tx.create(counter{0}); });
  ftm::transaction holder{pool};
  holder.begin();
  holder.open(c)->value = 1;
  std::atomic<bool> started{false};
  std::int64_t seen = -1;
  std::thread other([&] {
    started = true;
    seen = ftm::atomically(pool, [&](auto& tx) { return tx.open_read(c)->value; });
  });
  while (!started.load())
    std::this_thread::yield();
  holder.commit();
  other.join();
  CHECK(seen == 1);  // it began after the commit: never the uncommitted value
}

TEST_CASE("reference: write_through needs the object opened for writing, and outlives an abort") {
  ftm::engines::reference pool;
  const auto c = ftm::atomically(pool, [](auto& tx) { return tx.create(counter{5}); });
  ftm::transaction tx{pool};
  tx.begin();
  static_cast<void>(tx.open_read(c));
  const std::int64_t nine = 9;
  CHECK_THROWS_WITH_AS(pool.write_through(tx.id(), c.offset(), 0, &nine, sizeof nine),
                       doctest::Contains("did not open it for writing"), ftm::usage_error);
  tx.open(c)->value = 7;
  pool.write_through(tx.id(), c.offset(), 0, &nine, sizeof nine);
  tx.abort();
  CHECK(ftm::atomically(pool, [&](auto& t) { return t.open_read(c)->value; }) == 9);
}

TEST_CASE("reference: ports send, redeliver after an abort, and count the delivery") {
  ftm::engines::reference pool;
  const auto p = ftm::atomically(pool, [](auto& tx) { return ftm::make_port<order>(tx); });
  ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, p, order{1, 10}); });
  {
    ftm::transaction tx{pool};
    tx.begin();
    CHECK(ftm::try_receive(tx, p)->id == 1);
    tx.abort();  // the message goes back; its delivery still counts
  }
  const auto again = ftm::atomically(pool, [&](auto& tx) { return ftm::try_receive(tx, p); });
  REQUIRE(again);
  CHECK(again->amount == 10);
  const auto s = ftm::atomically(pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
  CHECK(s.deliveries == 2);
  CHECK(s.redelivered == 1);
  CHECK(s.received == 1);
  CHECK(s.depth == 0);
}

TEST_CASE("reference: a blocking receive waits without the engine and wakes at a send") {
  ftm::engines::reference pool;
  const auto p = ftm::atomically(pool, [](auto& tx) { return ftm::make_port<order>(tx); });
  std::atomic<bool> waiting{false};
  std::thread receiver([&] {
    const order o = ftm::atomically(pool, [&](auto& tx) {
      waiting = true;
      return ftm::receive(tx, p);
    });
    CHECK(o.id == 2);
  });
  while (!waiting.load())
    std::this_thread::yield();
  // The receiver holds no transaction while it waits, so this one runs.
  ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, p, order{2, 20}); });
  receiver.join();
  // A receive with a deadline on an empty port returns nothing once it passes.
  const auto none = ftm::atomically(
      pool, [&](auto& tx) { return ftm::receive_for(tx, p, std::chrono::milliseconds(20)); });
  CHECK_FALSE(none);
}
