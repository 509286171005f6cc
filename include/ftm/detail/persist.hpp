#ifndef FTM_DETAIL_PERSIST_HPP
#define FTM_DETAIL_PERSIST_HPP

/// \file
/// Cache-line flushes, for bytes stored into a mapping of persistent memory (a file on
/// a DAX file system mapped with `MAP_SYNC`): stores reach the medium once the lines
/// holding them are written back (CLWB, CLFLUSHOPT or CLFLUSH) and an SFENCE orders
/// that write-back before every later store. Only x86-64 has them here; elsewhere
/// `available()` is false and the redo log flushes with `fdatasync`.

#include <ftm/detail/config.hpp>

#include <cstddef>
#include <cstdint>
#include <string_view>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace ftm::FTM_ABI_NAMESPACE::detail::persist {

/// The instruction that writes a cache line back, from none to the best.
enum class line_flush : std::uint8_t {
  none,        ///< not x86-64: no cache-line flushes
  clflush,     ///< every x86-64 processor; ordered with stores and other CLFLUSHes, evicts
  clflushopt,  ///< unordered among themselves, evicts the line
  clwb,        ///< unordered, keeps the line in the cache
};

constexpr std::string_view to_string(line_flush f) noexcept {
  switch (f) {
    case line_flush::none: return "none";
    case line_flush::clflush: return "clflush";
    case line_flush::clflushopt: return "clflushopt";
    case line_flush::clwb: return "clwb";
  }
  return "unknown";
}

/// What this processor offers, asked once with CPUID.
struct cpu {
  line_flush flush = line_flush::none;
  std::size_t line = 64;  ///< the bytes one flush writes back
};

inline const cpu& this_cpu() noexcept {
  static const cpu c = [] {
    cpu r;
#if defined(__x86_64__)
    unsigned a = 0, b = 0, c1 = 0, d = 0;
    r.flush = line_flush::clflush;
    // Leaf 1, EBX bits 15:8: the CLFLUSH line size in units of 8 bytes.
    if (__get_cpuid(1, &a, &b, &c1, &d) != 0 && ((b >> 8) & 0xff) != 0) {
      r.line = std::size_t{(b >> 8) & 0xff} * 8;
    }
    // Leaf 7, sub-leaf 0, EBX: bit 24 CLWB, bit 23 CLFLUSHOPT.
    if (__get_cpuid_count(7, 0, &a, &b, &c1, &d) != 0) {
      if ((b >> 24) & 1) {
        r.flush = line_flush::clwb;
      } else if ((b >> 23) & 1) {
        r.flush = line_flush::clflushopt;
      }
    }
#endif
    return r;
  }();
  return c;
}

/// Whether cache lines can be flushed from user space here.
inline bool available() noexcept { return this_cpu().flush != line_flush::none; }

/// The first byte of the line holding `p`, and the bytes of the lines `[p, p + n)`
/// touches: what `flush_lines(p, n)` writes back.
inline std::uintptr_t line_start(std::uintptr_t p) noexcept { return p & ~(this_cpu().line - 1); }
inline std::size_t line_span(std::uintptr_t p, std::size_t n) noexcept {
  const std::size_t line = this_cpu().line;
  return n == 0 ? 0 : ((p + n + line - 1) & ~(line - 1)) - line_start(p);
}

/// Starts the write-back of every cache line holding a byte of `[p, p + n)`; they are
/// on the medium once `fence()` returns. The instructions are written as assembly, so
/// that no `-m` flag is needed: only the processors that have them reach them.
inline void flush_lines(const void* p, std::size_t n) noexcept {
#if defined(__x86_64__)
  if (n == 0) return;
  const cpu& c = this_cpu();
  const std::uintptr_t begin = line_start(reinterpret_cast<std::uintptr_t>(p));
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + n;
  for (std::uintptr_t a = begin; a < end; a += c.line) {
    auto* line = reinterpret_cast<volatile char*>(a);
    switch (c.flush) {
      case line_flush::clwb: asm volatile("clwb %0" : "+m"(*line) : : "memory"); break;
      case line_flush::clflushopt: asm volatile("clflushopt %0" : "+m"(*line) : : "memory"); break;
      case line_flush::clflush: asm volatile("clflush %0" : "+m"(*line) : : "memory"); break;
      case line_flush::none: break;
    }
  }
#else
  static_cast<void>(p);
  static_cast<void>(n);
#endif
}

/// Orders the write-backs started before it before every later store: after it, the
/// flushed lines are on the medium (on a DAX mapping, whose stores the platform keeps
/// across a power loss once they leave the cache).
inline void fence() noexcept {
#if defined(__x86_64__)
  asm volatile("sfence" ::: "memory");
#endif
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail::persist

#endif  // FTM_DETAIL_PERSIST_HPP
