#ifndef FTM_STABLE_HASH_MAP_HPP
#define FTM_STABLE_HASH_MAP_HPP

/// \file
/// `stable_hash_map<K, V>`: an unordered map of stable keys and values in a pool, in
/// 256 segments that each grow by linear hashing (one bucket split per insert), so
/// that transactions on different keys lock different objects and no rehash ever
/// locks the whole map.

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

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ftm::FTM_ABI_NAMESPACE {

/// The hash a `stable_hash_map` uses by default: the same in every process and run
/// (a pool outlives them), which `std::hash` does not promise. Integers and enums are
/// mixed; other keys are hashed by their bytes, which needs a type whose equal values
/// have equal bytes (`std::has_unique_object_representations_v`: no padding, no
/// floating point). Give the map another hash for other keys.
template <class K>
struct stable_hash {
  std::uint64_t operator()(const K& key) const noexcept {
    if constexpr (std::is_integral_v<K> || std::is_enum_v<K>) {
      return detail::mix64(static_cast<std::uint64_t>(key));
    } else {
      static_assert(std::has_unique_object_representations_v<K>,
                    "ftm::stable_hash<K> hashes a key by its bytes, which requires equal keys "
                    "to have equal bytes (no padding, no floating-point members); give "
                    "ftm::stable_hash_map a hash of your own as its third argument");
      std::uint64_t h = 0xcbf29ce484222325ULL;
      const auto* p = reinterpret_cast<const unsigned char*>(&key);
      for (std::size_t i = 0; i < sizeof(K); ++i) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
      }
      return detail::mix64(h);
    }
  }
};

/// The hash of a `stable_string` key: FNV-1a over its bytes, mixed; the same in every
/// process and run. A map stores it beside the key, so a split never reads a key.
template <>
struct stable_hash<stable_string> {
  std::uint64_t operator()(std::string_view s) const noexcept {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (const char c : s)
      h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    return detail::mix64(h);
  }
};

namespace detail {

/// Segments of every hash map: the low 8 bits of a hash choose one.
inline constexpr std::size_t hash_segments = 256;
/// Bucket heads per bucket page (512 bytes: a small map stays small).
inline constexpr std::size_t bucket_page_slots = 64;
/// Bucket pages per segment: at most 8,192 buckets each, 2 million in all, so chains
/// stay short up to about 6 million entries.
inline constexpr std::size_t segment_pages = 128;
/// Buckets of a new segment (a power of two): one, so that a small map stays small
/// (256 segments already spread it) and splits begin early.
inline constexpr std::uint64_t initial_buckets = 1;
/// Entries per chain node: 4, so that an update, whose commit copies the node it wrote
/// between the banks, copies 8 cache lines of 100-byte values rather than 15 (with 8;
/// docs/benchmarks.md, "Reading parts of nodes").
inline constexpr std::size_t hash_node_entries = 4;
/// A segment splits a bucket when it holds more entries than this per bucket: most
/// chains are then one node.
inline constexpr std::uint64_t max_load = 3;

/// The segments' offsets, 0 for a segment not made yet.
struct segment_table {
  std::uint64_t segment[hash_segments];
};

/// One segment: a linear-hashing table. Its buckets are `(initial_buckets << level)
/// + split`; bucket `split` is the next to split in two. Its object is the lock of
/// the segment's shape and count: inserts and erases write it, lookups and updates of
/// values only read it.
struct hash_segment {
  std::uint64_t count;
  std::uint64_t level;
  std::uint64_t split;
  std::uint64_t page[segment_pages];
};

struct bucket_page {
  std::uint64_t head[bucket_page_slots];
};

/// The tag of a hash: its top byte (the low bits choose the segment and the bucket).
constexpr std::uint8_t hash_tag(std::uint64_t hash) noexcept {
  return static_cast<std::uint8_t>(hash >> 56);
}

/// The first bytes of a chain node, what a lookup reads of it before any entry: with
/// the object's header, one cache line.
struct hash_node_head {
  std::uint64_t next;
  std::uint64_t count;
  /// Each entry's `hash_tag`: a lookup compares only the keys whose tag is its key's.
  std::uint8_t tag[hash_node_entries];
};

/// A chain node: `hash_node_head`'s fields, then the entries. (Nodes made before the
/// tags are shorter: every opening of a node checks its size, so a map of a pool made
/// then is refused with `ftm::usage_error`, never misread.)
template <class K, class V>
struct hash_node {
  std::uint64_t next;
  std::uint64_t count;
  std::uint8_t tag[hash_node_entries];
  map_entry<K, V> entry[hash_node_entries];

  /// Where `entry` begins: after the head, at the entries' alignment.
  static constexpr std::size_t entries_at =
      (sizeof(hash_node_head) + alignof(map_entry<K, V>) - 1) / alignof(map_entry<K, V>) *
      alignof(map_entry<K, V>);
};

/// Whether `N` (a `hash_node`) is laid out as `hash_node_head` and `entries_at` say.
template <class N>
constexpr bool hash_node_as_declared() {
  if constexpr (std::is_standard_layout_v<N>) {
    return offsetof(N, count) == offsetof(hash_node_head, count) &&
           offsetof(N, tag) == offsetof(hash_node_head, tag) && offsetof(N, entry) == N::entries_at;
  } else {
    return sizeof(N) >= N::entries_at + sizeof(N::entry) &&
           sizeof(N) < N::entries_at + sizeof(N::entry) + alignof(N);
  }
}

template <class K, class V, class Hash, engine E, bool Writable>
class opened_hash_map_base;

}  // namespace detail

/// An unordered map from `K` to `V` (stable types) in a pool: a stable object like any
/// other (`tx.create<ftm::stable_hash_map<K, V>>()`, a root, or a handle held in
/// another object), empty when value-initialised, as large as the pool allows.
///
/// Its entries live in 256 segments chosen by the hash; each segment is a linear-hashing
/// table of buckets holding chains of 4-entry nodes. A lookup reads the path to its key
/// without locks (validated at commit); `insert_or_assign` locks the nodes of its key's chain up to
/// the key's (opened once, for writing; a chain is mostly one node); an insert or erase also locks
/// its segment, and splits at most one bucket of it. So transactions on keys of different segments
/// never conflict, updates of values never conflict with each other unless they share a chain, and
/// no operation locks the whole map.
///
/// Open it in a transaction with `ftm::open(tx, ref)` (to change it) or
/// `ftm::open_read(tx, ref)`. `K` or `V` may be `stable_string`: the map then owns
/// the strings (an insert makes them, an overwrite or erase frees them), takes and
/// looks them up as `std::string_view`, and its iterators give them as
/// `ftm::string_ref`s; an entry keeps a key's hash and first 16 bytes, so a lookup
/// reads a key's chunks only when hash, length and prefix all match.
template <class K, class V, class Hash = stable_hash<K>>
class stable_hash_map {
  static_assert(detail::check_stable_type<K>());
  static_assert(detail::check_stable_type<V>());

 public:
  using key_type = K;
  using mapped_type = V;
  using value_type = detail::map_entry<K, V>;
  using hasher = Hash;

 private:
  std::uint64_t table_ = 0;  // the segment table, 0 until the first insert
  template <class, class, class, engine, bool>
  friend class detail::opened_hash_map_base;
};

namespace detail {
template <class K, class V, class Hash>
inline constexpr bool is_stable_container<stable_hash_map<K, V, Hash>> = true;
}  // namespace detail

namespace detail {

/// Where a key is, or would be: its segment and bucket, and its node and slot if found.
struct hash_position {
  std::uint64_t segment_off = 0;  // 0: no segment yet
  std::uint64_t hash = 0;
  std::size_t segment = 0;
  std::uint64_t bucket = 0;
  std::uint64_t node = 0;       // 0: not found
  const void* found = nullptr;  // the entry at `slot`, as `locate` opened it
  std::uint64_t seen = 0;       // how `locate` read node `node` (`read_node_part`'s record)
  std::size_t slot = 0;
  std::uint64_t prev = 0;       // the node before `node` in its chain, 0 if it is the head
  std::uint64_t with_room = 0;  // a node of the chain with a free slot, 0 if none
};

template <class K, class V, class Hash>
struct map_names<stable_hash_map<K, V, Hash>> {
  static constexpr const char* container = "stable_hash_map";
  static constexpr const char* view = "ftm::opened_hash_map";
};

template <class K, class V, class Hash, engine E, bool Writable>
class opened_hash_map_base : public map_view<opened_hash_map_base<K, V, Hash, E, Writable>,
                                             stable_hash_map<K, V, Hash>, E, Writable> {
  using map_type = stable_hash_map<K, V, Hash>;
  using view = map_view<opened_hash_map_base, map_type, E, Writable>;
  using SK = slot_t<K>;
  using SV = slot_t<V>;
  using node = hash_node<SK, SV>;

  using entry_type = map_entry<SK, SV>;
  static_assert(hash_node_as_declared<node>(),
                "ftm::stable_hash_map: a node's entries are not where its head says");

  /// Where an iterator is: a node's slot, and the segment and bucket of its chain.
  struct cursor {
    std::uint64_t off = 0;
    std::uint64_t slot = 0;
    const hash_node<SK, SV>* node = nullptr;   // node `off` whole, or null
    const map_entry<SK, SV>* entry = nullptr;  // `find`'s entry, a part of node `off`
    std::uint64_t seen = 0;  // how node `off` was read: read whole later, it is one value
    std::size_t segment = hash_segments;  // the end
    std::uint64_t bucket = 0;

    const map_entry<SK, SV>& current() const {
      return node != nullptr ? node->entry[slot] : *entry;
    }

    void advance(const opened_hash_map_base& m) {
      if (node == nullptr) node = m.whole_node(off, seen);
      ++slot;
      settle(m);
    }

    /// Moves to the first entry at or after this place: along the chain, then bucket
    /// by bucket, segment by segment.
    void settle(const opened_hash_map_base& m) {
      if (off != 0) {
        if (node == nullptr && entry != nullptr) return;  // at `find`'s entry
        if (node == nullptr) node = m.whole_node(off, seen);
        if (slot < node->count) return;
        slot = 0;
        off = node->next;
        seen = 0;
        bucket += off == 0 ? 1 : 0;
      }
      while (off == 0) {
        if (segment >= hash_segments) {  // the end
          node = nullptr;
          return;
        }
        const std::uint64_t seg = m.segment_offset(segment);
        std::uint64_t seg_seen = 0;
        if (seg == 0 || bucket >= buckets(m.shape_of(seg, seg_seen))) {
          ++segment;
          bucket = 0;
          continue;
        }
        off = m.head(seg, bucket, seg_seen);
        if (off == 0) ++bucket;
      }
      node = m.whole_node(off, seen);
    }
  };

 public:
  using typename view::key_arg;
  using typename view::size_type;
  using view::holds_strings;
  /// A forward iterator over the entries, segment by segment, bucket by bucket: a
  /// `const map_entry<K, V>&`, or with strings a `map_entry` of `string_ref`s by value.
  using const_iterator =
      map_iterator<opened_hash_map_base, cursor,
                   std::conditional_t<holds_strings, typename view::out_entry, map_entry<K, V>>,
                   holds_strings>;
  using iterator = const_iterator;

  /// The number of entries: reads every segment's count (257 reads, no locks).
  [[nodiscard]] size_type size() const {
    const segment_table* t = table();
    if (t == nullptr) return 0;
    size_type n = 0;
    for (const std::uint64_t seg : t->segment) {
      std::uint64_t seen = 0;
      if (seg != 0) n += read_node_field<std::uint64_t, hash_segment>(tx(), seg, 0, seen);
    }
    return n;
  }

  const_iterator begin() const { return {this, cursor{.segment = 0}}; }
  const_iterator end() const { return {}; }

  const_iterator find(key_arg key) const {
    const hash_position p = locate(key);
    if (p.node == 0) return end();
    // The cursor starts from the entry `locate` read; moving on reads its node whole.
    return {this, cursor{.off = p.node,
                         .slot = p.slot,
                         .entry = static_cast<const entry_type*>(p.found),
                         .seen = p.seen,
                         .segment = p.segment,
                         .bucket = p.bucket}};
  }
  /// Whether `key` is there (without reading its node again, as `find` would).
  [[nodiscard]] bool contains(key_arg key) const { return locate(key).node != 0; }

  /// Walks every segment, bucket and node and checks the map's invariants: each
  /// segment's count, node counts, every key in the bucket its hash names, no key
  /// twice; with strings, each owned string's chunks, prefix and (for keys) stored
  /// hash. Throws `ftm::bad_pool` naming the first broken one.
  void verify() const {
    for (std::size_t s = 0; s < hash_segments; ++s) {
      const hash_segment* seg = segment_at(s);
      if (seg == nullptr) continue;
      const std::uint64_t nb = buckets(*seg);
      if (seg->split >= (initial_buckets << seg->level) || nb > segment_pages * bucket_page_slots) {
        fail(fmt::format("segment {}: level {} and split {} do not describe a table", s, seg->level,
                         seg->split));
      }
      std::uint64_t seen = 0;
      for (std::uint64_t b = 0; b < nb; ++b) {
        std::vector<SK> keys;
        std::uint64_t nodes = 0;
        for (std::uint64_t off = head(*seg, b); off != 0;
             off = this->template read<node>(off)->next) {
          const auto* n = this->template read<node>(off);
          if (++nodes > seg->count + 1) fail(fmt::format("segment {}, bucket {}: a cycle", s, b));
          if (n->count == 0 || n->count > hash_node_entries) {
            fail(fmt::format("segment {}, bucket {}: a node holds {} entries", s, b, n->count));
          }
          for (std::size_t i = 0; i < n->count; ++i) {
            verify_strings(n->entry[i]);
            const std::uint64_t h = stored_hash(n->entry[i].first);
            if (n->tag[i] != hash_tag(h)) {
              fail(fmt::format("segment {}, bucket {}: an entry's tag is not its key's", s, b));
            }
            if (h % hash_segments != s || bucket_of(*seg, h) != b) {
              fail(fmt::format("segment {}, bucket {}: a key hashes to segment {}, bucket {}", s, b,
                               h % hash_segments, bucket_of(*seg, h)));
            }
            for (const SK& k : keys) {
              if (stored_equal(k, n->entry[i].first)) {
                fail(fmt::format("segment {}, bucket {}: a key twice", s, b));
              }
            }
            keys.push_back(n->entry[i].first);
            ++seen;
          }
        }
      }
      if (seen != seg->count) {
        fail(fmt::format("segment {}: counts {} entries, holds {}", s, seg->count, seen));
      }
    }
  }

 protected:
  using view::fail;
  using view::map_;
  using view::tx;

  opened_hash_map_base(transaction<E>& t, stable<map_type> ref) : view(t, ref) {}
  ~opened_hash_map_base() = default;

  static std::uint64_t hash_of(key_arg key) { return Hash{}(key); }
  /// The hash of a stored key: a string's is stored beside it.
  static std::uint64_t stored_hash(const SK& key) {
    if constexpr (is_map_string<K>) {
      return key.hash;
    } else {
      return Hash{}(key);
    }
  }
  /// Whether the stored key `a` is `key`, whose hash is `hash`.
  bool matches(const SK& a, key_arg key, std::uint64_t hash) const {
    if constexpr (is_map_string<K>) {
      return slot_equals(tx(), a, key, hash);
    } else {
      return keys_equal(a, key);
    }
  }
  bool stored_equal(const SK& a, const SK& b) const {
    if constexpr (is_map_string<K>) {
      return a.hash == b.hash && a.rep.size == b.rep.size && compare_slots(tx(), a, b) == 0;
    } else {
      return keys_equal(a, b);
    }
  }
  /// `verify()`'s check of the strings an entry owns.
  void verify_strings(const map_entry<SK, SV>& e) const {
    if constexpr (is_map_string<K>) {
      const std::string text = checked_slot_text(tx(), e.first, "a key", &fail);
      if (hash_of(text) != e.first.hash) fail("a key's stored hash is not its text's");
    }
    if constexpr (is_map_string<V>) checked_slot_text(tx(), e.second, "a value", &fail);
  }
  static std::uint64_t& table_of(map_type& m) noexcept { return m.table_; }

  /// What `bucket_of` needs of a segment, read as a part of it.
  struct shape {
    std::uint64_t level;
    std::uint64_t split;
  };
  static_assert(offsetof(hash_segment, split) == offsetof(hash_segment, level) + 8);

  /// `S`: a `hash_segment` or its `shape`.
  template <class S>
  static std::uint64_t buckets(const S& s) noexcept {
    return (initial_buckets << s.level) + s.split;
  }
  template <class S>
  static std::uint64_t bucket_of(const S& s, std::uint64_t hash) noexcept {
    const std::uint64_t h = hash / hash_segments;
    const std::uint64_t low = initial_buckets << s.level;
    const std::uint64_t b = h & (low - 1);
    return b < s.split ? h & (2 * low - 1) : b;
  }

  /// The segment table, or null before the first insert.
  const segment_table* table() const {
    if (map_->table_ == 0) return nullptr;
    return this->template read<segment_table>(map_->table_);
  }
  /// The offset of segment `s`, 0 if it is not made yet: 8 bytes of the table.
  std::uint64_t segment_offset(std::size_t s) const {
    if (map_->table_ == 0) return 0;
    std::uint64_t seen = 0;
    return read_node_field<std::uint64_t, segment_table>(tx(), map_->table_, 8 * s, seen);
  }
  /// The shape of the segment at `off`, read with `seen`.
  shape shape_of(std::uint64_t off, std::uint64_t& seen) const {
    return read_node_field<shape, hash_segment>(tx(), off, offsetof(hash_segment, level), seen);
  }
  /// The node at `off` whole, read with `seen` (after parts of it, of their value).
  const node* whole_node(std::uint64_t off, std::uint64_t& seen) const {
    return reinterpret_cast<const node*>(read_node_part<node>(tx(), off, 0, sizeof(node), seen));
  }
  const hash_segment* segment_at(std::size_t s) const {
    const std::uint64_t off = segment_offset(s);
    return off == 0 ? nullptr : this->template read<hash_segment>(off);
  }
  /// The head of `bucket`'s chain: a slot of its bucket page.
  std::uint64_t head_in(std::uint64_t page, std::uint64_t bucket) const {
    if (page == 0) return 0;
    std::uint64_t seen = 0;
    return read_node_field<std::uint64_t, bucket_page>(tx(), page, 8 * (bucket % bucket_page_slots),
                                                       seen);
  }
  std::uint64_t head(const hash_segment& s, std::uint64_t bucket) const {
    return head_in(s.page[bucket / bucket_page_slots], bucket);
  }
  /// The same, of the segment at `off`, whose page slot is read with `seen`.
  std::uint64_t head(std::uint64_t off, std::uint64_t bucket, std::uint64_t& seen) const {
    return head_in(
        read_node_field<std::uint64_t, hash_segment>(
            tx(), off, offsetof(hash_segment, page) + 8 * (bucket / bucket_page_slots), seen),
        bucket);
  }

  /// Finds `key`, reading its path without locks, in parts: 8 bytes of the segment
  /// table, the segment's shape and one page slot, one bucket slot, then per node its
  /// head (count, next, tags) and only the entries whose tag is the key's.
  /// With `for_write`, opens the chain's nodes for writing as it goes (an update then
  /// opens the key's node once, not once to read and again to write).
  hash_position locate(key_arg key, bool for_write = false) const {
    hash_position p;
    p.hash = hash_of(key);
    p.segment = p.hash % hash_segments;
    p.segment_off = segment_offset(p.segment);
    if (p.segment_off == 0) return p;
    std::uint64_t seg_seen = 0;
    p.bucket = bucket_of(shape_of(p.segment_off, seg_seen), p.hash);
    const std::uint8_t tag = hash_tag(p.hash);
    std::uint64_t prev = 0;
    for (std::uint64_t off = head(p.segment_off, p.bucket, seg_seen); off != 0;) {
      std::uint64_t next = 0;
      std::uint64_t count = 0;
      if (for_write) {
        node* n = write_node<node>(tx(), off);
        count = n->count;
        for (std::size_t i = 0; i < count && i < hash_node_entries; ++i) {
          if (n->tag[i] == tag && matches(n->entry[i].first, key, p.hash)) {
            p.found = &n->entry[i];
            return hit(p, off, i, prev, 0);
          }
        }
        next = n->next;
      } else {
        std::uint64_t seen = 0;
        const auto* h = reinterpret_cast<const hash_node_head*>(
            read_node_part<node>(tx(), off, 0, sizeof(hash_node_head), seen));
        count = h->count;
        next = h->next;
        for (std::size_t i = 0; i < count && i < hash_node_entries; ++i) {
          if (h->tag[i] != tag) continue;
          const auto* e = reinterpret_cast<const entry_type*>(read_node_part<node>(
              tx(), off, node::entries_at + i * sizeof(entry_type), sizeof(entry_type), seen));
          if (matches(e->first, key, p.hash)) {
            p.found = e;
            return hit(p, off, i, prev, seen);
          }
        }
      }
      if (count < hash_node_entries && p.with_room == 0) p.with_room = off;
      prev = off;
      off = next;
    }
    return p;
  }

 private:
  static hash_position hit(hash_position& p, std::uint64_t off, std::size_t slot,
                           std::uint64_t prev, std::uint64_t seen) {
    p.node = off;
    p.slot = slot;
    p.prev = prev;
    p.seen = seen;
    return p;
  }
};

}  // namespace detail

/// The view of a `stable_hash_map` that `ftm::open_read` (`Writable` false) or
/// `ftm::open` gives: bound to its transaction, neither copied nor moved. Iterators and
/// references are valid until the transaction ends; a read view is a forward range of
/// `map_entry<K, V>` (members `first`, `second`), for the standard algorithms. This is
/// the read view: it takes no locks.
template <class K, class V, class Hash, engine E, bool Writable = false>
class opened_hash_map : public detail::opened_hash_map_base<K, V, Hash, E, false> {
  static_assert(!Writable);
  using base = detail::opened_hash_map_base<K, V, Hash, E, false>;

 public:
  opened_hash_map(detail::from_offset_t, transaction<E>& tx,
                  stable<stable_hash_map<K, V, Hash>> ref)
      : base(tx, ref) {}
};

/// The write view (`ftm::open`). Opening it only reads the map's own
/// object (it locks it the first time, to make its segment table): each change
/// locks what it touches.
template <class K, class V, class Hash, engine E>
class opened_hash_map<K, V, Hash, E, true>
    : public detail::opened_hash_map_base<K, V, Hash, E, true> {
  using base = detail::opened_hash_map_base<K, V, Hash, E, true>;
  using map_type = stable_hash_map<K, V, Hash>;
  using SK = detail::slot_t<K>;
  using SV = detail::slot_t<V>;
  using node = detail::hash_node<SK, SV>;
  using value_arg = detail::arg_t<V>;

 public:
  using size_type = std::uint64_t;
  using typename base::key_arg;

  opened_hash_map(detail::from_offset_t, transaction<E>& tx, stable<map_type> ref)
      : base(tx, ref) {}

  /// Sets the value of `key`, inserting it if it is new; true if it was inserted. A
  /// string value replaced is freed, in this transaction.
  bool insert_or_assign(key_arg key, value_arg value) {
    const detail::hash_position p = this->locate(key, true);
    if (p.node != 0) {
      // Opened for writing by `locate`.
      SV& slot = const_cast<detail::map_entry<SK, SV>*>(
                     static_cast<const detail::map_entry<SK, SV>*>(p.found))
                     ->second;
      this->template release<V>(slot);
      slot = this->template store<V>(value);
      return false;
    }
    add(p, key, value);
    return true;
  }

  /// Inserts `key` with `value` if it is not there; true if it was inserted.
  bool insert(key_arg key, value_arg value) {
    const detail::hash_position p = this->locate(key);
    if (p.node != 0) return false;
    add(p, key, value);
    return true;
  }

  /// The value of `key` for writing, inserted value-initialised if it is new (not for
  /// a string value: use `insert_or_assign`).
  V& operator[](key_arg key) requires(!detail::is_map_string<V>) {
    detail::hash_position p = this->locate(key);
    if (p.node == 0) p = add(p, key, V{});
    return detail::write_node<node>(this->tx(), p.node)->entry[p.slot].second;
  }

  /// Removes `key`; the number of entries removed (0 or 1). Strings it owned are
  /// freed, in this transaction.
  size_type erase(key_arg key) {
    const detail::hash_position p = this->locate(key);
    if (p.node == 0) return 0;
    transaction<E>& tx = this->tx();
    auto* seg = detail::write_node<detail::hash_segment>(tx, p.segment_off);
    --seg->count;
    auto* n = detail::write_node<node>(tx, p.node);
    this->template release<K>(n->entry[p.slot].first);
    this->template release<V>(n->entry[p.slot].second);
    n->entry[p.slot] = n->entry[n->count - 1];
    n->tag[p.slot] = n->tag[n->count - 1];
    if (--n->count == 0) {  // unlink the empty node
      if (p.prev == 0) {
        head_slot(*seg, p.bucket) = n->next;
      } else {
        detail::write_node<node>(tx, p.prev)->next = n->next;
      }
      detail::free_node<node>(tx, p.node);
    }
    return 1;
  }

  /// Makes every segment now, so that later inserts into different segments never
  /// meet on the segment table (the first insert into a segment otherwise writes it).
  void reserve_segments() {
    for (std::size_t s = 0; s < detail::hash_segments; ++s)
      segment_for_insert(s);
  }

 private:
  /// The map's segment table, made by the first insert.
  std::uint64_t table_for_insert() {
    if (base::table_of(*this->map_) != 0) return base::table_of(*this->map_);
    auto* m = detail::write_node<map_type>(this->tx(), this->ref_.offset());
    this->map_ = m;
    std::uint64_t& table = base::table_of(*m);
    if (table == 0) table = detail::new_node<detail::segment_table>(this->tx());
    return table;
  }

  std::uint64_t segment_for_insert(std::size_t s) {
    const std::uint64_t table = table_for_insert();
    if (const std::uint64_t off = this->template read<detail::segment_table>(table)->segment[s];
        off != 0) {
      return off;
    }
    const std::uint64_t off = detail::new_node<detail::hash_segment>(this->tx());
    detail::write_node<detail::segment_table>(this->tx(), table)->segment[s] = off;
    return off;
  }

  /// The head of `bucket` for writing (its page made if need be).
  std::uint64_t& head_slot(detail::hash_segment& seg, std::uint64_t bucket) {
    std::uint64_t& page = seg.page[bucket / detail::bucket_page_slots];
    if (page == 0) page = detail::new_node<detail::bucket_page>(this->tx());
    return detail::write_node<detail::bucket_page>(this->tx(), page)
        ->head[bucket % detail::bucket_page_slots];
  }

  /// Adds a key that `p` (from `locate`) did not find; where it went.
  detail::hash_position add(detail::hash_position p, key_arg key, value_arg value) {
    transaction<E>& tx = this->tx();
    const detail::map_entry<SK, SV> entry{this->template store<K>(key, p.hash),
                                          this->template store<V>(value)};
    if (p.segment_off == 0) {
      p.segment_off = segment_for_insert(p.segment);
      p.bucket = this->bucket_of(*this->template read<detail::hash_segment>(p.segment_off), p.hash);
    }
    auto* seg = detail::write_node<detail::hash_segment>(tx, p.segment_off);
    if (p.with_room != 0) {
      auto* n = detail::write_node<node>(tx, p.with_room);
      p.node = p.with_room;
      p.slot = n->count;
      n->tag[n->count] = detail::hash_tag(p.hash);
      n->entry[n->count++] = entry;
    } else {
      std::uint64_t& head = head_slot(*seg, p.bucket);
      const std::uint64_t off = detail::new_node<node>(tx);
      auto* n = detail::write_node<node>(tx, off);
      n->next = head;
      n->count = 1;
      n->tag[0] = detail::hash_tag(p.hash);
      n->entry[0] = entry;
      head = off;
      p.node = off;
      p.slot = 0;
    }
    ++seg->count;
    if (seg->count > detail::max_load * base::buckets(*seg) &&
        base::buckets(*seg) < detail::segment_pages * detail::bucket_page_slots) {
      split(*seg, p);
    }
    return p;
  }

  /// Splits bucket `seg.split` in two (linear hashing): its entries whose hash names
  /// the new bucket move there. Touches that bucket's chain only. Keeps `p` (the entry
  /// just added) pointing at its entry.
  void split(detail::hash_segment& seg, detail::hash_position& p) {
    transaction<E>& tx = this->tx();
    const std::uint64_t low = detail::initial_buckets << seg.level;
    const std::uint64_t from = seg.split;
    const std::uint64_t to = from + low;
    std::vector<detail::map_entry<SK, SV>> stay;
    std::vector<detail::map_entry<SK, SV>> move;
    std::vector<std::uint64_t> nodes;
    bool tracked_moves = false;
    std::size_t tracked_index = 0;
    for (std::uint64_t off = this->head(seg, from); off != 0;) {
      const auto* n = this->template read<node>(off);
      nodes.push_back(off);
      for (std::size_t i = 0; i < n->count; ++i) {
        const auto& e = n->entry[i];
        const bool moves =
            ((this->stored_hash(e.first) / detail::hash_segments) & (2 * low - 1)) == to;
        auto& list = moves ? move : stay;
        if (off == p.node && i == p.slot) {
          tracked_moves = moves;
          tracked_index = list.size();
        }
        list.push_back(e);
      }
      off = n->next;
    }
    const bool tracked = p.bucket == from;
    std::size_t next_node = 0;
    // Fills a chain with `entries`, reusing the old nodes first; its head.
    auto build = [&](const std::vector<detail::map_entry<SK, SV>>& entries, bool holds_tracked) {
      std::uint64_t head = 0;
      std::uint64_t* link = &head;
      for (std::size_t i = 0; i < entries.size(); i += detail::hash_node_entries) {
        const std::uint64_t off =
            next_node < nodes.size() ? nodes[next_node++] : detail::new_node<node>(tx);
        auto* n = detail::write_node<node>(tx, off);
        n->count = std::min(detail::hash_node_entries, entries.size() - i);
        std::memcpy(static_cast<void*>(n->entry), &entries[i], n->count * sizeof(entries[i]));
        for (std::size_t j = 0; j < n->count; ++j)
          n->tag[j] = detail::hash_tag(this->stored_hash(entries[i + j].first));
        n->next = 0;
        *link = off;
        link = &n->next;
        if (holds_tracked && tracked_index >= i && tracked_index < i + n->count) {
          p.node = off;
          p.slot = tracked_index - i;
        }
      }
      return head;
    };
    const std::uint64_t stay_head = build(stay, tracked && !tracked_moves);
    const std::uint64_t move_head = build(move, tracked && tracked_moves);
    for (; next_node < nodes.size(); ++next_node)
      detail::free_node<node>(tx, nodes[next_node]);
    head_slot(seg, from) = stay_head;
    head_slot(seg, to) = move_head;
    if (tracked && tracked_moves) p.bucket = to;
    if (++seg.split == low) {
      seg.split = 0;
      ++seg.level;
    }
  }
};

/// Opens a hash map in `tx` to change it.
template <class K, class V, class Hash, engine E>
opened_hash_map<K, V, Hash, E, true> open(transaction<E>& tx,
                                          stable<stable_hash_map<K, V, Hash>> ref) {
  return {detail::from_offset, tx, ref};
}

/// Opens a hash map in `tx` to read it: no locks.
template <class K, class V, class Hash, engine E>
opened_hash_map<K, V, Hash, E, false> open_read(transaction<E>& tx,
                                                stable<stable_hash_map<K, V, Hash>> ref) {
  return {detail::from_offset, tx, ref};
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_STABLE_HASH_MAP_HPP
