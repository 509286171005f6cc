// Maps whose keys or values are `stable_string`s the map owns: random operations
// against a std::map / std::unordered_map model on every engine, keys longer than the
// inline prefix that share it (and share a whole chunk), values of 1 MiB, aborts, and
// no leak: an erase or overwrite frees what the insert allocated.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace {

using ftm_test::engine_factory;

template <class T>
constexpr bool is_string = std::is_same_v<T, ftm::stable_string>;

/// The model's type for a map's `K` or `V`: a `std::string` for a `stable_string`.
template <class T>
using model_t = std::conditional_t<is_string<T>, std::string, std::uint64_t>;

/// Bytes that differ from position to position, so a misplaced chunk shows.
std::string pattern(std::size_t n, std::uint64_t seed) {
  std::string s(n, '\0');
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (auto& c : s) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    c = static_cast<char>(x >> 56);
  }
  return s;
}

/// Key `i` of 64: short ones (inline), ones of 40 bytes sharing a 30-byte prefix (past
/// the 16 inline bytes), and ones of about 5,000 bytes sharing a 4,500-byte prefix
/// (past a whole 4 KiB chunk); for an integer key, `i` spread out.
template <class K>
model_t<K> make_key(std::uint64_t i) {
  if constexpr (is_string<K>) {
    switch (i % 4) {
      case 0: return "k" + std::to_string(i);
      case 1: return "a shared prefix, 30 bytes long" + std::to_string(i * 7919);
      case 2: return std::string(4500, 'p') + pattern(500 + i % 7, i);
      default: return std::string(i % 16, 'z');  // 0 to 15 bytes: prefixes of each other
    }
  } else {
    return i * 0x9e3779b97f4a7c15ULL;
  }
}

/// A value: mostly short or a few hundred bytes, sometimes 20,000 bytes (five chunks).
template <class V>
model_t<V> make_value(std::minstd_rand& rng) {
  if constexpr (is_string<V>) {
    const std::uint64_t r = rng() % 20;
    const std::size_t n = r == 0 ? 20000 : r < 8 ? rng() % 17 : rng() % 400;
    return pattern(n, rng());
  } else {
    return rng();
  }
}

/// The model's form of what a view's iterator or `at` gives.
template <class T, class Out>
model_t<T> to_model(const Out& v) {
  if constexpr (is_string<T>) {
    return v.str();
  } else {
    return v;
  }
}

template <class Map>
struct map_traits;
template <class K, class V>
struct map_traits<ftm::stable_hash_map<K, V>> {
  static constexpr bool ordered = false;
  using model = std::unordered_map<model_t<K>, model_t<V>>;
};
template <class K, class V>
struct map_traits<ftm::stable_map<K, V>> {
  static constexpr bool ordered = true;
  using model = std::map<model_t<K>, model_t<V>>;
};

/// Compares a committed map with the model: `verify()`, size, every entry by
/// iteration and by lookup, key order and `lower_bound` for an ordered map.
template <class Map, class E, class Model>
void check_against(ftm::transaction<E>& tx, ftm::stable<Map> ref, const Model& model,
                   std::minstd_rand& rng) {
  using K = typename Map::key_type;
  using V = typename Map::mapped_type;
  auto m = ftm::open_read(tx, ref);
  m.verify();
  REQUIRE(m.size() == model.size());
  std::vector<model_t<K>> seen;
  for (const auto& e : m) {
    const model_t<K> k = to_model<K>(e.first);
    const auto it = model.find(k);
    REQUIRE(it != model.end());
    CHECK(to_model<V>(e.second) == it->second);
    seen.push_back(k);
  }
  CHECK(seen.size() == model.size());
  if constexpr (map_traits<Map>::ordered) {
    CHECK(std::is_sorted(seen.begin(), seen.end()));
    for (int i = 0; i < 40; ++i) {
      const model_t<K> probe = make_key<K>(rng() % 300);
      const auto want = model.lower_bound(probe);
      const auto got = m.lower_bound(probe);
      if (want == model.end()) {
        CHECK(got == m.end());
      } else {
        REQUIRE(got != m.end());
        CHECK(to_model<K>((*got).first) == want->first);
      }
    }
  }
  for (const auto& [k, v] : model) {
    REQUIRE(m.contains(k));
    CHECK(to_model<V>(m.at(k)) == v);
  }
  CHECK_FALSE(m.contains(make_key<K>(100001)));
}

/// Random inserts, overwrites and erases in transactions of 12 operations, some of
/// them aborted, checked against the model now and then.
template <class E, class Map>
void random_operations() {
  using K = typename Map::key_type;
  using V = typename Map::mapped_type;
  using tx_t = ftm::transaction<E>;
  auto pool = engine_factory<E>::make(std::size_t{64} << 20, 4096);
  auto ref = ftm::atomically(*pool, [](tx_t& tx) { return tx.template root<Map>("m"); });
  typename map_traits<Map>::model model;
  std::minstd_rand rng(11);
  const int rounds = 120 / static_cast<int>(ftm_test::transaction_divisor<E>) + 6;
  for (int round = 0; round < rounds; ++round) {
    const bool abort = round % 7 == 3;
    auto next = model;
    struct stop {};
    auto body = [&](tx_t& tx) {
      next = model;  // a retry starts again from the committed state
      auto m = ftm::open(tx, ref);
      for (int op = 0; op < 12; ++op) {
        const model_t<K> k = make_key<K>(rng() % 300);
        const std::uint64_t what = rng() % 10;
        if (what < 5) {
          const model_t<V> v = make_value<V>(rng);
          CHECK(m.insert_or_assign(k, v) == !next.contains(k));
          next[k] = v;
        } else if (what < 7) {
          const model_t<V> v = make_value<V>(rng);
          CHECK(m.insert(k, v) == !next.contains(k));
          next.try_emplace(k, v);
        } else if (what < 9) {
          CHECK(m.erase(k) == next.erase(k));
        } else {
          CHECK(m.contains(k) == next.contains(k));
        }
      }
      if (abort) throw stop{};
    };
    if (abort) {
      CHECK_THROWS_AS(ftm::atomically(*pool, body), stop);
    } else {
      ftm::atomically(*pool, body);
      model = std::move(next);
    }
    if (round % 30 == 29 || round == rounds - 1) {
      ftm::atomically(*pool, [&](tx_t& tx) { check_against(tx, ref, model, rng); });
    }
  }
  REQUIRE(pool->check().ok());

  // A value of 1 MiB (256 chunks) beside a key longer than the prefix; then no leak:
  // the pool's objects and bytes return to their level after an overwrite and after an
  // erase followed by the same insert, and drop by the megabyte in between.
  const model_t<K> big_key = make_key<K>(301);
  const model_t<V> big_value = [] {
    if constexpr (is_string<V>) {
      return pattern(std::size_t{1} << 20, 5);
    } else {
      return model_t<V>{5};
    }
  }();
  ftm::atomically(*pool,
                  [&](tx_t& tx) { ftm::open(tx, ref).insert_or_assign(big_key, big_value); });
  model[big_key] = big_value;
  const auto level = pool->check();
  ftm::atomically(*pool,
                  [&](tx_t& tx) { ftm::open(tx, ref).insert_or_assign(big_key, big_value); });
  CHECK(pool->check().objects == level.objects);
  CHECK(pool->check().bytes_in_use == level.bytes_in_use);
  ftm::atomically(*pool, [&](tx_t& tx) { CHECK(ftm::open(tx, ref).erase(big_key) == 1); });
  const auto erased = pool->check();
  if constexpr (is_string<V>) {
    CHECK(erased.objects + 256 < level.objects);
    CHECK(erased.bytes_in_use + (std::uint64_t{1} << 20) <= level.bytes_in_use);
  } else {
    CHECK(erased.objects <= level.objects);
  }
  ftm::atomically(*pool, [&](tx_t& tx) { CHECK(ftm::open(tx, ref).insert(big_key, big_value)); });
  CHECK(pool->check().objects == level.objects);
  CHECK(pool->check().bytes_in_use == level.bytes_in_use);
  ftm::atomically(*pool, [&](tx_t& tx) {
    check_against(tx, ref, model, rng);
    auto m = ftm::open_read(tx, ref);
    if constexpr (is_string<V>) {
      const auto v = m.at(big_key);
      CHECK(v.size() == big_value.size());
      CHECK(v == big_value);
      CHECK(v.substr((std::size_t{1} << 20) - 10) == big_value.substr(big_value.size() - 10));
      CHECK(v.compare(big_value.substr(0, 70000)) > 0);
    }
  });
  REQUIRE(pool->check().ok());
}

}  // namespace

using ftm::stable_hash_map;
using ftm::stable_map;
using ftm::stable_string;

ENGINE_TEST("stable_hash_map<stable_string, uint64_t> against a model") {
  random_operations<E, stable_hash_map<stable_string, std::uint64_t>>();
}
ENGINE_TEST("stable_hash_map<uint64_t, stable_string> against a model") {
  random_operations<E, stable_hash_map<std::uint64_t, stable_string>>();
}
ENGINE_TEST("stable_hash_map<stable_string, stable_string> against a model") {
  random_operations<E, stable_hash_map<stable_string, stable_string>>();
}
ENGINE_TEST("stable_map<stable_string, uint64_t> against a model") {
  random_operations<E, stable_map<stable_string, std::uint64_t>>();
}
ENGINE_TEST("stable_map<uint64_t, stable_string> against a model") {
  random_operations<E, stable_map<std::uint64_t, stable_string>>();
}
ENGINE_TEST("stable_map<stable_string, stable_string> against a model") {
  random_operations<E, stable_map<stable_string, stable_string>>();
}

TEST_CASE("a string_ref used after its transaction ended is refused") {
  using pool_t = ftm::engines::dual_bank;
  auto pool = engine_factory<pool_t>::make();
  ftm::transaction<pool_t> tx(*pool);
  tx.begin();
  auto ref = tx.create<stable_hash_map<std::uint64_t, stable_string>>();
  ftm::open(tx, ref).insert_or_assign(1, std::string(5000, 'x'));
  tx.commit();
  tx.begin();
  auto m = ftm::open_read(tx, ref);
  const auto kept = m.at(1);
  CHECK(kept.size() == 5000);
  CHECK(kept.str() == std::string(5000, 'x'));
  CHECK_THROWS_AS(static_cast<void>(m.at(2)), ftm::invalid_argument);
  tx.commit();
#if FTM_CHECKED
  CHECK_THROWS_AS(static_cast<void>(kept.str()), ftm::usage_error);
#endif
}
