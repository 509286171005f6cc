#ifndef FTM_DETAIL_OPAQUE_KEYS_HPP
#define FTM_DETAIL_OPAQUE_KEYS_HPP

/// \file
/// A service's opaque-key table (format in `port_format.hpp`): which opaque idempotency
/// keys (up to 32 bytes of the caller's, stamped with the time the caller made them)
/// were applied and with what reply. Fixed-size: blocks of 16 entries made with the
/// service, a key in the emptier of two blocks its hash picks. A key is remembered while
/// it is younger than the table's retention; an older one is too old, by its stamp
/// alone, and its entry may be reused. Each block keeps a cutoff, the newest stamp it
/// has forgotten, so a forgotten key stays too old even if the clock goes back. A
/// server looks a key up and records it in the transaction that runs the handler.

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/detail/service_keys.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <optional>
#include <span>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The settings an opaque-key table is opened with: those of the service handle.
struct opaque_table_ref {
  std::uint64_t offset = 0;
  std::uint32_t blocks = 0;
};

/// The system clock now, in nanoseconds since its epoch: the clock opaque keys are
/// stamped with (it means the same in every process, and after a reboot).
inline std::int64_t wall_now() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// Makes an opaque-key table of at least `max_keys` entries in `tx`: a header and
/// `max(2, ceil(max_keys / 16))` blocks, each an object of its own (so a call locks and
/// copies one block, whatever the table's size).
template <engine E>
opaque_table_ref make_opaque_table(transaction<E>& tx, std::uint32_t max_keys,
                                   std::int64_t retention, std::uint32_t reply_size,
                                   std::uint64_t reply_fingerprint) {
  const std::uint32_t blocks =
      std::max<std::uint32_t>(2, (max_keys + opaque_block_keys - 1) / opaque_block_keys);
  const object_type ty = opaque_table_type(blocks);
  const allocation a = byte_access::allocate(tx, ty);
  std::memset(a.storage, 0, ty.size);
  auto* h = ::new (a.storage) opaque_table_header{};
  h->kind = opaque_table_kind;
  h->blocks = blocks;
  h->block_keys = opaque_block_keys;
  h->reply_size = reply_size;
  h->reply_fingerprint = reply_fingerprint;
  h->retention = retention;
  auto* offsets = reinterpret_cast<std::uint64_t*>(h + 1);
  const object_type bty = opaque_block_type(reply_size);
  for (std::uint32_t b = 0; b < blocks; ++b) {
    const allocation block = byte_access::allocate(tx, bty);
    std::memset(block.storage, 0, bty.size);
    ::new (block.storage) opaque_block_header{};
    offsets[b] = block.offset;
  }
  return {a.offset, blocks};
}

/// An opaque key as the table sees it: its bytes and its stamp.
struct opaque_bytes {
  std::span<const std::byte> bytes;
  std::int64_t created = 0;
};

/// The two blocks a key may live in (distinct: a table has at least two).
inline std::array<std::uint32_t, 2> opaque_homes(std::span<const std::byte> bytes,
                                                 std::uint32_t blocks) {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then a mix for the second choice
  for (const std::byte b : bytes) {
    h ^= static_cast<std::uint64_t>(b);
    h *= 0x100000001b3ULL;
  }
  std::uint64_t g = (h ^ (h >> 31)) * 0x9e3779b97f4a7c15ULL;
  g ^= g >> 29;
  const auto first = static_cast<std::uint32_t>(h % blocks);
  auto second = static_cast<std::uint32_t>(g % (blocks - 1));
  if (second >= first) ++second;
  return {first, second};
}

/// What a table said about a key.
struct opaque_lookup {
  key_state state = key_state::not_applied;
  std::int64_t retention = 0;  ///< the table's, in nanoseconds
  /// Where a new key would go (block, entry), when `not_applied` and there is room.
  std::optional<std::pair<std::uint32_t, std::uint32_t>> room;
};

/// Opens the table's header for reading and checks it is one, of the reply type's size.
template <engine E>
const opaque_table_header& open_opaque_table(transaction<E>& tx, const opaque_table_ref& t,
                                             std::uint32_t reply_size, std::uint64_t fingerprint) {
  const std::byte* base = byte_access::open_read(tx, t.offset, opaque_table_type(t.blocks));
  const auto& h = *std::launder(reinterpret_cast<const opaque_table_header*>(base));
  if (h.kind != opaque_table_kind || h.blocks != t.blocks || h.block_keys != opaque_block_keys ||
      h.reply_size != reply_size || h.reply_fingerprint != fingerprint) [[unlikely]] {
    throw type_mismatch(fmt::format(
        "ftm: the object at offset {} is not the opaque-key table of this service (its header "
        "says kind {:#010x}, {} blocks of {} keys, replies of {} bytes)",
        t.offset, h.kind, h.blocks, h.block_keys, h.reply_size));
  }
  return h;
}

inline const std::byte* opaque_entry_at(const std::byte* block, std::uint32_t i,
                                        std::uint32_t reply_size) {
  return block + sizeof(opaque_block_header) + std::size_t{i} * opaque_entry_size(reply_size);
}

/// Where `key` stands as of `tx` at the clock reading `now`: too old (stamped at or
/// before `now - retention`, or at or before the cutoff of a block it may live in),
/// applied (its reply copied to `reply`), or not applied, with room for it if a block of
/// its two has an entry free or past retention.
template <engine E>
opaque_lookup find_opaque(transaction<E>& tx, const opaque_table_ref& t, opaque_bytes key,
                          std::int64_t now, std::span<std::byte> reply, std::uint64_t fingerprint) {
  const auto reply_size = static_cast<std::uint32_t>(reply.size());
  const opaque_table_header& h = open_opaque_table(tx, t, reply_size, fingerprint);
  opaque_lookup out;
  out.retention = h.retention;
  const auto homes = opaque_homes(key.bytes, t.blocks);
  const auto* offsets = reinterpret_cast<const std::uint64_t*>(&h + 1);
  const std::array<std::uint64_t, 2> at{offsets[homes[0]], offsets[homes[1]]};
  byte_access::close(tx, t.offset);
  // The horizon: keys stamped at or before it are past retention (no overflow: a stamp
  // is a time after 1970 and a retention at most a century).
  const std::int64_t horizon = now - out.retention;
  std::int64_t cutoff = horizon;
  bool found = false;
  std::uint32_t best_free = 0;
  for (std::size_t b = 0; b < 2; ++b) {
    const std::byte* block = byte_access::open_read(tx, at[b], opaque_block_type(reply_size));
    const auto& bh = *std::launder(reinterpret_cast<const opaque_block_header*>(block));
    const std::int64_t forgotten = std::max(horizon, bh.cutoff);
    cutoff = std::max(cutoff, bh.cutoff);
    std::uint32_t free = 0;
    std::optional<std::uint32_t> first_free;
    for (std::uint32_t i = 0; i < opaque_block_keys; ++i) {
      const std::byte* e = opaque_entry_at(block, i, reply_size);
      const auto& eh = *std::launder(reinterpret_cast<const opaque_entry_header*>(e));
      if (eh.created == 0 || eh.created <= forgotten) {
        ++free;
        if (!first_free) first_free = i;
        continue;
      }
      if (!found && eh.size == key.bytes.size() &&
          std::memcmp(eh.bytes, key.bytes.data(), key.bytes.size()) == 0) {
        found = true;
        std::memcpy(reply.data(), e + sizeof(opaque_entry_header), reply.size());
      }
    }
    if (free > best_free) {
      best_free = free;
      out.room = std::pair{homes[b], *first_free};
    }
    byte_access::close(tx, at[b]);
  }
  if (key.created <= cutoff) {
    out.state = key_state::too_old;
  } else if (found) {
    out.state = key_state::applied;
  }
  return out;
}

/// Records in `tx` that `key` was applied with `reply`, in the entry `room` that
/// `find_opaque` chose in the same transaction. An entry reused moves its block's cutoff
/// up to the stamp of the key it forgets.
template <engine E>
void record_opaque(transaction<E>& tx, const opaque_table_ref& t, opaque_bytes key,
                   std::pair<std::uint32_t, std::uint32_t> room, std::span<const std::byte> reply,
                   std::uint64_t fingerprint) {
  const auto reply_size = static_cast<std::uint32_t>(reply.size());
  const opaque_table_header& h = open_opaque_table(tx, t, reply_size, fingerprint);
  const std::uint64_t at = reinterpret_cast<const std::uint64_t*>(&h + 1)[room.first];
  byte_access::close(tx, t.offset);
  std::byte* block = byte_access::open_write(tx, at, opaque_block_type(reply_size));
  auto& bh = *std::launder(reinterpret_cast<opaque_block_header*>(block));
  std::byte* e = block + sizeof(opaque_block_header) +
                 std::size_t{room.second} * opaque_entry_size(reply_size);
  auto& eh = *std::launder(reinterpret_cast<opaque_entry_header*>(e));
  if (eh.created != 0) bh.cutoff = std::max(bh.cutoff, eh.created);
  std::memset(e, 0, opaque_entry_size(reply_size));
  eh.created = key.created;
  eh.size = static_cast<std::uint32_t>(key.bytes.size());
  std::memcpy(eh.bytes, key.bytes.data(), key.bytes.size());
  std::memcpy(e + sizeof(opaque_entry_header), reply.data(), reply.size());
  ++bh.applied;
  byte_access::close(tx, at);
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_OPAQUE_KEYS_HPP
