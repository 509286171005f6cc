// Bank transfers with ftm: threads moving money between accounts concurrently, a
// transfer that aborts and leaves no trace, and a process killed with SIGKILL in
// the middle of its transfers, after which the survivor recovers the pool.
//
// Exit status 0 only if every check below holds; ctest runs this program.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <vector>

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
/// A stable type: trivially copyable, no raw pointers. Declared with Hana's macro,
/// so ftm can check its members and print it (`account{balance: 1000}`).
struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance));
};
/// fmt prints it with ftm's formatter for reflected types.
template <>
struct fmt::formatter<account> : ftm::reflected_formatter<account> {};

constexpr int n_accounts = 16;
constexpr std::int64_t initial_balance = 1000;

/// The named root of the pool: links to the accounts are `stable<account>`
/// handles, offsets that stay valid in every process that maps the pool.
struct bank {
  ftm::stable<account> accounts[n_accounts];
};

using pool_type = ftm::engines::dual_bank;
using transaction = ftm::transaction<pool_type>;
// [end-snippet]

// [snippet:transfer]
struct insufficient_funds : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Moves `amount` between two accounts, inside the caller's transaction. It changes
/// both balances first and checks afterwards: if it throws, the transaction aborts
/// and both changes are undone.
void transfer(transaction& tx, ftm::stable<account> from, ftm::stable<account> to,
              std::int64_t amount) {
  auto src = tx.open(from);
  auto dst = tx.open(to);
  src->balance -= amount;
  dst->balance += amount;
  if (src->balance < 0) {
    throw insufficient_funds(fmt::format("{} cannot pay {}", *src, amount));
  }
}
// [end-snippet]

namespace {

/// The sum of every balance, read in one transaction: a consistent snapshot.
std::int64_t total(pool_type& pool, const bank& b) {
  return ftm::atomically(pool, [&](transaction& tx) {
    std::int64_t sum = 0;
    for (auto ref : b.accounts)
      sum += tx.open_read(ref)->balance;
    return sum;
  });
}

std::int64_t balance(pool_type& pool, ftm::stable<account> ref) {
  return ftm::atomically(pool, [&](transaction& tx) { return tx.open_read(ref)->balance; });
}

/// Random transfers until `count` were attempted (forever if `count` is 0).
/// Returns how many committed.
int random_transfers(pool_type& pool, const bank& b, unsigned seed, int count) {
  std::minstd_rand rng{seed};
  std::uniform_int_distribution<int> pick{0, n_accounts - 1};
  std::uniform_int_distribution<std::int64_t> amount{1, 300};
  int committed = 0;
  // [snippet:session]
  ftm::session session{pool};  // this thread's descriptor, held until the loop ends
  // [end-snippet]
  for (int i = 0; count == 0 || i < count; ++i) {
    const int from = pick(rng);
    const int to = (from + 1 + pick(rng) % (n_accounts - 1)) % n_accounts;
    const std::int64_t sum = amount(rng);
    // [snippet:atomically]
    try {
      ftm::atomically(
          session, [&](transaction& tx) { transfer(tx, b.accounts[from], b.accounts[to], sum); });
      ++committed;
    } catch (const insufficient_funds&) {
      // aborted: neither balance changed
    }
    // [end-snippet]
  }
  return committed;
}

/// The process that dies: two threads of random transfers, and a third that stops
/// in the middle of a transfer after telling the parent so through `ready`.
[[noreturn]] void doomed_child(pool_type& pool, const bank& b, int ready) {
  std::thread t1([&] { random_transfers(pool, b, 101, 0); });
  std::thread t2([&] { random_transfers(pool, b, 202, 0); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ftm::atomically(pool, [&](transaction& tx) {
    auto src = tx.open(b.accounts[0]);
    auto dst = tx.open(b.accounts[1]);
    src->balance -= 1'000'000;  // half of a transfer: the money has left...
    const char byte = 1;
    if (::write(ready, &byte, 1) != 1) std::_Exit(2);
    for (;;)
      ::pause();  // ...and never arrives: SIGKILL comes first
  });
  std::_Exit(3);  // not reached
}

}  // namespace

int main() {
  pool_type pool{pool_type::options{.bank_size = 1 << 20}};

  fmt::print("1. Open the bank: a named root and {} accounts of {}\n", n_accounts, initial_balance);
  // [snippet:root]
  const ftm::stable<bank> root = ftm::atomically(pool, [](transaction& tx) {
    ftm::stable<bank> ref = tx.root<bank>("bank");  // found, or created empty
    auto b = tx.open(ref);
    for (auto& acc : b->accounts) {
      if (!acc) acc = tx.create(account{initial_balance});
    }
    return ref;  // return the handle, never the opened object
  });
  // [end-snippet]
  // A copy of the root's handles, to use outside transactions: handles are values.
  const bank b = ftm::atomically(pool, [&](transaction& tx) { return *tx.open_read(root); });
  fmt::print("  root 'bank' is {}, account 0 is {}\n", root, b.accounts[0]);
  expect(total(pool, b) == n_accounts * initial_balance, "the bank holds 16000 in total");

  fmt::print("\n2. Two threads, 5000 random transfers each\n");
  int committed[2] = {0, 0};
  {
    std::jthread t0([&] { committed[0] = random_transfers(pool, b, 1, 5000); });
    std::jthread t1([&] { committed[1] = random_transfers(pool, b, 2, 5000); });
  }
  fmt::print("  committed: {} + {}; the others aborted for lack of funds\n", committed[0],
             committed[1]);
  fmt::print("  stats: {}\n", pool.stats());
  expect(total(pool, b) == n_accounts * initial_balance, "the total is conserved");
  bool none_negative = true;
  for (auto ref : b.accounts)
    none_negative = none_negative && balance(pool, ref) >= 0;
  expect(none_negative, "no account is overdrawn");

  fmt::print("\n3. A transfer that aborts by throwing\n");
  const std::int64_t before0 = balance(pool, b.accounts[0]);
  const std::int64_t before1 = balance(pool, b.accounts[1]);
  // [snippet:abort]
  try {
    ftm::atomically(pool, [&](transaction& tx) {
      transfer(tx, b.accounts[0], b.accounts[1], before0 + 1);  // one more than it holds
    });
  } catch (const insufficient_funds& e) {
    fmt::print("  aborted: {}\n", e.what());  // atomically() aborted, then rethrew
  }
  // [end-snippet]
  fmt::print("  account 0: {} -> {}, account 1: {} -> {}\n", before0, balance(pool, b.accounts[0]),
             before1, balance(pool, b.accounts[1]));
  expect(balance(pool, b.accounts[0]) == before0 && balance(pool, b.accounts[1]) == before1,
         "the aborted transfer left no trace");

  fmt::print("\n4. A process killed in the middle of its transfers\n");
  const ftm::engine_stats stats_before = pool.stats();
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return EXIT_FAILURE;
  std::fflush(stdout);  // the child must not print our buffered output again
  // [snippet:recover]
  const pid_t child = ::fork();  // the pool is a shared mapping: the child uses it too
  if (child == 0) doomed_child(pool, b, pipe_fds[1]);
  ::close(pipe_fds[1]);

  char byte = 0;
  const bool mid_transfer = ::read(pipe_fds[0], &byte, 1) == 1;  // it is mid-transfer
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(child, SIGKILL);  // a processor failure
  ::waitpid(child, nullptr, 0);

  const ftm::recovery_report report = pool.recover();  // the backup's job
  fmt::print("  recovery: {}\n", report);
  // [end-snippet]
  ::close(pipe_fds[0]);
  const ftm::engine_stats stats_after = pool.stats();
  fmt::print("  the child committed {} transfers before it died\n",
             stats_after.commits - stats_before.commits);
  expect(mid_transfer, "the child was killed in the middle of a transfer");
  expect(report.undone >= 1, "recovery undid the transfer that was cut short");
  expect(total(pool, b) == n_accounts * initial_balance,
         "the total is conserved: every transfer happened entirely or not at all");

  fmt::print("\n5. The survivor carries on\n");
  const ftm::stable<bank> found =
      ftm::atomically(pool, [](transaction& tx) { return tx.root<bank>("bank"); });
  expect(found == root, "the root 'bank' still names the same object");
  const int more = random_transfers(pool, b, 3, 1000);
  fmt::print("  {} more transfers committed\n", more);
  expect(total(pool, b) == n_accounts * initial_balance, "the total is still conserved");

  const auto check = pool.check();
  fmt::print("\nstats: {}\n", pool.stats());
  fmt::print("check: {} objects, {} bytes in use, {}\n", check.objects, check.bytes_in_use,
             check.ok() ? "consistent" : "PROBLEMS");
  for (const auto& p : check.problems)
    fmt::print("  problem: {}\n", p);
  expect(check.ok(), "pool.check() is ok: no lock held, both banks agree");

  if (failures != 0) {
    fmt::print("\nbank: {} check(s) FAILED\n", failures);
    return EXIT_FAILURE;
  }
  fmt::print("\nbank: all checks passed\n");
  return EXIT_SUCCESS;
}
