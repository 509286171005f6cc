/// \file
/// `ftm_tx_count KIND N`: runs N transactions of one kind of `ftm_bench`'s single-thread
/// rows (tiny_write or read_only, with or without a session) on a `dual_bank` pool, and
/// nothing else, so that an instruction counter sees their cost per transaction:
/// (count(2N) - count(N)) / N cancels the start-up. docs/benchmarks.md ("Issue 11")
/// runs it under callgrind, which counts the same on a loaded machine as on a quiet one.

#include "workload.hpp"

#include <ftm/engines/dual_bank.hpp>
#include <ftm/session.hpp>
#include <ftm/transaction.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace {

using ftm_bench::record;

template <class Run>
std::int64_t repeat(long n, Run run) {
  std::int64_t sink = 0;
  for (long i = 0; i < n; ++i)
    sink += run();
  return sink;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr,
                 "usage: ftm_tx_count tiny_write/ftm|tiny_write/ftm-session|read_only/ftm|"
                 "read_only/ftm-session N\n");
    return 2;
  }
  const std::string_view kind = argv[1];
  const long n = std::atol(argv[2]);
  ftm::engines::dual_bank pool{ftm::engines::dual_bank::options{.bank_size = std::size_t{1} << 20}};
  const auto object = ftm::atomically(pool, [](auto& tx) { return tx.create(record{}); });
  ftm::session<ftm::engines::dual_bank> session(pool);
  // The transactions of ftm_bench's ftm_system: two fields changed, or two read.
  auto write = [&](auto& on) {
    return [&] {
      ftm::atomically(on, [&](auto& tx) {
        auto r = tx.open(object);
        r->field[0] += 1;
        r->field[1] -= 1;
      });
      return std::int64_t{0};
    };
  };
  auto read = [&](auto& on) {
    return [&] {
      return ftm::atomically(on, [&](auto& tx) {
        auto r = tx.open_read(object);
        return r->field[0] + r->field[1];
      });
    };
  };
  std::int64_t sink = 0;
  if (kind == "tiny_write/ftm") {
    sink = repeat(n, write(pool));
  } else if (kind == "tiny_write/ftm-session") {
    sink = repeat(n, write(session));
  } else if (kind == "read_only/ftm") {
    sink = repeat(n, read(pool));
  } else if (kind == "read_only/ftm-session") {
    sink = repeat(n, read(session));
  } else {
    std::fprintf(stderr, "ftm_tx_count: unknown kind '%s'\n", argv[1]);
    return 2;
  }
  // Every tiny write keeps field 0 + field 1 at 0: a read sums to 0.
  return sink == 0 ? 0 : 1;
}
