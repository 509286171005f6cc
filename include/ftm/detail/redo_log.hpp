#ifndef FTM_DETAIL_REDO_LOG_HPP
#define FTM_DETAIL_REDO_LOG_HPP

/// \file
/// The redo log of `ftm::engines::pmem`'s `power` durability level: a file beside the
/// pool (`<pool>.wal`) that holds, for every committed writing transaction since the
/// last checkpoint, the after-images of the objects it wrote. Commit appends one record
/// between its two phases and waits until the log is on the medium up to the record's
/// end; concurrent committers share one `fdatasync` (group commit). The file is then
/// written with `pwrite`, not through a mapping, so a flush writes the log's pages only.
///
/// On a DAX file system (persistent memory) the log can instead be mapped with
/// `MAP_SYNC` and flushed by cache line (`flush_method::cache_lines`): a record is stored
/// into the mapping, its lines are written back and fenced while the append lock is
/// held, so the log is durable up to its tail whenever the lock is free, and commit
/// makes no system call.
///
/// The log is passive: `pmem`'s `power` layer calls it (append, checkpoint, what is in
/// flight) and acts on what it answers; it never calls back into the engine. Its file
/// format is in `pmem_format.hpp`; its I/O goes through a seam that tests replace
/// (`log_io`).

#include <ftm/detail/bank_format.hpp>
#include <ftm/detail/checksum.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/fault.hpp>
#include <ftm/detail/persist.hpp>
#include <ftm/detail/pmem_format.hpp>
#include <ftm/durability.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail::redo {

using detail::checksum;  // one checksum for every format (detail/checksum.hpp)

inline std::uint64_t header_checksum(const file_header& h) noexcept {
  return checksum(reinterpret_cast<const std::byte*>(&h), offsetof(file_header, checksum), 0);
}

/// A new log file's id: random, so that no two log files of a pool share one.
inline std::uint64_t new_log_id() {
  std::random_device rd;
  const std::uint64_t r = (std::uint64_t{rd()} << 32) ^ rd();
  const auto t =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  return (r ^ (t * 0x9e3779b97f4a7c15ull) ^ static_cast<std::uint64_t>(::getpid())) | 1;  // never 0
}

/// What the pool records about its log (`control`), as read before recovery.
struct recorded_state {
  std::uint64_t log_id = 0;
  std::uint64_t epoch = 0;
  std::uint64_t durable_seq = 0;
};

/// A log file checked against its pool before anything in it is replayed.
struct scan_result {
  std::uint64_t records = 0;          ///< valid records, chained from the file header
  std::uint64_t last_seq = 0;         ///< the last one's sequence number (first_seq - 1 if none)
  std::uint64_t end = records_begin;  ///< the file offset after the last one
  std::string problem;                ///< why the log must not be replayed; empty if it may
};

/// Checks the log in `fd` (named `path`), whose header `h` is whole and of this pool,
/// against what its pool recorded (`r`); objects must lie in `[lo, hi)`. The chain of
/// valid records ends at the first record that is not whole, is of another epoch, has
/// the wrong sequence number or fails its chained checksum: after a power loss that is
/// where the log's tail was torn, and nothing after it was acknowledged. Unless the
/// pool recorded a later record as on the medium: then the log was cut, damaged or
/// replaced, and replaying it would take the pool back in time.
inline scan_result scan(int fd, const std::filesystem::path& path, const file_header& h,
                        const recorded_state& r, std::uint64_t lo, std::uint64_t hi) {
  scan_result res;
  res.last_seq = h.first_seq - 1;
  if (h.log_id != r.log_id) {
    res.problem = fmt::format(
        "its redo log '{}' is not the log it was last used with (log id {:#x}, the pool records "
        "{:#x}): the log was replaced; nothing was replayed",
        path.string(), h.log_id, r.log_id);
    return res;
  }
  if (h.epoch < r.epoch) {
    res.problem = fmt::format(
        "its redo log '{}' is older than the pool (epoch {}, the pool has checkpointed up to "
        "epoch {}): an old copy of the log; nothing was replayed",
        path.string(), h.epoch, r.epoch);
    return res;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    res.problem =
        fmt::format("cannot stat its redo log '{}': {}", path.string(), std::strerror(errno));
    return res;
  }
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  std::vector<std::byte> rec;
  std::uint64_t prev = h.checksum;
  std::string stop;  // why the chain ends where it does
  std::uint64_t off = records_begin;
  for (;; ++res.records) {
    const std::uint64_t seq = res.last_seq + 1;
    record_header rh{};
    if (off > file_size || file_size - off < sizeof rh) {
      stop = fmt::format("the file ends at offset {}", file_size);
      break;
    }
    if (::pread(fd, &rh, sizeof rh, static_cast<off_t>(off)) != static_cast<ssize_t>(sizeof rh)) {
      stop = fmt::format("cannot read it: {}", std::strerror(errno));
      break;
    }
    if (rh.epoch != h.epoch) {
      stop = rh.epoch == 0 && rh.checksum == 0 ? std::string("there is no record there")
                                               : fmt::format(
                                                     "the record there is of epoch {}, "
                                                     "the log's is {}",
                                                     rh.epoch, h.epoch);
      break;
    }
    if (rh.seq != seq) {
      stop = fmt::format("the record there has sequence number {}", rh.seq);
      break;
    }
    // A header torn by 8-byte words may hold any size: it must fit in the file.
    if (rh.bytes < sizeof rh || rh.bytes % 8 != 0 || rh.bytes > file_size - off) {
      stop = fmt::format("its size {} does not fit ({} bytes of the file are left)", rh.bytes,
                         file_size - off);
      break;
    }
    rec.resize(rh.bytes);
    if (::pread(fd, rec.data(), rh.bytes, static_cast<off_t>(off)) !=
        static_cast<ssize_t>(rh.bytes)) {
      stop = fmt::format("cannot read it: {}", std::strerror(errno));
      break;
    }
    if (checksum(rec.data() + 8, rh.bytes - 8, prev) != rh.checksum) {
      stop = "its checksum does not match its bytes (or the records before it)";
      break;
    }
    // The record is whole: every object must lie in the bank.
    std::uint64_t at = sizeof rh;
    for (std::uint32_t i = 0; i < rh.objects; ++i) {
      object_entry oe{};
      bool fits = at + sizeof oe <= rh.bytes;
      if (fits) {
        std::memcpy(&oe, rec.data() + at, sizeof oe);
        at += sizeof oe;
        fits = oe.offset >= lo && oe.offset <= hi && oe.length <= hi - oe.offset &&
               oe.length <= rh.bytes - at;
        at += (std::uint64_t{oe.length} + 7) / 8 * 8;
      }
      if (!fits) {
        res.problem = fmt::format(
            "its redo log '{}' has a record (number {}, at offset {}) whose checksum is right "
            "but whose objects lie outside the bank; nothing was replayed",
            path.string(), seq, off);
        return res;
      }
    }
    prev = rh.checksum;
    res.last_seq = seq;
    off += rh.bytes;
    res.end = off;
  }
  if (r.durable_seq > res.last_seq) {
    res.problem = fmt::format(
        "its redo log '{}' breaks off at record {} (offset {}: {}), but the pool recorded every "
        "record up to {} as on the medium: the log was truncated, damaged or replaced by an "
        "older copy; nothing was replayed",
        path.string(), res.last_seq + 1, off, stop, r.durable_seq);
  }
  return res;
}

class redo_log;

/// The redo log's I/O seam: every write and flush of a log file, and every flush of its
/// pool, goes through the one installed (`io_seam`), as SQLite's crash tests put a test
/// VFS under the database. The power-loss simulator (`tests/support/power_loss.hpp`)
/// records there what a power loss could keep, and its deliberately broken variants
/// drop or shorten what they forward; other tests count. Each function forwards to the
/// log's own I/O (`redo_log::direct_*`) unless overridden. Without a seam installed the
/// log makes its system calls itself.
class log_io {
 public:
  /// Writes `n` bytes at `offset` of the log: `pwrite`, or stores into its mapping.
  virtual void write(redo_log& log, std::uint64_t offset, const std::byte* p,
                     std::size_t n) noexcept;
  /// `fdatasync` of the log file.
  virtual void flush(redo_log& log) noexcept;
  /// The cache-line mode: makes `[offset, offset + n)` of the log, already written,
  /// durable (cache-line flushes and a fence).
  virtual void persist(redo_log& log, std::uint64_t offset, std::size_t n) noexcept;
  /// `fdatasync` of the pool file: its second bank is on the medium.
  virtual void flush_pool(redo_log& log) noexcept;

 protected:
  log_io() = default;
  log_io(const log_io&) = default;
  log_io& operator=(const log_io&) = default;
  ~log_io() = default;
};

/// The installed seam, or none (every program). A process-wide switch for tests: it is
/// read at each write and flush, and a `fork()`ed child keeps it.
inline log_io* io_seam = nullptr;

/// Whether `force_cache_lines_on_page_cache` exists: in the fault-injection builds of
/// the tests, and where `FTM_FORCEABLE_CACHE_LINES` is 1 (the benchmark, which must not
/// have the fault points). Never in a program's build.
#if (defined(FTM_FAULT_INJECTION) && FTM_FAULT_INJECTION) || \
    (defined(FTM_FORCEABLE_CACHE_LINES) && FTM_FORCEABLE_CACHE_LINES)
#define FTM_DETAIL_FORCEABLE_CACHE_LINES 1
/// The cache-line mode on a file system without `MAP_SYNC` (tests and benchmarks): an
/// explicit `flush_method::cache_lines` maps the log with plain `MAP_SHARED` when
/// `MAP_SYNC` is refused. Its stores then sit in the page cache, which a power loss
/// does not keep: NOT durable. The power-loss test checks the order of the stores and
/// fences, not the medium; the benchmark compares the cost with PMDK's, as forced.
inline bool force_cache_lines_on_page_cache = false;
#else
#define FTM_DETAIL_FORCEABLE_CACHE_LINES 0
#endif

/// The process dies: a log it cannot write leaves committed transactions without
/// their durability, and after a failed flush the kernel may have dropped the pages.
/// The pool stays recoverable (the committer's descriptor is COMMITTING).
[[noreturn]] inline void fatal(std::string_view what, const std::filesystem::path& file) noexcept {
  const int e = errno;
  std::fprintf(stderr, "ftm: fatal: cannot %.*s the redo log '%s': %s\n",
               static_cast<int>(what.size()), what.data(), file.c_str(), std::strerror(e));
  std::abort();
}

/// The redo log of one pool, in one process.
class redo_log {
 public:
  /// Calls `f(offset, length, bytes)` for each object a record holds.
  using object_visitor = void (*)(void* ctx, std::uint64_t offset, std::uint32_t length,
                                  const std::byte* bytes);

  /// The log file of the pool at `pool`.
  static std::filesystem::path path_for(const std::filesystem::path& pool) {
    std::filesystem::path p = pool;
    p += ".wal";
    return p;
  }

  /// Creates the log file at `path` for the pool `pool_id` (replacing a stale one),
  /// `capacity` bytes preallocated, its directory flushed.
  static void create_file(const std::filesystem::path& path, std::uint64_t pool_id,
                          std::uint64_t capacity) {
    std::filesystem::path temp = path;
    temp += fmt::format(".creating.{}", ::getpid());
    const int fd = ::open(temp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) io_fail("create", temp);
    // Zeros written now keep later flushes to data only (no block allocation), and a
    // file system without room for the log says so here.
    std::vector<std::byte> zeros(std::size_t{1} << 20);
    std::string why;  // the first failure, named when it happens
    int why_errno = 0;
    // Writes all `n` bytes: a short write is retried, and the call that fails says why.
    auto write_all = [&](const void* p, std::size_t n, std::uint64_t at) {
      for (std::size_t done = 0; why.empty() && done < n;) {
        const ssize_t w = ::pwrite(fd, static_cast<const std::byte*>(p) + done, n - done,
                                   static_cast<off_t>(at + done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) {
          why = std::strerror(why_errno = errno);
        } else if (w == 0) {
          why_errno = EIO;
          why = fmt::format("short write ({} of {} bytes at offset {})", done, n, at);
        }
        done += w > 0 ? static_cast<std::size_t>(w) : 0;
      }
    };
    for (std::uint64_t off = 0; why.empty() && off < capacity; off += zeros.size())
      write_all(zeros.data(),
                static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), capacity - off)),
                off);
    file_header h{wal_magic, wal_version, 0, pool_id, 1, new_log_id(), 1, 0};
    h.checksum = header_checksum(h);
    if (why.empty()) write_all(&h, sizeof h, 0);
    if (why.empty() && ::fdatasync(fd) != 0) why = std::strerror(why_errno = errno);
    ::close(fd);
    if (why.empty() && ::rename(temp.c_str(), path.c_str()) != 0)
      why = std::strerror(why_errno = errno);
    if (!why.empty()) {
      ::unlink(temp.c_str());
      throw io_error(why_errno,
                     fmt::format("cannot write the redo log '{}': {}", path.string(), why));
    }
    sync_directory(path);
  }

  /// Flushes the directory holding `file`, so that its name survives a power loss.
  static void sync_directory(const std::filesystem::path& file) {
    const auto dir = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) io_fail("open the directory of", file);
    const bool ok = ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) io_fail("flush the directory of", file);
  }

  /// Opens the log file at `path` of the pool `pool_id` whose file is `pool_fd` and
  /// whose shared state is `ctl`, to be flushed as `flush` asks. Its capacity is the
  /// file's size (`capacity` if the file is smaller). Throws `bad_pool` if it is
  /// missing or foreign, and `io_error` if `flush` is `cache_lines` and the file
  /// cannot be mapped for it.
  redo_log(std::filesystem::path path, std::uint64_t pool_id, int pool_fd, control* ctl,
           std::uint64_t capacity, flush_method flush = flush_method::fdatasync)
      : path_(std::move(path)),
        pool_fd_(pool_fd),
        ctl_(ctl),
        capacity_(capacity),
        pool_id_(pool_id) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      if (errno == ENOENT) {
        throw bad_pool(fmt::format(
            "the pool was used with durability power, but its redo log '{}' is missing: the "
            "pool cannot be recovered without it (pmem::inspect and ftm-inspect read it "
            "read-only, to rescue its data)",
            path_.string()));
      }
      io_fail("open", path_);
    }
    file_header& h = header_;
    if (!read_header(h)) {
      ::close(fd_);
      throw bad_pool(fmt::format(
          "'{}' is not an ftm redo log (its header is damaged, or the file is truncated)",
          path_.string()));
    }
    if (h.version != wal_version) {
      ::close(fd_);
      throw bad_pool(fmt::format(
          "the redo log '{}' has version {}; this ftm reads version {} only (recreate the pool)",
          path_.string(), h.version, wal_version));
    }
    if (h.pool_id != pool_id) {
      ::close(fd_);
      throw bad_pool(
          fmt::format("the redo log '{}' belongs to another pool (pool id {:#x}, expected {:#x})",
                      path_.string(), h.pool_id, pool_id));
    }
    file_epoch_ = h.epoch;
    // The size it was made with: every process checkpoints at the same point.
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && static_cast<std::uint64_t>(st.st_size) > records_begin) {
      capacity_ = static_cast<std::uint64_t>(st.st_size);
    }
    if (flush != flush_method::fdatasync) map_for_cache_lines(flush);
  }

  redo_log(const redo_log&) = delete;
  redo_log& operator=(const redo_log&) = delete;
  ~redo_log() {
    if (map_ != nullptr) ::munmap(map_, map_size_);
    if (fd_ >= 0) ::close(fd_);
  }

  /// How this process flushes the log.
  [[nodiscard]] flush_method mode() const noexcept {
    return map_ != nullptr ? flush_method::cache_lines : flush_method::fdatasync;
  }

  /// The epoch in the file's header when it was opened.
  [[nodiscard]] std::uint64_t file_epoch() const noexcept { return file_epoch_; }
  /// The id of the log file.
  [[nodiscard]] std::uint64_t log_id() const noexcept { return header_.log_id; }
  /// The sequence number of the first record of the file's epoch, when it was opened.
  [[nodiscard]] std::uint64_t first_seq() const noexcept { return header_.first_seq; }

  /// Checks the log against what the pool recorded (`scan`) and only then visits, in
  /// log order, every object of every valid record. Throws `bad_pool`, having visited
  /// nothing, with `scan`'s reason (which names the log file, the record and its offset)
  /// prefixed by `refusal`.
  scan_result replay(std::uint64_t lo, std::uint64_t hi, object_visitor visit, void* ctx,
                     std::string_view refusal) const {
    const recorded_state r{ctl_->log_id.load(), ctl_->epoch.load(), ctl_->durable_seq.load()};
    scan_result res = scan(fd_, path_, header_, r, lo, hi);
    if (!res.problem.empty()) throw bad_pool(fmt::format("{}{}", refusal, res.problem));
    std::vector<std::byte> rec;
    // Read again, as checked; still bounded, should someone write the file meanwhile.
    const auto changed = [&](std::uint64_t off) {
      return bad_pool(fmt::format("{}its redo log '{}' changed at offset {} while it was replayed",
                                  refusal, path_.string(), off));
    };
    for (std::uint64_t off = records_begin; off < res.end;) {
      record_header rh{};
      if (::pread(fd_, &rh, sizeof rh, static_cast<off_t>(off)) != static_cast<ssize_t>(sizeof rh))
        io_fail("read", path_);
      if (rh.bytes < sizeof rh || rh.bytes > res.end - off) throw changed(off);
      rec.resize(rh.bytes);
      if (::pread(fd_, rec.data(), rh.bytes, static_cast<off_t>(off)) !=
          static_cast<ssize_t>(rh.bytes)) {
        io_fail("read", path_);
      }
      std::uint64_t at = sizeof rh;
      for (std::uint32_t i = 0; i < rh.objects; ++i) {
        object_entry oe{};
        if (at + sizeof oe > rh.bytes) throw changed(off);
        std::memcpy(&oe, rec.data() + at, sizeof oe);
        at += sizeof oe;
        if (oe.offset < lo || oe.offset > hi || oe.length > hi - oe.offset ||
            oe.length > rh.bytes - at) {
          throw changed(off);
        }
        visit(ctx, oe.offset, oe.length, rec.data() + at);
        at += (std::uint64_t{oe.length} + 7) / 8 * 8;
      }
      off += rh.bytes;
    }
    return res;
  }

  /// Checks the log file at `path` of the pool `pool_id` against what the pool recorded,
  /// reading only: why recovery would refuse it (`scan`), or empty if it would not.
  static std::string verify(const std::filesystem::path& path, std::uint64_t pool_id,
                            const recorded_state& r, std::uint64_t lo, std::uint64_t hi) {
    // O_NONBLOCK: a FIFO in the log's place must not hang the reader.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ENOENT) {
        return fmt::format(
            "it was used with durability power, but its redo log '{}' is missing (pmem::open "
            "refuses the pool; what its file holds can still be read)",
            path.string());
      }
      return fmt::format("cannot open its redo log '{}': {}", path.string(), std::strerror(errno));
    }
    std::string problem;
    file_header h{};
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      problem = fmt::format("its redo log '{}' is not a regular file", path.string());
    } else if (!read_header_at(fd, h)) {
      problem = fmt::format(
          "its redo log '{}' is not an ftm redo log (its header is damaged, or the file is "
          "truncated)",
          path.string());
    } else if (h.version != wal_version) {
      problem = fmt::format("its redo log '{}' has version {}; this ftm reads version {} only",
                            path.string(), h.version, wal_version);
    } else if (h.pool_id != pool_id) {
      problem = fmt::format("its redo log '{}' belongs to another pool (pool id {:#x})",
                            path.string(), h.pool_id);
    } else {
      problem = scan(fd, path, h, r, lo, hi).problem;
    }
    ::close(fd);
    return problem;
  }

  /// Makes the shared state new: no process has the pool open. `last_seq` is the last
  /// record of the file's epoch (recovery replayed up to it; `first_seq() - 1` if none).
  /// The pool's record of its log (`log_id`, `epoch`, `durable_seq`) is replaced for a
  /// `new_log` only, just made and flushed. Otherwise it is kept, as recovery checked
  /// it: what recovery read may not be on the medium yet (the death of a checkpointer
  /// leaves a header unflushed), and `new_epoch`, which follows, brings it up to date
  /// once the new header is.
  void init_control(std::uint64_t last_seq, bool new_log) {
    for (pthread_mutex_t* m : {&ctl_->append, &ctl_->flush}) {
      pthread_mutexattr_t a;
      pthread_mutexattr_init(&a);
      pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
      pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
      const int r = pthread_mutex_init(m, &a);
      pthread_mutexattr_destroy(&a);
      if (r != 0) {
        throw io_error(r, fmt::format("cannot make the redo log's lock: {}", std::strerror(r)));
      }
    }
    ctl_->tail.store(0);
    ctl_->durable.store(0);
    ctl_->base.store(0);
    if (new_log) {
      ctl_->epoch.store(header_.epoch);
      ctl_->durable_seq.store(last_seq);
      ctl_->log_id.store(header_.log_id);  // last (seq_cst): a page with it has the others
    }
    ctl_->tail_seq.store(last_seq);
    ctl_->chain.store(0);  // new_epoch follows
    for (auto& f : ctl_->in_flight)
      f.store(0);
    ctl_->flushes.store(0);
    ctl_->sleepers.store(0);
  }

  /// Starts a new epoch, after the later of the pool's and `after`: the header, flushed,
  /// makes every record in the file stale; the next record continues the sequence.
  /// The caller holds the append lock, or no other process has the pool open.
  void new_epoch(std::uint64_t after = 0) {
    const std::uint64_t epoch = std::max({ctl_->epoch.load(), header_.epoch, after}) + 1;
    file_header h{
        wal_magic, wal_version, 0, pool_id_, epoch, header_.log_id, ctl_->tail_seq.load() + 1, 0};
    h.checksum = header_checksum(h);
    const auto* bytes = reinterpret_cast<const std::byte*>(&h);
    if (map_ != nullptr) {
      // A sector holds the header whole; a cache line may reach the medium in parts.
      write_at(header_copy_offset, bytes, sizeof h);
      persist_range(header_copy_offset, sizeof h);
      write_at(0, bytes, sizeof h);
      persist_range(0, sizeof h);
    } else {
      // One flush makes both durable. The copy must be current should the pool later
      // be flushed by cache lines: a header torn then falls back to it, and an older
      // epoch's copy could replay records long superseded. (A new log has no copy.)
      write_at(header_copy_offset, bytes, sizeof h);
      write_at(0, bytes, sizeof h);
      flush_file();
    }
    // Every record so far is applied and the pool flushed: the new epoch needs none.
    ctl_->epoch.store(h.epoch);
    ctl_->chain.store(h.checksum);
    ctl_->base.store(ctl_->tail.load());
    ctl_->durable_seq.store(std::max(ctl_->durable_seq.load(), ctl_->tail_seq.load()));
    ctl_->durable.store(std::max(ctl_->durable.load(), ctl_->tail.load()));
    header_ = h;
    file_epoch_ = h.epoch;
  }

  /// Flushes the pool file: its second bank is on the medium.
  void flush_pool() noexcept {
    if (io_seam != nullptr) {
      io_seam->flush_pool(*this);
    } else {
      direct_flush_pool();
    }
  }

  /// Builds in `buf` the record of descriptor `d`: `gather(emit)` calls
  /// `emit(offset, length, bytes)` for each object. Returns the number of objects; the
  /// header's other fields are filled by `append`.
  template <class Gather>
  static std::uint32_t encode(std::vector<std::byte>& buf, tx_id d, Gather&& gather) {
    buf.assign(sizeof(record_header), std::byte{0});
    std::uint32_t objects = 0;
    gather([&](std::uint64_t offset, std::uint32_t length, const std::byte* bytes) {
      const object_entry oe{offset, length, 0};
      const std::size_t at = buf.size();
      buf.resize(at + sizeof oe + (length + 7) / 8 * 8, std::byte{0});
      std::memcpy(buf.data() + at, &oe, sizeof oe);
      std::memcpy(buf.data() + at + sizeof oe, bytes, length);
      ++objects;
    });
    record_header rh{};
    rh.objects = objects;
    rh.descriptor = d + 1;
    std::memcpy(buf.data(), &rh, sizeof rh);
    return objects;
  }

  /// The append lock, held: appends and checkpoints happen under it. The lock is
  /// robust: if its last holder died, `repair()` is true and the holder must
  /// checkpoint before it appends (the dead holder may have been mid-checkpoint).
  class append_lock {
   public:
    append_lock(const append_lock&) = delete;
    append_lock& operator=(const append_lock&) = delete;
    ~append_lock() { unlock(); }
    [[nodiscard]] bool repair() const noexcept { return repair_; }
    void unlock() noexcept {
      if (m_ != nullptr) pthread_mutex_unlock(m_);
      m_ = nullptr;
    }

   private:
    friend class redo_log;
    append_lock(pthread_mutex_t* m, bool repair) noexcept : m_(m), repair_(repair) {}
    pthread_mutex_t* m_;
    bool repair_;
  };

  /// Takes the append lock.
  [[nodiscard]] append_lock lock_append() noexcept {
    const int r = pthread_mutex_lock(&ctl_->append);
    if (r == EOWNERDEAD) {
      pthread_mutex_consistent(&ctl_->append);
      return {&ctl_->append, true};
    }
    if (r != 0) {
      errno = r;
      fatal("lock", path_);
    }
    return {&ctl_->append, false};
  }

  /// Whether a record of `bytes` fits in the log before a checkpoint.
  [[nodiscard]] bool fits(const append_lock&, std::size_t bytes) const noexcept {
    return records_begin + (ctl_->tail.load(std::memory_order_relaxed) - ctl_->base.load()) +
               bytes <=
           capacity_;
  }

  /// Whether `d`'s record is logged and its phase 2 not done: a checkpoint must wait
  /// for it (or, if its committer died, apply it: `visit_logged`).
  [[nodiscard]] bool in_flight(tx_id d) const noexcept {
    return (ctl_->in_flight[d / 64].load(std::memory_order_acquire) >> d % 64 & 1) != 0;
  }

  /// Visits the objects of the last record that descriptor `d` appended in this epoch,
  /// once the log is durable up to it; false if there is none. The caller holds the
  /// append lock, so the epoch cannot end meanwhile.
  bool visit_logged(const append_lock&, tx_id d, object_visitor visit, void* ctx) noexcept {
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_acquire);
    if (map_ == nullptr) wait_durable(tail);
    const std::uint64_t end = records_begin + (tail - ctl_->base.load());
    std::uint64_t found = 0;
    record_header rh{};
    for (std::uint64_t off = records_begin; off < end; off += rh.bytes) {
      read_at(off, &rh, sizeof rh);
      if (rh.bytes < sizeof rh) fatal("read a whole record of", path_);
      if (rh.descriptor == d + 1) found = off;
    }
    if (found == 0) return false;
    read_at(found, &rh, sizeof rh);
    std::vector<std::byte> rec(rh.bytes);
    read_at(found, rec.data(), rec.size());
    std::uint64_t at = sizeof rh;
    for (std::uint32_t i = 0; i < rh.objects; ++i) {
      object_entry oe{};
      std::memcpy(&oe, rec.data() + at, sizeof oe);
      at += sizeof oe;
      visit(ctx, oe.offset, oe.length, rec.data() + at);
      at += (std::uint64_t{oe.length} + 7) / 8 * 8;
    }
    return true;
  }

  /// Ends the epoch: flushes the pool (its second bank is then on the medium) and
  /// starts a new epoch. No record may be in flight.
  void checkpoint(const append_lock&) noexcept {
    flush_pool();
    FTM_FAULT_POINT("log.mid_checkpoint");
    // The file's epoch, if a checkpointer died after writing it, must not be reused
    // (nor stored in the pool before a header holding it is on the medium).
    new_epoch(file_epoch_on_disk());
  }

  /// Writes the record that `encode` built in `buf` at the tail; returns its end
  /// position, for `wait_durable`. In the cache-line mode it is durable on return.
  std::uint64_t append(const append_lock&, tx_id d, std::vector<std::byte>& buf) noexcept {
    const std::uint64_t pos = ctl_->tail.load(std::memory_order_relaxed);
    const std::uint64_t seq = ctl_->tail_seq.load(std::memory_order_relaxed) + 1;
    record_header rh{};
    std::memcpy(&rh, buf.data(), sizeof rh);
    rh.epoch = ctl_->epoch.load(std::memory_order_relaxed);
    rh.seq = seq;
    rh.bytes = buf.size();
    std::memcpy(buf.data(), &rh, sizeof rh);
    rh.checksum =
        checksum(buf.data() + 8, buf.size() - 8, ctl_->chain.load(std::memory_order_relaxed));
    std::memcpy(buf.data(), &rh.checksum, 8);
    const std::uint64_t at = records_begin + (pos - ctl_->base.load());
    write_at(at, buf.data(), buf.size());
    if (map_ != nullptr) {
      // Under the lock: no record is ever durable before the ones ahead of it, which
      // recovery needs (it stops at the first record that is not whole).
      persist_range(at, buf.size());
    }
    // Only now: a dead appender leaves no hole, its bytes are overwritten (the next
    // holder of the lock starts a new epoch, which resets the chain). `tail_seq` before
    // `tail`: a flusher that sees the tail sees its record's number too.
    ctl_->chain.store(rh.checksum, std::memory_order_relaxed);
    ctl_->tail_seq.store(seq, std::memory_order_release);
    ctl_->tail.store(pos + buf.size(), std::memory_order_release);
    if (map_ != nullptr) {
      ctl_->durable_seq.store(seq, std::memory_order_release);
      ctl_->durable.store(pos + buf.size(), std::memory_order_release);
    }
    ctl_->in_flight[d / 64].fetch_or(std::uint64_t{1} << d % 64, std::memory_order_release);
    return pos + buf.size();
  }

  /// Recovery of a dead committer `d`: if its record is in the log, waits until the log
  /// is durable (true); otherwise false, and the caller appends it again.
  bool settle_logged(tx_id d) noexcept {
    if (!in_flight(d)) return false;
    if (map_ == nullptr) wait_durable(ctl_->tail.load(std::memory_order_acquire));
    return true;
  }

  /// Phase 2 of `d` is done: a checkpoint no longer waits for it.
  void applied(tx_id d) noexcept {
    ctl_->in_flight[d / 64].fetch_and(~(std::uint64_t{1} << d % 64), std::memory_order_release);
  }

  /// Group commit: a committer whose record is not yet durable flushes the log itself
  /// if nobody is flushing, and otherwise sleeps until the running flush ends. Every
  /// sleeper wakes at once then: those the flush covered return, and one of the others
  /// leads the next flush for all of them. (Queueing on the flush lock instead woke the
  /// covered committers one at a time, each wake a scheduling round trip, so the next
  /// flush started late and covered few records.) The cache-line mode returns at once:
  /// its records are durable when appended.
  void wait_durable(std::uint64_t end) noexcept {
    if (map_ != nullptr) return;
    for (;;) {
      const std::uint32_t seen = ctl_->flushes.load(std::memory_order_seq_cst);
      if (ctl_->durable.load(std::memory_order_acquire) >= end) return;
      const int r = pthread_mutex_trylock(&ctl_->flush);
      if (r == 0 || r == EOWNERDEAD) {
        if (r == EOWNERDEAD) pthread_mutex_consistent(&ctl_->flush);
        if (ctl_->durable.load(std::memory_order_acquire) < end) flush_log_locked();
        pthread_mutex_unlock(&ctl_->flush);
        // Even without a flush: a committer that found the lock taken just now sleeps
        // until `flushes` changes, and its record may need a flush nobody else leads.
        announce_flush();
        continue;
      }
      if (r != EBUSY) {
        errno = r;
        fatal("lock", path_);
      }
      // A flush is running. The timeout bounds the wait if its flusher dies: the robust
      // lock then lets the next committer take over.
      ctl_->sleepers.fetch_add(1, std::memory_order_seq_cst);
      timespec ts{0, 2'000'000};
      // Not FUTEX_PRIVATE_FLAG: the committers may be in different processes.
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&ctl_->flushes), FUTEX_WAIT, seen, &ts,
                nullptr, 0);
      ctl_->sleepers.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  // ---- the log's own I/O, under the seam (`log_io`) ---------------------------------

  /// The log file's name.
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }
  /// The cache-line mode: the bytes mapped; `direct_persist` flushes a range past them
  /// with `fdatasync`.
  [[nodiscard]] std::size_t mapped_bytes() const noexcept { return map_size_; }

  void direct_write(std::uint64_t off, const std::byte* p, std::size_t n) noexcept {
    if (map_ != nullptr && off + n <= map_size_) {
      std::memcpy(map_ + off, p, n);
      return;
    }
    // A record larger than the whole log is written past its end (and the mapping's,
    // in the cache-line mode: `direct_persist` then flushes it with `fdatasync`).
    for (std::size_t done = 0; done < n;) {
      const ssize_t w = ::pwrite(fd_, p + done, n - done, static_cast<off_t>(off + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fatal("write", path_);
      done += static_cast<std::size_t>(w);
    }
  }

  void direct_flush() noexcept {
    if (::fdatasync(fd_) != 0) fatal("flush", path_);
  }

  void direct_persist(std::uint64_t off, std::size_t n) noexcept {
    if (off + n > map_size_) {
      direct_flush();  // written with pwrite; on DAX this also flushes the mapping's lines
      return;
    }
    persist::flush_lines(map_ + off, n);
    persist::fence();
  }

  void direct_flush_pool() noexcept {
    if (::fdatasync(pool_fd_) != 0) fatal("flush the pool of", path_);
  }

 private:
  /// The later epoch of the file's two headers (a checkpointer may have died between
  /// writing them).
  std::uint64_t file_epoch_on_disk() const noexcept {
    std::uint64_t epoch = 0;
    for (const std::uint64_t off : {std::uint64_t{0}, header_copy_offset}) {
      file_header h{};
      if (::pread(fd_, &h, sizeof h, static_cast<off_t>(off)) != static_cast<ssize_t>(sizeof h)) {
        fatal("read", path_);
      }
      if (h.magic == wal_magic && h.checksum == header_checksum(h))
        epoch = std::max(epoch, h.epoch);
    }
    return epoch;
  }

  /// Reads the file's header into `h`: the first copy if it is whole, else the second
  /// (the cache-line mode's, written first). False if neither is.
  bool read_header(file_header& h) const noexcept { return read_header_at(fd_, h); }
  static bool read_header_at(int fd, file_header& h) noexcept {
    for (const std::uint64_t off : {std::uint64_t{0}, header_copy_offset}) {
      if (::pread(fd, &h, sizeof h, static_cast<off_t>(off)) == static_cast<ssize_t>(sizeof h) &&
          h.magic == wal_magic && h.checksum == header_checksum(h)) {
        return true;
      }
    }
    return false;
  }

  /// Maps the whole file for `flush_method::cache_lines`, with `MAP_SYNC`: the kernel
  /// then keeps the file's blocks and metadata durable for every page written
  /// through the mapping, so flushing the stored lines is all a write needs. Without
  /// it (not a DAX file system, or not x86-64) `automatic` stays with `fdatasync`.
  void map_for_cache_lines(flush_method flush) {
    std::string why;
    int why_errno = ENOTSUP;  // unless the system gave its own reason
    void* p = MAP_FAILED;
    struct stat st {};
    if (!persist::available()) {
      why = "this processor has no cache-line flush instructions that ftm uses (x86-64 only)";
    } else if (::fstat(fd_, &st) != 0 || static_cast<std::uint64_t>(st.st_size) <= records_begin) {
      why = "the file is too small";
      why_errno = EINVAL;
    } else {
      const auto size = static_cast<std::size_t>(st.st_size);
#if defined(MAP_SYNC) && defined(MAP_SHARED_VALIDATE)
      p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd_, 0);
      const int e = errno;
#if FTM_DETAIL_FORCEABLE_CACHE_LINES
      if (p == MAP_FAILED && force_cache_lines_on_page_cache &&
          flush == flush_method::cache_lines) {
        p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
      }
#endif
      if (p == MAP_FAILED) {
        why_errno = e;
        why = fmt::format(
            "its file system refuses to map it with MAP_SYNC ({}): it is not a DAX file system "
            "(persistent memory mounted with -o dax)",
            std::strerror(e));
      }
#else
      why = "this system's <sys/mman.h> has no MAP_SYNC";
#endif
      if (p != MAP_FAILED) {
        map_ = static_cast<std::byte*>(p);
        map_size_ = size;
        capacity_ = size;
        return;
      }
    }
    if (flush == flush_method::cache_lines) {
      ::close(fd_);
      fd_ = -1;
      throw io_error(
          why_errno,
          fmt::format(
              "cannot flush the redo log '{}' by cache lines: {}; use ftm::flush_method::fdatasync "
              "(or automatic, which chooses it here)",
              path_.string(), why));
    }
  }

  /// Flushes every record written so far. The caller holds the flush lock.
  void flush_log_locked() noexcept {
    // Committers just woken by the last flush are about to append: letting them run
    // first puts their records in this flush (8 threads: 36k -> 40k commits/s).
    std::this_thread::yield();
    const std::uint64_t t = ctl_->tail.load(std::memory_order_acquire);
    const std::uint64_t s = ctl_->tail_seq.load(std::memory_order_acquire);
    flush_file();
    FTM_FAULT_POINT("log.mid_flush");
    // Before `durable`: a committer that sees its record durable finds it recorded so.
    std::uint64_t seq = ctl_->durable_seq.load(std::memory_order_relaxed);
    while (seq < s && !ctl_->durable_seq.compare_exchange_weak(seq, s, std::memory_order_release)) {
    }
    std::uint64_t cur = ctl_->durable.load(std::memory_order_relaxed);
    while (cur < t && !ctl_->durable.compare_exchange_weak(cur, t, std::memory_order_release)) {
    }
  }

  /// Wakes the committers that slept through a flush, after the flush lock is released:
  /// one that found the lock taken had read `flushes` before, so it sees the change. A
  /// sleeper counts itself before the kernel reads `flushes` again: either it is counted
  /// here, or it sees the new value and does not sleep.
  void announce_flush() noexcept {
    ctl_->flushes.fetch_add(1, std::memory_order_seq_cst);
    if (ctl_->sleepers.load(std::memory_order_seq_cst) != 0) {
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&ctl_->flushes), FUTEX_WAKE, INT_MAX,
                nullptr, nullptr, 0);
    }
  }

  void read_at(std::uint64_t off, void* p, std::size_t n) const noexcept {
    if (::pread(fd_, p, n, static_cast<off_t>(off)) != static_cast<ssize_t>(n))
      fatal("read", path_);
  }

  void write_at(std::uint64_t off, const std::byte* p, std::size_t n) noexcept {
    if (io_seam != nullptr) {
      io_seam->write(*this, off, p, n);
    } else {
      direct_write(off, p, n);
    }
  }

  void flush_file() noexcept {
    if (io_seam != nullptr) {
      io_seam->flush(*this);
    } else {
      direct_flush();
    }
  }

  /// The cache-line mode: `[off, off + n)` of the log, stored by `write_at`, reaches
  /// the medium before this returns.
  void persist_range(std::uint64_t off, std::size_t n) noexcept {
    if (io_seam != nullptr) {
      io_seam->persist(*this, off, n);
    } else {
      direct_persist(off, n);
    }
  }

  [[noreturn]] static void io_fail(std::string_view what, const std::filesystem::path& file) {
    const int e = errno;
    throw io_error(
        e, fmt::format("cannot {} the redo log '{}': {}", what, file.string(), std::strerror(e)));
  }

  std::filesystem::path path_;
  int fd_ = -1;
  int pool_fd_ = -1;
  control* ctl_ = nullptr;
  std::uint64_t capacity_ = 0;
  std::uint64_t file_epoch_ = 0;
  std::uint64_t pool_id_ = 0;
  file_header header_{};      // as read at open, or as last written by this process
  std::byte* map_ = nullptr;  // the cache-line mode: the whole file, mapped with MAP_SYNC
  std::size_t map_size_ = 0;
};

inline void log_io::write(redo_log& log, std::uint64_t offset, const std::byte* p,
                          std::size_t n) noexcept {
  log.direct_write(offset, p, n);
}
inline void log_io::flush(redo_log& log) noexcept { log.direct_flush(); }
inline void log_io::persist(redo_log& log, std::uint64_t offset, std::size_t n) noexcept {
  log.direct_persist(offset, n);
}
inline void log_io::flush_pool(redo_log& log) noexcept { log.direct_flush_pool(); }

}  // namespace ftm::FTM_ABI_NAMESPACE::detail::redo

#endif  // FTM_DETAIL_REDO_LOG_HPP
