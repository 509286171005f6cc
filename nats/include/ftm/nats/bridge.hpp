#ifndef FTM_NATS_BRIDGE_HPP
#define FTM_NATS_BRIDGE_HPP

/// \file
/// Stable ports and reliable servers between nodes, over NATS JetStream (the paper's
/// "reliable network message server", section 3.2.3). A node is a pool with a name.
/// A local port can be bound to a port that another node exposes by name: what is sent
/// to it arrives in the remote node's port, exactly once and in order. A service port
/// bound the same way carries `ftm::call`s to a server on another node and brings the
/// replies back to the callers' reply ports.
///
/// Two supervised tasks per node carry the messages (`bridge::outbound_task` and
/// `bridge::inbound_task`); each opens its NATS connection inside its own instance.
///
/// Outbound: one transaction takes a message from a bound port, numbers it `n` (one
/// sequence per destination node) and puts it into a stable outbox in the pool; no
/// port lock is held while the network is used. The outbox entries are published with
/// the id `<node>/<epoch>/<n>` until JetStream answers "stored" or "duplicate"; the
/// next pass's transaction removes them (one transaction per pass: remove what was
/// stored, take, read back the waiting entries; then a read-only one watches the ports).
/// The task does not wait for the PubAcks after a publish: it sleeps on its ports, and
/// takes the answers that came when it wakes (for the next message, or after 100 ms);
/// a destination's next window goes out only when its last one is all answered.
///
/// Inbound: each node has one stream (`FTM_<node>`, subjects `ftm.<node>.>`) and one
/// durable consumer with explicit acks. One transaction per delivery: `n <= hw[source]`
/// is a duplicate (dropped); `n == hw[source] + 1` is sent to the local port and
/// `hw[source] = n` recorded, together; a larger `n` is held (not acked) until its
/// predecessors came. The ack follows the commit. JetStream's dedupe only saves
/// traffic: exactly-once is kept by `hw` in the pool, which has no time window.

#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/nats/client.hpp>
#include <ftm/port.hpp>
#include <ftm/reflect.hpp>
#include <ftm/server.hpp>
#include <ftm/stable.hpp>
#include <ftm/supervisor.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::nats {

/// The largest message type a bridge carries, in bytes.
inline constexpr std::size_t max_message_size = 2040;
/// Messages taken from the bound ports and not yet stored by JetStream, per
/// destination node.
inline constexpr std::size_t outbox_capacity = 32;
/// Sending nodes an inbound side tracks.
inline constexpr std::size_t max_sources = 64;
/// Reply ports of remote callers a node mirrors (one per remote reply port).
inline constexpr std::size_t max_mirrors = 64;

/// A node: its name, where NATS is, and the settings of the streams and consumer.
struct node_options {
  /// The node's name: 1 to 24 letters, digits, '_' or '-'. Its stream is `FTM_<name>`.
  std::string name;
  client_options nats;
  /// The settings of every stream this node makes (its own, and those of the nodes it
  /// sends to, if they do not exist yet): replicas, age limit, size limit.
  stream_options stream;
  consumer_options consumer;
  /// Raised by the operator when the node restarts from a copy of its pool that may
  /// lag (a failover to a backup pool): its numbering starts again at 1, and the
  /// receivers drop what a lower epoch still sends.
  std::uint64_t epoch = 1;
  /// Capacity of each mirror port of a remote caller's reply port.
  std::uint32_t mirror_capacity = 256;
};

/// What a node's bridge has done, as recorded in its pool (`ftm::nats::bridge_stats_of`).
struct bridge_stats {
  std::uint64_t taken = 0;       ///< messages taken from bound ports into the outboxes
  std::uint64_t published = 0;   ///< outbox entries JetStream stored (or had stored)
  std::uint64_t duplicates = 0;  ///< ... of which it answered "duplicate"
  std::uint64_t pending = 0;     ///< outbox entries not yet stored
  std::uint64_t applied = 0;     ///< inbound messages sent to local ports
  std::uint64_t dropped = 0;     ///< inbound deliveries dropped as already applied
  std::uint64_t held = 0;        ///< inbound deliveries held for a missing predecessor
  std::uint64_t rejected = 0;    ///< inbound deliveries of an unknown port or wrong type
  std::uint64_t stale = 0;       ///< inbound deliveries of an older epoch
  std::uint64_t resyncs = 0;     ///< consumer restarts from the ack floor
};

namespace detail {

struct outbox_entry {
  std::uint64_t n;
  std::uint64_t epoch;
  std::uint32_t size;  // bytes of `bytes` in use
  std::uint32_t reserved;
  char subject[128];
  std::byte bytes[max_message_size + 8];
};

struct outbox {
  std::uint64_t epoch;
  std::uint64_t next_n;  // the last number given
  std::uint64_t head;    // entries [head, tail) wait, at slots[i % outbox_capacity]
  std::uint64_t tail;
  std::uint64_t taken;
  std::uint64_t published;
  std::uint64_t duplicates;
  std::uint64_t reserved;
  stable<outbox_entry> slots[outbox_capacity];
};

struct inbound_source {
  char name[32];
  std::uint64_t epoch;
  std::uint64_t hw;          // the last n applied
  std::uint64_t stream_seq;  // the stream sequence of that message
};

struct inbound_state {
  std::uint64_t floor;  // a stream sequence up to which everything was applied or dropped
  std::uint64_t applied;
  std::uint64_t dropped;
  std::uint64_t held;
  std::uint64_t rejected;
  std::uint64_t stale;
  std::uint64_t resyncs;
  std::uint64_t reserved;
  inbound_source sources[max_sources];
};

struct mirror_entry {
  char node[32];
  char service[32];
  std::uint64_t remote_offset;
  std::uint32_t remote_capacity;
  std::uint32_t local_capacity;
  std::uint64_t local_offset;
};

struct mirror_table {
  std::uint64_t count;
  mirror_entry entries[max_mirrors];
};

inline constexpr std::string_view inbound_root = "ftm.nats.in";
inline constexpr std::string_view mirrors_root = "ftm.nats.mirrors";
inline std::string outbox_root(std::string_view node) {
  return fmt::format("ftm.nats.out.{}", node);
}

inline bool valid_name(std::string_view s, std::size_t max) {
  if (s.empty() || s.size() > max) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

inline void require_name(std::string_view what, std::string_view s, std::size_t max) {
  if (!valid_name(s, max)) {
    throw invalid_argument(fmt::format(
        "ftm::nats: the {} '{}' must have 1 to {} letters, digits, '_' or '-'", what, s, max));
  }
}

template <std::size_t N>
void copy_name(char (&to)[N], std::string_view from) {
  std::memset(to, 0, N);
  std::memcpy(to, from.data(), std::min(from.size(), N - 1));
}

template <std::size_t N>
std::string_view name_of(const char (&s)[N]) {
  return {s, ::strnlen(s, N)};
}

inline std::string stream_of(std::string_view node) { return fmt::format("FTM_{}", node); }

/// A message's bytes on the wire: its type's layout fingerprint, then the object.
template <class Msg>
std::vector<std::byte> encode(const Msg& m) {
  static_assert(sizeof(Msg) <= max_message_size,
                "ftm::nats: the message type is larger than ftm::nats::max_message_size");
  std::vector<std::byte> out(8 + sizeof(Msg));
  const std::uint64_t fp = layout_fingerprint<Msg>();
  std::memcpy(out.data(), &fp, 8);
  std::memcpy(out.data() + 8, &m, sizeof(Msg));
  return out;
}

/// The message in `bytes`, or nothing if they do not hold a `Msg` of this layout.
template <class Msg>
std::optional<Msg> decode(std::span<const std::byte> bytes) {
  if (bytes.size() != 8 + sizeof(Msg)) return std::nullopt;
  std::uint64_t fp = 0;
  std::memcpy(&fp, bytes.data(), 8);
  if (fp != layout_fingerprint<Msg>()) return std::nullopt;
  std::array<std::byte, sizeof(Msg)> raw{};
  std::memcpy(raw.data(), bytes.data() + 8, sizeof(Msg));
  return std::bit_cast<Msg>(raw);
}

/// `<node>/<epoch>/<n>`, split; nothing if malformed.
struct message_id {
  std::string source;
  std::uint64_t epoch = 0;
  std::uint64_t n = 0;
};
inline std::optional<message_id> parse_id(std::string_view id) {
  const std::size_t b = id.rfind('/');
  if (b == std::string_view::npos || b == 0) return std::nullopt;
  const std::size_t a = id.rfind('/', b - 1);
  if (a == std::string_view::npos) return std::nullopt;
  message_id out;
  out.source = std::string(id.substr(0, a));
  auto num = [](std::string_view t, std::uint64_t& v) {
    return !t.empty() && std::from_chars(t.data(), t.data() + t.size(), v).ec == std::errc{};
  };
  if (!num(id.substr(a + 1, b - a - 1), out.epoch) || !num(id.substr(b + 1), out.n))
    return std::nullopt;
  return out;
}

inline void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace detail

/// A node's bridge: which local ports are bound to remote ports, which ports this node
/// exposes to others, and the two tasks that carry the messages. Copyable: each task
/// instance gets a copy. Declare every binding before the tasks start; the same
/// declarations must be made again when the program restarts.
template <watchable_engine E>
class bridge {
 public:
  explicit bridge(node_options options) : options_(std::move(options)) {
    detail::require_name("node name", options_.name, 24);
  }

  [[nodiscard]] const node_options& options() const noexcept { return options_; }

  /// What is sent to `local` arrives in the port `port_name` that node `node` exposes.
  template <class Msg>
  void bind(stable_port<Msg> local, std::string_view node, std::string_view port_name) {
    detail::require_name("node name", node, 24);
    detail::require_name("port name", port_name, 32);
    std::string subject = fmt::format("ftm.{}.p.{}", node, port_name);
    routes_.push_back({std::string(node), local.offset(),
                       [local, subject](transaction<E>& tx) -> std::optional<wire> {
                         std::optional<Msg> m = try_receive(tx, local);
                         if (!m) return std::nullopt;
                         return wire{subject, detail::encode(*m)};
                       },
                       [local](transaction<E>& tx) { return watch_empty(tx, local); }});
  }

  /// Messages other nodes send to `port_name` on this node land in `local`.
  template <class Msg>
  void expose(std::string_view port_name, stable_port<Msg> local) {
    detail::require_name("port name", port_name, 32);
    handlers_[fmt::format("p.{}", port_name)] = [local](transaction<E>& tx, std::string_view,
                                                        std::string_view,
                                                        std::span<const std::byte> bytes) {
      std::optional<Msg> m = detail::decode<Msg>(bytes);
      if (!m) return false;
      send(tx, local, *m);
      return true;
    };
  }

  /// Calls made to the local service port `proxy` (`ftm::call(pool, proxy, replies,
  /// request)`) are served by the service `service` that node `node` exposes; the
  /// replies come back to each caller's reply port on this node.
  template <class Req, class Rep>
  void bind_service(service_port<Req, Rep> proxy, std::string_view node, std::string_view service) {
    bind(proxy, node, service);
    handlers_[fmt::format("r.{}", service)] = [](transaction<E>& tx, std::string_view rest,
                                                 std::string_view,
                                                 std::span<const std::byte> bytes) {
      // rest: "<offset>.<capacity>" of the caller's reply port in this pool.
      const std::size_t dot = rest.find('.');
      std::uint64_t off = 0;
      std::uint32_t cap = 0;
      if (dot == std::string_view::npos ||
          std::from_chars(rest.data(), rest.data() + dot, off).ec != std::errc{} ||
          std::from_chars(rest.data() + dot + 1, rest.data() + rest.size(), cap).ec !=
              std::errc{}) {
        return false;
      }
      std::optional<reply_to_call<Rep>> r = detail::decode<reply_to_call<Rep>>(bytes);
      if (!r) return false;
      send(tx, reply_port<Rep>(ftm::detail::from_offset, off, cap), *r);
      return true;
    };
  }

  /// Calls that other nodes make to `service` on this node are served by whoever
  /// serves the local service port `server` (`ftm::serve`). Each remote reply port
  /// gets a mirror port in this pool, made on its first call, whose replies the
  /// outbound task carries back.
  template <class Req, class Rep>
  void expose_service(std::string_view service, service_port<Req, Rep> server) {
    detail::require_name("service name", service, 32);
    const std::string name(service);
    const std::uint32_t mirror_capacity = options_.mirror_capacity;
    handlers_[fmt::format("p.{}", service)] =
        [server, name, mirror_capacity](transaction<E>& tx, std::string_view,
                                        std::string_view source, std::span<const std::byte> bytes) {
          std::optional<call_request<Req, Rep>> r = detail::decode<call_request<Req, Rep>>(bytes);
          if (!r) return false;
          const reply_port<Rep> mirror = mirror_for<Rep>(tx, source, name, r->reply_to.offset(),
                                                         r->reply_to.capacity(), mirror_capacity);
          // The request as the caller made it (its id and whatever else it carries),
          // with the mirror as its reply port.
          call_request<Req, Rep> forwarded = *r;
          forwarded.reply_to = mirror;
          send(tx, server, forwarded);
          return true;
        };
    mirror_takers_[name] = [name](transaction<E>& tx,
                                  const detail::mirror_entry& e) -> std::optional<wire> {
      const reply_port<Rep> mirror(ftm::detail::from_offset, e.local_offset, e.local_capacity);
      std::optional<reply_to_call<Rep>> m = try_receive(tx, mirror);
      if (!m) return std::nullopt;
      return wire{fmt::format("ftm.{}.r.{}.{}.{}", detail::name_of(e.node), name, e.remote_offset,
                              e.remote_capacity),
                  detail::encode(*m)};
    };
    mirror_watchers_[name] = [](transaction<E>& tx, const detail::mirror_entry& e) {
      return watch_empty(
          tx, reply_port<Rep>(ftm::detail::from_offset, e.local_offset, e.local_capacity));
    };
  }

  /// The outbound task's entry point, for `ftm::supervisor` (task name e.g. "nats-out").
  [[nodiscard]] auto outbound_task() const {
    return [self = *this](E& engine, task_context&) { self.run_outbound(engine); };
  }
  /// The inbound task's entry point, for `ftm::supervisor` (task name e.g. "nats-in").
  [[nodiscard]] auto inbound_task() const {
    return [self = *this](E& engine, task_context&) { self.run_inbound(engine); };
  }

  /// Carries the bound ports' messages to JetStream; runs until its process is killed.
  void run_outbound(E& engine) const;
  /// Carries this node's stream into its exposed ports; runs until its process is killed.
  void run_inbound(E& engine) const;

 private:
  struct wire {
    std::string subject;
    std::vector<std::byte> bytes;
  };
  struct route {
    std::string node;
    std::uint64_t port;
    std::function<std::optional<wire>(transaction<E>&)> take;
    std::function<std::optional<watch_token>(transaction<E>&)> watch;
  };
  /// An outbox entry that JetStream stored (or had stored: `duplicate`).
  struct stored_entry {
    std::uint64_t n;
    std::uint64_t epoch;
    bool duplicate;
  };
  /// Per destination node, oldest first.
  using stored_entries = std::map<std::string, std::vector<stored_entry>>;
  /// An outbox entry sent to JetStream, and its answer once it came.
  struct flight {
    std::uint64_t n;
    std::uint64_t epoch;
    std::uint64_t window;  // client::send_window's number, and the index in it
    std::size_t index;
    std::chrono::steady_clock::time_point deadline;  // no answer by then: send it again
    std::optional<publish_result> result;
  };
  /// The outbound task's entries in flight, per destination node, oldest first.
  struct flight_log {
    std::map<std::string, std::vector<flight>> nodes;
    std::map<std::uint64_t, std::string> windows;  // window number -> node
  };
  /// What one outbound transaction found.
  struct pass {
    std::uint64_t taken = 0;
    /// Per destination node, every entry waiting in its outbox, oldest first.
    std::map<std::string, std::vector<detail::outbox_entry>> windows;
  };
  using handler = std::function<bool(transaction<E>&, std::string_view rest,
                                     std::string_view source, std::span<const std::byte>)>;

  /// Watches `port` if it is empty (holding its shared lock); nothing if it is not.
  template <class Msg>
  static std::optional<watch_token> watch_empty(transaction<E>& tx, stable_port<Msg> port) {
    const auto access = ftm::detail::open_port<Msg, false>(tx, port.offset(), port.capacity(),
                                                           "ftm::nats outbound");
    if (access.depth() != 0) return std::nullopt;
    return ftm::detail::byte_access::watch(tx, port.offset());
  }

  template <class Rep>
  static reply_port<Rep> mirror_for(transaction<E>& tx, std::string_view node,
                                    std::string_view service, std::uint64_t remote_offset,
                                    std::uint32_t remote_capacity, std::uint32_t capacity) {
    const stable<detail::mirror_table> ref =
        ftm::detail::reserved_root<detail::mirror_table>(tx, detail::mirrors_root);
    // Read first: the table is written only when a new mirror is made, so a request
    // does not hold its exclusive lock (which the outbound task's reads would wait for).
    {
      const auto table = tx.open_read(ref);
      for (std::uint64_t i = 0; i < table->count; ++i) {
        const detail::mirror_entry& e = table->entries[i];
        if (detail::name_of(e.node) == node && detail::name_of(e.service) == service &&
            e.remote_offset == remote_offset && e.remote_capacity == remote_capacity) {
          return {ftm::detail::from_offset, e.local_offset, e.local_capacity};
        }
      }
    }
    auto table = tx.open(ref);
    if (table->count == max_mirrors) {
      throw usage_error(
          fmt::format("ftm::nats: more than {} remote reply ports call this node's services (the "
                      "latest: node '{}', service '{}'); callers should reuse their reply ports",
                      max_mirrors, node, service));
    }
    // A full mirror (its node's outbound side cannot publish) makes the server wait
    // for room, instead of failing its request's transaction over and over.
    const reply_port<Rep> mirror = make_port<reply_to_call<Rep>>(
        tx, port_options{.capacity = capacity, .max_deliveries = 0, .on_full = when_full::block});
    detail::mirror_entry& e = table->entries[table->count++];
    detail::copy_name(e.node, node);
    detail::copy_name(e.service, service);
    e.remote_offset = remote_offset;
    e.remote_capacity = remote_capacity;
    e.local_offset = mirror.offset();
    e.local_capacity = mirror.capacity();
    return mirror;
  }

  /// The outbound side's one transaction per pass: drops from the outboxes what
  /// JetStream stored (`stored`: answered since the last pass), takes what the bound ports and
  /// mirror ports hold into the outboxes while they have room, and reads back every
  /// waiting entry.
  pass step(E& engine, std::set<std::string>& destinations, const stored_entries& stored) const;
  /// Waits (at most `slice`) until a bound or mirror port may hold a message.
  void await_ports(E& engine, std::chrono::milliseconds slice) const;
  /// Sends `entries` (waiting entries of `node`'s outbox) as one window without waiting
  /// for the PubAcks, noting each in `flights`; false if not all went out (no stream
  /// yet, not connected).
  bool send_entries(client& c, const std::string& node,
                    std::span<const detail::outbox_entry> entries, std::set<std::string>& streams,
                    flight_log& flights) const;

  node_options options_;
  std::vector<route> routes_;
  std::map<std::string, handler> handlers_;  // by subject after "ftm.<node>.", up to the name
  std::map<std::string,
           std::function<std::optional<wire>(transaction<E>&, const detail::mirror_entry&)>>
      mirror_takers_;
  std::map<std::string,
           std::function<std::optional<watch_token>(transaction<E>&, const detail::mirror_entry&)>>
      mirror_watchers_;
};

// ---- outbound --------------------------------------------------------------------

template <watchable_engine E>
typename bridge<E>::pass bridge<E>::step(E& engine, std::set<std::string>& destinations,
                                         const stored_entries& stored) const {
  return atomically(engine, [&](transaction<E>& tx) -> pass {
    pass p;
    // Each destination's outbox, found (or made, on the first message to it).
    std::map<std::string, stable<detail::outbox>> boxes;
    auto find_box = [&](const std::string& node) {
      auto it = boxes.find(node);
      if (it != boxes.end()) return it->second;
      const stable<detail::outbox> ref(
          ftm::detail::from_offset,
          ftm::detail::byte_access::find_root(tx, detail::outbox_root(node),
                                              ftm::detail::root_type_of<detail::outbox>()));
      if (ref) boxes.emplace(node, ref);
      return ref;
    };
    auto make_box = [&](const std::string& node) {
      stable<detail::outbox> ref = find_box(node);
      if (ref) return ref;
      ref = ftm::detail::reserved_root<detail::outbox>(tx, detail::outbox_root(node));
      boxes.emplace(node, ref);
      return ref;
    };
    // 1. What JetStream stored in the last pass leaves the outboxes: the oldest
    // entries, as long as they are the ones published.
    for (const auto& [node, entries] : stored) {
      const stable<detail::outbox> box = find_box(node);
      if (!box || entries.empty()) continue;
      auto b = tx.open(box);
      for (const stored_entry& s : entries) {
        if (b->head == b->tail) break;
        const auto e = tx.open_read(b->slots[b->head % outbox_capacity]);
        if (e->n != s.n || e->epoch != s.epoch) break;
        ++b->head;
        ++b->published;
        if (s.duplicate) ++b->duplicates;
      }
    }
    // 2. The bound ports' and mirrors' messages go into the outboxes, while they have
    // room; each gets its destination's next number.
    auto room = [&](const std::string& node) {
      const stable<detail::outbox> box = find_box(node);
      if (!box) return true;
      const auto b = tx.open_read(box);
      return b->tail - b->head < outbox_capacity;
    };
    auto put = [&](const std::string& node, const wire& w) {
      auto b = tx.open(make_box(node));
      if (!b->slots[0]) {
        for (auto& s : b->slots)
          s = ftm::create<detail::outbox_entry>(tx);
        b->epoch = options_.epoch;
      }
      if (b->epoch < options_.epoch && b->head == b->tail) {
        b->epoch = options_.epoch;  // a new epoch numbers from 1 again
        b->next_n = 0;
      }
      auto e = tx.open(b->slots[b->tail % outbox_capacity]);
      e->n = ++b->next_n;
      e->epoch = b->epoch;
      e->size = static_cast<std::uint32_t>(w.bytes.size());
      detail::copy_name(e->subject, w.subject);
      std::memcpy(e->bytes, w.bytes.data(), w.bytes.size());
      ++b->tail;
      ++b->taken;
      ++p.taken;
    };
    for (const route& r : routes_) {
      destinations.insert(r.node);
      while (room(r.node)) {
        std::optional<wire> w = r.take(tx);
        if (!w) break;
        put(r.node, *w);
      }
    }
    const std::uint64_t table_offset = ftm::detail::byte_access::find_root(
        tx, detail::mirrors_root, ftm::detail::root_type_of<detail::mirror_table>());
    if (table_offset != 0) {
      const auto table =
          tx.open_read(stable<detail::mirror_table>(ftm::detail::from_offset, table_offset));
      for (std::uint64_t i = 0; i < table->count; ++i) {
        const detail::mirror_entry e = table->entries[i];
        const auto taker = mirror_takers_.find(std::string(detail::name_of(e.service)));
        if (taker == mirror_takers_.end()) continue;
        const std::string node(detail::name_of(e.node));
        destinations.insert(node);
        while (room(node)) {
          std::optional<wire> w = taker->second(tx, e);
          if (!w) break;
          put(node, *w);
        }
      }
    }
    // 3. Every waiting entry, to publish once this transaction committed.
    for (const std::string& node : destinations) {
      const stable<detail::outbox> box = find_box(node);
      if (!box) continue;
      const auto b = tx.open_read(box);
      if (b->head == b->tail) continue;
      std::vector<detail::outbox_entry>& window = p.windows[node];
      for (std::uint64_t i = b->head; i != b->tail; ++i)
        window.push_back(*tx.open_read(b->slots[i % outbox_capacity]));
    }
    return p;
  });
}

template <watchable_engine E>
void bridge<E>::await_ports(E& engine, std::chrono::milliseconds slice) const {
  std::vector<watch_token> tokens;
  const bool all_empty = atomically(engine, [&](transaction<E>& tx) {
    tokens.clear();
    bool empty = true;
    for (const route& r : routes_) {
      const std::optional<watch_token> t = r.watch(tx);
      if (!t) {
        empty = false;
        break;
      }
      tokens.push_back(*t);
    }
    if (empty) {
      const std::uint64_t off = ftm::detail::byte_access::find_root(
          tx, detail::mirrors_root, ftm::detail::root_type_of<detail::mirror_table>());
      if (off != 0) {
        const auto table =
            tx.open_read(stable<detail::mirror_table>(ftm::detail::from_offset, off));
        // The table too: a new mirror is a new port to watch.
        tokens.push_back(ftm::detail::byte_access::watch(tx, off));
        for (std::uint64_t i = 0; i < table->count && empty; ++i) {
          const auto w =
              mirror_watchers_.find(std::string(detail::name_of(table->entries[i].service)));
          if (w == mirror_watchers_.end()) continue;
          const std::optional<watch_token> t = w->second(tx, table->entries[i]);
          if (!t) {
            empty = false;
          } else {
            tokens.push_back(*t);
          }
        }
      }
    }
    return empty;
  });
  // Every token made is handed to wait() (which unregisters them), even when a port
  // was found holding a message: then the wait is not blocking.
  const auto deadline =
      all_empty ? std::chrono::steady_clock::now() + slice : std::chrono::steady_clock::now();
  if (!tokens.empty()) {
    engine.wait(std::span<const watch_token>(tokens), deadline);
  } else if (all_empty) {
    // Nothing to watch yet (no bound port, no mirror table): look again soon.
    std::this_thread::sleep_for(std::min(slice, std::chrono::milliseconds(10)));
  }
}

template <watchable_engine E>
bool bridge<E>::send_entries(client& c, const std::string& node,
                             std::span<const detail::outbox_entry> entries,
                             std::set<std::string>& streams, flight_log& flights) const {
  if (!streams.contains(node)) {
    std::string why;
    if (!c.ensure_stream(detail::stream_of(node), fmt::format("ftm.{}.>", node), options_.stream,
                         &why)) {
      return false;
    }
    streams.insert(node);
  }
  std::vector<std::string> ids;
  ids.reserve(entries.size());
  std::vector<client::outgoing> out;
  out.reserve(entries.size());
  for (const detail::outbox_entry& e : entries) {
    ids.push_back(fmt::format("{}/{}/{}", options_.name, e.epoch, e.n));
    out.push_back(
        {detail::name_of(e.subject), ids.back(), std::span<const std::byte>(e.bytes, e.size)});
  }
  const client::sent_window w = c.send_window(out);
  const auto deadline = std::chrono::steady_clock::now() + options_.nats.timeout;
  std::vector<flight>& f = flights.nodes[node];
  for (std::size_t i = 0; i < w.sent; ++i)
    f.push_back({entries[i].n, entries[i].epoch, w.number, i, deadline, std::nullopt});
  if (w.sent != 0) flights.windows[w.number] = node;
  return w.sent == entries.size();
}

template <watchable_engine E>
void bridge<E>::run_outbound(E& engine) const {
  using namespace std::chrono_literals;
  client c(options_.nats);
  std::set<std::string> streams;  // destination streams known to exist
  std::set<std::string> destinations;
  flight_log flights;
  stored_entries stored;  // answered "stored" or "duplicate", to drop from the outboxes
  std::vector<client::answer> answers;
  int backoff = 0;
  for (;;) {
    // 1. The PubAcks that have come. Nobody waited for them: the task slept on its
    // ports meanwhile, and a lone message's PubAck is long there when the next message
    // wakes the task (one wake-up per message, not two).
    bool heard = false;
    for (const client::answer& a : c.collect(0ms))
      answers.push_back(a);
    for (const client::answer& a : answers) {
      const auto node = flights.windows.find(a.window);
      if (node == flights.windows.end()) continue;  // of a window given up
      for (flight& f : flights.nodes[node->second]) {
        if (f.window == a.window && f.index == a.index && !f.result) {
          f.result = a.result;
          heard = true;
        }
      }
    }
    answers.clear();
    // 2. The oldest answered entries of each node leave its outbox in `step` below, up
    // to the first not stored: refused, or no answer in time, that one and all after
    // it are sent again (same bytes and ids), in order, after a short backoff.
    bool failed = false;
    const auto now = std::chrono::steady_clock::now();
    for (auto& [node, f] : flights.nodes) {
      std::size_t done = 0;
      while (done < f.size() && (f[done].result == publish_result::stored ||
                                 f[done].result == publish_result::duplicate)) {
        stored[node].push_back(
            {f[done].n, f[done].epoch, f[done].result == publish_result::duplicate});
        ++done;
      }
      f.erase(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(done));
      if (!f.empty() && (f.front().result || f.front().deadline <= now)) {
        if (f.front().result == publish_result::refused)
          streams.erase(node);  // make it again if it is gone
        f.clear();
        failed = true;
      }
    }
    std::erase_if(flights.windows, [&](const auto& w) {
      const std::vector<flight>& f = flights.nodes[w.second];
      return std::none_of(f.begin(), f.end(), [&](const flight& x) { return x.window == w.first; });
    });
    // The lease is renewed only while the server answers: an instance whose
    // connection is stuck (a libnats thread hung, say) is killed when its lease ends and
    // started again, instead of retrying forever.
    if (heard) {
      ftm::heartbeat();
      backoff = 0;
    }
    if (failed) {
      // No answer (the server is down, a leader is being elected) or refused (a full
      // stream): the same ids again, a little later.
      backoff = std::min(backoff + 5, 50);
      detail::sleep_ms(backoff);
    }
    pass p = step(engine, destinations, stored);
    stored.clear();
    // 3. Send what is not in flight yet. A node whose earlier window is not all
    // answered waits for it first, so that the stream keeps each sender's order
    // unless a message is lost.
    bool await_answers = false;
    bool unsent = false;
    for (const auto& [node, window] : p.windows) {
      std::vector<flight>& f = flights.nodes[node];
      std::size_t k = 0;
      while (k < window.size() && k < f.size() && window[k].n == f[k].n &&
             window[k].epoch == f[k].epoch) {
        ++k;
      }
      if (k != f.size()) {
        f.clear();  // out of step with the outbox (cannot happen): send it all again
        k = 0;
      }
      if (k == window.size()) {
        // A full outbox whose entries are all in flight: only their answers make room.
        if (window.size() == outbox_capacity) await_answers = true;
        continue;
      }
      if (!f.empty()) {
        await_answers = true;
        continue;
      }
      if (!send_entries(c, node, std::span(window).subspan(k), streams, flights)) unsent = true;
    }
    if (unsent) {
      // Not connected (or the stream not made): what went out is in flight; the rest
      // goes when the earlier part is answered or given up.
      backoff = std::min(backoff + 5, 50);
      detail::sleep_ms(backoff);
      continue;
    }
    // 4. Wait: for PubAcks if a window waits for them; else for a port or mirror to
    // change (at most 100 ms, or until the oldest flight's answer is due).
    auto due = std::chrono::steady_clock::time_point::max();
    for (const auto& [node, f] : flights.nodes) {
      if (!f.empty()) due = std::min(due, f.front().deadline);
    }
    if (await_answers) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          due - std::chrono::steady_clock::now());
      if (left.count() > 0) answers = c.collect(left);
      continue;
    }
    if (due == std::chrono::steady_clock::time_point::max())
      ftm::heartbeat();  // nothing in flight: nothing to hear from the server
    const auto slice = std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      due - std::chrono::steady_clock::now()) +
                                      1ms,
                                  1ms, 100ms);
    await_ports(engine, slice);
  }
}

// ---- inbound ---------------------------------------------------------------------

template <watchable_engine E>
void bridge<E>::run_inbound(E& engine) const {
  using namespace std::chrono_literals;
  const std::string stream = detail::stream_of(options_.name);
  const std::string consumer = "ftm-in";
  const std::string prefix = fmt::format("ftm.{}.", options_.name);
  const stable<detail::inbound_state> state = atomically(engine, [](transaction<E>& tx) {
    return ftm::detail::reserved_root<detail::inbound_state>(tx, detail::inbound_root);
  });
  client c(options_.nats);
  // Here and below the lease is renewed only when the server answered (see
  // run_outbound): a stuck connection gets the instance restarted.
  for (std::string why;
       !c.ensure_stream(stream, fmt::format("ftm.{}.>", options_.name), options_.stream, &why);) {
    detail::sleep_ms(20);
  }
  ftm::heartbeat();
  // (Re)start the consumer after the last message known applied: deliveries the
  // previous instance took and never acked come at once, not after their AckWait.
  auto resync = [&] {
    for (;;) {
      bool found = false;
      const std::optional<std::uint64_t> acked = c.ack_floor(stream, consumer, &found);
      if (found && !acked) {
        detail::sleep_ms(20);
        continue;
      }
      ftm::heartbeat();
      const std::uint64_t floor = atomically(engine, [&](transaction<E>& tx) {
        auto s = tx.open(state);
        s->floor = std::max(s->floor, acked.value_or(0));
        ++s->resyncs;
        return s->floor;
      });
      consumer_options co = options_.consumer;
      co.start_sequence = floor + 1;
      std::string why;
      if (c.open_consumer(stream, consumer, co, &why)) return;
      detail::sleep_ms(20);
    }
  };
  resync();
  auto last_resync = std::chrono::steady_clock::now();
  auto last_delivery = last_resync;
  for (;;) {
    const std::optional<delivery> d = c.next(100ms);
    if (!d) {
      // Quiet for a second: check that the consumer still exists. A server killed just
      // after it made the consumer may come back without it (and without the stream),
      // and then nothing would ever be delivered.
      if (std::chrono::steady_clock::now() - last_delivery > 1s) {
        last_delivery = std::chrono::steady_clock::now();
        bool found = false;
        const std::optional<std::uint64_t> acked = c.ack_floor(stream, consumer, &found);
        if (acked || !found) ftm::heartbeat();  // the server answered
        if (!acked && !found) {
          std::string why;
          if (c.ensure_stream(stream, fmt::format("ftm.{}.>", options_.name), options_.stream,
                              &why)) {
            resync();
            last_resync = std::chrono::steady_clock::now();
          }
        }
      }
      continue;
    }
    ftm::heartbeat();
    last_delivery = std::chrono::steady_clock::now();
    enum class outcome { applied, dropped, held, rejected, stale, full };
    const std::optional<detail::message_id> id = detail::parse_id(d->message_id);
    std::string_view rest = d->subject;
    handler const* h = nullptr;
    if (id && rest.starts_with(prefix)) {
      rest.remove_prefix(prefix.size());
      // The handler's key is "p.<name>" or "r.<service>"; a reply's subject goes on.
      const std::size_t first = rest.find('.');
      const std::size_t second =
          first == std::string_view::npos ? first : rest.find('.', first + 1);
      const std::string key(rest.substr(0, second));
      rest = second == std::string_view::npos ? std::string_view{} : rest.substr(second + 1);
      if (auto it = handlers_.find(key); it != handlers_.end()) h = &it->second;
    }
    outcome result = outcome::rejected;
    for (int attempt = 0;; ++attempt) {
      try {
        result = atomically(engine, [&](transaction<E>& tx) {
          auto s = tx.open(state);
          if (!id || h == nullptr) {
            ++s->rejected;
            return outcome::rejected;
          }
          detail::inbound_source* src = nullptr;
          for (auto& e : s->sources) {
            if (detail::name_of(e.name) == id->source || e.name[0] == '\0') {
              src = &e;
              break;
            }
          }
          if (src == nullptr) {
            throw usage_error(fmt::format("ftm::nats: node '{}' hears from more than {} nodes",
                                          options_.name, max_sources));
          }
          if (src->name[0] == '\0') {
            detail::copy_name(src->name, id->source);
            src->epoch = id->epoch;
          }
          if (id->epoch < src->epoch) {
            ++s->stale;
            return outcome::stale;
          }
          if (id->epoch > src->epoch) {
            src->epoch = id->epoch;
            src->hw = 0;
          }
          if (id->n <= src->hw) {
            ++s->dropped;
            return outcome::dropped;
          }
          if (id->n > src->hw + 1) {
            ++s->held;
            return outcome::held;
          }
          if (!(*h)(tx, rest, id->source, d->data)) {
            ++s->rejected;
            return outcome::rejected;
          }
          src->hw = id->n;
          src->stream_seq = d->stream_sequence;
          ++s->applied;
          return outcome::applied;
        });
        break;
      } catch (const port_full&) {
        // The local port is full: wait for room, keeping the order.
        ftm::heartbeat();
        detail::sleep_ms(std::min(1 + attempt, 20));
      } catch (const usage_error& e) {
        if (h == nullptr) throw;
        // A reply port that is not one (a damaged or foreign offset): refuse it.
        std::fprintf(stderr, "ftm::nats: node '%s' rejects %s (%s): %s\n", options_.name.c_str(),
                     d->message_id.c_str(), d->subject.c_str(), e.what());
        atomically(engine, [&](transaction<E>& tx) { ++tx.open(state)->rejected; });
        result = outcome::rejected;
        break;
      }
    }
    if (result == outcome::held) {
      // A predecessor is missing: delivered to an instance that died, or its delivery
      // was lost with a killed server. Start again from the ack floor (at most every
      // 200 ms); a gap that never fills means a lost message upstream.
      if (std::chrono::steady_clock::now() - last_resync > 200ms) {
        if (d->delivered > 3) {
          std::fprintf(stderr,
                       "ftm::nats: node '%s' holds %s (delivered %llu times): a message of "
                       "that sender before it has not arrived; it is never skipped\n",
                       options_.name.c_str(), d->message_id.c_str(),
                       static_cast<unsigned long long>(d->delivered));
        }
        resync();
        last_resync = std::chrono::steady_clock::now();
      }
      continue;
    }
    if (result == outcome::rejected) {
      std::fprintf(stderr, "ftm::nats: node '%s' rejects %s on %s (unknown port or type)\n",
                   options_.name.c_str(), d->message_id.c_str(), d->subject.c_str());
    }
    c.ack(*d);
  }
}

/// What the bridge of the node whose pool `engine` is has recorded.
template <watchable_engine E>
bridge_stats bridge_stats_of(E& engine) {
  return atomically(engine, [](transaction<E>& tx) {
    bridge_stats out;
    const std::uint64_t in = ftm::detail::byte_access::find_root(
        tx, detail::inbound_root, ftm::detail::root_type_of<detail::inbound_state>());
    if (in != 0) {
      const auto s = tx.open_read(stable<detail::inbound_state>(ftm::detail::from_offset, in));
      out.applied = s->applied;
      out.dropped = s->dropped;
      out.held = s->held;
      out.rejected = s->rejected;
      out.stale = s->stale;
      out.resyncs = s->resyncs;
    }
    return out;
  });
}

/// Adds the outbox counters of the destination `node` to `stats`.
template <watchable_engine E>
void add_outbox_stats(E& engine, std::string_view node, bridge_stats& stats) {
  atomically(engine, [&](transaction<E>& tx) {
    const std::uint64_t off = ftm::detail::byte_access::find_root(
        tx, detail::outbox_root(node), ftm::detail::root_type_of<detail::outbox>());
    if (off == 0) return;
    const auto b = tx.open_read(stable<detail::outbox>(ftm::detail::from_offset, off));
    stats.taken += b->taken;
    stats.published += b->published;
    stats.duplicates += b->duplicates;
    stats.pending += b->tail - b->head;
  });
}

}  // namespace ftm::FTM_ABI_NAMESPACE::nats

#endif  // FTM_NATS_BRIDGE_HPP
