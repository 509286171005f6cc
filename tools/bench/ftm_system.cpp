/// \file
/// ftm as a system under test: the tiny, bank and rpc workloads on a `dual_bank` or
/// `pmem` pool, with or without a session per worker thread.

#include "ftm_pool.hpp"
#include "system.hpp"
#include "workload.hpp"
#include "ycsb.hpp"

#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bench {
namespace {

using namespace ftm_pool;

/// The tiny workload's object: `Size` bytes of 8-byte fields.
template <std::size_t Size>
struct blob {
  std::int64_t field[Size / 8];
};

/// An account: its balance, and how many transfers it took part in (so that the check
/// counts the committed transfers without a counter every transfer would contend on).
struct account {
  std::int64_t value[2];
};

struct add_request {
  std::int64_t amount;
};
struct counter_value {
  std::int64_t value;
};

// ---- tiny ------------------------------------------------------------------------

template <class E, std::size_t Size>
class tiny_system final : public system {
 public:
  explicit tiny_system(const options& o) : o_(o) {}
  std::string name() const override { return engine_name<E>(o_); }

  void setup(int workers) override {
    const std::uint64_t n = object_count(o_, workers);
    pool_.reset();
    pool_ = std::make_unique<pool_owner<E>>(o_, bank_bytes(o_, n, Size));
    objects_ = create_many<E, blob<Size>>(pool_->engine(), n,
                                          [](auto& tx) { return tx.create(blob<Size>{}); });
  }

  std::unique_ptr<worker> make_worker(int index) override {
    return std::make_unique<tiny_worker>(*this, index);
  }

  std::optional<abort_counts> aborts() override { return counts_of(pool_->engine()); }

  check_result check(std::uint64_t writes) override {
    return check_objects(pool_->engine(), objects_, o_, writes,
                         [](const auto& v) { return v->field; });
  }

  void teardown() override {
    objects_.clear();
    pool_.reset();
  }

 private:
  class tiny_worker final : public worker {
   public:
    tiny_worker(tiny_system& s, int index)
        : s_(s),
          index_(static_cast<std::uint64_t>(index)),
          run_(s.pool_->engine(), s.o_.sessions) {}

    bool run_one(random& r) override {
      const auto& objects = s_.objects_;
      const step st = next_step(r, s_.o_, objects.size(), index_);
      const std::uint32_t fields = s_.o_.fields;
      if (st.read_only) {
        keep(run_([&](ftm::transaction<E>& tx) {
          const auto v = tx.open_read(objects[st.a]);
          std::int64_t sum = 0;
          for (std::uint32_t k = 0; k < fields; ++k)
            sum += v->field[k];
          return sum;
        }));
        return true;
      }
      run_([&](ftm::transaction<E>& tx) {
        apply_write(s_.o_, tx.open(objects[st.a])->field, nullptr, st.amount);
      });
      return false;
    }

   private:
    tiny_system& s_;
    std::uint64_t index_;
    runner<E> run_;
  };

  const options& o_;
  std::unique_ptr<pool_owner<E>> pool_;
  std::vector<ftm::stable<blob<Size>>> objects_;
};

// ---- bank ------------------------------------------------------------------------

template <class E>
class bank_system final : public system {
 public:
  explicit bank_system(const options& o) : o_(o) {}
  std::string name() const override { return engine_name<E>(o_); }

  void setup(int) override {
    const std::uint64_t n = object_count(o_, 0);
    pool_.reset();
    pool_ = std::make_unique<pool_owner<E>>(o_, bank_bytes(o_, n, sizeof(account)));
    accounts_ = create_many<E, account>(pool_->engine(), n, [](auto& tx) {
      return tx.create(account{initial_balance, 0});
    });
  }

  std::unique_ptr<worker> make_worker(int) override { return std::make_unique<bank_worker>(*this); }

  std::optional<abort_counts> aborts() override { return counts_of(pool_->engine()); }

  check_result check(std::uint64_t writes) override {
    return check_objects(pool_->engine(), accounts_, o_, writes,
                         [](const auto& v) { return v->value; });
  }

  void teardown() override {
    accounts_.clear();
    pool_.reset();
  }

 private:
  class bank_worker final : public worker {
   public:
    explicit bank_worker(bank_system& s) : s_(s), run_(s.pool_->engine(), s.o_.sessions) {}

    bool run_one(random& r) override {
      const auto& accounts = s_.accounts_;
      const step st = next_step(r, s_.o_, accounts.size(), 0);
      if (st.read_only) {
        keep(run_([&](ftm::transaction<E>& tx) {
          return tx.open_read(accounts[st.a])->value[0] + tx.open_read(accounts[st.b])->value[0];
        }));
        return true;
      }
      run_([&](ftm::transaction<E>& tx) {
        apply_write(s_.o_, tx.open(accounts[st.a])->value, tx.open(accounts[st.b])->value,
                    st.amount);
      });
      return false;
    }

   private:
    bank_system& s_;
    runner<E> run_;
  };

  const options& o_;
  std::unique_ptr<pool_owner<E>> pool_;
  std::vector<ftm::stable<account>> accounts_;
};

// ---- rpc -------------------------------------------------------------------------

template <class E>
class rpc_system final : public system {
 public:
  using service = ftm::service_port<add_request, counter_value>;

  explicit rpc_system(const options& o) : o_(o) {}
  std::string name() const override { return engine_name<E>(o_) + " rpc"; }

  void setup(int workers) override {
    pool_.reset();
    pool_ = std::make_unique<pool_owner<E>>(o_, bank_bytes(o_, 64 + 2 * workers, 8192));
    auto& engine = pool_->engine();
    using tx_t = ftm::transaction<E>;
    requests_ = ftm::atomically(engine, [](tx_t& tx) {
      return ftm::make_port<ftm::call_request<add_request, counter_value>>(tx, {.capacity = 256});
    });
    replies_.clear();
    for (int i = 0; i < workers; ++i) {
      replies_.push_back(ftm::atomically(
          engine, [](tx_t& tx) { return ftm::make_port<ftm::reply_to_call<counter_value>>(tx); }));
    }
    counter_ = ftm::atomically(engine, [](tx_t& tx) { return tx.create(counter_value{0}); });
    server_ = ::fork();
    if (server_ < 0) throw std::system_error(errno, std::generic_category(), "fork the server");
    if (server_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      try {
        const auto counter = counter_;
        ftm::serve(pool_->engine(), requests_, [counter](tx_t& tx, const add_request& r) {
          auto c = tx.open(counter);
          c->value += r.amount;
          return counter_value{c->value};
        });
      } catch (const std::exception& e) {
        fmt::print(stderr, "ftm-bench: the rpc server failed: {}\n", e.what());
        ::_exit(1);
      }
      ::_exit(0);
    }
  }

  std::unique_ptr<worker> make_worker(int index) override {
    return std::make_unique<rpc_worker>(*this, index);
  }

  std::optional<abort_counts> aborts() override { return counts_of(pool_->engine()); }

  check_result check(std::uint64_t writes) override {
    auto& engine = pool_->engine();
    const auto value = ftm::atomically(
        engine, [&](ftm::transaction<E>& tx) { return tx.open_read(counter_)->value; });
    if (value != static_cast<std::int64_t>(writes)) {
      return {false,
              fmt::format("the server counted {} calls, the clients made {}", value, writes)};
    }
    stop_server();
    return with_pool_check({true, fmt::format("{} calls, each applied once", writes)}, engine);
  }

  void teardown() override {
    stop_server();
    pool_.reset();
  }

  int server_pid() const override { return server_; }

 private:
  void stop_server() {
    if (server_ <= 0) return;
    ::kill(server_, SIGKILL);
    ::waitpid(server_, nullptr, 0);
    server_ = 0;
    pool_->engine().recover();  // the server's descriptor, if it died in a transaction
  }

  class rpc_worker final : public worker {
   public:
    rpc_worker(rpc_system& s, int index)
        : s_(s),
          engine_(s.pool_->engine()),
          replies_(s.replies_[static_cast<std::size_t>(index)]) {}
    bool run_one(random&) override {
      keep(ftm::call(engine_, s_.requests_, replies_, add_request{1}).value);
      return false;
    }

   private:
    rpc_system& s_;
    E& engine_;
    ftm::reply_port<counter_value> replies_;
  };

  const options& o_;
  std::unique_ptr<pool_owner<E>> pool_;
  service requests_;
  std::vector<ftm::reply_port<counter_value>> replies_;
  ftm::stable<counter_value> counter_;
  pid_t server_ = 0;
};

template <class E>
std::unique_ptr<system> make_for(const options& o) {
  switch (o.load) {
    case workload::bank: return std::make_unique<bank_system<E>>(o);
    case workload::rpc: return std::make_unique<rpc_system<E>>(o);
    default: break;  // tiny
  }
  switch (o.object_size) {
    case 16: return std::make_unique<tiny_system<E, 16>>(o);
    case 64: return std::make_unique<tiny_system<E, 64>>(o);
    case 256: return std::make_unique<tiny_system<E, 256>>(o);
    case 1024: return std::make_unique<tiny_system<E, 1024>>(o);
    case 4096: return std::make_unique<tiny_system<E, 4096>>(o);
    case 16384: return std::make_unique<tiny_system<E, 16384>>(o);
    case 65536: return std::make_unique<tiny_system<E, 65536>>(o);
    case 262144: return std::make_unique<tiny_system<E, 262144>>(o);
    case 1048576: return std::make_unique<tiny_system<E, 1048576>>(o);
    default: break;
  }
  throw usage_error(fmt::format("--object-size {} is not one of {}", o.object_size,
                                "16, 64, 256, 1K, 4K, 16K, 64K, 256K, 1M"));
}

}  // namespace

std::unique_ptr<system> make_ftm_system(const options& o) {
  if (ycsb::is_ycsb(o.load)) return make_ftm_ycsb_system(o);
  if (o.engine == engine_kind::pmem) return make_for<pmem>(o);
  return make_for<dual_bank>(o);
}

}  // namespace bench
