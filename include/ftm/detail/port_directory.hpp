#ifndef FTM_DETAIL_PORT_DIRECTORY_HPP
#define FTM_DETAIL_PORT_DIRECTORY_HPP

/// \file
/// The port directory: every port made in a pool is listed under the reserved root
/// `ftm.ports`, so that a tool (ftm-inspect) finds the ports without knowing the
/// programs' objects that hold their handles. The directory is an ordinary stable
/// object of the port layer: it works on every engine, and the engines know nothing
/// of ports. `make_port` adds an entry in its own transaction (an abort leaves none);
/// sends and receives never touch it. Here too: reading the directory and checking
/// each port's shape from committed bytes, for ftm-inspect.

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Lists a new port in the directory, in `tx`. Takes the directory's write lock, so
/// port creations serialize until their transactions end (they are rare).
template <engine E>
void enter_port(transaction<E>& tx, const port_directory_entry& entry) {
  auto dir = tx.open(reserved_root<port_directory>(tx, port_directory_name));
  stable<port_directory_block> block{from_offset, dir->last};
  if (!block || tx.open_read(block)->count == port_directory_block_entries) {
    const auto fresh = tx.template create<port_directory_block>();
    if (block) {
      tx.open(block)->next = fresh.offset();
    } else {
      dir->first = fresh.offset();
    }
    dir->last = fresh.offset();
    block = fresh;
  }
  auto b = tx.open(block);
  b->entries[b->count++] = entry;
  ++dir->ports;
}

/// The directory's entries as of `tx` (which takes their shared locks); none if no
/// port was ever made in the pool.
template <engine E>
std::vector<port_directory_entry> port_directory_entries(transaction<E>& tx) {
  std::vector<port_directory_entry> out;
  if (!tx.active()) {
    throw usage_error("port_directory_entries: the transaction is not active (call begin() first)");
  }
  const std::uint64_t root =
      byte_access::find_root(tx, port_directory_name, root_type_of<port_directory>());
  if (root == 0) return out;
  const auto dir = tx.open_read(stable<port_directory>(from_offset, root));
  for (std::uint64_t at = dir->first; at != 0;) {
    const auto block = tx.open_read(stable<port_directory_block>(from_offset, at));
    out.insert(out.end(), block->entries,
               block->entries + std::min(block->count, port_directory_block_entries));
    at = block->next;
  }
  return out;
}

/// A port as ftm-inspect reads it: its directory entry and, if readable, its header.
struct port_report {
  std::uint64_t offset = 0;
  std::string type;  ///< the message type's name (cut to 103 characters)
  std::uint32_t capacity = 0;
  bool readable = false;  ///< `header` and `in_flight` were read from a port of sound shape
  port_header header{};
  std::uint64_t in_flight = 0;  ///< waiting messages delivered to a receive that did not commit
  [[nodiscard]] std::uint64_t depth() const noexcept { return header.tail - header.head; }
};

/// The port directory as `read_port_directory` found it.
struct port_directory_report {
  std::vector<port_report> ports;
  std::vector<std::string> problems;
};

template <class T>
T copy_from(std::span<const std::byte> bytes, std::size_t at = 0) noexcept {
  T value;
  std::memcpy(&value, bytes.data() + at, sizeof value);
  return value;
}

/// What is wrong with a port (its header's `bytes`, its index and blocks read through
/// `object`, as `read_port_directory` takes it) given its directory entry; empty if
/// nothing. Also sets `r.readable` and `r.in_flight`.
template <class ReadObject>
std::vector<std::string> check_port(const port_directory_entry& e, std::span<const std::byte> bytes,
                                    port_report& r, ReadObject&& object) {
  std::vector<std::string> out;
  if (bytes.size() < sizeof(std::uint32_t)) {
    out.push_back(fmt::format("its object has {} bytes, fewer than a port header ({})",
                              bytes.size(), sizeof(port_header)));
    return out;
  }
  if (copy_from<std::uint32_t>(bytes) == port_kind_v1) {
    out.emplace_back(
        "it is a port of format 1 (one object holding the whole ring), which this ftm does not "
        "read (it reads format 2: a header and slot blocks)");
    return out;
  }
  if (bytes.size() != sizeof(port_header)) {
    out.push_back(fmt::format("its object has {} bytes, not a port header's {}", bytes.size(),
                              sizeof(port_header)));
    return out;
  }
  const auto h = copy_from<port_header>(bytes);
  r.header = h;
  if (h.kind != port_kind) {
    out.push_back(
        fmt::format("its first bytes say kind {:#010x}, not a port's {:#010x}", h.kind, port_kind));
  }
  if (h.capacity != e.capacity || h.capacity == 0) {
    out.push_back(
        fmt::format("its header's capacity {} is not the directory's {}", h.capacity, e.capacity));
  }
  if (h.slot_size != e.slot_size || h.slot_size < slot_payload || h.slot_size % 16 != 0) {
    out.push_back(fmt::format("its header's slot size {} is not the directory's {}", h.slot_size,
                              e.slot_size));
  }
  if (out.empty() &&
      (h.block_slots != block_slots_of(h.capacity) || h.blocks != blocks_of(h.capacity))) {
    out.push_back(
        fmt::format("its header says {} blocks of {} slots, not the {} of {} of its capacity",
                    h.blocks, h.block_slots, blocks_of(h.capacity), block_slots_of(h.capacity)));
  }
  // The slot index and the blocks the waiting messages are in.
  std::span<const std::byte> index;
  if (out.empty()) {
    try {
      index = object(h.index);
      if (index.size() != std::size_t{h.blocks} * sizeof(std::uint64_t)) {
        out.push_back(
            fmt::format("its slot index at offset {} has {} bytes, not the {} of {} blocks",
                        h.index, index.size(), std::size_t{h.blocks} * 8, h.blocks));
      }
    } catch (const error& x) {
      out.push_back(fmt::format("its slot index at offset {}: {}", h.index, x.what()));
    }
  }
  const bool sized = out.empty();  // the slots can be read
  if (h.fingerprint != e.fingerprint) {
    out.push_back(
        fmt::format("its header's message fingerprint {:#018x} is not the directory's {:#018x}",
                    h.fingerprint, e.fingerprint));
  }
  if (h.head > h.tail) {
    out.push_back(fmt::format("its head {} is past its tail {}", h.head, h.tail));
  } else if (h.tail - h.head > h.capacity) {
    out.push_back(fmt::format("it holds {} messages, more than its capacity {}", h.tail - h.head,
                              h.capacity));
  } else if (sized) {
    bool blocks_sound = true;
    std::uint64_t in_flight = 0;
    for (std::uint64_t q = h.head; q != h.tail && blocks_sound; ++q) {
      const std::uint64_t i = q % h.capacity;
      const auto at = copy_from<std::uint64_t>(index, (i / h.block_slots) * sizeof(std::uint64_t));
      try {
        const std::span<const std::byte> block = object(at);
        if (block.size() != std::size_t{h.block_slots} * h.slot_size) {
          out.push_back(fmt::format("its slot block at offset {} has {} bytes, not {}", at,
                                    block.size(), std::size_t{h.block_slots} * h.slot_size));
          blocks_sound = false;
          break;
        }
        in_flight +=
            copy_from<port_slot>(block, (i % h.block_slots) * h.slot_size).deliveries != 0 ? 1 : 0;
      } catch (const error& x) {
        out.push_back(fmt::format("its slot block at offset {}: {}", at, x.what()));
        blocks_sound = false;
      }
    }
    r.readable = blocks_sound;
    if (blocks_sound) r.in_flight = in_flight;
  }
  // Every committed send appends at the tail, every receive or burial takes the head.
  if (h.sent != h.tail) {
    out.push_back(fmt::format("it counts {} sends, but its tail is {}", h.sent, h.tail));
  }
  if (h.received + h.dead_lettered != h.head) {
    out.push_back(fmt::format("it counts {} receives and {} dead letters, but its head is {}",
                              h.received, h.dead_lettered, h.head));
  }
  return out;
}

/// Reads the port directory whose root object is at `root` (as last committed,
/// without a transaction) through `object`: a function that returns the committed
/// bytes of the object at an offset as a `std::span<const std::byte>`, and throws an
/// `ftm::error` if there is none (`pmem_view::object`). Lists every port, and what is
/// wrong with the directory and each port.
template <class ReadObject>
port_directory_report read_port_directory(std::uint64_t root, ReadObject&& object) {
  port_directory_report out;
  auto problem = [&](std::string text) { out.problems.push_back(std::move(text)); };
  std::span<const std::byte> bytes;
  try {
    bytes = object(root);
  } catch (const error& e) {
    problem(fmt::format("the port directory (root '{}'): {}", port_directory_name, e.what()));
    return out;
  }
  if (bytes.size() != sizeof(port_directory)) {
    problem(fmt::format("the port directory (root '{}') has {} bytes, not {}", port_directory_name,
                        bytes.size(), sizeof(port_directory)));
    return out;
  }
  const auto dir = copy_from<port_directory>(bytes);
  std::vector<port_directory_entry> entries;
  std::vector<std::uint64_t> blocks;
  std::uint64_t last = 0;
  for (std::uint64_t at = dir.first; at != 0;) {
    if (std::find(blocks.begin(), blocks.end(), at) != blocks.end()) {
      problem(fmt::format("the port directory's blocks form a cycle at offset {}", at));
      break;
    }
    blocks.push_back(at);
    try {
      bytes = object(at);
    } catch (const error& e) {
      problem(fmt::format("the port directory's block at offset {}: {}", at, e.what()));
      break;
    }
    if (bytes.size() != sizeof(port_directory_block)) {
      problem(fmt::format("the port directory's block at offset {} has {} bytes, not {}", at,
                          bytes.size(), sizeof(port_directory_block)));
      break;
    }
    const auto block = copy_from<port_directory_block>(bytes);
    if (block.count > port_directory_block_entries) {
      problem(fmt::format("the port directory's block at offset {} counts {} entries, more than {}",
                          at, block.count, port_directory_block_entries));
    }
    entries.insert(entries.end(), block.entries,
                   block.entries + std::min(block.count, port_directory_block_entries));
    last = at;
    at = block.next;
  }
  if (last != dir.last) {
    problem(fmt::format("the port directory's last block is at offset {}, but its root says {}",
                        last, dir.last));
  }
  if (entries.size() != dir.ports) {
    problem(fmt::format("the port directory counts {} ports, but its blocks list {}", dir.ports,
                        entries.size()));
  }
  for (const port_directory_entry& e : entries) {
    port_report r;
    r.offset = e.offset;
    r.type.assign(e.type, strnlen(e.type, sizeof e.type));
    r.capacity = e.capacity;
    const bool twice = std::any_of(out.ports.begin(), out.ports.end(),
                                   [&](const port_report& p) { return p.offset == e.offset; });
    if (twice) problem(fmt::format("port at offset {} is listed twice in the directory", e.offset));
    try {
      for (auto& p : check_port(e, object(e.offset), r, object))
        problem(fmt::format("port at offset {} ({}): {}", e.offset, r.type, p));
    } catch (const error& x) {
      problem(fmt::format("port at offset {} ({}): {}", e.offset, r.type, x.what()));
    }
    out.ports.push_back(std::move(r));
  }
  // A dead-letter port is a port of the directory, with the capacity its handle says.
  for (const port_report& r : out.ports) {
    if (!r.readable || r.header.dead_letter == 0) continue;
    const auto dead = std::find_if(out.ports.begin(), out.ports.end(), [&](const port_report& p) {
      return p.offset == r.header.dead_letter;
    });
    if (dead == out.ports.end()) {
      problem(
          fmt::format("port at offset {} ({}): its dead-letter port at offset {} is not in "
                      "the directory",
                      r.offset, r.type, r.header.dead_letter));
    } else if (dead->capacity != r.header.dead_letter_capacity) {
      problem(fmt::format(
          "port at offset {} ({}): its dead-letter port at offset {} has capacity "
          "{}, not the {} its header says",
          r.offset, r.type, dead->offset, dead->capacity, r.header.dead_letter_capacity));
    }
  }
  return out;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PORT_DIRECTORY_HPP
