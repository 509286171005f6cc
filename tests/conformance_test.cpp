// The dual-bank engines (dual_bank, pmem) beyond the laws every engine keeps
// (tests/laws/): their mechanism (wait-die, lock words, the allocator, descriptor
// capacity), sessions, and the reflection and error helpers.
#include "engines.hpp"
#include "process.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <boost/hana/define_struct.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
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

ENGINE_TEST("a reader takes no lock: the writer goes ahead, and the reader loses at commit") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto [a, b] = ftm::atomically(*pool, [](auto& tx) {
    return std::pair{tx.create(account{10, 0}), tx.create(account{10, 0})};
  });
  ftm::transaction reader{*pool};  // reads two objects
  ftm::transaction single{*pool};  // reads one
  reader.begin({.priority = 1});
  single.begin({.priority = 1});
  const auto seen = reader.open_read(a);
  CHECK(seen->balance == 10);
  CHECK(reader.open_read(b)->balance == 10);
  CHECK(single.open_read(a)->balance == 10);
  {
    ftm::transaction writer{*pool};
    writer.begin({.priority = 2});  // younger: under read locks, it would have died
    CHECK(reader.engine().valid(reader.id()));
    writer.open(a)->balance = 20;
    CHECK(seen->balance == 10);  // the reader sees the committed state, not the write
    CHECK(reader.engine().valid(reader.id()));
    writer.commit();
  }
  CHECK_FALSE(reader.engine().valid(reader.id()));
  CHECK_THROWS_AS(reader.commit(), ftm::conflict);
  // One object read is one committed state of it: that transaction is serialized
  // before the writer, at its read, and commits.
  CHECK_NOTHROW(single.commit());
  CHECK(balance_of(*pool, a) == 20);
  CHECK(pool->check().ok());
}

ENGINE_TEST("a transaction that writes what another read and wrote loses at commit") {
  // Write skew: each reads what the other writes. Serializable: one of them loses.
  auto pool = ftm_test::engine_factory<E>::make();
  auto [a, b] = ftm::atomically(*pool, [](auto& tx) {
    return std::pair{tx.create(account{10, 0}), tx.create(account{10, 0})};
  });
  ftm::transaction t1{*pool};
  ftm::transaction t2{*pool};
  t1.begin();
  t2.begin();
  const auto a1 = t1.open_read(a)->balance;
  const auto b2 = t2.open_read(b)->balance;
  t1.open(b)->balance = a1 + 1;
  t2.open(a)->balance = b2 + 1;
  CHECK_THROWS_AS(t1.commit(), ftm::conflict);  // a is held by t2
  t2.commit();
  CHECK(balance_of(*pool, a) == 11);
  CHECK(balance_of(*pool, b) == 10);
  CHECK(pool->check().ok());
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

namespace {
/// Eight words a writer always sets alike.
struct eight_words {
  std::array<std::uint64_t, 8> w;
};

/// Word `i` of `o`, read as a part with `seen`.
template <class E>
std::uint64_t word_part(ftm::transaction<E>& tx, ftm::stable<eight_words> o, std::size_t i,
                        std::uint64_t& seen) {
  std::uint64_t v = 0;
  std::memcpy(&v,
              ftm::detail::byte_access::open_read_part(
                  tx, o.offset(), ftm::detail::object_type_of<eight_words>, 8 * i, 8, seen),
              8);
  return v;
}
}  // namespace

ENGINE_TEST("parts of an object: one committed value, recorded once, or the transaction loses") {
  static_assert(ftm::partial_read_engine<E>);
  auto pool = ftm_test::engine_factory<E>::make();
  const auto o = ftm::atomically(*pool, [](auto& tx) {
    return tx.create(eight_words{{1, 1, 1, 1, 1, 1, 1, 1}});
  });
  const auto other = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{5, 0}); });
  auto set_all = [&](std::uint64_t v) {
    ftm::atomically(*pool, [&](auto& tx) {
      for (auto& w : tx.open(o)->w)
        w = v;
    });
  };

  SUBCASE("a commit between two parts: the second throws conflict, never the new bytes") {
    ftm::transaction<E> reader(*pool);
    reader.begin();
    std::uint64_t seen = 0;
    CHECK(word_part(reader, o, 0, seen) == 1);
    CHECK(seen != 0);
    CHECK(word_part(reader, o, 7, seen) == 1);  // unchanged: the same value
    set_all(2);
    CHECK_THROWS_AS(static_cast<void>(word_part(reader, o, 3, seen)), ftm::conflict);
    CHECK_FALSE(reader.engine().valid(reader.id()));
    CHECK_THROWS_AS(reader.commit(), ftm::conflict);  // doomed: it may only abort
  }
  SUBCASE("a part is validated at commit like a whole read") {
    ftm::transaction<E> reader(*pool);
    reader.begin();
    std::uint64_t seen = 0;
    CHECK(word_part(reader, o, 2, seen) == 1);
    CHECK(reader.open_read(other)->balance == 5);  // two objects: the commit checks both
    set_all(3);
    CHECK_THROWS_AS(reader.commit(), ftm::conflict);
  }
  SUBCASE("parts of one object alone, recorded once: serialized at its reads, it commits") {
    // As a read-only transaction of one whole object: its commit checks nothing.
    ftm::transaction<E> reader(*pool);
    reader.begin();
    std::uint64_t seen = 0;
    CHECK(word_part(reader, o, 0, seen) == 1);
    CHECK(word_part(reader, o, 5, seen) == 1);
    set_all(4);
    CHECK_NOTHROW(reader.commit());
  }
  SUBCASE("parts of many objects in one transaction") {
    std::vector<ftm::stable<eight_words>> objs;
    for (int i = 0; i < 40; ++i) {
      objs.push_back(ftm::atomically(*pool, [&](auto& tx) {
        return tx.create(eight_words{{std::uint64_t(i), 0, 0, 0, 0, 0, 0, std::uint64_t(i)}});
      }));
    }
    ftm::atomically(*pool, [&](auto& tx) {
      for (int round = 0; round < 3; ++round) {
        for (int i = 0; i < 40; ++i) {
          std::uint64_t seen = 0;
          CHECK(word_part(tx, objs[i], 0, seen) == std::uint64_t(i));
          for (int part = 0; part < 20; ++part)
            CHECK(word_part(tx, objs[i], 7, seen) == std::uint64_t(i));
        }
      }
    });
  }
  SUBCASE("an object the transaction writes: its parts are its own writes") {
    ftm::atomically(*pool, [&](auto& tx) {
      std::uint64_t seen = 0;
      CHECK(word_part(tx, o, 1, seen) == 1);
      tx.open(o)->w[1] = 9;
      CHECK(word_part(tx, o, 1, seen) == 9);
      std::uint64_t fresh = 0;
      CHECK(word_part(tx, o, 1, fresh) == 9);
    });
  }
  SUBCASE("a part outside the object, or of an object of another size, is refused") {
    ftm::atomically(*pool, [&](auto& tx) {
      std::uint64_t seen = 0;
      CHECK_THROWS_AS(static_cast<void>(word_part(tx, o, 8, seen)), ftm::usage_error);
      CHECK_THROWS_WITH_AS(
          static_cast<void>(ftm::detail::byte_access::open_read_part(
              tx, other.offset(), ftm::detail::object_type_of<eight_words>, 0, 8, seen)),
          doctest::Contains("bytes"), ftm::usage_error);
    });
  }
  CHECK(pool->check().ok());
}

ENGINE_TEST(
    "byte access: objects opened as bytes in a transaction commit, abort and write through") {
  // The transaction's byte-level access, which ports are built on.
  using bytes = ftm::detail::byte_access;
  auto pool = ftm_test::engine_factory<E>::make();
  const ftm::object_type type = ftm::detail::object_type_of<account>;
  const auto a = ftm::atomically(*pool, [&](auto& tx) {
    const ftm::allocation fresh = bytes::allocate(tx, type);
    ::new (fresh.storage) account{7, 0};
    return ftm::stable<account>(ftm::detail::from_offset, fresh.offset);
  });
  CHECK(balance_of(*pool, a) == 7);
  // A write in bytes commits like a typed one, and aborts like one.
  ftm::atomically(*pool, [&](auto& tx) {
    const std::int64_t v = 40;
    std::memcpy(bytes::open_write(tx, a.offset(), type) + offsetof(account, balance), &v, sizeof v);
    bytes::close(tx, a.offset());
  });
  CHECK(balance_of(*pool, a) == 40);
  {
    ftm::transaction tx{*pool};
    tx.begin();
    const std::int64_t v = 99;
    std::byte* p = bytes::open_write(tx, a.offset(), type);
    std::memcpy(p + offsetof(account, balance), &v, sizeof v);
    // Written through: survives the abort below.
    const std::uint32_t ops = 5;
    bytes::write_through(tx, a.offset(), offsetof(account, ops), &ops, sizeof ops);
    tx.abort();
  }
  const account after = ftm::atomically(*pool, [&](auto& tx) {
    account out;
    std::memcpy(&out, bytes::open_read(tx, a.offset(), type), sizeof out);
    bytes::close(tx, a.offset());
    return out;
  });
  CHECK(after.balance == 40);
  CHECK(after.ops == 5);
  // Write-through needs the write lock, as the engine concept says.
  ftm::transaction tx{*pool};
  tx.begin();
  static_cast<void>(bytes::open_read(tx, a.offset(), type));
  const std::uint32_t ops = 6;
  CHECK_THROWS_AS(bytes::write_through(tx, a.offset(), offsetof(account, ops), &ops, sizeof ops),
                  ftm::usage_error);
  tx.abort();
  // Read, then held and written through, in one transaction (a port's stats, then a
  // receive): its own write-through is no change to what it read, so it commits.
  {
    ftm::transaction t{*pool};
    t.begin();
    std::uint32_t seen_ops = 0;
    std::memcpy(&seen_ops, bytes::open_read(t, a.offset(), type) + offsetof(account, ops),
                sizeof seen_ops);
    static_cast<void>(bytes::open_write(t, a.offset(), type));
    const std::uint32_t more = seen_ops + 1;
    bytes::write_through(t, a.offset(), offsetof(account, ops), &more, sizeof more);
    CHECK_NOTHROW(t.commit());
    if (t.active()) t.abort();
  }
  // An allocation in an aborted transaction is freed: the object is gone.
  std::uint64_t dropped = 0;
  {
    ftm::transaction t{*pool};
    t.begin();
    dropped = bytes::allocate(t, type).offset;
    t.abort();
  }
  CHECK_THROWS_AS(
      ftm::atomically(*pool, [&](auto& t) { return bytes::open_read(t, dropped, type); }),
      ftm::error);
  // Roots, reserved names included, are found by name.
  ftm::atomically(*pool, [&](auto& t) {
    CHECK(bytes::find_root(t, "ftm.test", ftm::detail::root_type_of<account>()) == 0);
    const auto r = ftm::detail::reserved_root<account>(t, "ftm.test");
    CHECK(bytes::find_root(t, "ftm.test", ftm::detail::root_type_of<account>()) == r.offset());
  });
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
  for (std::uint32_t i = 0; i + 1 < pool->max_transactions(); ++i)
    sessions.push_back(std::make_unique<ftm::session<E>>(*pool));
  // One descriptor is left: a transaction that claims it runs, and so does a session's.
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(account{1, 0}); });
  ftm::atomically(*sessions.back(), [&](auto& tx) { tx.open(a)->balance = 2; });
  // With the last one held too, a transaction on the pool could only wait. Each
  // descriptor is now an idle session of this process: a transaction begins on it.
  ftm::session<E> last(*pool);
  auto held = [&] {
    std::uint32_t n = 0;
    for (ftm::tx_id d = 0; d < pool->max_transactions(); ++d) {
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
  CHECK(held() == pool->max_transactions());
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
  static_cast<void>(reader.open_read(b));  // b's version is in the reader's read set
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
