// libFuzzer target for opening a pool file: the header checks, recovery of dead
// owners' descriptors, the read-only view, check(), and a transaction on what opened.
//
// Structure-aware: the input describes damage to a small valid pool, made once per
// process (a pool with roots, small and large objects, and optionally a descriptor
// left by a dead writer), so mutations land in the header, the descriptors, their
// logs, the allocator's records and the objects rather than in megabytes of zeros.
//
//   byte 0            flags: bit 0 the dead writer's descriptor is left in the pool,
//                     bit 1 it died committing (not active), bit 2 raw: the rest of
//                     the input is the whole file, as it is, bit 3 another process
//                     seems to have the pool open (so opening is not the first, and
//                     clears no stale lock: a transaction must refuse one, not wait)
//   then, repeated    region (1 byte), offset (2 bytes, little-endian), length
//                     (1 byte, 1..16), that many bytes written at the offset in the
//                     region; region 7 instead cuts or grows the file
//
// Only ftm:: errors may come out; a pool that opens and passes check() must read its
// roots back, take transactions (one that destroys objects and aborts: the allocator's
// records are read), and still pass check() after them.
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <boost/hana/define_struct.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace {

using ftm::engines::pmem;
namespace fs = std::filesystem;
namespace layout = ftm::detail::bank_layout;

struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance), (std::uint32_t, ops));
};
struct big {
  std::array<std::uint8_t, 40000> bytes;  // a large object: a run of whole chunks
};

// The smallest banks that hold a large object beside small ones: 4 chunks.
constexpr pmem::options tiny{.bank_size = 5 * 64 * 1024, .max_objects_per_transaction = 32};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "pmem_open_fuzz: %s\n", what);
  std::abort();
}

const fs::path& work_dir() {
  static const fs::path dir = [] {
    std::string templ = (fs::temp_directory_path() / "ftm-fuzz-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) die("mkdtemp failed");
    return fs::path(templ);
  }();
  return dir;
}

std::vector<char> read_file(const fs::path& p) {
  std::vector<char> bytes(fs::file_size(p));
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::pread(fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
    die("cannot read a pool file");
  }
  ::close(fd);
  return bytes;
}

void write_file(const fs::path& p, const char* data, std::size_t size) {
  const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    std::perror("write");
    die("cannot write a pool file");
  }
  ::close(fd);
}

/// The base pools: quiescent, and the same with a dead writer's descriptor.
struct base_pools {
  std::vector<char> quiescent;
  std::vector<char> with_dead_writer;
  std::uint64_t slot_offset = 0;  // the dead writer's descriptor in the file
};

const base_pools& bases() {
  static const base_pools b = [] {
    base_pools r;
    const fs::path path = work_dir() / "base.ftm";
    auto pool = pmem::create(path, tiny);
    ftm::atomically(pool, [](auto& tx) {
      tx.open(ftm::root<account>(tx, "acct"))->balance = 42;
      tx.open(ftm::root<big>(tx, "big"))->bytes[7] = 7;
      for (int i = 0; i < 3; ++i)
        tx.create(account{i, 1});
    });
    r.quiescent = read_file(path);
    // A writer caught in the middle: two objects locked and changed, one made.
    ftm::transaction tx{pool};
    tx.begin();
    tx.open(ftm::root<account>(tx, "acct"))->balance = -1;
    tx.open(ftm::root<big>(tx, "big"))->bytes[7] = 9;
    tx.create(account{9, 9});
    r.with_dead_writer = read_file(path);
    tx.abort();
    // Its owner: pid 1 with a start time it never had, so dead to every check.
    const ftm::detail::owner_id dead = ftm::detail::make_owner_id(1, 123456789);
    for (std::uint64_t d = 0; d < layout::default_descriptors; ++d) {
      const std::uint64_t off = layout::descriptors_begin + d * sizeof(layout::descriptor);
      std::uint64_t owner = 0;
      std::memcpy(&owner, r.with_dead_writer.data() + off, sizeof owner);
      if (owner != 0) {
        std::memcpy(r.with_dead_writer.data() + off, &dead, sizeof dead);
        r.slot_offset = off;
      }
    }
    if (r.slot_offset == 0) die("the base pool has no descriptor in use");
    fs::remove(path);
    return r;
  }();
  return b;
}

/// Applies the input's damage records to `file`.
void damage(std::vector<char>& file, const std::uint8_t* p, std::size_t n) {
  const std::uint64_t bank = tiny.bank_size;
  const std::uint64_t control = file.size() - 2 * bank;
  struct region {
    std::uint64_t begin, size, scale;
  };
  const region regions[] = {
      {0, sizeof(layout::pool_header), 1},                               // the header
      {layout::descriptors_begin, layout::default_descriptors * 64, 1},  // descriptors
      {layout::logs_begin(layout::default_descriptors),
       control - layout::logs_begin(layout::default_descriptors), 1},  // their logs
      {control, 16384, 1},                                             // bank A: roots, records
      {control + bank, 16384, 1},                                      // bank B: roots, records
      {control + 65536, bank - 65536, 8},                              // bank A: objects
      {control + bank + 65536, bank - 65536, 8},                       // bank B: objects
  };
  while (n >= 4) {
    const unsigned which = p[0] % 8;
    const std::uint64_t off = p[1] | (std::uint64_t{p[2]} << 8);
    const std::size_t len = std::min<std::size_t>(p[3] % 16 + 1, n - 4);
    if (which == 7) {
      file.resize(off * 64);  // truncated, or grown with zeros
    } else {
      const region& r = regions[which];
      const std::uint64_t at = r.begin + (off * r.scale) % r.size;
      for (std::size_t i = 0; i < len && at + i < file.size(); ++i)
        file[at + i] = static_cast<char>(p[4 + i]);
    }
    p += 4 + len;
    n -= 4 + len;
  }
}

/// Holds a shared lock as pmem's users do (an open-file-description lock on the
/// file's first byte), so an open in this process is not the first.
class other_user {
 public:
  explicit other_user(const fs::path& path) : fd_(::open(path.c_str(), O_RDWR | O_CLOEXEC)) {
    struct flock l {};
    l.l_type = F_RDLCK;
    l.l_whence = SEEK_SET;
    l.l_start = 0;
    l.l_len = 1;
    if (fd_ < 0 || ::fcntl(fd_, F_OFD_SETLK, &l) != 0) die("cannot lock the pool file");
  }
  other_user(const other_user&) = delete;
  other_user& operator=(const other_user&) = delete;
  ~other_user() { ::close(fd_); }

 private:
  int fd_;
};

/// `pristine`: the file is a base pool, undamaged, which must open and check clean.
void exercise(const fs::path& path, bool pristine) {
  // Read-only first: it must not change the file, whatever the file holds.
  try {
    const auto view = pmem::inspect(path);
    static_cast<void>(view.roots());
    static_cast<void>(view.descriptors());
    static_cast<void>(view.check());
  } catch (const ftm::error&) {
  }
  try {
    auto pool = pmem::open(path);
    if (const auto report = pool.check(); !report.ok()) {
      if (pristine) die("an undamaged pool fails check() once opened");
      return;  // damage found: refusing to go on is the right answer
    }
    ftm::atomically(
        pool,
        [](auto& tx) {
          auto a = tx.open(ftm::root<account>(tx, "acct"));
          a->balance += 1;
          ++a->ops;
          auto fresh = tx.create(account{1, 2});
          tx.destroy(fresh);
          auto b = tx.open_read(ftm::root<big>(tx, "big"));
          return b->bytes[7];
        },
        ftm::retry_policy{.max_attempts = 3});
    {
      // Destroying reads the chunk records (size classes, large objects' lengths).
      ftm::transaction tx{pool};
      tx.begin();
      tx.destroy(ftm::root<big>(tx, "big"));
      tx.destroy(ftm::root<account>(tx, "acct"));
      tx.abort();
    }
    if (const auto after = pool.check(); !after.ok()) {
      std::fprintf(stderr,
                   "pmem_open_fuzz: a pool that passed check() fails it after a "
                   "transaction:\n");
      for (const auto& problem : after.problems)
        std::fprintf(stderr, "  %s\n", problem.c_str());
      std::abort();
    }
  } catch (const ftm::error& e) {
    if (pristine) {
      std::fprintf(stderr, "pmem_open_fuzz: an undamaged pool: %s\n", e.what());
      std::abort();
    }
    // Every refusal is an ftm error that names its cause: the point of the exercise.
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path path = work_dir() / "pool.ftm";
  const std::uint8_t flags = size > 0 ? data[0] : 0;
  if ((flags & 4) != 0) {
    write_file(path, reinterpret_cast<const char*>(data + 1), size - 1);
  } else {
    const base_pools& b = bases();
    std::vector<char> file = (flags & 1) != 0 ? b.with_dead_writer : b.quiescent;
    if ((flags & 3) == 3) {
      const std::uint32_t committing = layout::committing;
      std::memcpy(file.data() + b.slot_offset + offsetof(layout::descriptor, state), &committing,
                  sizeof committing);
    }
    if (size > 1) damage(file, data + 1, size - 1);
    write_file(path, file.data(), file.size());
  }
  if ((flags & 8) != 0 && (flags & 4) == 0) {
    const other_user another(path);
    exercise(path, false);
  } else {
    exercise(path, (flags & 4) == 0 && size <= 1);
  }
  return 0;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static_cast<void>(bases());
  std::atexit([] { std::filesystem::remove_all(work_dir()); });
  return 0;
}
