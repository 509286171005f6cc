#ifndef FTM_STABLE_MAP_HPP
#define FTM_STABLE_MAP_HPP

/// \file
/// `stable_map<K, V>`: an ordered map of stable keys and values in a pool, a B+ tree of
/// stable nodes with linked leaves, for lookups, `lower_bound` and range scans in key
/// order. A change locks the leaf it touches; a split, the nodes on its way up only.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/detail/map_strings.hpp>
#include <ftm/detail/map_view.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE {

namespace detail {

/// Keys per inner node.
inline constexpr std::size_t inner_keys = 32;

/// Entries per leaf: about 4 KiB of them, between 4 and 64.
template <class K, class V>
inline constexpr std::size_t leaf_entries = std::clamp<std::size_t>(4096 / sizeof(map_entry<K, V>),
                                                                    4, 64);

/// An inner node: `count` separators and `count + 1` children; child `i` holds the
/// keys `k` with `key[i - 1] <= k < key[i]`.
template <class K>
struct tree_inner {
  std::uint64_t count;
  K key[inner_keys];
  std::uint64_t child[inner_keys + 1];
};

/// A leaf: `count` entries in key order, and the next leaf in key order (0 for the last).
template <class K, class V>
struct tree_leaf {
  std::uint64_t count;
  std::uint64_t next;
  map_entry<K, V> entry[leaf_entries<K, V>];
};

template <class K, class V, class Compare, engine E, bool Writable>
class opened_map_base;

}  // namespace detail

/// An ordered map from `K` to `V` (stable types; `K` ordered by `Compare`) in a pool: a
/// stable object like any other (`tx.create<ftm::stable_map<K, V>>()`, a root, or a
/// handle held in another object), empty when value-initialised.
///
/// A B+ tree: inner nodes of 32 keys, leaves of about 4 KiB linked in key order. A
/// lookup reads one path without locks; changing a value, inserting into a leaf
/// with room or erasing locks that leaf only; a full leaf splits, locking its parent
/// too (and so on up while they are full; the map's own object when the root splits).
/// Erasing never merges nodes: an emptied leaf stays in the tree for later keys of its
/// range. Open it with `ftm::open(tx, ref)` or `ftm::open_read(tx, ref)`.
///
/// `K` or `V` may be `stable_string`: the map then owns the strings (an insert makes
/// them, an overwrite or erase frees them), takes and looks them up as
/// `std::string_view`, orders string keys by their bytes, and its iterators give them
/// as `ftm::string_ref`s. An entry keeps a key's length and first 16 bytes, so a
/// descent reads a key's chunks only when two keys share those 16 bytes; a separator
/// in an inner node is the shortest prefix of its right child's first key that
/// separates it from the left child's last one, a string of its own.
template <class K, class V, class Compare = std::less<K>>
class stable_map {
  static_assert(detail::check_stable_type<K>());
  static_assert(detail::check_stable_type<V>());
  static_assert(!detail::is_map_string<K> || std::is_same_v<Compare, std::less<K>>,
                "ftm::stable_map<ftm::stable_string, V, Compare> orders string keys by their "
                "bytes (as std::string_view does) and takes no Compare; leave the third "
                "argument out");

 public:
  using key_type = K;
  using mapped_type = V;
  using value_type = detail::map_entry<K, V>;
  using key_compare = Compare;

 private:
  std::uint64_t root_ = 0;
  std::uint64_t height_ = 0;  // 0: empty; 1: the root is a leaf
  template <class, class, class, engine, bool>
  friend class detail::opened_map_base;
};

namespace detail {
template <class K, class V, class Compare>
inline constexpr bool is_stable_container<stable_map<K, V, Compare>> = true;
}  // namespace detail

namespace detail {

template <class K, class V, class Compare>
struct map_names<stable_map<K, V, Compare>> {
  static constexpr const char* container = "stable_map";
  static constexpr const char* view = "ftm::opened_map";
};

template <class K, class V, class Compare, engine E, bool Writable>
class opened_map_base : public map_view<opened_map_base<K, V, Compare, E, Writable>,
                                        stable_map<K, V, Compare>, E, Writable> {
  using map_type = stable_map<K, V, Compare>;
  using view = map_view<opened_map_base, map_type, E, Writable>;
  using SK = slot_t<K>;
  using SV = slot_t<V>;
  using leaf = tree_leaf<SK, SV>;
  using inner = tree_inner<SK>;

  /// Where an iterator is: a leaf's slot.
  struct cursor {
    std::uint64_t off = 0;
    std::uint64_t slot = 0;
    const tree_leaf<SK, SV>* node = nullptr;

    const map_entry<SK, SV>& current() const { return node->entry[slot]; }
    void advance(const opened_map_base& m) {
      ++slot;
      settle(m);
    }

    /// Moves to the first entry at or after this place: past the end of a leaf (and
    /// past empty leaves) to the next leaf.
    void settle(const opened_map_base& m) {
      if (off != 0 && node == nullptr) node = m.template read<tree_leaf<SK, SV>>(off);
      while (off != 0 && slot >= node->count) {
        off = node->next;
        slot = 0;
        node = off == 0 ? nullptr : m.template read<tree_leaf<SK, SV>>(off);
      }
      if (off == 0) slot = 0;
    }
  };

 public:
  using typename view::key_arg;
  using typename view::size_type;
  using view::holds_strings;
  /// A forward iterator in key order, along the linked leaves: a
  /// `const map_entry<K, V>&`, or with strings a `map_entry` of `string_ref`s by value.
  using const_iterator =
      map_iterator<opened_map_base, cursor,
                   std::conditional_t<holds_strings, typename view::out_entry, map_entry<K, V>>,
                   holds_strings>;
  using iterator = const_iterator;

  /// The number of entries: walks the leaves (reading each, no locks).
  [[nodiscard]] size_type size() const {
    size_type n = 0;
    for (std::uint64_t off = first_leaf(); off != 0;) {
      const auto* l = this->template read<leaf>(off);
      n += l->count;
      off = l->next;
    }
    return n;
  }

  const_iterator begin() const { return {this, cursor{.off = first_leaf()}}; }
  const_iterator end() const { return {}; }

  /// The first entry whose key is not less than `key`.
  const_iterator lower_bound(key_arg key) const {
    const std::uint64_t off = leaf_for(key, nullptr);
    if (off == 0) return end();
    const auto* l = this->template read<leaf>(off);
    return {this, cursor{.off = off, .slot = position(*l, key), .node = l}};
  }
  /// The first entry whose key is greater than `key`.
  const_iterator upper_bound(key_arg key) const {
    const std::uint64_t off = leaf_for(key, nullptr);
    if (off == 0) return end();
    const auto* l = this->template read<leaf>(off);
    std::uint64_t i = position(*l, key);
    if (i < l->count && !less(key, l->entry[i].first)) ++i;
    return {this, cursor{.off = off, .slot = i, .node = l}};
  }
  const_iterator find(key_arg key) const {
    const std::uint64_t off = leaf_for(key, nullptr);
    if (off == 0) return end();
    const auto* l = this->template read<leaf>(off);
    const std::uint64_t i = position(*l, key);
    if (i == l->count || less(key, l->entry[i].first)) return end();
    return {this, cursor{.off = off, .slot = i, .node = l}};
  }

  /// Walks the whole tree and checks its invariants: keys in order within and across
  /// nodes, every leaf at the same depth, the leaf chain in key order and complete,
  /// counts within bounds; with strings, each owned string's chunks and prefix (of
  /// keys, values and separators). Throws `ftm::bad_pool` naming the first broken one.
  void verify() const {
    if (map_->height_ == 0) {
      if (map_->root_ != 0) fail("height 0 but a root");
      return;
    }
    std::vector<std::uint64_t> leaves;
    verify_node(map_->root_, map_->height_, std::nullopt, std::nullopt, leaves);
    std::uint64_t off = leaves.front();
    for (std::size_t i = 0; i < leaves.size(); ++i) {
      if (off != leaves[i])
        fail(fmt::format("the leaf chain skips leaf {} of {}", i, leaves.size()));
      off = this->template read<leaf>(off)->next;
    }
    if (off != 0) fail("the leaf chain goes past the last leaf");
    const SK* prev = nullptr;
    for (std::uint64_t l = leaves.front(); l != 0;) {
      const auto* n = this->template read<leaf>(l);
      for (std::uint64_t i = 0; i < n->count; ++i) {
        if (prev != nullptr && !less(*prev, n->entry[i].first)) {
          fail("the leaf chain is out of key order");
        }
        prev = &n->entry[i].first;
      }
      l = n->next;
    }
  }

 protected:
  using view::fail;
  using view::map_;
  using view::tx;

  opened_map_base(transaction<E>& t, stable<map_type> ref) : view(t, ref) {}
  ~opened_map_base() = default;

  bool less(const SK& a, const SK& b) const {
    if constexpr (is_map_string<K>) {
      return compare_slots(tx(), a, b) < 0;
    } else {
      return Compare{}(a, b);
    }
  }
  bool less(const string_slot& a, std::string_view b) const requires is_map_string<K> {
    return compare_slot(tx(), a, b) < 0;
  }
  bool less(std::string_view a, const string_slot& b) const requires is_map_string<K> {
    return compare_slot(tx(), b, a) > 0;
  }

  static std::uint64_t& root_of(map_type& m) noexcept { return m.root_; }
  static std::uint64_t& height_of(map_type& m) noexcept { return m.height_; }

  /// The child of `n` whose range holds `key` (a lookup's, or a stored one): the
  /// number of separators <= key.
  template <class Key>
  std::size_t child_index(const inner& n, const Key& key) const {
    return static_cast<std::size_t>(
        std::upper_bound(n.key, n.key + n.count, key,
                         [this](const Key& a, const SK& b) { return less(a, b); }) -
        n.key);
  }
  /// The first slot of `l` whose key is not less than `key`.
  std::uint64_t position(const leaf& l, key_arg key) const {
    return static_cast<std::uint64_t>(
        std::lower_bound(
            l.entry, l.entry + l.count, key,
            [this](const map_entry<SK, SV>& e, key_arg k) { return less(e.first, k); }) -
        l.entry);
  }

  /// The leaf whose range holds `key` (0 if the map is empty); with `path`, the inner
  /// nodes on the way down, root first.
  std::uint64_t leaf_for(key_arg key, std::vector<std::uint64_t>* path) const {
    std::uint64_t off = map_->root_;
    for (std::uint64_t h = map_->height_; h > 1; --h) {
      if (path != nullptr) path->push_back(off);
      const auto* n = this->template read<inner>(off);
      off = n->child[child_index(*n, key)];
    }
    return off;
  }

  std::uint64_t first_leaf() const {
    std::uint64_t off = map_->root_;
    for (std::uint64_t h = map_->height_; h > 1; --h)
      off = this->template read<inner>(off)->child[0];
    return off;
  }

  void verify_node(std::uint64_t off, std::uint64_t height, std::optional<SK> lo,
                   std::optional<SK> hi, std::vector<std::uint64_t>& leaves) const {
    auto in_range = [&](const SK& k) { return (!lo || !less(k, *lo)) && (!hi || less(k, *hi)); };
    if (height == 1) {
      const auto* l = this->template read<leaf>(off);
      if (l->count > leaf_entries<SK, SV>) fail(fmt::format("a leaf holds {} entries", l->count));
      for (std::uint64_t i = 0; i < l->count; ++i) {
        if constexpr (is_map_string<K>) checked_slot_text(tx(), l->entry[i].first, "a key", &fail);
        if constexpr (is_map_string<V>) {
          checked_slot_text(tx(), l->entry[i].second, "a value", &fail);
        }
        if (!in_range(l->entry[i].first)) fail("a leaf holds a key outside its parent's range");
        if (i > 0 && !less(l->entry[i - 1].first, l->entry[i].first)) {
          fail("a leaf's keys are out of order");
        }
      }
      leaves.push_back(off);
      return;
    }
    const auto* n = this->template read<inner>(off);
    if (n->count == 0 || n->count > inner_keys) {
      fail(fmt::format("an inner node holds {} keys", n->count));
    }
    for (std::uint64_t i = 0; i < n->count; ++i) {
      if constexpr (is_map_string<K>) checked_slot_text(tx(), n->key[i], "a separator", &fail);
      if (!in_range(n->key[i])) fail("an inner node holds a key outside its parent's range");
      if (i > 0 && !less(n->key[i - 1], n->key[i])) fail("an inner node's keys are out of order");
    }
    for (std::uint64_t i = 0; i <= n->count; ++i) {
      if (n->child[i] == 0) fail("an inner node lacks a child");
      verify_node(n->child[i], height - 1, i == 0 ? lo : std::optional<SK>(n->key[i - 1]),
                  i == n->count ? hi : std::optional<SK>(n->key[i]), leaves);
    }
  }
};

}  // namespace detail

/// The view of a `stable_map` that `ftm::open_read` (`Writable` false) or `ftm::open`
/// gives: bound to its transaction, neither copied nor moved. Iterators and references
/// are valid until the transaction ends; a read view is a forward range of
/// `map_entry<K, V>` in key order, for the standard algorithms
/// (`m.lower_bound(a)` up to `m.lower_bound(b)` is a range scan). This
/// is the read view: it takes no locks.
template <class K, class V, class Compare, engine E, bool Writable = false>
class opened_map : public detail::opened_map_base<K, V, Compare, E, false> {
  static_assert(!Writable);
  using base = detail::opened_map_base<K, V, Compare, E, false>;

 public:
  opened_map(detail::from_offset_t, transaction<E>& tx, stable<stable_map<K, V, Compare>> ref)
      : base(tx, ref) {}
};

/// The write view (`ftm::open`): opening it only reads the map's own
/// object; each change locks what it touches.
template <class K, class V, class Compare, engine E>
class opened_map<K, V, Compare, E, true> : public detail::opened_map_base<K, V, Compare, E, true> {
  using base = detail::opened_map_base<K, V, Compare, E, true>;
  using map_type = stable_map<K, V, Compare>;
  using SK = detail::slot_t<K>;
  using SV = detail::slot_t<V>;
  using leaf = detail::tree_leaf<SK, SV>;
  using inner = detail::tree_inner<SK>;
  using value_arg = detail::arg_t<V>;
  static constexpr std::size_t leaf_max = detail::leaf_entries<SK, SV>;

 public:
  using size_type = std::uint64_t;
  using typename base::key_arg;

  opened_map(detail::from_offset_t, transaction<E>& tx, stable<map_type> ref) : base(tx, ref) {}

  /// Sets the value of `key`, inserting it if it is new; true if it was inserted. A
  /// string value replaced is freed, in this transaction.
  bool insert_or_assign(key_arg key, value_arg value) { return put(key, value, true); }
  /// Inserts `key` with `value` if it is not there; true if it was inserted.
  bool insert(key_arg key, value_arg value) { return put(key, value, false); }

  /// The value of `key` for writing, inserted value-initialised if it is new (not for
  /// a string value: use `insert_or_assign`).
  V& operator[](key_arg key) requires(!detail::is_map_string<V>) {
    if (!this->contains(key)) put(key, V{}, false);
    const std::uint64_t off = this->leaf_for(key, nullptr);
    auto* l = detail::write_node<leaf>(this->tx(), off);
    return l->entry[this->position(*l, key)].second;
  }

  /// Removes `key`; the number of entries removed (0 or 1). Locks its leaf only; strings
  /// it owned are freed, in this transaction.
  size_type erase(key_arg key) {
    const std::uint64_t off = this->leaf_for(key, nullptr);
    if (off == 0) return 0;
    const auto* r = this->template read<leaf>(off);
    const std::uint64_t i = this->position(*r, key);
    if (i == r->count || this->less(key, r->entry[i].first)) return 0;
    auto* l = detail::write_node<leaf>(this->tx(), off);
    this->template release<K>(l->entry[i].first);
    this->template release<V>(l->entry[i].second);
    std::copy(l->entry + i + 1, l->entry + l->count, l->entry + i);
    --l->count;
    return 1;
  }

 private:
  bool put(key_arg key, value_arg value, bool assign) {
    transaction<E>& tx = this->tx();
    if (base::height_of(*this->map_) == 0) {
      auto* m = detail::write_node<map_type>(tx, this->ref_.offset());
      this->map_ = m;
      if (base::height_of(*m) == 0) {
        base::root_of(*m) = detail::new_node<leaf>(tx);
        base::height_of(*m) = 1;
      }
    }
    std::vector<std::uint64_t> path;
    const std::uint64_t off = this->leaf_for(key, &path);
    const auto* r = this->template read<leaf>(off);
    const std::uint64_t i = this->position(*r, key);
    if (i < r->count && !this->less(key, r->entry[i].first)) {
      if (assign) {
        SV& slot = detail::write_node<leaf>(tx, off)->entry[i].second;
        this->template release<V>(slot);
        slot = this->template store<V>(value);
      }
      return false;
    }
    const detail::map_entry<SK, SV> entry{this->template store<K>(key),
                                          this->template store<V>(value)};
    auto* l = detail::write_node<leaf>(tx, off);
    if (l->count == leaf_max) {
      // Split: the upper half moves to a new leaf after this one.
      const std::uint64_t right_off = detail::new_node<leaf>(tx);
      auto* right = detail::write_node<leaf>(tx, right_off);
      const std::uint64_t half = leaf_max / 2;
      std::copy(l->entry + half, l->entry + l->count, right->entry);
      right->count = l->count - half;
      l->count = half;
      right->next = l->next;
      l->next = right_off;
      const SK separator = make_separator(l->entry[half - 1].first, right->entry[0].first);
      insert_into_leaf(this->less(key, separator) ? *l : *right, key, entry);
      insert_up(path, separator, right_off, off);
    } else {
      insert_into_leaf(*l, key, entry);
    }
    return true;
  }

  /// The separator of two leaves whose keys end at `left` and begin at `right`. A
  /// string key's is the shortest prefix of `right` greater than `left`, a string the
  /// inner node owns (inner nodes are never freed, nor are their separators).
  SK make_separator(const SK& left, const SK& right) {
    if constexpr (detail::is_map_string<K>) {
      transaction<E>& tx = this->tx();
      const std::string r = detail::slot_string(tx, right);
      const std::string l = detail::slot_string(tx, left);
      const std::size_t common = static_cast<std::size_t>(
          std::mismatch(l.begin(), l.end(), r.begin(), r.end()).second - r.begin());
      return this->template store<K>(std::string_view(r).substr(0, common + 1));
    } else {
      static_cast<void>(left);
      return right;
    }
  }

  void insert_into_leaf(leaf& l, key_arg key, const detail::map_entry<SK, SV>& entry) {
    const std::uint64_t i = this->position(l, key);
    std::copy_backward(l.entry + i, l.entry + l.count, l.entry + l.count + 1);
    l.entry[i] = entry;
    ++l.count;
  }

  /// Adds `separator` and its right child `right` to the parent of `left`, the last
  /// node of `path`, splitting parents as they fill; a new root when the root splits.
  void insert_up(std::vector<std::uint64_t>& path, SK separator, std::uint64_t right,
                 std::uint64_t left) {
    transaction<E>& tx = this->tx();
    while (!path.empty()) {
      const std::uint64_t off = path.back();
      path.pop_back();
      auto* n = detail::write_node<inner>(tx, off);
      if (n->count < detail::inner_keys) {
        insert_into_inner(*n, separator, right);
        return;
      }
      // Split the inner node: its middle key goes up.
      const std::uint64_t sib_off = detail::new_node<inner>(tx);
      auto* sib = detail::write_node<inner>(tx, sib_off);
      const std::size_t mid = detail::inner_keys / 2;
      const SK up = n->key[mid];
      sib->count = n->count - mid - 1;
      std::copy(n->key + mid + 1, n->key + n->count, sib->key);
      std::copy(n->child + mid + 1, n->child + n->count + 1, sib->child);
      n->count = mid;
      insert_into_inner(this->less(separator, up) ? *n : *sib, separator, right);
      separator = up;
      right = sib_off;
      left = off;
    }
    // The root split: a new root over the two halves.
    auto* m = detail::write_node<map_type>(tx, this->ref_.offset());
    this->map_ = m;
    const std::uint64_t root_off = detail::new_node<inner>(tx);
    auto* root = detail::write_node<inner>(tx, root_off);
    root->count = 1;
    root->key[0] = separator;
    root->child[0] = left;
    root->child[1] = right;
    base::root_of(*m) = root_off;
    ++base::height_of(*m);
  }

  void insert_into_inner(inner& n, const SK& separator, std::uint64_t right) {
    const std::size_t i = this->child_index(n, separator);
    std::copy_backward(n.key + i, n.key + n.count, n.key + n.count + 1);
    std::copy_backward(n.child + i + 1, n.child + n.count + 1, n.child + n.count + 2);
    n.key[i] = separator;
    n.child[i + 1] = right;
    ++n.count;
  }
};

/// Opens an ordered map in `tx` to change it.
template <class K, class V, class Compare, engine E>
opened_map<K, V, Compare, E, true> open(transaction<E>& tx, stable<stable_map<K, V, Compare>> ref) {
  return {detail::from_offset, tx, ref};
}

/// Opens an ordered map in `tx` to read it: no locks.
template <class K, class V, class Compare, engine E>
opened_map<K, V, Compare, E, false> open_read(transaction<E>& tx,
                                              stable<stable_map<K, V, Compare>> ref) {
  return {detail::from_offset, tx, ref};
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_STABLE_MAP_HPP
