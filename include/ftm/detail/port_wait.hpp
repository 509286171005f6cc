#ifndef FTM_DETAIL_PORT_WAIT_HPP
#define FTM_DETAIL_PORT_WAIT_HPP

/// \file
/// Watching a port: a send to a full port or a receive from an empty one asks
/// `ftm::atomically` (by throwing `ftm::retry_request`) to abort, wait until the port
/// changes, and run the transaction again; a receive's poison messages are buried for
/// good before the wait.

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_delivery.hpp>
#include <ftm/detail/port_ring.hpp>
#include <ftm/engine.hpp>
#include <ftm/transaction.hpp>

#include <chrono>
#include <cstdint>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Asks `ftm::atomically` to abort, wait until the open port changes (or the
/// deadline passes) and run the transaction again.
template <class E>
[[noreturn]] void wait_for_change(const port_writer<E>& port,
                                  std::chrono::steady_clock::time_point deadline) {
  throw retry_request(byte_access::watch(port.tx(), port.offset()), deadline);
}

/// A receive found no message to deliver: waits for the port to change, after
/// burying the poison messages it found, for good.
template <class Msg, class E>
[[noreturn]] void wait_for_message(const port_writer<E>& port, std::uint64_t buried_before,
                                   std::chrono::steady_clock::time_point deadline) {
  retry_request r(byte_access::watch(port.tx(), port.offset()), deadline);
  if (port.header().dead_lettered != buried_before) {
    r.add_tidy(&bury_poison<Msg, E>, port.offset(), port.header().capacity);
  }
  throw r;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_WAIT_HPP
