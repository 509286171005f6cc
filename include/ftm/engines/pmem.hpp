#ifndef FTM_ENGINES_PMEM_HPP
#define FTM_ENGINES_PMEM_HPP

/// \file
/// `ftm::engines::pmem`: the dual-bank engine on a pool file mapped into memory, so
/// that the pool outlives every process that uses it.

#include <ftm/detail/bank_engine.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ftm::detail {

/// A pool file mapped with `MAP_SHARED`: every process that maps it shares its pages,
/// and the kernel keeps them when the processes die.
class file_region {
 protected:
  struct create_tag {};
  struct open_tag {};
  struct inspect_tag {};

  /// 128 TiB: larger banks in a pool header are damage.
  static constexpr std::uint64_t max_bank_size = std::uint64_t{1} << 47;

  /// A new pool file is made under a temporary name and renamed into place once it is
  /// formatted (`publish()`), so no process ever opens a half-made pool.
  file_region(create_tag, std::filesystem::path path, const bank_layout::geometry& g)
      : file_region(std::move(path)) {
    geometry_ = g;
    if (std::filesystem::exists(path_)) {
      throw io_error(fmt::format("cannot create the pool '{}': the file exists", path_.string()));
    }
    temp_ = path_;
    temp_ += fmt::format(".creating.{}", ::getpid());
    fd_ = ::open(temp_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("create", temp_);
    if (::ftruncate(fd_, static_cast<off_t>(g.map_size)) != 0) fail("size", temp_);
    map();
  }

  /// An existing pool file, checked before anything in it is trusted.
  file_region(open_tag, std::filesystem::path path) : file_region(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      const int e = errno;
      if ((e == EACCES || e == EPERM || e == EROFS) && readable()) {
        throw io_error(
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
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
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
        throw io_error(fmt::format("cannot create the pool '{}': the file exists", path_.string()));
      }
      fail("rename", temp_);
    }
    temp_.clear();
  }

  /// Holds an exclusive `flock` on the pool file while openers decide what to recover,
  /// so two of them never both take the other's descriptors for an earlier boot's.
  class opening_lock {
   public:
    explicit opening_lock(int fd) : fd_(fd) {
      while (::flock(fd_, LOCK_EX) != 0) {
        if (errno != EINTR) {
          throw io_error(fmt::format("cannot lock the pool file: {}", std::strerror(errno)));
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

  [[noreturn]] void bad(std::string_view why) const {
    throw bad_pool(fmt::format("'{}' cannot be used: {}", path_.string(), why));
  }

 private:
  /// The constructors above delegate to this one, so that once it has returned the
  /// destructor runs if they throw: a pool refused leaks no descriptor, no mapping and
  /// no half-made file.
  explicit file_region(std::filesystem::path path) : path_(std::move(path)) {}

  /// Whether the file can be opened for reading (when it cannot be for writing).
  [[nodiscard]] bool readable() const noexcept {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }

  /// Reads the header of the file at `fd_`, refuses it (`bad_pool`) unless it
  /// describes a whole pool of this format, and sets `geometry_` from it.
  void check_header() {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) fail("stat", path_);
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
    // Deriving the layout of a damaged, enormous bank size would take hours (or
    // overflow): no bank is larger than a 64-bit address space allows in practice.
    if (h.bank_size > max_bank_size) {
      bad(fmt::format("its header is damaged (banks of {} bytes, more than {})", h.bank_size,
                      max_bank_size));
    }
    try {
      geometry_ = bank_layout::geometry::compute(h.bank_size, h.max_entries, "pmem");
    } catch (const invalid_argument& e) {
      bad(fmt::format("its header is damaged ({})", e.what()));
    }
    if (geometry_.nchunks != h.nchunks || geometry_.chunks_offset != h.chunks_offset ||
        h.metas_offset != bank_layout::metas_begin || geometry_.control_size != h.control_size ||
        geometry_.map_size != h.map_size) {
      bad("its header is damaged (the recorded layout does not follow from its sizes)");
    }
    if (file_size != geometry_.map_size) {
      bad(fmt::format("it has {} bytes, but its header says {} ({})", file_size, geometry_.map_size,
                      file_size < geometry_.map_size ? "truncated" : "grown"));
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
        fmt::format("cannot {} the pool file '{}': {}", what, file.string(), std::strerror(e)));
  }

  std::filesystem::path path_;
  std::filesystem::path temp_;
  bank_layout::geometry geometry_{};
  int fd_ = -1;
  std::byte* base_ = nullptr;
};

}  // namespace ftm::detail

namespace ftm::engines {

/// A pool file opened only to be looked at: its header is checked as by `pmem::open`,
/// and it is mapped read-only from a read-only descriptor, never recovered nor written.
/// It reads pools that other processes are using, pools left by dead processes (as
/// they were left), and read-only files. What `ftm-inspect` shows.
class pmem_view : private detail::file_region, private detail::bank_engine {
 public:
  using check_report = bank_engine::check_report;
  using descriptor_report = bank_engine::descriptor_report;
  using root_report = bank_engine::root_report;

  /// The pool header.
  struct header_info {
    std::uint64_t magic = 0;
    std::uint32_t version = 0;
    std::uint64_t pool_id = 0;
    std::uint64_t bank_size = 0;  ///< bytes per bank
    std::uint32_t max_objects_per_transaction = 0;
    std::uint64_t chunks = 0;        ///< allocation chunks per bank
    std::uint64_t control_size = 0;  ///< bytes before the banks
    std::uint64_t file_size = 0;
    std::string boot_id;        ///< the boot its owners ran in
    bool earlier_boot = false;  ///< not this boot: every owner is dead
  };

  /// Opens the pool file at `path` for reading. Throws `ftm::io_error` if it cannot be
  /// read, and `ftm::bad_pool` if it is not a whole pool of this format.
  explicit pmem_view(const std::filesystem::path& path)
      : file_region(inspect_tag{}, path),
        bank_engine(region(), region_geometry(), /*fresh=*/false) {
    const auto& h = region_header();
    header_.magic = h.magic;
    header_.version = h.version;
    header_.pool_id = h.pool_id;
    header_.bank_size = h.bank_size;
    header_.max_objects_per_transaction = h.max_entries;
    header_.chunks = h.nchunks;
    header_.control_size = h.control_size;
    header_.file_size = h.map_size;
    header_.boot_id.assign(h.boot_id, strnlen(h.boot_id, sizeof h.boot_id));
    header_.earlier_boot = header_.boot_id != detail::current_boot_id();
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return region_path(); }
  [[nodiscard]] const header_info& header() const noexcept { return header_; }
  /// The named roots, as last committed.
  [[nodiscard]] std::vector<root_report> roots() const { return root_entries(); }
  /// The descriptors in use: by running transactions, or left by dead processes.
  [[nodiscard]] std::vector<descriptor_report> descriptors() const {
    return descriptors_in_use(header_.earlier_boot);
  }
  /// Verifies the pool's structures, allowing for transactions of living processes;
  /// descriptors of dead ones are problems (opening the pool for writing recovers them).
  [[nodiscard]] check_report check() const {
    return bank_engine::check({.in_use = true, .earlier_boot = header_.earlier_boot});
  }

  static constexpr std::size_t chunk_size = bank_engine::chunk_size;

 private:
  header_info header_;
};

/// The dual-bank engine on a pool file. Models `ftm::engine`.
///
/// The two banks, the descriptors, the locks and the allocator live in one file mapped
/// with `MAP_SHARED`, addressed by offsets, so the pool maps at any address. Several
/// processes may open the same pool at once; a process that dies holding locks is
/// recovered by whoever needs them or calls `recover()`, and `open()` recovers before
/// it returns, so a program that was killed simply opens its pool again and finds
/// every committed transaction and none of the others.
///
/// Durability: `process`. Committed transactions survive the death of every process
/// using the pool (their stores are in the file's shared pages), not an OS crash or a
/// power loss: nothing is flushed at commit.
class pmem : private detail::file_region, public detail::bank_engine {
 public:
  /// Creates a new pool file at `path`. Throws `ftm::io_error` if the file exists.
  static pmem create(const std::filesystem::path& path) { return create(path, options{}); }
  static pmem create(const std::filesystem::path& path, options opts) {
    return pmem(create_tag{}, path,
                detail::bank_layout::geometry::compute(opts.bank_size,
                                                       opts.max_objects_per_transaction, "pmem"));
  }

  /// Opens the pool file at `path` and recovers the transactions its dead users left.
  /// Throws `ftm::io_error` if the file cannot be opened for reading and writing (a
  /// read-only file: the message says so), and
  /// `ftm::bad_pool`, changing nothing, if it is not a whole pool of this format.
  static pmem open(const std::filesystem::path& path) { return pmem(open_tag{}, path); }

  /// Opens the pool file at `path` only to look at it (see `pmem_view`): read-only,
  /// without recovery.
  static pmem_view inspect(const std::filesystem::path& path) { return pmem_view(path); }

  /// Opens the pool at `path`, or creates it with `opts` if there is no such file.
  static pmem open_or_create(const std::filesystem::path& path) {
    return open_or_create(path, options{});
  }
  static pmem open_or_create(const std::filesystem::path& path, options opts) {
    if (std::filesystem::exists(path)) return open(path);
    return create(path, opts);
  }

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return region_path(); }
  /// A number chosen when the pool was created.
  [[nodiscard]] std::uint64_t pool_id() const noexcept { return region_header().pool_id; }
  /// What `open()` recovered.
  [[nodiscard]] const recovery_report& opening_recovery() const noexcept { return opened_; }

 private:
  pmem(create_tag tag, const std::filesystem::path& path, const detail::bank_layout::geometry& g)
      : file_region(tag, path, g), bank_engine(region(), g, /*fresh=*/true) {
    publish();
  }

  pmem(open_tag tag, const std::filesystem::path& path)
      : file_region(tag, path), bank_engine(region(), region_geometry(), /*fresh=*/false) {
    const opening_lock lock(region_fd());
    auto& h = region_header();
    const std::string boot = detail::current_boot_id();
    const bool earlier_boot =
        std::string_view(h.boot_id, strnlen(h.boot_id, sizeof h.boot_id)) != boot;
    if (auto problem = structure_problem(earlier_boot); !problem.empty()) bad(problem);
    if (earlier_boot) {
      // Its owners ran before a reboot: none is alive, whatever their pids name now.
      opened_ = recover_from_earlier_boot();
      std::memset(h.boot_id, 0, sizeof h.boot_id);
      std::memcpy(h.boot_id, boot.data(), std::min(boot.size(), sizeof h.boot_id - 1));
    } else {
      opened_ = recover();
    }
  }

  recovery_report opened_{};
};

}  // namespace ftm::engines

#endif  // FTM_ENGINES_PMEM_HPP
