#ifndef FTM_SERVER_HPP
#define FTM_SERVER_HPP

/// \file
/// Reliable servers (the paper's sections 3.3 and 4.2). A server receives a request,
/// handles it and sends the reply in one transaction, so a server that dies midway
/// leaves the request at the head of its port for the next server to take: the
/// handler may run more than once, its effects on stable objects and its reply happen
/// exactly once. A client sends the request in one transaction and waits for the
/// reply with its request id in a second.

#include <ftm/detail/config.hpp>
#include <ftm/detail/heartbeat.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/port.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE {

/// Names one call: the calling process (pid and start time) and a number it chose.
struct request_id {
  std::uint64_t process = 0;
  std::uint64_t sequence = 0;
  friend constexpr bool operator==(request_id, request_id) noexcept = default;
};

/// A reply: the id of the request it answers, and the handler's result.
template <class Rep>
struct reply_to_call {
  request_id id;
  Rep body;
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
};

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

namespace detail {
/// The work of `ftm::serve_one` once it holds a request: calls the handler and sends
/// what it returns to the request's reply port, in `tx`.
template <engine E, class Req, class Rep, class Handler>
request_id answer(transaction<E>& tx, const call_request<Req, Rep>& request, Handler& handler) {
  Rep result = std::invoke(handler, tx, request.body);
  send(tx, request.reply_to, reply_to_call<Rep>{request.id, result});
  return request.id;
}
}  // namespace detail

/// Handles one request in `tx`: receives it (waiting for one), calls
/// `handler(tx, request)` and sends what it returns to the request's reply port, all
/// in `tx`. Only inside `ftm::atomically`, like `ftm::receive`. Returns the request's
/// id.
template <watchable_engine E, class Req, class Rep, class Handler>
request_id serve_one(transaction<E>& tx, service_port<Req, Rep> port, Handler& handler) {
  static_assert(detail::check_handler<Handler, E, Req, Rep>());
  if constexpr (detail::valid_handler<Handler, E, Req, Rep>) {
    return detail::answer(tx, receive(tx, port), handler);
  } else {
    return {};
  }
}

namespace detail {
/// `ftm::serve_one` that waits at most `timeout` (as `ftm::receive_for`) for a request:
/// nothing if none came in time. The step of `ftm::serve`, which must look up from
/// its wait now and then.
template <watchable_engine E, class Req, class Rep, class Handler, class R, class P>
std::optional<request_id> serve_one_for(transaction<E>& tx, service_port<Req, Rep> port,
                                        Handler& handler, std::chrono::duration<R, P> timeout) {
  static_assert(check_handler<Handler, E, Req, Rep>());
  if constexpr (valid_handler<Handler, E, Req, Rep>) {
    const std::optional<call_request<Req, Rep>> request = receive_for(tx, port, timeout);
    if (!request) return std::nullopt;
    return answer(tx, *request, handler);
  } else {
    return std::nullopt;
  }
}
}  // namespace detail

/// The paper's server loop: handles the requests arriving on `port`, each in one
/// transaction (receive, `handler(tx, request)`, reply), until `stop` is requested.
/// A handler that throws aborts its transaction: the request goes back to the head
/// of the port with its delivery count increased (a poison request ends in the
/// port's dead-letter port), and the exception leaves `serve`. Returns how many
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
    using namespace std::chrono_literals;
    std::uint64_t served = 0;
    while (!stop.stop_requested()) {
      detail::renew_lease();
      // Waits in slices, to notice a stop request and to renew the lease.
      const auto slice = detail::renewal_slice(100ms);
      if (!detail::await_message(engine, port, detail::deadline_in(slice))) continue;
      const bool answered = atomically(engine, [&](transaction<E>& tx) {
        return detail::serve_one_for(tx, port, handler, slice).has_value();
      });
      if (answered) ++served;
    }
    return served;
  } else {
    return 0;
  }
}

/// The client's side of a call, as in the paper's section 4.2: one transaction sends
/// the request (with a fresh id and the client's reply port), a second waits for the
/// reply with that id and takes it. Replies to other ids found on the way (left by
/// an earlier call that gave up) are discarded. Blocks until the reply comes;
/// `call_for` gives up after a timeout.
template <watchable_engine E, class Req, class Rep>
Rep call(E& engine, service_port<Req, Rep> server, reply_port<Rep> replies, const Req& body) {
  const request_id id = next_request_id();
  atomically(engine, [&](transaction<E>& tx) {
    send(tx, server, call_request<Req, Rep>{id, replies, body});
  });
  detail::await_message(engine, replies, std::chrono::steady_clock::time_point::max());
  return atomically(engine, [&](transaction<E>& tx) {
    for (;;) {
      reply_to_call<Rep> r = receive(tx, replies);
      if (r.id == id) return r.body;
    }
  });
}

/// `ftm::call` that waits at most `timeout` for the reply; nothing if none came (the
/// request may still be handled later: its reply is then discarded by a later call
/// on the same reply port).
template <watchable_engine E, class Req, class Rep, class R, class P>
std::optional<Rep> call_for(E& engine, service_port<Req, Rep> server, reply_port<Rep> replies,
                            const Req& body, std::chrono::duration<R, P> timeout) {
  const request_id id = next_request_id();
  atomically(engine, [&](transaction<E>& tx) {
    send(tx, server, call_request<Req, Rep>{id, replies, body});
  });
  const auto wait = std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
  const auto deadline = detail::deadline_in(wait);
  detail::await_message(engine, replies, deadline);
  // What is left of the timeout for the receive (the whole of it at the end of time).
  const auto left = deadline == std::chrono::steady_clock::time_point::max()
                        ? wait
                        : std::max(deadline - std::chrono::steady_clock::now(),
                                   std::chrono::steady_clock::duration::zero());
  return atomically(engine, [&](transaction<E>& tx) -> std::optional<Rep> {
    for (;;) {
      auto r = receive_for(tx, replies, left);
      if (!r) return std::nullopt;
      if (r->id == id) return r->body;
    }
  });
}

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
