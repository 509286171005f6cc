#ifndef FTM_STABLE_STRING_HPP
#define FTM_STABLE_STRING_HPP

/// \file
/// `stable_string`: bytes or text of any length in a pool, stored in chunks of 4 KiB
/// like `stable_vector<char>`, opened in a transaction with `ftm::open` or
/// `ftm::open_read`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/container_nodes.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/stable_vector.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE {

namespace detail {
template <engine E, bool Writable>
class opened_string_base;
}  // namespace detail

/// A string of bytes in a pool, of any length the pool has room for (1 MiB takes 256
/// chunks): a stable object like any other (`tx.create<ftm::stable_string>()`, a root,
/// or a handle held in another object), empty when value-initialised. A transaction
/// locks the string's own object (its length) and the chunks it touches.
class stable_string {
 public:
  using value_type = char;

 private:
  detail::sequence_rep rep_{};
  template <engine, bool>
  friend class detail::opened_string_base;
};

namespace detail {
template <>
inline constexpr bool is_stable_container<stable_string> = true;
}  // namespace detail

namespace detail {

template <engine E, bool Writable>
class opened_string_base {
  using string_ptr = std::conditional_t<Writable, stable_string*, const stable_string*>;

 public:
  using value_type = char;
  using size_type = std::uint64_t;
  using const_iterator = index_iterator<opened_string_base, char>;
  using iterator = const_iterator;
  static constexpr size_type npos = ~size_type{0};

  // clang-format off
  // Both compilers quote these lines in their "deleted" diagnostics: they carry the rule.
  opened_string_base(const opened_string_base&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  opened_string_base(opened_string_base&&) = delete;  // an opened ftm container cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<C> handle and open it again where you need it
  opened_string_base& operator=(const opened_string_base&) = delete;  // an opened ftm container cannot be copied or moved
  opened_string_base& operator=(opened_string_base&&) = delete;  // an opened ftm container cannot be copied or moved
  // clang-format on

  [[nodiscard]] size_type size() const { return core().size(); }
  [[nodiscard]] size_type length() const { return size(); }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] static constexpr size_type max_size() noexcept {
    return sequence_core<char, E, Writable>::max_size();
  }

  const char& get(size_type i) const { return core().get(i); }
  const char& operator[](size_type i) const { return get(i); }
  const char& at(size_type i) const {
    if (i >= size()) {
      throw invalid_argument(fmt::format("stable_string::at({}): the size is {}", i, size()));
    }
    return get(i);
  }

  /// A copy of the whole string.
  [[nodiscard]] std::string str() const { return substr(0); }
  /// A copy of `[pos, pos + n)`, cut at the end as `std::string::substr`.
  [[nodiscard]] std::string substr(size_type pos, size_type n = npos) const {
    if (pos > size()) {
      throw invalid_argument(fmt::format("stable_string::substr({}): the size is {}", pos, size()));
    }
    std::string out(std::min(n, size() - pos), '\0');
    core().read(pos, std::span<char>(out.data(), out.size()));
    return out;
  }
  /// Compares as `std::string_view::compare`, chunk by chunk, without a copy.
  [[nodiscard]] int compare(std::string_view s) const {
    const size_type n = std::min<size_type>(size(), s.size());
    char buf[512];
    for (size_type done = 0; done < n;) {
      const size_type k = std::min<size_type>(sizeof buf, n - done);
      core().read(done, std::span<char>(buf, k));
      if (const int c = std::string_view(buf, k).compare(s.substr(done, k)); c != 0) return c;
      done += k;
    }
    return size() < s.size() ? -1 : size() > s.size() ? 1 : 0;
  }
  friend bool operator==(const opened_string_base& a, std::string_view b) {
    return a.size() == b.size() && a.compare(b) == 0;
  }

  const_iterator begin() const { return {this, 0}; }
  const_iterator end() const { return {this, size()}; }
  const_iterator cbegin() const { return begin(); }
  const_iterator cend() const { return end(); }

  [[nodiscard]] stable<stable_string> ref() const noexcept { return ref_; }

 protected:
  opened_string_base(transaction<E>& tx, stable<stable_string> ref, string_ptr s)
      : ref_(ref), core_(tx, &s->rep_) {}
  ~opened_string_base() = default;

  static std::uint64_t checked(stable<stable_string> ref) {
    if (!ref) throw usage_error("ftm::open: the ftm::stable<stable_string> handle is null");
    return ref.offset();
  }

  sequence_core<char, E, Writable>& core() const {
#if FTM_CHECKED
    require_live(&core_.tx(), "ftm::opened_string");
#endif
    return core_;
  }

  stable<stable_string> ref_;
  mutable sequence_core<char, E, Writable> core_;
};

}  // namespace detail

/// The view of a `stable_string` that `ftm::open_read` (`Writable` false) or
/// `ftm::open` gives: bound to its transaction, neither copied nor moved. A read view
/// is a random-access range of `const char`.
/// This is the read view (`Writable` false).
template <engine E, bool Writable = false>
class opened_string : public detail::opened_string_base<E, false> {
  static_assert(!Writable);
  using base = detail::opened_string_base<E, false>;

 public:
  opened_string(detail::from_offset_t, transaction<E>& tx, stable<stable_string> ref)
      : base(tx, ref, detail::read_node<stable_string>(tx, base::checked(ref))) {}
};

/// The write view (`ftm::open`).
template <engine E>
class opened_string<E, true> : public detail::opened_string_base<E, true> {
  using base = detail::opened_string_base<E, true>;

 public:
  using size_type = std::uint64_t;

  opened_string(detail::from_offset_t, transaction<E>& tx, stable<stable_string> ref)
      : base(tx, ref, detail::write_node<stable_string>(tx, base::checked(ref))) {}

  using base::operator[];
  /// Byte `i` for writing, which must exist.
  char& operator[](size_type i) { return this->core().get_mutable(i); }

  void assign(std::string_view s) {
    resize(0);
    append(s);
  }
  void append(std::string_view s) {
    const size_type at = this->size();
    resize(at + s.size());
    this->core().write(at, std::span<const char>(s.data(), s.size()));
  }
  opened_string& operator+=(std::string_view s) {
    append(s);
    return *this;
  }
  void push_back(char c) { this->core().push_back(c, "stable_string::push_back"); }
  /// Copies `s` over `[pos, pos + s.size())`, growing the string if it ends past it.
  void replace(size_type pos, std::string_view s) {
    if (pos > this->size()) {
      throw invalid_argument(
          fmt::format("stable_string::replace({}): the size is {}", pos, this->size()));
    }
    if (pos + s.size() > this->size()) resize(pos + s.size());
    this->core().write(pos, std::span<const char>(s.data(), s.size()));
  }
  /// New bytes are zero; chunks no longer needed are freed.
  void resize(size_type n) { this->core().resize(n, "stable_string::resize"); }
  void clear() { resize(0); }
};

/// Opens a string for writing in `tx`.
template <engine E>
opened_string<E, true> open(transaction<E>& tx, stable<stable_string> ref) {
  return {detail::from_offset, tx, ref};
}

/// Opens a string for reading in `tx`: shared locks only.
template <engine E>
opened_string<E, false> open_read(transaction<E>& tx, stable<stable_string> ref) {
  return {detail::from_offset, tx, ref};
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_STABLE_STRING_HPP
