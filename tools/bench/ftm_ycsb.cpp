/// \file
/// ftm running the YCSB workloads: the records in a `stable_hash_map` (A, B, C, F) or
/// a `stable_map` (E, whose scans need key order), in a pool on `dual_bank` or `pmem`.
/// Each operation is one transaction, as in YCSB's client.

#include "ftm_pool.hpp"
#include "system.hpp"
#include "ycsb.hpp"

#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>

namespace bench {
namespace {

using namespace ftm_pool;

/// A record's value: `Size` bytes (ycsb.hpp says what they hold).
template <std::size_t Size>
struct record {
  unsigned char byte[Size];
};

/// Records loaded per transaction.
constexpr std::uint64_t batch = 64;

template <class E, std::size_t Size, bool Ordered>
class ycsb_system final : public system {
  using map_type = std::conditional_t<Ordered, ftm::stable_map<std::uint64_t, record<Size>>,
                                      ftm::stable_hash_map<std::uint64_t, record<Size>>>;

 public:
  explicit ycsb_system(const options& o) : o_(o) {}
  std::string name() const override { return engine_name<E>(o_); }

  void setup(int) override {
    n_ = object_count(o_, 0);
    pool_.reset();
    // Room for twice the records' bytes: the map's nodes are not all full.
    pool_ = std::make_unique<pool_owner<E>>(o_, bank_bytes(o_, n_ * 2 + 4096, Size + 8));
    E& engine = pool_->engine();
    map_ = ftm::atomically(engine, [](ftm::transaction<E>& tx) { return tx.create(map_type{}); });
    if constexpr (!Ordered) {
      ftm::atomically(engine, [&](ftm::transaction<E>& tx) {
        ftm::open(tx, map_).reserve_segments();  // no insert ever writes the segment table
      });
    }
    record<Size> value;
    for (std::uint64_t at = 0; at < n_; at += batch) {
      const auto end = std::min(n_, at + batch);
      ftm::atomically(engine, [&](ftm::transaction<E>& tx) {
        auto m = ftm::open(tx, map_);
        for (std::uint64_t i = at; i < end; ++i) {
          ycsb::fill(value.byte, Size, i, 0);
          m.insert(ycsb::key_of(i), value);
        }
      });
    }
  }

  std::unique_ptr<worker> make_worker(int index) override {
    return std::make_unique<ycsb_worker>(*this, index);
  }

  std::optional<abort_counts> aborts() override { return counts_of(pool_->engine()); }

  check_result check(std::uint64_t writes) override {
    E& engine = pool_->engine();
    std::optional<ycsb::invariant> all;
    try {
      // Every record in one transaction (reads need no log entry: issue 11), after the
      // map's own walk of its structure; the ordered map's records in key order.
      ftm::atomically(engine, [&](ftm::transaction<E>& tx) {
        all.emplace(o_, Size, Ordered);  // a retry starts again
        const auto m = ftm::open_read(tx, map_);
        m.verify();
        for (const auto& [key, value] : m)
          all->add(key, value.byte);
      });
    } catch (const ftm::error& e) {
      return {false, fmt::format("the map is broken: {}", e.what())};
    }
    return with_pool_check(all->result(n_, writes), engine);
  }

  void teardown() override { pool_.reset(); }

 private:
  class ycsb_worker final : public worker {
   public:
    ycsb_worker(ycsb_system& s, int index)
        : s_(s), run_(s.pool_->engine(), s.o_.sessions), choose_(s.o_, s.n_, index) {}

    bool run_one(random& r) override {
      const ycsb::choice c = choose_.next(r);
      const std::uint64_t key = ycsb::key_of(c.record);
      const auto& map = s_.map_;
      switch (c.what) {
        case ycsb::op::read:
          keep(run_([&](ftm::transaction<E>& tx) {
            const auto m = ftm::open_read(tx, map);
            const auto it = m.find(key);
            return it == m.end() ? 0 : ycsb::digest(it->second.byte, Size);
          }));
          return true;
        case ycsb::op::scan:
          keep(run_([&](ftm::transaction<E>& tx) {
            std::int64_t sum = 0;
            if constexpr (Ordered) {
              const auto m = ftm::open_read(tx, map);
              auto it = m.lower_bound(key);
              for (std::uint32_t k = 0; it != m.end() && k < c.length; ++it, ++k)
                sum += ycsb::digest(it->second.byte, Size);
            }
            return sum;
          }));
          return true;
        case ycsb::op::insert:
          run_([&](ftm::transaction<E>& tx) {
            record<Size> value;
            ycsb::fill(value.byte, Size, c.record, 0);
            ftm::open(tx, map).insert(key, value);
          });
          return false;
        case ycsb::op::update:
          run_([&](ftm::transaction<E>& tx) {
            auto m = ftm::open(tx, map);
            ycsb::bump(m[key].byte, Size);
          });
          return false;
        case ycsb::op::read_modify_write:
          run_([&](ftm::transaction<E>& tx) {
            auto& value = ftm::open(tx, map)[key];
            keep(ycsb::digest(value.byte, Size));  // the read, then the write
            ycsb::bump(value.byte, Size);
          });
          return false;
      }
      return true;
    }

   private:
    ycsb_system& s_;
    runner<E> run_;
    ycsb::chooser choose_;
  };

  const options& o_;
  std::uint64_t n_ = 0;
  std::unique_ptr<pool_owner<E>> pool_;
  ftm::stable<map_type> map_;
};

template <class E, std::size_t Size>
std::unique_ptr<system> make_sized(const options& o) {
  if (ycsb::is_ordered(o.load)) return std::make_unique<ycsb_system<E, Size, true>>(o);
  return std::make_unique<ycsb_system<E, Size, false>>(o);
}

template <class E>
std::unique_ptr<system> make_for(const options& o) {
  if (o.object_size == 1000) return make_sized<E, 1000>(o);
  return make_sized<E, 100>(o);
}

}  // namespace

std::unique_ptr<system> make_ftm_ycsb_system(const options& o) {
  if (o.engine == engine_kind::pmem) return make_for<pmem>(o);
  return make_for<dual_bank>(o);
}

}  // namespace bench
