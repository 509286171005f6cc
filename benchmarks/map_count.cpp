/// \file
/// `ftm_map_count MAP OP N`: N one-operation transactions on a map of 10,000 fixed-size
/// keys (`hash`: `stable_hash_map<uint64_t, uint64_t>`, `tree`: `stable_map`), each a
/// lookup (`read`) or an overwrite (`update`), and nothing else, so that an instruction
/// counter sees their cost: (count(2N) - count(N)) / N cancels the start-up.
/// docs/benchmarks.md ("Maps of strings") runs it under callgrind to show that string
/// keys and values left the fixed-size path unchanged.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/transaction.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace {

using pool_t = ftm::engines::dual_bank;

template <class Map>
std::uint64_t run(std::string_view op, long n) {
  pool_t pool{pool_t::options{.bank_size = std::size_t{64} << 20}};
  auto ref = ftm::atomically(pool, [](auto& tx) { return tx.template create<Map>(); });
  for (std::uint64_t b = 0; b < 10000; b += 50) {
    ftm::atomically(pool, [&](auto& tx) {
      auto m = ftm::open(tx, ref);
      for (std::uint64_t k = b; k < b + 50; ++k)
        m.insert_or_assign(k * 7, k);
    });
  }
  std::uint64_t sink = 0;
  for (long i = 0; i < n; ++i) {
    const std::uint64_t k = (static_cast<std::uint64_t>(i) * 2654435761U % 10000) * 7;
    if (op == "read") {
      sink += ftm::atomically(pool, [&](auto& tx) { return ftm::open_read(tx, ref).at(k); });
    } else {
      ftm::atomically(pool, [&](auto& tx) {
        ftm::open(tx, ref).insert_or_assign(k, static_cast<std::uint64_t>(i));
      });
    }
  }
  return sink;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: ftm_map_count hash|tree read|update N\n");
    return 2;
  }
  const std::string_view map = argv[1];
  const std::string_view op = argv[2];
  const long n = std::atol(argv[3]);
  const std::uint64_t sink = map == "hash"
                                 ? run<ftm::stable_hash_map<std::uint64_t, std::uint64_t>>(op, n)
                                 : run<ftm::stable_map<std::uint64_t, std::uint64_t>>(op, n);
  std::printf("%llu\n", static_cast<unsigned long long>(sink));
  return 0;
}
