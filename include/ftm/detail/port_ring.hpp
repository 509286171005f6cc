#ifndef FTM_DETAIL_PORT_RING_HPP
#define FTM_DETAIL_PORT_RING_HPP

/// \file
/// A port opened in a transaction, as a ring of slots in blocks behind its header: opening it
/// (through the transaction's byte access, checking that the object is a port of the
/// message type), reaching its header and slots, and appending a message.

#include <ftm/detail/config.hpp>
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
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A port opened in a transaction, for writing (`Write`) or only for reading: a read
/// access gives const views only. The header is opened at once; the slot index and a
/// slot block only when one of the block's slots is reached, so a transaction locks
/// and copies the blocks it used and no others. Closes what it opened at the end of the
/// scope (locks stay held until the transaction ends).
template <class E, bool Write>
class port_access {
  using byte_type = std::conditional_t<Write, std::byte, const std::byte>;
  using header_type = std::conditional_t<Write, port_header, const port_header>;
  using slot_type = std::conditional_t<Write, port_slot, const port_slot>;

 public:
  port_access(transaction<E>& tx, std::uint64_t offset, byte_type* base) noexcept
      : tx_(tx), offset_(offset), base_(base) {}
  port_access(port_access&& other) noexcept
      : tx_(other.tx_),
        offset_(std::exchange(other.offset_, 0)),
        base_(other.base_),
        index_(std::exchange(other.index_, nullptr)),
        block_type_(other.block_type_),
        opened_(other.opened_),
        next_(other.next_) {
    other.opened_ = {};
  }
  port_access& operator=(port_access&&) = delete;
  ~port_access() {
    for (const opened_block& b : opened_)
      if (b.base != nullptr) byte_access::close(tx_, b.offset);
    if (index_ != nullptr) byte_access::close(tx_, header().index);
    if (offset_ != 0) byte_access::close(tx_, offset_);
  }

  /// Sets the type of the port's slot blocks, once the header has been checked.
  void set_block_type(const object_type& block) noexcept { block_type_ = block; }

  [[nodiscard]] header_type& header() const noexcept {
    return *std::launder(reinterpret_cast<header_type*>(base_));
  }
  [[nodiscard]] slot_type& slot(std::uint64_t sequence) {
    return *std::launder(reinterpret_cast<slot_type*>(slot_bytes(sequence)));
  }
  [[nodiscard]] byte_type* payload(std::uint64_t sequence) {
    return slot_bytes(sequence) + slot_payload;
  }
  [[nodiscard]] std::uint64_t depth() const noexcept { return header().tail - header().head; }

  /// Writes a field of the port's header past the reach of abort and recovery.
  template <class T>
  void write_through(std::size_t at, T value) const requires Write {
    byte_access::write_through(tx_, offset_, at, &value, sizeof value);
  }

  /// Writes the delivery count of the slot of `sequence` past the reach of abort and
  /// recovery (its block is open: the caller reached the slot).
  void write_deliveries(std::uint64_t sequence, std::uint32_t count) requires Write {
    static_cast<void>(slot_bytes(sequence));
    const std::uint64_t i = sequence % header().capacity;
    const std::size_t at = (i % header().block_slots) * header().slot_size;
    byte_access::write_through(tx_, block_offset(i / header().block_slots),
                               at + offsetof(port_slot, deliveries), &count, sizeof count);
  }

  [[nodiscard]] transaction<E>& tx() const noexcept { return tx_; }
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

 private:
  struct opened_block {
    std::uint64_t offset = 0;
    byte_type* base = nullptr;
  };

  [[nodiscard]] std::uint64_t block_offset(std::uint64_t block) const noexcept {
    std::uint64_t at;
    std::memcpy(&at, index_ + block * sizeof at, sizeof at);
    return at;
  }

  /// The bytes of the slot of `sequence`, opening its block if it is not yet open
  /// (and the slot index, for reading, at the first slot: only `make_port` writes it,
  /// and a transaction that finds the port empty or full never needs it).
  byte_type* slot_bytes(std::uint64_t sequence) {
    if (index_ == nullptr) {
      index_ = byte_access::open_read(tx_, header().index, port_index_type(header().blocks));
    }
    const std::uint64_t i = sequence % header().capacity;
    const std::uint64_t at = block_offset(i / header().block_slots);
    const std::size_t in = (i % header().block_slots) * header().slot_size;
    for (const opened_block& b : opened_)
      if (b.offset == at && b.base != nullptr) return b.base + in;
    // A few blocks stay open; the oldest is closed for another (its lock stays held).
    opened_block& b = opened_[next_];
    next_ = (next_ + 1) % opened_.size();
    if (b.base != nullptr) byte_access::close(tx_, b.offset);
    b.base = nullptr;
    if constexpr (Write) {
      b.base = byte_access::open_write(tx_, at, block_type_);
    } else {
      b.base = byte_access::open_read(tx_, at, block_type_);
    }
    b.offset = at;
    return b.base + in;
  }

  transaction<E>& tx_;
  std::uint64_t offset_;
  byte_type* base_;
  const std::byte* index_ = nullptr;
  object_type block_type_{};
  std::array<opened_block, 4> opened_{};
  std::size_t next_ = 0;
};

/// A port opened for writing: sends, receives and burials change it.
template <class E>
using port_writer = port_access<E, true>;

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

/// Opens the port at `offset` (of `capacity` messages of `Msg`) for writing or reading,
/// and checks that it is one: a port of this format (`port_kind`, else the object is
/// of another kind, a port of format 1, or damaged), of this message type and capacity.
template <class Msg, bool Write, class E>
port_access<E, Write> open_port(transaction<E>& tx, std::uint64_t offset, std::uint32_t capacity,
                                std::string_view what) {
  require_port(tx.active(), offset, what, &type_name<Msg>);
  const object_type ty = port_object_type<Msg>();
  port_access<E, Write> port = [&] {
    if constexpr (Write) {
      return port_access<E, true>(tx, offset, byte_access::open_write(tx, offset, ty));
    } else {
      return port_access<E, false>(tx, offset, byte_access::open_read(tx, offset, ty));
    }
  }();
  const port_header& h = port.header();
  if (h.kind != port_kind) [[unlikely]] {
    if (h.kind == port_kind_v1) {
      throw type_mismatch(fmt::format(
          "ftm::{}: the object at offset {} is a port of format 1 (one object holding the "
          "whole ring), which this ftm no longer reads: it reads ports of format 2 (a header "
          "and slot blocks); make the port again in a new pool",
          what, offset));
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
  port.set_block_type(port_block_type<Msg>(h.block_slots));
  return port;
}

/// Appends `msg` (already a `Msg`) to an open port with room.
template <class Msg, class E>
void append(port_writer<E>& port, const Msg& msg) {
  port_header& h = port.header();
  port_slot& s = port.slot(h.tail);
  s.deliveries = 0;
  s.reserved = 0;
  s.sequence = h.tail;
  std::memcpy(port.payload(h.tail), &msg, sizeof(Msg));
  ++h.tail;
  ++h.sent;
}

template <class Msg>
Msg load_message(const std::byte* from) {
  alignas(Msg) unsigned char bytes[sizeof(Msg)];
  std::memcpy(bytes, from, sizeof(Msg));
  return *std::launder(reinterpret_cast<Msg*>(bytes));
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_RING_HPP
