// Protected mode: a pointer kept from an opened object and written after the commit,
// caught at run time. A child process makes the stray write; the parent shows how it
// ended and that the pool never saw the write. Built and run by ctest, and quoted in
// docs/tutorial.md between the snippet markers.
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

#include <csignal>
#include <cstdio>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

struct account {
  long balance;
};

int main() {
  using transaction = ftm::transaction<ftm::engines::dual_bank>;
  // [snippet:pool]
  ftm::engines::dual_bank pool{{.bank_size = 1 << 20, .protected_mode = true}};
  // [end-snippet]
  const auto a = ftm::atomically(pool, [](transaction& tx) { return tx.create(account{100}); });

  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child == 0) {
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);  // the report on stderr is enough here
    // [snippet:stray]
    long* kept = nullptr;
    ftm::atomically(pool, [&](transaction& tx) {
      auto acc = tx.open(a);
      acc->balance -= 30;
      kept = &acc->balance;  // a raw pointer outlives the transaction...
    });
    *kept = 1'000'000;  // ...and writes the pool after the commit: SIGSEGV, reported
    // [end-snippet]
    ::_exit(0);  // not reached in protected mode
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  const bool stopped = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
  const long balance =
      ftm::atomically(pool, [&](transaction& tx) { return tx.open_read(a)->balance; });
  fmt::print("the child {}; the balance is {}; the pool is {}\n",
             stopped ? "was stopped by SIGSEGV" : "was not stopped", balance,
             pool.check().ok() ? "whole" : "damaged");
  return stopped && balance == 70 && pool.check().ok() ? 0 : 1;
}
