// Rule: a server's handler takes the transaction first, so that its work commits with
// the reply.
//
// expected-error: ftm::serve: the handler must take the transaction first

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/server.hpp>

struct deposit {
  long amount;
};
struct receipt {
  long balance;
};

void run(ftm::engines::dual_bank& pool, ftm::service_port<deposit, receipt> port) {
  ftm::serve(pool, port, [](const deposit& d) { return receipt{d.amount}; });
}
