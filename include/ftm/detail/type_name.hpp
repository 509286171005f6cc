#ifndef FTM_DETAIL_TYPE_NAME_HPP
#define FTM_DETAIL_TYPE_NAME_HPP

/// \file
/// Compile-time type names and a stable 64-bit hash, for messages and fingerprints.

#include <ftm/detail/config.hpp>

#include <cstdint>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The name of `T` as the compiler spells it (`ns::account`).
template <class T>
constexpr std::string_view type_name() noexcept {
  std::string_view p = __PRETTY_FUNCTION__;
#if defined(__clang__)
  constexpr std::string_view key = "T = ";
  auto start = p.find(key) + key.size();
  auto end = p.rfind(']');
#else
  constexpr std::string_view key = "T = ";
  auto start = p.find(key) + key.size();
  auto end = p.find_first_of(";]", start);
#endif
  return p.substr(start, end - start);
}

/// The name without its namespaces (`account`), for printing values.
template <class T>
constexpr std::string_view short_type_name() noexcept {
  auto n = type_name<T>();
  int depth = 0;
  std::size_t cut = 0;
  for (std::size_t i = 0; i < n.size(); ++i) {
    if (n[i] == '<') ++depth;
    if (n[i] == '>') --depth;
    if (depth == 0 && n[i] == ':' && i + 1 < n.size() && n[i + 1] == ':') cut = i + 2;
  }
  return n.substr(cut);
}

/// FNV-1a: stable across compilers and runs, good enough to tell layouts apart.
constexpr std::uint64_t fnv1a(std::string_view s,
                              std::uint64_t h = 14695981039346656037ull) noexcept {
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

template <class>
inline constexpr bool always_false = false;

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_TYPE_NAME_HPP
