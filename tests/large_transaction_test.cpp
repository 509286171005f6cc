// Large transactions (issue 10): a read-only transaction over a million objects, a
// transaction that writes a hundred thousand, and the clear error of one that writes
// more than its pool's log holds, on `dual_bank` and on `pmem`. Reads take no log
// entry (invisible reads), so the log capacity bounds only what a transaction writes.

#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace {

struct cell {
  std::uint64_t value;
};

/// `n` cells holding 0, 1, ..., made `batch` per transaction.
template <class E>
std::vector<ftm::stable<cell>> make_cells(E& pool, std::size_t n, std::size_t batch = 900) {
  std::vector<ftm::stable<cell>> cells;
  cells.reserve(n);
  while (cells.size() < n) {
    const std::size_t from = cells.size();
    const std::size_t to = std::min(n, from + batch);
    ftm::atomically(pool, [&](auto& tx) {
      cells.resize(from);
      for (std::size_t i = from; i < to; ++i)
        cells.push_back(tx.create(cell{i}));
    });
  }
  return cells;
}

/// The sum 0 + 1 + ... + (n - 1).
std::uint64_t triangle(std::size_t n) { return std::uint64_t{n} * (n - 1) / 2; }

}  // namespace

TEST_CASE_TEMPLATE("one read-only transaction reads a million objects", E, ftm::engines::dual_bank,
                   ftm::engines::pmem) {
  const std::size_t n = std::size_t{1000000} / ftm_test::sanitizer_divisor;
  // 64-byte blocks: 64 MB of objects, and room for the chunks' records.
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{80} << 20);
  const auto cells = make_cells(*pool, n);
  const std::uint64_t sum = ftm::atomically(*pool, [&](auto& tx) {
    std::uint64_t total = 0;
    for (const auto c : cells)
      total += tx.open_read(c)->value;
    return total;
  });
  CHECK(sum == triangle(n));
  CHECK(pool->check().ok());
}

TEST_CASE_TEMPLATE("one transaction writes a hundred thousand objects", E, ftm::engines::dual_bank,
                   ftm::engines::pmem) {
  const std::size_t n = std::size_t{100000} / ftm_test::sanitizer_divisor;
  // The log holds what a transaction writes: the pool is made for it.
  auto pool =
      ftm_test::engine_factory<E>::make(std::size_t{16} << 20, static_cast<std::uint32_t>(n + 64));
  const auto cells = make_cells(*pool, n);
  ftm::atomically(*pool, [&](auto& tx) {
    for (const auto c : cells)
      tx.open(c)->value += 1;
  });
  const std::uint64_t sum = ftm::atomically(*pool, [&](auto& tx) {
    std::uint64_t total = 0;
    for (const auto c : cells)
      total += tx.open_read(c)->value;
    return total;
  });
  CHECK(sum == triangle(n) + n);
  CHECK(pool->check().ok());
}

TEST_CASE_TEMPLATE("a transaction that writes more than the log holds names the limit to raise", E,
                   ftm::engines::dual_bank, ftm::engines::pmem) {
  const std::size_t n = 5000;
  auto pool = ftm_test::engine_factory<E>::make(std::size_t{4} << 20, 1024);
  const auto cells = make_cells(*pool, n);
  std::string what;
  try {
    ftm::atomically(*pool, [&](auto& tx) {
      for (const auto c : cells)
        tx.open(c)->value += 1;
    });
  } catch (const ftm::capacity_exceeded& e) {
    what = e.what();
  }
  CHECK(what.find("at most 1024 objects") != std::string::npos);
  CHECK(what.find("max_objects_per_transaction") != std::string::npos);
  // Nothing of it stayed; and reading them all is no problem for the same pool.
  const std::uint64_t sum = ftm::atomically(*pool, [&](auto& tx) {
    std::uint64_t total = 0;
    for (const auto c : cells)
      total += tx.open_read(c)->value;
    return total;
  });
  CHECK(sum == triangle(n));
  CHECK(pool->check().ok());
}
