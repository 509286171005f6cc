// ftm::engines::pmem with durability `power`: what survives a power loss, simulated
// by recording the redo log's writes and flushes and the pool's checkpoints, then
// recovering every crash image those allow, with the log flushed by fdatasync and by
// cache lines; group commit across processes; a killed committer; the refusal of a
// second durability level; the cache-line mode's refusal without MAP_SYNC. Built with
// FTM_FAULT_INJECTION.
#include "engines.hpp"
#include "process.hpp"

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
#include <iterator>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <csignal>

namespace {

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
const char* const blob_names[nblobs] = {"b0", "b1", "b2", "b3"};

/// The objects of the group-commit scenario: a transaction writes two, and their record
/// (40 + 2 * (16 + 720) bytes) covers 3 or 4 sectors of the log.
struct slab {
  std::uint64_t words[90];
};

using state = std::vector<std::uint64_t>;  // each object's value

std::vector<char> read_all(const fs::path& p) {
  std::vector<char> bytes(fs::file_size(p));
  std::ifstream in(p, std::ios::binary);
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(bytes.size()));
  return bytes;
}

void sync_file(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::fdatasync(fd) == 0);
  ::close(fd);
}

/// Reads the objects `names` of a pool; an object whose words differ is reported as torn.
template <class T>
bool read_state(pmem& pool, const std::vector<std::string>& names, state& out, std::string& why) {
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
std::uint64_t mix(std::uint64_t h, std::uint64_t w) noexcept {
  h = (h ^ w) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}
digest mix(digest d, std::uint64_t w) noexcept {
  std::uint64_t b = (d.b ^ w) * 0xc2b2ae3d27d4eb4full;  // a second, independent lane
  return {mix(d.a, w), b ^ (b >> 31)};
}
digest mix(digest d, const digest& e) noexcept { return mix(mix(d, e.a), e.b); }
digest hash_bytes(const char* p, std::size_t n) noexcept {
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
class power_loss_sim : public redo::observer {
 public:
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

  // ---- redo::observer ------------------------------------------------------------

  void log_written(std::uint64_t offset, const std::byte* data, std::size_t n) override {
    if (checking() || n == 0) return;
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
  void log_flushed() override {
    if (checking()) return;
    const std::lock_guard g(m_);
    crash_here("flush");  // the flush may not have happened: any subset of the writes
    wal_durable_ = wal_now_;
    pending_.clear();
  }
  void pool_flushed() override {
    if (checking()) return;
    const std::lock_guard g(m_);
    ++result_.checkpoints;
    note_pool_versions(true);
  }
  void log_lines_flushed(std::uint64_t offset, std::size_t n) override {
    if (checking()) return;
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
    std::erase_if(pending_, [&](write& w) {
      const std::uint64_t w_end = w.offset + w.bytes.size();
      if (w.offset >= offset && w_end <= end) return true;
      const std::uint64_t from = std::max(w.offset, offset), to = std::min(w_end, end);
      for (std::uint64_t i = from; i < to; ++i)
        w.bytes[static_cast<std::size_t>(i - w.offset)] = wal_now_[static_cast<std::size_t>(i)];
      return false;
    });
  }

 private:
  /// One pending unit: the block (sector or word) at `offset` as it was right after a write.
  struct write {
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
    REQUIRE(pool.log_flush() == flush_);
    names_ = names;
    reader_ = &read_state<T>;
    ftm::atomically(pool, [&](auto& tx) {
      for (const auto& name : names_)
        static_cast<void>(tx.template root<T>(name.c_str()));
    });
    states_.assign(1, state(names_.size(), 0));
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
    redo::io_observer = this;
    ftm::detail::fault_observer = &on_point;
  }

  void stop_recording() {
    ftm::detail::fault_observer = nullptr;
    redo::io_observer = nullptr;
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
      if (!reader_(p, names_, s, why)) {
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
  bool (*reader_)(pmem&, const std::vector<std::string>&, state&, std::string&) = nullptr;
  std::vector<state> states_;  // states_[p]: after the first p transactions
  std::size_t acked_ = 0;      // a transaction whose commit returned: its index in states_
  std::vector<std::vector<page_version>> versions_;  // per page, since the last flush
  std::vector<char> wal_durable_, wal_now_;          // the log as flushed, and as written
  std::vector<write> pending_;                       // units written since the flush
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

struct counter {
  std::uint64_t value;
};

constexpr pmem::options power_small{.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 256 * 1024};

std::uint64_t records_in_log(pmem& pool) {
  // Checked against a pool that recorded nothing of it: every valid record counts.
  redo::control nothing{};
  redo::redo_log log(redo::redo_log::path_for(pool.path()), pool.pool_id(), -1, &nothing, 0);
  nothing.log_id = log.log_id();
  return log
      .replay(
          0, pool.bank_size(), [](void*, std::uint64_t, std::uint32_t, const std::byte*) {},
          nullptr, "")
      .records;
}

std::uint64_t value_of(pmem& pool, const char* name) {
  return ftm::atomically(
      pool, [&](auto& tx) { return tx.open_read(tx.template root<counter>(name))->value; });
}

}  // namespace

// In a sanitizer build, the heaviest scenarios recover one image in
// ftm_test::sanitizer_divisor, and their thresholds scale with it.
constexpr std::uint64_t image_sample = ftm_test::sanitizer_divisor;

TEST_CASE("power: every crash image of a simulated power loss recovers to a prefix") {
  power_loss_sim sim(20261127);
  sim.sample = image_sample;
  const auto r = sim.run(30);
  MESSAGE(fmt::format("power loss: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.images > 800 / image_sample);
  CHECK(r.recovery_crashes > 50 / image_sample);
  CHECK(r.checkpoints > 3);
}

TEST_CASE("power: every subset of a group commit's pending sectors recovers to a prefix") {
  power_loss_sim sim(20261128);
  sim.sample = image_sample;
  const auto r = sim.run_group(1, 4);
  MESSAGE(fmt::format("power loss, group commit: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  // The scenario must reach the large subsets it is for.
  CHECK(r.max_exhaustive_n >= 12);
  CHECK(r.recovery_crashes > 50 / image_sample);
}

TEST_CASE("power: the power-loss checker catches a commit acknowledged before its flush") {
  redo::broken_ack_before_flush = true;
  power_loss_sim sim(7, false);
  const auto r = sim.run(4);
  // And in group commit, where the committers' records are written before one flushes.
  power_loss_sim group(8, false);
  const auto g = group.run_group(1, 2);
  redo::broken_ack_before_flush = false;
  MESSAGE(fmt::format("broken order (ack before flush): {} of {} images failed, e.g. {}",
                      r.failures, r.images, r.first_failure));
  MESSAGE(
      fmt::format("broken order (ack before flush), group commit: {} of {} images failed, "
                  "e.g. {}",
                  g.failures, g.images, g.first_failure));
  CHECK(r.failures > 0);
  CHECK(g.failures > 0);
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

namespace {

/// Makes a pool at `path` with `opts` and four counters, then has two processes, two
/// threads each, add `per_thread` to a counter of their own (transactions that conflict
/// wait for each other's whole commit, flush included, and could not share one).
/// `observe`, in memory shared by the processes, sees the log's writes and flushes.
/// Returns whether a fresh process alone on the pool, opened with `opts`, rebuilt
/// every count and passes `also`.
bool commit_from_two_processes(const fs::path& path, const pmem::options& opts, int per_thread,
                               redo::observer* observe,
                               const std::function<bool(pmem&)>& also = {}) {
  const char* const names[4] = {"p0", "p1", "c0", "c1"};
  {
    auto pool = pmem::create(path, opts);
    ftm::atomically(pool, [&](auto& tx) {
      for (const char* name : names)
        static_cast<void>(tx.template root<counter>(name));
    });
  }
  redo::io_observer = observe;
  auto work = [&](int first) {
    auto pool = pmem::open(path, opts);
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
  const int fresh = in_child([&] {
    auto pool = pmem::open(path, opts);
    bool ok = pool.check().ok();
    for (const char* name : names)
      ok = ok && value_of(pool, name) == static_cast<std::uint64_t>(per_thread);
    return ok && (!also || also(pool)) ? 0 : 1;
  });
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
  return WIFEXITED(fresh) && WEXITSTATUS(fresh) == 0;
}

/// A committer killed before and after its append, in a child; the parent's recovery
/// makes it durable and completes it, with exactly one record for it in the log.
void check_killed_committer(const pmem::options& opts) {
  for (const char* point : {"log.before_append", "log.after_append"}) {
    CAPTURE(point);
    const fs::path path = ftm_test::scratch_file("power");
    auto pool = pmem::create(path, opts);
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

}  // namespace

TEST_CASE("power: two processes commit at once and share flushes (group commit)") {
  struct counts final : redo::observer {
    std::atomic<std::uint64_t> flushes{0};
    void log_written(std::uint64_t, const std::byte*, std::size_t) override {}
    void log_flushed() override { flushes.fetch_add(1); }
    void pool_flushed() override {}
  };
  const ftm_test::shared_page<counts> page;
  counts* shared = page.get();
  constexpr int per_thread = 150;
  // The fresh process replays the log of a pool no one uses.
  CHECK(
      commit_from_two_processes(ftm_test::scratch_file("power"), power_small, per_thread, shared));
  const std::uint64_t commits = 4 * per_thread;
  const std::uint64_t flushes = shared->flushes.load();
  MESSAGE(fmt::format("group commit: {} commits by 4 threads in 2 processes, {} log flushes",
                      commits, flushes));
  CHECK(flushes < commits);
}

TEST_CASE("power: a committer killed mid-commit is made durable and completed by another process") {
  check_killed_committer(power_small);
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

TEST_CASE("power: checkpoints keep the log header's copy current, whatever the flush method") {
  // A pool flushed by fdatasync may later be flushed by cache lines, whose readers fall
  // back to the copy when the first header is torn: a stale copy would name an old epoch.
  const fs::path path = ftm_test::scratch_file("power");
  {
    auto pool = pmem::create(path, {.bank_size = std::size_t{1} << 20,
                                    .max_objects_per_transaction = 64,
                                    .level = durability::power,
                                    .log_size = 16 * 1024});
    REQUIRE(pool.log_flush() == ftm::flush_method::fdatasync);
    ftm::atomically(pool, [](auto& tx) { tx.template root<counter>("x"); });
    for (int i = 0; i < 400; ++i)  // 16 KiB of log: several checkpoints
      ftm::atomically(pool, [](auto& tx) { ++tx.open(tx.template root<counter>("x"))->value; });
  }
  const int fd = ::open(redo::redo_log::path_for(path).c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  redo::file_header first{}, copy{};
  REQUIRE(::pread(fd, &first, sizeof first, 0) == static_cast<ssize_t>(sizeof first));
  REQUIRE(::pread(fd, &copy, sizeof copy, redo::header_copy_offset) ==
          static_cast<ssize_t>(sizeof copy));
  ::close(fd);
  CHECK(first.epoch > 1);  // checkpoints happened
  CHECK(copy.checksum == redo::header_checksum(copy));
  CHECK(copy.epoch == first.epoch);
  fs::remove(path);
  fs::remove(redo::redo_log::path_for(path));
}

TEST_CASE("power: of two processes creating one pool at once, the loser leaves the winner's log") {
  struct race {
    std::atomic<int> ready{0}, go{0}, tried{0};
    std::atomic<int> result[2]{};  // 1 created, 2 refused: the file exists, 3 other
  };
  int wins = 0;
  for (int round = 0; round < 20; ++round) {
    const ftm_test::shared_page<race> page;
    race* r = page.get();
    const fs::path path = ftm_test::scratch_file("race");
    pid_t kids[2];
    for (int c = 0; c < 2; ++c) {
      kids[c] = ::fork();
      REQUIRE(kids[c] >= 0);
      if (kids[c] != 0) continue;
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ++r->ready;
      while (r->go.load() == 0) {
      }
      try {
        auto pool = pmem::create(path, power_small);
        r->result[c] = 1;
        ++r->tried;
        while (r->tried.load() < 2)  // the loser has done all it does
          std::this_thread::yield();
        ftm::atomically(pool,
                        [&](auto& tx) { tx.open(tx.template root<counter>("x"))->value = 40 + c; });
        ::_exit(0);  // no close: the next opener rebuilds from the log
      } catch (const ftm::io_error& e) {
        r->result[c] =
            std::string_view(e.what()).find("the file exists") != std::string_view::npos ? 2 : 3;
      } catch (...) {
        r->result[c] = 3;
      }
      ++r->tried;
      ::_exit(0);
    }
    while (r->ready.load() < 2)
      std::this_thread::yield();
    r->go = 1;
    for (const pid_t k : kids)
      ::waitpid(k, nullptr, 0);
    const int first = r->result[0].load(), second = r->result[1].load();
    CAPTURE(round);
    CAPTURE(first);
    CAPTURE(second);
    const int winner = first == 1 ? 0 : 1;
    REQUIRE((winner == 0 ? first : second) == 1);
    REQUIRE((winner == 0 ? second : first) == 2);
    const int status = in_child([&] {
      auto pool = pmem::open(path, durability::power);
      return value_of(pool, "x") == static_cast<std::uint64_t>(40 + winner) ? 0 : 1;
    });
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    wins += winner;
    fs::remove(path);
    fs::remove(redo::redo_log::path_for(path));
  }
  MESSAGE(fmt::format("20 creation races, the second process won {} of them", wins));
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
    // No one has it open: an explicit `process` opener may take it, and then decides.
    auto pool = pmem::open(path, durability::process);
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
  auto pool = pmem::open(path);  // the level recorded: power
  CHECK(pool.level() == durability::power);
  CHECK(value_of(pool, "x") == 4);
  CHECK(pool.check().ok());
}

TEST_CASE("power: read-only transactions, and every transaction at process, touch no log") {
  struct counts final : redo::observer {
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
  struct counts final : redo::observer {
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
  sim.sample = image_sample;
  const auto r = sim.run(30);
  MESSAGE(fmt::format("power loss, cache lines: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.unit == 8);
  CHECK(r.images > 800 / image_sample);
  CHECK(r.recovery_crashes > 50 / image_sample);
  CHECK(r.checkpoints > 3);
  CHECK(r.line_fences > 30);  // one per record, two per new epoch: the mode was used
  // A record is hundreds of words: its fence is sampled, a new epoch's header enumerated.
  CHECK(r.sampled_points > 0);
  CHECK(r.max_n > 100);
}

TEST_CASE("power, cache lines: a group commit's crash images recover to a prefix") {
  // Each append fences its own record: the round's records are never pending together.
  power_loss_sim sim(20261129, true, ftm::flush_method::cache_lines);
  const auto r = sim.run_group(1, 4);
  MESSAGE(fmt::format("power loss, cache lines, group commit: {}", r.summary()));
  CHECK_MESSAGE(r.failures == 0, r.first_failure);
  CHECK(r.line_fences >= 4);
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
  struct counts final : redo::observer {
    std::atomic<std::uint64_t> syncs{0}, fences{0};
    void log_written(std::uint64_t, const std::byte*, std::size_t) override {}
    void log_flushed() override { syncs.fetch_add(1); }
    void pool_flushed() override {}
    void log_lines_flushed(std::uint64_t, std::size_t) override { fences.fetch_add(1); }
  };
  const ftm_test::shared_page<counts> page;
  counts* shared = page.get();
  constexpr int per_thread = 300;
  // The fresh process alone on the pool rebuilds it from the log: no record was lost
  // or mixed with another.
  CHECK(commit_from_two_processes(ftm_test::scratch_file("power"), lines_small, per_thread, shared,
                                  [](pmem& pool) {
                                    return pool.log_flush() == ftm::flush_method::cache_lines &&
                                           pool.opening_recovery().redone > 0;
                                  }));
  MESSAGE(fmt::format("cache lines: {} commits by 4 threads in 2 processes, {} fences, {} syncs",
                      4 * per_thread, shared->fences.load(), shared->syncs.load()));
  CHECK(shared->syncs.load() == 0);
  CHECK(shared->fences.load() >= 4 * per_thread);
}

TEST_CASE("power, cache lines: a committer killed mid-commit is completed by another process") {
  const forced_cache_lines on;
  check_killed_committer(lines_small);
}
