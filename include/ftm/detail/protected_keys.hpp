#ifndef FTM_DETAIL_PROTECTED_KEYS_HPP
#define FTM_DETAIL_PROTECTED_KEYS_HPP

/// \file
/// Memory protection keys for protected mode: whether this CPU and kernel have them,
/// why not, and the per-thread rights register (PKRU on x86-64). A page tagged with a
/// key is writable only by the threads whose rights allow that key, and a thread
/// changes its own rights with one unprivileged instruction, no system call.

#include <ftm/detail/config.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <sys/mman.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Whether protected mode can use protection keys in this process, and if not, why.
struct protection_keys_support {
  bool available = false;
  std::string reason;  ///< why not (empty when available)
};

/// The `pku` and `ospke` flags of /proc/cpuinfo, in words ("pku no, ospke no"), for
/// messages: the CPU has the keys (pku) and the kernel turned them on (ospke).
inline std::string cpuinfo_protection_key_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    bool pku = false;
    bool ospke = false;
    for (std::string w; words >> w;) {
      pku = pku || w == "pku";
      ospke = ospke || w == "ospke";
    }
    return fmt::format("pku {}, ospke {}", pku ? "yes" : "no", ospke ? "yes" : "no");
  }
  return "no flags line in /proc/cpuinfo";
}

#if defined(__x86_64__) && defined(PKEY_DISABLE_WRITE)
inline constexpr bool protection_keys_compiled = true;

/// This thread's rights (PKRU): two bits per key, access-disable and write-disable.
/// Only to be run where `pkey_alloc` succeeded (elsewhere the instruction is invalid).
inline std::uint32_t read_key_rights() noexcept {
  std::uint32_t eax = 0;
  std::uint32_t edx = 0;
  asm volatile(".byte 0x0f, 0x01, 0xee" : "=a"(eax), "=d"(edx) : "c"(0));  // rdpkru
  return eax;
}

inline void write_key_rights(std::uint32_t rights) noexcept {
  asm volatile(".byte 0x0f, 0x01, 0xef" : : "a"(rights), "c"(0), "d"(0) : "memory");  // wrpkru
}
#else
inline constexpr bool protection_keys_compiled = false;
inline std::uint32_t read_key_rights() noexcept { return 0; }
inline void write_key_rights(std::uint32_t) noexcept {}
#endif

/// The bits of key `k` in the rights register.
inline constexpr std::uint32_t key_access_disabled(int k) noexcept { return 1u << (2 * k); }
inline constexpr std::uint32_t key_write_disabled(int k) noexcept { return 2u << (2 * k); }

/// Allocates a key this thread may read but not write, or returns -1 (and sets `why`).
inline int allocate_protection_key(std::string* why) {
#if defined(__x86_64__) && defined(PKEY_DISABLE_WRITE)
  const int k = ::pkey_alloc(0, PKEY_DISABLE_WRITE);
  if (k < 0 && why != nullptr) {
    const int e = errno;
    *why = fmt::format("pkey_alloc failed: {} (/proc/cpuinfo: {})", std::strerror(e),
                       cpuinfo_protection_key_flags());
  }
  return k;
#else
  if (why != nullptr)
    *why = "ftm uses protection keys only on x86-64 with a C library that has pkey_alloc";
  return -1;
#endif
}

inline void free_protection_key(int k) noexcept {
#if defined(__x86_64__) && defined(PKEY_DISABLE_WRITE)
  if (k > 0) ::pkey_free(k);
#else
  static_cast<void>(k);
#endif
}

/// Tags `[p, p + n)` with key `k` and protection `prot` (0 < k: only threads whose
/// rights allow `k` write it; k == 0: every thread, as `prot` says).
inline int protect_with_key(void* p, std::size_t n, int prot, int k) noexcept {
#if defined(__x86_64__) && defined(PKEY_DISABLE_WRITE)
  return ::pkey_mprotect(p, n, prot, k);
#else
  static_cast<void>(k);
  return ::mprotect(p, n, prot);
#endif
}

/// Whether protected mode may use protection keys here: FTM_PROTECTION=mprotect in the
/// environment says no (to run the `mprotect` mechanism where keys exist; read at each
/// call), and so does a `pkey_alloc` that fails (no PKU in the CPU, or a kernel without
/// it), tried once per process (its key is given back).
inline protection_keys_support protection_keys() {
  const char* forced = std::getenv("FTM_PROTECTION");
  if (forced != nullptr && std::strcmp(forced, "mprotect") == 0)
    return {false, "FTM_PROTECTION=mprotect in the environment"};
  static const protection_keys_support probed = [] {
    protection_keys_support r;
    const int k = allocate_protection_key(&r.reason);
    if (k < 0) return r;
    free_protection_key(k);
    r.available = true;
    r.reason.clear();
    return r;
  }();
  return probed;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_PROTECTED_KEYS_HPP
