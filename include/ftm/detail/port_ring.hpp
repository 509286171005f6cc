#ifndef FTM_DETAIL_PORT_RING_HPP
#define FTM_DETAIL_PORT_RING_HPP

/// \file
/// A port opened in a transaction, as a ring of slots in blocks behind its header:
/// opening it (through the transaction's byte access, checking that the object is a
/// port of the message type), reaching its slots, and appending a message at its tail.

#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/reflect.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Slot blocks a send makes at once, when it needs the first of them.
inline constexpr std::uint32_t blocks_made_at_once = 16;

template <class Msg>
Msg load_message(const std::byte* from) {
  alignas(Msg) unsigned char bytes[sizeof(Msg)];
  std::memcpy(bytes, from, sizeof(Msg));
  return *std::launder(reinterpret_cast<Msg*>(bytes));
}

inline port_slot& slot_in(std::byte* block, std::uint32_t slot, std::uint32_t slot_size) noexcept {
  return *std::launder(reinterpret_cast<port_slot*>(block + slot_at(slot, slot_size)));
}
inline port_block_header& counts_in(std::byte* block) noexcept {
  return *std::launder(reinterpret_cast<port_block_header*>(block));
}

/// A port in a transaction: its header (read once, unrecorded: nothing writes it after
/// `make_port`), and the objects an operation reaches through it. A slot's state is
/// looked at without a lock (`peek`), and its block locked only to change it, so that
/// operations on different slots lock different blocks. Closes what it opened at the
/// end of the scope (locks stay held until the transaction ends).
template <class E>
class port_ref {
 public:
  port_ref(transaction<E>& tx, std::uint64_t offset, const port_header& h,
           const object_type& block) noexcept
      : tx_(tx), offset_(offset), header_(h), block_type_(block) {}
  port_ref(port_ref&&) noexcept = default;
  port_ref& operator=(port_ref&&) = delete;
  ~port_ref() {
    if constexpr (!closing_is_noop<E>) {
      for (const std::uint64_t at : opened_)
        byte_access::close(tx_, at);
    }
  }

  [[nodiscard]] const port_header& header() const noexcept { return header_; }
  [[nodiscard]] transaction<E>& tx() const noexcept { return tx_; }
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }
  [[nodiscard]] const object_type& block_type() const noexcept { return block_type_; }
  [[nodiscard]] object_type index_type() const noexcept { return port_index_type(header_.blocks); }

  /// The offset of block `b`, 0 if no send made it yet. An entry, once set, never
  /// changes: a peek of it needs no check at commit.
  std::uint64_t block_offset(std::uint32_t b) {
    for (const known_block& k : known_)
      if (k.block == b) return k.offset;
    std::uint64_t at = 0;
    byte_access::peek(tx_, header_.index, index_type(), std::size_t{b} * sizeof at, sizeof at, &at);
    if (at != 0) {
      known_[next_known_] = {b, at};
      next_known_ = (next_known_ + 1) % known_.size();
    }
    return at;
  }

  /// The slot of message `q` as last committed (or as this transaction changed it),
  /// unrecorded. A block not made yet holds no message: its slots wait for theirs.
  port_slot peek_slot(std::uint64_t q) {
    const slot_place at = place_of(q, header_.capacity);
    port_slot s{0, 0, q};
    if (const std::uint64_t block = block_offset(at.block); block != 0) {
      byte_access::peek(tx_, block, block_type_, slot_at(at.slot, header_.slot_size), sizeof s, &s);
    }
    return s;
  }

  /// The message in the slot of `q`, as last committed, unrecorded (its block is made).
  template <class Msg>
  Msg peek_message(std::uint64_t q) {
    const slot_place at = place_of(q, header_.capacity);
    std::array<std::byte, sizeof(Msg)> bytes;
    byte_access::peek(tx_, block_offset(at.block), block_type_,
                      slot_at(at.slot, header_.slot_size) + slot_payload, sizeof(Msg),
                      bytes.data());
    return load_message<Msg>(bytes.data());
  }

  /// The slot of `q` read and recorded, so that the transaction commits only if no
  /// commit changed it meanwhile (or, for a block not made yet, its index entry);
  /// `read` is set to the object read, for a watch.
  port_slot read_slot(std::uint64_t q, std::uint64_t& read) {
    const slot_place at = place_of(q, header_.capacity);
    std::uint64_t block = block_offset(at.block);
    if (block == 0) {
      std::uint64_t seen = 0;
      const std::byte* entry =
          byte_access::open_read_part(tx_, header_.index, index_type(),
                                      std::size_t{at.block} * sizeof block, sizeof block, seen);
      opened(header_.index);
      std::memcpy(&block, entry, sizeof block);
      if (block == 0) {
        read = header_.index;
        return {0, 0, q};
      }
    }
    std::uint64_t seen = 0;
    port_slot s;
    std::memcpy(&s,
                byte_access::open_read_part(tx_, block, block_type_,
                                            slot_at(at.slot, header_.slot_size), sizeof s, seen),
                sizeof s);
    opened(block);
    read = block;
    return s;
  }

  /// Block `block` (made), opened for writing: waits for its holder (or dies).
  std::byte* write_block(std::uint64_t block) {
    std::byte* p = byte_access::open_write(tx_, block, block_type_);
    opened(block);
    return p;
  }

  /// Block `block` (made), opened for writing, or null if another transaction holds it.
  std::byte* try_block(std::uint64_t block) {
    std::byte* p = byte_access::try_open_write(tx_, block, block_type_);
    if (p != nullptr) opened(block);
    return p;
  }

  /// Block `b` for a send, opened for writing; made first if no send made it yet (in
  /// this transaction: an abort unmakes it), with the next `blocks_made_at_once - 1`,
  /// each slot waiting for the first message of its place. Only a send makes blocks,
  /// in the order of its messages, so the blocks made are always the first ones.
  std::byte* send_block(std::uint32_t b) {
    if (const std::uint64_t block = block_offset(b); block != 0) return write_block(block);
    std::byte* index = byte_access::open_write(tx_, header_.index, index_type());
    opened(header_.index);
    std::uint64_t block = 0;
    std::memcpy(&block, index + std::size_t{b} * sizeof block, sizeof block);
    if (block != 0) return write_block(block);
    // Several at once: the index is copied between the banks by each transaction that
    // writes it (32 KiB for 4,096 blocks).
    const std::uint32_t end =
        header_.blocks - b < blocks_made_at_once ? header_.blocks : b + blocks_made_at_once;
    std::byte* first = nullptr;
    for (std::uint32_t m = b; m < end; ++m) {
      std::uint64_t there = 0;
      std::memcpy(&there, index + std::size_t{m} * sizeof there, sizeof there);
      if (there != 0) break;
      const allocation made = byte_access::allocate(tx_, block_type_);
      auto* bytes = static_cast<std::byte*>(made.storage);
      std::memset(bytes, 0, block_type_.size);
      for (std::uint32_t k = 0; k < header_.block_slots; ++k)
        slot_in(bytes, k, header_.slot_size).sequence = m + std::uint64_t{k} * header_.blocks;
      std::memcpy(index + std::size_t{m} * sizeof made.offset, &made.offset, sizeof made.offset);
      if (m == b) {
        first = bytes;
        known_[next_known_] = {b, made.offset};
        next_known_ = (next_known_ + 1) % known_.size();
      }
    }
    FTM_FAULT_POINT("port.after_block");
    return first;
  }

  /// The port's tail, opened for writing: senders take turns on it.
  port_tail& tail_for_send() {
    std::byte* p = byte_access::open_write(tx_, header_.tail, port_tail_type());
    opened(header_.tail);
    return *std::launder(reinterpret_cast<port_tail*>(p));
  }

  /// Records that the operation opened the object at `at`, to close it at the end.
  void opened(std::uint64_t at) {
    if constexpr (!closing_is_noop<E>) opened_.push_back(at);
  }

 private:
  struct known_block {
    std::uint32_t block = std::numeric_limits<std::uint32_t>::max();
    std::uint64_t offset = 0;
  };

  transaction<E>& tx_;
  std::uint64_t offset_;
  port_header header_;
  object_type block_type_;
  std::array<known_block, 4> known_{};
  std::size_t next_known_ = 0;
  std::vector<std::uint64_t> opened_;
};

/// Checks that a port operation can run. The message type's name is asked for only
/// to word an error: parsing it on every open was half the instructions of a call.
inline void require_port(bool active, std::uint64_t offset, std::string_view what,
                         std::string_view (*type)() noexcept) {
  if (!active) {
    throw usage_error(
        fmt::format("ftm::{}: the transaction is not active (call begin() first)", what));
  }
  if (offset == 0) {
    throw usage_error(
        fmt::format("ftm::{}: the ftm::stable_port<{}> handle is null", what, type()));
  }
}

/// Opens the port at `offset` (of `capacity` messages of `Msg`) and checks that it is
/// one: a port of this format (`port_kind`, else the object is of another kind, a port
/// of an older format, or damaged), of this message type and capacity.
template <class Msg, class E>
port_ref<E> open_port(transaction<E>& tx, std::uint64_t offset, std::uint32_t capacity,
                      std::string_view what) {
  require_port(tx.active(), offset, what, &type_name<Msg>);
  port_header h{};  // its fields; the reserved words are not read
  byte_access::peek(tx, offset, port_object_type<Msg>(), 0, offsetof(port_header, reserved), &h);
  if (h.kind != port_kind) [[unlikely]] {
    if (h.kind == port_kind_v1 || h.kind == port_kind_v2) {
      throw type_mismatch(fmt::format(
          "ftm::{}: the object at offset {} is a port of format {} ({}), which this ftm no "
          "longer reads: it reads ports of format 3 (slots with a state of their own, spread "
          "over blocks); make the port again in a new pool",
          what, offset, h.kind == port_kind_v1 ? 1 : 2,
          h.kind == port_kind_v1 ? "one object holding the whole ring"
                                 : "a header holding the head and the tail"));
    }
    throw type_mismatch(fmt::format(
        "ftm::{}: the object at offset {} is not a port: its first bytes say kind {:#010x}, "
        "not a port's {:#010x}; the handle names another object, or the port is damaged",
        what, offset, h.kind, port_kind));
  }
  if (h.fingerprint != layout_fingerprint<Msg>() || h.capacity != capacity ||
      h.slot_size != slot_size_of<Msg>() || h.block_slots != block_slots_of(capacity) ||
      h.blocks != blocks_of(capacity)) [[unlikely]] {
    throw type_mismatch(fmt::format(
        "ftm::{}: the object at offset {} is not a {} of capacity {} (its header says capacity "
        "{}, slot size {}, message fingerprint {:#x}, {} blocks of {} slots)",
        what, offset, port_type_name<Msg>(), capacity, h.capacity, h.slot_size, h.fingerprint,
        h.blocks, h.block_slots));
  }
  return port_ref<E>(tx, offset, h, port_block_type<Msg>(h.block_slots));
}

/// Where a send puts its message: the tail and the slot of message `sequence`, both
/// held; `room` is false while that slot still holds the message sent `capacity`
/// messages before (the port is full there: then only the tail is held, and
/// `block_offset` names the block read, to watch).
struct send_place {
  port_tail* tail = nullptr;
  std::byte* block = nullptr;
  port_slot* slot = nullptr;
  std::uint64_t block_offset = 0;  // to watch, while the port is full
  std::uint64_t sequence = 0;
  bool room = false;
};

/// A slot whose state no operation could have left (`what`: the operation that found it).
[[noreturn]] inline void damaged_slot(std::string_view what, std::uint64_t port, std::uint64_t q,
                                      const port_slot& s) {
  throw bad_pool(
      fmt::format("ftm::{}: the port at offset {} is damaged: the slot of message {} says it {} "
                  "message {}",
                  what, port, q, s.full != 0 ? "holds" : "waits for", s.sequence));
}

/// The slot of the next message sent on `port`, held with the tail. A sender looks at
/// the state of that slot, not at the head: receives never write anything a send reads
/// but the slot they emptied. A full slot is read (recorded: a commit checks it, a wait
/// watches it), not locked, so that a send never holds a block whose message a receive
/// wants.
template <class E>
send_place next_send(port_ref<E>& port) {
  const port_header& h = port.header();
  send_place out;
  out.tail = &port.tail_for_send();
  out.sequence = out.tail->tail;
  const std::uint64_t t = out.sequence;
  const slot_place at = place_of(t, h.capacity);
  if (port.block_offset(at.block) != 0) {
    if (const port_slot seen = port.peek_slot(t); seen.sequence != t || seen.full != 0) {
      const port_slot s = port.read_slot(t, out.block_offset);
      if (s.full != 0 && s.sequence + h.capacity == t) return out;  // full: no room
      if (s.sequence != t || s.full != 0) damaged_slot("send", port.offset(), t, s);
    }
  }
  out.block = port.send_block(at.block);
  out.block_offset = port.block_offset(at.block);
  out.slot = &slot_in(out.block, at.slot, h.slot_size);
  // Only a receive empties a slot, and only a send (this one: senders take turns)
  // fills one: the room seen is still there.
  if (out.slot->sequence != t || out.slot->full != 0)
    damaged_slot("send", port.offset(), t, *out.slot);
  out.room = true;
  return out;
}

/// Puts `msg` (already a `Msg`) in the slot `at`, which has room, and moves the tail on.
template <class Msg>
void fill(const send_place& at, const Msg& msg) {
  at.slot->deliveries = 0;
  at.slot->full = 1;
  std::memcpy(reinterpret_cast<std::byte*>(at.slot) + slot_payload, &msg, sizeof(Msg));
  ++at.tail->tail;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_RING_HPP
