#ifndef FTM_DETAIL_MAP_STRINGS_HPP
#define FTM_DETAIL_MAP_STRINGS_HPP

/// \file
/// The strings a stable map owns when its key or value type is `stable_string`: how an
/// entry holds one (`string_slot`: length, hash, a 16-byte inline prefix, and chunks
/// for the rest), how the map makes, frees, compares and reads it inside the caller's
/// transaction (`ftm::string_ref`, in its own header, is the read view an entry gives).

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// Bytes of a map-owned string held in its entry: a string this short has no other
/// storage.
inline constexpr std::size_t inline_prefix = 16;

/// One object holding all the bytes of a string of at most `N` bytes (and more than
/// the next smaller size): strings up to one chunk take one object of the smallest
/// of four sizes, not a directory and a chunk.
template <std::size_t N>
struct text_block {
  char bytes[N];
};
inline constexpr std::size_t text_block_sizes[] = {64, 256, 1024, chunk_bytes};
inline constexpr std::size_t largest_text_block = chunk_bytes;

/// A `stable_string` held in a map's entry. Up to `inline_prefix` bytes live in
/// `prefix` only. Up to `largest_text_block` bytes live in one `text_block` whose
/// offset is `rep.top`. Longer strings are a sequence of bytes like a `stable_string`'s
/// (`rep`: length and chunk directory). Either storage belongs to the entry: the node's
/// lock covers the string's length and where it is. A string longer than the prefix
/// keeps its first `inline_prefix` bytes in `prefix` too, and `hash` is the map's hash
/// of the whole string (0 in an ordered map), so a lookup opens a string's storage only
/// when hash, length and prefix all tie.
struct string_slot {
  sequence_rep rep;
  std::uint64_t hash;
  char prefix[inline_prefix];
};
static_assert(sizeof(string_slot) == 40);

/// Calls `f(text_block<N>{})` for the block size that holds `size` bytes (which is
/// more than `inline_prefix` and at most `largest_text_block`).
template <class F>
decltype(auto) with_block(std::uint64_t size, F&& f) {
  if (size <= text_block_sizes[0]) return f(text_block<text_block_sizes[0]>{});
  if (size <= text_block_sizes[1]) return f(text_block<text_block_sizes[1]>{});
  if (size <= text_block_sizes[2]) return f(text_block<text_block_sizes[2]>{});
  return f(text_block<text_block_sizes[3]>{});
}

/// Reads a slot's bytes: from the entry, its block (opened once) or its chunks.
template <engine E>
class slot_reader {
 public:
  slot_reader(transaction<E>& tx, const string_slot& s) : core_(tx, &s.rep) {
    if (s.rep.size <= inline_prefix) {
      bytes_ = s.prefix;
    } else if (s.rep.size <= largest_text_block) {
      bytes_ = with_block(s.rep.size, [&](auto b) -> const char* {
        return read_node<decltype(b)>(tx, s.rep.top)->bytes;
      });
    }
  }
  void read(std::uint64_t pos, std::span<char> out) {
    if (bytes_ != nullptr) {
      std::memcpy(out.data(), bytes_ + pos, out.size());
    } else {
      core_.read(pos, out);
    }
  }

 private:
  const char* bytes_ = nullptr;
  sequence_core<char, E, false> core_;
};

template <class T>
inline constexpr bool is_map_string = std::is_same_v<T, stable_string>;

/// What a map's node holds for a key or value of type `T`.
template <class T>
using slot_t = std::conditional_t<is_map_string<T>, string_slot, T>;

/// What a map's lookups and inserts take for a key or value of type `T`.
template <class T>
using arg_t = std::conditional_t<is_map_string<T>, std::string_view, const T&>;

/// The bytes of `s` without opening its chunks, when it has none.
inline std::string_view inline_text(const string_slot& s) noexcept {
  return {s.prefix, std::min<std::uint64_t>(s.rep.size, inline_prefix)};
}

/// The bytes `[pos, pos + out.size())` of `s`.
template <engine E>
void read_slot(transaction<E>& tx, const string_slot& s, std::uint64_t pos, std::span<char> out) {
  slot_reader<E>(tx, s).read(pos, out);
}

template <engine E>
std::string slot_string(transaction<E>& tx, const string_slot& s) {
  std::string out(s.rep.size, '\0');
  read_slot(tx, s, 0, std::span<char>(out.data(), out.size()));
  return out;
}

/// A new slot holding `text` (hashed as `hash`); its storage is allocated in `tx`.
template <engine E>
string_slot make_slot(transaction<E>& tx, std::string_view text, std::uint64_t hash) {
  string_slot s{};
  s.hash = hash;
  std::memcpy(s.prefix, text.data(), std::min(text.size(), inline_prefix));
  if (text.size() <= inline_prefix) {
    s.rep.size = text.size();
  } else if (text.size() <= largest_text_block) {
    s.rep.size = text.size();
    with_block(text.size(), [&](auto b) {
      using block = decltype(b);
      s.rep.top = new_node<block>(tx);
      std::memcpy(write_node<block>(tx, s.rep.top)->bytes, text.data(), text.size());
    });
  } else {
    sequence_core<char, E, true> core(tx, &s.rep);
    core.resize(text.size(), "a stable map's string");
    core.write(0, std::span<const char>(text.data(), text.size()));
  }
  return s;
}

/// Frees the storage of `s` in `tx` (an abort keeps it).
template <engine E>
void free_slot(transaction<E>& tx, string_slot s) {
  if (s.rep.size <= inline_prefix) return;
  if (s.rep.size <= largest_text_block) {
    with_block(s.rep.size, [&](auto b) { free_node<decltype(b)>(tx, s.rep.top); });
    return;
  }
  sequence_core<char, E, true>(tx, &s.rep).resize(0, "a stable map's string");
}

/// Compares `s` with `text` as `std::string_view::compare` does; opens chunks only
/// when the first `inline_prefix` bytes tie and both are longer.
template <engine E>
int compare_slot(transaction<E>& tx, const string_slot& s, std::string_view text) {
  const auto head =
      static_cast<std::size_t>(std::min<std::uint64_t>({s.rep.size, text.size(), inline_prefix}));
  if (const int c = std::memcmp(s.prefix, text.data(), head); c != 0) return c < 0 ? -1 : 1;
  if (s.rep.size > inline_prefix && text.size() > inline_prefix) {
    slot_reader<E> core(tx, s);
    const std::uint64_t n = std::min<std::uint64_t>(s.rep.size, text.size());
    char buf[512];
    for (std::uint64_t done = inline_prefix; done < n;) {
      const std::uint64_t k = std::min<std::uint64_t>(sizeof buf, n - done);
      core.read(done, std::span<char>(buf, k));
      if (const int c = std::memcmp(buf, text.data() + done, k); c != 0) return c < 0 ? -1 : 1;
      done += k;
    }
  }
  return s.rep.size < text.size() ? -1 : s.rep.size > text.size() ? 1 : 0;
}

/// Compares two slots; opens chunks only when their prefixes tie and both are longer.
template <engine E>
int compare_slots(transaction<E>& tx, const string_slot& a, const string_slot& b) {
  if (b.rep.size <= inline_prefix) return compare_slot(tx, a, inline_text(b));
  if (a.rep.size <= inline_prefix) return -compare_slot(tx, b, inline_text(a));
  if (const int c = std::memcmp(a.prefix, b.prefix, inline_prefix); c != 0) return c < 0 ? -1 : 1;
  // Both long with one prefix: compare the rest a block at a time.
  slot_reader<E> ca(tx, a);
  slot_reader<E> cb(tx, b);
  const std::uint64_t n = std::min(a.rep.size, b.rep.size);
  char x[512];
  char y[512];
  for (std::uint64_t done = inline_prefix; done < n;) {
    const std::uint64_t k = std::min<std::uint64_t>(sizeof x, n - done);
    ca.read(done, std::span<char>(x, k));
    cb.read(done, std::span<char>(y, k));
    if (const int c = std::memcmp(x, y, k); c != 0) return c < 0 ? -1 : 1;
    done += k;
  }
  return a.rep.size < b.rep.size ? -1 : a.rep.size > b.rep.size ? 1 : 0;
}

/// Whether `s` holds `text`, whose hash is `hash`: hash, length and prefix first.
template <engine E>
bool slot_equals(transaction<E>& tx, const string_slot& s, std::string_view text,
                 std::uint64_t hash) {
  return s.hash == hash && s.rep.size == text.size() && compare_slot(tx, s, text) == 0;
}

/// What `verify()` checks of an owned string: storage for exactly its length (its
/// block or each chunk opened, as the type of its size), the prefix equal to its first
/// bytes; its text for further checks.
template <engine E>
std::string checked_slot_text(transaction<E>& tx, const string_slot& s, const char* what,
                              void (*fail)(const std::string&)) {
  if (s.rep.size <= inline_prefix) {
    if (s.rep.top != 0) fail(fmt::format("{} of {} bytes has storage", what, s.rep.size));
    return std::string(inline_text(s));
  }
  if (s.rep.top == 0) fail(fmt::format("{} of {} bytes has no storage", what, s.rep.size));
  if (s.rep.size > sequence_core<char, E, false>::max_size()) {
    fail(fmt::format("{} claims {} bytes", what, s.rep.size));
  }
  std::string text = slot_string(tx, s);
  if (std::memcmp(text.data(), s.prefix, inline_prefix) != 0) {
    fail(fmt::format("{} of {} bytes: its prefix differs from its storage", what, s.rep.size));
  }
  return text;
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_MAP_STRINGS_HPP
