// Rule: a handler for a port over several message types must have a case for each
// of them; the diagnostic names the type left out.
//
// expected-error: ftm::handle: the handler has no case for the message type
// expected-error: message_not_handled<cancel_order>

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <optional>
#include <variant>

struct place_order {
  long amount;
};

struct cancel_order {
  long id;
};

long total(ftm::transaction<ftm::engines::dual_bank>& tx,
           ftm::multi_port<place_order, cancel_order> port) {
  long sum = 0;
  if (auto m = ftm::try_receive(tx, port)) {
    ftm::handle(*m, ftm::overloaded{[&](const place_order& o) { sum += o.amount; }});
  }
  return sum;
}
