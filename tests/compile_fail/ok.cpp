// Control case: the allowed counterpart of every rule in this directory. It must
// compile, so that a rule test cannot pass merely because the headers are broken.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>
#include <ftm/port.hpp>
#include <ftm/server.hpp>
#include <ftm/supervisor.hpp>

#include <boost/hana/define_struct.hpp>

#include <string>

struct account {
  long balance;
};

// A link between objects is a stable<U>, not a pointer (raw_pointer_member).
struct node {
  BOOST_HANA_DEFINE_STRUCT(node, (long, value), (ftm::stable<node>, next));
};

// Reading and writing through opened handles (access_without_open,
// write_through_open_read); a trivially copyable type (not_trivially_copyable).
long transfer(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<account> from,
              ftm::stable<account> to) {
  auto src = tx.open(from);
  src->balance -= 10;
  auto view = tx.open_read(to);
  long seen = view->balance;
  view.close();
  auto dst = tx.open(to);
  dst->balance += 10;
  return seen;
}

// Handles are passed by reference, and created in place (copy_opened, return_opened).
void bump(ftm::opened<account>& acc) { acc->balance += 1; }

ftm::stable<node> push(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable<node> head) {
  ftm::opened<account> acc = tx.open(tx.create(account{1}));
  bump(acc);
  return tx.create(node{2, head});
}

// atomically returns values and handles, never opened objects (atomically_returns_opened).
long total(ftm::engines::dual_bank& pool, ftm::stable<account> a) {
  auto b = ftm::atomically(pool, [](auto& tx) { return tx.create(account{5}); });
  return ftm::atomically(pool, [&](auto& tx) {
    long sum = tx.open_read(a)->balance + tx.open_read(b)->balance;
    return sum;
  });
}

// A port gets its own message type or one of its alternatives, and a handler covers
// every alternative (send_wrong_message_type, handler_missing_type).
struct cancel {
  long id;
};

long drain(ftm::transaction<ftm::engines::dual_bank>& tx, ftm::stable_port<account> accounts,
           ftm::multi_port<account, cancel> mixed) {
  ftm::send(tx, accounts, account{1});
  ftm::send(tx, mixed, cancel{2});
  long sum = 0;
  if (auto m = ftm::try_receive(tx, mixed)) {
    ftm::handle(*m, ftm::overloaded{[&](const account& a) { sum += a.balance; },
                                    [&](const cancel& c) { sum -= c.id; }});
  }
  return sum;
}

// A handler takes the transaction and returns the reply type; plain members, not
// locks or atomics, in stable objects (serve_wrong_reply_type, serve_missing_transaction,
// atomic_member, mutex_member).
struct deposit {
  long amount;
};
struct receipt {
  long balance;
};

void run(ftm::engines::dual_bank& pool, ftm::service_port<deposit, receipt> port,
         ftm::stable<account> bank) {
  ftm::serve(pool, port, [bank](ftm::transaction<ftm::engines::dual_bank>& tx, const deposit& d) {
    auto acc = tx.open(bank);
    acc->balance += d.amount;
    return receipt{acc->balance};
  });
}

// A supervisor over an engine whose state a forked child shares
// (supervisor_in_process_engine).
void supervise(ftm::engines::dual_bank& pool) {
  ftm::supervisor task(pool, {.name = "worker"}, [](ftm::engines::dual_bank&) {});
  task.run();
}

// Containers: opened through their views, by reference, values copied out of
// atomically (container_view_copy, container_view_escapes,
// container_write_through_read, container_plain_open).
void fill(ftm::opened_vector<long, ftm::engines::dual_bank, true>& v) { v.push_back(3); }

long containers(ftm::engines::dual_bank& pool) {
  return ftm::atomically(pool, [](ftm::transaction<ftm::engines::dual_bank>& tx) {
    auto vec = tx.create<ftm::stable_vector<long>>();
    auto v = ftm::open(tx, vec);
    fill(v);
    v[0] = 4;
    auto str = tx.root<ftm::stable_string>("greeting");
    ftm::open(tx, str).assign("hello");
    auto map = tx.create<ftm::stable_map<long, long>>();
    ftm::open(tx, map).insert_or_assign(1, 2);
    auto hash = tx.create<ftm::stable_hash_map<long, long>>();
    ftm::open(tx, hash)[5] = 6;
    return ftm::open_read(tx, vec)[0] + ftm::open_read(tx, map).at(1) +
           static_cast<long>(ftm::open_read(tx, str).size());
  });
}

// Maps of strings: text copied out of atomically with str() (string_map_compare,
// atomically_returns_string_ref).
std::string string_maps(ftm::engines::dual_bank& pool) {
  return ftm::atomically(pool, [](ftm::transaction<ftm::engines::dual_bank>& tx) {
    auto map = tx.create<ftm::stable_map<ftm::stable_string, ftm::stable_string>>();
    ftm::open(tx, map).insert_or_assign("key", "value");
    return ftm::open_read(tx, map).at("key").str();
  });
}
