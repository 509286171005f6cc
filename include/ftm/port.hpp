#ifndef FTM_PORT_HPP
#define FTM_PORT_HPP

/// \file
/// Stable ports (the paper's section 3.2.3): typed, bounded message queues that live
/// in the pool. A send is a transactional write to the port, so it takes effect when
/// the transaction commits and an abort sends nothing; a receive takes the message
/// at the head, and an abort puts it back with its delivery count increased. A
/// message delivered too often goes to the port's dead-letter port instead.
///
/// Written against the `ftm::engine` concept only: the delivery count needs an
/// `ftm::unlogged_write_engine`, blocking an `ftm::watchable_engine`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/reflect.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>
#include <ftm/wait.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE {

/// What a send does when its port is full.
enum class when_full : std::uint32_t {
  fail = 0,   ///< throw `ftm::port_full`
  block = 1,  ///< wait, inside `ftm::atomically`, until a receive makes room
};

/// How a port is made.
struct port_options {
  std::uint32_t capacity = 64;        ///< messages the port holds at most
  std::uint32_t max_deliveries = 10;  ///< deliveries before a message is dead; 0: no limit
  when_full on_full = when_full::fail;
};

/// A typed handle to a stable port carrying messages of type `Msg` (a stable type, or
/// a `std::variant` of stable types for a port over several types). Like
/// `ftm::stable<T>` it is an offset into the pool, never a pointer: it can be stored in
/// stable objects and sent inside messages (a reply port). It also records the port's
/// capacity, which fixes the size of the port object. Made by `ftm::make_port`.
template <class Msg>
class stable_port {
 public:
  using message_type = Msg;

  /// The null handle.
  constexpr stable_port() noexcept = default;
  constexpr stable_port(detail::from_offset_t, std::uint64_t offset,
                        std::uint32_t capacity) noexcept
      : offset_(offset), capacity_(capacity) {}

  /// The port object's offset in its pool (0 for the null handle).
  [[nodiscard]] constexpr std::uint64_t offset() const noexcept { return offset_; }
  /// The most messages the port holds.
  [[nodiscard]] constexpr std::uint32_t capacity() const noexcept { return capacity_; }
  constexpr explicit operator bool() const noexcept { return offset_ != 0; }
  friend constexpr bool operator==(stable_port, stable_port) noexcept = default;

 private:
  std::uint64_t offset_ = 0;
  std::uint32_t capacity_ = 0;
  std::uint32_t reserved_ = 0;  // zero: no padding of unspecified value in stable objects
};

/// A port over several message types.
template <class... Msgs>
using multi_port = stable_port<std::variant<Msgs...>>;

/// What a port has seen, read in a transaction (`ftm::port_stats_of`).
struct port_stats {
  std::uint64_t depth = 0;          ///< committed messages waiting in the port
  std::uint64_t capacity = 0;       ///< the most it holds
  std::uint64_t in_flight = 0;      ///< waiting messages already delivered to a receive
                                    ///< that did not commit (aborted, or its process died)
  std::uint64_t sent = 0;           ///< committed sends
  std::uint64_t received = 0;       ///< committed receives
  std::uint64_t deliveries = 0;     ///< every delivery, committed or not
  std::uint64_t redelivered = 0;    ///< deliveries of a message delivered before
  std::uint64_t dead_lettered = 0;  ///< messages moved to the dead-letter port (or dropped)
};

namespace detail {

template <class T>
struct is_variant : std::false_type {};
template <class... Ts>
struct is_variant<std::variant<Ts...>> : std::true_type {};

/// The stable-type rule for a message type, and for each alternative of a variant.
template <class Msg>
constexpr bool check_message_type() {
  static_assert(check_stable_type<Msg>());
  if constexpr (is_variant<Msg>::value) {
    []<class... Ts>(std::type_identity<std::variant<Ts...>>) {
      static_assert((check_stable_type<Ts>() && ...));
    }(std::type_identity<Msg>{});
  }
  return true;
}

/// Whether a port of `Msg` carries a `T`: the type itself, or one of its alternatives.
template <class Msg, class T>
constexpr bool port_carries() {
  if constexpr (std::is_same_v<Msg, T>) {
    return true;
  } else if constexpr (is_variant<Msg>::value) {
    return []<class... Ts>(std::type_identity<std::variant<Ts...>>) {
      return (std::is_same_v<T, Ts> || ...);
    }(std::type_identity<Msg>{});
  } else {
    return false;
  }
}

/// The start of a port object; the ring of slots follows it.
struct port_header {
  std::uint64_t fingerprint;  // of the message type: a handle of another type is refused
  std::uint32_t capacity;
  std::uint32_t slot_size;
  std::uint32_t max_deliveries;
  std::uint32_t on_full;
  std::uint64_t dead_letter;  // the dead-letter port's offset, 0: none
  std::uint32_t dead_letter_capacity;
  std::uint32_t reserved;
  std::uint64_t head;  // sequence number of the oldest message
  std::uint64_t tail;  // sequence number of the next message sent
  std::uint64_t sent;
  std::uint64_t received;
  std::uint64_t dead_lettered;
  // Written through (`unlogged_write_engine`): they count deliveries that aborted too.
  std::uint64_t deliveries;
  std::uint64_t redelivered;
};
static_assert(sizeof(port_header) % 16 == 0);

/// One message in the ring; the message's bytes follow at `slot_payload`.
struct port_slot {
  std::uint32_t deliveries;  // written through: survives the abort of the receive
  std::uint32_t reserved;
  std::uint64_t sequence;
};
inline constexpr std::size_t slot_payload = 16;
static_assert(sizeof(port_slot) <= slot_payload);

template <class Msg>
constexpr std::uint32_t slot_size_of() {
  return static_cast<std::uint32_t>((slot_payload + sizeof(Msg) + 15) / 16 * 16);
}

template <class Msg>
std::string_view port_type_name() {
  static const std::string name = fmt::format("ftm::port<{}>", type_name<Msg>());
  return name;
}

template <class Msg>
object_type port_object_type(std::uint32_t capacity) {
  return {sizeof(port_header) + std::size_t{capacity} * slot_size_of<Msg>(), 16,
          port_type_name<Msg>()};
}

// ---- the port directory -----------------------------------------------------------
//
// Every port made in a pool is listed under the reserved root `ftm.ports`, so that a
// tool (ftm-inspect) finds the ports without knowing the programs' objects that hold
// their handles. The directory is an ordinary stable object of this layer: it works
// on every engine, and the engines know nothing of ports. `make_port` adds an entry
// in its own transaction (an abort leaves none); sends and receives never touch it.

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
      tx.engine().find_root(tx.id(), port_directory_name, root_type_of<port_directory>());
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

/// What is wrong with a port's object (`bytes`) given its directory entry; empty if
/// nothing. Also sets `r.readable` and `r.in_flight`.
inline std::vector<std::string> check_port(const port_directory_entry& e,
                                           std::span<const std::byte> bytes, port_report& r) {
  std::vector<std::string> out;
  if (bytes.size() < sizeof(port_header)) {
    out.push_back(fmt::format("its object has {} bytes, fewer than a port header ({})",
                              bytes.size(), sizeof(port_header)));
    return out;
  }
  const auto h = copy_from<port_header>(bytes);
  r.header = h;
  if (h.capacity != e.capacity || h.capacity == 0) {
    out.push_back(
        fmt::format("its header's capacity {} is not the directory's {}", h.capacity, e.capacity));
  }
  if (h.slot_size != e.slot_size || h.slot_size < slot_payload || h.slot_size % 16 != 0) {
    out.push_back(fmt::format("its header's slot size {} is not the directory's {}", h.slot_size,
                              e.slot_size));
  }
  const std::uint64_t size = sizeof(port_header) + std::uint64_t{h.capacity} * h.slot_size;
  if (out.empty() && size != bytes.size()) {
    out.push_back(fmt::format("its object has {} bytes, not the {} of {} slots of {} bytes",
                              bytes.size(), size, h.capacity, h.slot_size));
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
    r.readable = true;
    for (std::uint64_t q = h.head; q != h.tail; ++q) {
      const std::size_t at = sizeof(port_header) + (q % h.capacity) * h.slot_size;
      r.in_flight += copy_from<port_slot>(bytes, at).deliveries != 0 ? 1 : 0;
    }
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
      for (auto& p : check_port(e, object(e.offset), r))
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

/// A port opened in a transaction; closes it again at the end of the scope (locks
/// stay held until the transaction ends).
template <class E>
class port_access {
 public:
  port_access(transaction<E>& tx, std::uint64_t offset, std::byte* base) noexcept
      : tx_(tx), offset_(offset), base_(base) {}
  port_access(port_access&& other) noexcept
      : tx_(other.tx_), offset_(std::exchange(other.offset_, 0)), base_(other.base_) {}
  port_access& operator=(port_access&&) = delete;
  ~port_access() {
    if constexpr (!closing_is_noop<E>) {
      if (offset_ != 0 && tx_.active()) tx_.engine().close(tx_.id(), offset_);
    }
  }

  [[nodiscard]] port_header& header() const noexcept {
    return *std::launder(reinterpret_cast<port_header*>(base_));
  }
  [[nodiscard]] std::size_t slot_at(std::uint64_t sequence) const noexcept {
    return sizeof(port_header) + (sequence % header().capacity) * header().slot_size;
  }
  [[nodiscard]] port_slot& slot(std::uint64_t sequence) const noexcept {
    return *std::launder(reinterpret_cast<port_slot*>(base_ + slot_at(sequence)));
  }
  [[nodiscard]] std::byte* payload(std::uint64_t sequence) const noexcept {
    return base_ + slot_at(sequence) + slot_payload;
  }
  [[nodiscard]] std::uint64_t depth() const noexcept { return header().tail - header().head; }

  /// Writes a field of the port past the reach of abort and recovery.
  template <class T>
  void write_through(std::size_t at, T value) const {
    tx_.engine().write_through(tx_.id(), offset_, at, &value, sizeof value);
  }

  [[nodiscard]] transaction<E>& tx() const noexcept { return tx_; }
  [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

 private:
  transaction<E>& tx_;
  std::uint64_t offset_;
  std::byte* base_;
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

/// Opens the port at `offset` (of `capacity` messages of `Msg`) for writing or reading,
/// and checks that it is one.
template <class Msg, bool Write, class E>
port_access<E> open_port(transaction<E>& tx, std::uint64_t offset, std::uint32_t capacity,
                         std::string_view what) {
  require_port(tx.active(), offset, what, &type_name<Msg>);
  const object_type ty = port_object_type<Msg>(capacity);
  std::byte* base;
  if constexpr (Write) {
    base = static_cast<std::byte*>(tx.engine().open_write(tx.id(), offset, ty));
  } else {
    base = static_cast<std::byte*>(const_cast<void*>(tx.engine().open_read(tx.id(), offset, ty)));
  }
  port_access<E> port(tx, offset, base);
  const port_header& h = port.header();
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
void append(const port_access<E>& port, const Msg& msg) {
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

template <class E>
[[noreturn]] void full_port(const port_access<E>& port, std::string_view type) {
  throw port_full(fmt::format(
      "ftm::send: the ftm::stable_port<{}> at offset {} is full ({} of {} messages); make it "
      "with a larger capacity, or with when_full::block to wait for room",
      type, port.offset(), port.depth(), port.header().capacity));
}

/// Asks `ftm::atomically` to abort, wait until the open port changes (or the
/// deadline passes) and run the transaction again.
template <class E>
[[noreturn]] void wait_for_change(const port_access<E>& port,
                                  std::chrono::steady_clock::time_point deadline) {
  throw retry_request(port.tx().engine().watch(port.tx().id(), port.offset()), deadline);
}

/// Commits the moves of the poison messages at the head of a port to its dead-letter
/// port, which the receive that found them undid when it aborted to wait. Best
/// effort: if the port is busy, whoever holds it will change it and wake the waiter.
template <class Msg, class E>
void bury_poison(void* engine, std::uint64_t offset, std::uint64_t capacity) noexcept {
  transaction<E> tx(*static_cast<E*>(engine));
  try {
    tx.begin();
    auto port = open_port<Msg, true>(tx, offset, static_cast<std::uint32_t>(capacity), "receive");
    port_header& h = port.header();
    bool moved = false;
    while (h.head != h.tail && h.max_deliveries != 0 &&
           port.slot(h.head).deliveries >= h.max_deliveries) {
      bury_head<Msg>(port);
      moved = true;
    }
    if (moved) {
      tx.commit();
    } else {
      tx.abort();
    }
  } catch (...) {
    tx.abort();
  }
}

/// A receive found no message to deliver: waits for the port to change, after
/// burying the poison messages it found, for good.
template <class Msg, class E>
[[noreturn]] void wait_for_message(const port_access<E>& port, std::uint64_t buried_before,
                                   std::chrono::steady_clock::time_point deadline) {
  retry_request r(port.tx().engine().watch(port.tx().id(), port.offset()), deadline);
  if (port.header().dead_lettered != buried_before) {
    r.add_tidy(&bury_poison<Msg, E>, port.offset(), port.header().capacity);
  }
  throw r;
}

/// A send found the port full: fails, or waits for room (see `when_full`).
template <class Msg, class E>
void require_room(const port_access<E>& port) {
  if (static_cast<when_full>(port.header().on_full) == when_full::block) {
    if constexpr (watchable_engine<E>) {
      require_wait_scope("send (to a full port made with when_full::block)");
      wait_for_change(port, std::chrono::steady_clock::time_point::max());
    } else {
      throw usage_error(fmt::format(
          "ftm::send: the port at offset {} waits when full, which needs an engine that models "
          "ftm::watchable_engine",
          port.offset()));
    }
  }
  full_port(port, type_name<Msg>());
}

/// Moves the message at the head of `port` to its dead-letter port (or drops it if it
/// has none), in the same transaction.
template <class Msg, class E>
void bury_head(const port_access<E>& port) {
  port_header& h = port.header();
  const Msg msg = load_message<Msg>(port.payload(h.head));
  ++h.head;
  ++h.dead_lettered;
  if (h.dead_letter == 0) return;
  auto dead = open_port<Msg, true>(port.tx(), h.dead_letter, h.dead_letter_capacity, "receive");
  if (dead.depth() == dead.header().capacity) {
    throw port_full(fmt::format(
        "ftm::receive: the dead-letter port at offset {} of the ftm::stable_port<{}> at offset {} "
        "is full ({} messages); receive from it, or give it a larger capacity",
        h.dead_letter, type_name<Msg>(), port.offset(), dead.header().capacity));
  }
  append<Msg>(dead, msg);
}

/// Takes the message at the head of an open port, or nothing if it has none. Messages
/// delivered `max_deliveries` times go to the dead-letter port instead.
template <class Msg, class E>
std::optional<Msg> take(const port_access<E>& port) {
  port_header& h = port.header();
  while (h.head != h.tail) {
    port_slot& s = port.slot(h.head);
    if (h.max_deliveries != 0 && s.deliveries >= h.max_deliveries) {
      bury_head<Msg>(port);
      continue;
    }
    // The delivery is counted in both banks before the message leaves the port: an
    // abort, or the death of this process, puts it back counted.
    const std::uint32_t count = s.deliveries + 1;
    port.write_through(port.slot_at(h.head) + offsetof(port_slot, deliveries), count);
    port.write_through(offsetof(port_header, deliveries), h.deliveries + 1);
    if (count > 1) port.write_through(offsetof(port_header, redelivered), h.redelivered + 1);
    std::optional<Msg> msg{load_message<Msg>(port.payload(h.head))};
    ++h.head;
    ++h.received;
    return msg;
  }
  return std::nullopt;
}

template <class Msg, class E>
port_stats stats_of(const port_access<E>& port) {
  const port_header& h = port.header();
  port_stats s;
  s.depth = port.depth();
  s.capacity = h.capacity;
  for (std::uint64_t q = h.head; q != h.tail; ++q)
    s.in_flight += port.slot(q).deliveries != 0 ? 1 : 0;
  s.sent = h.sent;
  s.received = h.received;
  s.deliveries = h.deliveries;
  s.redelivered = h.redelivered;
  s.dead_lettered = h.dead_lettered;
  return s;
}

}  // namespace detail

/// Creates a port for messages of type `Msg` in the pool; an aborted transaction
/// frees it again. `dead_letter` receives the messages delivered
/// `options.max_deliveries` times; without one, they are dropped (and counted).
template <class Msg, engine E>
stable_port<Msg> make_port(transaction<E>& tx, port_options options = {},
                           stable_port<Msg> dead_letter = {}) {
  static_assert(detail::check_message_type<Msg>());
  static_assert(unlogged_write_engine<E>,
                "ftm ports need an engine that models ftm::unlogged_write_engine, to count "
                "the deliveries of receives that abort");
  detail::require_port(tx.active(), 1, "make_port", &detail::type_name<Msg>);
  if (options.capacity == 0 || options.capacity > (std::uint32_t{1} << 24)) {
    throw invalid_argument(fmt::format(
        "ftm::make_port: capacity {} is out of range (1 to 16777216 messages)", options.capacity));
  }
  const allocation a =
      tx.engine().allocate(tx.id(), detail::port_object_type<Msg>(options.capacity));
  const object_type ty = detail::port_object_type<Msg>(options.capacity);
  std::memset(a.storage, 0, ty.size);
  auto* h = ::new (a.storage) detail::port_header{};
  h->fingerprint = layout_fingerprint<Msg>();
  h->capacity = options.capacity;
  h->slot_size = detail::slot_size_of<Msg>();
  h->max_deliveries = options.max_deliveries;
  h->on_full = static_cast<std::uint32_t>(options.on_full);
  h->dead_letter = dead_letter.offset();
  h->dead_letter_capacity = dead_letter.capacity();
  detail::port_directory_entry entry{};
  entry.offset = a.offset;
  entry.fingerprint = h->fingerprint;
  entry.capacity = h->capacity;
  entry.slot_size = h->slot_size;
  const std::string_view type = detail::type_name<Msg>().substr(0, sizeof entry.type - 1);
  std::memcpy(entry.type, type.data(), type.size());
  detail::enter_port(tx, entry);
  return {detail::from_offset, a.offset, options.capacity};
}

/// Sends `msg` on `port` when `tx` commits; an aborted transaction sends nothing. `msg`
/// must be of the port's message type, or of one of its alternatives. On a full port
/// it throws `ftm::port_full` or, for a port made with `when_full::block`, waits
/// inside `ftm::atomically` until a receive makes room.
template <engine E, class Msg, class T>
void send(transaction<E>& tx, stable_port<Msg> port, const T& msg) {
  static_assert(detail::check_message_type<Msg>());
  static_assert(detail::port_carries<Msg, T>(),
                "ftm::send: the port does not carry this message type: send a value of the "
                "port's message type (ftm::stable_port<Msg>), or of one of the alternatives "
                "of its std::variant");
  auto access = detail::open_port<Msg, true>(tx, port.offset(), port.capacity(), "send");
  if (access.depth() == access.header().capacity) detail::require_room<Msg>(access);
  detail::append<Msg>(access, Msg(msg));
}

/// Takes the message at the head of `port`, or returns nothing if it is empty. If
/// `tx` aborts, or its process dies, the message goes back to the head with its
/// delivery count increased; once that count reaches the port's `max_deliveries`, the
/// message goes to the dead-letter port instead of being delivered again.
template <engine E, class Msg>
std::optional<Msg> try_receive(transaction<E>& tx, stable_port<Msg> port) {
  auto access = detail::open_port<Msg, true>(tx, port.offset(), port.capacity(), "try_receive");
  return detail::take<Msg>(access);
}

/// Takes the message at the head of `port`, waiting for one if it is empty: the
/// transaction aborts, waits without locks for a commit to change the port, and runs
/// again. Only inside `ftm::atomically`. Aborts put the message back as for
/// `try_receive`.
template <watchable_engine E, class Msg>
Msg receive(transaction<E>& tx, stable_port<Msg> port) {
  auto access = detail::open_port<Msg, true>(tx, port.offset(), port.capacity(), "receive");
  const std::uint64_t buried = access.header().dead_lettered;
  if (auto m = detail::take<Msg>(access)) return *std::move(m);
  detail::require_wait_scope("receive");
  detail::wait_for_message<Msg>(access, buried, std::chrono::steady_clock::time_point::max());
}

/// `ftm::receive`, waiting at most `timeout` from the first time the enclosing
/// `ftm::atomically` found the port empty; nothing if no message came in time.
template <watchable_engine E, class Msg, class Rep, class Period>
std::optional<Msg> receive_for(transaction<E>& tx, stable_port<Msg> port,
                               std::chrono::duration<Rep, Period> timeout) {
  auto access = detail::open_port<Msg, true>(tx, port.offset(), port.capacity(), "receive_for");
  const std::uint64_t buried = access.header().dead_lettered;
  if (auto m = detail::take<Msg>(access)) return m;
  detail::atomic_scope& scope = detail::require_wait_scope("receive_for");
  if (scope.timed_out()) return std::nullopt;
  detail::wait_for_message<Msg>(
      access, buried,
      scope.deadline_after(
          std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout)));
}

/// The port's counts, as of `tx` (which takes the port's shared lock).
template <engine E, class Msg>
port_stats port_stats_of(transaction<E>& tx, stable_port<Msg> port) {
  auto access = detail::open_port<Msg, false>(tx, port.offset(), port.capacity(), "port_stats_of");
  return detail::stats_of<Msg>(access);
}

// ---- messages of several types ---------------------------------------------------

/// Overloaded lambdas, for handlers: `ftm::overloaded{[](const a&) {...}, ...}`.
template <class... Fs>
struct overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
overloaded(Fs...) -> overloaded<Fs...>;

/// Instantiated for a message type a handler does not accept: the compiler names the
/// type in the template argument.
template <class Missing>
struct message_not_handled {
  static_assert(detail::always_false<Missing>,
                "ftm::handle: the handler has no case for the message type shown in "
                "'message_not_handled<...>'; add an overload taking it (or a generic "
                "[](const auto&) case)");
};

namespace detail {
template <class F, class Variant>
struct handler_covers;
template <class F, class... Ts>
struct handler_covers<F, std::variant<Ts...>> {
  template <class T>
  static constexpr bool check() {
    if constexpr (std::is_invocable_v<F&, T&>) {
      return true;
    } else {
      static_cast<void>(sizeof(message_not_handled<T>));
      return false;
    }
  }
  // Every alternative is checked (no short-circuit), so each missing one is named.
  static constexpr bool value = (static_cast<int>(check<Ts>()) + ... + 0) == sizeof...(Ts);
};
}  // namespace detail

/// Calls the case of `handler` for the message's type and returns what it returns. A
/// handler that does not cover every type of the port does not compile, and the
/// diagnostic names each missing type (`message_not_handled<T>`).
template <class... Ts, class F>
decltype(auto) handle(std::variant<Ts...>& msg, F&& handler) {
  if constexpr (detail::handler_covers<std::remove_reference_t<F>, std::variant<Ts...>>::value) {
    return std::visit(std::forward<F>(handler), msg);
  }
}

/// `ftm::handle` on a message that is not needed afterwards.
template <class... Ts, class F>
decltype(auto) handle(std::variant<Ts...>&& msg, F&& handler) {
  return handle(msg, std::forward<F>(handler));
}

}  // namespace ftm::FTM_ABI_NAMESPACE

template <>
struct fmt::formatter<ftm::port_stats> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::port_stats& s, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(),
                          "depth: {}/{}, in flight: {}, sent: {}, received: {}, deliveries: {}, "
                          "redelivered: {}, dead-lettered: {}",
                          s.depth, s.capacity, s.in_flight, s.sent, s.received, s.deliveries,
                          s.redelivered, s.dead_lettered);
  }
};

/// Port handles print as `stable_port<order>@4160/64`.
template <class Msg>
struct fmt::formatter<ftm::stable_port<Msg>> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(ftm::stable_port<Msg> p, FormatContext& ctx) const {
    if (!p)
      return fmt::format_to(ctx.out(), "stable_port<{}>(null)",
                            ftm::detail::short_type_name<Msg>());
    return fmt::format_to(ctx.out(), "stable_port<{}>@{}/{}", ftm::detail::short_type_name<Msg>(),
                          p.offset(), p.capacity());
  }
};

#endif  // FTM_PORT_HPP
