#ifndef FTM_STABLE_VECTOR_HPP
#define FTM_STABLE_VECTOR_HPP

/// \file
/// `stable_vector<T>`: a sequence of stable values of any length in a pool, stored in
/// chunks of 4 KiB, opened in a transaction with `ftm::open` or `ftm::open_read`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE {

namespace detail {

/// Bytes of elements in one chunk: small enough that a write copies little, large
/// enough that 1 MiB takes 256 chunks (a transaction's locks stay few).
inline constexpr std::size_t chunk_bytes = 4096;
/// Slots of a directory node (4 KiB of offsets).
inline constexpr std::size_t dir_slots = 512;
/// Two levels of directory: the largest sequence has this many chunks.
inline constexpr std::uint64_t max_chunks = std::uint64_t{dir_slots} * dir_slots;

template <class T>
inline constexpr std::size_t chunk_items = sizeof(T) >= chunk_bytes ? 1 : chunk_bytes / sizeof(T);

/// A directory node: offsets of chunks (a leaf) or of leaves (the top), 0 if none.
struct vector_dir {
  std::uint64_t slot[dir_slots];
};

template <class T>
struct vector_chunk {
  T item[chunk_items<T>];
};

/// What a stable sequence holds in its own object: its length and its top directory.
/// The object is the sequence's one lock for its length; its elements lock by chunk.
struct sequence_rep {
  std::uint64_t size;
  std::uint64_t top;
};

/// The operations of a sequence of `T` whose representation `rep` a transaction opened
/// (for writing when `Writable`). Keeps the chunk last reached, so a scan opens each
/// chunk once.
template <class T, engine E, bool Writable>
class sequence_core {
  using rep_ptr = std::conditional_t<Writable, sequence_rep*, const sequence_rep*>;

 public:
  static constexpr std::uint64_t per_chunk = chunk_items<T>;

  sequence_core(transaction<E>& tx, rep_ptr rep) noexcept : tx_(&tx), rep_(rep) {}

  [[nodiscard]] std::uint64_t size() const noexcept { return rep_->size; }
  [[nodiscard]] static constexpr std::uint64_t max_size() noexcept {
    return max_chunks * per_chunk;
  }
  [[nodiscard]] std::uint64_t chunks() const noexcept {
    return (rep_->size + per_chunk - 1) / per_chunk;
  }
  transaction<E>& tx() const noexcept { return *tx_; }

  const T& get(std::uint64_t i) const { return read_chunk(i / per_chunk)->item[i % per_chunk]; }

  T& get_mutable(std::uint64_t i) requires Writable {
    return write_chunk(i / per_chunk)->item[i % per_chunk];
  }

  /// Copies elements `[pos, pos + out.size())` to `out`.
  void read(std::uint64_t pos, std::span<T> out) const {
    std::size_t done = 0;
    while (done < out.size()) {
      const std::uint64_t i = pos + done;
      const std::size_t in_chunk =
          std::min<std::uint64_t>(per_chunk - i % per_chunk, out.size() - done);
      std::memcpy(out.data() + done, &read_chunk(i / per_chunk)->item[i % per_chunk],
                  in_chunk * sizeof(T));
      done += in_chunk;
    }
  }

  /// Copies `in` over elements `[pos, pos + in.size())`, which exist.
  void write(std::uint64_t pos, std::span<const T> in) requires Writable {
    std::size_t done = 0;
    while (done < in.size()) {
      const std::uint64_t i = pos + done;
      const std::size_t in_chunk =
          std::min<std::uint64_t>(per_chunk - i % per_chunk, in.size() - done);
      std::memcpy(&write_chunk(i / per_chunk)->item[i % per_chunk], in.data() + done,
                  in_chunk * sizeof(T));
      done += in_chunk;
    }
  }

  /// Sets the length to `n`: new elements are value-initialised, chunks past the end
  /// are freed.
  void resize(std::uint64_t n, const char* who) requires Writable {
    if (n > max_size()) {
      throw capacity_exceeded(fmt::format(
          "{}: {} elements of {} bytes exceed the largest sequence ({} elements: {} chunks "
          "of {} bytes)",
          who, n, sizeof(T), max_size(), max_chunks, chunk_bytes));
    }
    const std::uint64_t old = rep_->size;
    const std::uint64_t have = chunks();
    const std::uint64_t need = (n + per_chunk - 1) / per_chunk;
    if (n > old) {
      // The tail of the last chunk may hold elements a shrink left behind.
      const std::uint64_t tail_end = std::min(n, have * per_chunk);
      for (std::uint64_t i = old; i < tail_end; ++i)
        get_mutable(i) = T{};
      for (std::uint64_t c = have; c < need; ++c)
        set_slot(c, new_node<vector_chunk<T>>(*tx_));
    } else {
      for (std::uint64_t c = have; c-- > need;) {
        free_node<vector_chunk<T>>(*tx_, slot(c));
        set_slot(c, 0);
      }
    }
    rep_->size = n;
  }

  void push_back(const T& v, const char* who) requires Writable {
    const std::uint64_t i = rep_->size;
    resize(i + 1, who);
    get_mutable(i) = v;
  }

 private:
  /// The offset of chunk `c`'s storage (it exists).
  std::uint64_t slot(std::uint64_t c) const {
    if (top_ == nullptr || top_off_ != rep_->top) {
      top_off_ = rep_->top;
      top_ = read_node<vector_dir>(*tx_, top_off_);
    }
    const std::uint64_t leaf = top_->slot[c / dir_slots];
    return read_node<vector_dir>(*tx_, leaf)->slot[c % dir_slots];
  }

  void set_slot(std::uint64_t c, std::uint64_t off) requires Writable {
    if (rep_->top == 0) rep_->top = new_node<vector_dir>(*tx_);
    auto* top = write_node<vector_dir>(*tx_, rep_->top);
    std::uint64_t& leaf = top->slot[c / dir_slots];
    if (leaf == 0) leaf = new_node<vector_dir>(*tx_);
    auto* l = write_node<vector_dir>(*tx_, leaf);
    l->slot[c % dir_slots] = off;
    if (off == 0 && c % dir_slots == 0) {  // the leaf's first chunk: the leaf is empty now
      free_node<vector_dir>(*tx_, leaf);
      leaf = 0;
      if (c == 0) {
        free_node<vector_dir>(*tx_, rep_->top);
        rep_->top = 0;
      }
    }
    top_ = nullptr;
    read_index_ = write_index_ = no_chunk;
  }

  const vector_chunk<T>* read_chunk(std::uint64_t c) const {
    if (c != read_index_) {
      read_ = read_node<vector_chunk<T>>(*tx_, slot(c));
      read_index_ = c;
    }
    return read_;
  }

  vector_chunk<T>* write_chunk(std::uint64_t c) requires Writable {
    if (c != write_index_) {
      write_ = write_node<vector_chunk<T>>(*tx_, slot(c));
      write_index_ = c;
      read_ = write_;  // the engine may answer a write with another copy
      read_index_ = c;
    }
    return write_;
  }

  static constexpr std::uint64_t no_chunk = ~std::uint64_t{0};

  transaction<E>* tx_;
  rep_ptr rep_;
  mutable std::uint64_t top_off_ = 0;
  mutable const vector_dir* top_ = nullptr;
  mutable std::uint64_t read_index_ = no_chunk;
  mutable const vector_chunk<T>* read_ = nullptr;
  std::uint64_t write_index_ = no_chunk;
  vector_chunk<T>* write_ = nullptr;
};

/// A random-access iterator over an index-addressed container: `Owner::get(i)`.
template <class Owner, class Value>
class index_iterator {
 public:
  using iterator_concept = std::random_access_iterator_tag;
  using iterator_category = std::random_access_iterator_tag;
  using value_type = Value;
  using difference_type = std::ptrdiff_t;
  using reference = const Value&;
  using pointer = const Value*;

  index_iterator() = default;
  index_iterator(const Owner* owner, std::uint64_t i) noexcept : owner_(owner), i_(i) {}

  reference operator*() const { return owner_->get(i_); }
  pointer operator->() const { return &owner_->get(i_); }
  reference operator[](difference_type n) const { return owner_->get(i_ + n); }
  index_iterator& operator++() noexcept {
    ++i_;
    return *this;
  }
  index_iterator operator++(int) noexcept {
    auto t = *this;
    ++i_;
    return t;
  }
  index_iterator& operator--() noexcept {
    --i_;
    return *this;
  }
  index_iterator operator--(int) noexcept {
    auto t = *this;
    --i_;
    return t;
  }
  index_iterator& operator+=(difference_type n) noexcept {
    i_ += n;
    return *this;
  }
  index_iterator& operator-=(difference_type n) noexcept {
    i_ -= n;
    return *this;
  }
  friend index_iterator operator+(index_iterator a, difference_type n) noexcept { return a += n; }
  friend index_iterator operator+(difference_type n, index_iterator a) noexcept { return a += n; }
  index_iterator operator-(difference_type n) const noexcept {
    auto a = *this;
    return a -= n;
  }
  difference_type operator-(const index_iterator& b) const noexcept {
    return static_cast<difference_type>(i_) - static_cast<difference_type>(b.i_);
  }
  friend bool operator==(const index_iterator& a, const index_iterator& b) noexcept {
    return a.i_ == b.i_;
  }
  friend auto operator<=>(const index_iterator& a, const index_iterator& b) noexcept {
    return a.i_ <=> b.i_;
  }

 private:
  const Owner* owner_ = nullptr;
  std::uint64_t i_ = 0;
};

template <class T, engine E, bool Writable>
class opened_vector_base;

}  // namespace detail

/// A vector of stable values in a pool, of any length the pool has room for: a stable
/// object like any other (`tx.create<ftm::stable_vector<T>>()`, a root, or a handle
/// held in another object), empty when value-initialised. Its elements live in chunks
/// of 4 KiB under a two-level directory, so a transaction locks the vector's own object
/// (its length) and the chunks it touches, never the whole vector.
///
/// Open it in a transaction: `ftm::open(tx, ref)` to change it, `ftm::open_read(tx,
/// ref)` to read it; the view is bound to the transaction like `opened<T>`.
template <class T>
class stable_vector {
  static_assert(detail::check_stable_type<T>());

 public:
  using value_type = T;

 private:
  detail::sequence_rep rep_{};
  template <class, engine, bool>
  friend class detail::opened_vector_base;
};

namespace detail {
template <class T>
inline constexpr bool is_stable_container<stable_vector<T>> = true;
}  // namespace detail

namespace detail {

template <class T, engine E, bool Writable>
class opened_vector_base {
  using vector_ptr = std::conditional_t<Writable, stable_vector<T>*, const stable_vector<T>*>;

 public:
  using value_type = T;
  using size_type = std::uint64_t;
  using const_reference = const T&;
  using const_iterator = index_iterator<opened_vector_base, T>;
  using iterator = const_iterator;

  // clang-format off
  // Both compilers quote these lines in their "deleted" diagnostics: they carry the rule.
  opened_vector_base(const opened_vector_base&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  opened_vector_base(opened_vector_base&&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  opened_vector_base& operator=(const opened_vector_base&) = delete;  // an opened ftm container cannot be copied or moved
  opened_vector_base& operator=(opened_vector_base&&) = delete;  // an opened ftm container cannot be copied or moved
  // clang-format on

  [[nodiscard]] size_type size() const { return core().size(); }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] static constexpr size_type max_size() noexcept {
    return sequence_core<T, E, Writable>::max_size();
  }

  /// Element `i`, which must exist (unchecked, as `std::vector::operator[]`).
  const T& get(size_type i) const { return core().get(i); }
  const T& operator[](size_type i) const { return get(i); }
  /// Element `i`; `ftm::invalid_argument` if there is none.
  const T& at(size_type i) const {
    if (i >= size()) {
      throw invalid_argument(
          fmt::format("stable_vector<{}>::at({}): the size is {}", type_name<T>(), i, size()));
    }
    return get(i);
  }
  const T& front() const { return get(0); }
  const T& back() const { return get(size() - 1); }
  /// Copies elements `[pos, pos + out.size())` into `out`.
  void copy_to(size_type pos, std::span<T> out) const {
    check_range(pos, out.size(), "copy_to");
    core().read(pos, out);
  }

  const_iterator begin() const { return {this, 0}; }
  const_iterator end() const { return {this, size()}; }
  const_iterator cbegin() const { return begin(); }
  const_iterator cend() const { return end(); }

  /// The vector's handle.
  [[nodiscard]] stable<stable_vector<T>> ref() const noexcept { return ref_; }

 protected:
  opened_vector_base(transaction<E>& tx, stable<stable_vector<T>> ref, vector_ptr v)
      : ref_(ref), core_(tx, &v->rep_) {}

  static std::uint64_t checked(stable<stable_vector<T>> ref) {
    if (!ref) throw usage_error("ftm::open: the ftm::stable<stable_vector> handle is null");
    return ref.offset();
  }
  ~opened_vector_base() = default;

  sequence_core<T, E, Writable>& core() const {
#if FTM_CHECKED
    require_live(&core_.tx(), "ftm::opened_vector");
#endif
    return core_;
  }
  void check_range(size_type pos, size_type n, const char* what) const {
    if (pos > size() || n > size() - pos) {
      throw invalid_argument(fmt::format("stable_vector<{}>::{}: [{}, {}) is past the size {}",
                                         type_name<T>(), what, pos, pos + n, size()));
    }
  }

  stable<stable_vector<T>> ref_;
  mutable sequence_core<T, E, Writable> core_;
};

}  // namespace detail

/// The view of a `stable_vector<T>` that `ftm::open_read` (`Writable` false) or
/// `ftm::open` gives: bound to its transaction, neither copied nor moved. Its
/// iterators and references are valid until the transaction ends; a read view is a
/// random-access range of `const T`, for the standard algorithms.
/// This is the read view (`Writable` false).
template <class T, engine E, bool Writable = false>
class opened_vector : public detail::opened_vector_base<T, E, false> {
  static_assert(!Writable);
  using base = detail::opened_vector_base<T, E, false>;

 public:
  opened_vector(detail::from_offset_t, transaction<E>& tx, stable<stable_vector<T>> ref)
      : base(tx, ref, detail::read_node<stable_vector<T>>(tx, base::checked(ref))) {}
};

/// The write view (`ftm::open`): takes the vector's lock for its length, and each
/// chunk's as it is written.
template <class T, engine E>
class opened_vector<T, E, true> : public detail::opened_vector_base<T, E, true> {
  using base = detail::opened_vector_base<T, E, true>;

 public:
  using size_type = std::uint64_t;
  using reference = T&;

  opened_vector(detail::from_offset_t, transaction<E>& tx, stable<stable_vector<T>> ref)
      : base(tx, ref, detail::write_node<stable_vector<T>>(tx, base::checked(ref))) {}

  using base::operator[];
  /// Element `i` for writing, which must exist (opens its chunk for writing).
  T& operator[](size_type i) { return this->core().get_mutable(i); }
  /// Sets element `i`; `ftm::invalid_argument` if there is none.
  void set(size_type i, const T& v) {
    static_cast<void>(this->at(i));
    (*this)[i] = v;
  }
  void push_back(const T& v) { this->core().push_back(v, "stable_vector::push_back"); }
  void pop_back() {
    if (this->empty()) throw invalid_argument("stable_vector::pop_back: the vector is empty");
    resize(this->size() - 1);
  }
  /// New elements are value-initialised; chunks no longer needed are freed.
  void resize(size_type n) { this->core().resize(n, "stable_vector::resize"); }
  void clear() { resize(0); }
  /// Appends `values` (in bulk: one copy per chunk).
  void append(std::span<const T> values) {
    const size_type at = this->size();
    resize(at + values.size());
    this->core().write(at, values);
  }
  /// Copies `values` over elements `[pos, pos + values.size())`, which must exist.
  void write(size_type pos, std::span<const T> values) {
    this->check_range(pos, values.size(), "write");
    this->core().write(pos, values);
  }
  /// Replaces the contents with `values`.
  void assign(std::span<const T> values) {
    resize(0);
    append(values);
  }
};

/// Opens a vector for writing in `tx`.
template <class T, engine E>
opened_vector<T, E, true> open(transaction<E>& tx, stable<stable_vector<T>> ref) {
  return {detail::from_offset, tx, ref};
}

/// Opens a vector for reading in `tx`: shared locks only.
template <class T, engine E>
opened_vector<T, E, false> open_read(transaction<E>& tx, stable<stable_vector<T>> ref) {
  return {detail::from_offset, tx, ref};
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_STABLE_VECTOR_HPP
