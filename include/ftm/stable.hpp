#ifndef FTM_STABLE_HPP
#define FTM_STABLE_HPP

/// \file
/// Stable objects: `stable<T>`, the typed handle to an object in a pool (the paper's
/// `Stable` class), and `opened<T>`, the access an open transaction grants to it.

#include <ftm/detail/config.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/error.hpp>
#include <ftm/reflect.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE {

/// Engines place every stable object at an address aligned to at least this.
inline constexpr std::size_t max_stable_alignment = 16;

/// The pool copies a stable object byte by byte, between banks and across processes.
template <class T>
concept trivially_copyable_object = std::is_object_v<T> && !std::is_const_v<T> &&
                                    !std::is_volatile_v<T> && std::is_trivially_copyable_v<T>;

/// A raw pointer dangles once another process, or a restart, maps the pool.
template <class T>
concept free_of_raw_pointers = !detail::contains_raw_pointer<T>();

/// The pool aligns objects to `max_stable_alignment` at most.
template <class T>
concept pool_alignable = alignof(T) <= max_stable_alignment;

/// A lock (`std::mutex`), an atomic (`std::atomic<U>`), or a type holding one: its
/// copying is deleted, because its bytes are not its state alone. In a pool it would be
/// shared by every process that maps it, and recovery, which restores the bytes of
/// the last commit, cannot restore it (a lock held by a process that died stays held).
/// Some compilers still call such a type trivially copyable.
template <class T>
concept free_of_synchronization = std::is_copy_constructible_v<std::remove_all_extents_t<T>>;

/// A type whose values may live in a pool.
///
/// Laws the compiler cannot check: a non-reflected type must not hold raw pointers
/// either (declare it with `BOOST_HANA_DEFINE_STRUCT` to have that checked), nor
/// handles to resources of one process (file descriptors, thread ids).
template <class T>
concept stable_type = free_of_synchronization<T> && trivially_copyable_object<T> &&
    free_of_raw_pointers<T> && pool_alignable<T>;

namespace detail {

/// The one place that states the stable-type rule, so every entry point teaches alike.
/// Only the first rule `T` breaks is reported.
template <class T>
constexpr bool check_stable_type() {
  if constexpr (!free_of_synchronization<T>) {
    static_assert(free_of_synchronization<T>,
                  "ftm requires T to be a stable type: T cannot be copied; a lock "
                  "(std::mutex) or an atomic (std::atomic<U>), or a type holding one, is not "
                  "a stable type: in a pool it would be shared by every process that maps it, "
                  "and recovery cannot restore it (a lock held by a process that died stays "
                  "held); use plain members and let the transaction isolate them (its locks "
                  "are taken by tx.open and released at commit or abort)");
  } else if constexpr (!trivially_copyable_object<T>) {
    static_assert(trivially_copyable_object<T>,
                  "ftm requires T to be a stable type: T must be a trivially copyable object "
                  "type (no virtual functions, no user-defined copy or destructor, not const), "
                  "because the pool copies it byte by byte; use fixed-size arrays instead of "
                  "std::string or std::vector, and ftm::stable<U> for links between objects");
  } else if constexpr (!free_of_raw_pointers<T>) {
    if constexpr (reflected<std::remove_all_extents_t<T>>) {
      name_raw_pointer_members<std::remove_all_extents_t<T>>();
    } else {
      static_assert(free_of_raw_pointers<T>,
                    "ftm requires T to be a stable type: T is, or holds, a raw pointer, which "
                    "dangles after a restart or in another process; use ftm::stable<U> for "
                    "links between objects");
    }
  } else {
    static_assert(pool_alignable<T>,
                  "ftm requires T to be a stable type: alignof(T) must not exceed "
                  "ftm::max_stable_alignment (16)");
  }
  return true;
}

struct on_session_t {
  explicit on_session_t() = default;
};
/// Tags a transaction made on a session's descriptor.
inline constexpr on_session_t on_session{};

struct from_offset_t {
  explicit from_offset_t() = default;
};
/// Engines and the transaction layer make handles from offsets; users never do.
inline constexpr from_offset_t from_offset{};

}  // namespace detail

/// A typed handle to a stable object: a pool offset, never a raw pointer, so it stays
/// valid when the pool is mapped at another address or in another process. It can be
/// stored inside other stable objects, including objects of type T. It grants no access to the
/// object: open it in a transaction (`tx.open(ref)`, `tx.open_read(ref)`).
template <class T>
class stable {
  // T may still be incomplete here (an object that links to its own type), so the
  // stable-type rule is checked where objects are created and opened.
 public:
  using element_type = T;

  /// The null handle.
  constexpr stable() noexcept = default;
  constexpr stable(detail::from_offset_t, std::uint64_t offset) noexcept : offset_(offset) {}

  /// The object's offset in its pool (0 for the null handle).
  [[nodiscard]] constexpr std::uint64_t offset() const noexcept { return offset_; }
  constexpr explicit operator bool() const noexcept { return offset_ != 0; }
  friend constexpr bool operator==(stable, stable) noexcept = default;

  // Reading or writing T through a bare handle would bypass the transaction.
  template <class U = T>
  void operator->() const {
    static_assert(detail::always_false<U>,
                  "ftm::stable<T> gives no access to T: open it in a transaction first "
                  "(tx.open(ref) to write, tx.open_read(ref) to read)");
  }
  template <class U = T>
  void operator*() const {
    static_assert(detail::always_false<U>,
                  "ftm::stable<T> gives no access to T: open it in a transaction first "
                  "(tx.open(ref) to write, tx.open_read(ref) to read)");
  }

 private:
  std::uint64_t offset_ = 0;
};

template <class T>
class opened;

namespace detail {

/// True for ftm's containers (`stable_vector`, `stable_string`, `stable_hash_map`,
/// `stable_map`), whose headers say so: their object is only their root, so they are
/// opened as a whole through their views, never as a plain `opened<T>`.
template <class T>
inline constexpr bool is_stable_container = false;

class transaction_base;

/// The part of `opened<T>` its transaction knows: a link in the transaction's list of
/// open handles. The transaction's destructor detaches every handle still in the list,
/// so a handle that outlives its transaction object never reaches freed memory.
class opened_base {
 protected:
  opened_base() = default;
  ~opened_base() = default;
  opened_base(const opened_base&) = delete;
  opened_base& operator=(const opened_base&) = delete;

  inline void link(transaction_base& tx) noexcept;
  inline void unlink() noexcept;

  void* addr_ = nullptr;  // the object's bytes; null once closed
  std::uint64_t at_ = 0;  // the object's offset

  transaction_base* tx_ = nullptr;  // null once closed, or once the transaction is destroyed
  opened_base* prev_ = nullptr;
  opened_base* next_ = nullptr;

  friend class transaction_base;
};

/// What an opened handle needs from its transaction: whether it is still the same
/// transaction (the generation changes at each commit and abort), and how to close.
class transaction_base {
 public:
  [[nodiscard]] std::uint64_t generation() const noexcept { return generation_; }
  [[nodiscard]] bool active() const noexcept { return active_; }

 protected:
  transaction_base() = default;
  /// Detaches the handles still open: they report a use after this as a usage error.
  ~transaction_base() {
    // Handles usually close before their transaction ends: one test on the hot path.
    if (handles_ != nullptr) [[unlikely]]
      detach_handles();
  }
  transaction_base(const transaction_base&) = delete;
  transaction_base& operator=(const transaction_base&) = delete;
  [[gnu::cold, gnu::noinline]] void detach_handles() noexcept {
    for (opened_base* h = handles_; h != nullptr;) {
      opened_base* next = h->next_;
      h->tx_ = nullptr;
      h->prev_ = h->next_ = nullptr;
      h = next;
    }
    handles_ = nullptr;
  }
  void end_generation() noexcept {
    active_ = false;
    ++generation_;
  }
  /// Points every open handle of the object at `at` to `addr`: an engine may hand out
  /// a read view elsewhere than the object's bytes it writes (the dual-bank engines
  /// read the committed bank), and a transaction sees its own writes through every
  /// view.
  void repoint(std::uint64_t at, void* addr) noexcept {
    for (opened_base* h = handles_; h != nullptr; h = h->next_)
      if (h->at_ == at && h->addr_ != nullptr) h->addr_ = addr;
  }

  std::uint64_t generation_ = 1;
  bool active_ = false;
  void (*close_object_)(transaction_base&, std::uint64_t offset) noexcept = nullptr;
  opened_base* handles_ = nullptr;  // the open handles, newest first

  template <class>
  friend class ftm::opened;
  friend class opened_base;
};

// GCC takes the handle's address in its transaction for a dangling pointer; the
// handle unlinks itself when it dies, which GCC cannot see.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
void opened_base::link(transaction_base& tx) noexcept {
  tx_ = &tx;
  next_ = tx.handles_;
  if (next_ != nullptr) next_->prev_ = this;
  tx.handles_ = this;
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

void opened_base::unlink() noexcept {
  if (tx_ == nullptr) return;
  if (prev_ != nullptr) {
    prev_->next_ = next_;
  } else {
    tx_->handles_ = next_;
  }
  if (next_ != nullptr) next_->prev_ = prev_;
  tx_ = nullptr;
  prev_ = next_ = nullptr;
}

}  // namespace detail

/// The access a transaction grants to one stable object: `opened<T>` can write,
/// `opened<const T>` only read. It is bound to its transaction: it cannot be copied
/// or moved, and is closed by `close()` or at the end of its scope. In checked builds
/// (`FTM_CHECKED`), using it after `close()`, after its transaction committed or
/// aborted, or after the transaction object was destroyed throws `ftm::usage_error`.
template <class T>
class opened : private detail::opened_base {
  using object = std::remove_const_t<T>;
  static_assert(detail::check_stable_type<object>());
  static_assert(!detail::is_stable_container<object>,
                "ftm::opened<T>: T is an ftm container; tx.open and tx.open_read would give "
                "only its root object: open it with ftm::open(tx, ref) or "
                "ftm::open_read(tx, ref), which give its view");

 public:
  // clang-format off
  // Both compilers quote these lines in their "deleted" diagnostics: they carry the rule.
  opened(const opened&) = delete;  // ftm::opened<T> cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<T> handle (ref()) and open it again where you need it
  opened(opened&&) = delete;  // ftm::opened<T> cannot be copied or moved: it is bound to its transaction; keep the ftm::stable<T> handle (ref()) and open it again where you need it
  opened& operator=(const opened&) = delete;  // ftm::opened<T> cannot be copied or moved: keep the ftm::stable<T> handle (ref()) and open it again
  opened& operator=(opened&&) = delete;  // ftm::opened<T> cannot be copied or moved: keep the ftm::stable<T> handle (ref()) and open it again
  // clang-format on
  ~opened() { close(); }

  T* operator->() const { return get(); }
  T& operator*() const { return *get(); }

  /// The object, valid while this handle is open.
  T* get() const {
#if FTM_CHECKED
    check();
#endif
    return static_cast<T*>(addr_);
  }

  /// The handle this access came from.
  [[nodiscard]] stable<object> ref() const noexcept { return {detail::from_offset, at_}; }

  [[nodiscard]] bool is_open() const noexcept {
    return addr_ != nullptr && tx_ != nullptr && tx_->active() && tx_->generation() == generation_;
  }

  /// Ends this access (the paper's Close). Locks stay held until the transaction
  /// ends (strict two-phase locking). Closing twice is harmless.
  void close() noexcept {
    if (addr_ == nullptr) return;
    if (tx_ != nullptr && tx_->close_object_ != nullptr && tx_->active() &&
        tx_->generation() == generation_) {
      tx_->close_object_(*tx_, at_);
    }
    unlink();
    addr_ = nullptr;
  }

  // Made only by transactions.
  opened(detail::from_offset_t, T* ptr, detail::transaction_base& tx, std::uint64_t offset) noexcept
      : generation_(tx.generation()) {
    addr_ = const_cast<void*>(static_cast<const void*>(ptr));
    at_ = offset;
    link(tx);
  }

 private:
  void check() const {
    if (addr_ == nullptr) {
      throw usage_error(fmt::format("ftm::opened<{}> used after close()", detail::type_name<T>()));
    }
    if (tx_ == nullptr) {
      throw usage_error(fmt::format(
          "ftm::opened<{}> used after its transaction object was destroyed (its end closed "
          "every object it opened; open it again in a live transaction)",
          detail::type_name<T>()));
    }
    if (!tx_->active() || tx_->generation() != generation_) {
      throw usage_error(fmt::format(
          "ftm::opened<{}> used after its transaction ended (commit or abort closes every "
          "object it opened; open it again in the next transaction)",
          detail::type_name<T>()));
    }
  }

  std::uint64_t generation_;
};

namespace detail {
template <class T>
struct is_opened : std::false_type {};
template <class T>
struct is_opened<opened<T>> : std::true_type {};
}  // namespace detail

}  // namespace ftm::FTM_ABI_NAMESPACE

/// Handles print as `stable<account>@4160`.
template <class T>
struct fmt::formatter<ftm::stable<T>> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(ftm::stable<T> ref, FormatContext& ctx) const {
    if (!ref)
      return fmt::format_to(ctx.out(), "stable<{}>(null)", ftm::detail::short_type_name<T>());
    return fmt::format_to(ctx.out(), "stable<{}>@{}", ftm::detail::short_type_name<T>(),
                          ref.offset());
  }
};

#endif  // FTM_STABLE_HPP
