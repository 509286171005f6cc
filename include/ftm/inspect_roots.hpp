#ifndef FTM_INSPECT_ROOTS_HPP
#define FTM_INSPECT_ROOTS_HPP

/// \file
/// Decoding a root's value without its program: `ftm::decode_root` reads the layout
/// description the pool recorded for the root's type (`layout_description<T>()`) and
/// prints each field of the committed value; for a container (a root of one, or a
/// `stable<C>` field naming one) it walks the container and reports its kind, size and
/// storage. `ftm-inspect` prints this for every root.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/inspect.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_vector.hpp>

#include <fmt/format.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE {

/// What `decode_root` found in a container: its kind (`stable_vector`, `stable_string`,
/// `stable_hash_map`, `stable_map`), its number of elements or entries, and the
/// objects and bytes that hold it (its own object included).
struct container_summary {
  std::string kind;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  std::uint64_t objects = 0;
  std::uint64_t bytes = 0;
  std::vector<std::string> problems;  ///< what the walk found broken
};

/// A root's committed value, decoded with its recorded layout.
struct root_value {
  std::string text;  ///< `{field: value, ...}`, or the value of a plain type
  std::vector<container_summary> containers;  ///< the root itself, or its fields' targets
};

namespace detail {

/// Reads committed objects through `object(offset)` (a `pmem_view`).
template <class View>
class root_decoder {
 public:
  explicit root_decoder(const View& pool) : pool_(pool) {}

  std::span<const std::byte> object(std::uint64_t off) const { return pool_.object(off); }

  template <class T>
  T word(std::uint64_t off, std::size_t at) const {
    const auto bytes = object(off);
    T v{};
    if (at + sizeof(T) <= bytes.size()) std::memcpy(&v, bytes.data() + at, sizeof(T));
    return v;
  }

  /// The kind of container a layout's type name is, or empty.
  static std::string_view container_kind(std::string_view type) {
    for (std::string_view k :
         {"stable_vector<", "stable_string", "stable_hash_map<", "stable_map<"}) {
      if (type.starts_with(k)) return k.substr(0, k.find('<'));
    }
    return {};
  }

  container_summary summarize(std::string_view kind, std::uint64_t off) const {
    container_summary s;
    s.kind = kind;
    s.offset = off;
    count(s, off);
    try {
      if (kind == "stable_vector" || kind == "stable_string") {
        walk_sequence(s, off);
      } else if (kind == "stable_hash_map") {
        walk_hash_map(s, off);
      } else {
        walk_tree(s, off);
      }
    } catch (const std::exception& e) {
      s.problems.emplace_back(e.what());
    }
    return s;
  }

  /// Decodes the value of type `type` (a layout spelling) at `at` in object `off`.
  std::string value(std::string_view type, std::uint64_t off, std::size_t at,
                    std::vector<container_summary>& found) const {
    const auto bytes = object(off);
    auto integer = [&](std::size_t n, bool sign) -> std::string {
      if (at + n > bytes.size()) return "?";
      std::uint64_t u = 0;
      std::memcpy(&u, bytes.data() + at, n);
      if (sign && n < 8 && (u >> (8 * n - 1)) != 0) u |= ~std::uint64_t{0} << (8 * n);
      return sign ? fmt::format("{}", static_cast<std::int64_t>(u)) : fmt::format("{}", u);
    };
    if (type == "bool") return integer(1, false) == "0" ? "false" : "true";
    if (type == "char")
      return fmt::format("'{}'", at < bytes.size() ? static_cast<char>(bytes[at]) : '?');
    if ((type[0] == 'i' || type[0] == 'u') && type.size() <= 3 &&
        type.find_first_not_of("0123456789", 1) == std::string_view::npos) {
      return integer(std::stoul(std::string(type.substr(1))) / 8, type[0] == 'i');
    }
    if (type == "f64" && at + 8 <= bytes.size()) {
      double d = 0;
      std::memcpy(&d, bytes.data() + at, 8);
      return fmt::format("{}", d);
    }
    if (type == "f32" && at + 4 <= bytes.size()) {
      float f = 0;
      std::memcpy(&f, bytes.data() + at, 4);
      return fmt::format("{}", f);
    }
    if (type.ends_with("]")) {
      const auto open = type.rfind('[');
      const std::string_view elem = type.substr(0, open);
      const std::size_t n = std::stoul(std::string(type.substr(open + 1)));
      if (elem == "char") {
        std::string s;
        for (std::size_t i = 0; i < n && at + i < bytes.size(); ++i) {
          const char c = static_cast<char>(bytes[at + i]);
          if (c == '\0') break;
          s += c;
        }
        return fmt::format("\"{}\"", s);
      }
      return fmt::format("[{} elements]", n);
    }
    if (type.starts_with("stable<")) {
      const auto target = word<std::uint64_t>(off, at);
      if (target == 0) return fmt::format("{}(null)", type);
      if (auto kind = container_kind(type.substr(7)); !kind.empty()) {
        found.push_back(summarize(kind, target));
      }
      return fmt::format("{}@{}", type, target);
    }
    if (auto brace = type.find('{'); brace != std::string_view::npos && type.ends_with("}")) {
      return fields(type.substr(brace + 1, type.size() - brace - 2), off, at, found);
    }
    return "(not reflected: declare it with BOOST_HANA_DEFINE_STRUCT to see its fields)";
  }

  /// Decodes `name: type @offset, ...` members at `at` in object `off`.
  std::string fields(std::string_view members, std::uint64_t off, std::size_t at,
                     std::vector<container_summary>& found) const {
    std::string out = "{";
    std::size_t start = 0;
    int depth = 0;
    for (std::size_t i = 0; i <= members.size(); ++i) {
      const char c = i < members.size() ? members[i] : ',';
      if (c == '{' || c == '<' || c == '(' || c == '[') ++depth;
      if (c == '}' || c == '>' || c == ')' || c == ']') --depth;
      if (c != ',' || depth != 0) continue;
      std::string_view m = members.substr(start, i - start);
      start = i + 1;
      while (m.starts_with(' '))
        m.remove_prefix(1);
      const auto colon = m.find(": ");
      const auto atpos = m.rfind(" @");
      if (colon == std::string_view::npos || atpos == std::string_view::npos) continue;
      const std::size_t field_at = std::stoul(std::string(m.substr(atpos + 2)));
      if (out.size() > 1) out += ", ";
      out += fmt::format("{}: {}", m.substr(0, colon),
                         value(m.substr(colon + 2, atpos - colon - 2), off, at + field_at, found));
    }
    return out + "}";
  }

 private:
  void count(container_summary& s, std::uint64_t off) const {
    ++s.objects;
    s.bytes += object(off).size();
  }

  void walk_sequence(container_summary& s, std::uint64_t off) const {
    s.size = word<std::uint64_t>(off, 0);
    const auto top = word<std::uint64_t>(off, 8);
    std::uint64_t chunks = 0;
    if (top != 0) {
      count(s, top);
      for (std::size_t i = 0; i < dir_slots; ++i) {
        const auto leaf = word<std::uint64_t>(top, 8 * i);
        if (leaf == 0) continue;
        count(s, leaf);
        for (std::size_t j = 0; j < dir_slots; ++j) {
          const auto chunk = word<std::uint64_t>(leaf, 8 * j);
          if (chunk == 0) continue;
          count(s, chunk);
          ++chunks;
        }
      }
    }
    if (s.kind == "stable_string" && chunks != (s.size + chunk_bytes - 1) / chunk_bytes) {
      s.problems.push_back(fmt::format("{} bytes in {} chunks", s.size, chunks));
    }
  }

  void walk_hash_map(container_summary& s, std::uint64_t off) const {
    const auto table = word<std::uint64_t>(off, 0);
    if (table == 0) return;
    count(s, table);
    for (std::size_t i = 0; i < hash_segments; ++i) {
      const auto seg = word<std::uint64_t>(table, 8 * i);
      if (seg == 0) continue;
      count(s, seg);
      const auto counted = word<std::uint64_t>(seg, offsetof(hash_segment, count));
      std::uint64_t held = 0;
      for (std::size_t p = 0; p < segment_pages; ++p) {
        const auto page = word<std::uint64_t>(seg, offsetof(hash_segment, page) + 8 * p);
        if (page == 0) continue;
        count(s, page);
        for (std::size_t b = 0; b < bucket_page_slots; ++b) {
          std::uint64_t guard = 0;
          for (auto node = word<std::uint64_t>(page, 8 * b); node != 0;
               node = word<std::uint64_t>(node, 0)) {
            count(s, node);
            held += word<std::uint64_t>(node, 8);
            if (++guard > counted + 1) {
              s.problems.push_back(fmt::format("segment {}: a chain with a cycle", i));
              break;
            }
          }
        }
      }
      if (held != counted) {
        s.problems.push_back(
            fmt::format("segment {} counts {} entries, holds {}", i, counted, held));
      }
      s.size += held;
    }
  }

  void walk_tree(container_summary& s, std::uint64_t off) const {
    const auto root = word<std::uint64_t>(off, 0);
    const auto height = word<std::uint64_t>(off, 8);
    if (height > 64) {
      s.problems.push_back(fmt::format("a height of {}", height));
      return;
    }
    if (height != 0) walk_tree_node(s, root, height);
  }

  void walk_tree_node(container_summary& s, std::uint64_t off, std::uint64_t height) const {
    count(s, off);
    const auto n = word<std::uint64_t>(off, 0);
    if (height == 1) {
      s.size += n;
      return;
    }
    // An inner node: its count, `inner_keys` keys, then `inner_keys + 1` children; the
    // key size follows from the object's size.
    const std::size_t size = object(off).size();
    const std::size_t key_bytes = (size - 8 - 8 * (inner_keys + 1)) / inner_keys;
    const std::size_t children = (8 + inner_keys * key_bytes + 7) / 8 * 8;
    if (n > inner_keys) {
      s.problems.push_back(fmt::format("an inner node holds {} keys", n));
      return;
    }
    for (std::size_t i = 0; i <= n; ++i) {
      walk_tree_node(s, word<std::uint64_t>(off, children + 8 * i), height - 1);
    }
  }

  const View& pool_;
};

}  // namespace detail

/// Decodes the committed value of the root `r` of `pool` (a `pmem_view`, or anything
/// with `object(offset)` giving an object's committed bytes) with the layout
/// description `layout` the pool recorded for it. Reflected types print field by
/// field; a container (the root, or the target of a `stable<C>` field) is walked and
/// summarised. Throws `ftm::bad_pool` if an object it reads cannot be.
template <class View>
root_value decode_root(const View& pool, const root_report& r, std::string_view layout) {
  const detail::root_decoder<View> d(pool);
  root_value out;
  // The layout reads `type (size N, align A)`; the type is `name{members}` for a
  // reflected type, `name(size N, align A)` for another.
  const auto tail = layout.rfind(" (size ");
  const std::string_view type = layout.substr(0, tail);
  if (auto kind = d.container_kind(type); !kind.empty()) {
    out.containers.push_back(d.summarize(kind, r.offset));
    out.text = fmt::format("{} {} (see below)", kind, r.offset);
  } else {
    out.text = d.value(type, r.offset, 0, out.containers);
  }
  return out;
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_INSPECT_ROOTS_HPP
