#ifndef FTM_SERVER_HPP
#define FTM_SERVER_HPP

/// \file
/// Reliable servers (the paper's sections 3.3 and 4.2). A server receives a request,
/// handles it and sends the reply in one transaction, so a server that dies midway
/// leaves the request at the head of its port for the next server to take: the
/// handler may run more than once, its effects on stable objects and its reply happen
/// exactly once. A client sends the request in one transaction and waits for the
/// reply with its request id in a second.
///
/// A service (`ftm::make_service`) adds idempotency keys: a call may carry a key its
/// caller chose (a client id and a sequence number), and the server records, in the
/// transaction of the handler's effects and the reply, that the key was applied and
/// what the reply was; a call re-sent with the key gets that reply and is not applied
/// again, across restarts of the client, of the server and (on `pmem` at `power`) of
/// the machine. A handler that throws reaches its caller as `ftm::call_failed`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/heartbeat.hpp>
#include <ftm/detail/opaque_keys.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/detail/service_keys.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/port.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <cxxabi.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE {

/// Names one call: the calling process (pid and start time) and a number it chose.
struct request_id {
  std::uint64_t process = 0;
  std::uint64_t sequence = 0;
  friend constexpr bool operator==(request_id, request_id) noexcept = default;
};

/// An opaque idempotency key: 1 to `max_size` (32) bytes the caller chose, such as a
/// UUID or an HTTP `Idempotency-Key` string, and the time the caller made it, by which
/// the service judges its age: a service remembers an opaque key for
/// `service_options::opaque_retention` after that time, and refuses it as too old
/// afterwards. A stable type: a client that must be able to resume keeps the whole key
/// (bytes and stamp) with its call, in its pool, until the reply came, and re-sends the
/// same key. The bytes name one request: never stamp them a second time.
class opaque_key {
 public:
  /// The longest key, in bytes.
  static constexpr std::size_t max_size = detail::opaque_key_max_size;

  /// The empty key, which is not a key (a call with it throws).
  constexpr opaque_key() noexcept = default;

  /// The key of `bytes`, made at `created`. Throws `ftm::invalid_argument` if `bytes` is
  /// empty or longer than `max_size`, or `created` is not after the clock's epoch.
  explicit opaque_key(
      std::span<const std::byte> bytes,
      std::chrono::system_clock::time_point created = std::chrono::system_clock::now())
      : created_(std::chrono::duration_cast<std::chrono::nanoseconds>(created.time_since_epoch())
                     .count()),
        size_(static_cast<std::uint32_t>(bytes.size())) {
    if (bytes.empty() || bytes.size() > max_size) {
      throw invalid_argument(
          fmt::format("ftm::opaque_key: a key of {} bytes; an opaque key has 1 to {} bytes (hash "
                      "a longer one, for example with SHA-256, and keep the hash)",
                      bytes.size(), max_size));
    }
    if (created_ <= 0) {
      throw invalid_argument(
          "ftm::opaque_key: the key's time must be after the system clock's epoch (1970)");
    }
    std::memcpy(bytes_.data(), bytes.data(), bytes.size());
  }

  /// The key of the characters of `text`, made at `created` (throws as above).
  explicit opaque_key(std::string_view text, std::chrono::system_clock::time_point created =
                                                 std::chrono::system_clock::now())
      : opaque_key(std::as_bytes(std::span<const char>(text.data(), text.size())), created) {}

  /// The key's bytes.
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {bytes_.data(), size_}; }
  /// The key's bytes as characters.
  [[nodiscard]] std::string_view text() const noexcept {
    return {reinterpret_cast<const char*>(bytes_.data()), size_};
  }
  /// When the caller made the key.
  [[nodiscard]] std::chrono::system_clock::time_point created() const noexcept {
    return std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::nanoseconds(created_)));
  }
  /// Whether this is the empty key.
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

  friend bool operator==(const opaque_key&, const opaque_key&) noexcept = default;

 private:
  std::int64_t created_ = 0;  // nanoseconds since the system clock's epoch
  std::uint32_t size_ = 0;
  std::uint32_t reserved_ = 0;
  std::array<std::byte, max_size> bytes_{};
};

/// How a call ended, as its reply says.
enum class call_status : std::uint32_t {
  ok = 0,       ///< the handler returned the reply (now, or when the key was first applied)
  failed = 1,   ///< the handler threw on every try: the request was dead-lettered
  too_old = 2,  ///< the key is below its client's window: the service refused it
  refused = 3,  ///< the key's client is new and the service's key table is full
  /// (or the opaque-key table has no room for a new key)
  invalid_key = 4,  ///< an opaque key stamped further ahead of the service's clock than
                    ///< its retention (or sent to a service that keeps no opaque keys)
};

/// Why a call failed: the handler's exception type and message (or the service's
/// refusal), in a stable object of its own that the failed reply names, so that replies
/// stay small. The client that takes the reply frees it.
struct call_error {
  char type[96];      ///< NUL-terminated, cut
  char message[160];  ///< NUL-terminated, cut
};

/// A reply: the id of the request it answers, and the handler's result; a reply of
/// another status than `ok` names a `call_error` instead.
template <class Rep>
struct reply_to_call {
  request_id id;
  Rep body;
  call_status status = call_status::ok;
  std::uint32_t failures = 0;  ///< tries on which the handler threw
  stable<call_error> error{};  ///< why, when `status` is not `ok`
};

/// The port a client receives its replies on.
template <class Rep>
using reply_port = stable_port<reply_to_call<Rep>>;

/// A request: its id, where to send the reply (the paper's `sender_port`), and the
/// argument.
template <class Req, class Rep>
struct call_request {
  request_id id;
  reply_port<Rep> reply_to;
  Req body;
  std::uint32_t flags = 0;     ///< `call_request_keyed`: `id` is the caller's idempotency key
  std::uint32_t failures = 0;  ///< tries on which the handler threw
  opaque_key opaque{};         ///< with `call_request_opaque`: the caller's opaque key
};

/// `call_request::flags`: the id is an idempotency key chosen by the caller.
inline constexpr std::uint32_t call_request_keyed = 1;
/// `call_request::flags`: `call_request::opaque` is an idempotency key chosen by the caller.
inline constexpr std::uint32_t call_request_opaque = 2;

/// The port a server receives `Req` requests on and answers with `Rep`.
template <class Req, class Rep>
using service_port = stable_port<call_request<Req, Rep>>;

/// A fresh id for a call made by this process: unique among all processes of the
/// machine (the process's pid and start time, and a counter).
inline request_id next_request_id() noexcept {
  static std::atomic<std::uint64_t> counter{0};
  return {detail::self_owner_id(), counter.fetch_add(1, std::memory_order_relaxed) + 1};
}

namespace detail {

/// Waits, outside any transaction, until `port` may hold a message; false if
/// `deadline` passed first. A read-only transaction looks at the port and, if it is
/// empty, watches it before it commits, so no send is missed. Only a shortcut: the
/// blocking receive that follows still decides. It spares the common case of a
/// server or a client that arrives before the message the cost of a blocking receive
/// that finds nothing (the `ftm::retry_request` thrown and caught, several
/// microseconds, most of a call between threads).
template <watchable_engine E, class Msg>
bool await_message(E& engine, stable_port<Msg> port,
                   std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const std::optional<watch_token> token =
        atomically(engine, [&](transaction<E>& tx) -> std::optional<watch_token> {
          const auto access = open_port<Msg, false>(tx, port.offset(), port.capacity(), "receive");
          if (access.depth() != 0) return std::nullopt;
          // Last: nothing after it throws, so a registered watch always reaches wait().
          return byte_access::watch(tx, port.offset());
        });
    if (!token) return true;
    if (!engine.wait(std::span<const watch_token>(&*token, 1), deadline)) return false;
    // Woken, but not necessarily for this port: the pool's watchers share one futex
    // word, and a committer's wake may arrive late, after an earlier wait had already
    // seen its change. Looking again costs a read-only transaction; letting the
    // receive find nothing costs a thrown `ftm::retry_request` (0.3 per call between
    // threads in ftm_port_bench before this loop).
  }
}

/// A server's handler: `handler(tx, request)`, returning the reply.
template <class H, class E, class Req, class Rep>
concept valid_handler = requires(H& handler, transaction<E>& tx, const Req& request) {
  { std::invoke(handler, tx, request) } -> std::convertible_to<Rep>;
};

/// The handler rule, stated once for `serve` and `serve_one`, by the part that fails.
template <class H, class E, class Req, class Rep>
constexpr bool check_handler() {
  if constexpr (std::is_invocable_v<H&, transaction<E>&, const Req&>) {
    static_assert(std::is_convertible_v<std::invoke_result_t<H&, transaction<E>&, const Req&>, Rep>,
                  "ftm::serve: the handler must return the reply type of the service port "
                  "(ftm::service_port<Req, Rep>: return a Rep, or a value convertible to it)");
  } else if constexpr (std::is_invocable_v<H&, const Req&>) {
    static_assert(detail::always_false<H>,
                  "ftm::serve: the handler must take the transaction first: write it as "
                  "handler(ftm::transaction<E>& tx, const Req& request), and do its work on "
                  "stable objects in tx, so that it commits with the reply");
  } else {
    static_assert(detail::always_false<H>,
                  "ftm::serve: the handler must be callable as handler(tx, request), with tx "
                  "an ftm::transaction<E>& and request the service port's request type Req "
                  "(ftm::service_port<Req, Rep>), and return the reply type Rep");
  }
  return true;
}

/// `now + timeout`, or the end of time if that overflows.
inline std::chrono::steady_clock::time_point deadline_in(
    std::chrono::steady_clock::duration timeout) {
  const auto now = std::chrono::steady_clock::now();
  return timeout >= std::chrono::steady_clock::time_point::max() - now
             ? std::chrono::steady_clock::time_point::max()
             : now + timeout;
}

}  // namespace detail

/// What a service is made with (`ftm::make_service`).
struct service_options {
  std::uint32_t capacity = 64;  ///< requests its port holds at most
  /// Sequence numbers remembered per client: a key (client, s) is answered from the
  /// record while s > (the client's highest applied sequence number) - window.
  std::uint32_t window = 1024;
  std::uint32_t max_clients = 256;  ///< clients whose keys are remembered at once
  std::uint32_t max_tries = 3;      ///< handler failures before a request is dead-lettered
  std::uint32_t dead_letter_capacity = 64;
  when_full on_full = when_full::fail;  ///< what a call to a full request port does
  /// Opaque keys (`ftm::opaque_key`) remembered at once, 0 (the default) for none: the
  /// service then refuses calls with opaque keys. The table is made with the service, in
  /// blocks of 16 keys (one object each, plus one: they count toward the engine's
  /// `max_objects_per_transaction`), so its memory is fixed. A new key is refused with
  /// `ftm::capacity_exceeded` when both blocks its hash picks are full of keys inside
  /// their retention, from about 85% full; no key inside its retention is ever evicted.
  std::uint32_t max_opaque_keys = 0;
  /// How long after its stamp an opaque key is remembered: a call or `ftm::outcome_of`
  /// with an older key gets `ftm::key_too_old` (`key_outcome::too_old`).
  std::chrono::nanoseconds opaque_retention = std::chrono::hours{1};
};

/// A service: its request port, the port its failed requests go to, and the key table
/// its server records idempotency keys in. A stable type: keep it in a root. Made by
/// `ftm::make_service`.
template <class Req, class Rep>
struct service {
  service_port<Req, Rep> requests;
  service_port<Req, Rep> dead_letters;
  std::uint64_t keys = 0;  ///< the key table's offset
  std::uint32_t window = 0;
  std::uint32_t max_clients = 0;
  std::uint32_t max_tries = 0;
  std::uint32_t opaque_blocks = 0;  ///< blocks of the opaque-key table
  std::uint64_t opaque_keys = 0;    ///< the opaque-key table's offset, 0: none
};

/// An idempotency key, chosen by the caller: a client id (not 0, not ~0) that no
/// other client of the service uses, and a sequence number (from 1) that the client
/// never uses for another request. Give a client's calls increasing numbers: the
/// service remembers, per client, the last `service_options::window` of them.
struct call_key {
  std::uint64_t client = 0;
  std::uint64_t sequence = 0;
  friend constexpr bool operator==(call_key, call_key) noexcept = default;
};

/// Where a key stands at a service (`ftm::outcome_of`).
enum class key_outcome : std::uint32_t {
  not_applied = 0,  ///< not applied (yet: it may wait in the port); re-sending it is safe
  applied = 1,      ///< applied; `call_outcome::reply` is the reply it got
  too_old = 2,      ///< below the client's window, or an opaque key older than the
                    ///< retention: the service no longer knows
};

/// What `ftm::outcome_of` found.
template <class Rep>
struct call_outcome {
  key_outcome outcome = key_outcome::not_applied;
  Rep reply{};  ///< the recorded reply, when `applied`
};

/// Makes a service in `tx`: a request port that never dead-letters a request for its
/// deliveries alone (servers killed while handling it do not count), a dead-letter
/// port, and a key table.
template <class Req, class Rep, engine E>
service<Req, Rep> make_service(transaction<E>& tx, service_options options = {}) {
  static_assert(detail::check_message_type<Rep>());
  if (options.window == 0 || options.window > (std::uint32_t{1} << 20) ||
      options.max_clients == 0 || options.max_clients > (std::uint32_t{1} << 20) ||
      options.max_tries == 0) {
    throw invalid_argument(fmt::format(
        "ftm::make_service: window {} and max_clients {} must be 1 to 1048576, max_tries {} at "
        "least 1",
        options.window, options.max_clients, options.max_tries));
  }
  using days = std::chrono::duration<std::int64_t, std::ratio<86400>>;
  if (options.max_opaque_keys > (std::uint32_t{1} << 20) ||
      (options.max_opaque_keys != 0 &&
       (options.opaque_retention <= options.opaque_retention.zero() ||
        options.opaque_retention > days{36500}))) {
    throw invalid_argument(fmt::format(
        "ftm::make_service: max_opaque_keys {} must be at most 1048576, and opaque_retention "
        "({} ns) more than 0 and at most a century",
        options.max_opaque_keys, options.opaque_retention.count()));
  }
  service<Req, Rep> s;
  s.dead_letters = make_port<call_request<Req, Rep>>(
      tx, port_options{.capacity = options.dead_letter_capacity, .max_deliveries = 0});
  s.requests = make_port<call_request<Req, Rep>>(
      tx,
      port_options{.capacity = options.capacity, .max_deliveries = 0, .on_full = options.on_full});
  s.keys =
      detail::make_key_table(tx, options.window, options.max_clients, options.max_tries,
                             static_cast<std::uint32_t>(sizeof(Rep)), layout_fingerprint<Rep>());
  s.window = options.window;
  s.max_clients = options.max_clients;
  s.max_tries = options.max_tries;
  if (options.max_opaque_keys != 0) {
    const detail::opaque_table_ref t = detail::make_opaque_table(
        tx, options.max_opaque_keys, options.opaque_retention.count(),
        static_cast<std::uint32_t>(sizeof(Rep)), layout_fingerprint<Rep>());
    s.opaque_keys = t.offset;
    s.opaque_blocks = t.blocks;
  }
  return s;
}

namespace detail {

/// What a server does besides calling its handler: a service's keys and dead letters,
/// or nothing of the kind for a bare service port (one try, no keys).
template <class Req, class Rep>
struct serving {
  service_port<Req, Rep> requests;
  service_port<Req, Rep> dead_letters;
  key_table_ref keys;
  std::uint32_t max_tries = 1;
  opaque_table_ref opaque;
};

template <class Req, class Rep>
serving<Req, Rep> serving_of(service_port<Req, Rep> port) {
  return {port, {}, {}, 1, {}};
}
template <class Req, class Rep>
serving<Req, Rep> serving_of(const service<Req, Rep>& s) {
  return {s.requests,
          s.dead_letters,
          {s.keys, s.window, s.max_clients},
          s.max_tries,
          {s.opaque_keys, s.opaque_blocks}};
}

/// An opaque key for messages: its text in quotes if it is printable, else in hex.
inline std::string describe_key(const opaque_key& key) {
  const std::string_view t = key.text();
  if (std::all_of(t.begin(), t.end(),
                  [](char c) { return std::isprint(static_cast<unsigned char>(c)) != 0; }))
    return fmt::format("\"{}\"", t);
  std::string hex;
  for (const std::byte b : key.bytes())
    hex += fmt::format("{:02x}", static_cast<unsigned>(b));
  return hex;
}

/// The table's view of `key`.
inline opaque_bytes opaque_view(const opaque_key& key) {
  return {key.bytes(),
          std::chrono::duration_cast<std::chrono::nanoseconds>(key.created().time_since_epoch())
              .count()};
}

/// The handler's exception, kept for the transaction that answers its request.
struct handler_failure {
  bool caught = false;
  request_id id;
  char type[96] = {};
  char message[160] = {};
};

template <std::size_t N>
void copy_text(char (&to)[N], std::string_view text) {
  const std::size_t n = std::min(text.size(), N - 1);
  std::memcpy(to, text.data(), n);
  to[n] = '\0';
}

inline std::string demangled(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d != nullptr ? d : name;
  std::free(d);  // NOLINT(cppcoreguidelines-no-malloc): __cxa_demangle's buffer
  return out;
}

/// Notes the handler's exception (not a lost conflict, which `atomically` retries).
inline void note_failure(handler_failure* f, request_id id) {
  if (f == nullptr) return;
  f->caught = true;
  f->id = id;
  try {
    throw;
  } catch (const std::exception& e) {
    copy_text(f->type, demangled(typeid(e).name()));
    copy_text(f->message, e.what());
  } catch (...) {
    copy_text(f->type, "(not a std::exception)");
    copy_text(f->message, "");
  }
}

template <engine E, class Rep>
void reply_error(transaction<E>& tx, reply_to_call<Rep>& r, call_status status,
                 std::string_view type, std::string_view message) {
  call_error e{};
  copy_text(e.type, type);
  copy_text(e.message, message);
  r.status = status;
  r.error = tx.create(e);
}

/// The work of `ftm::serve_one` once it holds a request: answers a key applied before
/// with its recorded reply, or calls the handler, records the key and sends what the
/// handler returns to the request's reply port, in `tx`.
template <engine E, class Req, class Rep, class Handler>
request_id answer(transaction<E>& tx, const call_request<Req, Rep>& request, Handler& handler,
                  const serving<Req, Rep>& how, handler_failure* failure) {
  reply_to_call<Rep> reply{};
  reply.id = request.id;
  reply.failures = request.failures;
  const bool keyed = (request.flags & call_request_keyed) != 0 && how.keys.offset != 0;
  if (keyed) {
    alignas(Rep) std::array<std::byte, sizeof(Rep)> recorded{};
    const key_state state = find_key(tx, how.keys, request.id.process, request.id.sequence,
                                     recorded, layout_fingerprint<Rep>());
    if (state == key_state::applied) {
      std::memcpy(&reply.body, recorded.data(), sizeof(Rep));
      send(tx, request.reply_to, reply);
      return request.id;
    }
    if (state == key_state::too_old) {
      reply_error(tx, reply, call_status::too_old, "ftm::key_too_old",
                  fmt::format("key (client {}, #{}) is older than the service's window of {} "
                              "sequence numbers per client: whether it was applied is forgotten",
                              request.id.process, request.id.sequence, how.keys.window));
      send(tx, request.reply_to, reply);
      return request.id;
    }
    if (!has_room_for(tx, how.keys, request.id.process, sizeof(Rep), layout_fingerprint<Rep>())) {
      reply_error(tx, reply, call_status::refused, "ftm::capacity_exceeded",
                  fmt::format("the service remembers the keys of {} clients, its most; client {} "
                              "is new",
                              how.keys.max_clients, request.id.process));
      send(tx, request.reply_to, reply);
      return request.id;
    }
  }
  // An opaque key: looked up by its bytes, judged old by its stamp and the system clock.
  const bool opaque = (request.flags & call_request_opaque) != 0 && how.keys.offset != 0;
  std::optional<std::pair<std::uint32_t, std::uint32_t>> room;
  if (opaque) {
    const auto refuse = [&](call_status status, std::string_view type, std::string message) {
      reply_error(tx, reply, status, type, message);
      send(tx, request.reply_to, reply);
      return request.id;
    };
    if (how.opaque.offset == 0) {
      return refuse(call_status::invalid_key, "ftm::invalid_argument",
                    "the service keeps no opaque keys (make it with "
                    "service_options::max_opaque_keys above 0)");
    }
    alignas(Rep) std::array<std::byte, sizeof(Rep)> recorded{};
    const std::int64_t now = wall_now();
    const opaque_bytes key = opaque_view(request.opaque);
    const opaque_lookup found =
        find_opaque(tx, how.opaque, key, now, recorded, layout_fingerprint<Rep>());
    if (found.state == key_state::applied) {
      std::memcpy(&reply.body, recorded.data(), sizeof(Rep));
      send(tx, request.reply_to, reply);
      return request.id;
    }
    const double retention_s = static_cast<double>(found.retention) / 1e9;
    if (found.state == key_state::too_old) {
      return refuse(call_status::too_old, "ftm::key_too_old",
                    fmt::format("opaque key made {:.3f} s ago, past the retention of {:.3f} s: "
                                "whether it was applied is forgotten; key {}",
                                static_cast<double>(now - key.created) / 1e9, retention_s,
                                describe_key(request.opaque)));
    }
    if (key.created - now > found.retention) {
      return refuse(call_status::invalid_key, "ftm::invalid_argument",
                    fmt::format("opaque key stamped {:.3f} s ahead of the service's clock, more "
                                "than its retention of {:.3f} s; key {}",
                                static_cast<double>(key.created - now) / 1e9, retention_s,
                                describe_key(request.opaque)));
    }
    room = found.room;
    if (!room) {
      return refuse(call_status::refused, "ftm::capacity_exceeded",
                    // A call_error's message holds 159 characters: the fix comes first.
                    fmt::format("opaque-key table full (raise service_options::max_opaque_keys "
                                "or shorten opaque_retention, now {:.0f} s); key {}",
                                retention_s, describe_key(request.opaque)));
    }
  }
  try {
    reply.body = Rep(std::invoke(handler, tx, request.body));
  } catch (const conflict&) {
    throw;
  } catch (...) {
    note_failure(failure, request.id);
    throw;
  }
  if (keyed) {
    record_key(tx, how.keys, request.id.process, request.id.sequence,
               std::as_bytes(std::span<const Rep, 1>(&reply.body, 1)), layout_fingerprint<Rep>());
  }
  if (room) {
    record_opaque(tx, how.opaque, opaque_view(request.opaque), *room,
                  std::as_bytes(std::span<const Rep, 1>(&reply.body, 1)),
                  layout_fingerprint<Rep>());
  }
  send(tx, request.reply_to, reply);
  return request.id;
}

/// After the handler threw on `failure.id` (its transaction undone, the request back at
/// the head of the port): counts the failure in a transaction of its own. Below the
/// service's tries the request goes to the tail of the port for another try; at them it
/// goes to the dead-letter port (a bare service port has none: it is dropped) and its
/// caller gets a `failed` reply with the exception's type and message. Nothing if
/// another server took the request meanwhile. True if the caller was answered.
template <watchable_engine E, class Req, class Rep>
bool settle_failure(E& engine, const serving<Req, Rep>& how, const handler_failure& failure) {
  using msg = call_request<Req, Rep>;
  return atomically(engine, [&](transaction<E>& tx) {
    auto access = open_port<msg, true>(tx, how.requests.offset(), how.requests.capacity(), "serve");
    const port_header& h = access.header();
    if (h.head == h.tail) return false;
    if (h.max_deliveries != 0 && access.slot(h.head).deliveries >= h.max_deliveries) return false;
    if (!(load_message<msg>(access.payload(h.head)).id == failure.id)) return false;
    std::optional<msg> m = take<msg>(access);
    ++m->failures;
    if (m->failures < how.max_tries) {
      append<msg>(access, *m);  // the take made room
      return false;
    }
    reply_to_call<Rep> reply{};
    reply.id = m->id;
    reply.failures = m->failures;
    reply_error(tx, reply, call_status::failed, failure.type, failure.message);
    if (how.dead_letters) send(tx, how.dead_letters, *m);
    send(tx, m->reply_to, reply);
    return true;
  });
}

}  // namespace detail

/// Handles one request in `tx`: receives it (waiting for one), calls
/// `handler(tx, request)` and sends what it returns to the request's reply port, all
/// in `tx`. Only inside `ftm::atomically`, like `ftm::receive`. Returns the request's
/// id. A handler's exception leaves `serve_one` (and aborts `tx`).
template <watchable_engine E, class Req, class Rep, class Handler>
request_id serve_one(transaction<E>& tx, service_port<Req, Rep> port, Handler& handler) {
  static_assert(detail::check_handler<Handler, E, Req, Rep>());
  if constexpr (detail::valid_handler<Handler, E, Req, Rep>) {
    return detail::answer(tx, receive(tx, port), handler, detail::serving_of(port), nullptr);
  } else {
    return {};
  }
}

/// `ftm::serve_one` on a service: a request with a key applied before is answered with
/// its recorded reply, without the handler; a new key is recorded with the reply.
template <watchable_engine E, class Req, class Rep, class Handler>
request_id serve_one(transaction<E>& tx, const service<Req, Rep>& svc, Handler& handler) {
  static_assert(detail::check_handler<Handler, E, Req, Rep>());
  if constexpr (detail::valid_handler<Handler, E, Req, Rep>) {
    return detail::answer(tx, receive(tx, svc.requests), handler, detail::serving_of(svc), nullptr);
  } else {
    return {};
  }
}

namespace detail {
/// The most requests `ftm::serve` answers in one transaction.
inline constexpr std::size_t serve_batch = 16;

/// `ftm::serve_one` that waits at most `timeout` (as `ftm::receive_for`) for a request,
/// then answers the requests already waiting behind it, up to `batch` in all, in the
/// same transaction: a pipelining client's calls cost one commit, not one each. The
/// step of `ftm::serve`, which must look up from its wait now and then. Returns how
/// many it answered, 0 if none came in time.
template <watchable_engine E, class Req, class Rep, class Handler, class R, class P>
std::size_t serve_some_for(transaction<E>& tx, const serving<Req, Rep>& how, Handler& handler,
                           std::chrono::duration<R, P> timeout, std::size_t batch,
                           handler_failure* failure) {
  const std::optional<call_request<Req, Rep>> request = receive_for(tx, how.requests, timeout);
  if (!request) return 0;
  answer(tx, *request, handler, how, failure);
  std::size_t answered = 1;
  for (; answered < batch; ++answered) {
    const std::optional<call_request<Req, Rep>> next = try_receive(tx, how.requests);
    if (!next) break;
    answer(tx, *next, handler, how, failure);
  }
  return answered;
}

/// The loop of `ftm::serve`. After a handler's failure it answers one request per
/// transaction until it has settled the failed one (the failure undid the whole batch,
/// and only a failed request at the head of the port can be settled).
template <watchable_engine E, class Req, class Rep, class Handler>
std::uint64_t serve_loop(E& engine, const serving<Req, Rep>& how, Handler& handler,
                         std::stop_token stop) {
  using namespace std::chrono_literals;
  std::uint64_t served = 0;
  std::size_t careful = 0;  // transactions still to run with one request each
  while (!stop.stop_requested()) {
    renew_lease();
    // Waits in slices, to notice a stop request and to renew the lease.
    const auto slice = renewal_slice(100ms);
    if (!await_message(engine, how.requests, deadline_in(slice))) continue;
    handler_failure failure;
    try {
      const std::size_t batch = careful != 0 ? 1 : serve_batch;
      served += atomically(engine, [&](transaction<E>& tx) {
        failure.caught = false;
        return serve_some_for(tx, how, handler, slice, batch, &failure);
      });
      if (careful != 0) --careful;
    } catch (...) {
      if (!failure.caught) throw;  // not the handler's: the server cannot go on
      if (settle_failure(engine, how, failure)) ++served;
      careful = serve_batch;
    }
  }
  return served;
}
}  // namespace detail

/// The paper's server loop: handles the requests arriving on `port`, each in one
/// transaction (receive, `handler(tx, request)`, reply), until `stop` is requested.
/// A handler that throws aborts its transaction, and its caller gets a `failed` reply
/// carrying the exception's type and message (`ftm::call` throws `ftm::call_failed`);
/// the request is consumed. Other exceptions (a port's) leave `serve`. Returns how many
/// requests it answered.
///
/// Run as a supervised task with a heartbeat lease, `serve` renews the lease while
/// it waits for requests (at least every quarter lease), so an idle server is not
/// taken for a hung one; a handler that runs longer than the lease must call
/// `ftm::heartbeat()` itself.
template <watchable_engine E, class Req, class Rep, class Handler>
std::uint64_t serve(E& engine, service_port<Req, Rep> port, Handler handler,
                    std::stop_token stop = {}) {
  static_assert(detail::check_handler<Handler, E, Req, Rep>());
  if constexpr (detail::valid_handler<Handler, E, Req, Rep>) {
    return detail::serve_loop(engine, detail::serving_of(port), handler, stop);
  } else {
    return 0;
  }
}

/// `ftm::serve` on a service: keys are recorded with the handler's effects and reply,
/// and a key applied before is answered from the record; a request whose handler
/// throws is tried again (at the tail of the port) until it has failed
/// `service::max_tries` times, then dead-lettered, and its caller gets a `failed` reply.
template <watchable_engine E, class Req, class Rep, class Handler>
std::uint64_t serve(E& engine, const service<Req, Rep>& svc, Handler handler,
                    std::stop_token stop = {}) {
  static_assert(detail::check_handler<Handler, E, Req, Rep>());
  if constexpr (detail::valid_handler<Handler, E, Req, Rep>) {
    return detail::serve_loop(engine, detail::serving_of(svc), handler, stop);
  } else {
    return 0;
  }
}

namespace detail {

/// A reply taken from its port, with the text of its `call_error` (read and freed in
/// the transaction that took the reply).
template <class Rep>
struct taken_reply {
  reply_to_call<Rep> reply;
  std::string type;
  std::string message;
};

template <std::size_t N>
std::string bounded_text(const char (&text)[N]) {
  return {text, ::strnlen(text, N)};
}

/// Takes `r` in `tx`: reads and frees its error object, if it has one.
template <engine E, class Rep>
taken_reply<Rep> take_reply(transaction<E>& tx, const reply_to_call<Rep>& r) {
  taken_reply<Rep> t{r, {}, {}};
  if (r.error) {
    {
      const auto e = tx.open_read(r.error);
      t.type = bounded_text(e->type);
      t.message = bounded_text(e->message);
    }
    tx.destroy(r.error);
  }
  return t;
}

/// Discards `r` in `tx` (a reply nobody waits for): frees its error object.
template <engine E, class Rep>
void drop_reply(transaction<E>& tx, const reply_to_call<Rep>& r) {
  if (r.error) tx.destroy(r.error);
}

/// The reply's body, or the exception its status stands for.
template <class Rep>
Rep reply_value(const taken_reply<Rep>& t) {
  const reply_to_call<Rep>& r = t.reply;
  const std::string& type = t.type;
  const std::string& message = t.message;
  switch (r.status) {
    case call_status::ok: return r.body;
    case call_status::failed:
      throw call_failed(
          fmt::format("the handler threw {} on each of {} tries: {}", type, r.failures, message));
    case call_status::too_old: throw key_too_old(message);
    case call_status::refused: throw capacity_exceeded(message);
    case call_status::invalid_key: throw invalid_argument(message);
  }
  throw call_failed(
      fmt::format("a reply of unknown status {}", static_cast<std::uint32_t>(r.status)));
}

inline request_id key_id(call_key key, std::string_view what) {
  if (key.client == 0 || key.client == retired_client || key.sequence == 0) {
    throw invalid_argument(fmt::format(
        "ftm::{}: key (client {}, #{}) is not a key: the client id must not be 0 or ~0, the "
        "sequence number not 0",
        what, key.client, key.sequence));
  }
  return {key.client, key.sequence};
}

/// Checks that `key` may be sent to `svc`.
template <class Req, class Rep>
const opaque_key& checked_key(const service<Req, Rep>& svc, const opaque_key& key,
                              std::string_view what) {
  if (key.empty()) {
    throw invalid_argument(
        fmt::format("ftm::{}: the empty opaque key is not a key (make one from 1 to {} bytes)",
                    what, opaque_key::max_size));
  }
  if (svc.opaque_keys == 0) {
    throw usage_error(
        fmt::format("ftm::{}: the service keeps no opaque keys (make it with "
                    "service_options::max_opaque_keys above 0)",
                    what));
  }
  return key;
}

/// A request with an opaque key (and a fresh id, to match its reply).
template <class Req, class Rep>
call_request<Req, Rep> opaque_request(const service<Req, Rep>& svc, reply_port<Rep> replies,
                                      const opaque_key& key, const Req& body,
                                      std::string_view what) {
  return {next_request_id(), replies, body, call_request_opaque, 0, checked_key(svc, key, what)};
}

/// Sends the request and waits (until `deadline`) for the reply with its id, discarding
/// replies to other ids on the way; nothing if none came in time.
template <watchable_engine E, class Req, class Rep>
std::optional<taken_reply<Rep>> round_trip(E& engine, const call_request<Req, Rep>& request,
                                           service_port<Req, Rep> server,
                                           std::chrono::steady_clock::duration wait) {
  atomically(engine, [&](transaction<E>& tx) { send(tx, server, request); });
  const auto deadline = deadline_in(wait);
  await_message(engine, request.reply_to, deadline);
  // What is left of the timeout for the receive (the whole of it at the end of time).
  const auto left = deadline == std::chrono::steady_clock::time_point::max()
                        ? wait
                        : std::max(deadline - std::chrono::steady_clock::now(),
                                   std::chrono::steady_clock::duration::zero());
  return atomically(engine, [&](transaction<E>& tx) -> std::optional<taken_reply<Rep>> {
    for (;;) {
      auto r = receive_for(tx, request.reply_to, left);
      if (!r) return std::nullopt;
      if (r->id == request.id) return take_reply(tx, *r);
      drop_reply(tx, *r);
    }
  });
}

}  // namespace detail

/// The client's side of a call, as in the paper's section 4.2: one transaction sends
/// the request (with a fresh id and the client's reply port), a second waits for the
/// reply with that id and takes it. Replies to other ids found on the way (left by
/// an earlier call that gave up) are discarded. Blocks until the reply comes;
/// `call_for` gives up after a timeout. Throws `ftm::call_failed` if the handler threw.
template <watchable_engine E, class Req, class Rep>
Rep call(E& engine, service_port<Req, Rep> server, reply_port<Rep> replies, const Req& body) {
  const call_request<Req, Rep> request{next_request_id(), replies, body};
  return detail::reply_value(
      *detail::round_trip(engine, request, server, std::chrono::steady_clock::duration::max()));
}

/// `ftm::call` that waits at most `timeout` for the reply; nothing if none came (the
/// request may still be handled later: its reply is then discarded by a later call
/// on the same reply port).
template <watchable_engine E, class Req, class Rep, class R, class P>
std::optional<Rep> call_for(E& engine, service_port<Req, Rep> server, reply_port<Rep> replies,
                            const Req& body, std::chrono::duration<R, P> timeout) {
  const call_request<Req, Rep> request{next_request_id(), replies, body};
  const auto r =
      detail::round_trip(engine, request, server,
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  if (!r) return std::nullopt;
  return detail::reply_value(*r);
}

/// `ftm::call` on a service, without a key: exactly once while the client lives.
template <watchable_engine E, class Req, class Rep>
Rep call(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies, const Req& body) {
  return call(engine, svc.requests, replies, body);
}

/// A call with an idempotency key: applied at most once, however often it is sent, and
/// answered each time with the reply it got when it was applied. A client that died
/// during a call sends it again with the same key (and body) once it restarts, and
/// gets the original reply. Throws `ftm::key_too_old` if the key is below its client's
/// window, `ftm::call_failed` if the handler threw on every try, and
/// `ftm::capacity_exceeded` if the service remembers the most clients it can.
template <watchable_engine E, class Req, class Rep>
Rep call(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies, call_key key,
         const Req& body) {
  const call_request<Req, Rep> request{detail::key_id(key, "call"), replies, body,
                                       call_request_keyed};
  return detail::reply_value(*detail::round_trip(engine, request, svc.requests,
                                                 std::chrono::steady_clock::duration::max()));
}

/// The keyed `ftm::call` that waits at most `timeout`; nothing if no reply came (send it
/// again with the same key, or ask `ftm::outcome_of`).
template <watchable_engine E, class Req, class Rep, class R, class P>
std::optional<Rep> call_for(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies,
                            call_key key, const Req& body, std::chrono::duration<R, P> timeout) {
  const call_request<Req, Rep> request{detail::key_id(key, "call_for"), replies, body,
                                       call_request_keyed};
  const auto r =
      detail::round_trip(engine, request, svc.requests,
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  if (!r) return std::nullopt;
  return detail::reply_value(*r);
}

/// A call with an opaque key: as the keyed `ftm::call`, for as long as the service
/// remembers opaque keys (`service_options::opaque_retention` from the key's stamp).
/// Throws `ftm::key_too_old` for an older key, `ftm::capacity_exceeded` if the service's
/// opaque-key table has no room for a new key, `ftm::invalid_argument` for an empty key
/// or one stamped further ahead of the service's clock than the retention, and
/// `ftm::usage_error` if the service keeps no opaque keys.
template <watchable_engine E, class Req, class Rep>
Rep call(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies, const opaque_key& key,
         const Req& body) {
  const auto request = detail::opaque_request(svc, replies, key, body, "call");
  return detail::reply_value(*detail::round_trip(engine, request, svc.requests,
                                                 std::chrono::steady_clock::duration::max()));
}

/// The `ftm::call` with an opaque key that waits at most `timeout`; nothing if no reply
/// came (send it again with the same key, or ask `ftm::outcome_of`).
template <watchable_engine E, class Req, class Rep, class R, class P>
std::optional<Rep> call_for(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies,
                            const opaque_key& key, const Req& body,
                            std::chrono::duration<R, P> timeout) {
  const auto request = detail::opaque_request(svc, replies, key, body, "call_for");
  const auto r =
      detail::round_trip(engine, request, svc.requests,
                         std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout));
  if (!r) return std::nullopt;
  return detail::reply_value(*r);
}

namespace detail {
/// What a key table's lookup found, as `ftm::outcome_of` reports it.
template <class Rep>
call_outcome<Rep> outcome_from(key_state state,
                               const std::array<std::byte, sizeof(Rep)>& recorded) {
  call_outcome<Rep> out;
  switch (state) {
    case key_state::applied:
      out.outcome = key_outcome::applied;
      std::memcpy(&out.reply, recorded.data(), sizeof(Rep));
      break;
    case key_state::too_old: out.outcome = key_outcome::too_old; break;
    case key_state::not_applied: out.outcome = key_outcome::not_applied; break;
  }
  return out;
}
}  // namespace detail

/// Where `key` stands at the service, as of `tx`: applied (with its reply), not applied
/// (maybe still waiting in the port: re-sending it is safe), or too old to know.
template <engine E, class Req, class Rep>
call_outcome<Rep> outcome_of(transaction<E>& tx, const service<Req, Rep>& svc, call_key key) {
  const request_id id = detail::key_id(key, "outcome_of");
  alignas(Rep) std::array<std::byte, sizeof(Rep)> recorded{};
  const detail::key_state state =
      detail::find_key(tx, {svc.keys, svc.window, svc.max_clients}, id.process, id.sequence,
                       recorded, layout_fingerprint<Rep>());
  return detail::outcome_from<Rep>(state, recorded);
}

/// `ftm::outcome_of` in a transaction of its own.
template <engine E, class Req, class Rep>
call_outcome<Rep> outcome_of(E& engine, const service<Req, Rep>& svc, call_key key) {
  return atomically(engine, [&](transaction<E>& tx) { return outcome_of(tx, svc, key); });
}

/// Where an opaque key stands at the service, as of `tx` and the system clock now:
/// applied (with its reply), not applied (re-sending it is safe), or too old (older than
/// the retention, or forgotten). Throws as the opaque `ftm::call` does for a key it
/// would not send.
template <engine E, class Req, class Rep>
call_outcome<Rep> outcome_of(transaction<E>& tx, const service<Req, Rep>& svc,
                             const opaque_key& key) {
  detail::checked_key(svc, key, "outcome_of");
  alignas(Rep) std::array<std::byte, sizeof(Rep)> recorded{};
  const detail::opaque_lookup found =
      detail::find_opaque(tx, {svc.opaque_keys, svc.opaque_blocks}, detail::opaque_view(key),
                          detail::wall_now(), recorded, layout_fingerprint<Rep>());
  return detail::outcome_from<Rep>(found.state, recorded);
}

/// `ftm::outcome_of` of an opaque key in a transaction of its own.
template <engine E, class Req, class Rep>
call_outcome<Rep> outcome_of(E& engine, const service<Req, Rep>& svc, const opaque_key& key) {
  return atomically(engine, [&](transaction<E>& tx) { return outcome_of(tx, svc, key); });
}

/// Forgets, in `tx`, the keys of `client` (one that will call no more), making room for
/// a new client; a later key of `client` counts as new. False if none were remembered.
template <engine E, class Req, class Rep>
bool forget_client(transaction<E>& tx, const service<Req, Rep>& svc, std::uint64_t client) {
  return detail::forget_key_client(tx, {svc.keys, svc.window, svc.max_clients}, client,
                                   static_cast<std::uint32_t>(sizeof(Rep)),
                                   layout_fingerprint<Rep>());
}

/// Pipelined calls: a client sends many requests before it waits, and takes their
/// replies as they come, matched by id (a reply to an id not in flight, left by an
/// earlier client on the same reply port, is discarded). `submit_all` sends a batch in
/// one transaction; `wait` takes every reply that has arrived in one transaction. At
/// most the reply port's capacity of calls may be in flight: a server that finds a
/// reply port full fails. One `pipeline` per reply port, used by one thread.
template <watchable_engine E, class Req, class Rep>
class pipeline {
 public:
  pipeline(E& engine, service_port<Req, Rep> server, reply_port<Rep> replies)
      : engine_(&engine), server_(server), replies_(replies) {}
  pipeline(E& engine, const service<Req, Rep>& svc, reply_port<Rep> replies)
      : engine_(&engine), server_(svc.requests), replies_(replies), service_(svc) {}

  /// Sends a call without a key; returns its id, for `wait`.
  request_id submit(const Req& body) { return submit_all(std::span<const Req>(&body, 1)).front(); }

  /// Sends a call with an idempotency key (to a service; see the keyed `ftm::call`).
  request_id submit(call_key key, const Req& body) {
    const call_request<Req, Rep> r{detail::key_id(key, "pipeline::submit"), replies_, body,
                                   call_request_keyed};
    send_all(std::span<const call_request<Req, Rep>>(&r, 1));
    return r.id;
  }

  /// Sends every body, without keys, in one transaction; returns their ids in order.
  std::vector<request_id> submit_all(std::span<const Req> bodies) {
    std::vector<call_request<Req, Rep>> requests;
    requests.reserve(bodies.size());
    for (const Req& b : bodies)
      requests.push_back({next_request_id(), replies_, b});
    send_all(requests);
    std::vector<request_id> ids;
    ids.reserve(requests.size());
    for (const auto& r : requests)
      ids.push_back(r.id);
    return ids;
  }

  /// Sends a call with an opaque key (to a service; see the opaque `ftm::call`).
  request_id submit(const opaque_key& key, const Req& body) {
    const call_request<Req, Rep> r = opaque_request(key, body, "pipeline::submit");
    send_all(std::span<const call_request<Req, Rep>>(&r, 1));
    return r.id;
  }

  /// Sends every (opaque key, body) pair in one transaction; returns their ids in order.
  std::vector<request_id> submit_all(std::span<const std::pair<opaque_key, Req>> calls) {
    std::vector<call_request<Req, Rep>> requests;
    requests.reserve(calls.size());
    for (const auto& [key, body] : calls)
      requests.push_back(opaque_request(key, body, "pipeline::submit_all"));
    send_all(requests);
    std::vector<request_id> ids;
    ids.reserve(requests.size());
    for (const auto& r : requests)
      ids.push_back(r.id);
    return ids;
  }

  /// Sends every (key, body) pair in one transaction; returns their ids in order.
  std::vector<request_id> submit_all(std::span<const std::pair<call_key, Req>> calls) {
    std::vector<call_request<Req, Rep>> requests;
    requests.reserve(calls.size());
    for (const auto& [key, body] : calls)
      requests.push_back(
          {detail::key_id(key, "pipeline::submit_all"), replies_, body, call_request_keyed});
    send_all(requests);
    std::vector<request_id> ids;
    ids.reserve(requests.size());
    for (const auto& r : requests)
      ids.push_back(r.id);
    return ids;
  }

  /// The reply to call `id`, waiting for it; throws as `ftm::call` does.
  Rep wait(request_id id) { return *wait_until(id, std::chrono::steady_clock::time_point::max()); }

  /// `wait` for at most `timeout`: nothing if the reply did not come (the call stays in
  /// flight).
  template <class R, class P>
  std::optional<Rep> wait_for(request_id id, std::chrono::duration<R, P> timeout) {
    return wait_until(
        id, detail::deadline_in(
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout)));
  }

  /// Calls sent and not yet taken by `wait`.
  [[nodiscard]] std::size_t in_flight() const noexcept { return calls_.size(); }

 private:
  using key_type = std::pair<std::uint64_t, std::uint64_t>;
  static key_type key_of(request_id id) noexcept { return {id.process, id.sequence}; }

  call_request<Req, Rep> opaque_request(const opaque_key& key, const Req& body,
                                        std::string_view what) const {
    if (!service_) {
      throw usage_error(fmt::format(
          "ftm::{}: an opaque key needs a pipeline made on a service, not on a bare port", what));
    }
    return detail::opaque_request(*service_, replies_, key, body, what);
  }

  void send_all(std::span<const call_request<Req, Rep>> requests) {
    if (calls_.size() + requests.size() > replies_.capacity()) {
      throw usage_error(fmt::format(
          "ftm::pipeline: {} calls in flight and {} more would exceed the reply port's capacity "
          "of {}; wait for replies first, or give the reply port a larger capacity",
          calls_.size(), requests.size(), replies_.capacity()));
    }
    atomically(*engine_, [&](transaction<E>& tx) {
      for (const auto& r : requests)
        send(tx, server_, r);
    });
    for (const auto& r : requests)
      calls_.emplace(key_of(r.id), std::nullopt);
  }

  std::optional<Rep> wait_until(request_id id, std::chrono::steady_clock::time_point deadline) {
    const auto it = calls_.find(key_of(id));
    if (it == calls_.end()) {
      throw usage_error(
          fmt::format("ftm::pipeline::wait: no call {} is in flight here", id.sequence));
    }
    while (!it->second) {
      if (!collect(deadline)) return std::nullopt;
    }
    const detail::taken_reply<Rep> r = *std::move(it->second);
    calls_.erase(it);
    return detail::reply_value(r);
  }

  /// Takes every reply that has arrived (waiting for one until `deadline`), in one
  /// transaction. False if none came in time.
  bool collect(std::chrono::steady_clock::time_point deadline) {
    if (!detail::await_message(*engine_, replies_, deadline)) return false;
    const auto left = deadline == std::chrono::steady_clock::time_point::max()
                          ? std::chrono::steady_clock::duration::max()
                          : std::max(deadline - std::chrono::steady_clock::now(),
                                     std::chrono::steady_clock::duration::zero());
    std::vector<detail::taken_reply<Rep>> batch;
    atomically(*engine_, [&](transaction<E>& tx) {
      batch.clear();
      auto r = receive_for(tx, replies_, left);
      while (r) {
        const auto at = calls_.find(key_of(r->id));
        if (at != calls_.end() && !at->second) {
          batch.push_back(detail::take_reply(tx, *r));
        } else {
          detail::drop_reply(tx, *r);  // stale: nobody waits for it
        }
        r = try_receive(tx, replies_);
      }
    });
    for (auto& t : batch)
      calls_.find(key_of(t.reply.id))->second = std::move(t);
    return true;
  }

  E* engine_;
  service_port<Req, Rep> server_;
  reply_port<Rep> replies_;
  std::optional<service<Req, Rep>> service_;  // when made on a service
  std::map<key_type, std::optional<detail::taken_reply<Rep>>> calls_;
};

}  // namespace ftm::FTM_ABI_NAMESPACE

/// Request ids print as `pid 1234 #7`.
template <>
struct fmt::formatter<ftm::request_id> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(ftm::request_id id, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(), "pid {} #{}", ftm::detail::owner_pid(id.process), id.sequence);
  }
};

#endif  // FTM_SERVER_HPP
