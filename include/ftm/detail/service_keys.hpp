#ifndef FTM_DETAIL_SERVICE_KEYS_HPP
#define FTM_DETAIL_SERVICE_KEYS_HPP

/// \file
/// A service's key table (format in `port_format.hpp`): which idempotency keys were
/// applied and with what reply, per client a window of sequence numbers. A server
/// looks a key up and records it in the transaction that runs the handler, so the
/// record commits with the handler's effects and the reply, or not at all.

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Where a key stands in a table.
enum class key_state : std::uint32_t {
  not_applied = 0,  ///< within the client's window (or above it), not applied
  applied = 1,      ///< applied: its reply is recorded
  too_old = 2,      ///< below the client's window: whether it was applied is forgotten
};

/// A client id no caller may use: a retired record's index entry (a tombstone).
inline constexpr std::uint64_t retired_client = ~std::uint64_t{0};

/// The settings a key table is opened with: those of the service handle.
struct key_table_ref {
  std::uint64_t offset = 0;
  std::uint32_t window = 0;
  std::uint32_t max_clients = 0;
};

/// Makes a key table in `tx`.
template <engine E>
std::uint64_t make_key_table(transaction<E>& tx, std::uint32_t window, std::uint32_t max_clients,
                             std::uint32_t max_tries, std::uint32_t reply_size,
                             std::uint64_t reply_fingerprint) {
  const object_type ty = key_table_type(max_clients);
  const allocation a = byte_access::allocate(tx, ty);
  std::memset(a.storage, 0, ty.size);
  auto* h = ::new (a.storage) key_table_header{};
  h->kind = key_table_kind;
  h->window = window;
  h->max_clients = max_clients;
  h->max_tries = max_tries;
  h->reply_size = reply_size;
  h->reply_fingerprint = reply_fingerprint;
  return a.offset;
}

inline std::size_t key_index_slots(const key_table_ref& t) {
  return std::size_t{2} * t.max_clients;
}

inline std::size_t key_home(std::uint64_t client, std::size_t slots) {
  std::uint64_t x = client * 0x9e3779b97f4a7c15ULL;
  x ^= x >> 29;
  return static_cast<std::size_t>(x % slots);
}

/// Opens the table for reading and checks it is one, of the reply type's size.
template <engine E>
const key_table_header& open_key_table(transaction<E>& tx, const key_table_ref& t,
                                       std::uint32_t reply_size, std::uint64_t fingerprint) {
  const std::byte* base = byte_access::open_read(tx, t.offset, key_table_type(t.max_clients));
  const auto& h = *std::launder(reinterpret_cast<const key_table_header*>(base));
  if (h.kind != key_table_kind || h.window != t.window || h.max_clients != t.max_clients ||
      h.reply_size != reply_size || h.reply_fingerprint != fingerprint) [[unlikely]] {
    throw type_mismatch(fmt::format(
        "ftm: the object at offset {} is not the key table of this service (its header says "
        "kind {:#010x}, window {}, {} clients, replies of {} bytes)",
        t.offset, h.kind, h.window, h.max_clients, h.reply_size));
  }
  return h;
}

/// The record object of `client`, 0 if the table has none.
inline std::uint64_t find_record(const key_table_header& h, const key_table_ref& t,
                                 std::uint64_t client) {
  const auto* index = reinterpret_cast<const key_index_entry*>(&h + 1);
  const std::size_t slots = key_index_slots(t);
  for (std::size_t i = 0, at = key_home(client, slots); i < slots; ++i, at = (at + 1) % slots) {
    if (index[at].client == client) return index[at].record;
    if (index[at].client == 0) return 0;
  }
  return 0;
}

/// Where `sequence` stands for a client's record; its reply copied to `reply` if applied.
inline key_state state_in(const std::byte* record, std::uint64_t sequence,
                          std::span<std::byte> reply) {
  const auto& r = *std::launder(reinterpret_cast<const key_record_header*>(record));
  if (sequence <= r.high && r.high - sequence >= r.window) return key_state::too_old;
  const std::byte* entry =
      record + sizeof(key_record_header) + (sequence % r.window) * key_entry_size(r.reply_size);
  std::uint64_t held = 0;
  std::memcpy(&held, entry, sizeof held);
  if (held != sequence) return key_state::not_applied;
  std::memcpy(reply.data(), entry + key_entry_reply, reply.size());
  return key_state::applied;
}

/// Where the key (`client`, `sequence`) stands, as of `tx`.
template <engine E>
key_state find_key(transaction<E>& tx, const key_table_ref& t, std::uint64_t client,
                   std::uint64_t sequence, std::span<std::byte> reply, std::uint64_t fingerprint) {
  const key_table_header& h =
      open_key_table(tx, t, static_cast<std::uint32_t>(reply.size()), fingerprint);
  const std::uint64_t rec = find_record(h, t, client);
  byte_access::close(tx, t.offset);
  if (rec == 0) return key_state::not_applied;
  const std::byte* record =
      byte_access::open_read(tx, rec, key_record_type(t.window, h.reply_size));
  const key_state s = state_in(record, sequence, reply);
  byte_access::close(tx, rec);
  return s;
}

/// Whether the table has a record of `client`, or room for one.
template <engine E>
bool has_room_for(transaction<E>& tx, const key_table_ref& t, std::uint64_t client,
                  std::size_t reply_size, std::uint64_t fingerprint) {
  const key_table_header& h =
      open_key_table(tx, t, static_cast<std::uint32_t>(reply_size), fingerprint);
  const bool room = h.clients < h.max_clients || find_record(h, t, client) != 0;
  byte_access::close(tx, t.offset);
  return room;
}

/// Records in `tx` that the key (`client`, `sequence`) was applied with `reply`. The
/// caller found it `not_applied` in the same transaction. A client seen for the first
/// time gets a record; with `max_clients` records already, throws
/// `ftm::capacity_exceeded`.
template <engine E>
void record_key(transaction<E>& tx, const key_table_ref& t, std::uint64_t client,
                std::uint64_t sequence, std::span<const std::byte> reply,
                std::uint64_t fingerprint) {
  const key_table_header& h =
      open_key_table(tx, t, static_cast<std::uint32_t>(reply.size()), fingerprint);
  std::uint64_t rec = find_record(h, t, client);
  byte_access::close(tx, t.offset);
  const object_type rty = key_record_type(t.window, static_cast<std::uint32_t>(reply.size()));
  if (rec == 0) {
    std::byte* base = byte_access::open_write(tx, t.offset, key_table_type(t.max_clients));
    auto& w = *std::launder(reinterpret_cast<key_table_header*>(base));
    if (w.clients >= w.max_clients) {
      byte_access::close(tx, t.offset);
      throw capacity_exceeded(fmt::format(
          "ftm: the service's key table holds the keys of {} clients, its most; client {} is "
          "new (make the service with a larger service_options::max_clients, or retire "
          "clients with ftm::forget_client)",
          w.max_clients, client));
    }
    auto* index = reinterpret_cast<key_index_entry*>(&w + 1);
    const std::size_t slots = key_index_slots(t);
    std::size_t at = key_home(client, slots);
    // A tombstone on the way carries a cleared record to reuse; else the first free
    // entry (half the entries at most are taken: there is one).
    while (index[at].client != 0 && index[at].client != retired_client)
      at = (at + 1) % slots;
    void* fresh = nullptr;
    if (index[at].client == retired_client) {
      rec = index[at].record;
      fresh = byte_access::open_write(tx, rec, rty);
    } else {
      const allocation a = byte_access::allocate(tx, rty);
      rec = a.offset;
      fresh = a.storage;
    }
    std::memset(fresh, 0, rty.size);
    auto* r = ::new (fresh) key_record_header{};
    r->client = client;
    r->window = t.window;
    r->reply_size = static_cast<std::uint32_t>(reply.size());
    if (index[at].client == retired_client) byte_access::close(tx, rec);
    index[at] = {client, rec};
    ++w.clients;
    byte_access::close(tx, t.offset);
  }
  std::byte* record = byte_access::open_write(tx, rec, rty);
  auto& r = *std::launder(reinterpret_cast<key_record_header*>(record));
  std::byte* entry =
      record + sizeof(key_record_header) + (sequence % r.window) * key_entry_size(r.reply_size);
  std::memcpy(entry, &sequence, sizeof sequence);
  std::memset(entry + key_entry_reply, 0, key_entry_size(r.reply_size) - key_entry_reply);
  std::memcpy(entry + key_entry_reply, reply.data(), reply.size());
  if (sequence > r.high) r.high = sequence;
  ++r.applied;
  byte_access::close(tx, rec);
}

/// Forgets `client`'s keys in `tx`: its record is cleared and kept for the next new
/// client (its index entry becomes a tombstone that carries the record). A later key of
/// `client` is new. False if the table had no record of it.
template <engine E>
bool forget_key_client(transaction<E>& tx, const key_table_ref& t, std::uint64_t client,
                       std::uint32_t reply_size, std::uint64_t fingerprint) {
  static_cast<void>(open_key_table(tx, t, reply_size, fingerprint));
  byte_access::close(tx, t.offset);
  std::byte* base = byte_access::open_write(tx, t.offset, key_table_type(t.max_clients));
  auto& w = *std::launder(reinterpret_cast<key_table_header*>(base));
  auto* index = reinterpret_cast<key_index_entry*>(&w + 1);
  const std::size_t slots = key_index_slots(t);
  bool found = false;
  std::size_t at = key_home(client, slots);
  for (std::size_t i = 0; i < slots && index[at].client != 0; ++i, at = (at + 1) % slots) {
    if (index[at].client != client) continue;
    const object_type rty = key_record_type(t.window, reply_size);
    std::byte* record = byte_access::open_write(tx, index[at].record, rty);
    std::memset(record, 0, rty.size);
    auto* r = ::new (record) key_record_header{};
    r->client = retired_client;
    r->window = t.window;
    r->reply_size = reply_size;
    byte_access::close(tx, index[at].record);
    index[at].client = retired_client;
    --w.clients;
    found = true;
    break;
  }
  byte_access::close(tx, t.offset);
  return found;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_SERVICE_KEYS_HPP
