#ifndef FTM_DETAIL_PORT_WAIT_HPP
#define FTM_DETAIL_PORT_WAIT_HPP

/// \file
/// Watching a port: a send to a full port or a receive from an empty one asks
/// `ftm::atomically` (by throwing `ftm::retry_request`) to abort, wait until the slot
/// it needs changes, and run the transaction again; a receive's poison messages are
/// buried for good before the wait.

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_delivery.hpp>
#include <ftm/detail/port_ring.hpp>
#include <ftm/engine.hpp>
#include <ftm/transaction.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A send found the port full at `at`: asks `ftm::atomically` to abort, wait until a
/// receive empties that slot (a commit of its block), and run the transaction again.
template <class E>
[[noreturn]] void wait_for_room(const port_ref<E>& port, const send_place& at,
                                std::chrono::steady_clock::time_point deadline) {
  throw retry_request(byte_access::watch(port.tx(), at.block_offset), deadline);
}

/// A receive found no message to deliver: waits until a send changes the slot of the
/// first message not sent (the object `got.empty_at` that the receive read), after
/// burying the poison messages it found, for good.
template <class Msg, class E>
[[noreturn]] void wait_for_message(const port_ref<E>& port, const taken<Msg>& got,
                                   std::chrono::steady_clock::time_point deadline) {
  retry_request r(byte_access::watch(port.tx(), got.empty_at), deadline);
  if (got.buried != 0) {
    r.add_tidy(&bury_poison<Msg, E>, port.offset(), port.header().capacity);
  }
  throw r;
}

/// The object whose change a receiver of the open `port` waits for if it holds no
/// message (the block of the first message not sent, or the slot index when that
/// block is not made yet), read and recorded; 0 if a message may wait (a receive may
/// hold it). Takes no lock.
template <class E>
std::uint64_t empty_at(port_ref<E>& port) {
  port_head head{};
  byte_access::peek(port.tx(), port.header().head, port_head_type(), 0, sizeof head, &head);
  for (std::uint64_t q = head.hint;; ++q) {
    if (q - head.hint > (std::uint64_t{1} << 40)) damaged_slot("receive", port.offset(), q, {});
    port_slot s = port.peek_slot(q);
    if (s.sequence > q) continue;  // taken for good
    if (s.sequence == q && s.full != 0) return 0;
    // One recorded read at most: a read-only transaction of one read commits without a
    // check, so a watch registered after it always reaches `wait()`.
    const slot_place at = place_of(q, port.header().capacity);
    if (port.block_offset(at.block) == 0) {
      std::uint64_t seen = 0;
      std::uint64_t block = 0;
      std::memcpy(
          &block,
          byte_access::open_read_part(port.tx(), port.header().index, port.index_type(),
                                      std::size_t{at.block} * sizeof block, sizeof block, seen),
          sizeof block);
      port.opened(port.header().index);
      return block == 0 ? port.header().index : 0;  // made since the look: let the receive see
    }
    std::uint64_t read = 0;
    s = port.read_slot(q, read);
    if (s.sequence < q || (s.sequence == q && s.full == 0)) return read;
    return 0;  // sent or taken since the look: let the receive see
  }
}

/// Registers a watch on the port at `offset` if it holds no message, in `tx` (which
/// then ends without a lock: the watch is on a recorded read); nothing if it holds one.
/// Nothing after the watch throws, so a registered watch always reaches `wait()`.
template <class Msg, watchable_engine E>
std::optional<watch_token> watch_if_empty(transaction<E>& tx, std::uint64_t offset,
                                          std::uint32_t capacity, std::string_view what) {
  auto port = open_port<Msg>(tx, offset, capacity, what);
  const std::uint64_t at = empty_at(port);
  if (at == 0) return std::nullopt;
  return byte_access::watch(tx, at);
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_WAIT_HPP
