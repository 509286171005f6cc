#ifndef FTM_DETAIL_PORT_DELIVERY_HPP
#define FTM_DETAIL_PORT_DELIVERY_HPP

/// \file
/// Taking messages: a receive scans from the port's head hint for the first message no
/// other transaction holds (so receivers of one port run side by side), counts each
/// delivery past the reach of abort (an aborted or killed receive puts the message
/// back counted), and moves a message delivered `max_deliveries` times to the port's
/// dead-letter port instead, in the receive's transaction or, when that aborts to wait,
/// in one of its own (`bury_poison`, the tidy-up work of a `retry_request`).

#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/detail/port_ring.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A receive moves the head hint on once it lags this many messages behind what the
/// receive saw taken: fewer moves, fewer commits that lock the hint; more, longer scans
/// (each message passed is one unrecorded look at its slot).
inline constexpr std::uint64_t hint_lag = 4;

/// How a receive looks for a message.
enum class take_mode {
  /// `receive`: a message another transaction holds is skipped; if every message left
  /// is held, the receive waits for the first one's holder. "Empty" is recorded.
  wait,
  /// `try_receive`: held messages are skipped, never waited for. "Empty" is recorded.
  skip,
  /// The next message of a batch, which may stop early: as `skip`, but "empty" is
  /// only looked at, so that a send committed meanwhile does not undo the batch.
  more,
  /// `bury_poison`: only poison messages are taken (and buried), up to the first other.
  bury,
};

/// What a receive's scan found.
template <class Msg>
struct taken {
  std::optional<Msg> message;
  std::uint32_t buried = 0;    // poison messages it moved to the dead-letter port
  std::uint64_t empty_at = 0;  // the object whose recorded read says "empty": to watch
};

/// A slot a receive holds: its block open for writing.
struct held_slot {
  std::byte* block = nullptr;
  std::uint64_t block_offset = 0;
  port_slot* slot = nullptr;
  std::uint64_t sequence = 0;
};

/// Moves the hint on to `settled` (every message before it is taken, as this
/// transaction sees it), if it lags by `hint_lag` and no other receive holds it. In the
/// receive's own transaction: an abort moves it back with the receives it saw.
template <class E>
void advance_hint(port_ref<E>& port, std::uint64_t hint, std::uint64_t settled) {
  if (settled - hint < hint_lag) return;
  std::byte* p = byte_access::try_open_write(port.tx(), port.header().head, port_head_type());
  if (p == nullptr) return;  // another receive is moving it
  port.opened(port.header().head);
  auto& head = *std::launder(reinterpret_cast<port_head*>(p));
  if (head.hint < settled) head.hint = settled;
  FTM_FAULT_POINT("port.after_hint");
}

/// Delivers the message of the held slot `h`: counts the delivery in both banks first
/// (an abort, or the death of this process, puts it back counted), then empties the
/// slot for the message `capacity` later.
template <class Msg, class E>
Msg deliver(port_ref<E>& port, const held_slot& h) {
  const port_header& hd = port.header();
  port_slot& s = *h.slot;
  const std::uint32_t count = s.deliveries + 1;
  const auto at = static_cast<std::size_t>(reinterpret_cast<std::byte*>(&s) - h.block);
  byte_access::write_through(port.tx(), h.block_offset, at + offsetof(port_slot, deliveries),
                             &count, sizeof count);
  FTM_FAULT_POINT("port.after_count");
  port_block_header& c = counts_in(h.block);
  const std::uint64_t counts[2] = {c.deliveries + 1, c.redelivered + (count > 1 ? 1 : 0)};
  byte_access::write_through(port.tx(), h.block_offset, offsetof(port_block_header, deliveries),
                             counts, sizeof counts);
  Msg msg = load_message<Msg>(reinterpret_cast<const std::byte*>(&s) + slot_payload);
  s.full = 0;
  s.sequence = h.sequence + hd.capacity;
  ++c.received;
  FTM_FAULT_POINT("port.after_take");
  return msg;
}

/// Moves the message of the held slot `h` to the port's dead-letter port (or drops it
/// if it has none), in the same transaction.
template <class Msg, class E>
void bury(port_ref<E>& port, const held_slot& h) {
  const port_header& hd = port.header();
  const Msg msg = load_message<Msg>(reinterpret_cast<const std::byte*>(h.slot) + slot_payload);
  h.slot->full = 0;
  h.slot->sequence = h.sequence + hd.capacity;
  ++counts_in(h.block).dead_lettered;
  if (hd.dead_letter == 0) return;
  auto dead = open_port<Msg>(port.tx(), hd.dead_letter, hd.dead_letter_capacity, "receive");
  const send_place to = next_send(dead);
  if (!to.room) {
    throw port_full(fmt::format(
        "ftm::receive: the dead-letter port at offset {} of the ftm::stable_port<{}> at offset {} "
        "is full ({} messages); receive from it, or give it a larger capacity",
        hd.dead_letter, type_name<Msg>(), port.offset(), dead.header().capacity));
  }
  fill(to, msg);
}

/// Holds the slot of message `q`, which a look found not sent, so that the send of `q`
/// (and so every later one) waits for this transaction: true if it is still not sent,
/// false if it was sent or taken since the look, nothing if another transaction holds
/// it. A `try_receive` that finds the port empty holds it rather than recording a read,
/// or every send committed meanwhile would abort the transaction, and count again the
/// deliveries of the messages it took before (a drain loop on a busy port would
/// dead-letter them).
template <class E>
std::optional<bool> hold_unsent(port_ref<E>& port, std::uint64_t q) {
  const port_header& h = port.header();
  const slot_place at = place_of(q, h.capacity);
  if (const std::uint64_t block = port.block_offset(at.block); block != 0) {
    std::byte* bytes = port.try_block(block);
    if (bytes == nullptr) return std::nullopt;
    const port_slot& s = slot_in(bytes, at.slot, h.slot_size);
    return s.sequence < q || (s.sequence == q && s.full == 0);
  }
  // The block is not made: its send makes it, in the slot index.
  std::byte* index = byte_access::try_open_write(port.tx(), h.index, port.index_type());
  if (index == nullptr) return std::nullopt;
  port.opened(h.index);
  std::uint64_t block = 0;
  std::memcpy(&block, index + std::size_t{at.block} * sizeof block, sizeof block);
  return block == 0;
}

/// Any message: `find_held` looks at none before taking it.
struct any_message {
  template <class Msg>
  bool operator()(std::uint64_t, const Msg&) const noexcept {
    return true;
  }
};

/// The first message from the head hint on that no other transaction holds and `want`
/// accepts (`want(q, message)`), held; `taken::empty_at` and the others as
/// `take` fills them. Messages before it are passed by unrecorded looks (`peek`): a
/// message taken is taken for good, so what a look says of it never goes back.
template <class Msg, class E, class Want>
std::optional<held_slot> find_held(port_ref<E>& port, take_mode mode, taken<Msg>& out, Want want) {
  const port_header& h = port.header();
  port_head head{};
  byte_access::peek(port.tx(), h.head, port_head_type(), 0, sizeof head, &head);
  for (;;) {
    std::uint64_t settled = head.hint;  // every message before it is taken
    bool prefix = true;                 // no message from the hint to `q` is held
    std::optional<std::uint64_t> busy;  // the first message another transaction holds
    std::optional<held_slot> found;
    for (std::uint64_t q = head.hint;; ++q) {
      if (q - head.hint > (std::uint64_t{1} << 40)) damaged_slot("receive", port.offset(), q, {});
      port_slot s = port.peek_slot(q);
      if (s.sequence > q) {  // taken
        if (prefix) settled = q + 1;
        continue;
      }
      if (s.sequence < q || s.full == 0) {
        // Not sent, as last committed: nothing from here on. Decided on a recorded
        // read, unless the caller may stop early without one.
        if (mode == take_mode::more || mode == take_mode::bury) break;
        if (mode == take_mode::skip) {
          // Held here: no send can change "empty" before the commit. Held by another
          // transaction (its send, or a receive that found it empty): skipped, as a
          // held message is; a recorded read of a block another holds would fail the
          // commit for certain.
          const std::optional<bool> held = hold_unsent(port, q);
          if (!held || *held) break;
          --q;  // sent, or taken, since the look: look again
          continue;
        }
        // A receive that will wait for a held message first records nothing: what it
        // would record now is stale by the time that holder is done, and the scan
        // after the wait records "empty" if it still is.
        if (busy) break;
        s = port.read_slot(q, out.empty_at);
        if (s.sequence < q || (s.sequence == q && s.full == 0)) break;
        --q;  // sent, or taken, since the look: look again
        continue;
      }
      constexpr bool filtered = !std::is_same_v<Want, any_message>;
      if constexpr (filtered) {
        if (mode != take_mode::bury && !want(q, port.template peek_message<Msg>(q))) {
          prefix = false;
          continue;
        }
      }
      const slot_place at = place_of(q, h.capacity);
      const std::uint64_t block = port.block_offset(at.block);
      std::byte* bytes = port.try_block(block);
      if (bytes == nullptr) {  // another transaction holds it
        if (!busy) busy = q;
        prefix = false;
        continue;
      }
      port_slot& mine = slot_in(bytes, at.slot, h.slot_size);
      if (mine.sequence != q || mine.full == 0) {
        if (mine.sequence < q) damaged_slot("receive", port.offset(), q, mine);
        prefix = false;  // taken since the look (maybe by this transaction)
        continue;
      }
      const held_slot held{bytes, block, &mine, q};
      if (h.max_deliveries != 0 && mine.deliveries >= h.max_deliveries) {
        bury<Msg>(port, held);
        ++out.buried;
        prefix = false;
        continue;
      }
      if (mode == take_mode::bury) break;
      if constexpr (filtered) {
        if (!want(q, load_message<Msg>(reinterpret_cast<const std::byte*>(&mine) + slot_payload))) {
          prefix = false;
          continue;
        }
      }
      found = held;
      break;
    }
    advance_hint(port, head.hint, settled);
    if (found || mode != take_mode::wait || !busy) return found;
    // Every message left is held by other transactions: wait for the first one's
    // holder (or die, as any waiting open), then look again.
    const slot_place at = place_of(*busy, h.capacity);
    std::byte* bytes = port.write_block(port.block_offset(at.block));
    port_slot& mine = slot_in(bytes, at.slot, h.slot_size);
    if (mine.sequence == *busy && mine.full != 0 &&
        !(h.max_deliveries != 0 && mine.deliveries >= h.max_deliveries) &&
        want(*busy, load_message<Msg>(reinterpret_cast<const std::byte*>(&mine) + slot_payload))) {
      return held_slot{bytes, port.block_offset(at.block), &mine, *busy};
    }
    out.empty_at = 0;
  }
}

/// Takes the first message no other transaction holds (see `take_mode`), or nothing.
/// Messages delivered `max_deliveries` times go to the dead-letter port instead.
template <class Msg, class E>
taken<Msg> take(port_ref<E>& port, take_mode mode) {
  taken<Msg> out;
  if (const auto held = find_held(port, mode, out, any_message{})) {
    out.message = deliver<Msg>(port, *held);
  }
  return out;
}

/// Commits the moves of poison messages to a port's dead-letter port, which the
/// receive that found them undid when it aborted to wait. Best effort: a message
/// another transaction holds is left to it.
template <class Msg, class E>
void bury_poison(void* engine, std::uint64_t offset, std::uint64_t capacity) noexcept {
  transaction<E> tx(*static_cast<E*>(engine));
  try {
    tx.begin();
    auto port = open_port<Msg>(tx, offset, static_cast<std::uint32_t>(capacity), "receive");
    taken<Msg> out;
    find_held(port, take_mode::bury, out, any_message{});
    if (out.buried != 0) {
      tx.commit();
    } else {
      tx.abort();
    }
  } catch (...) {
    tx.abort();
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_DELIVERY_HPP
