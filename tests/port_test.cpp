// Stable ports on every engine: commit and abort, redelivery, dead letters, capacity,
// messages of several types, statistics, and a receiver killed mid-transaction.
#include "engines.hpp"

#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/wait.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

struct order {
  BOOST_HANA_DEFINE_STRUCT(order, (std::uint32_t, id), (std::int64_t, amount));
};

struct reply {
  std::uint32_t id;
  std::int64_t total;
};

struct request {
  std::uint32_t id;
  ftm::stable_port<reply> reply_to;  // a port handle travels inside a message
};

struct cancel {
  std::uint32_t id;
};

/// A stable object that keeps a port handle.
struct registry {
  ftm::stable_port<order> orders;
  std::uint32_t opened;
};

template <class E>
ftm::stable_port<order> make_orders(E& pool, ftm::port_options o = {},
                                    ftm::stable_port<order> dead = {}) {
  return ftm::atomically(pool, [&](auto& tx) { return ftm::make_port<order>(tx, o, dead); });
}

template <class E>
void send_order(E& pool, ftm::stable_port<order> p, std::uint32_t id) {
  ftm::atomically(pool, [&](auto& tx) { ftm::send(tx, p, order{id, 10 * id}); });
}

template <class E, class Msg>
std::optional<Msg> receive_now(E& pool, ftm::stable_port<Msg> p) {
  return ftm::atomically(pool, [&](auto& tx) { return ftm::try_receive(tx, p); });
}

template <class E, class Msg>
ftm::port_stats stats(E& pool, ftm::stable_port<Msg> p) {
  return ftm::atomically(pool, [&](auto& tx) { return ftm::port_stats_of(tx, p); });
}

/// Receives in a transaction that then aborts; returns what it took.
template <class E, class Msg>
std::optional<Msg> receive_and_abort(E& pool, ftm::stable_port<Msg> p) {
  ftm::transaction tx{pool};
  tx.begin();
  auto m = ftm::try_receive(tx, p);
  tx.abort();
  return m;
}

}  // namespace

ENGINE_TEST("a send takes effect at commit; an aborted send sends nothing") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  CHECK_FALSE(receive_now(*pool, p).has_value());

  ftm::transaction tx{*pool};
  tx.begin();
  ftm::send(tx, p, order{1, 10});
  tx.abort();
  CHECK_FALSE(receive_now(*pool, p).has_value());
  CHECK(stats(*pool, p).sent == 0);

  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](auto& t) {
                                    ftm::send(t, p, order{2, 20});
                                    throw std::runtime_error("the sender fails");
                                  }),
                  std::runtime_error);
  CHECK_FALSE(receive_now(*pool, p).has_value());

  send_order(*pool, p, 3);
  send_order(*pool, p, 4);
  auto a = receive_now(*pool, p);
  auto b = receive_now(*pool, p);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(a->id == 3);
  CHECK(a->amount == 30);
  CHECK(b->id == 4);
  CHECK_FALSE(receive_now(*pool, p).has_value());
  const auto s = stats(*pool, p);
  CHECK(s.sent == 2);
  CHECK(s.received == 2);
  CHECK(s.depth == 0);
}

ENGINE_TEST("messages sent in one transaction are received in order, around the ring") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 3});
  std::uint32_t next_sent = 0;
  std::uint32_t next_received = 0;
  for (int round = 0; round < 5; ++round) {  // wraps the ring several times
    ftm::atomically(*pool, [&](auto& tx) {
      for (std::uint32_t k = 0; k < 3; ++k)
        ftm::send(tx, p, order{next_sent + k, 0});
    });
    next_sent += 3;
    while (auto m = receive_now(*pool, p)) {
      CHECK(m->id == next_received);
      ++next_received;
    }
  }
  CHECK(next_received == 15);
}

ENGINE_TEST("a port's slots are in blocks of their own: order kept across blocks and wraps") {
  auto pool = ftm_test::engine_factory<E>::make();
  // 20 slots: blocks of 8, 8 and 4 (the last one partly used); 5,000 slots: 500 of 10.
  for (const std::uint32_t capacity : {20U, 5000U}) {
    CAPTURE(capacity);
    auto p = make_orders(*pool, {.capacity = capacity, .max_deliveries = 0});
    const auto h = ftm::atomically(*pool, [&](auto& tx) {
      const auto* bytes = ftm::detail::byte_access::open_read(
          tx, p.offset(), ftm::detail::port_object_type<order>());
      ftm::detail::port_header out;
      std::memcpy(&out, bytes, sizeof out);
      return out;
    });
    CHECK(h.kind == ftm::detail::port_kind);
    CHECK(h.block_slots == (capacity == 20 ? 8U : 10U));
    CHECK(h.blocks == (capacity == 20 ? 3U : 500U));
    std::deque<std::uint32_t> model;
    std::uint32_t next = 0;
    std::mt19937 rng(capacity);
    for (int round = 0; round < 40; ++round) {  // wraps the ring of 20 many times
      const std::uint32_t room = capacity - static_cast<std::uint32_t>(model.size());
      const std::uint32_t sends = std::min<std::uint32_t>(room, rng() % 13);
      ftm::atomically(*pool, [&](auto& tx) {
        for (std::uint32_t k = 0; k < sends; ++k)
          ftm::send(tx, p, order{next + k, 0});
      });
      for (std::uint32_t k = 0; k < sends; ++k)
        model.push_back(next + k);
      next += sends;
      // An aborted receive of several messages puts them all back, in order.
      if (model.size() >= 2) {
        ftm::transaction tx{*pool};
        tx.begin();
        CHECK(ftm::try_receive(tx, p)->id == model[0]);
        CHECK(ftm::try_receive(tx, p)->id == model[1]);
        tx.abort();
      }
      const std::uint32_t takes = rng() % 13;
      const auto got = ftm::atomically(*pool, [&](auto& tx) {
        std::vector<std::uint32_t> ids;
        for (std::uint32_t k = 0; k < takes; ++k)
          if (auto m = ftm::try_receive(tx, p)) ids.push_back(m->id);
        return ids;
      });
      for (const std::uint32_t id : got) {
        REQUIRE_FALSE(model.empty());
        CHECK(id == model.front());
        model.pop_front();
      }
      CHECK(stats(*pool, p).depth == model.size());
    }
    CHECK(next > capacity / 100);
  }
}

ENGINE_TEST("a port's header is small whatever its capacity, and its blocks are few slots") {
  auto pool = ftm_test::engine_factory<E>::make();
  namespace fd = ftm::detail;
  CHECK(fd::block_slots_of(1) == 1);
  CHECK(fd::block_slots_of(16) == 8);
  CHECK(fd::block_slots_of(4096) == 8);
  CHECK(fd::blocks_of(4096) == 512);
  CHECK(fd::block_slots_of(1U << 24) == (1U << 24) / 512);
  CHECK(fd::blocks_of(1U << 24) == 512);
  CHECK(fd::port_object_type<order>().size == sizeof(fd::port_header));
  // A send opens the header and one block: the block's type names its slots.
  for (const std::uint32_t capacity : {16U, 4096U}) {
    auto p = make_orders(*pool, {.capacity = capacity});
    send_order(*pool, p, 7);
    CHECK(receive_now(*pool, p)->id == 7);
    CHECK(fd::port_block_type<order>(fd::block_slots_of(capacity)).size ==
          8 * fd::slot_size_of<order>());
  }
}

ENGINE_TEST("an aborted receive puts the message back at the head, counted") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  send_order(*pool, p, 1);
  send_order(*pool, p, 2);

  auto first = receive_and_abort(*pool, p);
  REQUIRE(first.has_value());
  CHECK(first->id == 1);
  auto s = stats(*pool, p);
  CHECK(s.depth == 2);
  CHECK(s.in_flight == 1);  // delivered once, not completed
  CHECK(s.deliveries == 1);
  CHECK(s.redelivered == 0);
  CHECK(s.received == 0);

  // A receive in a transaction that throws puts it back too.
  CHECK_THROWS_AS(ftm::atomically(*pool,
                                  [&](auto& tx) {
                                    auto m = ftm::try_receive(tx, p);
                                    CHECK(m->id == 1);
                                    throw std::runtime_error("the handler fails");
                                  }),
                  std::runtime_error);

  auto again = receive_now(*pool, p);
  REQUIRE(again.has_value());
  CHECK(again->id == 1);  // still at the head: FIFO order kept
  s = stats(*pool, p);
  CHECK(s.deliveries == 3);
  CHECK(s.redelivered == 2);
  CHECK(s.received == 1);
  CHECK(s.in_flight == 0);
  CHECK(s.depth == 1);
}

ENGINE_TEST("a message delivered max_deliveries times goes to the dead-letter port") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto dead = make_orders(*pool, {.capacity = 4, .max_deliveries = 0});
  auto p = make_orders(*pool, {.capacity = 8, .max_deliveries = 3}, dead);
  send_order(*pool, p, 7);
  send_order(*pool, p, 8);
  for (int k = 0; k < 3; ++k) {
    auto m = receive_and_abort(*pool, p);
    REQUIRE(m.has_value());
    CHECK(m->id == 7);
  }
  // The fourth attempt is not a delivery: 7 goes to the dead-letter port, 8 comes.
  auto next = receive_now(*pool, p);
  REQUIRE(next.has_value());
  CHECK(next->id == 8);
  auto buried = receive_now(*pool, dead);
  REQUIRE(buried.has_value());
  CHECK(buried->id == 7);
  CHECK(buried->amount == 70);
  const auto s = stats(*pool, p);
  CHECK(s.dead_lettered == 1);
  CHECK(s.deliveries == 4);
  CHECK(s.redelivered == 2);
  CHECK(s.depth == 0);
  CHECK(stats(*pool, dead).sent == 1);
}

ENGINE_TEST("without a dead-letter port, a poison message is dropped and counted") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 4, .max_deliveries = 1});
  send_order(*pool, p, 5);
  CHECK(receive_and_abort(*pool, p)->id == 5);
  CHECK_FALSE(receive_now(*pool, p).has_value());
  const auto s = stats(*pool, p);
  CHECK(s.dead_lettered == 1);
  CHECK(s.depth == 0);
}

ENGINE_TEST("a full port fails the send with ftm::port_full, sending nothing") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 2, .on_full = ftm::when_full::fail});
  send_order(*pool, p, 1);
  send_order(*pool, p, 2);
  try {
    ftm::atomically(*pool, [&](auto& tx) {
      ftm::send(tx, p, order{3, 0});
      FAIL("the send to a full port returned");
    });
    FAIL("no ftm::port_full");
  } catch (const ftm::port_full& e) {
    CHECK(e.code() == ftm::errc::port_full);
    CHECK(std::string(e.what()).find("is full (2 of 2 messages)") != std::string::npos);
  }
  // Room again after a receive; a transaction that makes room itself may send.
  ftm::atomically(*pool, [&](auto& tx) {
    CHECK(ftm::try_receive(tx, p)->id == 1);
    ftm::send(tx, p, order{3, 0});
  });
  CHECK(receive_now(*pool, p)->id == 2);
  CHECK(receive_now(*pool, p)->id == 3);
}

ENGINE_TEST("port handles live in stable objects and travel inside messages") {
  auto pool = ftm_test::engine_factory<E>::make();
  const auto made = ftm::atomically(*pool, [](auto& tx) {
    auto orders = ftm::make_port<order>(tx, {.capacity = 4});
    auto r = tx.create(registry{orders, 1});
    auto q = ftm::make_port<request>(tx, {.capacity = 4});
    return std::pair{r, q};
  });
  const auto reg = made.first;  // no structured bindings: lambdas capture them (clang 14)
  const auto requests = made.second;
  auto replies = ftm::atomically(*pool, [](auto& tx) { return ftm::make_port<reply>(tx); });
  ftm::atomically(*pool, [&](auto& tx) {
    ftm::send(tx, tx.open_read(reg)->orders, order{9, 90});
    ftm::send(tx, requests, request{42, replies});
  });
  // The server answers on the port named in the request.
  ftm::atomically(*pool, [&](auto& tx) {
    auto req = ftm::try_receive(tx, requests);
    REQUIRE(req.has_value());
    auto o = ftm::try_receive(tx, tx.open_read(reg)->orders);
    REQUIRE(o.has_value());
    ftm::send(tx, req->reply_to, reply{req->id, o->amount});
  });
  auto r = receive_now(*pool, replies);
  REQUIRE(r.has_value());
  CHECK(r->id == 42);
  CHECK(r->total == 90);
  CHECK(fmt::format("{}", replies).find("stable_port<reply>@") == 0);
}

ENGINE_TEST("a port over several message types, with a handler for each") {
  auto pool = ftm_test::engine_factory<E>::make();
  using msg = std::variant<order, cancel>;
  auto p = ftm::atomically(*pool, [](auto& tx) { return ftm::make_port<msg>(tx); });
  static_assert(std::is_same_v<decltype(p), ftm::multi_port<order, cancel>>);
  ftm::atomically(*pool, [&](auto& tx) {
    ftm::send(tx, p, order{1, 100});
    ftm::send(tx, p, cancel{1});
    ftm::send(tx, p, order{2, 5});
  });
  std::int64_t total = 0;
  int cancels = 0;
  for (;;) {
    auto m = receive_now(*pool, p);
    if (!m) break;
    const std::string seen =
        ftm::handle(*m, ftm::overloaded{[&](const order& o) {
                                          total += o.amount;
                                          return fmt::format("order {}", o.id);
                                        },
                                        [&](const cancel& c) {
                                          ++cancels;
                                          return fmt::format("cancel {}", c.id);
                                        }});
    CHECK(!seen.empty());
  }
  CHECK(total == 105);
  CHECK(cancels == 1);
}

ENGINE_TEST("port statistics print with fmt") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 8});
  send_order(*pool, p, 1);
  send_order(*pool, p, 2);
  receive_and_abort(*pool, p);
  CHECK(fmt::format("{}", stats(*pool, p)) ==
        "depth: 2/8, in flight: 1, sent: 2, received: 0, deliveries: 1, redelivered: 0, "
        "dead-lettered: 0");
}

ENGINE_TEST("misused port handles are refused with ftm errors") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 4});
  ftm::stable_port<order> null_port;
  CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, null_port, order{}); }),
                  ftm::usage_error);
  // The same object seen as a port of another message type.
  const ftm::stable_port<reply> wrong{ftm::detail::from_offset, p.offset(), p.capacity()};
  CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto& tx) { return ftm::try_receive(tx, wrong); }),
                  ftm::type_mismatch);
  ftm::transaction tx{*pool};
  CHECK_THROWS_AS(ftm::try_receive(tx, p), ftm::usage_error);  // not begun
  CHECK_THROWS_AS(
      ftm::atomically(*pool, [&](auto& t) { return ftm::make_port<order>(t, {.capacity = 0}); }),
      ftm::invalid_argument);
}

// A port opened for reading hands out const views only, and cannot write through.
template <class A>
concept can_write_through = requires(const A& a) {
  a.write_through(std::size_t{0}, 1);
};
using read_access = ftm::detail::port_access<ftm::engines::dual_bank, false>;
using write_access = ftm::detail::port_access<ftm::engines::dual_bank, true>;
static_assert(std::is_const_v<
              std::remove_reference_t<decltype(std::declval<const read_access&>().header())>>);
static_assert(
    std::is_const_v<std::remove_reference_t<decltype(std::declval<read_access&>().slot(0))>>);
static_assert(std::is_same_v<decltype(std::declval<read_access&>().payload(0)), const std::byte*>);
static_assert(!can_write_through<read_access> && can_write_through<write_access>);
static_assert(!std::is_const_v<
              std::remove_reference_t<decltype(std::declval<const write_access&>().header())>>);

/// An object of exactly a port header's size that is not a port.
struct port_sized_filler {
  std::array<std::uint8_t, sizeof(ftm::detail::port_header)> bytes;
};

/// The `ftm::` error `f` throws, as text ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ftm::error& e) {
    return e.what();
  }
  return {};
}

ENGINE_TEST("an object that is not a port, or a port whose kind is damaged, is refused by name") {
  auto pool = ftm_test::engine_factory<E>::make();
  // A foreign object of the right size, whose bytes even copy a port's shape but its kind.
  auto p = make_orders(*pool, {.capacity = 4});
  const auto foreign = ftm::atomically(*pool, [&](auto& tx) {
    port_sized_filler f{};
    const auto* bytes =
        ftm::detail::byte_access::open_read(tx, p.offset(), ftm::detail::port_object_type<order>());
    std::memcpy(f.bytes.data(), bytes, f.bytes.size());
    f.bytes[0] ^= 0xff;  // the kind
    return tx.create(f);
  });
  const ftm::stable_port<order> fake{ftm::detail::from_offset, foreign.offset(), 4};
  const std::string sent = error_of([&] {
    ftm::atomically(*pool, [&](auto& tx) { ftm::send(tx, fake, order{1, 1}); });
  });
  CHECK(sent.find("ftm::send: the object at offset") != std::string::npos);
  CHECK(sent.find("is not a port: its first bytes say kind 0x3274728f, not a port's 0x32747270") !=
        std::string::npos);
  // A port whose kind was overwritten, seen by the write and the read paths.
  ftm::atomically(*pool, [&](auto& tx) {
    std::byte* bytes = ftm::detail::byte_access::open_write(tx, p.offset(),
                                                            ftm::detail::port_object_type<order>());
    std::memset(bytes, 0, sizeof(std::uint32_t));
    ftm::detail::byte_access::close(tx, p.offset());
  });
  CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto& tx) { return ftm::try_receive(tx, p); }),
                  ftm::type_mismatch);
  const std::string read = error_of([&] { stats(*pool, p); });
  CHECK(read.find("ftm::port_stats_of: the object at offset") != std::string::npos);
  CHECK(read.find("is not a port: its first bytes say kind 0x00000000") != std::string::npos);
}

ENGINE_TEST("a port of format 1 (one object holding the ring) is refused, saying so") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 4});
  ftm::atomically(*pool, [&](auto& tx) {
    std::byte* bytes = ftm::detail::byte_access::open_write(tx, p.offset(),
                                                            ftm::detail::port_object_type<order>());
    std::memcpy(bytes, &ftm::detail::port_kind_v1, sizeof(std::uint32_t));
    ftm::detail::byte_access::close(tx, p.offset());
  });
  const std::string sent = error_of([&] { send_order(*pool, p, 1); });
  CHECK(sent.find("ftm::send: the object at offset") != std::string::npos);
  CHECK(sent.find("is a port of format 1") != std::string::npos);
  CHECK_THROWS_AS(receive_now(*pool, p), ftm::type_mismatch);
}

TEST_CASE("ftm-inspect's check names a port of format 1, and a header of another size") {
  namespace fd = ftm::detail;
  fd::port_directory_entry e{};
  e.capacity = 4;
  e.slot_size = fd::slot_size_of<order>();
  const auto no_object = [](std::uint64_t) -> std::span<const std::byte> {
    throw ftm::bad_pool("no object there");
  };
  // Format 1: the kind "port", then a ring in the same object.
  std::vector<std::byte> old(96 + 4 * fd::slot_size_of<order>());
  std::memcpy(old.data(), &fd::port_kind_v1, sizeof fd::port_kind_v1);
  fd::port_report r;
  auto problems = fd::check_port(e, old, r, no_object);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("a port of format 1") != std::string::npos);
  CHECK_FALSE(r.readable);
  // Format 2's kind on an object of another size.
  std::memcpy(old.data(), &fd::port_kind, sizeof fd::port_kind);
  problems = fd::check_port(e, old, r, no_object);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("not a port header's 112") != std::string::npos);
  // A sound header whose slot index is missing is not readable.
  fd::port_header h{};
  h.kind = fd::port_kind;
  h.capacity = 4;
  h.slot_size = e.slot_size;
  h.block_slots = fd::block_slots_of(4);
  h.blocks = fd::blocks_of(4);
  h.index = 4096;
  std::vector<std::byte> bytes(sizeof h);
  std::memcpy(bytes.data(), &h, sizeof h);
  problems = fd::check_port(e, bytes, r, no_object);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("its slot index at offset 4096: ") == 0);
  CHECK_FALSE(r.readable);
}

ENGINE_TEST("the delivery count survives a receiver killed mid-transaction") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 4, .max_deliveries = 2});
  send_order(*pool, p, 11);
  send_order(*pool, p, 12);
  auto kill_a_receiver = [&] {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
      ftm::transaction tx{*pool};
      tx.begin();
      auto m = ftm::try_receive(tx, p);
      const char c = m ? static_cast<char>(m->id) : 0;
      (void)!::write(ready[1], &c, 1);
      ::pause();  // killed here, holding the message
      ::_exit(0);
    }
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    ::kill(child, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    ::close(ready[0]);
    ::close(ready[1]);
    CHECK(pool->recover().undone == 1);
    return static_cast<std::uint32_t>(c);
  };
  CHECK(kill_a_receiver() == 11);
  auto s = stats(*pool, p);
  CHECK(s.depth == 2);      // the message is back ...
  CHECK(s.in_flight == 1);  // ... counted as delivered once
  CHECK(s.deliveries == 1);
  CHECK(kill_a_receiver() == 11);  // at the head
  CHECK(stats(*pool, p).redelivered == 1);
  // Two deliveries, both lost: the next receive buries 11 and delivers 12.
  CHECK(receive_now(*pool, p)->id == 12);
  s = stats(*pool, p);
  CHECK(s.dead_lettered == 1);
  CHECK(s.deliveries == 3);
}

// ---- blocking ----------------------------------------------------------------------

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

ENGINE_TEST("receive waits for a committed message, not for an aborted one") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  std::atomic<std::uint32_t> got{0};
  std::thread receiver([&] {
    const order o = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive(tx, p); });
    got = o.id;
  });
  std::this_thread::sleep_for(50ms);
  CHECK(got == 0);
  ftm::transaction tx{*pool};
  tx.begin();
  ftm::send(tx, p, order{1, 0});
  tx.abort();  // wakes no one, sends nothing
  std::this_thread::sleep_for(50ms);
  CHECK(got == 0);
  send_order(*pool, p, 2);
  receiver.join();
  CHECK(got == 2);
  CHECK(stats(*pool, p).depth == 0);
}

ENGINE_TEST("receive_for gives up after its timeout, or returns what came in time") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  const auto t0 = steady::now();
  auto none = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive_for(tx, p, 80ms); });
  CHECK_FALSE(none.has_value());
  CHECK(steady::now() - t0 >= 80ms);

  std::thread sender([&] {
    std::this_thread::sleep_for(30ms);
    send_order(*pool, p, 4);
  });
  const auto t1 = steady::now();
  auto some = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive_for(tx, p, 10s); });
  sender.join();
  REQUIRE(some.has_value());
  CHECK(some->id == 4);
  CHECK(steady::now() - t1 < 5s);
}

ENGINE_TEST("a send to a full port made with when_full::block waits for room") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool, {.capacity = 1, .on_full = ftm::when_full::block});
  send_order(*pool, p, 1);
  std::atomic<bool> sent{false};
  std::thread sender([&] {
    send_order(*pool, p, 2);  // blocks: the port is full
    sent = true;
  });
  std::this_thread::sleep_for(50ms);
  CHECK_FALSE(sent.load());
  CHECK(receive_now(*pool, p)->id == 1);
  sender.join();
  CHECK(sent.load());
  CHECK(receive_now(*pool, p)->id == 2);
}

ENGINE_TEST("blocking operations outside ftm::atomically are refused") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  ftm::transaction tx{*pool};
  tx.begin();
  CHECK_THROWS_AS(ftm::receive(tx, p), ftm::usage_error);
  CHECK_THROWS_AS(ftm::receive_for(tx, p, 1ms), ftm::usage_error);
  tx.abort();
}

ENGINE_TEST("a receiver in another process is woken by a commit") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto p = make_orders(*pool);
  int out[2];
  REQUIRE(::pipe(out) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    const auto m = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive_for(tx, p, 20s); });
    const char c = m ? static_cast<char>(m->id) : 0;
    (void)!::write(out[1], &c, 1);
    ::_exit(0);
  }
  // Let the child go to sleep on the futex (it may also still be starting: either way
  // it must get the message).
  std::this_thread::sleep_for(100ms);
  const auto t0 = steady::now();
  send_order(*pool, p, 9);
  char c = 0;
  REQUIRE(::read(out[0], &c, 1) == 1);
  CHECK(c == 9);
  CHECK(steady::now() - t0 < 10s);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  ::close(out[0]);
  ::close(out[1]);
}

ENGINE_TEST("or_else waits on whichever of two ports gets a message") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = make_orders(*pool);
  auto b = make_orders(*pool);
  auto take_either = [&] {
    return ftm::atomically(*pool, [&](auto& tx) {
      return ftm::or_else(
          tx,
          [&](auto& t) {
            return std::pair{'a', ftm::receive(t, a)};
          },
          [&](auto& t) {
            return std::pair{'b', ftm::receive(t, b)};
          });
    });
  };
  send_order(*pool, a, 1);
  CHECK(take_either().first == 'a');
  send_order(*pool, b, 2);
  CHECK(take_either().first == 'b');
  // Both empty: waits, and the second port's message wakes it.
  std::thread sender([&] {
    std::this_thread::sleep_for(50ms);
    send_order(*pool, b, 3);
  });
  const auto got = take_either();
  sender.join();
  CHECK(got.first == 'b');
  CHECK(got.second.id == 3);
}

ENGINE_TEST("retry waits for an object the transaction read to change") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto flag = ftm::atomically(*pool, [](auto& tx) { return tx.create(registry{{}, 0}); });
  std::thread setter([&] {
    std::this_thread::sleep_for(50ms);
    ftm::atomically(*pool, [&](auto& tx) { tx.open(flag)->opened = 7; });
  });
  int runs = 0;
  const auto seen = ftm::atomically(*pool, [&](auto& tx) {
    ++runs;
    const std::uint32_t v = tx.open_read(flag)->opened;
    if (v == 0) ftm::retry(tx, flag);
    return v;
  });
  setter.join();
  CHECK(seen == 7);
  CHECK(runs >= 2);
  CHECK(runs < 100);  // it waited, rather than spinning
}

ENGINE_TEST("a poison message reaches the dead-letter port while receivers wait") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto dead = make_orders(*pool, {.capacity = 4, .max_deliveries = 0});
  auto p = make_orders(*pool, {.capacity = 4, .max_deliveries = 1}, dead);
  send_order(*pool, p, 6);
  CHECK(receive_and_abort(*pool, p)->id == 6);  // its one delivery
  std::atomic<std::uint32_t> got{0};
  std::thread receiver(
      [&] { got = ftm::atomically(*pool, [&](auto& tx) { return ftm::receive(tx, p); }).id; });
  // The receiver finds only the poison message and waits; the move is committed anyway.
  std::optional<order> buried;
  for (int i = 0; i < 200 && !buried; ++i) {
    std::this_thread::sleep_for(10ms);
    buried = receive_now(*pool, dead);
  }
  REQUIRE(buried.has_value());
  CHECK(buried->id == 6);
  CHECK(got == 0);
  send_order(*pool, p, 7);
  receiver.join();
  CHECK(got == 7);
  CHECK(stats(*pool, p).dead_lettered == 1);
}

ENGINE_TEST("or_else: the poison messages of every alternative reach their dead-letter ports") {
  // Issue 8, item 9: the merged wait kept the first alternative's tidy-up work only, so
  // the second alternative's poison message stayed in its port, in flight.
  for (const bool first_has_poison : {false, true}) {
    CAPTURE(first_has_poison);
    auto pool = ftm_test::engine_factory<E>::make();
    auto dead_a = make_orders(*pool, {.capacity = 4, .max_deliveries = 0});
    auto dead_b = make_orders(*pool, {.capacity = 4, .max_deliveries = 0});
    auto a = make_orders(*pool, {.capacity = 4, .max_deliveries = 1}, dead_a);
    auto b = make_orders(*pool, {.capacity = 4, .max_deliveries = 1}, dead_b);
    if (first_has_poison) {
      send_order(*pool, a, 1);
      CHECK(receive_and_abort(*pool, a)->id == 1);  // its one delivery
    }
    send_order(*pool, b, 2);
    CHECK(receive_and_abort(*pool, b)->id == 2);
    std::atomic<std::uint32_t> got{0};
    std::thread receiver([&] {
      got = ftm::atomically(*pool, [&](auto& tx) {
              return ftm::or_else(
                  tx, [&](auto& t) { return ftm::receive(t, a); },
                  [&](auto& t) { return ftm::receive(t, b); });
            }).id;
    });
    // Both alternatives wait; the moves of both poison messages are committed anyway.
    std::optional<order> buried_b;
    std::optional<order> buried_a;
    for (int i = 0; i < 1000 && !(buried_b && (buried_a || !first_has_poison)); ++i) {
      std::this_thread::sleep_for(10ms);
      if (!buried_b) buried_b = receive_now(*pool, dead_b);
      if (!buried_a) buried_a = receive_now(*pool, dead_a);
    }
    CHECK(buried_b.has_value());
    CHECK((buried_b && buried_b->id == 2));
    CHECK(buried_a.has_value() == first_has_poison);
    CHECK(stats(*pool, b).depth == 0);
    CHECK(stats(*pool, b).dead_lettered == 1);
    CHECK(got == 0);
    send_order(*pool, b, 3);  // releases the receiver, whatever the checks found
    receiver.join();
    CHECK(got == 3);
  }
}

ENGINE_TEST("retry without objects waits for anything the transaction opened") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(registry{{}, 0}); });
  auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(registry{{}, 0}); });
  std::thread setter([&] {
    std::this_thread::sleep_for(50ms);
    ftm::atomically(*pool, [&](auto& tx) { tx.open(b)->opened = 3; });
  });
  int runs = 0;
  const auto sum = ftm::atomically(*pool, [&](auto& tx) {
    ++runs;
    const std::uint32_t s = tx.open_read(a)->opened + tx.open_read(b)->opened;
    if (s == 0) ftm::retry(tx);  // b was read second: its change must wake us
    return s;
  });
  setter.join();
  CHECK(sum == 3);
  CHECK(runs >= 2);
  CHECK(runs < 100);
  CHECK_THROWS_AS(ftm::atomically(*pool, [&](auto& t) { ftm::retry(t); }), ftm::usage_error);
}

ENGINE_TEST("the port directory lists every committed port, and no aborted one") {
  auto pool = ftm_test::engine_factory<E>::make();
  auto entries = [&] {
    return ftm::atomically(*pool, [](auto& tx) { return ftm::detail::port_directory_entries(tx); });
  };
  CHECK(entries().empty());  // no port made: no directory either
  auto dead = make_orders(*pool, {.capacity = 2});
  auto p = make_orders(*pool, {.capacity = 8}, dead);
  {
    ftm::transaction tx{*pool};
    tx.begin();
    const auto gone = ftm::make_port<reply>(tx, {.capacity = 16});
    CHECK(ftm::detail::port_directory_entries(tx).size() == 3);  // its own entry, until...
    CHECK(ftm::detail::port_directory_entries(tx).back().offset == gone.offset());
    tx.abort();
  }
  auto listed = entries();
  REQUIRE(listed.size() == 2);  // ...the abort takes it out again
  CHECK(listed[0].offset == dead.offset());
  CHECK(listed[0].capacity == 2);
  CHECK(listed[1].offset == p.offset());
  CHECK(listed[1].capacity == 8);
  CHECK(listed[1].fingerprint == ftm::layout_fingerprint<order>());
  CHECK(listed[1].slot_size == ftm::detail::slot_size_of<order>());
  CHECK(std::string_view(listed[1].type).ends_with("order"));
  // Blocks chain: more ports than one block holds are all listed, in order.
  constexpr std::uint32_t many = 2 * ftm::detail::port_directory_block_entries + 3;
  std::vector<std::uint64_t> made;
  for (std::uint32_t i = 0; i < many; ++i)
    made.push_back(make_orders(*pool, {.capacity = 1}).offset());
  listed = entries();
  REQUIRE(listed.size() == many + 2);
  for (std::uint32_t i = 0; i < many; ++i)
    CHECK(listed[i + 2].offset == made[i]);
  CHECK(pool->check().ok());
}

ENGINE_TEST("programs cannot bind or read roots under ftm's reserved prefix") {
  auto pool = ftm_test::engine_factory<E>::make();
  make_orders(*pool);  // the directory exists under 'ftm.ports'
  for (const char* name : {"ftm.ports", "ftm.mine"}) {
    try {
      ftm::atomically(*pool, [&](auto& tx) { static_cast<void>(ftm::root<registry>(tx, name)); });
      FAIL("a reserved root name was accepted: ", name);
    } catch (const ftm::usage_error& e) {
      CHECK(std::string(e.what()).find(fmt::format("the root name '{}' is reserved", name)) !=
            std::string::npos);
    }
  }
  // Other names, even close ones, are the program's.
  ftm::atomically(*pool, [](auto& tx) { static_cast<void>(ftm::root<registry>(tx, "ftm_ports")); });
  CHECK(ftm::atomically(
            *pool, [](auto& tx) { return ftm::detail::port_directory_entries(tx).size(); }) == 1);
}
