#ifndef FTM_DETAIL_PORT_FORMAT_HPP
#define FTM_DETAIL_PORT_FORMAT_HPP

/// \file
/// The bytes of a port in the pool, all in one place: the port (a header object, a
/// slot index and slot blocks), the port directory (the root `ftm.ports`, chained blocks of
/// entries) and a service's key table (a header and index, and one record per client). Every offset
/// is pinned by a `static_assert`: changing one changes the pool format
/// (`bank_layout::format_version`).

#include <ftm/detail/config.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The first bytes of every port header ("prt2" in ASCII): an object of another
/// kind, or a damaged port, opened as a port is refused by name. The kind is the
/// port's format: 2 is a header, a slot index and slot blocks, each a stable object
/// of its own, so that a transaction locks and copies only the header and the blocks
/// it used. Ports of format 1 (one object holding the whole ring) carry
/// `port_kind_v1` and are refused with a message that says so.
inline constexpr std::uint32_t port_kind = 0x32747270;
/// The kind of a port of format 1 ("port" in ASCII), which this ftm does not read.
inline constexpr std::uint32_t port_kind_v1 = 0x74726f70;

/// A port's header object: its settings and counters, and where its slots are.
struct port_header {
  std::uint32_t kind;  // port_kind
  std::uint32_t capacity;
  std::uint64_t fingerprint;  // of the message type: a handle of another type is refused
  std::uint32_t slot_size;
  std::uint32_t max_deliveries;
  std::uint32_t on_full;
  std::uint32_t dead_letter_capacity;
  std::uint64_t dead_letter;  // the dead-letter port's offset, 0: none
  std::uint64_t head;         // sequence number of the oldest message
  std::uint64_t tail;         // sequence number of the next message sent
  std::uint64_t sent;
  std::uint64_t received;
  std::uint64_t dead_lettered;
  // Written through (`unlogged_write_engine`): they count deliveries that aborted too.
  std::uint64_t deliveries;
  std::uint64_t redelivered;
  std::uint64_t index;        // the slot index: `blocks` offsets of slot blocks
  std::uint32_t block_slots;  // slots per block
  std::uint32_t blocks;
};
static_assert(offsetof(port_header, kind) == 0 && offsetof(port_header, capacity) == 4 &&
                  offsetof(port_header, fingerprint) == 8 &&
                  offsetof(port_header, slot_size) == 16 &&
                  offsetof(port_header, max_deliveries) == 20 &&
                  offsetof(port_header, on_full) == 24 &&
                  offsetof(port_header, dead_letter_capacity) == 28 &&
                  offsetof(port_header, dead_letter) == 32 && offsetof(port_header, head) == 40 &&
                  offsetof(port_header, tail) == 48 && offsetof(port_header, sent) == 56 &&
                  offsetof(port_header, received) == 64 &&
                  offsetof(port_header, dead_lettered) == 72 &&
                  offsetof(port_header, deliveries) == 80 &&
                  offsetof(port_header, redelivered) == 88 && offsetof(port_header, index) == 96 &&
                  offsetof(port_header, block_slots) == 104 && offsetof(port_header, blocks) == 108,
              "the port header's fields are part of the pool format");
static_assert(sizeof(port_header) == 112);

/// One message in a slot block; the message's bytes follow at `slot_payload`. The
/// message of sequence number `q` is in slot `q % capacity`, which is slot
/// `(q % capacity) % block_slots` of block `(q % capacity) / block_slots`.
struct port_slot {
  std::uint32_t deliveries;  // written through: survives the abort of the receive
  std::uint32_t reserved;
  std::uint64_t sequence;
};
inline constexpr std::size_t slot_payload = 16;
static_assert(offsetof(port_slot, deliveries) == 0 && offsetof(port_slot, sequence) == 8 &&
                  sizeof(port_slot) <= slot_payload,
              "a slot's fields are part of the pool format");

template <class Msg>
constexpr std::uint32_t slot_size_of() {
  return static_cast<std::uint32_t>((slot_payload + sizeof(Msg) + 15) / 16 * 16);
}

/// The most slot blocks a port has: `make_port` allocates them all in its transaction.
inline constexpr std::uint32_t port_max_blocks = 512;
/// Slots per block for ports up to `port_max_blocks * port_block_slots` messages: what a
/// send or receive copies between the banks, besides the header.
inline constexpr std::uint32_t port_block_slots = 8;

/// Slots per block of a port of `capacity` messages: `port_block_slots` (fewer for a
/// smaller port), more only when that many blocks would exceed `port_max_blocks`.
constexpr std::uint32_t block_slots_of(std::uint32_t capacity) {
  const std::uint32_t spread = (capacity + port_max_blocks - 1) / port_max_blocks;
  const std::uint32_t small = capacity < port_block_slots ? capacity : port_block_slots;
  return spread > small ? spread : small;
}
constexpr std::uint32_t blocks_of(std::uint32_t capacity) {
  return (capacity + block_slots_of(capacity) - 1) / block_slots_of(capacity);
}

template <class Msg>
std::string_view port_type_name() {
  static const std::string name = fmt::format("ftm::port<{}>", type_name<Msg>());
  return name;
}

template <class Msg>
std::string_view port_block_type_name() {
  static const std::string name = fmt::format("ftm::port_slots<{}>", type_name<Msg>());
  return name;
}

/// A port's header object.
template <class Msg>
object_type port_object_type() {
  return {sizeof(port_header), 16, port_type_name<Msg>()};
}

/// A port's slot index: the offsets of its blocks, written only by `make_port`.
inline object_type port_index_type(std::uint32_t blocks) {
  return {std::size_t{blocks} * sizeof(std::uint64_t), 16, "ftm::port_index"};
}

/// One slot block of a port of `Msg`.
template <class Msg>
object_type port_block_type(std::uint32_t block_slots) {
  return {std::size_t{block_slots} * slot_size_of<Msg>(), 16, port_block_type_name<Msg>()};
}

/// The root that holds the pool's port directory.
inline constexpr std::string_view port_directory_name = "ftm.ports";

/// One port in the directory: its handle and the header it was made with, so that a
/// damaged header can be told.
struct port_directory_entry {
  std::uint64_t offset;       // the port object
  std::uint64_t fingerprint;  // of its message type, as in its header
  std::uint32_t capacity;
  std::uint32_t slot_size;
  char type[104];  // the message type's name, cut to 103 characters, NUL-terminated
};
static_assert(sizeof(port_directory_entry) == 128);

/// Entries per directory block: a block fits a 4 KiB allocation block.
inline constexpr std::uint32_t port_directory_block_entries = 31;

/// Directory entries; blocks are chained, so the directory has no fixed limit.
struct port_directory_block {
  std::uint64_t next;  // the next block's offset, 0: the last block
  std::uint32_t count;
  std::uint32_t reserved;
  port_directory_entry entries[port_directory_block_entries];
};

/// The directory's root object.
struct port_directory {
  std::uint64_t ports;  // entries in all blocks
  std::uint64_t first;  // the first block, 0: none yet
  std::uint64_t last;   // the block new entries go to
  std::uint64_t reserved;
};
static_assert(sizeof(port_directory_block) == 16 + port_directory_block_entries * 128 &&
                  offsetof(port_directory_block, entries) == 16,
              "a directory block is part of the pool format");
static_assert(sizeof(port_directory) == 32, "the directory root is part of the pool format");

// ---- the key table of a service (`ftm::make_service`) -----------------------------

/// The first bytes of a service's key table ("keys" in ASCII).
inline constexpr std::uint32_t key_table_kind = 0x7379656b;

/// A service's key table: its settings, then `2 * max_clients` index entries (open
/// addressing by client id), each naming the client's record object. Written only
/// when a client is first seen; a call reads it.
struct key_table_header {
  std::uint32_t kind;  // key_table_kind
  std::uint32_t window;
  std::uint32_t max_clients;
  std::uint32_t clients;
  std::uint32_t max_tries;
  std::uint32_t reply_size;  // of the service's reply type
  std::uint64_t reply_fingerprint;
};
static_assert(offsetof(key_table_header, window) == 4 &&
                  offsetof(key_table_header, max_clients) == 8 &&
                  offsetof(key_table_header, clients) == 12 &&
                  offsetof(key_table_header, max_tries) == 16 &&
                  offsetof(key_table_header, reply_size) == 20 &&
                  offsetof(key_table_header, reply_fingerprint) == 24 &&
                  sizeof(key_table_header) == 32,
              "a key table's header is part of the pool format");

struct key_index_entry {
  std::uint64_t client;  // 0: free
  std::uint64_t record;  // the client's record object
};
static_assert(sizeof(key_index_entry) == 16);

/// One client's record: the highest sequence number applied, then `window` entries; the
/// entry of sequence `s` is at `s % window` and holds `s` (0: none) and its reply.
struct key_record_header {
  std::uint64_t client;
  std::uint64_t high;  // the highest sequence number applied, 0: none yet
  std::uint32_t window;
  std::uint32_t reply_size;
  std::uint64_t applied;  // keys of this client applied, ever
};
static_assert(offsetof(key_record_header, high) == 8 && offsetof(key_record_header, window) == 16 &&
                  offsetof(key_record_header, applied) == 24 && sizeof(key_record_header) == 32,
              "a key record's header is part of the pool format");

/// A key entry: the sequence number it holds, then the reply's bytes (`reply_size`
/// rounded up to 8).
inline constexpr std::size_t key_entry_reply = 8;
constexpr std::size_t key_entry_size(std::size_t reply_size) {
  return key_entry_reply + (reply_size + 7) / 8 * 8;
}

inline object_type key_table_type(std::uint32_t max_clients) {
  return {sizeof(key_table_header) + std::size_t{2} * max_clients * sizeof(key_index_entry), 16,
          "ftm::key_table"};
}
inline object_type key_record_type(std::uint32_t window, std::uint32_t reply_size) {
  return {sizeof(key_record_header) + std::size_t{window} * key_entry_size(reply_size), 16,
          "ftm::key_record"};
}

// ---- the opaque-key table of a service (`service_options::max_opaque_keys`) ----------

/// The first bytes of a service's opaque-key table ("okey" in ASCII).
inline constexpr std::uint32_t opaque_table_kind = 0x79656b6f;

/// Keys one block of an opaque-key table holds.
inline constexpr std::uint32_t opaque_block_keys = 16;

/// The longest opaque key, in bytes.
inline constexpr std::size_t opaque_key_max_size = 32;

/// An opaque-key table: its settings, then `blocks` offsets of block objects. Written
/// only by `make_service`; a call reads it. A key may live in one of two blocks chosen
/// by its hash.
struct opaque_table_header {
  std::uint32_t kind;  // opaque_table_kind
  std::uint32_t blocks;
  std::uint32_t block_keys;  // opaque_block_keys
  std::uint32_t reply_size;
  std::uint64_t reply_fingerprint;
  std::int64_t retention;  // nanoseconds
};
static_assert(offsetof(opaque_table_header, blocks) == 4 &&
                  offsetof(opaque_table_header, reply_size) == 12 &&
                  offsetof(opaque_table_header, reply_fingerprint) == 16 &&
                  offsetof(opaque_table_header, retention) == 24 &&
                  sizeof(opaque_table_header) == 32,
              "an opaque-key table's header is part of the pool format");

/// A block: its cutoff, then `block_keys` entries. A key stamped at or before the cutoff
/// is too old in this block; the cutoff only grows (to the stamp of each key the block
/// forgets), so a forgotten key stays too old even after the clock goes back.
struct opaque_block_header {
  std::int64_t cutoff;    // nanoseconds since the system clock's epoch
  std::uint64_t applied;  // keys recorded in this block, ever
};
static_assert(sizeof(opaque_block_header) == 16,
              "an opaque-key block's header is part of the pool format");

/// An entry: the key's stamp (0: free), its length and bytes, then the reply's bytes
/// (`reply_size` rounded up to 8).
struct opaque_entry_header {
  std::int64_t created;  // nanoseconds since the system clock's epoch; 0: free
  std::uint32_t size;
  std::uint32_t reserved;
  std::byte bytes[opaque_key_max_size];
};
static_assert(offsetof(opaque_entry_header, size) == 8 &&
                  offsetof(opaque_entry_header, bytes) == 16 && sizeof(opaque_entry_header) == 48,
              "an opaque-key entry is part of the pool format");

constexpr std::size_t opaque_entry_size(std::size_t reply_size) {
  return sizeof(opaque_entry_header) + (reply_size + 7) / 8 * 8;
}

inline object_type opaque_table_type(std::uint32_t blocks) {
  return {sizeof(opaque_table_header) + std::size_t{blocks} * sizeof(std::uint64_t), 16,
          "ftm::opaque_key_table"};
}
inline object_type opaque_block_type(std::uint32_t reply_size) {
  return {sizeof(opaque_block_header) + opaque_block_keys * opaque_entry_size(reply_size), 16,
          "ftm::opaque_key_block"};
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_FORMAT_HPP
