#ifndef FTM_TOOLS_BENCH_FTM_POOL_HPP
#define FTM_TOOLS_BENCH_FTM_POOL_HPP

/// \file
/// What every ftm workload of ftm-bench shares: the pool of a run (made in the parent,
/// opened again by each worker process on `pmem`), a worker's way to run transactions
/// (on a session or on the engine), bulk creation in batches, and the final check.

#include "system.hpp"
#include "workload.hpp"

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <unistd.h>

namespace bench::ftm_pool {

using ftm::engines::dual_bank;
using ftm::engines::pmem;

/// Keeps the compiler from dropping a read whose result nobody uses.
inline void keep(std::int64_t v) noexcept { asm volatile("" : : "r"(v) : "memory"); }

/// Bytes per bank for `objects` objects of `size` bytes, with room for the
/// allocator's records and the roots.
inline std::size_t bank_bytes(const options& o, std::uint64_t objects, std::uint64_t size) {
  if (o.pool_size != 0) return o.pool_size;
  constexpr std::uint64_t chunk = dual_bank::chunk_size;
  const std::uint64_t total = size + 16;
  const std::uint64_t per_object =
      total > chunk / 2 ? (total + chunk - 1) / chunk * chunk : std::bit_ceil(total);
  const std::uint64_t need = objects * per_object * 5 / 4 + (std::uint64_t{4} << 20);
  return static_cast<std::size_t>((need + chunk - 1) / chunk * chunk);
}

/// An engine made in place by `make()`: engines are neither copied nor moved, and
/// `pmem::create` returns its pool by value.
template <class E>
struct boxed {
  template <class Make>
  explicit boxed(Make&& make) : value(make()) {}
  E value;
};

/// The pool of one run, and in each worker process the engine that process uses: a
/// `dual_bank` pool's mapping is shared with forked children, a `pmem` pool is opened
/// again by each child (its redo log state belongs to the process that opened it).
template <class E>
class pool_owner {
 public:
  pool_owner(const options& o, std::size_t bank) : options_(o) {
    if constexpr (std::is_same_v<E, dual_bank>) {
      pool_ = std::make_unique<boxed<E>>([&] { return E(dual_bank::options{.bank_size = bank}); });
    } else {
      remove_files();
      opts_.bank_size = bank;
      opts_.level =
          o.durability == level::power ? ftm::durability::power : ftm::durability::process;
      pool_ = std::make_unique<boxed<E>>([&] { return pmem::create(o.path, opts_); });
    }
    creator_ = ::getpid();
  }
  pool_owner(const pool_owner&) = delete;
  pool_owner& operator=(const pool_owner&) = delete;
  ~pool_owner() {
    if (::getpid() != creator_) return;  // a child leaves the pool to its parent
    mine_.reset();
    pool_.reset();
    if constexpr (!std::is_same_v<E, dual_bank>) remove_files();
  }

  /// The engine this process uses.
  E& engine() {
    if constexpr (std::is_same_v<E, dual_bank>) {
      return pool_->value;
    } else {
      if (::getpid() == creator_) return pool_->value;
      const std::lock_guard lock(mutex_);
      if (!mine_)
        mine_ = std::make_unique<boxed<E>>([&] { return pmem::open(options_.path, opts_); });
      return mine_->value;
    }
  }

 private:
  void remove_files() {
    std::error_code ignored;
    std::filesystem::remove(options_.path, ignored);
    std::filesystem::remove(options_.path + ".wal", ignored);
  }

  const options& options_;
  pmem::options opts_{};
  std::unique_ptr<boxed<E>> pool_;
  std::unique_ptr<boxed<E>> mine_;  // a child's own opening of a pmem pool
  std::mutex mutex_;
  pid_t creator_ = 0;
};

/// Runs a transaction on a worker's session, or on the engine.
template <class E>
class runner {
 public:
  runner(E& engine, bool sessions) : engine_(&engine) {
    if (sessions) session_.emplace(engine);
  }
  template <class F>
  decltype(auto) operator()(F&& f) {
    if (session_) return ftm::atomically(*session_, std::forward<F>(f));
    return ftm::atomically(*engine_, std::forward<F>(f));
  }

 private:
  E* engine_;
  std::optional<ftm::session<E>> session_;
};

/// Creates `n` objects with `make(tx)`, 512 per transaction (a transaction locks at
/// most 1,024 objects).
template <class E, class T, class Make>
std::vector<ftm::stable<T>> create_many(E& engine, std::uint64_t n, Make make) {
  std::vector<ftm::stable<T>> out;
  out.reserve(n);
  while (out.size() < n) {
    const auto batch = std::min<std::uint64_t>(512, n - out.size());
    auto made = ftm::atomically(engine, [&](ftm::transaction<E>& tx) {
      std::vector<ftm::stable<T>> v;
      for (std::uint64_t i = 0; i < batch; ++i)
        v.push_back(make(tx));
      return v;
    });
    out.insert(out.end(), made.begin(), made.end());
  }
  return out;
}

template <class E>
std::string engine_name(const options& o) {
  if constexpr (std::is_same_v<E, dual_bank>) {
    return "ftm dual_bank";
  } else {
    return fmt::format("ftm pmem/{}", o.durability == level::power ? "power" : "process");
  }
}

template <class E>
abort_counts counts_of(E& engine) {
  const auto s = engine.stats();
  return {s.aborts, s.conflicts, s.retries};
}

/// `workload`'s verdict, then `pool.check()` if it passed.
template <class E>
check_result with_pool_check(check_result workload, E& engine) {
  if (!workload.ok) return workload;
  const auto report = engine.check();
  if (!report.ok()) {
    return {false, fmt::format("pool.check(): {}", fmt::join(report.problems, "; "))};
  }
  workload.message += ", pool consistent";
  return workload;
}

/// The workload's invariant over the words `words(view)` of every object, read 512 per
/// transaction, then `pool.check()`.
template <class E, class T, class Words>
check_result check_objects(E& engine, const std::vector<ftm::stable<T>>& objects, const options& o,
                           std::uint64_t writes, Words words) {
  invariant all(o);
  for (std::size_t at = 0; at < objects.size(); at += 512) {
    const auto end = std::min(objects.size(), at + 512);
    ftm::atomically(engine, [&](ftm::transaction<E>& tx) {
      for (std::size_t i = at; i < end; ++i)
        all.add(words(tx.open_read(objects[i])));
    });
  }
  return with_pool_check(all.result(objects.size(), writes), engine);
}

}  // namespace bench::ftm_pool

#endif  // FTM_TOOLS_BENCH_FTM_POOL_HPP
