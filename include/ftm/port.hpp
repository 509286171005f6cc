#ifndef FTM_PORT_HPP
#define FTM_PORT_HPP

/// \file
/// Stable ports (the paper's section 3.2.3): typed, bounded message queues that live
/// in the pool. A send is a transactional write to the port, so it takes effect when
/// the transaction commits and an abort sends nothing; a receive takes the message
/// at the head, and an abort puts it back with its delivery count increased. A
/// message delivered too often goes to the port's dead-letter port instead.
///
/// Written over `ftm::transaction` only (its byte access, `detail::byte_access`): the
/// delivery count needs an `ftm::unlogged_write_engine`, blocking an
/// `ftm::watchable_engine`. This header is the API; the internals are
/// `detail/port_format.hpp` (the bytes in the pool), `port_ring.hpp` (an opened
/// port), `port_delivery.hpp` (redelivery and poison messages), `port_wait.hpp`
/// (watching) and `port_directory.hpp` (the pool's list of ports).

#include <ftm/detail/config.hpp>
#include <ftm/detail/port_delivery.hpp>
#include <ftm/detail/port_directory.hpp>
#include <ftm/detail/port_format.hpp>
#include <ftm/detail/port_ring.hpp>
#include <ftm/detail/port_wait.hpp>
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
/// capacity, which fixes the shape of the port's objects. Made by `ftm::make_port`.
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

template <class E>
[[noreturn]] void full_port(const port_writer<E>& port, std::string_view type) {
  throw port_full(fmt::format(
      "ftm::send: the ftm::stable_port<{}> at offset {} is full ({} of {} messages); make it "
      "with a larger capacity, or with when_full::block to wait for room",
      type, port.offset(), port.depth(), port.header().capacity));
}

/// A send found the port full: fails, or waits for room (see `when_full`).
template <class Msg, class E>
void require_room(const port_writer<E>& port) {
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

template <class Msg, class E, bool Write>
port_stats stats_of(port_access<E, Write>& port) {
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
  // The header, the slot index and the slot blocks are objects of their own: a send or
  // receive locks and copies the header and the block of its slot, whatever the capacity.
  const std::uint32_t block_slots = detail::block_slots_of(options.capacity);
  const std::uint32_t blocks = detail::blocks_of(options.capacity);
  const object_type block_type = detail::port_block_type<Msg>(block_slots);
  const allocation index = detail::byte_access::allocate(tx, detail::port_index_type(blocks));
  for (std::uint32_t b = 0; b < blocks; ++b) {
    const allocation block = detail::byte_access::allocate(tx, block_type);
    std::memset(block.storage, 0, block_type.size);
    std::memcpy(static_cast<std::byte*>(index.storage) + b * sizeof block.offset, &block.offset,
                sizeof block.offset);
  }
  const object_type ty = detail::port_object_type<Msg>();
  const allocation a = detail::byte_access::allocate(tx, ty);
  std::memset(a.storage, 0, ty.size);
  auto* h = ::new (a.storage) detail::port_header{};
  h->kind = detail::port_kind;
  h->fingerprint = layout_fingerprint<Msg>();
  h->capacity = options.capacity;
  h->slot_size = detail::slot_size_of<Msg>();
  h->max_deliveries = options.max_deliveries;
  h->on_full = static_cast<std::uint32_t>(options.on_full);
  h->dead_letter = dead_letter.offset();
  h->dead_letter_capacity = dead_letter.capacity();
  h->index = index.offset;
  h->block_slots = block_slots;
  h->blocks = blocks;
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

/// The port's counts, as of `tx` (which reads the port).
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

/// A port as a look at a pool finds it, outside any transaction (`ftm::inspect_ports`).
struct port_listing_entry {
  std::uint64_t offset = 0;  ///< the port object's offset in the pool
  std::string type;          ///< the message type's name (cut to 103 characters)
  /// Whether `stats` and `dead_letter` were read: false when the port is damaged (the
  /// listing's problems say how). `stats.capacity` is the directory's even then.
  bool readable = false;
  port_stats stats;
  std::uint64_t dead_letter = 0;  ///< the dead-letter port's offset, 0: none
};

/// Every port of a pool, and what is wrong with its port directory or its ports.
struct port_listing {
  std::vector<port_listing_entry> ports;
  std::vector<std::string> problems;
};

/// Lists the ports of a pool seen, as last committed, through a read-only view
/// (`ftm::engines::pmem_view`; any type with `roots()`, returning `root_report`s, and
/// `object(offset)`, returning the committed bytes of an object or throwing an
/// `ftm::error`). A pool in which no port was ever made lists none.
template <class View>
port_listing inspect_ports(const View& pool) {
  namespace fd = detail;
  port_listing out;
  for (const auto& r : pool.roots()) {
    if (r.name != fd::port_directory_name) continue;
    if (r.fingerprint != layout_fingerprint<fd::port_directory>() ||
        r.size != sizeof(fd::port_directory)) {
      out.problems.push_back(
          fmt::format("root '{}' holds a {} ({} bytes), not the port directory of this ftm", r.name,
                      r.type, r.size));
      return out;
    }
    auto found =
        fd::read_port_directory(r.offset, [&](std::uint64_t off) { return pool.object(off); });
    out.problems = std::move(found.problems);
    for (const fd::port_report& p : found.ports) {
      port_listing_entry e;
      e.offset = p.offset;
      e.type = p.type;
      e.readable = p.readable;
      e.stats.capacity = p.capacity;
      if (p.readable) {
        const fd::port_header& h = p.header;
        e.stats = port_stats{p.depth(),  h.capacity,   p.in_flight,   h.sent,
                             h.received, h.deliveries, h.redelivered, h.dead_lettered};
        e.dead_letter = h.dead_letter;
      }
      out.ports.push_back(std::move(e));
    }
    return out;
  }
  return out;
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
