#ifndef FTM_DETAIL_PORT_DELIVERY_HPP
#define FTM_DETAIL_PORT_DELIVERY_HPP

/// \file
/// Delivery, redelivery and poison messages: a receive counts each delivery past the
/// reach of abort (so an aborted or killed receive puts the message back counted),
/// and a message delivered `max_deliveries` times goes to the port's dead-letter port
/// instead, in the receive's transaction or, when that aborts to wait, in one of its
/// own (`bury_poison`, the tidy-up work of a `retry_request`).

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/detail/port_ring.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <optional>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Moves the message at the head of `port` to its dead-letter port (or drops it if it
/// has none), in the same transaction.
template <class Msg, class E>
void bury_head(port_writer<E>& port) {
  port_header& h = port.header();
  const Msg msg = load_message<Msg>(port.payload(h.head));
  ++h.head;
  ++h.dead_lettered;
  if (h.dead_letter == 0) return;
  auto dead = open_port<Msg, true>(port.tx(), h.dead_letter, h.dead_letter_capacity, "receive");
  if (dead.depth() == dead.header().capacity) {
    throw port_full(fmt::format(
        "ftm::receive: the dead-letter port at offset {} of the ftm::stable_port<{}> at offset {} "
        "is full ({} messages); receive from it, or give it a larger capacity",
        h.dead_letter, type_name<Msg>(), port.offset(), dead.header().capacity));
  }
  append<Msg>(dead, msg);
}

/// Commits the moves of the poison messages at the head of a port to its dead-letter
/// port, which the receive that found them undid when it aborted to wait. Best
/// effort: if the port is busy, whoever holds it will change it and wake the waiter.
template <class Msg, class E>
void bury_poison(void* engine, std::uint64_t offset, std::uint64_t capacity) noexcept {
  transaction<E> tx(*static_cast<E*>(engine));
  try {
    tx.begin();
    auto port = open_port<Msg, true>(tx, offset, static_cast<std::uint32_t>(capacity), "receive");
    port_header& h = port.header();
    bool moved = false;
    while (h.head != h.tail && h.max_deliveries != 0 &&
           port.slot(h.head).deliveries >= h.max_deliveries) {
      bury_head<Msg>(port);
      moved = true;
    }
    if (moved) {
      tx.commit();
    } else {
      tx.abort();
    }
  } catch (...) {
    tx.abort();
  }
}

/// Takes the message at the head of an open port, or nothing if it has none. Messages
/// delivered `max_deliveries` times go to the dead-letter port instead.
template <class Msg, class E>
std::optional<Msg> take(port_writer<E>& port) {
  port_header& h = port.header();
  while (h.head != h.tail) {
    port_slot& s = port.slot(h.head);
    if (h.max_deliveries != 0 && s.deliveries >= h.max_deliveries) {
      bury_head<Msg>(port);
      continue;
    }
    // The delivery is counted in both banks before the message leaves the port: an
    // abort, or the death of this process, puts it back counted.
    const std::uint32_t count = s.deliveries + 1;
    port.write_deliveries(h.head, count);
    port.write_through(offsetof(port_header, deliveries), h.deliveries + 1);
    if (count > 1) port.write_through(offsetof(port_header, redelivered), h.redelivered + 1);
    std::optional<Msg> msg{load_message<Msg>(port.payload(h.head))};
    ++h.head;
    ++h.received;
    return msg;
  }
  return std::nullopt;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_DELIVERY_HPP
