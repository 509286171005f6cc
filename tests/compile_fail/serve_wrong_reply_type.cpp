// Rule: a server's handler returns the reply type of its service port.
//
// expected-error: ftm::serve: the handler must return the reply type of the service port

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
  ftm::serve(pool, port, [](ftm::transaction<ftm::engines::dual_bank>&, const deposit& d) {
    return d.amount;  // a long, not a receipt
  });
}
