#ifndef FTM_DETAIL_PORT_FORMAT_HPP
#define FTM_DETAIL_PORT_FORMAT_HPP

/// \file
/// The bytes of a port in the pool, all in one place: the port (a header object, its
/// head hint and tail, a slot index and slot blocks), the port directory (the root `ftm.ports`,
/// chained blocks of entries) and a service's key table (a header and index, and one record per
/// client). Every offset is pinned by a `static_assert`: changing one changes the pool format
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

/// The first bytes of every port header ("prt3" in ASCII): an object of another
/// kind, or a damaged port, opened as a port is refused by name. The kind is the
/// port's format. 3: a header that nothing writes after `make_port`, a head hint and a
/// tail of their own, a slot index and slot blocks made on first use, a state in each
/// slot, and consecutive slots in different blocks, so that receivers of one port lock
/// different objects and a sender's and a receiver's commits touch no object in common.
/// Ports of formats 1 (one object holding the whole ring) and 2 (a header with the
/// head and tail, blocks of consecutive slots) are refused with a message that says so.
inline constexpr std::uint32_t port_kind = 0x33747270;
/// The kind of a port of format 2 ("prt2" in ASCII), which this ftm does not read.
inline constexpr std::uint32_t port_kind_v2 = 0x32747270;
/// The kind of a port of format 1 ("port" in ASCII), which this ftm does not read.
inline constexpr std::uint32_t port_kind_v1 = 0x74726f70;

/// A port's header object: its settings and where its other objects are. Written only
/// by `make_port`, so every operation reads it without recording the read (`peek`).
struct port_header {
  std::uint32_t kind;  // port_kind
  std::uint32_t capacity;
  std::uint64_t fingerprint;  // of the message type: a handle of another type is refused
  std::uint32_t slot_size;
  std::uint32_t max_deliveries;
  std::uint32_t on_full;
  std::uint32_t dead_letter_capacity;
  std::uint64_t dead_letter;  // the dead-letter port's offset, 0: none
  std::uint64_t head;         // the head hint (`port_head`)
  std::uint64_t tail;         // the tail (`port_tail`)
  std::uint64_t index;        // the slot index: `blocks` offsets of slot blocks, 0: not made yet
  std::uint32_t block_slots;  // slots per block
  std::uint32_t blocks;
  // Format 2's size, so that a port of format 2 is refused by its kind, not its size.
  std::uint64_t reserved[5];
};
static_assert(offsetof(port_header, kind) == 0 && offsetof(port_header, capacity) == 4 &&
                  offsetof(port_header, fingerprint) == 8 &&
                  offsetof(port_header, slot_size) == 16 &&
                  offsetof(port_header, max_deliveries) == 20 &&
                  offsetof(port_header, on_full) == 24 &&
                  offsetof(port_header, dead_letter_capacity) == 28 &&
                  offsetof(port_header, dead_letter) == 32 && offsetof(port_header, head) == 40 &&
                  offsetof(port_header, tail) == 48 && offsetof(port_header, index) == 56 &&
                  offsetof(port_header, block_slots) == 64 && offsetof(port_header, blocks) == 68,
              "the port header's fields are part of the pool format");
static_assert(sizeof(port_header) == 112);

/// A hint of where the oldest message may be: every message sent before `hint` was
/// received or dead-lettered (committed). It may lag behind the oldest message, never
/// lead it; a receive scans from it and moves it on now and then.
struct port_head {
  std::uint64_t hint;
  std::uint64_t reserved;
};
static_assert(offsetof(port_head, hint) == 0 && sizeof(port_head) == 16,
              "a port's head is part of the pool format");

/// The sequence number of the next message sent (so also the count of committed
/// sends). Senders hold it until they commit: they take turns.
struct port_tail {
  std::uint64_t tail;
  std::uint64_t reserved;
};
static_assert(offsetof(port_tail, tail) == 0 && sizeof(port_tail) == 16,
              "a port's tail is part of the pool format");

/// The counts of the receives of a block's messages, at the start of each block; a
/// port's counts are their sums over its blocks, so that receivers of different blocks
/// write different objects.
struct port_block_header {
  std::uint64_t received;
  std::uint64_t dead_lettered;
  // Written through (`unlogged_write_engine`): they count deliveries that aborted too.
  std::uint64_t deliveries;
  std::uint64_t redelivered;
};
static_assert(offsetof(port_block_header, received) == 0 &&
                  offsetof(port_block_header, dead_lettered) == 8 &&
                  offsetof(port_block_header, deliveries) == 16 &&
                  offsetof(port_block_header, redelivered) == 24 && sizeof(port_block_header) == 32,
              "a slot block's header is part of the pool format");

/// One message in a slot block; the message's bytes follow at `slot_payload`. The
/// message of sequence number `q` is in slot `p = q % capacity`, which is slot
/// `p / blocks` of block `p % blocks`: consecutive messages are in different blocks.
/// A slot holds message `sequence` when `full`, else waits for it; a receive empties
/// it and moves `sequence` on by `capacity`, to the next message it will hold.
struct port_slot {
  std::uint32_t deliveries;  // written through: survives the abort of the receive
  std::uint32_t full;        // 1: holds message `sequence`; 0: waits for it
  std::uint64_t sequence;
};
inline constexpr std::size_t slot_payload = 16;
static_assert(offsetof(port_slot, deliveries) == 0 && offsetof(port_slot, full) == 4 &&
                  offsetof(port_slot, sequence) == 8 && sizeof(port_slot) <= slot_payload,
              "a slot's fields are part of the pool format");

template <class Msg>
constexpr std::uint32_t slot_size_of() {
  return static_cast<std::uint32_t>((slot_payload + sizeof(Msg) + 15) / 16 * 16);
}

/// The most slot blocks a port has. Blocks are made on first use (by the send of the
/// first message that lands in each), so `make_port` allocates a handful of objects
/// whatever the capacity.
inline constexpr std::uint32_t port_max_blocks = 4096;

/// Blocks of a port of `capacity` messages: a block per slot up to `port_max_blocks`,
/// so that a send locks only the slot it fills and a receive only the message it takes
/// (a receive then never passes a message whose block a send holds: one receiver takes
/// messages in the order they were sent); a larger port puts several slots in each.
constexpr std::uint32_t blocks_of(std::uint32_t capacity) {
  return capacity < port_max_blocks ? capacity : port_max_blocks;
}
/// Slots per block of a port of `capacity` messages.
constexpr std::uint32_t block_slots_of(std::uint32_t capacity) {
  return (capacity + blocks_of(capacity) - 1) / blocks_of(capacity);
}
/// Where the message of sequence `q` lives in a port of `capacity` messages.
struct slot_place {
  std::uint32_t block;
  std::uint32_t slot;
};
constexpr slot_place place_of(std::uint64_t q, std::uint32_t capacity) {
  const auto p = static_cast<std::uint32_t>(q % capacity);
  return {p % blocks_of(capacity), p / blocks_of(capacity)};
}
/// The byte of a block where slot `slot` begins.
constexpr std::size_t slot_at(std::uint32_t slot, std::uint32_t slot_size) {
  return sizeof(port_block_header) + std::size_t{slot} * slot_size;
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

/// A port's head hint and its tail.
inline object_type port_head_type() { return {sizeof(port_head), 16, "ftm::port_head"}; }
inline object_type port_tail_type() { return {sizeof(port_tail), 16, "ftm::port_tail"}; }

/// A port's slot index: the offsets of its blocks, each written once, by the send that
/// makes the block (0 until then).
inline object_type port_index_type(std::uint32_t blocks) {
  return {std::size_t{blocks} * sizeof(std::uint64_t), 16, "ftm::port_index"};
}

/// One slot block of a port of `Msg`.
template <class Msg>
object_type port_block_type(std::uint32_t block_slots) {
  return {sizeof(port_block_header) + std::size_t{block_slots} * slot_size_of<Msg>(), 16,
          port_block_type_name<Msg>()};
}

/// `port_block_type` of a port known by its slot size only (ftm-inspect's check).
inline std::size_t port_block_size(std::uint32_t block_slots, std::uint32_t slot_size) {
  return sizeof(port_block_header) + std::size_t{block_slots} * slot_size;
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
