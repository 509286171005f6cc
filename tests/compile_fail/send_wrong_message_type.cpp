// Rule: a port carries one message type (or the alternatives of its std::variant);
// sending anything else is refused, even a type that converts to it.
//
// expected-error: ftm::send: the port does not carry this message type
// expected-error-gcc: T = refund
// expected-error-clang: ftm::send<.*refund>

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>

#include <variant>

struct order {
  long amount;
};

struct cancel {
  long id;
};

struct refund {
  long amount;
  operator order() const { return order{amount}; }  // converts, yet is not an order
};

void submit(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable_port<order> orders,
            ftm::multi_port<order, cancel> mixed) {
  ftm::send(tx, orders, order{1});  // fine
  ftm::send(tx, mixed, cancel{2});  // fine: an alternative
  ftm::send(tx, orders, refund{3});
}
