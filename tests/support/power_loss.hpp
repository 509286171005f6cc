#ifndef FTM_TESTS_SUPPORT_POWER_LOSS_HPP
#define FTM_TESTS_SUPPORT_POWER_LOSS_HPP

// The power-loss simulator of the `power` tests: a redo-log I/O seam
// (`ftm::detail::redo::log_io`) that records every write and flush of the log and
// every flush of the pool, and recovers every crash image they allow with the real
// `pmem::open`. Its deliberately broken variants (`power_loss_sim::broken`) drop or
// shorten what the seam forwards, to show that it catches wrong orders.
#include "../engines.hpp"
#include "../process.hpp"

#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ftm_test::power_loss {

using ftm_test::in_child;

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
inline const char* const blob_names[nblobs] = {"b0", "b1", "b2", "b3"};

/// The objects of the group-commit scenario: a transaction writes two, and their record
/// (40 + 2 * (16 + 720) bytes) covers 3 or 4 sectors of the log.
struct slab {
  std::uint64_t words[90];
};

using state = std::vector<std::uint64_t>;  // each object's value

inline std::vector<char> read_all(const fs::path& p) {
  std::vector<char> bytes(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

inline void sync_file(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::fdatasync(fd) == 0);
  ::close(fd);
}

/// Reads the objects `names` of a pool; an object whose words differ is reported as torn.
template <class T>
inline bool read_state(pmem& pool, const std::vector<std::string>& names, state& out,
                       std::string& why) {
  out.assign(names.size(), 0);
  bool whole = true;
  ftm::atomically(pool, [&](auto& tx) {
    whole = true;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto b = tx.open_read(tx.template root<T>(names[i].c_str()));
      out[i] = b->words[0];
      for (const std::uint64_t w : b->words) {
        if (w != b->words[0]) {
          whole = false;
          why = fmt::format("object {} is torn ({} and {})", names[i], b->words[0], w);
        }
      }
    }
  });
  return whole;
}

/// A 128-bit hash of bytes, to recognise a crash image already recovered.
struct digest {
  std::uint64_t a = 0, b = 0;
  friend bool operator==(const digest&, const digest&) = default;
};
struct digest_hash {
  std::size_t operator()(const digest& d) const noexcept { return d.a ^ (d.b * 31); }
};
inline std::uint64_t mix(std::uint64_t h, std::uint64_t w) noexcept {
  h = (h ^ w) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}
inline digest mix(digest d, std::uint64_t w) noexcept {
  std::uint64_t b = (d.b ^ w) * 0xc2b2ae3d27d4eb4full;  // a second, independent lane
  return {mix(d.a, w), b ^ (b >> 31)};
}
inline digest mix(digest d, const digest& e) noexcept { return mix(mix(d, e.a), e.b); }
inline digest hash_bytes(const char* p, std::size_t n) noexcept {
  digest d{0x243f6a8885a308d3ull ^ n, 0x13198a2e03707344ull ^ n};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    d = mix(d, w);
  }
  for (; i < n; ++i)
    d = mix(d, static_cast<unsigned char>(p[i]));
  return d;
}

/// Runs transactions on a `power` pool and, at each point where a crash could happen,
/// recovers every crash image the recorded writes and flushes allow.
///
/// The log's unit of persistence (`tear_`) is the smallest part of a write that a power
/// loss keeps or loses whole. With `fdatasync` it is the 512-byte sector: the log is
/// written with `pwrite` through the page cache, whose writeback may send any dirty page
/// at any time and in any order, and a disk writes a request of several sectors sector
/// by sector, so a power loss may keep any subset of the sectors written since the last
/// flush. A sector is the smallest unit a disk writes atomically (a 4 KiB-sector disk
/// gives a subset of these images). With cache lines it is the aligned 8-byte word, the
/// only store x86 makes power-fail atomic: a line may reach the medium in parts, any
/// time after its store, and a fence makes exactly the lines it flushed durable. So a
/// write is one pending unit per unit-sized block it touches, each the whole block as it
/// was right after that write; a block written twice since it was last made durable has
/// two units, and the later one chosen wins, which is every content the block had. No
/// unit is torn within itself.
///
/// At a crash point with n pending units every subset is recovered when n <= 16 at a
/// flush or fence, n <= 12 elsewhere (`exhaustive_limit`, `between_limit`), each subset with one
/// pool image: in turn the pool as flushed, as written, and a mix of its pages' versions (with all
/// three when n <= 8). Beyond that: prefixes in write order (none to all; beyond 64 units 32 evenly
/// spread, and all but the last unit) with the three pools, and 64 random subsets (between flushes:
/// each prefix with one, and 16). A record in the cache-line mode is hundreds of words, so its
/// fence is always sampled. Images byte-identical to one already recovered with the same
/// expectations are counted but not recovered again; every other image is recovered by the real
/// `pmem::open`, nothing about recovery is predicted.
class power_loss_sim final : public redo::log_io {
 public:
  /// Deliberately wrong orders, for the test of the tester: what the seam does instead
  /// of forwarding faithfully.
  enum class broken {
    none,
    /// The log's flushes are lost: every commit is acknowledged before its record is on
    /// the medium.
    ack_before_flush,
    /// A record's objects reach the second bank (phase 2) as the record is written,
    /// before it is on the medium.
    redo_before_append,
    /// Cache lines: a record's last line is not flushed.
    short_flush,
    /// Cache lines: a new epoch's header is written without its second copy.
    single_header,
  };
  broken order = broken::none;

  struct result {
    std::uint64_t images = 0;      // recovered by pmem::open
    std::uint64_t duplicates = 0;  // identical to an image already recovered
    std::uint64_t unsampled = 0;   // distinct images left out by `sample`
    std::uint64_t recovery_crashes = 0;
    std::uint64_t checkpoints = 0;        // pool flushes the simulation went through
    std::uint64_t exhaustive_points = 0;  // crash points whose every subset was recovered
    std::uint64_t sampled_points = 0;     // crash points with more pending units
    std::size_t max_exhaustive_n = 0;     // the most pending units enumerated exhaustively
    std::size_t max_n = 0;                // the most pending units at a crash point
    std::uint64_t line_fences = 0;        // cache lines: fences that made log bytes durable
    std::size_t unit = 0;                 // bytes in a pending unit
    std::uint64_t failures = 0;
    std::string first_failure;

    [[nodiscard]] std::string summary() const {
      return fmt::format(
          "{} crash points enumerated exhaustively (up to n = {} pending {}-byte units, "
          "{} subsets), {} sampled by prefixes and random subsets (n up to {}); {} crash images "
          "recovered ({} with a crash inside recovery), {} duplicate images skipped{}; {} "
          "checkpoints{}",
          exhaustive_points, max_exhaustive_n, unit, std::uint64_t{1} << max_exhaustive_n,
          sampled_points, max_n, images, recovery_crashes, duplicates,
          unsampled == 0 ? std::string()
                         : fmt::format(", {} left out (one in {} recovered)", unsampled,
                                       (images + unsampled) / std::max<std::uint64_t>(images, 1)),
          checkpoints,
          line_fences == 0 ? std::string() : fmt::format(", {} line fences", line_fences));
    }
  };

  /// Recovers one distinct crash image in `sample`, chosen by its content hash (the
  /// others are counted in `unsampled`): the heaviest scenarios set it to
  /// `ftm_test::sanitizer_divisor`, so that a sanitizer build, several times slower, still
  /// recovers images of every kind within the CI budget.
  std::uint64_t sample = 1;

  /// Every subset of up to this many pending units is recovered at a flush, when the
  /// most units are pending; and of up to `between_limit` at the crash points between
  /// flushes, whose pending units are a prefix of those at the next flush, so their log
  /// images are among that flush's (with other pools).
  static constexpr std::size_t exhaustive_limit = 16;
  static constexpr std::size_t between_limit = 12;
  /// Beyond the exhaustive limit, every prefix of up to `all_prefixes` units, and
  /// `spread_prefixes` of more (a cache-line record has hundreds of units).
  static constexpr std::size_t all_prefixes = 64;
  static constexpr std::size_t spread_prefixes = 32;

  /// `crash_recovery`: now and then, a first recovery of an image is killed midway.
  /// `flush`: how the log is flushed; `cache_lines` is forced on the page cache, and a
  /// write may then reach the medium in parts of 8 bytes (the only stores x86 makes
  /// power-fail atomic), not of a 512-byte sector.
  explicit power_loss_sim(std::uint64_t seed, bool crash_recovery = true,
                          ftm::flush_method flush = ftm::flush_method::fdatasync)
      : rng_(seed),
        mix_seed_(rng_()),
        crash_recovery_(crash_recovery),
        flush_(flush),
        tear_(flush == ftm::flush_method::cache_lines ? 8 : 512) {
    result_.unit = tear_;
  }

  /// `transactions` transactions, one at a time, each on two to four of four blobs.
  result run(int transactions) {
    std::vector<std::string> names(blob_names, blob_names + nblobs);
    {
      auto pool = pmem::create(pool_path(), {.bank_size = 256 * 1024,
                                             .max_objects_per_transaction = 16,
                                             .level = durability::power,
                                             .log_size = 64 * 1024,
                                             .flush = flush_});
      start<blob>(pool, names);
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
        {
          const std::lock_guard g(m_);
          states_.push_back(next);  // may happen from the moment commit starts
        }
        ftm::atomically(pool, [&](auto& tx) {
          for (const int i : chosen) {
            auto b = tx.open(tx.template root<blob>(blob_names[i]));
            std::fill(std::begin(b->words), std::end(b->words), static_cast<std::uint64_t>(k));
          }
        });
        const std::lock_guard g(m_);
        acked_ = static_cast<std::size_t>(k);
        crash_here("returned");
      }
      stop_recording();
    }
    return finish();
  }

  /// `rounds` rounds of `committers` threads, each committing one transaction on two
  /// slabs of its own. The threads append in a fixed order and none flushes before all
  /// have appended, so the round's records are all pending at its one flush (group
  /// commit): the crash points there have the most pending units. The log is large
  /// enough that no checkpoint interrupts a round (one would wait for the round's
  /// committers, who wait for the round's appends).
  result run_group(int rounds, int committers) {
    std::vector<std::string> names;
    for (int c = 0; c < committers; ++c) {
      names.push_back(fmt::format("g{}a", c));
      names.push_back(fmt::format("g{}b", c));
    }
    {
      const std::size_t log_size =
          64 * 1024 + std::size_t{2048} * static_cast<std::size_t>(rounds * committers);
      auto pool = pmem::create(pool_path(), {.bank_size = 192 * 1024,
                                             .max_objects_per_transaction = 32,
                                             .level = durability::power,
                                             .log_size = log_size,
                                             .flush = flush_});
      start<slab>(pool, names);
      for (int r = 1; r <= rounds; ++r) {
        {
          const std::lock_guard g(m_);
          appended_ = 0;
          committers_ = committers;
          round_ = static_cast<std::uint64_t>(r);
        }
        std::vector<std::thread> ts;
        for (int c = 0; c < committers; ++c) {
          ts.emplace_back([&, c] {
            turn() = c;
            ftm::atomically(pool, [&](auto& tx) {
              for (const char* s : {"a", "b"}) {
                auto o = tx.open(tx.template root<slab>(fmt::format("g{}{}", c, s).c_str()));
                std::fill(std::begin(o->words), std::end(o->words), static_cast<std::uint64_t>(r));
              }
            });
            const std::lock_guard g(m_);
            acked_ = std::max(acked_, my_state());
            crash_here("returned");
            turn() = -1;
          });
        }
        for (auto& t : ts)
          t.join();
      }
      stop_recording();
    }
    return finish();
  }

  /// A scenario of the caller's own, for state that is more than a value per object
  /// (containers): `setup(tx)` makes its roots, `step(tx, k)` is transaction `k` (from
  /// 1), `model(k)` the state after the first `k`, and `read(pool, out, why)` the state
  /// of a recovered pool (false, with `why`, where its structure is broken). The pool is
  /// made with `options` at `power` with the simulated flush method.
  struct scenario {
    pmem::options options;
    std::function<void(ftm::transaction<pmem>&)> setup;
    std::function<void(ftm::transaction<pmem>&, std::uint64_t)> step;
    std::function<state(std::uint64_t)> model;
    std::function<bool(pmem&, state&, std::string&)> read;
  };

  /// `transactions` transactions of `sc`, one at a time.
  result run_scenario(const scenario& sc, int transactions) {
    {
      pmem::options o = sc.options;
      o.level = durability::power;
      o.flush = flush_;
      auto pool = pmem::create(pool_path(), o);
      ftm::atomically(pool, [&](ftm::transaction<pmem>& tx) { sc.setup(tx); });
      names_.clear();
      reader_ = sc.read;
      record_from(pool, sc.model(0));
      for (int k = 1; k <= transactions; ++k) {
        const auto step = static_cast<std::uint64_t>(k);
        {
          const std::lock_guard g(m_);
          states_.push_back(sc.model(step));  // may happen from the moment commit starts
        }
        ftm::atomically(pool, [&](ftm::transaction<pmem>& tx) { sc.step(tx, step); });
        const std::lock_guard g(m_);
        acked_ = static_cast<std::size_t>(k);
        crash_here("returned");
      }
      stop_recording();
    }
    return finish();
  }

  // ---- redo::log_io: the seam ---------------------------------------------------

  void write(redo::redo_log& log, std::uint64_t offset, const std::byte* data,
             std::size_t n) noexcept override {
    if (!checking() && n != 0) {
      if (order == broken::single_header && offset == redo::header_copy_offset) return;
      if (order == broken::redo_before_append && offset >= redo::records_begin) redo_early(data, n);
      log_written(offset, data, n);
    }
    log_io::write(log, offset, data, n);
  }
  void flush(redo::redo_log& log) noexcept override {
    log_io::flush(log);
    if (!checking() && order != broken::ack_before_flush) log_flushed();
  }
  void persist(redo::redo_log& log, std::uint64_t offset, std::size_t n) noexcept override {
    if (!checking()) {
      if (order == broken::single_header && offset == redo::header_copy_offset) return;
      if (order == broken::short_flush && offset >= redo::records_begin) {
        const std::uint64_t last = ftm::detail::persist::line_start(offset + n - 1);
        n = last > offset ? static_cast<std::size_t>(last - offset) : 0;
      }
    }
    log_io::persist(log, offset, n);
    if (checking()) return;
    if (offset + n > log.mapped_bytes()) {
      log_flushed();  // past the mapping: written with pwrite, flushed with fdatasync
    } else {
      log_lines_flushed(ftm::detail::persist::line_start(offset),
                        ftm::detail::persist::line_span(offset, n));
    }
  }
  void flush_pool(redo::redo_log& log) noexcept override {
    log_io::flush_pool(log);
    if (!checking()) pool_flushed();
  }

 private:
  /// What a write, a flush, a fence and a pool flush leave on the simulated medium.

  void log_written(std::uint64_t offset, const std::byte* data, std::size_t n) {
    const std::lock_guard g(m_);
    const char* p = reinterpret_cast<const char*>(data);
    apply(wal_now_, offset, p, n);
    for (std::uint64_t s = offset / tear_; s <= (offset + n - 1) / tear_; ++s) {
      const std::size_t at = static_cast<std::size_t>(s * tear_);
      const std::size_t len = std::min<std::size_t>(tear_, wal_now_.size() - at);
      pending_.push_back(
          {s * tear_, std::vector<char>(wal_now_.begin() + static_cast<std::ptrdiff_t>(at),
                                        wal_now_.begin() + static_cast<std::ptrdiff_t>(at + len))});
    }
  }
  void log_flushed() {
    const std::lock_guard g(m_);
    crash_here("flush");  // the flush may not have happened: any subset of the writes
    wal_durable_ = wal_now_;
    pending_.clear();
  }
  void pool_flushed() {
    const std::lock_guard g(m_);
    ++result_.checkpoints;
    note_pool_versions(true);
  }
  void log_lines_flushed(std::uint64_t offset, std::size_t n) {
    const std::lock_guard g(m_);
    ++result_.line_fences;
    crash_here("fence");  // before the fence: any subset of the pending units
    // The bytes in these lines are durable as last written; the units outside stay
    // pending. A unit only partly inside (not with 8-byte units in 64-byte lines) stays
    // pending with the durable bytes in it, so choosing it changes only the others.
    const std::uint64_t end = offset + n;
    if (end > offset) {
      if (wal_durable_.size() < end) wal_durable_.resize(end, 0);
      const auto b = static_cast<std::ptrdiff_t>(offset);
      const auto e = static_cast<std::ptrdiff_t>(std::min<std::uint64_t>(end, wal_now_.size()));
      if (e > b) std::copy(wal_now_.begin() + b, wal_now_.begin() + e, wal_durable_.begin() + b);
    }
    std::erase_if(pending_, [&](pending_unit& w) {
      const std::uint64_t w_end = w.offset + w.bytes.size();
      if (w.offset >= offset && w_end <= end) return true;
      const std::uint64_t from = std::max(w.offset, offset), to = std::min(w_end, end);
      for (std::uint64_t i = from; i < to; ++i)
        w.bytes[static_cast<std::size_t>(i - w.offset)] = wal_now_[static_cast<std::size_t>(i)];
      return false;
    });
  }

  /// `broken::redo_before_append`: copies the objects of the record in `[data, data + n)`
  /// into the pool's second bank, through a mapping of the pool file of its own.
  void redo_early(const std::byte* data, std::size_t n) {
    redo::record_header rh{};
    if (n < sizeof rh) return;
    std::memcpy(&rh, data, sizeof rh);
    layout::pool_header h{};
    const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0 || ::pread(fd, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) std::abort();
    void* m = ::mmap(nullptr, h.map_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) std::abort();
    std::byte* second = static_cast<std::byte*>(m) + h.control_size + h.bank_size;
    std::size_t at = sizeof rh;
    for (std::uint32_t i = 0; i < rh.objects && at + sizeof(redo::object_entry) <= n; ++i) {
      redo::object_entry oe{};
      std::memcpy(&oe, data + at, sizeof oe);
      at += sizeof oe;
      std::memcpy(second + oe.offset, data + at, oe.length);
      at += (std::size_t{oe.length} + 7) / 8 * 8;
    }
    ::munmap(m, h.map_size);
  }

  /// One pending unit: the block (sector or word) at `offset` as it was right after a write.
  struct pending_unit {
    std::uint64_t offset;
    std::vector<char> bytes;
  };
  /// One version of a pool page.
  struct page_version {
    std::vector<char> bytes;
    digest hash;
  };

  /// The thread calling is recovering an image: its own writes and flushes are not
  /// the simulated pool's.
  static bool& checking() noexcept {
    thread_local bool c = false;
    return c;
  }
  /// In `run_group`, the calling thread's place in the round's append order.
  static int& turn() noexcept {
    thread_local int t = -1;
    return t;
  }
  /// In `run_group`, the index in `states_` of the calling thread's transaction.
  static std::size_t& my_state() noexcept {
    thread_local std::size_t i = 0;
    return i;
  }

  /// Where the simulated pool is created. From here until `finish()` the cache-line mode
  /// is forced on the page cache when it is the one simulated.
  const fs::path& pool_path() {
    forced_ = redo::force_cache_lines_on_page_cache;
    redo::force_cache_lines_on_page_cache = flush_ == ftm::flush_method::cache_lines;
    // The simulation needs no real flush: on tmpfs, when there is one, they cost nothing.
    dir_ = ftm_test::scratch_dir();
    std::error_code ec;
    if (fs::is_directory("/dev/shm", ec)) {
      dir_ = fs::path("/dev/shm") / fmt::format("ftm-power-test-{}", ::getpid());
      fs::create_directories(dir_, ec);
      if (ec) dir_ = ftm_test::scratch_dir();
    }
    path_ = dir_ / "power.ftm";
    wal_ = redo::redo_log::path_for(path_);
    image_ = dir_ / "image.ftm";
    return path_;
  }

  /// Creates the objects `names` in the new pool at `pool_path()` and starts recording.
  template <class T>
  void start(pmem& pool, const std::vector<std::string>& names) {
    names_ = names;
    reader_ = [this](pmem& p, state& out, std::string& why) {
      return read_state<T>(p, names_, out, why);
    };
    ftm::atomically(pool, [&](auto& tx) {
      for (const auto& name : names_)
        static_cast<void>(tx.template root<T>(name.c_str()));
    });
    record_from(pool, state(names_.size(), 0));
  }

  /// Starts recording from the pool as it is, whose state is `initial`.
  void record_from(pmem& pool, state initial) {
    REQUIRE(pool.log_flush() == flush_);
    states_.assign(1, std::move(initial));
    acked_ = 0;
    // The medium holds all of it now: the simulation starts from here.
    sync_file(path_);
    sync_file(wal_);
    versions_.clear();
    note_pool_versions(true);
    wal_durable_ = read_all(wal_);
    wal_now_ = wal_durable_;
    pending_.clear();
    std::size_t pool_size = 0;
    for (const auto& vs : versions_)
      pool_size += vs.front().bytes.size();
    image_pool_.open(image_, pool_size);
    image_wal_.open(redo::redo_log::path_for(image_), wal_durable_.size());
    current_ = this;
    redo::io_seam = this;
    ftm::detail::fault_observer = &on_point;
  }

  void stop_recording() {
    ftm::detail::fault_observer = nullptr;
    redo::io_seam = nullptr;
    current_ = nullptr;
  }

  result finish() {
    redo::force_cache_lines_on_page_cache = forced_;
    image_pool_.close();
    image_wal_.close();
    for (const auto& p : {path_, wal_, image_, redo::redo_log::path_for(image_)})
      fs::remove(p);
    std::error_code ec;
    if (dir_ != ftm_test::scratch_dir()) fs::remove(dir_, ec);
    return result_;
  }

  static void on_point(std::string_view name) {
    power_loss_sim* const sim = current_;
    if (sim == nullptr || checking()) return;
    if (!name.starts_with("log.") && name != "commit.mid_redo" && name != "commit.before_release")
      return;
    std::unique_lock g(sim->m_);
    const int t = turn();
    if (t >= 0 && name == "log.before_append") {
      // The round's committers append in turn; this transaction's state is possible
      // from its append on.
      sim->cv_.wait(g, [&] { return sim->appended_ == t; });
      state next = sim->states_.back();
      const auto mine = 2 * static_cast<std::size_t>(t);  // its two slabs
      next[mine] = next[mine + 1] = sim->round_;
      sim->states_.push_back(next);
      my_state() = sim->states_.size() - 1;
    }
    sim->crash_here(name);
    if (t >= 0 && name == "log.after_append") {
      ++sim->appended_;
      sim->cv_.notify_all();
      sim->cv_.wait(g, [&] { return sim->appended_ == sim->committers_; });
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
      if (versions_[p].empty() || versions_[p].back().bytes != v) {
        const digest h = hash_bytes(v.data(), v.size());
        versions_[p].push_back({std::move(v), h});
      }
    }
  }

  /// Every crash image at this moment: pool pages from any version since the last
  /// pool flush, the log's durable bytes plus a subset of the pending units (every
  /// subset of up to `exhaustive_limit` at a flush, `between_limit` elsewhere, a sample
  /// beyond).
  void crash_here(std::string_view where) {
    checking() = true;
    note_pool_versions(false);
    const std::size_t n = pending_.size();
    result_.max_n = std::max(result_.max_n, n);
    // The pending blocks, each with its units in write order and its durable content.
    blocks_.clear();
    std::unordered_map<std::uint64_t, std::size_t> block_at;  // offset -> index in blocks_
    for (std::size_t i = 0; i < n; ++i) {
      const auto [it, added] = block_at.try_emplace(pending_[i].offset, blocks_.size());
      if (added) {
        const std::size_t at = static_cast<std::size_t>(pending_[i].offset);
        const std::size_t len = std::min<std::size_t>(tear_, wal_durable_.size() - at);
        blocks_.push_back({pending_[i].offset, {}, hash_bytes(wal_durable_.data() + at, len)});
      }
      blocks_[it->second].units.push_back(
          {i, hash_bytes(pending_[i].bytes.data(), pending_[i].bytes.size())});
    }
    durable_hash_ = hash_bytes(wal_durable_.data(), wal_durable_.size());
    images_here_ = 0;
    std::vector<char> pick(n);  // not vector<bool>, slow in Debug: a record may have thousands
    const bool fence = where == "flush" || where == "fence";
    if (n <= (fence ? exhaustive_limit : between_limit)) {
      ++result_.exhaustive_points;
      result_.max_exhaustive_n = std::max(result_.max_exhaustive_n, n);
      const std::uint64_t subsets = std::uint64_t{1} << n;
      for (std::uint64_t mask = 0; mask < subsets; ++mask) {
        for (std::size_t i = 0; i < n; ++i)
          pick[i] = static_cast<char>(mask >> i & 1);
        // The random mix of pool pages depends on the subset only: the same subset at
        // a later crash point with nothing new written is the same image.
        const std::uint64_t seed = mix(mix_seed_, mask);
        if (n <= 8) {
          for (int variant = 0; variant < 3; ++variant)
            check_image(where, pick, variant, seed);
        } else {
          check_image(where, pick, static_cast<int>(mask % 3), seed);
        }
      }
    } else {
      ++result_.sampled_points;
      // The writes persisted in order up to some point (prefixes: none to all; evenly
      // spread beyond `all_prefixes` units, and all but the last unit), and
      // random subsets. At a flush, each prefix with the three pools; between flushes,
      // whose log images are among the next flush's, one, and fewer subsets.
      std::vector<std::size_t> lengths;
      if (n <= all_prefixes) {
        for (std::size_t j = 0; j <= n; ++j)
          lengths.push_back(j);
      } else {
        for (std::size_t k = 0; k < spread_prefixes; ++k)
          lengths.push_back(k * n / (spread_prefixes - 1));
        lengths.push_back(n - 1);
      }
      for (const std::size_t j : lengths) {
        for (std::size_t i = 0; i < n; ++i)
          pick[i] = static_cast<char>(i < j);
        for (int variant = 0; variant < 3; ++variant) {
          if (fence || variant == static_cast<int>(j % 3))
            check_image(where, pick, variant, rng_());
        }
      }
      for (int k = 0; k < (fence ? 64 : 16); ++k) {
        for (std::size_t i = 0; i < n; ++i)
          pick[i] = static_cast<char>(rng_() % 2);
        check_image(where, pick, k % 3, rng_());
      }
    }
    checking() = false;
  }

  /// Recovers the image of the durable log plus the units in `pick`, with the pool's
  /// pages 0 all as flushed, 1 all current, 2 each from a version drawn from `seed`.
  void check_image(std::string_view where, const std::vector<char>& pick, int variant,
                   std::uint64_t seed) {
    // What the image holds, before building it: each pending block's content, and
    // each pool page's version.
    digest key = mix(mix(durable_hash_, acked_), states_.size());
    for (const auto& s : blocks_) {
      digest content = s.durable;
      for (auto u = s.units.rbegin(); u != s.units.rend(); ++u) {
        if (pick[u->index]) {
          content = u->hash;
          break;
        }
      }
      key = mix(mix(key, s.offset), content);
    }
    chosen_.resize(versions_.size());
    for (std::size_t p = 0; p < versions_.size(); ++p) {
      const auto& vs = versions_[p];
      chosen_[p] = variant == 0 ? 0 : variant == 1 ? vs.size() - 1 : mix(seed, p) % vs.size();
      key = mix(key, vs[chosen_[p]].hash);
    }
    if (!seen_.insert(key).second) {
      ++result_.duplicates;
      return;
    }
    if (sample > 1 && key.a % sample != 0) {
      ++result_.unsampled;
      return;
    }
    // The image's files stay mapped here: only what differs from the last image, or
    // what its recovery changed, is copied in.
    REQUIRE(wal_now_.size() == image_wal_.size);
    for (std::size_t at = 0; at < wal_durable_.size(); at += page) {
      image_wal_.put(at, wal_durable_.data() + at, std::min(page, wal_durable_.size() - at));
    }
    for (std::size_t i = 0; i < pending_.size(); ++i) {
      if (pick[i])
        image_wal_.put(pending_[i].offset, pending_[i].bytes.data(), pending_[i].bytes.size());
    }
    std::size_t at = 0;
    for (std::size_t p = 0; p < versions_.size(); ++p) {
      const auto& v = versions_[p][chosen_[p]].bytes;
      if (p == 0) {
        // A new boot: the pool's owners are gone.
        std::vector<char> first = v;
        layout::pool_header h{};
        std::memcpy(&h, first.data(), sizeof h);
        layout::set_boot_id(h, "simulated-earlier-boot");
        std::memcpy(first.data(), &h, sizeof h);
        image_pool_.put(at, first.data(), first.size());
      } else {
        image_pool_.put(at, v.data(), v.size());
      }
      at += v.size();
    }
    ++result_.images;
    ++images_here_;
    // Now and then, recovery itself dies once first, and the next one completes it:
    // every 25th of the first 100 images of a crash point and every 1000th beyond (a
    // fork costs more than a recovery, under ASan 20 times more).
    if (crash_recovery_ && images_here_ % (images_here_ <= 100 ? 25 : 1000) == 0) {
      const char* point = result_.images % 2 == 0 ? "log.recover_replayed" : "log.recover_copied";
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
      state s;
      if (!reader_(p, s, why)) {
        // why is set
      } else if (const auto c = p.check(); !c.ok()) {
        why = fmt::format("check() failed: {}", c.problems.front());
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
        result_.first_failure = fmt::format(
            "image {} at '{}' ({} of {} pending units, pool variant {}): {}", result_.images, where,
            std::count(pick.begin(), pick.end(), 1), pick.size(), variant, why);
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

  /// A file of a crash image, mapped while the simulation runs.
  struct mapped_file {
    int fd = -1;
    char* map = nullptr;
    std::size_t size = 0;

    void open(const fs::path& p, std::size_t n) {
      fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      REQUIRE(fd >= 0);
      REQUIRE(::ftruncate(fd, static_cast<off_t>(n)) == 0);
      void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      REQUIRE(m != MAP_FAILED);
      map = static_cast<char*>(m);
      size = n;
    }
    void close() {
      if (map != nullptr) ::munmap(map, size);
      if (fd >= 0) ::close(fd);
      map = nullptr;
      fd = -1;
    }
    /// The file's bytes at `at` become `p[0, n)`.
    void put(std::size_t at, const char* p, std::size_t n) const {
      if (at + n > size) throw std::logic_error("a crash image larger than its file");
      if (std::memcmp(map + at, p, n) != 0) std::memcpy(map + at, p, n);
    }
  };

  /// A pending block (a sector, or a word): its units, and the hash of its durable content.
  struct block_units {
    std::uint64_t offset;
    struct unit {
      std::size_t index;  // in pending_
      digest hash;
    };
    std::vector<unit> units;
    digest durable;
  };

  static constexpr std::size_t page = 4096;
  static inline power_loss_sim* current_ = nullptr;

  std::mutex m_;  // the committers' threads and the checks take turns
  std::condition_variable cv_;
  int appended_ = 0;         // run_group: records appended in this round
  int committers_ = 0;       // run_group: committers in a round
  std::uint64_t round_ = 0;  // run_group: the value this round's transactions write
  std::mt19937_64 rng_;
  fs::path dir_, path_, wal_, image_;
  mapped_file image_pool_, image_wal_;
  std::vector<std::string> names_;
  std::function<bool(pmem&, state&, std::string&)> reader_;
  std::vector<state> states_;  // states_[p]: after the first p transactions
  std::size_t acked_ = 0;      // a transaction whose commit returned: its index in states_
  std::vector<std::vector<page_version>> versions_;  // per page, since the last flush
  std::vector<char> wal_durable_, wal_now_;          // the log as flushed, and as written
  std::vector<pending_unit> pending_;                // units written since the flush
  std::vector<block_units> blocks_;                  // crash_here: pending_ by block
  digest durable_hash_;
  std::uint64_t images_here_ = 0;  // recovered at this crash point
  std::uint64_t mix_seed_ = 0;     // of the pool pages' random mixes
  std::vector<std::size_t> chosen_;
  std::unordered_set<digest, digest_hash> seen_;  // with acked_ and states_.size()
  bool crash_recovery_ = true;
  ftm::flush_method flush_ = ftm::flush_method::fdatasync;
  std::size_t tear_ = 512;  // the unit in which a write may be torn
  bool forced_ = false;     // force_cache_lines_on_page_cache before the run
  result result_;
};

}  // namespace ftm_test::power_loss

#endif  // FTM_TESTS_SUPPORT_POWER_LOSS_HPP
