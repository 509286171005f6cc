#ifndef FTM_DETAIL_PORT_RING_HPP
#define FTM_DETAIL_PORT_RING_HPP

/// \file
/// A port opened in a transaction, as a ring of slots behind its header: opening it
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

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A port opened in a transaction, for writing (`Write`) or only for reading: a read
/// access gives const views only. Closes the port again at the end of the scope
/// (locks stay held until the transaction ends).
template <class E, bool Write>
class port_access {
  using byte_type = std::conditional_t<Write, std::byte, const std::byte>;
  using header_type = std::conditional_t<Write, port_header, const port_header>;
  using slot_type = std::conditional_t<Write, port_slot, const port_slot>;

 public:
  port_access(transaction<E>& tx, std::uint64_t offset, byte_type* base) noexcept
      : tx_(tx), offset_(offset), base_(base) {}
  port_access(port_access&& other) noexcept
      : tx_(other.tx_), offset_(std::exchange(other.offset_, 0)), base_(other.base_) {}
  port_access& operator=(port_access&&) = delete;
  ~port_access() {
    if (offset_ != 0) byte_access::close(tx_, offset_);
  }

  [[nodiscard]] header_type& header() const noexcept {
    return *std::launder(reinterpret_cast<header_type*>(base_));
  }
  [[nodiscard]] std::size_t slot_offset(std::uint64_t sequence) const noexcept {
    return sizeof(port_header) + (sequence % header().capacity) * header().slot_size;
  }
  [[nodiscard]] slot_type& slot(std::uint64_t sequence) const noexcept {
    return *std::launder(reinterpret_cast<slot_type*>(base_ + slot_offset(sequence)));
  }
  [[nodiscard]] byte_type* payload(std::uint64_t sequence) const noexcept {
    return base_ + slot_offset(sequence) + slot_payload;
  }
  [[nodiscard]] std::uint64_t depth() const noexcept { return header().tail - header().head; }

  /// Writes a field of the port past the reach of abort and recovery.
  template <class T>
  void write_through(std::size_t at, T value) const requires Write {
    byte_access::write_through(tx_, offset_, at, &value, sizeof value);
  }

  [[nodiscard]] transaction<E>& tx() const noexcept { return tx_; }
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

 private:
  transaction<E>& tx_;
  std::uint64_t offset_;
  byte_type* base_;
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
/// and checks that it is one: a port (`port_kind`, else the object is of another kind
/// or damaged), of this message type and capacity.
template <class Msg, bool Write, class E>
port_access<E, Write> open_port(transaction<E>& tx, std::uint64_t offset, std::uint32_t capacity,
                                std::string_view what) {
  require_port(tx.active(), offset, what, &type_name<Msg>);
  const object_type ty = port_object_type<Msg>(capacity);
  port_access<E, Write> port = [&] {
    if constexpr (Write) {
      return port_access<E, true>(tx, offset, byte_access::open_write(tx, offset, ty));
    } else {
      return port_access<E, false>(tx, offset, byte_access::open_read(tx, offset, ty));
    }
  }();
  const port_header& h = port.header();
  if (h.kind != port_kind) [[unlikely]] {
    throw type_mismatch(fmt::format(
        "ftm::{}: the object at offset {} is not a port: its first bytes say kind {:#010x}, "
        "not a port's {:#010x}; the handle names another object, or the port is damaged",
        what, offset, h.kind, port_kind));
  }
  if (h.fingerprint != layout_fingerprint<Msg>() || h.capacity != capacity ||
      h.slot_size != slot_size_of<Msg>()) {
    throw type_mismatch(fmt::format(
        "ftm::{}: the object at offset {} is not a {} of capacity {} (its header says capacity "
        "{}, slot size {}, message fingerprint {:#x})",
        what, offset, port_type_name<Msg>(), capacity, h.capacity, h.slot_size, h.fingerprint));
  }
  return port;
}

/// Appends `msg` (already a `Msg`) to an open port with room.
template <class Msg, class E>
void append(const port_writer<E>& port, const Msg& msg) {
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
