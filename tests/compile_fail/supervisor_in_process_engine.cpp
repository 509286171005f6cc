// Rule: a supervisor restarts its task in a forked child and recovers the child's
// transactions in the parent, so it needs an engine whose state the child shares
// (ftm::fork_shared_engine); the in-process reference engine is refused.
//
// expected-error: ftm::supervisor requires an engine that models ftm::fork_shared_engine
// expected-error: use ftm::engines::dual_bank or ftm::engines::pmem
// expected-error-gcc: static assertion failed
// expected-error-clang: static.assert(ion)? failed

#include <ftm/engines/reference.hpp>
#include <ftm/ftm.hpp>
#include <ftm/supervisor.hpp>

void run(ftm::engines::reference& pool) {
  ftm::supervisor task(pool, {.name = "worker"}, [](ftm::engines::reference&) {});
  task.run();
}
