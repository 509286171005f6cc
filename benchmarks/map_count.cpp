/// \file
/// `ftm_map_count MAP OP N [KEYS]`: N one-operation transactions on a map of KEYS keys
/// (10,000 unless given; `hash`: `stable_hash_map<uint64_t, uint64_t>`, `tree`:
/// `stable_map`; `hash100` and `tree100`: 100-byte values, as in the YCSB benchmark;
/// `hash-str` and `tree-str`: `stable_string` keys of 24 bytes, past the 16 inline, and
/// 100-byte `stable_string` values), each a lookup (`read`) or an overwrite (`update`),
/// and nothing else, so that an instruction counter sees their cost: (count(2N) -
/// count(N)) / N cancels the start-up. With many keys (200,000: the nodes of both banks
/// are about 70 MB) callgrind's cache simulation counts the misses of an operation.
/// docs/benchmarks.md ("Maps of strings") runs it under callgrind to show that string
/// keys and values left the fixed-size path unchanged.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

namespace {

using pool_t = ftm::engines::dual_bank;

/// The YCSB benchmark's value.
struct value100 {
  char bytes[100];
};

/// Key `k` of the map, and a value for it.
template <class Map>
auto key_of(std::uint64_t k) {
  if constexpr (std::is_same_v<typename Map::key_type, ftm::stable_string>) {
    return fmt::format("key {:020}", k * 7);
  } else {
    return k * 7;
  }
}
template <class Map>
auto value_of(std::uint64_t v) {
  if constexpr (std::is_same_v<typename Map::mapped_type, ftm::stable_string>) {
    return fmt::format("{:0100}", v);
  } else if constexpr (std::is_same_v<typename Map::mapped_type, value100>) {
    value100 out{};
    std::memcpy(out.bytes, &v, sizeof v);
    return out;
  } else {
    return v;
  }
}

template <class Map>
std::uint64_t run(std::string_view op, long n, std::uint64_t keys) {
  // 64 MiB, or 1,280 bytes a key, in whole chunks.
  const std::size_t bank =
      std::max(std::size_t{64} << 20, (keys * 1280 + 0xffff) & ~std::size_t{0xffff});
  pool_t pool{pool_t::options{.bank_size = bank}};
  auto ref = ftm::atomically(pool, [](auto& tx) { return tx.template create<Map>(); });
  for (std::uint64_t b = 0; b < keys; b += 50) {
    ftm::atomically(pool, [&](auto& tx) {
      auto m = ftm::open(tx, ref);
      for (std::uint64_t k = b; k < b + 50; ++k)
        m.insert_or_assign(key_of<Map>(k), value_of<Map>(k));
    });
  }
  std::uint64_t sink = 0;
  for (long i = 0; i < n; ++i) {
    const auto k = key_of<Map>(static_cast<std::uint64_t>(i) * 2654435761U % keys);
    if (op == "read") {
      sink += ftm::atomically(pool, [&](auto& tx) {
        const auto v = ftm::open_read(tx, ref).at(k);
        if constexpr (std::is_integral_v<decltype(v)>) {
          return v;
        } else if constexpr (std::is_same_v<std::remove_cvref_t<decltype(v)>, value100>) {
          return static_cast<std::uint64_t>(v.bytes[1]);
        } else {
          return static_cast<std::uint64_t>(v.substr(99).front());
        }
      });
    } else {
      const auto v = value_of<Map>(static_cast<std::uint64_t>(i));
      ftm::atomically(pool, [&](auto& tx) { ftm::open(tx, ref).insert_or_assign(k, v); });
    }
  }
  return sink;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr,
                 "usage: ftm_map_count hash|tree|hash100|tree100|hash-str|tree-str read|update N "
                 "[KEYS]\n");
    return 2;
  }
  const std::string_view map = argv[1];
  const std::string_view op = argv[2];
  const long n = std::atol(argv[3]);
  const std::uint64_t keys = argc == 5 ? std::strtoull(argv[4], nullptr, 10) : 10000;
  using ftm::stable_string;
  std::uint64_t sink = 0;
  if (map == "hash") {
    sink = run<ftm::stable_hash_map<std::uint64_t, std::uint64_t>>(op, n, keys);
  } else if (map == "tree") {
    sink = run<ftm::stable_map<std::uint64_t, std::uint64_t>>(op, n, keys);
  } else if (map == "hash100") {
    sink = run<ftm::stable_hash_map<std::uint64_t, value100>>(op, n, keys);
  } else if (map == "tree100") {
    sink = run<ftm::stable_map<std::uint64_t, value100>>(op, n, keys);
  } else if (map == "hash-str") {
    sink = run<ftm::stable_hash_map<stable_string, stable_string>>(op, n, keys);
  } else {
    sink = run<ftm::stable_map<stable_string, stable_string>>(op, n, keys);
  }
  std::printf("%llu\n", static_cast<unsigned long long>(sink));
  return 0;
}
