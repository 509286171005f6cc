#ifndef FTM_NATS_CLIENT_HPP
#define FTM_NATS_CLIENT_HPP

/// \file
/// The part of NATS JetStream the bridge uses, over libnats (compiled into the
/// `ftm::nats` library, so that no libnats type appears here): a connection that
/// reconnects forever, streams with the settings exactly-once needs, publishes with a
/// message id, a durable push consumer with explicit acks, and plain request/reply
/// (for comparison in the benchmark). Every call that talks to the server has a
/// timeout and reports "no answer" instead of throwing: the bridge retries.
///
/// libnats starts threads: make a `client` only in a process that will not fork
/// afterwards (a supervised task's instance), never in a supervisor.

#include <ftm/detail/config.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::nats {

/// Where and how to connect.
struct client_options {
  /// Server URLs (`nats://127.0.0.1:4222`); several for a cluster.
  std::vector<std::string> servers;
  /// How long one request to the server (a publish's PubAck, an API call) may take.
  std::chrono::milliseconds timeout{2000};
  /// The connection's name, as the server's monitoring shows it.
  std::string name = "ftm";
};

/// A stream's settings that are not fixed by the bridge. The bridge's streams always
/// use limits retention (WorkQueue and Interest forget message ids after a restart:
/// nats-server #3272), DiscardNew (DiscardOld drops messages nobody consumed, silently)
/// and file storage.
struct stream_options {
  std::uint32_t replicas = 1;  ///< 1, 3 or 5: copies on separate servers of a cluster
  /// How long a message is kept, consumed or not: longer than any outage you accept (a
  /// message dropped for age before it was consumed is a gap the inbound side reports).
  std::chrono::seconds max_age{std::chrono::hours(24 * 7)};
  std::int64_t max_bytes = -1;  ///< -1: no limit; when reached, publishes are refused
  /// The window in which the server answers a repeated message id "duplicate". Only
  /// saves traffic: the receiving pool keeps exactly-once by itself.
  std::chrono::seconds duplicate_window{120};
};

/// A durable push consumer's settings.
struct consumer_options {
  std::chrono::milliseconds ack_wait{2000};  ///< redelivery of an unacked message after this
  std::int64_t max_ack_pending = 256;        ///< unacked messages in flight at most
  std::uint64_t start_sequence = 1;          ///< the first stream sequence delivered
};

/// What the server answered to a publish.
enum class publish_result {
  stored,     ///< stored now
  duplicate,  ///< a message with this id is stored already (within the window)
  no_answer,  ///< no PubAck in time (server down, failover): the outcome is unknown
  refused,    ///< an error answer (a full stream, no such stream): retry later
};

/// One message delivered by a consumer.
struct delivery {
  std::string subject;
  std::string message_id;  ///< its `Nats-Msg-Id` header
  std::vector<std::byte> data;
  std::string ack_subject;
  std::uint64_t stream_sequence = 0;
  std::uint64_t delivered = 0;  ///< how often it was delivered, this time included
};

/// A connection to NATS, with JetStream.
class client {
 public:
  /// Connects, retrying until a server answers or `give_up` passes (then
  /// `ftm::io_error`).
  explicit client(const client_options& options,
                  std::chrono::milliseconds give_up = std::chrono::milliseconds(60000));
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Makes the stream `name` over `subjects` (a NATS wildcard subject), or finds it;
  /// false if the server did not answer (retry), `ftm::io_error` if it refused.
  bool ensure_stream(std::string_view name, std::string_view subjects,
                     const stream_options& options, std::string* error = nullptr);

  /// Publishes `data` on `subject` with the message id `id` and waits for the PubAck.
  publish_result publish(std::string_view subject, std::string_view id,
                         std::span<const std::byte> data, std::string* error = nullptr);

  /// One message of a publish window.
  struct outgoing {
    std::string_view subject;
    std::string_view id;  ///< its `Nats-Msg-Id`
    std::span<const std::byte> data;
  };
  /// Publishes every message of `window` at once, in order, each with its message id,
  /// and waits (at most the client's timeout) for all their PubAcks: one round trip
  /// for the lot instead of one per message. `results[i]` is the answer to
  /// `window[i]`; a message without an answer in time is `no_answer`.
  std::vector<publish_result> publish_window(std::span<const outgoing> window);

  /// The first half of `publish_window`: sends every message of `window` at once, in
  /// order, each with its message id, and returns without waiting; `collect` gathers
  /// the PubAcks. Returns the window's number (never 0) and how many of its messages
  /// went out (the rest were not sent: the connection is closed or its buffer full).
  struct sent_window {
    std::uint64_t number = 0;
    std::size_t sent = 0;
  };
  sent_window send_window(std::span<const outgoing> window);

  /// A PubAck: the answer to message `index` of the window numbered `window`.
  struct answer {
    std::uint64_t window = 0;
    std::size_t index = 0;
    publish_result result = publish_result::no_answer;
  };
  /// Every PubAck of `send_window`'s windows that has come, waiting at most `timeout`
  /// for the first (zero: not at all).
  std::vector<answer> collect(std::chrono::milliseconds timeout);

  /// The ack floor of a consumer (every stream sequence up to it was acked), or
  /// nothing if the consumer or its stream does not exist (then `found` is false) or
  /// no answer came (`found` true: unknown).
  std::optional<std::uint64_t> ack_floor(std::string_view stream, std::string_view consumer,
                                         bool* found = nullptr);

  /// Deletes the consumer and makes it again, delivering to a subscription of this
  /// client from `options.start_sequence` on; false if the server did not answer.
  bool open_consumer(std::string_view stream, std::string_view consumer,
                     const consumer_options& options, std::string* error = nullptr);

  /// The next delivery of the consumer opened last, waiting at most `timeout`.
  std::optional<delivery> next(std::chrono::milliseconds timeout);

  /// Acks a delivery (fire and forget: a lost ack means a redelivery).
  void ack(const delivery& d);

  /// Plain NATS (not JetStream): answers requests on `subject` with `reply(data)` for
  /// `count` requests or until `stop` is set; and sends one request.
  void serve_plain(std::string_view subject, std::uint64_t count,
                   std::vector<std::byte> (*reply)(std::span<const std::byte>));
  std::optional<std::vector<std::byte>> request_plain(std::string_view subject,
                                                      std::span<const std::byte> data,
                                                      std::chrono::milliseconds timeout);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace ftm::FTM_ABI_NAMESPACE::nats

#endif  // FTM_NATS_CLIENT_HPP
