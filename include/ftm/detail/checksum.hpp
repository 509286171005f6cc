#ifndef FTM_DETAIL_CHECKSUM_HPP
#define FTM_DETAIL_CHECKSUM_HPP

/// \file
/// The one checksum of ftm's formats: the pool's header, boot id and roots entries, and
/// the redo log's header and records.

#include <ftm/detail/config.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A 64-bit checksum of the `n` bytes at `p` (a multiple of 8), seeded: a chain of
/// records passes each one's checksum as the next one's seed.
inline std::uint64_t checksum(const void* p, std::size_t n, std::uint64_t seed) noexcept {
  std::uint64_t h = seed ^ 0x9e3779b97f4a7c15ull ^ n;
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, static_cast<const std::byte*>(p) + i, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_CHECKSUM_HPP
