// Stable ports and a reliable server: orders sent and received in transactions, a
// receive that fails and is delivered again, a poison order that ends in the
// dead-letter port, and a server in another process answering calls.
//
// Exit status 0 only if every check below holds; ctest runs this program.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>

#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

int failures = 0;

void expect(bool ok, std::string_view what) {
  fmt::print("  [{}] {}\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

}  // namespace

// [snippet:types]
/// Messages are stable types, like objects: they are copied into the pool.
struct order {
  BOOST_HANA_DEFINE_STRUCT(order, (std::uint32_t, id), (std::int64_t, amount));
};

using pool_type = ftm::engines::dual_bank;
using transaction = ftm::transaction<pool_type>;
// [end-snippet]

struct account {
  std::int64_t balance;
};

int main() {
  using namespace std::chrono_literals;
  pool_type pool{1 << 20};

  fmt::print("ports:\n");
  // [snippet:make]
  const auto dead = ftm::atomically(pool, [](transaction& tx) {
    return ftm::make_port<order>(tx, {.capacity = 16, .max_deliveries = 0});
  });
  const auto orders = ftm::atomically(pool, [&](transaction& tx) {
    return ftm::make_port<order>(tx, {.capacity = 64, .max_deliveries = 3}, dead);
  });
  // [end-snippet]

  // [snippet:send]
  ftm::atomically(pool, [&](transaction& tx) {
    ftm::send(tx, orders, order{1, 250});
    ftm::send(tx, orders, order{2, -1});  // poison: no handler accepts it
  });
  // [end-snippet]

  // [snippet:receive]
  auto handle = [&](transaction& tx) {
    const order o = ftm::receive(tx, orders);  // waits for a committed order
    if (o.amount < 0) throw std::invalid_argument(fmt::format("bad order {}", o.id));
    return o;
  };
  const order first = ftm::atomically(pool, handle);
  for (int attempt = 0; attempt < 3; ++attempt) {
    try {
      ftm::atomically(pool, handle);
    } catch (const std::invalid_argument&) {
      // The receive aborted: order 2 is back at the head, delivered once more.
    }
  }
  // [end-snippet]
  expect(first.id == 1, "order 1 received");

  // [snippet:stats]
  const auto buried = ftm::atomically(pool, [&](transaction& tx) {
    auto none = ftm::try_receive(tx, orders);  // order 2 goes to the dead-letter port
    return std::pair{none, ftm::try_receive(tx, dead)};
  });
  const auto stats =
      ftm::atomically(pool, [&](transaction& tx) { return ftm::port_stats_of(tx, orders); });
  fmt::print("  orders: {}\n", stats);
  // [end-snippet]
  expect(!buried.first.has_value(), "no order left to deliver");
  expect(buried.second.has_value() && buried.second->id == 2, "order 2 in the dead-letter port");
  expect(stats.redelivered == 2 && stats.dead_lettered == 1, "two redeliveries, one dead letter");

  fmt::print("a server in another process:\n");
  // [snippet:serve]
  using service = ftm::service_port<order, account>;
  const service requests = ftm::atomically(
      pool, [](transaction& tx) { return ftm::make_port<ftm::call_request<order, account>>(tx); });
  const auto replies = ftm::atomically(
      pool, [](transaction& tx) { return ftm::make_port<ftm::reply_to_call<account>>(tx); });
  const auto balance = ftm::atomically(pool, [](transaction& tx) { return tx.create(account{0}); });
  const pid_t server = ::fork();
  if (server == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ftm::serve(pool, requests, [&](transaction& tx, const order& o) {
      auto acc = tx.open(balance);  // the effect and the reply commit together
      acc->balance += o.amount;
      return *acc;
    });
    ::_exit(0);
  }
  // [end-snippet]

  // [snippet:call]
  account after{};
  for (std::uint32_t id = 10; id < 15; ++id)
    after = ftm::call(pool, requests, replies, order{id, 100});
  fmt::print("  balance after 5 calls: {}\n", after.balance);
  // [end-snippet]
  expect(after.balance == 500, "each call handled once");
  ::kill(server, SIGKILL);
  ::waitpid(server, nullptr, 0);
  pool.recover();

  if (failures != 0) {
    fmt::print("{} check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  fmt::print("all checks passed\n");
  return EXIT_SUCCESS;
}
