// The libnats side of ftm::nats::client (see client.hpp). libnats 3.4.1 (Debian 12)
// overflows the heap in natsSubscription_Fetch when leftovers of an earlier pull fill
// more than half a batch (nats.c #749): this file never pulls; the consumer pushes to
// a subscription of ours, and acks are plain publishes to the ack subject.
#include <ftm/error.hpp>
#include <ftm/nats/client.hpp>
#include <ftm/supervisor.hpp>

#include <fmt/format.h>
#include <nats/nats.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <string_view>
#include <thread>

namespace ftm::FTM_ABI_NAMESPACE::nats {

namespace {

std::string status_text(natsStatus s, jsErrCode jerr) {
  std::string text = natsStatus_GetText(s);
  if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0') {
    text += fmt::format(" ({})", last);
  }
  if (jerr != 0) text += fmt::format(" [JetStream error {}]", static_cast<int>(jerr));
  return text;
}

/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
/// (nats-server 2.9 sends this form; newer ones may prefix a domain and hash).
void parse_ack_subject(std::string_view reply, delivery& d) {
  std::vector<std::string_view> tokens;
  std::size_t start = 0;
  while (start <= reply.size()) {
    const std::size_t dot = reply.find('.', start);
    const std::size_t end = dot == std::string_view::npos ? reply.size() : dot;
    tokens.push_back(reply.substr(start, end - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  if (tokens.size() < 9) return;
  const std::size_t base = tokens.size() - 9 + 2;  // the token after the consumer name
  auto number = [](std::string_view t) {
    std::uint64_t v = 0;
    std::from_chars(t.data(), t.data() + t.size(), v);
    return v;
  };
  d.delivered = number(tokens[base]);
  d.stream_sequence = number(tokens[base + 1]);
}

/// Whether a PubAck's JSON says `"duplicate": true` (nats-server 2.9 writes a space
/// after the colon; others may not).
bool is_duplicate(std::string_view body) {
  const std::string_view key = "\"duplicate\"";
  std::size_t at = body.find(key);
  if (at == std::string_view::npos) return false;
  at += key.size();
  while (at < body.size() && (body[at] == ' ' || body[at] == ':'))
    ++at;
  return body.substr(at).starts_with("true");
}

}  // namespace

struct client::impl {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  natsSubscription* sub = nullptr;
  std::string deliver_subject;
  // Publish windows: PubAcks come to `<acks_prefix><window>.<index>`.
  natsSubscription* acks = nullptr;
  std::string acks_prefix;
  std::uint64_t window = 0;
  std::chrono::milliseconds timeout{};
  // Messages done with, destroyed together: libnats hands each destroyed message to
  // its garbage collector thread and wakes that thread if it sleeps, a context switch
  // per message (six per call between nodes) on a machine whose cores the call's
  // processes need. In batches, one wake-up frees them all.
  // (A client may be used by several threads, as the benchmark's plain requests are.)
  std::mutex spent_lock;
  std::vector<natsMsg*> spent;

  void dispose(natsMsg* m) {
    std::vector<natsMsg*> batch;
    {
      const std::lock_guard<std::mutex> hold(spent_lock);
      spent.push_back(m);
      if (spent.size() < spent_batch) return;
      batch.swap(spent);
    }
    for (natsMsg* s : batch)
      natsMsg_Destroy(s);
  }
  static constexpr std::size_t spent_batch = 32;

  ~impl() {
    for (natsMsg* s : spent)
      natsMsg_Destroy(s);
    if (acks != nullptr) natsSubscription_Destroy(acks);
    if (sub != nullptr) natsSubscription_Destroy(sub);
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) natsConnection_Destroy(nc);
  }
};

client::client(const client_options& options, std::chrono::milliseconds give_up)
    : impl_(std::make_unique<impl>()) {
  impl_->timeout = options.timeout;
  if (options.servers.empty()) {
    throw invalid_argument("ftm::nats::client: no server URL given");
  }
  natsOptions* o = nullptr;
  if (natsOptions_Create(&o) != NATS_OK)
    throw io_error(EIO, "ftm::nats::client: natsOptions_Create");
  std::vector<const char*> urls;
  for (const auto& s : options.servers)
    urls.push_back(s.c_str());
  natsOptions_SetServers(o, urls.data(), static_cast<int>(urls.size()));
  natsOptions_SetName(o, options.name.c_str());
  natsOptions_SetMaxReconnect(o, -1);  // reconnect forever
  natsOptions_SetReconnectWait(o, 20);
  natsOptions_SetTimeout(o, options.timeout.count());
  natsOptions_SetPingInterval(o, 1000);
  natsOptions_SetMaxPingsOut(o, 3);
  // Each publish goes out at once instead of waiting for libnats' flusher thread: a
  // bridge publishes one message and waits for its PubAck, so batching only adds delay.
  natsOptions_SetSendAsap(o, true);
  const auto deadline = std::chrono::steady_clock::now() + give_up;
  natsStatus s = NATS_OK;
  for (;;) {
    s = natsConnection_Connect(&impl_->nc, o);
    if (s == NATS_OK || std::chrono::steady_clock::now() > deadline) break;
    ftm::heartbeat();  // waiting for a server is not hanging
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  natsOptions_Destroy(o);
  if (s != NATS_OK) {
    throw io_error(EIO, fmt::format("ftm::nats::client: cannot connect to {}: {}",
                                    options.servers.front(), status_text(s, jsErrCode{})));
  }
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = options.timeout.count();
  if (natsConnection_JetStream(&impl_->js, impl_->nc, &jo) != NATS_OK) {
    throw io_error(EIO, "ftm::nats::client: no JetStream context");
  }
}

client::~client() = default;

bool client::ensure_stream(std::string_view name, std::string_view subjects,
                           const stream_options& options, std::string* error) {
  const std::string n(name), subj(subjects);
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = n.c_str();
  const char* list[] = {subj.c_str()};
  sc.Subjects = list;
  sc.SubjectsLen = 1;
  sc.Retention = js_LimitsPolicy;
  sc.Discard = js_DiscardNew;
  sc.Storage = js_FileStorage;
  sc.Replicas = static_cast<int64_t>(options.replicas);
  sc.MaxAge = std::chrono::duration_cast<std::chrono::nanoseconds>(options.max_age).count();
  sc.MaxBytes = options.max_bytes;
  sc.Duplicates =
      std::chrono::duration_cast<std::chrono::nanoseconds>(options.duplicate_window).count();
  jsErrCode jerr{};
  jsStreamInfo* si = nullptr;
  natsStatus s = js_AddStream(&si, impl_->js, &sc, nullptr, &jerr);
  if (si != nullptr) jsStreamInfo_Destroy(si);
  if (s == NATS_OK) return true;
  if (jerr == JSStreamNameExistErr) {
    // Made already, perhaps with other settings by another node: keep it as it is.
    jsStreamInfo* found = nullptr;
    jsErrCode jerr2{};
    s = js_GetStreamInfo(&found, impl_->js, n.c_str(), nullptr, &jerr2);
    if (found != nullptr) jsStreamInfo_Destroy(found);
    if (s == NATS_OK) return true;
  }
  if (error != nullptr) *error = status_text(s, jerr);
  return false;
}

publish_result client::publish(std::string_view subject, std::string_view id,
                               std::span<const std::byte> data, std::string* error) {
  const std::string subj(subject), msg_id(id);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = msg_id.c_str();
  po.MaxWait = impl_->timeout.count();
  jsPubAck* pa = nullptr;
  jsErrCode jerr{};
  const natsStatus s = js_Publish(&pa, impl_->js, subj.c_str(), data.data(),
                                  static_cast<int>(data.size()), &po, &jerr);
  if (s == NATS_OK) {
    const bool dup = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return dup ? publish_result::duplicate : publish_result::stored;
  }
  if (error != nullptr) *error = status_text(s, jerr);
  return jerr != 0 ? publish_result::refused : publish_result::no_answer;
}

std::vector<publish_result> client::publish_window(std::span<const outgoing> window) {
  std::vector<publish_result> results(window.size(), publish_result::no_answer);
  if (window.empty()) return results;
  const sent_window w = send_window(window);
  if (w.sent == 0) return results;
  const auto deadline = std::chrono::steady_clock::now() + impl_->timeout;
  std::size_t answered = 0;
  while (answered < w.sent) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    const std::vector<answer> got = collect(left);
    if (got.empty()) break;
    for (const answer& a : got) {
      // A late PubAck of an earlier window is told apart by its number.
      if (a.window != w.number || a.index >= w.sent ||
          results[a.index] != publish_result::no_answer) {
        continue;
      }
      results[a.index] = a.result;
      ++answered;
    }
  }
  return results;
}

client::sent_window client::send_window(std::span<const outgoing> window) {
  impl& m = *impl_;
  // A new window number, so that a late PubAck of an earlier window is told apart.
  sent_window out{++m.window, 0};
  if (m.acks == nullptr) {
    natsInbox* inbox = nullptr;
    if (natsInbox_Create(&inbox) != NATS_OK) return out;
    m.acks_prefix = fmt::format("{}.", static_cast<const char*>(inbox));
    natsInbox_Destroy(inbox);
    const std::string all = m.acks_prefix + ">";
    if (natsConnection_SubscribeSync(&m.acks, m.nc, all.c_str()) != NATS_OK) {
      m.acks = nullptr;
      return out;
    }
    natsSubscription_SetPendingLimits(m.acks, -1, -1);
  }
  for (const outgoing& o : window) {
    const std::string subject(o.subject), id(o.id);
    const std::string reply = fmt::format("{}{}.{}", m.acks_prefix, out.number, out.sent);
    natsMsg* msg = nullptr;
    if (natsMsg_Create(&msg, subject.c_str(), reply.c_str(),
                       reinterpret_cast<const char*>(o.data.data()),
                       static_cast<int>(o.data.size())) != NATS_OK) {
      return out;
    }
    natsMsgHeader_Set(msg, "Nats-Msg-Id", id.c_str());
    const natsStatus s = natsConnection_PublishMsg(m.nc, msg);
    m.dispose(msg);
    if (s != NATS_OK) return out;  // not connected: the rest is not sent
    ++out.sent;
  }
  return out;
}

std::vector<client::answer> client::collect(std::chrono::milliseconds timeout) {
  impl& m = *impl_;
  std::vector<answer> out;
  if (m.acks == nullptr) return out;
  for (bool first = true;; first = false) {
    // Waits only for the first; then takes what has come. What is there is counted
    // first: a NextMsg that finds nothing records an error text, which costs more.
    if (!first || timeout.count() <= 0) {
      int queued = 0;
      if (natsSubscription_GetPending(m.acks, &queued, nullptr) != NATS_OK || queued <= 0) break;
    }
    natsMsg* a = nullptr;
    if (natsSubscription_NextMsg(&a, m.acks, first ? timeout.count() : 0) != NATS_OK) break;
    // The reply subject's last two tokens: window and index.
    const std::string_view subject = natsMsg_GetSubject(a);
    const std::string_view rest = subject.substr(std::min(subject.size(), m.acks_prefix.size()));
    const std::size_t dot = rest.find('.');
    answer got;
    if (dot != std::string_view::npos &&
        std::from_chars(rest.data(), rest.data() + dot, got.window).ec == std::errc{} &&
        std::from_chars(rest.data() + dot + 1, rest.data() + rest.size(), got.index).ec ==
            std::errc{}) {
      const std::string_view body(natsMsg_GetData(a),
                                  static_cast<std::size_t>(natsMsg_GetDataLength(a)));
      // A PubAck is `{"stream":..,"seq":..}`, with `"duplicate":true` for a repeated id;
      // an error answer has `"error"`; an empty body is a status (no stream listens).
      if (body.empty() || body.find("\"error\"") != std::string_view::npos) {
        got.result = publish_result::refused;
      } else if (is_duplicate(body)) {
        got.result = publish_result::duplicate;
      } else {
        got.result = publish_result::stored;
      }
      out.push_back(got);
    }
    m.dispose(a);
  }
  return out;
}

std::optional<std::uint64_t> client::ack_floor(std::string_view stream, std::string_view consumer,
                                               bool* found) {
  const std::string st(stream), co(consumer);
  jsConsumerInfo* ci = nullptr;
  jsErrCode jerr{};
  const natsStatus s = js_GetConsumerInfo(&ci, impl_->js, st.c_str(), co.c_str(), nullptr, &jerr);
  // Not found only when the server says so; no answer leaves it unknown (found).
  if (found != nullptr) {
    *found = !(jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr || s == NATS_NOT_FOUND);
  }
  if (s != NATS_OK) return std::nullopt;
  const std::uint64_t floor = ci->AckFloor.Stream;
  jsConsumerInfo_Destroy(ci);
  return floor;
}

bool client::open_consumer(std::string_view stream, std::string_view consumer,
                           const consumer_options& options, std::string* error) {
  const std::string st(stream), co(consumer);
  if (impl_->sub == nullptr) {
    impl_->deliver_subject = fmt::format("_ftm.deliver.{}.{}", st, co);
    const natsStatus s =
        natsConnection_SubscribeSync(&impl_->sub, impl_->nc, impl_->deliver_subject.c_str());
    if (s != NATS_OK) {
      if (error != nullptr) *error = status_text(s, jsErrCode{});
      impl_->sub = nullptr;
      return false;
    }
    natsSubscription_SetPendingLimits(impl_->sub, -1, -1);
  }
  jsErrCode jerr{};
  const natsStatus d = js_DeleteConsumer(impl_->js, st.c_str(), co.c_str(), nullptr, &jerr);
  if (d != NATS_OK && jerr != JSConsumerNotFoundErr && d != NATS_NOT_FOUND) {
    if (error != nullptr) *error = status_text(d, jerr);
    return false;
  }
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = co.c_str();
  cc.DeliverSubject = impl_->deliver_subject.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.AckWait = std::chrono::duration_cast<std::chrono::nanoseconds>(options.ack_wait).count();
  cc.MaxDeliver = -1;  // never give up on a message
  cc.MaxAckPending = options.max_ack_pending;
  if (options.start_sequence > 1) {
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = options.start_sequence;
  } else {
    cc.DeliverPolicy = js_DeliverAll;
  }
  jsConsumerInfo* ci = nullptr;
  jerr = jsErrCode{};
  const natsStatus s = js_AddConsumer(&ci, impl_->js, st.c_str(), &cc, nullptr, &jerr);
  if (ci != nullptr) jsConsumerInfo_Destroy(ci);
  if (s != NATS_OK) {
    if (error != nullptr) *error = status_text(s, jerr);
    return false;
  }
  return true;
}

std::optional<delivery> client::next(std::chrono::milliseconds timeout) {
  if (impl_->sub == nullptr) return std::nullopt;
  natsMsg* m = nullptr;
  if (natsSubscription_NextMsg(&m, impl_->sub, timeout.count()) != NATS_OK) return std::nullopt;
  delivery d;
  d.subject = natsMsg_GetSubject(m);
  if (const char* reply = natsMsg_GetReply(m); reply != nullptr) d.ack_subject = reply;
  const char* id = nullptr;
  if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id != nullptr) d.message_id = id;
  const auto* bytes = reinterpret_cast<const std::byte*>(natsMsg_GetData(m));
  d.data.assign(bytes, bytes + natsMsg_GetDataLength(m));
  parse_ack_subject(d.ack_subject, d);
  impl_->dispose(m);
  return d;
}

void client::ack(const delivery& d) {
  if (d.ack_subject.empty()) return;
  natsConnection_Publish(impl_->nc, d.ack_subject.c_str(), "+ACK", 4);
}

void client::serve_plain(std::string_view subject, std::uint64_t count,
                         std::vector<std::byte> (*reply)(std::span<const std::byte>)) {
  const std::string subj(subject);
  natsSubscription* sub = nullptr;
  if (natsConnection_SubscribeSync(&sub, impl_->nc, subj.c_str()) != NATS_OK) {
    throw io_error(EIO, fmt::format("ftm::nats::client: cannot subscribe to {}", subj));
  }
  natsConnection_Flush(impl_->nc);
  for (std::uint64_t i = 0; i < count;) {
    natsMsg* m = nullptr;
    if (natsSubscription_NextMsg(&m, sub, 1000) != NATS_OK) continue;
    const auto* bytes = reinterpret_cast<const std::byte*>(natsMsg_GetData(m));
    const std::vector<std::byte> out = reply(
        std::span<const std::byte>(bytes, static_cast<std::size_t>(natsMsg_GetDataLength(m))));
    if (const char* to = natsMsg_GetReply(m); to != nullptr) {
      natsConnection_Publish(impl_->nc, to, out.data(), static_cast<int>(out.size()));
    }
    impl_->dispose(m);
    ++i;
  }
  natsSubscription_Destroy(sub);
}

std::optional<std::vector<std::byte>> client::request_plain(std::string_view subject,
                                                            std::span<const std::byte> data,
                                                            std::chrono::milliseconds timeout) {
  const std::string subj(subject);
  natsMsg* m = nullptr;
  if (natsConnection_Request(&m, impl_->nc, subj.c_str(), data.data(),
                             static_cast<int>(data.size()), timeout.count()) != NATS_OK) {
    return std::nullopt;
  }
  const auto* bytes = reinterpret_cast<const std::byte*>(natsMsg_GetData(m));
  std::vector<std::byte> out(bytes, bytes + natsMsg_GetDataLength(m));
  impl_->dispose(m);
  return out;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::nats
