#ifndef FTM_DURABILITY_HPP
#define FTM_DURABILITY_HPP

/// \file
/// What a commit of `ftm::engines::pmem` survives (`ftm::durability`) and, at `power`,
/// how its redo log reaches the medium (`ftm::flush_method`). `<ftm/engines/pmem.hpp>`
/// includes it.

#include <ftm/detail/config.hpp>

#include <cstdint>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE {

/// What a committed transaction survives, chosen when a pool file is opened.
enum class durability {
  /// The death of every process using the pool: commit flushes nothing.
  process,
  /// An OS crash or a power loss as well: commit returns once a redo log beside the
  /// pool (`<pool>.wal`) holds the transaction on the medium.
  power,
};

/// How a `power` pool's commits put the redo log on the medium, chosen when the pool
/// is created or opened (`pmem::options::flush`). A pool records the method its users
/// chose (`fdatasync` or `cache_lines`) by these values.
enum class flush_method : std::uint32_t {
  /// `cache_lines` where the log's file system maps it with `MAP_SYNC` (a DAX file
  /// system on persistent memory, x86-64), `fdatasync` everywhere else.
  automatic = 2,
  /// `pwrite` and `fdatasync`; concurrent committers share one `fdatasync`.
  fdatasync = 0,
  /// The log mapped with `MAP_SYNC`; commit stores its record, flushes its cache lines
  /// (CLWB, CLFLUSHOPT or CLFLUSH) and fences (SFENCE), without a system call.
  /// `ftm::io_error` where the file system or the processor cannot.
  cache_lines = 1,
};

constexpr std::string_view to_string(flush_method m) noexcept {
  switch (m) {
    case flush_method::automatic: return "automatic";
    case flush_method::fdatasync: return "fdatasync";
    case flush_method::cache_lines: return "cache_lines";
  }
  return "unknown";
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_DURABILITY_HPP
