#ifndef FTM_DETAIL_MAP_VIEW_HPP
#define FTM_DETAIL_MAP_VIEW_HPP

/// \file
/// What the views of `stable_hash_map` and `stable_map` share: their binding to the
/// transaction (no copy, no move, checked use), the checked lookups built on a map's own
/// `find`, and the forward iterator over the entries of their nodes. Each map supplies
/// only its cursor (where an entry is, and how to reach the next) and its `find`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/detail/map_strings.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/string_ref.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// What a map's iterator gives for a key or value of type `T`: a `string_ref` for a
/// string, a copy of the value otherwise (in a map with a string key or value).
template <class T, engine E>
using out_t = std::conditional_t<is_map_string<T>, string_ref<E>, T>;

template <class T, engine E>
out_t<T, E> make_out(transaction<E>& tx, const slot_t<T>& s) {
  if constexpr (is_map_string<T>) {
    return string_ref<E>(tx, s);
  } else {
    return s;
  }
}

/// An entry given by value holds `string_ref`s: `ftm::atomically` refuses to return it.
template <class A, class B>
struct is_opened<map_entry<A, B>> : std::bool_constant<is_opened<A>::value || is_opened<B>::value> {
};

/// `operator->` of an iterator whose entries are values: holds one.
template <class T>
struct arrow_proxy {
  T value;
  const T* operator->() const noexcept { return &value; }
};

/// A map's names in messages: `container` ("stable_hash_map") and `view`
/// ("ftm::opened_hash_map"). Each map header specialises it.
template <class Map>
struct map_names;

/// A forward iterator over a map's entries. `Cursor` holds where it is (`off`, the node's
/// offset, 0 at the end; `slot`), gives the entry there (`current()`), and moves:
/// `settle(view)` to the first entry at or after that place, `advance(view)` to the
/// next. With
/// `Proxied` (a map of strings), it gives each entry as a value, `view.out(entry)`,
/// whose strings are `string_ref`s; otherwise a reference into the node.
template <class View, class Cursor, class Entry, bool Proxied = false>
class map_iterator {
 public:
  using iterator_concept = std::forward_iterator_tag;
  using iterator_category = std::forward_iterator_tag;
  using value_type = Entry;
  using difference_type = std::ptrdiff_t;
  using reference = std::conditional_t<Proxied, value_type, const value_type&>;
  using pointer = std::conditional_t<Proxied, arrow_proxy<value_type>, const value_type*>;

  map_iterator() = default;
  map_iterator(const View* view, Cursor at) : view_(view), at_(at) { at_.settle(*view_); }

  reference operator*() const {
    if constexpr (Proxied) {
      return view_->out(at_.current());
    } else {
      return at_.current();
    }
  }
  pointer operator->() const {
    if constexpr (Proxied) {
      return {**this};
    } else {
      return &at_.current();
    }
  }
  map_iterator& operator++() {
    at_.advance(*view_);
    return *this;
  }
  map_iterator operator++(int) {
    auto t = *this;
    ++*this;
    return t;
  }
  friend bool operator==(const map_iterator& a, const map_iterator& b) noexcept {
    return a.at_.off == b.at_.off && a.at_.slot == b.at_.slot;
  }

 private:
  const View* view_ = nullptr;
  Cursor at_{};
};

/// The base of a map's view: `Derived` (the map's own view base) gives `find(key)`,
/// `begin()` and `end()`; this gives the rest of the read interface and the checked
/// access to the transaction and the nodes.
template <class Derived, class Map, engine E, bool Writable>
class map_view {
  using names = map_names<Map>;

 public:
  using key_type = typename Map::key_type;
  using mapped_type = typename Map::mapped_type;
  using value_type = typename Map::value_type;
  using size_type = std::uint64_t;

  // clang-format off
  // Both compilers quote these lines in their "deleted" diagnostics: they carry the rule.
  map_view(const map_view&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  map_view(map_view&&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  map_view& operator=(const map_view&) = delete;  // an opened ftm container cannot be copied or moved
  map_view& operator=(map_view&&) = delete;  // an opened ftm container cannot be copied or moved
  // clang-format on

  [[nodiscard]] bool empty() const { return self().begin() == self().end(); }
  auto cbegin() const { return self().begin(); }
  auto cend() const { return self().end(); }

  /// What lookups take for a key: `const K&`, or a `std::string_view` for a
  /// `stable_string` key.
  using key_arg = arg_t<key_type>;
  /// Whether entries hold strings the map owns (their iterators give values then).
  static constexpr bool holds_strings = is_map_string<key_type> || is_map_string<mapped_type>;

  [[nodiscard]] bool contains(key_arg key) const { return self().find(key) != self().end(); }
  [[nodiscard]] size_type count(key_arg key) const { return contains(key) ? 1 : 0; }
  /// The value of `key` (a `string_ref` for a string value); `ftm::invalid_argument` if
  /// there is none.
  decltype(auto) at(key_arg key) const {
    const auto it = self().find(key);
    if (it == self().end()) {
      throw invalid_argument(fmt::format("{}<{}, {}>::at: no such key", names::container,
                                         type_name<key_type>(), type_name<mapped_type>()));
    }
    if constexpr (holds_strings) {
      return out_t<mapped_type, E>((*it).second);
    } else {
      return static_cast<const mapped_type&>(it->second);
    }
  }

  [[nodiscard]] stable<Map> ref() const noexcept { return ref_; }

  /// What an iterator of a map of strings gives for a stored entry.
  using out_entry = map_entry<out_t<key_type, E>, out_t<mapped_type, E>>;
  template <class Stored>
  out_entry out(const Stored& e) const {
    return {make_out<key_type, E>(tx(), e.first), make_out<mapped_type, E>(tx(), e.second)};
  }

 protected:
  /// What a node holds for `a`: `a` itself, or a new owned string (hashed as `hash`).
  template <class T>
  slot_t<T> store(arg_t<T> a, std::uint64_t hash = 0) const {
    if constexpr (is_map_string<T>) {
      return make_slot(tx(), a, hash);
    } else {
      return a;
    }
  }
  /// Frees what `store` allocated for `s` (nothing for a fixed-size type).
  template <class T>
  void release(const slot_t<T>& s) const {
    if constexpr (is_map_string<T>) free_slot(tx(), s);
  }

  using map_pointer = std::conditional_t<Writable, Map*, const Map*>;

  /// Opens the map's own object for reading (a shared lock): a write view's changes
  /// lock what they touch, and the map's object only when they change it.
  map_view(transaction<E>& t, stable<Map> ref)
      : tx_(&t), ref_(ref), map_(const_cast<map_pointer>(read_node<Map>(t, checked(ref)))) {}
  ~map_view() = default;

  /// The offset of `ref`, refused if it is null.
  static std::uint64_t checked(stable<Map> ref) {
    if (!ref) {
      throw usage_error(
          fmt::format("ftm::open: the ftm::stable<{}> handle is null", names::container));
    }
    return ref.offset();
  }

  /// A broken structure, found by `verify()`.
  [[noreturn]] static void fail(const std::string& what) {
    throw bad_pool(fmt::format("{}<{}, {}>: {}", names::container, type_name<key_type>(),
                               type_name<mapped_type>(), what));
  }

  transaction<E>& tx() const {
#if FTM_CHECKED
    require_live(tx_, names::view);
#endif
    return *tx_;
  }

  template <class N>
  const N* read(std::uint64_t off) const {
    return read_node<N>(tx(), off);
  }

  transaction<E>* tx_;
  stable<Map> ref_;
  map_pointer map_;

 private:
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_MAP_VIEW_HPP
