// fmt printing of reflected types: only the types that opt in with
// ftm::reflected_formatter, so that the other Hana structs of a program keep the
// formatters their own code gives them.
#include <ftm/reflect.hpp>
#include <ftm/stable.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/hana/define_struct.hpp>

#include <cstdint>
#include <type_traits>

namespace user_lib {

/// A library of the user's that formats all of its Hana structs its own way, with a
/// constrained partial specialization of fmt::formatter, as ftm once did for all.
template <class T>
struct is_mine : std::false_type {};

struct point {
  BOOST_HANA_DEFINE_STRUCT(point, (std::int32_t, x), (std::int32_t, y));
};
template <>
struct is_mine<point> : std::true_type {};

/// A Hana struct with an explicit formatter of its own.
struct colour {
  BOOST_HANA_DEFINE_STRUCT(colour, (std::uint8_t, r), (std::uint8_t, g), (std::uint8_t, b));
};

/// A Hana struct nobody formats.
struct unformatted {
  BOOST_HANA_DEFINE_STRUCT(unformatted, (std::int32_t, v));
};

}  // namespace user_lib

template <class T>
requires user_lib::is_mine<T>::value struct fmt::formatter<T> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const T& p, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(), "({}, {})", p.x, p.y);
  }
};

template <>
struct fmt::formatter<user_lib::colour> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const user_lib::colour& c, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(), "#{:02x}{:02x}{:02x}", c.r, c.g, c.b);
  }
};

namespace {

using short_name = char[4];

struct inner {
  BOOST_HANA_DEFINE_STRUCT(inner, (std::int32_t, a), (short_name, name));
};

struct account {
  BOOST_HANA_DEFINE_STRUCT(account, (std::int64_t, balance), (inner, detail), (user_lib::point, at),
                           (ftm::stable<inner>, link));
};

}  // namespace

template <>
struct fmt::formatter<account> : ftm::reflected_formatter<account> {};

TEST_CASE("a user's own formatter of a Hana struct is the one used") {
  CHECK(fmt::format("{}", user_lib::point{3, 4}) == "(3, 4)");
  CHECK(fmt::format("{}", user_lib::colour{255, 0, 16}) == "#ff0010");
}

TEST_CASE("ftm formats no Hana struct that has not opted in") {
  static_assert(ftm::reflected<user_lib::unformatted>);
  static_assert(!fmt::is_formattable<user_lib::unformatted>::value);
  static_assert(!fmt::is_formattable<inner>::value);
  static_assert(fmt::is_formattable<account>::value);
}

TEST_CASE("a type that opts in prints its fields, members with their own formatters") {
  const account a{90, inner{7, {'a', 'b'}}, user_lib::point{1, 2}, {}};
  CHECK(fmt::format("{}", a) ==
        "account{balance: 90, detail: inner{a: 7, name: \"ab\"}, at: (1, 2), link: "
        "stable<inner>(null)}");
}
