#ifndef FTM_INSPECT_HPP
#define FTM_INSPECT_HPP

/// \file
/// What a look at a pool finds, without changing it: the reports of an engine's
/// `check()` and of `ftm::engines::pmem_view` (`pmem::inspect`), which `ftm-inspect`
/// prints.

#include <ftm/detail/config.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

namespace ftm::FTM_ABI_NAMESPACE {

/// What a pool's check found; `ok()` when the pool is consistent (and, for an engine's
/// own `check()`, quiescent).
struct check_report {
  std::uint64_t objects = 0;
  std::uint64_t bytes_in_use = 0;  ///< bytes of live objects (without headers)
  std::uint64_t free_chunks = 0;
  std::uint64_t chunks = 0;
  std::uint64_t bytes_free = 0;  ///< bytes in free chunks and free blocks (with headers)
  std::vector<std::string> problems;
  [[nodiscard]] bool ok() const noexcept { return problems.empty(); }
};

/// How a transaction holds an object it locked.
enum class lock_kind : std::uint16_t { read = 1, write = 2 };

/// "read", "write", or "unknown" (a damaged log entry).
constexpr std::string_view to_string(lock_kind k) noexcept {
  switch (k) {
    case lock_kind::read: return "read";
    case lock_kind::write: return "write";
  }
  return "unknown";
}

/// One object a descriptor's log records as locked.
struct logged_lock {
  std::uint64_t offset = 0;  ///< the object's offset in the bank
  std::uint32_t length = 0;  ///< bytes that commit and abort copy (0: none yet)
  lock_kind kind = lock_kind::read;
};

/// A transaction descriptor in use: by a running transaction, a session, or a process
/// that died.
struct descriptor_report {
  std::uint32_t index = 0;
  pid_t pid = 0;      ///< the owner's process id
  bool alive = true;  ///< false once the owner died (recovery will undo or complete it)
  std::uint32_t state = 0;
  std::uint32_t count = 0;       ///< log entries, as recorded
  std::vector<logged_lock> log;  ///< those within the log's capacity
  std::string_view state_text = "unknown";
  /// "idle", "active", "committing", or "unknown".
  [[nodiscard]] std::string_view state_name() const noexcept { return state_text; }
};

/// A named root, as last committed.
struct root_report {
  std::string name;
  std::string type;  ///< the type's name, cut to 47 characters
  std::uint64_t fingerprint = 0;
  std::uint64_t offset = 0;
  std::uint32_t size = 0;
  std::uint64_t layout = 0;  ///< the object holding the type's layout description, 0 if none
};

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_INSPECT_HPP
