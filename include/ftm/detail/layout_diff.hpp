#ifndef FTM_DETAIL_LAYOUT_DIFF_HPP
#define FTM_DETAIL_LAYOUT_DIFF_HPP

/// \file
/// Says where two layout descriptions (`ftm::layout_description<T>()`) differ, so an
/// error can name the field rather than print two fingerprints.

#include <ftm/detail/config.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The top-level fields of `name{a: i64 @0, b: u32 @8} (size 16, align 8)`.
inline std::vector<std::string_view> layout_fields(std::string_view d) {
  std::vector<std::string_view> out;
  const auto open = d.find('{');
  if (open == std::string_view::npos) return out;
  int depth = 0;
  std::size_t start = open + 1;
  for (std::size_t i = open; i < d.size(); ++i) {
    const char c = d[i];
    if (c == '{' || c == '[' || c == '(') ++depth;
    if (c == '}' || c == ']' || c == ')') {
      if (--depth == 0) {
        if (i > start) out.push_back(d.substr(start, i - start));
        break;
      }
    }
    if (depth == 1 && c == ',' && i + 1 < d.size() && d[i + 1] == ' ') {
      out.push_back(d.substr(start, i - start));
      start = i + 2;
    }
  }
  return out;
}

/// One sentence naming the first difference between a stored layout and the
/// program's, or "" if they are the same.
inline std::string layout_difference(std::string_view stored, std::string_view program) {
  if (stored == program) return {};
  const auto a = layout_fields(stored);
  const auto b = layout_fields(program);
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (a[i] != b[i]) {
      return fmt::format("field {} is `{}` in the pool but `{}` in the program", i + 1, a[i], b[i]);
    }
  }
  if (a.size() != b.size()) {
    return fmt::format("the pool's type has {} fields, the program's {}", a.size(), b.size());
  }
  return fmt::format("the pool holds `{}`, the program declares `{}`", stored, program);
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_LAYOUT_DIFF_HPP
