// The stable containers on every engine: contents, growth past one chunk, abort,
// reopening a pool, the views' rules at run time, and standard algorithms on a read view.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <ranges>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using ftm_test::engine_factory;

/// A stable object that holds a container: through its handle, like any link.
struct document {
  ftm::stable<ftm::stable_string> body;
  std::uint64_t revision;
};

/// Bytes that differ from position to position, so a misplaced chunk shows.
std::string pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

struct point {
  std::int64_t x;
  std::int64_t y;
};

}  // namespace

ENGINE_TEST("stable_vector grows past many chunks and reads back, all or nothing") {
  auto pool = engine_factory<E>::make(std::size_t{16} << 20);
  using tx_t = ftm::transaction<E>;
  auto ref = ftm::atomically(
      *pool, [](tx_t& tx) { return tx.template root<ftm::stable_vector<std::uint64_t>>("v"); });
  // 200,000 elements: 1.6 MB, 391 chunks of 4 KiB, in transactions of 20,000 (a
  // transaction locks at most 1,024 objects: chunks, directories, allocator records).
  const std::uint64_t n = 200000 / ftm_test::transaction_divisor<E>;
  for (std::uint64_t base = 0; base < n; base += 20000) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      std::vector<std::uint64_t> batch;
      for (std::uint64_t i = base; i < std::min(n, base + 20000); ++i)
        batch.push_back(i * 3);
      v.append(batch);
    });
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    REQUIRE(v.size() == n);
    CHECK(v[0] == 0);  // NOLINT
    CHECK(v.at(n - 1) == (n - 1) * 3);
    CHECK(std::ranges::is_sorted(v));
    CHECK(std::accumulate(v.begin(), v.end(), std::uint64_t{0}) == 3 * (n * (n - 1) / 2));
    CHECK(std::ranges::find(v, 3 * 777) - v.begin() == 777);
    CHECK_THROWS_AS(static_cast<void>(v.at(n)), ftm::invalid_argument);
  });
  // An aborted change leaves the vector as it was.
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto v = ftm::open(tx, ref);
                                    v.resize(10);
                                    v.push_back(42);
                                    v[0] = 99;
                                    throw stop{};
                                  }),
                  stop);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    CHECK(v.size() == n);
    CHECK(v.back() == (n - 1) * 3);
    CHECK(v.front() == 0);
  });
  // Shrinking frees the chunks: the pool has room for the whole again, many times.
  for (int round = 0; round < 3; ++round) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      v.resize(5);
      CHECK(v.size() == 5);
    });
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto v = ftm::open(tx, ref);
      v.resize(n);  // grows again, the new elements zero
      CHECK(v[4] == 12);
      CHECK(v[5] == 0);
      CHECK(v[n - 1] == 0);
    });
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open(tx, ref);
    v.clear();
    CHECK(v.empty());
  });
}

ENGINE_TEST("stable_vector of structs: push, pop, set, copy out") {
  auto pool = engine_factory<E>::make();
  using tx_t = ftm::transaction<E>;
  auto ref = ftm::atomically(
      *pool, [](tx_t& tx) { return tx.template create<ftm::stable_vector<point>>(); });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open(tx, ref);
    for (std::int64_t i = 0; i < 1000; ++i)
      v.push_back({i, -i});
    v.pop_back();
    v.set(3, {7, 7});
    CHECK_THROWS_AS(v.set(999, {0, 0}), ftm::invalid_argument);
  });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto v = ftm::open_read(tx, ref);
    REQUIRE(v.size() == 999);
    std::vector<point> out(10);
    v.copy_to(250, out);
    CHECK(out[9].x == 259);
    CHECK(v[3].y == 7);
    CHECK(std::ranges::count_if(v, [](const point& p) { return p.x + p.y == 0; }) == 998);
  });
}

TEST_CASE("a container view used after its transaction ended is refused") {
  auto pool = engine_factory<ftm::engines::dual_bank>::make();
  ftm::transaction<ftm::engines::dual_bank> tx(*pool);
  tx.begin();
  auto ref = tx.create<ftm::stable_vector<int>>();
  auto v = ftm::open(tx, ref);
  v.push_back(1);
  tx.commit();
#if FTM_CHECKED
  CHECK_THROWS_AS(v.push_back(2), ftm::usage_error);
#endif
  tx.begin();
  CHECK(ftm::open_read(tx, ref).size() == 1);
  CHECK_THROWS_AS(ftm::open_read(tx, ftm::stable<ftm::stable_vector<int>>{}), ftm::usage_error);
  tx.commit();
}

ENGINE_TEST("stable_string of 1.5 MiB: grows, is replaced in place, reads back, aborts cleanly") {
  auto pool = engine_factory<E>::make(std::size_t{16} << 20);
  using tx_t = ftm::transaction<E>;
  const std::string big = pattern((std::size_t{3} << 20) / 2, 1);  // 384 chunks
  auto doc = ftm::atomically(*pool, [&](tx_t& tx) {
    auto d = tx.template root<document>("doc");
    auto o = tx.open(d);
    o->body = tx.template create<ftm::stable_string>();
    auto s = ftm::open(tx, o->body);
    s.assign(big.substr(0, std::size_t{1} << 20));  // 1 MiB in one transaction
    return d;
  });
  auto body = ftm::atomically(*pool, [&](tx_t& tx) { return tx.open_read(doc)->body; });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open(tx, body);
    s += std::string_view(big).substr(std::size_t{1} << 20);  // grows by 0.5 MiB
    tx.open(doc)->revision = 2;
  });
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open_read(tx, body);
    REQUIRE(s.size() == big.size());
    CHECK(s == big);
    CHECK(s.str() == big);
    CHECK(s.substr(4090, 20) == big.substr(4090, 20));
    CHECK(s.compare(big.substr(0, 100)) > 0);
    CHECK(std::ranges::equal(s, big));
    CHECK(std::ranges::count(s, big[7]) == std::ranges::count(big, big[7]));
  });
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto s = ftm::open(tx, body);
                                    s.replace(5000, "changed");
                                    s.resize(10);
                                    s.append(std::string(200000, 'x'));
                                    throw stop{};
                                  }),
                  stop);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open(tx, body);
    CHECK(s == big);
    s.replace(big.size() - 3, "tail!");  // past the end: grows by two
    s[0] = '#';
  });
  std::string expect = big;
  expect.replace(expect.size() - 3, 3, "tail!");
  expect[0] = '#';
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto s = ftm::open_read(tx, body);
    CHECK(s == expect);
    CHECK(tx.open_read(doc)->revision == 2);
  });
}

TEST_CASE("stable_string survives closing and reopening a pool file") {
  const auto path = ftm_test::scratch_file("string");
  const std::string text = pattern(300000, 9);
  {
    auto pool = ftm::engines::pmem::create(path, {.bank_size = std::size_t{8} << 20});
    ftm::atomically(pool, [&](ftm::transaction<ftm::engines::pmem>& tx) {
      auto s = tx.root<ftm::stable_string>("text");
      ftm::open(tx, s).assign(text);
    });
  }
  auto pool = ftm::engines::pmem::open(path);
  ftm::atomically(pool, [&](ftm::transaction<ftm::engines::pmem>& tx) {
    auto s = ftm::open_read(tx, tx.root<ftm::stable_string>("text"));
    CHECK(s.size() == text.size());
    CHECK(s == text);
  });
}

namespace {

struct value100 {
  std::uint64_t version;
  char bytes[92];
};

/// Keys whose segment (the low 8 bits of the hash) is below 128 when `low`.
std::vector<std::uint64_t> keys_in_half(bool low, std::size_t n) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t k = 1; out.size() < n; ++k) {
    if (((ftm::stable_hash<std::uint64_t>{}(k) % 256) < 128) == low) out.push_back(k);
  }
  return out;
}

}  // namespace

ENGINE_TEST("stable_hash_map: inserts that split buckets, updates, erases, against a model") {
  // Reading the whole map in one transaction locks every node: more than the default
  // 1,024 objects a transaction may lock.
  auto pool = engine_factory<E>::make(std::size_t{64} << 20, 16384);
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_hash_map<std::uint64_t, value100>;
  auto ref = ftm::atomically(*pool, [](tx_t& tx) { return tx.template root<map_t>("kv"); });
  std::unordered_map<std::uint64_t, std::uint64_t> model;
  const std::uint64_t n = 30000 / ftm_test::transaction_divisor<E>;
  std::minstd_rand rng(7);
  for (std::uint64_t done = 0; done < n;) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open(tx, ref);
      for (int i = 0; i < 100; ++i) {
        const std::uint64_t k = rng() % (2 * n);
        value100 v{};
        v.version = done + i;
        std::snprintf(v.bytes, sizeof v.bytes, "value %llu", static_cast<unsigned long long>(k));
        m.insert_or_assign(k, v);
      }
    });
    done += 100;
  }
  // Rebuild the model from the same random sequence.
  rng.seed(7);
  for (std::uint64_t done = 0; done < n; done += 100) {
    for (int i = 0; i < 100; ++i)
      model[rng() % (2 * n)] = done + i;
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open_read(tx, ref);
    m.verify();
    CHECK(m.size() == model.size());
    std::size_t seen = 0;
    for (const auto& e : m) {
      REQUIRE(model.contains(e.first));
      CHECK(e.second.version == model[e.first]);
      ++seen;
    }
    CHECK(seen == model.size());
    CHECK(std::ranges::distance(m.begin(), m.end()) == static_cast<std::ptrdiff_t>(model.size()));
    // An iterator from `find` (which read a part of its node) goes on as one from begin().
    std::vector<std::uint64_t> order;
    for (const auto& e : m)
      order.push_back(e.first);
    for (std::size_t i = 0; i < order.size(); i += 37) {
      auto it = m.find(order[i]);
      for (std::size_t j = i; j < std::min(order.size(), i + 12); ++j, ++it) {
        REQUIRE(it != m.end());
        CHECK(it->first == order[j]);
        CHECK(it->second.version == model[order[j]]);
      }
    }
    for (const auto& [k, v] : model) {
      auto it = m.find(k);
      REQUIRE(it != m.end());
      CHECK(it->second.version == v);
    }
    CHECK_FALSE(m.contains(2 * n + 5));
    CHECK_THROWS_AS(static_cast<void>(m.at(2 * n + 5)), ftm::invalid_argument);
  });
  // Erase every other key, some through an aborted transaction first.
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto m = ftm::open(tx, ref);
                                    for (const auto& [k, v] : model)
                                      m.erase(k);
                                    throw stop{};
                                  }),
                  stop);
  std::vector<std::uint64_t> keys;
  for (const auto& [k, v] : model)
    keys.push_back(k);
  for (std::size_t i = 0; i < keys.size(); i += 200) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open(tx, ref);
      for (std::size_t j = i; j < std::min(keys.size(), i + 200); j += 2)
        CHECK(m.erase(keys[j]) == 1);
      CHECK(m.erase(2 * n + 5) == 0);
    });
  }
  for (std::size_t j = 0; j < keys.size(); j += 2)
    model.erase(keys[j]);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open(tx, ref);
    m[2 * n + 1].version = 77;  // operator[] inserts
    CHECK_FALSE(m.insert(2 * n + 1, value100{}));
    CHECK(m.at(2 * n + 1).version == 77);
  });
  model[2 * n + 1] = 77;
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open_read(tx, ref);
    m.verify();
    CHECK(m.size() == model.size());
    for (const auto& e : m)
      CHECK(model.at(e.first) == e.second.version);
  });
}

TEST_CASE_TEMPLATE("stable_hash_map: transactions on keys of different segments never conflict", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  auto pool = engine_factory<E>::make(std::size_t{32} << 20, 8192);
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_hash_map<std::uint64_t, std::uint64_t>;
  auto ref = ftm::atomically(*pool, [](tx_t& tx) {
    auto r = tx.template create<map_t>();
    ftm::open(tx, r).reserve_segments();
    return r;
  });
  constexpr std::size_t per_thread = 2000;
  const auto before = pool->stats();
  ftm::engine_stats middle;
  std::barrier inserted(2, [&]() noexcept { middle = pool->stats(); });
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      const auto keys = keys_in_half(t == 0, per_thread);
      for (int round = 0; round < 3; ++round) {
        if (round == 1) inserted.arrive_and_wait();
        for (std::uint64_t k : keys) {
          ftm::atomically(*pool, [&](tx_t& tx) {
            auto m = ftm::open(tx, ref);
            m[k] += 1;                   // inserts in round 0 (splitting buckets), updates after
            CHECK(m.contains(keys[0]));  // a lookup in its own half of the segments
          });
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  const auto after = pool->stats();
  INFO("inserts: ", middle.conflicts - before.conflicts,
       " conflicts; updates: ", after.conflicts - middle.conflicts);
  CHECK(after.conflicts - before.conflicts == 0);
  CHECK(after.retries - before.retries == 0);
  CHECK(after.commits - before.commits == 2 * 3 * per_thread);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open_read(tx, ref);
    m.verify();
    CHECK(m.size() == 2 * per_thread);
    CHECK(std::ranges::all_of(m, [](const auto& e) { return e.second == 3; }));
  });
}

namespace {
/// Keys of one segment (the low 8 bits of their hash are `segment`).
std::vector<std::uint64_t> keys_in_segment(std::uint64_t segment, std::size_t n) {
  std::vector<std::uint64_t> out;
  for (std::uint64_t k = 1; out.size() < n; ++k) {
    if (ftm::stable_hash<std::uint64_t>{}(k) % 256 == segment) out.push_back(k);
  }
  return out;
}

/// The first node of the chain of `key` in a map of `uint64_t` to `uint64_t`, found
/// through the layout (the map's object, its segment table, segment, bucket page).
template <class E>
std::uint64_t first_node_of(ftm::transaction<E>& tx,
                            ftm::stable<ftm::stable_hash_map<std::uint64_t, std::uint64_t>> ref,
                            std::uint64_t key, std::uint64_t& page) {
  namespace d = ftm::detail;
  using map_t = ftm::stable_hash_map<std::uint64_t, std::uint64_t>;
  std::uint64_t table = 0;
  std::memcpy(&table, d::byte_access::open_read(tx, ref.offset(), d::object_type_of<map_t>), 8);
  const std::uint64_t h = ftm::stable_hash<std::uint64_t>{}(key);
  const auto seg = d::read_node<d::segment_table>(tx, table)->segment[h % d::hash_segments];
  const auto* s = d::read_node<d::hash_segment>(tx, seg);
  REQUIRE(s->level == 0);  // one bucket: every key of the segment in its chain
  page = s->page[0];
  return d::read_node<d::bucket_page>(tx, page)->head[0];
}
}  // namespace

TEST_CASE_TEMPLATE(
    "stable_hash_map: a node's tags are checked, and a node of the layout "
    "before them is refused, never misread",
    E, ftm::engines::dual_bank, ftm::engines::pmem) {
  namespace d = ftm::detail;
  auto pool = engine_factory<E>::make();
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_hash_map<std::uint64_t, std::uint64_t>;
  const auto keys = keys_in_segment(5, d::max_load);  // one bucket, one node
  auto ref = ftm::atomically(*pool, [&](tx_t& tx) {
    auto r = tx.template create<map_t>();
    auto m = ftm::open(tx, r);
    for (auto k : keys)
      m.insert(k, k * 10);
    return r;
  });
  SUBCASE("a tag that is not its key's: verify() names it, and lookups trust the tags") {
    ftm::atomically(*pool, [&](tx_t& tx) {
      std::uint64_t page = 0;
      const auto node = first_node_of(tx, ref, keys[0], page);
      auto* n = d::write_node<d::hash_node<std::uint64_t, std::uint64_t>>(tx, node);
      REQUIRE(n->count == keys.size());
      for (std::size_t i = 0; i < n->count; ++i) {
        CHECK(n->tag[i] == d::hash_tag(ftm::stable_hash<std::uint64_t>{}(n->entry[i].first)));
      }
      n->tag[0] ^= 0x5a;
    });
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open_read(tx, ref);
      CHECK_THROWS_WITH_AS(m.verify(), doctest::Contains("tag"), ftm::bad_pool);
      std::size_t found = 0;
      for (auto k : keys)
        found += m.contains(k) ? 1 : 0;
      CHECK(found == keys.size() - 1);
    });
  }
  SUBCASE("a node without tags (a pool made before them): a usage_error naming its size") {
    struct untagged_node {  // the layout before the tags
      std::uint64_t next;
      std::uint64_t count;
      d::map_entry<std::uint64_t, std::uint64_t> entry[d::hash_node_entries];
    };
    static_assert(sizeof(untagged_node) != sizeof(d::hash_node<std::uint64_t, std::uint64_t>));
    ftm::atomically(*pool, [&](tx_t& tx) {
      std::uint64_t page = 0;
      static_cast<void>(first_node_of(tx, ref, keys[0], page));
      untagged_node old{};
      old.count = keys.size();
      for (std::size_t i = 0; i < keys.size(); ++i)
        old.entry[i] = {keys[i], keys[i] * 10};
      const auto made = tx.create(old);
      d::write_node<d::bucket_page>(tx, page)->head[0] = made.offset();
    });
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open_read(tx, ref);
      const std::string size = std::to_string(sizeof(untagged_node)) + " bytes";
      CHECK_THROWS_WITH_AS(static_cast<void>(m.find(keys[1])), doctest::Contains(size.c_str()),
                           ftm::usage_error);
      CHECK_THROWS_AS(static_cast<void>(m.contains(keys.back())), ftm::usage_error);
      CHECK_THROWS_AS(m.verify(), ftm::usage_error);
    });
    CHECK_THROWS_AS(ftm::atomically(*pool, [&](tx_t& tx) { ftm::open(tx, ref)[keys[0]] = 1; }),
                    ftm::usage_error);
  }
}

TEST_CASE_TEMPLATE(
    "stable_hash_map: lookups beside a writer that moves entries within their "
    "node find every key, with its own value",
    E, ftm::engines::dual_bank, ftm::engines::pmem) {
  // A lookup reads a node's tags, then one entry: if a commit moved the entries in
  // between (an erase fills the hole with the last entry, an insert appends), the entry
  // read must be of the same commit as the tags, or the key would seem missing.
  auto pool = engine_factory<E>::make();
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_hash_map<std::uint64_t, value100>;
  // One bucket, one node: a segment splits past `max_load` entries a bucket.
  static_assert(ftm::detail::max_load <= ftm::detail::hash_node_entries);
  const auto keys = keys_in_segment(9, ftm::detail::max_load);
  auto value_of = [](std::uint64_t k) {
    value100 v{};
    v.version = k;
    std::snprintf(v.bytes, sizeof v.bytes, "value of %llu", static_cast<unsigned long long>(k));
    return v;
  };
  auto ref = ftm::atomically(*pool, [&](tx_t& tx) {
    auto r = tx.template create<map_t>();
    auto m = ftm::open(tx, r);
    for (auto k : keys)
      m.insert(k, value_of(k));
    return r;
  });
  const std::uint64_t rounds =
      100000 / ftm_test::transaction_divisor<E> / ftm_test::sanitizer_divisor;
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> moves{0};
  std::thread writer([&] {
    for (std::uint64_t i = 0; i < rounds && !done.load(); ++i) {
      const std::uint64_t k = keys[i % keys.size()];
      ftm::atomically(*pool, [&](tx_t& tx) {
        auto m = ftm::open(tx, ref);
        m.erase(k);                // the last entry takes its slot
        m.insert(k, value_of(k));  // and it goes last
      });
      moves.fetch_add(1, std::memory_order_relaxed);
    }
  });
  std::uint64_t missing = 0;
  std::uint64_t wrong = 0;
  std::uint64_t lookups = 0;
  while (moves.load() < rounds && lookups < 50 * rounds) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open_read(tx, ref);
      std::uint64_t miss = 0;
      std::uint64_t bad = 0;
      for (auto k : keys) {
        const auto it = m.find(k);
        if (it == m.end()) {
          ++miss;
        } else if (it->first != k || it->second.version != k ||
                   std::string_view(it->second.bytes) != value_of(k).bytes) {
          ++bad;
        }
      }
      // Counted in every attempt, even one that aborts later: a lookup must never
      // return what a mix of two commits shows (its commit would fail, too late).
      missing += miss;
      wrong += bad;
    });
    lookups += keys.size();
  }
  done = true;
  writer.join();
  MESSAGE(lookups, " lookups beside ", moves.load(), " moves");
  CHECK(missing == 0);
  CHECK(wrong == 0);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open_read(tx, ref);
    m.verify();
    CHECK(m.size() == keys.size());
  });
}

ENGINE_TEST(
    "stable_map: ordered inserts that split leaves and inner nodes, lower_bound, scans, erases") {
  auto pool = engine_factory<E>::make(std::size_t{64} << 20, 16384);
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_map<std::uint64_t, value100>;
  auto ref = ftm::atomically(*pool, [](tx_t& tx) { return tx.template root<map_t>("ordered"); });
  std::map<std::uint64_t, std::uint64_t> model;
  std::minstd_rand rng(11);
  const std::uint64_t n = 40000 / ftm_test::transaction_divisor<E>;
  for (std::uint64_t done = 0; done < n; done += 200) {
    std::vector<std::uint64_t> keys;
    for (int i = 0; i < 200; ++i)
      keys.push_back(rng() % (4 * n));
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open(tx, ref);
      for (int i = 0; i < 200; ++i) {
        value100 v{};
        v.version = done + i;
        m.insert_or_assign(keys[i], v);
      }
    });
    for (int i = 0; i < 200; ++i)
      model[keys[i]] = done + i;
  }
  auto check_all = [&] {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open_read(tx, ref);
      m.verify();
      REQUIRE(m.size() == model.size());
      CHECK(std::ranges::equal(m, model, [](const auto& a, const auto& b) {
        return a.first == b.first && a.second.version == b.second;
      }));
      for (std::uint64_t probe = 0; probe < 4 * n; probe += 97) {
        auto it = m.lower_bound(probe);
        auto mit = model.lower_bound(probe);
        REQUIRE((it == m.end()) == (mit == model.end()));
        if (mit == model.end()) continue;
        CHECK(it->first == mit->first);
        // A short scan, as YCSB E does: the next ten entries in key order.
        auto a = it;
        auto b = mit;
        for (int step = 0; step < 10 && b != model.end(); ++step, ++a, ++b) {
          REQUIRE(a != m.end());
          CHECK(a->first == b->first);
        }
        CHECK(m.contains(mit->first));
        CHECK((m.upper_bound(mit->first) == m.end()) == (std::next(mit) == model.end()));
      }
    });
  };
  check_all();
  // Erase two keys in three, in batches; an aborted batch changes nothing.
  struct stop {};
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](tx_t& tx) {
                                    auto m = ftm::open(tx, ref);
                                    for (const auto& [k, v] : model)
                                      CHECK(m.erase(k) == 1);
                                    throw stop{};
                                  }),
                  stop);
  std::vector<std::uint64_t> keys;
  for (const auto& [k, v] : model)
    keys.push_back(k);
  for (std::size_t i = 0; i < keys.size(); i += 300) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open(tx, ref);
      for (std::size_t j = i; j < std::min(keys.size(), i + 300); ++j) {
        if (j % 3 != 0) CHECK(m.erase(keys[j]) == 1);
      }
      CHECK(m.erase(4 * n + 1) == 0);
    });
  }
  for (std::size_t j = 0; j < keys.size(); ++j) {
    if (j % 3 != 0) model.erase(keys[j]);
  }
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open(tx, ref);
    m[4 * n + 3].version = 5;
    CHECK_FALSE(m.insert(4 * n + 3, value100{}));
    CHECK(m.at(4 * n + 3).version == 5);
  });
  model[4 * n + 3] = 5;
  check_all();
}

TEST_CASE_TEMPLATE("stable_map: updates of keys in different leaves never conflict", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  auto pool = engine_factory<E>::make(std::size_t{16} << 20);
  using tx_t = ftm::transaction<E>;
  using map_t = ftm::stable_map<std::uint64_t, std::uint64_t>;
  auto ref = ftm::atomically(*pool, [](tx_t& tx) { return tx.template create<map_t>(); });
  // Thread t updates keys [2t * per_thread, (2t + 1) * per_thread): the 1,000 keys between
  // the two ranges are more than a leaf holds, so no leaf has keys of both threads.
  constexpr std::uint64_t per_thread = 1000;
  for (std::uint64_t base = 0; base < 3 * per_thread; base += 250) {
    ftm::atomically(*pool, [&](tx_t& tx) {
      auto m = ftm::open(tx, ref);
      for (std::uint64_t k = base; k < base + 250; ++k)
        m.insert(k, 0);
    });
  }
  const auto before = pool->stats();
  std::vector<std::thread> threads;
  for (std::uint64_t t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (std::uint64_t k = 2 * t * per_thread; k < (2 * t + 1) * per_thread; ++k) {
          ftm::atomically(*pool, [&](tx_t& tx) {
            auto m = ftm::open(tx, ref);
            m[k] += 1;
            CHECK(m.lower_bound(k)->first == k);
          });
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  const auto after = pool->stats();
  CHECK(after.conflicts - before.conflicts == 0);
  ftm::atomically(*pool, [&](tx_t& tx) {
    auto m = ftm::open_read(tx, ref);
    m.verify();
    CHECK(m.size() == 3 * per_thread);
    CHECK(std::ranges::all_of(
        m, [&](const auto& e) { return e.second == (e.first / per_thread == 1 ? 0U : 3U); }));
  });
}
