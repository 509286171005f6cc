// ftm::engines::pmem with durability `power`: what survives a power loss, simulated
// by recording the redo log's writes and flushes and the pool's checkpoints, then
// recovering every crash image those allow; group commit across processes; a killed
// committer; the refusal of a second durability level. Built with FTM_FAULT_INJECTION.
#include "engines.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

using ftm::durability;
using ftm::engines::pmem;
namespace fs = std::filesystem;
namespace layout = ftm::detail::bank_layout;
namespace redo = ftm::detail::redo;

/// Spans two 4 KiB pages of an 8 KiB block, so that a page of it from another moment
/// shows as a torn object.
struct blob {
  std::uint64_t words[640];
};
constexpr int nblobs = 4;
const char* const blob_names[nblobs] = {"b0", "b1", "b2", "b3"};

using state = std::vector<std::uint64_t>;  // each blob's value

std::vector<char> read_all(const fs::path& p) {
  std::vector<char> bytes(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void write_all(const fs::path& p, const std::vector<char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void sync_file(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::fdatasync(fd) == 0);
  ::close(fd);
}

/// Reads the blobs of a pool; a blob whose words differ is reported as torn.
bool read_state(pmem& pool, state& out, std::string& why) {
  out.assign(nblobs, 0);
  bool whole = true;
  ftm::atomically(pool, [&](auto& tx) {
    whole = true;
    for (int i = 0; i < nblobs; ++i) {
      const auto b = tx.open_read(tx.template root<blob>(blob_names[i]));
      out[static_cast<std::size_t>(i)] = b->words[0];
      for (const std::uint64_t w : b->words) {
        if (w != b->words[0]) {
          whole = false;
          why = fmt::format("blob {} is torn ({} and {})", i, b->words[0], w);
        }
      }
    }
  });
  return whole;
}

/// Runs transactions on a `power` pool and, at each point where a crash could happen,
/// recovers every crash image the recorded writes and flushes allow.
class power_loss_sim : public redo::observer {
 public:
  struct result {
    std::uint64_t images = 0;
    std::uint64_t recovery_crashes = 0;
    std::uint64_t checkpoints = 0;  // pool flushes the simulation went through
    std::uint64_t failures = 0;
    std::string first_failure;
    std::uint64_t line_fences = 0;  // cache lines: fences that made log bytes durable
  };

  /// `crash_recovery`: now and then, a first recovery of an image is killed midway.
  /// `flush`: how the log is flushed; `cache_lines` is forced on the page cache, and a
  /// write may then reach the medium in parts of 8 bytes (the only stores x86 makes
  /// power-fail atomic), not of a 512-byte sector.
  explicit power_loss_sim(std::uint64_t seed, bool crash_recovery = true,
                          ftm::flush_method flush = ftm::flush_method::fdatasync)
      : rng_(seed),
        crash_recovery_(crash_recovery),
        flush_(flush),
        tear_(flush == ftm::flush_method::cache_lines ? 8 : 512) {}

  result run(int transactions) {
    // The simulation needs no real flush: on tmpfs, when there is one, they cost nothing.
    fs::path dir = ftm_test::scratch_dir();
    std::error_code ec;
    if (fs::is_directory("/dev/shm", ec)) {
      dir = fs::path("/dev/shm") / fmt::format("ftm-power-test-{}", ::getpid());
      fs::create_directories(dir, ec);
      if (ec) dir = ftm_test::scratch_dir();
    }
    path_ = dir / "power.ftm";
    wal_ = redo::redo_log::path_for(path_);
    image_ = dir / "image.ftm";
    const bool forced = redo::force_cache_lines_on_page_cache;
    redo::force_cache_lines_on_page_cache = flush_ == ftm::flush_method::cache_lines;
    {
      auto pool = pmem::create(path_, {.bank_size = 256 * 1024,
                                       .max_objects_per_transaction = 16,
                                       .level = durability::power,
                                       .log_size = 64 * 1024,
                                       .flush = flush_});
      REQUIRE(pool.log_flush() == flush_);
      ftm::atomically(pool, [](auto& tx) {
        for (const char* name : blob_names)
          static_cast<void>(tx.template root<blob>(name));
      });
      states_.assign(1, state(nblobs, 0));
      // The medium holds all of it now: the simulation starts from here.
      sync_file(path_);
      sync_file(wal_);
      versions_.clear();
      note_pool_versions(true);
      wal_durable_ = read_all(wal_);
      pending_.clear();
      current_ = this;
      redo::io_observer = this;
      ftm::detail::fault_observer = &on_point;
      std::mt19937_64 work(rng_());
      for (int k = 1; k <= transactions; ++k) {
        state next = states_.back();
        std::vector<int> chosen;
        for (int i = 0; i < nblobs; ++i) {
          if (work() % 2 == 0) chosen.push_back(i);
        }
        if (chosen.size() < 2) chosen = {static_cast<int>(k % nblobs), (k + 1) % nblobs};
        for (const int i : chosen)
          next[static_cast<std::size_t>(i)] = static_cast<std::uint64_t>(k);
        states_.push_back(next);  // may happen from the moment commit starts
        ftm::atomically(pool, [&](auto& tx) {
          for (const int i : chosen) {
            auto b = tx.open(tx.template root<blob>(blob_names[i]));
            std::fill(std::begin(b->words), std::end(b->words), static_cast<std::uint64_t>(k));
          }
        });
        acked_ = static_cast<std::size_t>(k);
        crash_here("returned");
      }
      ftm::detail::fault_observer = nullptr;
      redo::io_observer = nullptr;
      current_ = nullptr;
    }
    redo::force_cache_lines_on_page_cache = forced;
    for (const auto& p : {path_, wal_, image_, redo::redo_log::path_for(image_)})
      fs::remove(p);
    if (dir != ftm_test::scratch_dir()) fs::remove(dir, ec);
    return result_;
  }

  // ---- redo::observer ------------------------------------------------------------

  void log_written(std::uint64_t offset, const std::byte* data, std::size_t n) override {
    if (checking_) return;
    pending_.push_back({offset, std::vector<char>(reinterpret_cast<const char*>(data),
                                                  reinterpret_cast<const char*>(data) + n)});
  }
  void log_flushed() override {
    if (checking_) return;
    crash_here("flush");  // the flush may not have happened: any subset of the writes
    for (const auto& w : pending_)
      apply(wal_durable_, w.offset, w.bytes.data(), w.bytes.size());
    pending_.clear();
  }
  void pool_flushed() override {
    if (checking_) return;
    ++result_.checkpoints;
    note_pool_versions(true);
  }
  void log_lines_flushed(std::uint64_t offset, std::size_t n) override {
    if (checking_) return;
    ++result_.line_fences;
    crash_here("fence");  // before the fence: any subset of the lines, or of their words
    // The pending bytes in these lines are durable; the rest of the writes stays pending.
    std::vector<write> rest;
    for (auto& w : pending_) {
      const std::uint64_t end = w.offset + w.bytes.size();
      const std::uint64_t b = std::max(w.offset, offset);
      const std::uint64_t e = std::min(end, offset + n);
      if (b < e) apply(wal_durable_, b, w.bytes.data() + (b - w.offset), e - b);
      auto part = [&](std::uint64_t from, std::uint64_t to) {
        if (from >= to) return;
        const auto* p = w.bytes.data() + (from - w.offset);
        rest.push_back({from, std::vector<char>(p, p + (to - from))});
      };
      part(w.offset, std::min(end, offset));
      part(std::max(w.offset, offset + n), end);
    }
    pending_ = std::move(rest);
  }

 private:
  struct write {
    std::uint64_t offset;
    std::vector<char> bytes;
  };

  static void on_point(std::string_view name) {
    if (current_ == nullptr || current_->checking_) return;
    if (name.starts_with("log.") || name == "commit.mid_redo" || name == "commit.before_release") {
      current_->crash_here(name);
    }
  }

  static void apply(std::vector<char>& file, std::uint64_t off, const char* p, std::size_t n) {
    if (file.size() < off + n) file.resize(off + n, 0);
    std::memcpy(file.data() + off, p, n);
  }

  /// Records the pool's current pages; after a flush they are the only possible ones.
  void note_pool_versions(bool flushed) {
    const std::vector<char> now = read_all(path_);
    const std::size_t pages = (now.size() + page - 1) / page;
    if (flushed || versions_.size() != pages) versions_.assign(pages, {});
    for (std::size_t p = 0; p < pages; ++p) {
      std::vector<char> v(
          now.begin() + static_cast<std::ptrdiff_t>(p * page),
          now.begin() + static_cast<std::ptrdiff_t>(std::min(now.size(), (p + 1) * page)));
      if (versions_[p].empty() || versions_[p].back() != v) versions_[p].push_back(std::move(v));
    }
  }

  /// Every crash image at this moment: pool pages from any version since the last
  /// pool flush, the log's durable bytes plus a subset of the pending writes (all
  /// subsets of up to 6, a sample beyond), or one of them torn.
  void crash_here(std::string_view where) {
    checking_ = true;
    note_pool_versions(false);
    const std::size_t n = pending_.size();
    std::vector<std::vector<char>> logs;
    if (n <= 6) {
      for (std::uint64_t mask = 0; mask < (std::uint64_t{1} << n); ++mask)
        logs.push_back(log_image(mask, n, 0));
    } else {
      logs.push_back(log_image(0, n, 0));
      logs.push_back(log_image(~std::uint64_t{0}, n, 0));
      for (int i = 0; i < 64; ++i)
        logs.push_back(log_image(rng_(), n, 0));
    }
    for (std::size_t t = 0; t < n; ++t) {
      if (pending_[t].bytes.size() <= tear_) continue;
      // Write t torn: the writes before it, and part of it.
      const std::uint64_t before = (std::uint64_t{1} << t) - 1;
      logs.push_back(log_image(before, n, t + 1));
    }
    for (const auto& log : logs) {
      for (int variant = 0; variant < 3; ++variant)
        check_image(where, log, variant);
    }
    checking_ = false;
  }

  /// The durable log plus the pending writes in `mask`; `torn` = t + 1 tears write t.
  std::vector<char> log_image(std::uint64_t mask, std::size_t n, std::size_t torn) {
    std::vector<char> img = wal_durable_;
    for (std::size_t i = 0; i < n && i < 64; ++i) {
      if ((mask >> i & 1) == 0) continue;
      apply(img, pending_[i].offset, pending_[i].bytes.data(), pending_[i].bytes.size());
    }
    if (torn != 0) {
      const write& w = pending_[torn - 1];
      const std::size_t sectors = w.bytes.size() / tear_;
      // A random subset of its sectors (or words) reached the medium.
      for (std::size_t s = 0; s < sectors; ++s) {
        if (rng_() % 2 == 0) apply(img, w.offset + s * tear_, w.bytes.data() + s * tear_, tear_);
      }
    }
    return img;
  }

  void check_image(std::string_view where, const std::vector<char>& log, int variant) {
    // Pool pages: 0 all as flushed, 1 all current, 2 each from a random version.
    std::vector<char> pool;
    for (const auto& vs : versions_) {
      const auto& v = variant == 0 ? vs.front() : variant == 1 ? vs.back() : vs[rng_() % vs.size()];
      pool.insert(pool.end(), v.begin(), v.end());
    }
    // A new boot: the pool's owners are gone.
    layout::pool_header h{};
    std::memcpy(&h, pool.data(), sizeof h);
    std::memset(h.boot_id, 0, sizeof h.boot_id);
    std::memcpy(h.boot_id, "simulated-earlier-boot", 22);
    std::memcpy(pool.data(), &h, sizeof h);
    write_all(image_, pool);
    write_all(redo::redo_log::path_for(image_), log);
    ++result_.images;
    // Now and then, recovery itself dies once first, and the next one completes it.
    if (crash_recovery_ && result_.images % 10 == 0) {
      const char* point = result_.images % 20 == 0 ? "log.recover_replayed" : "log.recover_copied";
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ftm::detail::arm_fault(point, 1);
        try {
          auto p = pmem::open(image_, reopen_options());
        } catch (...) {
        }
        ::_exit(3);
      }
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (WIFSIGNALED(status)) ++result_.recovery_crashes;
    }
    std::string why;
    try {
      auto p = pmem::open(image_, reopen_options());
      if (const auto c = p.check(); !c.ok()) {
        std::fprintf(stderr, "right after recovery: %s; pool level %d\n",
                     c.problems.front().c_str(), int(p.level()));
      }
      state s;
      if (!read_state(p, s, why)) {
        // why is set
      } else if (!p.check().ok()) {
        why = fmt::format("check() failed: {}", p.check().problems.front());
      } else {
        const auto it = std::find(states_.begin(), states_.end(), s);
        if (it == states_.end()) {
          why =
              fmt::format("a state after no prefix of the transactions: [{}]", fmt::join(s, ", "));
        } else {
          // The last matching prefix: a transaction that changed nothing repeats a state.
          std::size_t last = static_cast<std::size_t>(it - states_.begin());
          for (std::size_t q = last; q < states_.size(); ++q) {
            if (states_[q] == s) last = q;
          }
          if (last < acked_) {
            why = fmt::format("the state after {} transactions, but {} had returned", last, acked_);
          }
        }
      }
    } catch (const std::exception& e) {
      why = fmt::format("recovery failed: {}", e.what());
    }
    if (!why.empty()) {
      if (result_.failures == 0) {
        result_.first_failure = fmt::format("image {} at '{}' (log variant, pool variant {}): {}",
                                            result_.images, where, variant, why);
      }
      ++result_.failures;
    }
  }

  /// Recovery of an image flushes the log as the run did.
  pmem::options reopen_options() const {
    pmem::options o;
    o.level = durability::power;
    o.flush = flush_;
    return o;
  }

  static constexpr std::size_t page = 4096;
  static inline power_loss_sim* current_ = nullptr;

  std::mt19937_64 rng_;
  fs::path path_, wal_, image_;
  std::vector<state> states_;  // states_[p]: after the first p transactions
  std::size_t acked_ = 0;      // transactions whose commit returned
  std::vector<std::vector<std::vector<char>>> versions_;  // per page, since the last flush
  std::vector<char> wal_durable_;
  std::vector<write> pending_;
  bool checking_ = false;
  bool crash_recovery_ = true;
  ftm::flush_method flush_ = ftm::flush_method::fdatasync;
  std::size_t tear_ = 512;  // the unit in which a write may be torn
  result result_;
};

/// Runs `body` in a forked child that dies with its parent; returns its wait status.
int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int code = 1;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

struct counter {
  std::uint64_t value;
};

constexpr pmem::options power_small{.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 256 * 1024};

std::uint64_t records_in_log(pmem& pool) {
  redo::redo_log log(redo::redo_log::path_for(pool.path()), pool.pool_id(), -1, nullptr, 0);
  return log.replay(
      0, pool.bank_size(), [](void*, std::uint64_t, std::uint32_t, const std::byte*) {}, nullptr);
}

std::uint64_t value_of(pmem& pool, const char* name) {
  return ftm::atomically(
      pool, [&](auto& tx) { return tx.open_read(tx.template root<counter>(name))->value; });
}

}  // namespace

TEST_CASE("power: every crash image of a simulated power loss recovers to a prefix") {
  power_loss_sim sim(20261127);
  const auto r = sim.run(30);
  MESSAGE(fmt::format(
      "power loss: {} crash images recovered ({} with a crash inside recovery), {} checkpoints",
      r.images, r.recovery_crashes, r.checkpoints));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 800);
  CHECK(r.recovery_crashes > 50);
  CHECK(r.checkpoints > 3);
}

TEST_CASE("power: the power-loss checker catches a commit acknowledged before its flush") {
  redo::broken_ack_before_flush = true;
  power_loss_sim sim(7, false);
  const auto r = sim.run(4);
  redo::broken_ack_before_flush = false;
  MESSAGE(fmt::format("broken order (ack before flush): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  CHECK(r.failures > 0);
}

TEST_CASE("power: the power-loss checker catches phase 2 run before the append") {
  redo::broken_redo_before_append = true;
  power_loss_sim sim(11, false);
  const auto r = sim.run(12);
  redo::broken_redo_before_append = false;
  MESSAGE(fmt::format("broken order (phase 2 before append): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  CHECK(r.failures > 0);
}

TEST_CASE("power: two processes commit at once and share flushes (group commit)") {
  // Each thread its own counter: transactions that conflict wait for each other's
  // whole commit, flush included, and could not share one.
  const char* const names[4] = {"p0", "p1", "c0", "c1"};
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [&](auto& tx) {
      for (const char* name : names)
        static_cast<void>(tx.template root<counter>(name));
    });
  }
  struct counts : redo::observer {
    std::atomic<std::uint64_t> flushes{0};
    void log_written(std::uint64_t, const std::byte*, std::size_t) override {}
    void log_flushed() override { flushes.fetch_add(1); }
    void pool_flushed() override {}
  };
  void* mem =
      ::mmap(nullptr, sizeof(counts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* shared = ::new (mem) counts;
  redo::io_observer = shared;
  constexpr int per_thread = 150;
  auto work = [&](int first) {
    auto pool = pmem::open(path, durability::power);
    std::vector<std::thread> ts;
    for (int t = first; t < first + 2; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          ftm::atomically(pool,
                          [&](auto& tx) { ++tx.open(tx.template root<counter>(names[t]))->value; });
        }
      });
    }
    for (auto& t : ts)
      t.join();
  };
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    work(2);
    ::_exit(0);
  }
  work(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  redo::io_observer = nullptr;
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const std::uint64_t commits = 4 * per_thread;
  const std::uint64_t flushes = shared->flushes.load();
  MESSAGE(fmt::format("group commit: {} commits by 4 threads in 2 processes, {} log flushes",
                      commits, flushes));
  CHECK(flushes < commits);
  // A fresh process opens the pool that no one uses: the log is replayed.
  const int fresh = in_child([&] {
    auto pool = pmem::open(path, durability::power);
    bool ok = pool.check().ok();
    for (const char* name : names)
      ok = ok && value_of(pool, name) == per_thread;
    return ok ? 0 : 1;
  });
  CHECK(WIFEXITED(fresh));
  CHECK(WEXITSTATUS(fresh) == 0);
  ::munmap(mem, sizeof(counts));
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
}

TEST_CASE("power: a committer killed mid-commit is made durable and completed by another process") {
  for (const char* point : {"log.before_append", "log.after_append"}) {
    CAPTURE(point);
    const fs::path path = ftm_test::scratch_file("power");
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [](auto& tx) { tx.template root<counter>("x"); });
    const std::uint64_t before = records_in_log(pool);
    const int status = in_child([&] {
      auto mine = pmem::open(path, durability::power);
      ftm::detail::arm_fault(point, 1);
      ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
      return 0;
    });
    REQUIRE(WIFSIGNALED(status));
    const auto report = pool.recover();
    CHECK(report.redone == 1);
    CHECK(value_of(pool, "x") == 7);
    // Exactly one record for it: the child's, or recovery's when the child had none.
    CHECK(records_in_log(pool) == before + 1);
    CHECK(pool.check().ok());
  }
}

TEST_CASE("power: committers asleep behind a flusher that dies take the flush over") {
  const fs::path path = ftm_test::scratch_file("power");
  auto pool = pmem::create(path, power_small);
  ftm::atomically(pool, [](auto& tx) {
    tx.template root<counter>("x");
    tx.template root<counter>("y");
  });
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  static int ready_fd = -1;
  ready_fd = ready[1];
  // The child stops forever inside its flush, holding the flush lock.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto mine = pmem::open(path, durability::power);
    ftm::detail::fault_observer = [](std::string_view name) {
      if (name != "log.mid_flush") return;
      const char c = 1;
      static_cast<void>(::write(ready_fd, &c, 1));
      for (;;)
        ::pause();
    };
    ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
    ::_exit(1);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  // Committers here find the flush lock taken and sleep until the flush ends.
  std::atomic<int> done{0};
  std::vector<std::thread> committers;
  for (int i = 0; i < 3; ++i) {
    committers.emplace_back([&] {
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("y"))->value; });
      ++done;
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(done.load() == 0);  // still waiting for the stopped flusher
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (done.load() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (done.load() < 3) {
    for (auto& t : committers)
      t.detach();  // stuck for good: joining them would hang the test
    FAIL("committers still wait 10 s after their flusher died");
  }
  for (auto& t : committers)
    t.join();  // one of them took the dead flusher's lock over
  ::close(ready[0]);
  ::close(ready[1]);
  pool.recover();
  CHECK(value_of(pool, "x") == 7);  // the dead flusher's record was logged: redone
  CHECK(value_of(pool, "y") == 3);
  CHECK(pool.check().ok());
}

TEST_CASE("power: a pool open with one durability level refuses an opener asking for the other") {
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    CHECK(pool.level() == durability::power);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 1; });
    CHECK_THROWS_WITH_AS(pmem::open(path, durability::process),
                         doctest::Contains("open with durability power"), ftm::usage_error);
    auto second = pmem::open(path, durability::power);
    ftm::atomically(second, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    CHECK(value_of(pool, "x") == 2);
  }
  {
    // No one has it open: a `process` opener may take it, and then decides.
    auto pool = pmem::open(path);
    CHECK(pool.level() == durability::process);
    CHECK(value_of(pool, "x") == 2);
    CHECK_THROWS_AS(pmem::open(path, durability::power), ftm::usage_error);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  {
    auto pool = pmem::open(path, durability::power);
    CHECK(pool.level() == durability::power);
    CHECK(value_of(pool, "x") == 3);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  auto pool = pmem::open(path);
  CHECK(value_of(pool, "x") == 4);
  CHECK(pool.check().ok());
}

TEST_CASE("power: read-only transactions, and every transaction at process, touch no log") {
  struct counts : redo::observer {
    std::uint64_t writes = 0, flushes = 0, pool_flushes = 0;
    void log_written(std::uint64_t, const std::byte*, std::size_t) override { ++writes; }
    void log_flushed() override { ++flushes; }
    void pool_flushed() override { ++pool_flushes; }
  } seen;
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 5; });
    redo::io_observer = &seen;
    for (int i = 0; i < 20; ++i)
      CHECK(value_of(pool, "x") == 5);
    CHECK(seen.writes + seen.flushes + seen.pool_flushes == 0);
    // The observer is live: one writing commit is one record and one flush.
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    CHECK(seen.writes == 1);
    CHECK(seen.flushes == 1);
    redo::io_observer = nullptr;
  }
  {
    auto pool = pmem::open(path, durability::process);  // switches: flushes, then no more
    redo::io_observer = &seen;
    seen = counts{};
    for (int i = 0; i < 20; ++i) {
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
    }
    CHECK(value_of(pool, "x") == 26);
    CHECK(seen.writes + seen.flushes + seen.pool_flushes == 0);
    redo::io_observer = nullptr;
  }
}

TEST_CASE("power: a missing or foreign redo log is a bad pool, and the pool is left as it was") {
  const fs::path path = ftm_test::scratch_file("power");
  const fs::path other = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, power_small);
    ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 9; });
    auto second = pmem::create(other, power_small);
  }
  const auto wal = redo::redo_log::path_for(path);
  const auto bytes = read_all(path);
  fs::rename(wal, wal.string() + ".away");
  CHECK_THROWS_WITH_AS(pmem::open(path, durability::power), doctest::Contains("is missing"),
                       ftm::bad_pool);
  CHECK(read_all(path) == bytes);
  fs::copy_file(redo::redo_log::path_for(other), wal);
  CHECK_THROWS_WITH_AS(pmem::open(path, durability::process),
                       doctest::Contains("belongs to another pool"), ftm::bad_pool);
  CHECK(read_all(path) == bytes);
  fs::remove(wal);
  fs::rename(wal.string() + ".away", wal);
  {
    auto pool = pmem::open(path, durability::process);  // from power to process
    CHECK(value_of(pool, "x") == 9);
  }
  // A foreign log beside a `process` pool is replaced when the pool goes to `power`.
  fs::remove(wal);
  fs::copy_file(redo::redo_log::path_for(other), wal);
  {
    auto pool = pmem::open(path, durability::power);
    CHECK(value_of(pool, "x") == 9);
    ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  auto pool = pmem::open(path, durability::power);  // alone: rebuilt from the new log
  CHECK(value_of(pool, "x") == 10);
}

TEST_CASE(
    "power: a checkpoint completes a dead committer, and one killed mid-checkpoint is redone") {
  struct counts : redo::observer {
    std::uint64_t pool_flushes = 0;
    void log_written(std::uint64_t, const std::byte*, std::size_t) override {}
    void log_flushed() override {}
    void pool_flushed() override { ++pool_flushes; }
  } seen;
  const fs::path path = ftm_test::scratch_file("power");
  auto opts = power_small;
  opts.log_size = 64 * 1024;  // a checkpoint every dozen 5 KiB records
  auto pool = pmem::create(path, opts);
  ftm::atomically(pool, [](auto& tx) {
    static_cast<void>(tx.template root<counter>("x"));
    static_cast<void>(tx.template root<blob>("big"));
  });
  auto write_big = [](pmem& p, std::uint64_t v) {
    ftm::atomically(p, [&](auto& tx) {
      auto b = tx.open(tx.template root<blob>("big"));
      std::fill(std::begin(b->words), std::end(b->words), v);
    });
  };
  // A committer dies with its record logged and its phase 2 not done.
  const int died = in_child([&] {
    auto mine = pmem::open(path, durability::power);
    ftm::detail::arm_fault("log.after_append", 1);
    ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
    return 0;
  });
  REQUIRE(WIFSIGNALED(died));
  redo::io_observer = &seen;
  for (std::uint64_t v = 1; v <= 30; ++v)
    write_big(pool, v);  // fills the log: a checkpoint must wait for the dead one
  CHECK(seen.pool_flushes > 0);
  CHECK(value_of(pool, "x") == 7);
  // A process dies in a checkpoint, holding the append lock.
  const int died_again = in_child([&] {
    auto mine = pmem::open(path, durability::power);
    ftm::detail::arm_fault("log.mid_checkpoint", 1);
    for (std::uint64_t v = 100; v < 200; ++v)
      write_big(mine, v);
    return 0;
  });
  REQUIRE(WIFSIGNALED(died_again));
  const auto before = seen.pool_flushes;
  write_big(pool, 500);  // its append finds the lock's owner dead and checkpoints again
  CHECK(seen.pool_flushes > before);
  redo::io_observer = nullptr;
  CHECK(pool.check().ok());
  // A fresh process, alone on the pool: it rebuilds it from the log.
  const int fresh = in_child([&] {
    auto p = pmem::open(path, durability::power);
    return value_of(p, "x") == 7 &&
                   ftm::atomically(p,
                                   [](auto& tx) {
                                     return tx.open_read(tx.template root<blob>("big"))->words[639];
                                   }) == 500 &&
                   p.check().ok()
               ? 0
               : 1;
  });
  CHECK(WIFEXITED(fresh));
  CHECK(WEXITSTATUS(fresh) == 0);
}

// ---- the cache-line mode (ftm::flush_method::cache_lines) ------------------------------
//
// No file system here maps with MAP_SYNC (no DAX device): these tests force the mode
// on the page cache (redo::force_cache_lines_on_page_cache), where its stores are not
// durable, and check what it does and in which order: which bytes each fence makes
// durable, in the simulator above.

namespace {

/// Turns the forced cache-line mode on (or off) for a scope.
class forced_cache_lines {
 public:
  explicit forced_cache_lines(bool on = true) : was_(redo::force_cache_lines_on_page_cache) {
    redo::force_cache_lines_on_page_cache = on;
  }
  forced_cache_lines(const forced_cache_lines&) = delete;
  forced_cache_lines& operator=(const forced_cache_lines&) = delete;
  ~forced_cache_lines() { redo::force_cache_lines_on_page_cache = was_; }

 private:
  bool was_;
};

constexpr pmem::options lines_small{.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 256 * 1024,
                                    .flush = ftm::flush_method::cache_lines};

/// Whether a file in `dir` maps with MAP_SYNC (a DAX file system).
bool maps_with_map_sync(const fs::path& dir) {
  const fs::path probe = dir / fmt::format("ftm-map-sync-probe-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, 4096) == 0);
  void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
  const bool ok = p != MAP_FAILED;
  if (ok) ::munmap(p, 4096);
  ::close(fd);
  fs::remove(probe);
  return ok;
}

}  // namespace

TEST_CASE("power, cache lines: every crash image of a simulated power loss recovers to a prefix") {
  power_loss_sim sim(20261128, true, ftm::flush_method::cache_lines);
  const auto r = sim.run(30);
  MESSAGE(fmt::format(
      "power loss, cache lines: {} crash images recovered ({} with a crash inside recovery), "
      "{} checkpoints, {} fences",
      r.images, r.recovery_crashes, r.checkpoints, r.line_fences));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 800);
  CHECK(r.recovery_crashes > 50);
  CHECK(r.checkpoints > 3);
  CHECK(r.line_fences > 30);  // one per record, two per new epoch: the mode was used
}

TEST_CASE("power, cache lines: the power-loss checker catches a record's last line not flushed") {
  redo::broken_short_flush = true;
  power_loss_sim sim(13, false, ftm::flush_method::cache_lines);
  const auto r = sim.run(4);
  redo::broken_short_flush = false;
  MESSAGE(fmt::format("broken flush (last line left out): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  CHECK(r.failures > 0);
}

TEST_CASE("power, cache lines: the power-loss checker catches an epoch header torn with no copy") {
  redo::broken_single_header = true;
  power_loss_sim sim(17, false, ftm::flush_method::cache_lines);
  const auto r = sim.run(20);
  redo::broken_single_header = false;
  MESSAGE(fmt::format("broken header (no second copy): {} of {} images failed, e.g. {}", r.failures,
                      r.images, r.first_failure));
  CHECK(r.checkpoints > 1);
  CHECK(r.failures > 0);
}

TEST_CASE(
    "power: flush_method::cache_lines where the log cannot map with MAP_SYNC is an io_error, "
    "and automatic flushes with fdatasync there") {
  const forced_cache_lines off(false);
  std::vector<fs::path> dirs{ftm_test::scratch_dir()};
  if (fs::is_directory("/dev/shm")) dirs.emplace_back("/dev/shm");  // tmpfs
  for (const auto& dir : dirs) {
    CAPTURE(dir);
    const fs::path path = dir / fmt::format("ftm-lines-{}.ftm", ::getpid());
    const fs::path wal = redo::redo_log::path_for(path);
    if (maps_with_map_sync(dir)) {
      // A DAX file system: the mode is there, and automatic takes it.
      MESSAGE(fmt::format("{} maps with MAP_SYNC: cache lines are used", dir.string()));
      auto pool = pmem::create(path, lines_small);
      CHECK(pool.log_flush() == ftm::flush_method::cache_lines);
      auto other = pmem::open(path, durability::power);
      CHECK(other.log_flush() == ftm::flush_method::cache_lines);
    } else {
      const std::string names_log =
          fmt::format("cannot flush the redo log '{}' by cache lines", wal.string());
      CHECK_THROWS_WITH_AS(pmem::create(path, lines_small), doctest::Contains(names_log.c_str()),
                           ftm::io_error);
      CHECK_THROWS_WITH_AS(pmem::create(path, lines_small), doctest::Contains("MAP_SYNC"),
                           ftm::io_error);
      CHECK(!fs::exists(path));  // nothing made
      CHECK(!fs::exists(wal));
      {
        auto pool = pmem::create(path, power_small);  // automatic
        CHECK(pool.log_flush() == ftm::flush_method::fdatasync);
        ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 3; });
      }
      // Alone on the pool, a cache-line opener recovers it and then cannot flush: the
      // pool is left as the log says.
      CHECK_THROWS_WITH_AS(pmem::open(path, lines_small), doctest::Contains("MAP_SYNC"),
                           ftm::io_error);
      auto pool = pmem::open(path, durability::power);
      CHECK(pool.log_flush() == ftm::flush_method::fdatasync);
      CHECK(value_of(pool, "x") == 3);
      CHECK(pool.check().ok());
    }
    fs::remove(path);
    fs::remove(wal);
  }
  // A `process` pool has no log to flush.
  const fs::path path = ftm_test::scratch_file("process");
  auto pool = pmem::create(path);
  CHECK(!pool.log_flush().has_value());
}

TEST_CASE("power, cache lines: every process of a pool flushes its log the same way") {
  const forced_cache_lines on;
  const fs::path path = ftm_test::scratch_file("power");
  auto pool = pmem::create(path, lines_small);
  CHECK(pool.log_flush() == ftm::flush_method::cache_lines);
  ftm::atomically(pool, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 1; });
  auto by_sync = power_small;
  by_sync.flush = ftm::flush_method::fdatasync;
  CHECK_THROWS_WITH_AS(pmem::open(path, by_sync),
                       doctest::Contains("redo log flushed by cache_lines in other processes"),
                       ftm::usage_error);
  auto second = pmem::open(path, durability::power);  // automatic: as the others do
  CHECK(second.log_flush() == ftm::flush_method::cache_lines);
  ftm::atomically(second, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  CHECK(value_of(pool, "x") == 2);
  const auto seen = pmem::inspect(path).header();
  CHECK(seen.level == durability::power);
  CHECK(seen.log_flush == ftm::flush_method::cache_lines);
}

TEST_CASE("power, cache lines: two processes commit at once, without a log fdatasync") {
  const forced_cache_lines on;
  const char* const names[4] = {"p0", "p1", "c0", "c1"};
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, lines_small);
    ftm::atomically(pool, [&](auto& tx) {
      for (const char* name : names)
        static_cast<void>(tx.template root<counter>(name));
    });
  }
  struct counts : redo::observer {
    std::atomic<std::uint64_t> syncs{0}, fences{0};
    void log_written(std::uint64_t, const std::byte*, std::size_t) override {}
    void log_flushed() override { syncs.fetch_add(1); }
    void pool_flushed() override {}
    void log_lines_flushed(std::uint64_t, std::size_t) override { fences.fetch_add(1); }
  };
  void* mem =
      ::mmap(nullptr, sizeof(counts), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* shared = ::new (mem) counts;
  redo::io_observer = shared;
  constexpr int per_thread = 300;
  auto work = [&](int first) {
    auto pool = pmem::open(path, lines_small);
    std::vector<std::thread> ts;
    for (int t = first; t < first + 2; ++t) {
      ts.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i) {
          ftm::atomically(pool,
                          [&](auto& tx) { ++tx.open(tx.template root<counter>(names[t]))->value; });
        }
      });
    }
    for (auto& t : ts)
      t.join();
  };
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    work(2);
    ::_exit(0);
  }
  work(0);
  int status = 0;
  ::waitpid(child, &status, 0);
  redo::io_observer = nullptr;
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  MESSAGE(fmt::format("cache lines: {} commits by 4 threads in 2 processes, {} fences, {} syncs",
                      4 * per_thread, shared->fences.load(), shared->syncs.load()));
  CHECK(shared->syncs.load() == 0);
  CHECK(shared->fences.load() >= 4 * per_thread);
  // A fresh process alone on the pool rebuilds it from the log: no record was lost
  // or mixed with another.
  const int fresh = in_child([&] {
    auto pool = pmem::open(path, lines_small);
    bool ok = pool.check().ok() && pool.log_flush() == ftm::flush_method::cache_lines;
    for (const char* name : names)
      ok = ok && value_of(pool, name) == per_thread;
    return ok && pool.opening_recovery().redone > 0 ? 0 : 1;
  });
  CHECK(WIFEXITED(fresh));
  CHECK(WEXITSTATUS(fresh) == 0);
  ::munmap(mem, sizeof(counts));
}

TEST_CASE("power, cache lines: a committer killed mid-commit is completed by another process") {
  const forced_cache_lines on;
  for (const char* point : {"log.before_append", "log.after_append"}) {
    CAPTURE(point);
    const fs::path path = ftm_test::scratch_file("power");
    auto pool = pmem::create(path, lines_small);
    ftm::atomically(pool, [](auto& tx) { tx.template root<counter>("x"); });
    const std::uint64_t before = records_in_log(pool);
    const int status = in_child([&] {
      auto mine = pmem::open(path, durability::power);
      ftm::detail::arm_fault(point, 1);
      ftm::atomically(mine, [](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 7; });
      return 0;
    });
    REQUIRE(WIFSIGNALED(status));
    const auto report = pool.recover();
    CHECK(report.redone == 1);
    CHECK(value_of(pool, "x") == 7);
    CHECK(records_in_log(pool) == before + 1);
    CHECK(pool.check().ok());
  }
}
