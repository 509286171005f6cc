#ifndef FTM_STRING_REF_HPP
#define FTM_STRING_REF_HPP

/// \file
/// `string_ref<E>`: the read view of a string a stable map owns, as the map's entries
/// give it.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/detail/map_strings.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <compare>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE {

/// A read view of a string a stable map owns (a `stable_string` key or value), as an
/// entry of the map's view gives it: like a `std::string_view` of text that lives in
/// chunks, valid until its transaction ends (a use after that throws
/// `ftm::usage_error` in checked builds, as any container view does; `ftm::atomically`
/// refuses to return one). Copy the text out with `str()`.
template <engine E>
class string_ref {
 public:
  using size_type = std::uint64_t;
  static constexpr size_type npos = ~size_type{0};

  string_ref(transaction<E>& tx, const detail::string_slot& slot) noexcept
      : tx_(&tx), slot_(slot) {}

  [[nodiscard]] size_type size() const noexcept { return slot_.rep.size; }
  [[nodiscard]] size_type length() const noexcept { return size(); }
  [[nodiscard]] bool empty() const noexcept { return size() == 0; }

  /// A copy of the whole string.
  [[nodiscard]] std::string str() const { return substr(0); }
  /// A copy of `[pos, pos + n)`, cut at the end as `std::string::substr`.
  [[nodiscard]] std::string substr(size_type pos, size_type n = npos) const {
    if (pos > size()) {
      throw invalid_argument(
          fmt::format("ftm::string_ref::substr({}): the size is {}", pos, size()));
    }
    std::string out(std::min(n, size() - pos), '\0');
    detail::read_slot(tx(), slot_, pos, std::span<char>(out.data(), out.size()));
    return out;
  }
  /// Compares as `std::string_view::compare`; reads chunks only past the inline prefix.
  [[nodiscard]] int compare(std::string_view s) const {
    return detail::compare_slot(tx(), slot_, s);
  }
  friend bool operator==(const string_ref& a, std::string_view b) {
    return a.size() == b.size() && a.compare(b) == 0;
  }
  friend std::strong_ordering operator<=>(const string_ref& a, std::string_view b) {
    return a.compare(b) <=> 0;
  }

 private:
  transaction<E>& tx() const {
#if FTM_CHECKED
    detail::require_live(tx_, "ftm::string_ref");
#endif
    return *tx_;
  }

  transaction<E>* tx_;
  detail::string_slot slot_;
};

namespace detail {
/// A `string_ref` is bound to its transaction: `ftm::atomically` refuses to return one,
/// as it refuses an `opened<T>`.
template <engine E>
struct is_opened<string_ref<E>> : std::true_type {};
}  // namespace detail

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_STRING_REF_HPP
