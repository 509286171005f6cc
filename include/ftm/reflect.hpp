#ifndef FTM_REFLECT_HPP
#define FTM_REFLECT_HPP

/// \file
/// Reflection of stable types declared with `BOOST_HANA_DEFINE_STRUCT`: printing with
/// fmt (`account{balance: 90}`, for the types that opt in with
/// `ftm::reflected_formatter`), the raw-pointer rule, and layout fingerprints that a
/// persistent pool stores to refuse reading bytes as the wrong type.

#include <ftm/detail/config.hpp>
#include <ftm/detail/type_name.hpp>

#include <fmt/format.h>
#include <boost/hana/accessors.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/keys.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE {

template <class T>
class stable;

/// A type whose members Hana can enumerate (declared with `BOOST_HANA_DEFINE_STRUCT`).
template <class T>
concept reflected = boost::hana::Struct<T>::value;

namespace detail {

template <class T, class Out>
Out format_reflected(Out out, const T& value);

/// Writes one field: char arrays as bounded text (they need not end in a NUL), other
/// arrays as lists, everything else with its own formatter.
template <class T, class Out>
Out format_field(Out out, const T& v) {
  if constexpr (std::is_array_v<T> &&
                std::is_same_v<std::remove_cv_t<std::remove_extent_t<T>>, char>) {
    std::size_t n = 0;
    while (n < std::extent_v<T> && v[n] != '\0')
      ++n;
    return fmt::format_to(out, "\"{}\"", std::string_view(v, n));
  } else if constexpr (std::is_array_v<T>) {
    out = fmt::format_to(out, "[");
    for (std::size_t i = 0; i < std::extent_v<T>; ++i) {
      if (i != 0) out = fmt::format_to(out, ", ");
      out = format_field(out, v[i]);
    }
    return fmt::format_to(out, "]");
  } else if constexpr (reflected<T> && !fmt::is_formattable<T>::value) {
    return format_reflected(out, v);
  } else {
    return fmt::format_to(out, "{}", v);
  }
}

/// Writes `name{field: value, ...}`.
template <class T, class Out>
Out format_reflected(Out out, const T& value) {
  out = fmt::format_to(out, "{}{{", short_type_name<T>());
  bool first = true;
  boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
    out = fmt::format_to(out, "{}{}: ", first ? "" : ", ",
                         boost::hana::to<const char*>(boost::hana::first(pair)));
    out = format_field(out, boost::hana::second(pair)(value));
    first = false;
  });
  return fmt::format_to(out, "}}");
}

template <class T>
struct is_stable_handle : std::false_type {};
template <class T>
struct is_stable_handle<stable<T>> : std::true_type {};

/// True if `T` is, or holds at any depth a member that is, a raw pointer. Only
/// reflected types can be looked into; others are taken as they are.
template <class T>
constexpr bool contains_raw_pointer() noexcept {
  if constexpr (std::is_pointer_v<T> || std::is_member_pointer_v<T>) {
    return true;
  } else if constexpr (std::is_array_v<T>) {
    return contains_raw_pointer<std::remove_all_extents_t<T>>();
  } else if constexpr (reflected<T>) {
    bool found = false;
    boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
      using member = std::remove_cvref_t<decltype(boost::hana::second(pair)(std::declval<T&>()))>;
      found = found || contains_raw_pointer<member>();
    });
    return found;
  } else {
    return false;
  }
}

/// Spells a member's name in diagnostics, one character per template argument.
template <char... C>
struct member_name {};

template <class Key>
struct member_name_of;
template <char... C>
struct member_name_of<boost::hana::string<C...>> {
  using type = member_name<C...>;
};

/// Instantiated for a member that holds a raw pointer: the compiler shows its name
/// (spelled out in `member_name<...>`) and its type in the template arguments.
template <class T, class Name, class Member>
struct raw_pointer_member {
  static_assert(always_false<T>,
                "ftm requires T to be a stable type: the member of T spelled out in "
                "'raw_pointer_member<T, member_name<...>, type>' is, or holds, a raw pointer, "
                "which dangles after a restart or in another process; use ftm::stable<U> for "
                "links between objects");
};

/// Names each member of a reflected `T` that holds a raw pointer, by instantiating
/// `raw_pointer_member` for it.
template <class T>
constexpr void name_raw_pointer_members() {
  if constexpr (reflected<T>) {
    boost::hana::for_each(boost::hana::accessors<T>(), [](auto pair) {
      using member = std::remove_cvref_t<decltype(boost::hana::second(pair)(std::declval<T&>()))>;
      if constexpr (contains_raw_pointer<member>()) {
        using key = std::remove_cvref_t<decltype(boost::hana::first(pair))>;
        static_cast<void>(
            sizeof(raw_pointer_member<T, typename member_name_of<key>::type, member>));
      }
    });
  }
}

template <class T>
std::string describe_members();

/// A spelling of a member type that does not depend on the compiler.
template <class T>
std::string layout_type_name() {
  if constexpr (std::is_same_v<T, bool>) {
    return "bool";
  } else if constexpr (std::is_same_v<T, char>) {
    return "char";
  } else if constexpr (std::is_integral_v<T>) {
    return fmt::format("{}{}", std::is_signed_v<T> ? 'i' : 'u', sizeof(T) * 8);
  } else if constexpr (std::is_floating_point_v<T>) {
    return fmt::format("f{}", sizeof(T) * 8);
  } else if constexpr (std::is_array_v<T>) {
    return fmt::format("{}[{}]", layout_type_name<std::remove_extent_t<T>>(), std::extent_v<T>);
  } else if constexpr (is_stable_handle<T>::value) {
    return fmt::format("stable<{}>", short_type_name<typename T::element_type>());
  } else if constexpr (reflected<T>) {
    return fmt::format("{}{{{}}}", short_type_name<T>(), describe_members<T>());
  } else {
    return fmt::format("{}(size {}, align {})", short_type_name<T>(), sizeof(T), alignof(T));
  }
}

/// "name: type @offset" for each member, separated by ", ".
template <class T>
std::string describe_members() {
  std::string out;
  // Offsets need an object; stable types are trivially copyable, so a zeroed one will do.
  alignas(T) static const unsigned char storage[sizeof(T)]{};
  const T& obj = *reinterpret_cast<const T*>(storage);
  const auto* base = reinterpret_cast<const unsigned char*>(&obj);
  boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
    const auto& member = boost::hana::second(pair)(obj);
    using M = std::remove_cvref_t<decltype(member)>;
    auto offset = reinterpret_cast<const unsigned char*>(&member) - base;
    if (!out.empty()) out += ", ";
    out += fmt::format("{}: {} @{}", boost::hana::to<const char*>(boost::hana::first(pair)),
                       layout_type_name<M>(), offset);
  });
  return out;
}

}  // namespace detail

/// A readable account of `T`'s layout: for reflected types each field's name, type
/// and offset; otherwise its size and alignment. Two layouts are the same data only
/// if their descriptions are equal.
template <class T>
std::string layout_description() {
  return fmt::format("{} (size {}, align {})", detail::layout_type_name<T>(), sizeof(T),
                     alignof(T));
}

/// A 64-bit hash of `layout_description<T>()`, stable across compilers and runs.
template <class T>
std::uint64_t layout_fingerprint() {
  static const std::uint64_t fp = detail::fnv1a(layout_description<T>());
  return fp;
}

/// fmt's formatter for a reflected `T`: prints `name{field: value, ...}`. Opt in per
/// type, as with fmt's own `fmt::ostream_formatter`:
///
///     template <>
///     struct fmt::formatter<account> : ftm::reflected_formatter<account> {};
///
/// ftm does not format every Hana struct of the program by itself: a partial
/// specialization over all of them would take over types that other code formats.
/// Members print with their own formatters; a reflected member without one prints
/// the same way, field by field.
template <class T>
struct reflected_formatter {
  static_assert(reflected<T>,
                "ftm::reflected_formatter<T> requires T to be declared with "
                "BOOST_HANA_DEFINE_STRUCT, so that its members can be enumerated");

  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }

  template <class FormatContext>
  auto format(const T& value, FormatContext& ctx) const {
    return detail::format_reflected(ctx.out(), value);
  }
};

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_REFLECT_HPP
