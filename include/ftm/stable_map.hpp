#ifndef FTM_STABLE_MAP_HPP
#define FTM_STABLE_MAP_HPP

/// \file
/// `stable_map<K, V>`: an ordered map of stable keys and values in a pool, a B+ tree of
/// stable nodes with linked leaves, for lookups, `lower_bound` and range scans in key
/// order. A change locks the leaf it touches; a split, the nodes on its way up only.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
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
template <class K, class V, class Compare = std::less<K>>
class stable_map {
  static_assert(detail::check_stable_type<K>());
  static_assert(detail::check_stable_type<V>());

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
  using leaf = tree_leaf<K, V>;
  using inner = tree_inner<K>;

  /// Where an iterator is: a leaf's slot.
  struct cursor {
    std::uint64_t off = 0;
    std::uint64_t slot = 0;
    const tree_leaf<K, V>* node = nullptr;

    /// Moves to the first entry at or after this place: past the end of a leaf (and
    /// past empty leaves) to the next leaf.
    void settle(const opened_map_base& m) {
      if (off != 0 && node == nullptr) node = m.template read<tree_leaf<K, V>>(off);
      while (off != 0 && slot >= node->count) {
        off = node->next;
        slot = 0;
        node = off == 0 ? nullptr : m.template read<tree_leaf<K, V>>(off);
      }
      if (off == 0) slot = 0;
    }
  };

 public:
  /// A forward iterator in key order, along the linked leaves.
  using const_iterator = map_iterator<opened_map_base, cursor, map_entry<K, V>>;
  using iterator = const_iterator;
  using typename view::size_type;

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
  const_iterator lower_bound(const K& key) const {
    const std::uint64_t off = leaf_for(key, nullptr);
    if (off == 0) return end();
    const auto* l = this->template read<leaf>(off);
    return {this, cursor{.off = off, .slot = position(*l, key), .node = l}};
  }
  /// The first entry whose key is greater than `key`.
  const_iterator upper_bound(const K& key) const {
    const_iterator it = lower_bound(key);
    if (it != end() && !less(key, it->first)) ++it;
    return it;
  }
  const_iterator find(const K& key) const {
    const_iterator it = lower_bound(key);
    return it != end() && !less(key, it->first) ? it : end();
  }

  /// Walks the whole tree and checks its invariants: keys in order within and across
  /// nodes, every leaf at the same depth, the leaf chain in key order and complete,
  /// counts within bounds. Throws `ftm::bad_pool` naming the first broken one.
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
    const K* prev = nullptr;
    for (const auto& e : *this) {
      if (prev != nullptr && !less(*prev, e.first)) fail("the leaf chain is out of key order");
      prev = &e.first;
    }
  }

 protected:
  using view::fail;
  using view::map_;
  using view::tx;

  opened_map_base(transaction<E>& t, stable<map_type> ref) : view(t, ref) {}
  ~opened_map_base() = default;

  static bool less(const K& a, const K& b) { return Compare{}(a, b); }

  static std::uint64_t& root_of(map_type& m) noexcept { return m.root_; }
  static std::uint64_t& height_of(map_type& m) noexcept { return m.height_; }

  /// The child of `n` whose range holds `key`: the number of separators <= key.
  static std::size_t child_index(const inner& n, const K& key) {
    return static_cast<std::size_t>(
        std::upper_bound(n.key, n.key + n.count, key,
                         [](const K& a, const K& b) { return less(a, b); }) -
        n.key);
  }
  /// The first slot of `l` whose key is not less than `key`.
  static std::uint64_t position(const leaf& l, const K& key) {
    return static_cast<std::uint64_t>(
        std::lower_bound(l.entry, l.entry + l.count, key,
                         [](const map_entry<K, V>& e, const K& k) { return less(e.first, k); }) -
        l.entry);
  }

  /// The leaf whose range holds `key` (0 if the map is empty); with `path`, the inner
  /// nodes on the way down, root first.
  std::uint64_t leaf_for(const K& key, std::vector<std::uint64_t>* path) const {
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

  void verify_node(std::uint64_t off, std::uint64_t height, std::optional<K> lo,
                   std::optional<K> hi, std::vector<std::uint64_t>& leaves) const {
    auto in_range = [&](const K& k) { return (!lo || !less(k, *lo)) && (!hi || less(k, *hi)); };
    if (height == 1) {
      const auto* l = this->template read<leaf>(off);
      if (l->count > leaf_entries<K, V>) fail(fmt::format("a leaf holds {} entries", l->count));
      for (std::uint64_t i = 0; i < l->count; ++i) {
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
      if (!in_range(n->key[i])) fail("an inner node holds a key outside its parent's range");
      if (i > 0 && !less(n->key[i - 1], n->key[i])) fail("an inner node's keys are out of order");
    }
    for (std::uint64_t i = 0; i <= n->count; ++i) {
      if (n->child[i] == 0) fail("an inner node lacks a child");
      verify_node(n->child[i], height - 1, i == 0 ? lo : std::optional<K>(n->key[i - 1]),
                  i == n->count ? hi : std::optional<K>(n->key[i]), leaves);
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
  using leaf = detail::tree_leaf<K, V>;
  using inner = detail::tree_inner<K>;
  static constexpr std::size_t leaf_max = detail::leaf_entries<K, V>;

 public:
  using size_type = std::uint64_t;

  opened_map(detail::from_offset_t, transaction<E>& tx, stable<map_type> ref) : base(tx, ref) {}

  /// Sets the value of `key`, inserting it if it is new; true if it was inserted.
  bool insert_or_assign(const K& key, const V& value) { return put(key, value, true); }
  /// Inserts `key` with `value` if it is not there; true if it was inserted.
  bool insert(const K& key, const V& value) { return put(key, value, false); }

  /// The value of `key` for writing, inserted value-initialised if it is new.
  V& operator[](const K& key) {
    if (!this->contains(key)) put(key, V{}, false);
    const std::uint64_t off = this->leaf_for(key, nullptr);
    auto* l = detail::write_node<leaf>(this->tx(), off);
    return l->entry[base::position(*l, key)].second;
  }

  /// Removes `key`; the number of entries removed (0 or 1). Locks its leaf only.
  size_type erase(const K& key) {
    const std::uint64_t off = this->leaf_for(key, nullptr);
    if (off == 0) return 0;
    const auto* r = this->template read<leaf>(off);
    const std::uint64_t i = base::position(*r, key);
    if (i == r->count || base::less(key, r->entry[i].first)) return 0;
    auto* l = detail::write_node<leaf>(this->tx(), off);
    std::copy(l->entry + i + 1, l->entry + l->count, l->entry + i);
    --l->count;
    return 1;
  }

 private:
  bool put(const K& key, const V& value, bool assign) {
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
    const std::uint64_t i = base::position(*r, key);
    if (i < r->count && !base::less(key, r->entry[i].first)) {
      if (assign) detail::write_node<leaf>(tx, off)->entry[i].second = value;
      return false;
    }
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
      const K separator = right->entry[0].first;
      insert_into_leaf(base::less(key, separator) ? *l : *right, key, value);
      insert_up(path, separator, right_off, off);
    } else {
      insert_into_leaf(*l, key, value);
    }
    return true;
  }

  static void insert_into_leaf(leaf& l, const K& key, const V& value) {
    const std::uint64_t i = base::position(l, key);
    std::copy_backward(l.entry + i, l.entry + l.count, l.entry + l.count + 1);
    l.entry[i] = {key, value};
    ++l.count;
  }

  /// Adds `separator` and its right child `right` to the parent of `left`, the last
  /// node of `path`, splitting parents as they fill; a new root when the root splits.
  void insert_up(std::vector<std::uint64_t>& path, K separator, std::uint64_t right,
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
      const K up = n->key[mid];
      sib->count = n->count - mid - 1;
      std::copy(n->key + mid + 1, n->key + n->count, sib->key);
      std::copy(n->child + mid + 1, n->child + n->count + 1, sib->child);
      n->count = mid;
      insert_into_inner(base::less(separator, up) ? *n : *sib, separator, right);
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

  static void insert_into_inner(inner& n, const K& separator, std::uint64_t right) {
    const std::size_t i = base::child_index(n, separator);
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
