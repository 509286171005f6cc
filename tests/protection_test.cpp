// Protected mode: every silent misuse of a pool that the compiler cannot see is caught
// at run time (the write faults), reported (pool offset, object, code address) and
// rejected (the transaction aborted, the program stopped), on both engines. Each case
// forks a child that misbehaves, checks how it died and what it said, then checks the
// pool in the parent.
#include "engines.hpp"
#include "process.hpp"

#include <ftm/ftm.hpp>
#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>
#include <boost/hana/define_struct.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

struct counter {
  BOOST_HANA_DEFINE_STRUCT(counter, (std::int64_t, value), (std::int64_t, spare));
};

/// A type with a `mutable` member: the compiler lets a read view write it.
struct cached {
  std::int64_t value;
  mutable std::int64_t memo;
};

/// An object of a page, so that its neighbour starts on another page.
struct page_sized {
  std::array<std::byte, 4096 - 16> bytes;
};

/// A protected pool of engine `E` (a file in the scratch directory for `pmem`).
template <class E>
struct protected_pool;

template <>
struct protected_pool<ftm::engines::dual_bank> {
  static std::unique_ptr<ftm::engines::dual_bank> make(bool on = true) {
    return std::make_unique<ftm::engines::dual_bank>(
        ftm::engines::dual_bank::options{.bank_size = std::size_t{1} << 20, .protected_mode = on});
  }
};

template <>
struct protected_pool<ftm::engines::pmem> {
  static std::unique_ptr<ftm::engines::pmem, ftm_test::pool_file_deleter> make(bool on = true) {
    return std::unique_ptr<ftm::engines::pmem, ftm_test::pool_file_deleter>(
        new ftm::engines::pmem(ftm::engines::pmem::creating, ftm_test::scratch_file(),
                               {.bank_size = std::size_t{1} << 20, .protected_mode = on}));
  }
};

/// How a misbehaving child ended, and what it wrote on stderr.
struct outcome {
  int status = 0;
  std::string err;
};

/// Runs `body` in a forked child with its stderr captured; the child returns 0 if it
/// got through `body` (which a caught violation never lets it do).
outcome run_child(const std::function<void()>& body) {
  char templ[] = "/tmp/ftm-protect-XXXXXX";
  const int fd = ::mkstemp(templ);
  REQUIRE(fd >= 0);
  ::unlink(templ);
  const int status = ftm_test::in_child([&] {
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);  // a violation dumps no core in tests
    ::dup2(fd, STDERR_FILENO);
    body();
    return 0;
  });
  outcome o{status, {}};
  ::lseek(fd, 0, SEEK_SET);
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    o.err.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return o;
}

/// The child was stopped by protected mode: SIGSEGV, after a report naming the pool
/// offset `offset` and `what` the write hit, and the code address.
void require_stopped(const outcome& o, std::uint64_t offset, const std::string& what,
                     bool exact_offset = true) {
  INFO("child's stderr: " << o.err);
  REQUIRE_MESSAGE((WIFSIGNALED(o.status) && WTERMSIG(o.status) == SIGSEGV),
                  "wait status " << o.status);
  CHECK(o.err.find("ftm: protected mode: a write to the pool") != std::string::npos);
  CHECK(o.err.find("at pool offset " + (exact_offset ? std::to_string(offset) + "," : "")) !=
        std::string::npos);
  CHECK(o.err.find(what) != std::string::npos);
  CHECK(o.err.find("Code address 0x") != std::string::npos);
  CHECK(o.err.find("ftm: stopping the program") != std::string::npos);
}

std::string object_at(std::uint64_t offset) {
  return "object at offset " + std::to_string(offset) + " (its byte";
}

template <class E>
std::int64_t value_of(E& pool, ftm::stable<counter> c) {
  return ftm::atomically(pool, [&](auto& tx) { return tx.open_read(c)->value; });
}

constexpr std::uint64_t header_bytes = 16;

}  // namespace

#define PROTECTED_TEST(name) \
  TEST_CASE_TEMPLATE(name, E, ftm::engines::dual_bank, ftm::engines::pmem)

PROTECTED_TEST("protected mode: the pool works as before, and says it is protected") {
  auto pool = protected_pool<E>::make();
  CHECK(pool->protected_mode());
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{1, 0}); });
  for (int i = 0; i < 100; ++i)
    ftm::atomically(*pool, [&](auto& tx) { tx.open(c)->value += 1; });
  {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(c)->value = -5;
    tx.abort();
  }
  CHECK(value_of(*pool, c) == 101);
  ftm::atomically(*pool, [&](auto& tx) { tx.destroy(c); });
  CHECK(pool->check().ok());
  CHECK_FALSE(protected_pool<E>::make(false)->protected_mode());
}

PROTECTED_TEST(
    "protected mode: a raw pointer kept from an opened handle and written after commit") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  const auto o = run_child([&] {
    std::int64_t* kept = nullptr;
    ftm::atomically(*pool, [&](auto& tx) {
      auto w = tx.open(c);
      w->value = 8;
      kept = &w->value;
    });
    *kept = 666;  // after the commit: the object is no longer open
  });
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(value_of(*pool, c) == 8);  // the commit's value, not the stray one
  CHECK(pool->check().ok());
}

PROTECTED_TEST("protected mode: a write through const_cast of a read view aborts the transaction") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  // On a page of its own (another chunk): `c`'s page must stay read-only.
  auto d = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  const auto o = run_child([&] {
    ftm::transaction tx{*pool};
    tx.begin();
    tx.open(d)->bytes[0] = std::byte{2};  // this transaction's write, undone with it
    auto r = tx.open_read(c);
    const_cast<counter&>(*r).value = 666;
    tx.commit();
  });
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(o.err.find("was aborted: none of its writes reach the pool") != std::string::npos);
  // Aborted by the child as it stopped: the pool is whole before any recovery.
  CHECK(pool->check().ok());
  CHECK(value_of(*pool, c) == 7);
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(d)->bytes[0]; }) ==
        std::byte{0});
}

PROTECTED_TEST("protected mode: a write to a mutable member of a read view") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(cached{3, 4}); });
  const auto o = run_child([&] {
    ftm::atomically(*pool, [&](auto& tx) {
      auto r = tx.open_read(c);
      r->memo = 666;  // `mutable`: the compiler lets the read view write it
    });
  });
  require_stopped(o, c.offset() + header_bytes + 8, object_at(c.offset()));
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(c)->memo; }) == 4);
  CHECK(pool->check().ok());
}

PROTECTED_TEST("protected mode: a reference captured by a lambda that outlived its transaction") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  const auto o = run_child([&] {
    std::function<void()> later;
    ftm::atomically(*pool, [&](auto& tx) {
      counter& ref = *tx.open(c);
      ref.value = 9;
      later = [&ref] { ref.spare = 666; };
    });
    later();
  });
  require_stopped(o, c.offset() + header_bytes + 8, object_at(c.offset()));
  CHECK(value_of(*pool, c) == 9);
  CHECK(pool->check().ok());
}

PROTECTED_TEST("protected mode: a write past the end of an object into its neighbour's page") {
  auto pool = protected_pool<E>::make();
  // Not structured bindings: clang 14 cannot capture them in lambdas.
  const auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  REQUIRE(b.offset() == a.offset() + 4096);  // adjacent blocks of a page each
  const auto o = run_child([&] {
    ftm::atomically(*pool, [&](auto& tx) {
      auto w = tx.open(a);
      std::byte* p = w->bytes.data();
      // Past the end of `a` by 32 bytes: into `b`'s block, on the next page.
      std::memset(p, 1, sizeof(page_sized) + header_bytes + 32);
    });
  });
  // Which byte faults first is memset's choice: any of `b`'s block.
  require_stopped(o, b.offset(), "4080-byte object at offset " + std::to_string(b.offset()), false);
  CHECK(pool->check().ok());
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(a)->bytes[0]; }) ==
        std::byte{0});
}

PROTECTED_TEST("protected mode: a write to a destroyed object") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  // Keeps the chunk in use, so that `c`'s block is a block of it once `c` is gone.
  ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{1, 0}); });
  const auto o = run_child([&] {
    counter* kept = nullptr;
    ftm::atomically(*pool, [&](auto& tx) { kept = tx.open(c).get(); });
    ftm::atomically(*pool, [&](auto& tx) { tx.destroy(c); });
    kept->value = 666;
  });
  require_stopped(
      o, c.offset() + header_bytes,
      "no object (the block at offset " + std::to_string(c.offset()) + " holds no object");
  CHECK(pool->check().ok());
}

PROTECTED_TEST("protected mode: without it, the same stray write lands in the pool") {
  // The control: what protected mode catches is what happens silently without it.
  auto pool = protected_pool<E>::make(false);
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  std::int64_t* kept = nullptr;
  ftm::atomically(*pool, [&](auto& tx) { kept = &tx.open(c)->value; });
  *kept = 666;
  CHECK_FALSE(pool->check().ok());  // the banks differ
  // Readers see the committed bank; the next writer starts from the stray value and commits it.
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open(c)->value; }) == 666);
  CHECK(value_of(*pool, c) == 666);
}

PROTECTED_TEST("protected mode: transactions in several threads on objects that share pages") {
  auto pool = protected_pool<E>::make();
  constexpr int threads = 4;
  constexpr int rounds = 2000;
  // 64-byte objects: several on each page, each thread writing its own.
  std::vector<ftm::stable<counter>> mine;
  for (int t = 0; t < threads; ++t)
    mine.push_back(ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0, 0}); }));
  auto shared = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0, 0}); });
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < rounds; ++i) {
        ftm::atomically(*pool, [&](auto& tx) {
          tx.open(mine[static_cast<std::size_t>(t)])->value += 1;
          if (i % 8 == 0) tx.open(shared)->value += 1;
        });
      }
    });
  }
  for (auto& w : workers)
    w.join();
  for (int t = 0; t < threads; ++t)
    CHECK(value_of(*pool, mine[static_cast<std::size_t>(t)]) == rounds);
  CHECK(value_of(*pool, shared) == threads * rounds / 8);
  CHECK(pool->check().ok());
}

TEST_CASE("protected mode: a violation in a child's pmem pool is reported with the pool's file") {
  auto pool = protected_pool<ftm::engines::pmem>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  const auto o = run_child([&] {
    ftm::transaction tx{*pool};
    tx.begin();
    const_cast<counter&>(*tx.open_read(c)).value = 1;
  });
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(o.err.find(pool->path().string()) != std::string::npos);
}

TEST_CASE("protected mode: a supervised task stopped by a violation is restarted") {
  auto pool = protected_pool<ftm::engines::dual_bank>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  auto d = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  ftm::supervisor<ftm::engines::dual_bank> sup(
      *pool,
      {.name = "stray", .intensity = {.max_restarts = 2, .period = std::chrono::seconds(60)}},
      [&](ftm::engines::dual_bank& e, ftm::task_context& ctx) {
        const rlimit no_core{0, 0};
        ::setrlimit(RLIMIT_CORE, &no_core);
        const int devnull = ::open("/dev/null", O_WRONLY);
        ::dup2(devnull, STDERR_FILENO);  // the report: checked by the cases above
        ftm::atomically(e, [&](auto& tx) {
          tx.open(d)->bytes[1] = std::byte{static_cast<unsigned char>(ctx.start_number())};
          if (!ctx.restarted()) const_cast<counter&>(*tx.open_read(c)).value = 666;
        });
      });
  const auto report = sup.run();
  CHECK(report.outcome == ftm::supervision_outcome::completed);
  CHECK(report.stats.restarts == 1);
  CHECK(report.stats.recovered.undone == 0);  // the first instance aborted its own
  CHECK(value_of(*pool, c) == 7);
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(d)->bytes[1]; }) ==
        std::byte{2});
  CHECK(pool->check().ok());
}

PROTECTED_TEST(
    "protected mode: a fork while other threads run transactions leaves the child "
    "working") {
  auto pool = protected_pool<E>::make();
  auto busy = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0, 0}); });
  auto forked = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    // Bounded: stops after the forks, or after this many transactions at most.
    for (int i = 0; i < 2'000'000 && !stop.load(); ++i)
      ftm::atomically(*pool, [&](auto& tx) { tx.open(busy)->value += 1; });
  });
  constexpr int forks = 40;
  int good = 0;
  for (int i = 0; i < forks; ++i) {
    const int status = ftm_test::in_child([&] {
      ::alarm(20);  // a child stuck on a lock its parent's other thread held dies
      // The worker's object is not this child's to write: its page is read-only here.
      ftm::atomically(*pool, [&](auto& tx) { tx.open(forked)->bytes[0] = std::byte{1}; });
      return 0;
    });
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ++good;
  }
  stop = true;
  worker.join();
  CHECK(good == forks);
  CHECK(pool->check().ok());
}

TEST_CASE("protected mode: a violation aborts the thread's transactions on every protected pool") {
  auto one = protected_pool<ftm::engines::dual_bank>::make();
  auto two = protected_pool<ftm::engines::dual_bank>::make();
  auto c = ftm::atomically(*one, [](auto& tx) { return tx.create(counter{7, 0}); });
  auto d1 = ftm::atomically(*one, [](auto& tx) { return tx.create(page_sized{}); });
  auto d2 = ftm::atomically(*two, [](auto& tx) { return tx.create(counter{1, 0}); });
  const auto o = run_child([&] {
    ftm::transaction t1{*one};
    ftm::transaction t2{*two};
    t1.begin();
    t2.begin();
    t1.open(d1)->bytes[0] = std::byte{9};
    t2.open(d2)->value = 2;
    const_cast<counter&>(*t1.open_read(c)).value = 666;
  });
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(o.err.find("aborted: none of its writes reach the pool") != o.err.rfind("aborted: none"));
  CHECK(one->check().ok());
  CHECK(two->check().ok());
  CHECK(value_of(*one, c) == 7);
  CHECK(value_of(*two, d2) == 1);
  CHECK(ftm::atomically(*one, [&](auto& tx) { return tx.open_read(d1)->bytes[0]; }) ==
        std::byte{0});
}

// ---- the mechanism: protection keys where the CPU and kernel have them, mprotect elsewhere

namespace {

/// Whether protected mode uses protection keys for a pool made now (FTM_PROTECTION is
/// left alone: the cases below set it themselves).
bool keys_here() { return ftm::detail::protection_keys().available; }

/// The cases that need protection keys run only where the CPU and kernel have them;
/// elsewhere they say why and pass, or, under `protection_test.keys` (which sets
/// FTM_TEST_SKIP_CODE=77), end the process with that code, which CTest shows as skipped.
bool keys_or_skip() {
  const auto support = ftm::detail::protection_keys();
  if (support.available) return true;
  std::printf("SKIPPED: protection keys are not available here: %s\n", support.reason.c_str());
  std::fflush(stdout);
  if (const char* code = std::getenv("FTM_TEST_SKIP_CODE")) std::exit(std::atoi(code));
  MESSAGE("skipped: protection keys are not available here: " << support.reason);
  return false;
}

}  // namespace

PROTECTED_TEST(
    "protected mode: protection keys are used exactly where the CPU and kernel have "
    "them, and the pool says which mechanism it uses") {
  REQUIRE(std::getenv("FTM_PROTECTION") == nullptr);
  const auto support = ftm::detail::protection_keys();
  const std::string flags = ftm::detail::cpuinfo_protection_key_flags();
  MESSAGE("/proc/cpuinfo: " << flags << "; protection keys: "
                            << (support.available ? "available" : support.reason));
  // pku: the CPU has them; ospke: the kernel turned them on. Both, or no keys.
  CHECK(support.available == (flags == "pku yes, ospke yes"));
  auto pool = protected_pool<E>::make();
  CHECK(pool->uses_protection_keys() == support.available);
  const std::string m = pool->protection_mechanism();
  if (support.available) {
    CHECK(m == "protection keys");
  } else {
    CHECK(m == "mprotect (" + support.reason + ")");
    CHECK(m.find("pkey_alloc failed") != std::string::npos);
  }
  auto off = protected_pool<E>::make(false);
  CHECK_FALSE(off->uses_protection_keys());
  CHECK(off->protection_mechanism() == "off");
}

PROTECTED_TEST(
    "protected mode: FTM_PROTECTION=mprotect chooses mprotect, which still catches "
    "a stray write") {
  ::setenv("FTM_PROTECTION", "mprotect", 1);
  auto pool = protected_pool<E>::make();
  ::unsetenv("FTM_PROTECTION");
  CHECK_FALSE(pool->uses_protection_keys());
  CHECK(pool->protection_mechanism() == "mprotect (FTM_PROTECTION=mprotect in the environment)");
  CHECK(protected_pool<E>::make()->uses_protection_keys() == keys_here());  // read each time
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  const auto o = run_child([&] {
    std::int64_t* kept = nullptr;
    ftm::atomically(*pool, [&](auto& tx) { kept = &tx.open(c)->value; });
    *kept = 666;
  });
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(value_of(*pool, c) == 7);
  CHECK(pool->check().ok());
}

#define KEYS_TEST(name) \
  TEST_CASE_TEMPLATE("protection keys: " name, E, ftm::engines::dual_bank, ftm::engines::pmem)

KEYS_TEST("another thread's write to an object this thread's transaction holds is caught") {
  if (!keys_or_skip()) return;
  auto pool = protected_pool<E>::make();
  REQUIRE(pool->uses_protection_keys());
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{7, 0}); });
  const auto o = run_child([&] {
    std::atomic<counter*> target{nullptr};
    // Made before the transaction: a thread made inside one inherits its rights.
    std::thread other([&] {
      counter* w = nullptr;
      for (int i = 0; i < 10'000'000 && (w = target.load()) == nullptr; ++i)
        std::this_thread::yield();
      if (w != nullptr) w->spare = 666;  // not this thread's transaction's object
    });
    ftm::transaction tx{*pool};
    tx.begin();
    counter* w = tx.open(c).get();
    w->value = 8;  // the holder may
    target.store(w);
    other.join();
    tx.commit();
  });
  require_stopped(o, c.offset() + header_bytes + 8, object_at(c.offset()));
  static_cast<void>(pool->recover());  // the holder died mid-transaction
  CHECK(value_of(*pool, c) == 7);
  CHECK(pool->check().ok());
}

KEYS_TEST("a page an earlier transaction opened is not writable in a later one that did not") {
  if (!keys_or_skip()) return;
  auto pool = protected_pool<E>::make();
  REQUIRE(pool->uses_protection_keys());
  const auto a = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  const auto b = ftm::atomically(*pool, [](auto& tx) { return tx.create(page_sized{}); });
  const auto o = run_child([&] {
    page_sized* kept = nullptr;
    // `a`'s page keeps this transaction's key after it: it is not read-only again.
    ftm::atomically(*pool, [&](auto& tx) { kept = tx.open(a).get(); });
    ftm::atomically(*pool, [&](auto& tx) {
      tx.open(b)->bytes[0] = std::byte{1};  // the key is allowed again, for `b`'s page only
      kept->bytes[0] = std::byte{6};
    });
  });
  require_stopped(o, a.offset() + header_bytes, object_at(a.offset()));
  CHECK(pool->check().ok());
  CHECK(ftm::atomically(*pool, [&](auto& tx) { return tx.open_read(b)->bytes[0]; }) ==
        std::byte{0});
}

KEYS_TEST(
    "an object opened again by the next transaction needs no new protection, and stays "
    "its own") {
  if (!keys_or_skip()) return;
  auto pool = protected_pool<E>::make();
  REQUIRE(pool->uses_protection_keys());
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0, 0}); });
  std::int64_t* kept = nullptr;
  for (int i = 0; i < 100; ++i)
    ftm::atomically(*pool, [&](auto& tx) {
      kept = &tx.open(c)->value;
      ++*kept;
    });
  CHECK(value_of(*pool, c) == 100);
  const auto o = run_child([&] { *kept = 666; });  // after the last commit
  require_stopped(o, c.offset() + header_bytes, object_at(c.offset()));
  CHECK(value_of(*pool, c) == 100);
  CHECK(pool->check().ok());
}

namespace {

/// The kernel mappings of this process (lines of /proc/self/maps).
std::size_t mapping_count() {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  REQUIRE(f != nullptr);
  std::size_t n = 0;
  for (int c; (c = std::fgetc(f)) != EOF;)
    n += c == '\n' ? 1 : 0;
  std::fclose(f);
  return n;
}

}  // namespace

PROTECTED_TEST("protected mode: opening an object again splits no mapping (its page has its own)") {
  auto pool = protected_pool<E>::make();
  auto c = ftm::atomically(*pool, [](auto& tx) { return tx.create(counter{0, 0}); });
  ftm::atomically(*pool, [&](auto& tx) { tx.open(c)->value += 1; });
  const std::size_t between = mapping_count();
  std::size_t during = 0;
  ftm::atomically(*pool, [&](auto& tx) {
    tx.open(c)->value += 1;
    during = mapping_count();
  });
  // Without a mapping of its own, making the page writable splits the view in three.
  CHECK(during == between);
  CHECK(mapping_count() == between);
  CHECK(value_of(*pool, c) == 2);
  CHECK(pool->check().ok());
}
