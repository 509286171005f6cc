#ifndef FTM_SERVER_HPP
#define FTM_SERVER_HPP

/// \file
/// Reliable servers (the paper's sections 3.3 and 4.2). A server receives a request,
/// handles it and sends the reply in one transaction, so a server that dies midway
/// leaves the request at the head of its port for the next server to take: the
/// handler may run more than once, its effects on stable objects and its reply happen
/// exactly once. A client sends the request in one transaction and waits for the
/// reply with its request id in a second.

#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/port.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace ftm {

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

/// Handles one request in `tx`: receives it (waiting for one), calls
/// `handler(tx, request)` and sends what it returns to the request's reply port, all
/// in `tx`. Only inside `ftm::atomically`, like `ftm::receive`. Returns the request's
/// id.
template <watchable_engine E, class Req, class Rep, class Handler>
request_id serve_one(transaction<E>& tx, service_port<Req, Rep> port, Handler& handler) {
  static_assert(std::is_invocable_r_v<Rep, Handler&, transaction<E>&, const Req&>,
                "ftm::serve: the handler must be callable as handler(tx, request) and return "
                "the reply type of the service port");
  const call_request<Req, Rep> request = receive(tx, port);
  Rep result = std::invoke(handler, tx, request.body);
  send(tx, request.reply_to, reply_to_call<Rep>{request.id, result});
  return request.id;
}

/// The paper's server loop: handles the requests arriving on `port`, each in one
/// transaction (receive, `handler(tx, request)`, reply), until `stop` is requested.
/// A handler that throws aborts its transaction: the request goes back to the head
/// of the port with its delivery count increased (a poison request ends in the
/// port's dead-letter port), and the exception leaves `serve`. Returns how many
/// requests it answered.
template <watchable_engine E, class Req, class Rep, class Handler>
std::uint64_t serve(E& engine, service_port<Req, Rep> port, Handler handler,
                    std::stop_token stop = {}) {
  using namespace std::chrono_literals;
  std::uint64_t served = 0;
  while (!stop.stop_requested()) {
    // Waits in slices, to notice a stop request.
    const bool answered = atomically(engine, [&](transaction<E>& tx) {
      auto request = receive_for(tx, port, 100ms);
      if (!request) return false;
      Rep result = std::invoke(handler, tx, std::as_const(request->body));
      send(tx, request->reply_to, reply_to_call<Rep>{request->id, result});
      return true;
    });
    if (answered) ++served;
  }
  return served;
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
  return atomically(engine, [&](transaction<E>& tx) -> std::optional<Rep> {
    for (;;) {
      auto r = receive_for(tx, replies, timeout);
      if (!r) return std::nullopt;
      if (r->id == id) return r->body;
    }
  });
}

}  // namespace ftm

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
