#ifndef FTM_ENGINES_PMEM_HPP
#define FTM_ENGINES_PMEM_HPP

/// \file
/// `ftm::engines::pmem`: the dual-bank engine on a pool file mapped into memory, so
/// that the pool outlives every process that uses it.

#include <ftm/detail/bank/check.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/detail/protected_bank.hpp>
#include <ftm/detail/redo_log.hpp>
#include <ftm/durability.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/inspect.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Frees every lock word of the bank at `bank` (laid out as `g`): the roots table's,
/// every chunk record's, and those of every block of the chunks that hold small objects
/// and of every large object's first chunk. Commits copy an object between the banks
/// from its `size` field on, so the second bank's lock words are never written: where
/// a header lies on bytes that an earlier object's data used, they hold that data. A
/// bank copied from the second one must not trust them. Reads nothing but the chunk
/// records' classes, each bounded: a damaged record frees fewer words, never a word
/// outside the bank.
inline void clear_lock_words(std::byte* bank, const bank_layout::geometry& g) noexcept {
  namespace layout = bank_layout;
  auto clear = [&](std::uint64_t off) { std::memset(bank + off, 0, layout::tracked_offset); };
  clear(layout::roots_offset);
  for (std::uint64_t c = 0; c < g.nchunks; ++c) {
    const std::uint64_t record = layout::metas_begin + c * layout::meta_stride;
    clear(record);
    std::uint32_t cls = 0;
    std::memcpy(&cls, bank + record + layout::header_size + offsetof(layout::chunk_meta, cls),
                sizeof cls);
    const std::uint64_t base = g.chunks_offset + c * layout::chunk_size;
    if (cls >= 1 && cls <= layout::nclasses) {
      // Every block, used or not: a damaged bitmap must not leave a live one locked.
      const std::uint64_t block = layout::min_block << (cls - 1);
      for (std::uint64_t off = base; off < base + layout::chunk_size; off += block)
        clear(off);
    } else if (cls == layout::cls_large_head) {
      clear(base);
    }
  }
}

/// A pool file mapped with `MAP_SHARED`: every process that maps it shares its pages,
/// and the kernel keeps them when the processes die.
class file_region {
 protected:
  struct create_tag {};
  struct open_tag {};
  struct inspect_tag {};

  /// Larger banks in a pool header are damage.
  static constexpr std::uint64_t max_bank_size = bank_layout::max_bank_size;

  /// A new pool file is made under a temporary name and renamed into place once it is
  /// formatted (`publish()`), so no process ever opens a half-made pool.
  file_region(create_tag, std::filesystem::path path, const bank_layout::geometry& g)
      : file_region(std::move(path)) {
    geometry_ = g;
    if (names_file(path_, "create")) {
      throw io_error(EEXIST,
                     fmt::format("cannot create the pool '{}': the file exists", path_.string()));
    }
    temp_ = path_;
    temp_ += fmt::format(".creating.{}", ::getpid());
    fd_ = ::open(temp_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("create", temp_);
    if (::ftruncate(fd_, static_cast<off_t>(g.map_size)) != 0) fail("size", temp_);
    reserve();
    map();
  }

  /// An existing pool file, checked before anything in it is trusted.
  file_region(open_tag, std::filesystem::path path) : file_region(std::move(path)) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer (check_header refuses it).
    fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) {
      const int e = errno;
      if ((e == EACCES || e == EPERM || e == EROFS) && readable()) {
        throw io_error(
            e,
            fmt::format("cannot open the pool file '{}' for writing: {} (the file is read-only{}; "
                        "pmem::inspect reads a pool without writing to it)",
                        path_.string(), std::strerror(e),
                        e == EROFS   ? ": its file system is mounted read-only"
                        : e == EPERM ? ": it is immutable or append-only (lsattr)"
                                     : ": no write permission"));
      }
      errno = e;
      fail("open", path_);
    }
    check_header();
    map(PROT_READ | PROT_WRITE);
  }

  /// An existing pool file, checked as above and mapped read-only: nothing in it can
  /// change through this mapping.
  file_region(inspect_tag, std::filesystem::path path) : file_region(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) fail("open", path_);
    check_header();
    map(PROT_READ);
  }

  file_region(const file_region&) = delete;
  file_region& operator=(const file_region&) = delete;
  ~file_region() {
    if (base_ != nullptr) ::munmap(base_, geometry_.map_size);
    if (fd_ >= 0) ::close(fd_);
    if (!temp_.empty()) ::unlink(temp_.c_str());  // creation did not finish
  }

  /// Gives the formatted pool its name; fails, removing the new file, if the name was
  /// taken in the meantime.
  void publish() {
    if (::fdatasync(fd_) != 0) fail("flush", temp_);
    if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno == EEXIST) {
        throw io_error(EEXIST,
                       fmt::format("cannot create the pool '{}': the file exists", path_.string()));
      }
      fail("rename", temp_);
    }
    temp_.clear();
  }

  /// Holds an exclusive `flock` on the directory of `file`: creators of `power` pools
  /// there take turns, so one that loses the race for a name never replaces the
  /// winner's redo log with its own.
  class directory_lock {
   public:
    explicit directory_lock(const std::filesystem::path& file) {
      const auto dir = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
      fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd_ < 0) fail_lock(file);
      while (::flock(fd_, LOCK_EX) != 0) {
        if (errno != EINTR) {
          const int e = errno;
          ::close(fd_);
          errno = e;
          fail_lock(file);
        }
      }
    }
    directory_lock(const directory_lock&) = delete;
    directory_lock& operator=(const directory_lock&) = delete;
    ~directory_lock() { ::close(fd_); }  // and the lock with it

   private:
    [[noreturn]] static void fail_lock(const std::filesystem::path& file) {
      const int e = errno;
      throw io_error(e, fmt::format("cannot create the pool '{}': cannot lock its directory: {}",
                                    file.string(), std::strerror(e)));
    }
    int fd_ = -1;
  };

  /// Holds an exclusive `flock` on the pool file while openers decide what to recover,
  /// so two of them never both take the other's descriptors for an earlier boot's.
  class opening_lock {
   public:
    explicit opening_lock(int fd) : fd_(fd) {
      while (::flock(fd_, LOCK_EX) != 0) {
        if (const int e = errno; e != EINTR) {
          throw io_error(e, fmt::format("cannot lock the pool file: {}", std::strerror(e)));
        }
      }
    }
    opening_lock(const opening_lock&) = delete;
    opening_lock& operator=(const opening_lock&) = delete;
    ~opening_lock() { ::flock(fd_, LOCK_UN); }

   private:
    int fd_;
  };

  [[nodiscard]] int region_fd() const noexcept { return fd_; }
  [[nodiscard]] std::byte* region() const noexcept { return base_; }
  [[nodiscard]] const bank_layout::geometry& region_geometry() const noexcept { return geometry_; }
  [[nodiscard]] bank_layout::pool_header& region_header() const noexcept {
    return *reinterpret_cast<bank_layout::pool_header*>(base_);
  }
  [[nodiscard]] const std::filesystem::path& region_path() const noexcept { return path_; }

  /// Whether the pool's owners ran in an earlier boot of the machine than this one (or
  /// an opener died rewriting the boot id, after recovering the earlier boot's).
  [[nodiscard]] static bool of_earlier_boot(const bank_layout::pool_header& h,
                                            std::string_view boot) noexcept {
    return h.boot_check == 0 ||
           std::string_view(h.boot_id, strnlen(h.boot_id, sizeof h.boot_id)) != boot;
  }

  [[noreturn]] void bad(std::string_view why) const {
    throw bad_pool(fmt::format("'{}' cannot be used: {}", path_.string(), why));
  }

  /// Whether something has the name `path` (a dangling symbolic link does not);
  /// `io_error` naming the path and the cause if that cannot be known (a loop of
  /// symbolic links, a name too long, a directory without permission), for `doing`.
  static bool names_file(const std::filesystem::path& path, std::string_view doing) {
    std::error_code ec;
    const bool found = std::filesystem::exists(path, ec);
    if (ec) {
      throw io_error(
          ec, fmt::format("cannot {} the pool '{}': {}", doing, path.string(), ec.message()));
    }
    return found;
  }

 private:
  /// The constructors above delegate to this one, so that once it has returned the
  /// destructor runs if they throw: a pool refused leaks no descriptor, no mapping and
  /// no half-made file.
  explicit file_region(std::filesystem::path path) : path_(std::move(path)) {}

  /// Whether the file can be opened for reading (when it cannot be for writing).
  [[nodiscard]] bool readable() const noexcept {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }

  /// Reads the header of the file at `fd_`, refuses it (`bad_pool`) unless it
  /// describes a whole pool of this format, and sets `geometry_` from it.
  void check_header() {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("stat", path_);
    if (!S_ISREG(st.st_mode)) {
      bad(fmt::format("it is {}, not a regular file", S_ISFIFO(st.st_mode)   ? "a FIFO"
                                                      : S_ISDIR(st.st_mode)  ? "a directory"
                                                      : S_ISCHR(st.st_mode)  ? "a character device"
                                                      : S_ISBLK(st.st_mode)  ? "a block device"
                                                      : S_ISSOCK(st.st_mode) ? "a socket"
                                                                             : "not a file"));
    }
    const auto file_size = static_cast<std::uint64_t>(st.st_size);
    bank_layout::pool_header h{};
    if (file_size < sizeof h) {
      bad(fmt::format("it has {} bytes, fewer than a pool header (truncated, or not a pool)",
                      file_size));
    }
    if (::pread(fd_, &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) fail("read", path_);
    if (h.magic != bank_layout::magic) {
      bad(fmt::format("it is not an ftm pool (magic {:#018x}, expected {:#018x})", h.magic,
                      bank_layout::magic));
    }
    if (h.version > bank_layout::format_version) {
      bad(
          fmt::format("its format version {} is newer than this ftm's ({}); open it with a newer "
                      "ftm",
                      h.version, bank_layout::format_version));
    }
    if (h.version < 1) bad(fmt::format("its format version {} is unknown", h.version));
    if (h.version < bank_layout::format_version) {
      bad(
          fmt::format("its format version {} is older than this ftm's ({}), which cannot read "
                      "it: recreate the pool",
                      h.version, bank_layout::format_version));
    }
    // Deriving the layout of a damaged, enormous bank size would take hours (or
    // overflow): no bank is larger than a 64-bit address space allows in practice.
    if (h.bank_size > max_bank_size) {
      bad(fmt::format("its header is damaged (banks of {} bytes, more than {})", h.bank_size,
                      max_bank_size));
    }
    if (h.descriptors < 1 || h.descriptors > bank_layout::max_descriptors) {
      bad(fmt::format("its header is damaged (it records {} descriptors, but a pool has 1 to {})",
                      h.descriptors, bank_layout::max_descriptors));
    }
    try {
      geometry_ = bank_layout::geometry::compute(h.bank_size, h.max_entries, "pmem", h.descriptors);
    } catch (const invalid_argument& e) {
      bad(fmt::format("its header is damaged ({})", e.what()));
    }
    if (geometry_.nchunks != h.nchunks || geometry_.chunks_offset != h.chunks_offset ||
        h.metas_offset != bank_layout::metas_begin || geometry_.control_size != h.control_size ||
        geometry_.map_size != h.map_size) {
      bad("its header is damaged (the recorded layout does not follow from its sizes)");
    }
    // The static fields, then the boot id (0: an opener was rewriting it).
    if (h.header_check != bank_layout::header_check_of(h)) {
      bad(fmt::format("its header is damaged (offsets 0..{} fail their check)",
                      offsetof(bank_layout::pool_header, boot_id)));
    }
    if (h.boot_check != 0 && h.boot_check != bank_layout::boot_check_of(h)) {
      bad(fmt::format("its header is damaged (the boot id at offset {} fails its check)",
                      offsetof(bank_layout::pool_header, boot_id)));
    }
    if (file_size != geometry_.map_size) {
      bad(fmt::format("it has {} bytes, but its header says {} ({})", file_size, geometry_.map_size,
                      file_size < geometry_.map_size ? "truncated" : "grown"));
    }
  }

  /// Gives the new file its blocks: a file system without room refuses the pool here,
  /// instead of killing the first process that touches a page of the mapping that has
  /// no block (SIGBUS). Where the file system cannot reserve blocks, `posix_fallocate`
  /// writes zeros, as good.
  void reserve() {
    int e = 0;
    while ((e = ::posix_fallocate(fd_, 0, static_cast<off_t>(geometry_.map_size))) == EINTR) {
    }
    if (e != 0) {
      throw io_error(e, fmt::format("cannot create the pool '{}': cannot reserve its {} bytes: {}",
                                    path_.string(), geometry_.map_size, std::strerror(e)));
    }
  }

  void map(int protection = PROT_READ | PROT_WRITE) {
    void* p = ::mmap(nullptr, geometry_.map_size, protection, MAP_SHARED, fd_, 0);
    if (p == MAP_FAILED) fail("map", temp_.empty() ? path_ : temp_);
    base_ = static_cast<std::byte*>(p);
  }

  [[noreturn]] void fail(std::string_view what, const std::filesystem::path& file) const {
    const int e = errno;
    throw io_error(
        e, fmt::format("cannot {} the pool file '{}': {}", what, file.string(), std::strerror(e)));
  }

  std::filesystem::path path_;
  std::filesystem::path temp_;
  bank_layout::geometry geometry_{};
  int fd_ = -1;
  std::byte* base_ = nullptr;
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

namespace ftm::FTM_ABI_NAMESPACE::engines {

/// A pool file opened only to be looked at: its header is checked as by `pmem::open`,
/// and it is mapped read-only from a read-only descriptor, never recovered nor written.
/// It reads pools that other processes are using, pools left by dead processes (as
/// they were left), and read-only files. What `ftm-inspect` shows.
class pmem_view : private detail::file_region {
 public:
  using check_report = ftm::check_report;
  using descriptor_report = ftm::descriptor_report;
  using root_report = ftm::root_report;

  /// The pool header.
  struct header_info {
    std::uint64_t magic = 0;
    std::uint32_t version = 0;
    std::uint64_t pool_id = 0;
    std::uint64_t bank_size = 0;  ///< bytes per bank
    std::uint32_t max_objects_per_transaction = 0;
    std::uint32_t max_transactions = 0;  ///< descriptors: transactions at once
    std::uint64_t chunks = 0;            ///< allocation chunks per bank
    std::uint64_t control_size = 0;      ///< bytes before the banks
    std::uint64_t file_size = 0;
    std::string boot_id;                     ///< the boot its owners ran in
    bool earlier_boot = false;               ///< not this boot: every owner is dead
    durability level = durability::process;  ///< of its current users, or its last ones
    /// `power`: how those users flush the redo log (`fdatasync` or `cache_lines`).
    flush_method log_flush = flush_method::fdatasync;
    /// `power`: the redo log (`<pool>.wal`), and whether it is missing: `pmem::open` then
    /// refuses the pool, and `check()` reports it.
    std::filesystem::path log_path;
    bool log_missing = false;
    /// Its latest opener uses it in protected mode (`options::protected_mode`), and
    /// whether with memory protection keys (else `mprotect`).
    bool protected_mode = false;
    bool protection_keys = false;
  };

  /// Opens the pool file at `path` for reading. Throws `ftm::io_error` if it cannot be
  /// read, and `ftm::bad_pool` if it is not a whole pool of this format.
  explicit pmem_view(const std::filesystem::path& path)
      : file_region(inspect_tag{}, path), pool_(region(), region_geometry(), "pmem") {
    pool_.set_pool_name(path.string());
    const auto& h = region_header();
    header_.magic = h.magic;
    header_.version = h.version;
    header_.pool_id = h.pool_id;
    header_.bank_size = h.bank_size;
    header_.max_objects_per_transaction = h.max_entries;
    header_.max_transactions = h.descriptors;
    header_.chunks = h.nchunks;
    header_.control_size = h.control_size;
    header_.file_size = h.map_size;
    header_.boot_id.assign(h.boot_id, strnlen(h.boot_id, sizeof h.boot_id));
    header_.earlier_boot = of_earlier_boot(h, detail::current_boot_id());
    header_.protected_mode = h.protected_mode != 0;
    header_.protection_keys = h.protected_mode == 2;
    const auto& ctl =
        *reinterpret_cast<const detail::redo::control*>(region() + detail::redo::control_offset);
    header_.level = ctl.level == 1 ? durability::power : durability::process;
    header_.log_flush = ctl.method == static_cast<std::uint32_t>(flush_method::cache_lines)
                            ? flush_method::cache_lines
                            : flush_method::fdatasync;
    if (header_.level == durability::power) {
      header_.log_path = detail::redo::redo_log::path_for(path);
      struct stat st {};
      header_.log_missing = ::lstat(header_.log_path.c_str(), &st) != 0 && errno == ENOENT;
    }
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return region_path(); }
  [[nodiscard]] const header_info& header() const noexcept { return header_; }
  /// The named roots, as last committed.
  [[nodiscard]] std::vector<root_report> roots() const { return detail::root_entries(pool_); }
  /// The descriptors in use: by running transactions, or left by dead processes.
  [[nodiscard]] std::vector<descriptor_report> descriptors() const {
    return detail::descriptors_in_use(pool_, header_.earlier_boot);
  }
  /// Verifies the pool's structures, allowing for transactions of living processes;
  /// descriptors of dead ones are problems (opening the pool for writing recovers them).
  /// A `power` pool's redo log is verified too, as `pmem::open` would before recovery:
  /// a log that is missing, not the pool's, or that holds fewer records than the pool
  /// recorded as on the medium is a problem.
  [[nodiscard]] check_report check() const {
    auto report = detail::check_pool(pool_, {.in_use = true, .earlier_boot = header_.earlier_boot});
    if (auto problem = log_problem(); !problem.empty()) report.problems.push_back(problem);
    return report;
  }

  /// `power`: what is wrong with the redo log (see `check()`), or empty.
  [[nodiscard]] std::string log_problem() const {
    if (header_.level != durability::power) return {};
    namespace redo = detail::redo;
    const auto& ctl = *reinterpret_cast<const redo::control*>(region() + redo::control_offset);
    // Its users may checkpoint meanwhile, rewriting the log: a problem counts only if
    // the pool's record of its log did not change during the check.
    for (int attempt = 0; attempt < 8; ++attempt) {
      const redo::recorded_state r{ctl.log_id.load(), ctl.epoch.load(), ctl.durable_seq.load()};
      auto problem = redo::redo_log::verify(header_.log_path, header_.pool_id, r,
                                            detail::bank_layout::roots_offset, header_.bank_size);
      if (problem.empty() || (ctl.log_id.load() == r.log_id && ctl.epoch.load() == r.epoch))
        return problem;
    }
    return {};  // checkpointing all the while: its users are alive and well
  }

  /// The bytes of the object at `offset` as last committed (the second bank, which
  /// `roots()` reads too), for a tool that knows the object's layout (ftm-inspect
  /// reads the port directory and the ports with it). Throws `ftm::bad_pool` if no
  /// object can start at `offset`, or the size recorded there is 0 or runs past the bank.
  [[nodiscard]] std::span<const std::byte> object(std::uint64_t offset) const {
    namespace layout = detail::bank_layout;
    const auto& g = region_geometry();
    if (offset < layout::roots_offset || offset % layout::min_block != 0 ||
        offset > g.bank_size - layout::header_size) {
      throw bad_pool(
          fmt::format("'{}': no object can start at offset {} (banks of {} bytes, "
                      "objects at multiples of {})",
                      region_path().string(), offset, g.bank_size, layout::min_block));
    }
    const std::byte* bank = region() + g.control_size + g.bank_size;
    std::uint32_t size = 0;
    std::memcpy(&size, bank + offset + offsetof(layout::object_header, size), sizeof size);
    if (size == 0 || size > g.bank_size - offset - layout::header_size) {
      throw bad_pool(fmt::format("'{}': no live object at offset {} (its recorded size is {}{})",
                                 region_path().string(), offset, size,
                                 size == 0 ? "" : ", past the end of the bank"));
    }
    return {bank + offset + layout::header_size, size};
  }

  static constexpr std::size_t chunk_size = detail::bank_layout::chunk_size;

 private:
  // The pool, read through the mapping alone: the checks are free functions of it.
  detail::bank_mapping pool_;
  header_info header_;
};

/// The dual-bank engine on a pool file. Models `ftm::fork_shared_engine`.
///
/// The two banks, the descriptors, the locks and the allocator live in one file mapped
/// with `MAP_SHARED`, addressed by offsets, so the pool maps at any address. Several
/// processes may open the same pool at once; a process that dies holding locks is
/// recovered by whoever needs them or calls `recover()`, and `open()` recovers before
/// it returns, so a program that was killed simply opens its pool again and finds
/// every committed transaction and none of the others.
///
/// Durability, chosen at `create` or `open` (`ftm::durability`): `process` (the
/// default) survives the death of every process using the pool, not an OS crash or a
/// power loss: nothing is flushed at commit. `power` survives those too: a writing
/// transaction's commit appends its after-images to a redo log beside the pool and
/// returns once it is on the medium; concurrent committers share one flush, or on a
/// DAX file system the record's cache lines are flushed (`ftm::flush_method`). Every
/// process that has a pool open uses the same level and the same flush method.
class pmem : private detail::file_region, public detail::protectable_bank {
 public:
  /// The file mapping is `MAP_SHARED`: a forked child uses the same pool.
  static constexpr bool fork_shared = true;

  /// How a pool is made and opened.
  struct options {
    std::size_t bank_size = std::size_t{32} << 20;     ///< bytes per bank (multiple of 64 KiB)
    std::uint32_t max_objects_per_transaction = 1024;  ///< log capacity of a descriptor
    /// Transactions at once (descriptors), 1 to `max_transactions_limit` (1,024),
    /// chosen at `create`; each costs 64 bytes and a log of
    /// `max_objects_per_transaction` 16-byte entries. `open` takes the pool's.
    std::uint32_t max_transactions = detail::bank_layout::default_descriptors;
    /// What a commit survives. Empty: `open` keeps the level recorded in the pool (that
    /// of its current users, or of its last ones); `create` makes a `process` pool. Only
    /// an explicit `process` opens a `power` pool without its redo log's protection.
    std::optional<durability> level = std::nullopt;
    /// `power`: bytes of the redo log; a full log is checkpointed (the pool flushed).
    std::size_t log_size = std::size_t{8} << 20;
    /// `power`: how commits put the redo log on the medium. A process opening a pool
    /// that others use with `automatic` takes their method.
    flush_method flush = flush_method::automatic;
    /// Protected mode, for this process: it may write only the objects its transactions
    /// opened for writing; any other write to the pool stops it (see the reference).
    bool protected_mode = false;
  };

  /// Creates a new pool file at `path` (and its redo log, for `durability::power`).
  /// Throws `ftm::io_error` if the file exists.
  static pmem create(const std::filesystem::path& path) { return create(path, options{}); }
  static pmem create(const std::filesystem::path& path, options opts) {
    return pmem(
        create_tag{}, path,
        detail::bank_layout::geometry::compute(opts.bank_size, opts.max_objects_per_transaction,
                                               "pmem", opts.max_transactions),
        opts);
  }

  /// Opens the pool file at `path` and recovers the transactions its dead users left,
  /// at `level`, or without one at the level recorded in the pool (a `power` pool stays
  /// `power`: only an explicit `durability::process` gives up its power-loss safety).
  /// Throws `ftm::io_error` if the file cannot be opened for reading and writing (a
  /// read-only file: the message says so), and
  /// `ftm::bad_pool`, changing nothing, if it is not a whole pool of this format.
  /// Throws `ftm::usage_error` if other processes have it open with another `level`,
  /// or with `power` and another `flush` than `opts.flush` (unless it is `automatic`).
  /// Throws `ftm::io_error` if `opts.flush` is `cache_lines` and the redo log's file
  /// system cannot map it with `MAP_SYNC` (see `flush_method`).
  /// Throws `ftm::bad_pool` naming the cause, changing nothing, if a `power` pool's redo
  /// log is missing, is not its log, or holds fewer records than the pool recorded as
  /// on the medium (truncated, damaged, or an old copy).
  static pmem open(const std::filesystem::path& path,
                   std::optional<durability> level = std::nullopt) {
    options opts;
    opts.level = level;
    return pmem(open_tag{}, path, opts);
  }
  static pmem open(const std::filesystem::path& path, options opts) {
    return pmem(open_tag{}, path, opts);
  }

  /// Opens the pool file at `path` only to look at it (see `pmem_view`): read-only,
  /// without recovery.
  static pmem_view inspect(const std::filesystem::path& path) { return pmem_view(path); }

  /// Opens the pool at `path` with `opts.level` (without one, the level it records), or
  /// creates it with `opts` (without a level, `process`) if there is
  /// no such file.
  static pmem open_or_create(const std::filesystem::path& path) {
    return open_or_create(path, options{});
  }
  static pmem open_or_create(const std::filesystem::path& path, options opts) {
    if (names_file(path, "open or create")) return open(path, opts);
    return create(path, opts);
  }

  /// The durability of this pool's commits.
  [[nodiscard]] durability level() const noexcept {
    return power_ ? durability::power : durability::process;
  }

  /// How this pool's commits put the redo log on the medium: `fdatasync` or
  /// `cache_lines` (what `automatic` chose); empty at durability `process`.
  [[nodiscard]] std::optional<flush_method> log_flush() const noexcept {
    if (!power_) return std::nullopt;
    return power_->log.mode();
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return region_path(); }
  /// A number chosen when the pool was created.
  [[nodiscard]] std::uint64_t pool_id() const noexcept { return region_header().pool_id; }
  /// What `open()` recovered.
  [[nodiscard]] const recovery_report& opening_recovery() const noexcept { return opened_; }

  /// Tags for making a pool in place, where `create` and `open` cannot return it to
  /// (a pool does not move): `std::make_unique<pmem>(pmem::creating, path, opts)`, an
  /// `std::optional`'s `emplace`, or a class that extends `pmem`.
  struct creating_t {
    explicit creating_t() = default;
  };
  struct opening_t {
    explicit opening_t() = default;
  };
  static constexpr creating_t creating{};
  static constexpr opening_t opening{};

  /// `create(path, opts)`, in place.
  pmem(creating_t, const std::filesystem::path& path, const options& opts)
      : pmem(create_tag{}, path,
             detail::bank_layout::geometry::compute(
                 opts.bank_size, opts.max_objects_per_transaction, "pmem", opts.max_transactions),
             opts) {}
  /// `open(path, opts)`, in place.
  pmem(opening_t, const std::filesystem::path& path, const options& opts)
      : pmem(open_tag{}, path, opts) {}

 private:
  pmem(create_tag tag, const std::filesystem::path& path, const detail::bank_layout::geometry& g,
       const options& opts)
      : file_region(tag, path, g), protectable_bank(region(), g, /*fresh=*/true, "pmem") {
    set_pool_name(path.string());
    if (opts.protected_mode) protect(region_fd(), g.map_size, path.string());
    record_mode();
    // Held before the name is published: no opener may take this pool for unused.
    users_.take(region_fd(), /*exclusive=*/false, /*wait=*/true);
    if (opts.level != durability::power) {
      publish();
      return;
    }
    // From the check of the name to its publication: another creator that passed the
    // first check too must not replace this pool's log once it is in use.
    const directory_lock turn(path);
    if (names_file(path, "create")) {
      throw io_error(EEXIST,
                     fmt::format("cannot create the pool '{}': the file exists", path.string()));
    }
    const auto wal = detail::redo::redo_log::path_for(path);
    remove_stale_log(wal);  // of a pool that no longer exists
    detail::redo::redo_log::create_file(wal, pool_id(), opts.log_size);
    try {
      start_power(opts);
      publish();
    } catch (...) {
      std::error_code ignored;
      std::filesystem::remove(wal, ignored);  // the pool is not made: no log beside nothing
      throw;
    }
    detail::redo::redo_log::sync_directory(path);
  }

  pmem(open_tag tag, const std::filesystem::path& path, const options& asked)
      : file_region(tag, path),
        protectable_bank(region(), region_geometry(), /*fresh=*/false, "pmem") {
    const opening_lock lock(region_fd());
    auto& h = region_header();
    set_pool_name(path.string());
    const std::string boot = detail::current_boot_id();
    const bool earlier_boot = of_earlier_boot(h, boot);
    const bool first = users_.take(region_fd(), /*exclusive=*/true, /*wait=*/false);
    const durability in_use = control().level == 1 ? durability::power : durability::process;
    // Without a level: the one recorded (never a silent downgrade from power).
    options opts = asked;
    if (!opts.level) opts.level = in_use;
    if (!first && in_use != opts.level) {
      users_.release();
      throw usage_error(fmt::format(
          "the pool '{}' is open with durability {} in other processes; every process must use "
          "the same level (open it with ftm::durability::{})",
          path.string(), name(in_use), name(in_use)));
    }
    if (!first && in_use == durability::power && opts.flush != flush_method::automatic &&
        opts.flush != method_in_use()) {
      users_.release();
      throw usage_error(fmt::format(
          "the pool '{}' is open with the redo log flushed by {} in other processes; every "
          "process must flush it the same way (open it with ftm::flush_method::{} or automatic)",
          path.string(), to_string(method_in_use()), to_string(method_in_use())));
    }
    // After a power loss the descriptors' pages may be stale: a `power` pool without
    // users does not read them (below).
    if (!(first && in_use == durability::power)) {
      if (auto problem = structure_problem(earlier_boot); !problem.empty()) bad(problem);
    }
    // What the dead owners were doing, for clear_stale_locks() below.
    auto states = first && in_use == durability::power ? decltype(descriptor_states()){}
                                                       : descriptor_states();
    if (first && in_use == durability::power) {
      // No process has the pool open, and its last users logged their commits: the
      // log and the second bank are the truth, whatever the working bank and the
      // descriptors say (after a power loss their pages may be stale).
      opened_ = recover_from_log(opts);
    } else if (earlier_boot) {
      // Its owners ran before a reboot: none is alive, whatever their pids name now.
      opened_ = recover_from_earlier_boot();
    } else if (!first && opts.level == durability::power) {
      attach_power(opts, /*first=*/false);
      opened_ = recover();
    } else {
      opened_ = recover();
    }
    // Nobody else has it open: no lock may be left on a live object now.
    if (first) opened_.locks_released += clear_stale_locks(states);
    if (earlier_boot) detail::bank_layout::set_boot_id(h, boot);
    if (first && opts.level == durability::power && !power_) {
      // From process to power: a new log (an old one holds nothing the pool needs, and
      // may be foreign), then the pool's current state must reach the medium.
      const auto wal = detail::redo::redo_log::path_for(path);
      remove_stale_log(wal);
      detail::redo::redo_log::create_file(wal, pool_id(), opts.log_size);
      start_power(opts);
    }
    if (opts.protected_mode) protect(region_fd(), region_geometry().map_size, path.string());
    record_mode();
    users_.take(region_fd(), /*exclusive=*/false, /*wait=*/true);
  }

  /// Removes the redo log file `wal` that a new one replaces. `io_error` naming it and
  /// the cause if it cannot be, or if a directory has its name (never removed).
  static void remove_stale_log(const std::filesystem::path& wal) {
    std::error_code ec;
    const auto type = std::filesystem::symlink_status(wal, ec).type();
    if (type == std::filesystem::file_type::not_found) return;
    if (!ec && type == std::filesystem::file_type::directory) {
      throw io_error(
          EISDIR,
          fmt::format(
              "cannot create the redo log '{}': a directory has its name (remove it, or name the "
              "pool otherwise)",
              wal.string()));
    }
    if (!ec) std::filesystem::remove(wal, ec);
    if (ec) {
      throw io_error(
          ec, fmt::format("cannot replace the redo log '{}': {}", wal.string(), ec.message()));
    }
  }

  static std::string_view name(durability d) noexcept {
    return d == durability::power ? "power" : "process";
  }

  detail::redo::control& control() const noexcept {
    return *reinterpret_cast<detail::redo::control*>(region() + detail::redo::control_offset);
  }
  std::byte* second_bank() const noexcept {
    return region() + region_geometry().control_size + region_geometry().bank_size;
  }

  /// The first `power` user of a pool whose users were not: new log state, a new epoch
  /// (stale records of an earlier `power` period must never be replayed), then the
  /// level and the whole pool on the medium.
  void start_power(const options& opts) {
    attach_power(opts, /*first=*/true);
    power_->log.init_control(power_->log.first_seq() - 1, /*new_log=*/true);
    power_->log.new_epoch();
    control().level = 1;
    detail::bank_layout::store_barrier();
    power_->log.flush_pool();
  }

  /// The redo log of this process. The `first` user of the pool chooses how it is
  /// flushed (and records it for the others); the others flush it the same way.
  void attach_power(const options& opts, bool first) {
    power_ =
        std::make_unique<power_state>(*this, opts.log_size, first ? opts.flush : method_in_use());
    set_commit_log(power_.get());
    if (first) control().method = static_cast<std::uint32_t>(power_->log.mode());
  }

  /// How the pool's current `power` users flush the redo log.
  flush_method method_in_use() const noexcept {
    return control().method == static_cast<std::uint32_t>(flush_method::cache_lines)
               ? flush_method::cache_lines
               : flush_method::fdatasync;
  }

  /// Recovery of a `power` pool that no process has open (after a power loss, an OS
  /// crash, or the death of all its users): the valid records of the log's epoch are
  /// replayed onto the second bank, the second bank becomes the working bank too, and
  /// every descriptor is reset. Then a checkpoint, or the switch to `process`.
  recovery_report recover_from_log(const options& opts) {
    namespace layout = detail::bank_layout;
    recovery_report report;
    for (tx_id d = 0; d < region_geometry().descriptors; ++d) {
      const auto* s = reinterpret_cast<const layout::descriptor*>(
          region() + layout::descriptors_begin + d * sizeof(layout::descriptor));
      if (s->owner.load() != 0) ++report.undone;
    }
    detail::redo::redo_log log(detail::redo::redo_log::path_for(path()), pool_id(), region_fd(),
                               &control(), opts.log_size);
    std::byte* b = second_bank();
    // Refused, changing nothing, unless the log holds every record the pool recorded.
    const auto replayed = log.replay(
        layout::roots_offset, region_geometry().bank_size,
        [](void* ctx, std::uint64_t off, std::uint32_t len, const std::byte* bytes) {
          std::memcpy(static_cast<std::byte*>(ctx) + off, bytes, len);
        },
        b, fmt::format("'{}' cannot be used: ", path().string()));
    report.redone = replayed.records;
    FTM_FAULT_POINT("log.recover_replayed");
    // The copy takes the second bank's lock words too, which commits never write (they
    // may hold an earlier object's bytes): every lock is freed after it, in both banks.
    std::memcpy(region() + region_geometry().control_size, b, region_geometry().bank_size);
    detail::clear_lock_words(region() + region_geometry().control_size, region_geometry());
    detail::clear_lock_words(b, region_geometry());
    for (tx_id d = 0; d < region_geometry().descriptors; ++d)
      ::new (region() + layout::descriptors_begin + d * sizeof(layout::descriptor))
          layout::descriptor{};
    FTM_FAULT_POINT("log.recover_copied");
    log.init_control(replayed.last_seq, /*new_log=*/false);
    if (opts.level == durability::power) {
      attach_power(opts, /*first=*/true);
      power_->log.flush_pool();  // the second bank as replayed, on the medium
      power_->log.new_epoch();
    } else {
      // The records are stale once `process` commits change the banks; and the level
      // reaches the medium before the log may be replaced.
      log.flush_pool();
      log.new_epoch();
      control().level = 0;
      detail::bank_layout::store_barrier();
      log.flush_pool();
    }
    return report;
  }

  /// The `power` level: commit and recovery call it between their two phases, and it
  /// calls the redo log, which is passive: it answers and never calls back. A full log
  /// (or one whose last appender died) is checkpointed here, under the log's append
  /// lock: every logged record must be applied first, and the record of a committer
  /// that died before applying it is applied from the log, not by recovering its
  /// descriptor (which would append, under the lock this thread holds).
  struct power_state final : detail::commit_log {
    power_state(pmem& p, std::size_t log_size, flush_method flush)
        : pool(p),
          log(detail::redo::redo_log::path_for(p.path()), p.pool_id(), p.region_fd(), &p.control(),
              log_size, flush) {}

    void make_durable(tx_id d, bool recovering) noexcept override {
      if (recovering && log.settle_logged(d)) return;
      std::byte* a = pool.region() + pool.region_geometry().control_size;
      thread_local std::vector<std::byte> buf;
      detail::redo::redo_log::encode(buf, d, [&](auto&& emit) {
        pool.for_each_held_write(
            d, [&](std::uint64_t off, std::uint32_t len) { emit(off, len, a + off); });
      });
      FTM_FAULT_POINT("log.before_append");
      auto lock = log.lock_append();
      if (lock.repair() || !log.fits(lock, buf.size())) checkpoint(lock);
      const std::uint64_t end = log.append(lock, d, buf);
      lock.unlock();
      FTM_FAULT_POINT("log.after_append");
      log.wait_durable(end);
      FTM_FAULT_POINT("log.after_flush");
    }
    void applied(tx_id d) noexcept override { log.applied(d); }

    /// Waits until every logged record is applied, applying those whose committers
    /// died, then checkpoints the log.
    void checkpoint(const detail::redo::redo_log::append_lock& lock) noexcept {
      namespace layout = detail::bank_layout;
      for (tx_id d = 0; d < pool.region_geometry().descriptors; ++d) {
        for (std::uint32_t spins = 0; log.in_flight(d); ++spins) {
          if (spins % 1024 == 1023 && committer_died(d) &&
              log.visit_logged(
                  lock, d,
                  [](void* bank, std::uint64_t off, std::uint32_t len, const std::byte* bytes) {
                    std::memcpy(static_cast<std::byte*>(bank) + off, bytes, len);
                  },
                  pool.second_bank())) {
            log.applied(d);  // its descriptor stays COMMITTING: recovery appends it again
            break;
          }
          std::this_thread::yield();
        }
      }
      log.checkpoint(lock);
    }

    /// Whether the owner of descriptor `d` is dead (and no recoverer has claimed it).
    bool committer_died(tx_id d) const noexcept {
      namespace layout = detail::bank_layout;
      const auto& s = *reinterpret_cast<const layout::descriptor*>(
          pool.region() + layout::descriptors_begin + d * sizeof(layout::descriptor));
      const detail::owner_id owner = s.owner.load(std::memory_order_acquire);
      return owner != 0 && !detail::owner_alive(owner);
    }

    pmem& pool;
    detail::redo::redo_log log;
  };

  /// A shared lock on the pool file, held while it is open: an opener that can lock
  /// it exclusively knows no process uses the pool. An open-file-description lock
  /// (`F_OFD_SETLK`) on a description of its own: it is independent of the opening
  /// `flock`, shared with `fork()`ed children, and released when the last of them ends.
  class users_lock {
   public:
    users_lock() = default;
    users_lock(const users_lock&) = delete;
    users_lock& operator=(const users_lock&) = delete;
    ~users_lock() { release(); }
    /// Locks (`exclusive` or shared) a new description of `pool_fd`; false if `wait`
    /// is false and another process holds a conflicting lock.
    bool take(int pool_fd, bool exclusive, bool wait) {
      if (fd_ < 0) {
        fd_ = ::open(fmt::format("/proc/self/fd/{}", pool_fd).c_str(), O_RDWR | O_CLOEXEC);
        if (fd_ < 0) {
          const int e = errno;
          throw io_error(e, fmt::format("cannot reopen the pool file: {}", std::strerror(e)));
        }
      }
      struct flock l {};
      l.l_type = exclusive ? F_WRLCK : F_RDLCK;
      l.l_whence = SEEK_SET;
      l.l_start = 0;
      l.l_len = 1;
      while (::fcntl(fd_, wait ? F_OFD_SETLKW : F_OFD_SETLK, &l) != 0) {
        if (errno == EAGAIN || errno == EACCES) return false;
        if (const int e = errno; e != EINTR) {
          throw io_error(e, fmt::format("cannot lock the pool file: {}", std::strerror(e)));
        }
      }
      return true;
    }
    void release() noexcept {
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
    }

   private:
    int fd_ = -1;
  };

  users_lock users_;
  std::unique_ptr<power_state> power_;
  recovery_report opened_{};
};

}  // namespace ftm::FTM_ABI_NAMESPACE::engines

#endif  // FTM_ENGINES_PMEM_HPP
