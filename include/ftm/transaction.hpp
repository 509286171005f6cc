#ifndef FTM_TRANSACTION_HPP
#define FTM_TRANSACTION_HPP

/// \file
/// Transactions (the paper's `Transaction` class, with explicit Begin, Commit and
/// Abort) and `atomically()`, which commits, aborts on exception and retries conflicts.

#include <ftm/detail/config.hpp>
#include <ftm/detail/heartbeat.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/detail/type_name.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/reflect.hpp>
#include <ftm/stable.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE {

namespace detail {

template <class T>
inline constexpr object_type object_type_of{sizeof(T), alignof(T), type_name<T>()};

template <class T>
root_type root_type_of() {
  static const std::string layout = layout_description<T>();
  return {object_type_of<T>, layout_fingerprint<T>(), layout};
}

/// Root names that begin with this are ftm's own records (the port directory
/// `ftm.ports`, supervisors' `ftm.task.<name>`): `transaction::root` refuses them, so
/// no program binds one with a type of its own, and ftm's layers reach theirs through
/// `detail::reserved_root`.
inline constexpr std::string_view reserved_root_prefix = "ftm.";

inline void refuse_reserved_root(std::string_view name) {
  if (name.starts_with(reserved_root_prefix)) {
    throw usage_error(fmt::format(
        "transaction::root: the root name '{}' is reserved: names beginning with '{}' are "
        "ftm's own records (the port directory, supervised tasks); choose another name",
        name, reserved_root_prefix));
  }
}

}  // namespace detail

template <engine E>
class transaction;

namespace detail {
template <class T, engine E>
stable<T> reserved_root(transaction<E>& tx, std::string_view name);
struct atomically_access;
struct byte_access;
}  // namespace detail

/// A transaction on engine `E`. Made inactive, like the paper's `new Transaction`;
/// `begin()` activates it, `commit()` or `abort()` ends it, and it can begin again.
/// An active transaction that is destroyed aborts: a transaction never commits
/// implicitly. All work on stable objects happens between `begin()` and its end.
template <engine E>
class transaction : private detail::transaction_base {
 public:
  using engine_type = E;

  explicit transaction(E& engine) noexcept : engine_(&engine) {
    if constexpr (!closing_is_noop<E>) close_object_ = &close_thunk;
  }
  /// A transaction on a descriptor that `engine.attach()` gave this process (made by
  /// `ftm::session`): it begins without claiming a descriptor.
  transaction(E& engine, detail::on_session_t, tx_id attached) noexcept : transaction(engine) {
    id_ = attached;
    attached_ = true;
  }
  transaction(const transaction&) = delete;
  transaction& operator=(const transaction&) = delete;
  ~transaction() {
    // Most transactions have ended by now: the abort stays out of the common path.
    if (active_) [[unlikely]]
      abort_on_destruction();
  }

  /// Activates the transaction (the paper's Begin).
  void begin(begin_options options = {}) {
    if (in_atomically_ || active_) [[unlikely]]
      refuse_begin();
    begin_now(options);
  }

  /// Makes every effect of the transaction stable at once (the paper's Commit) and
  /// closes every object it opened. Refused (`ftm::usage_error`) on the transaction
  /// `ftm::atomically` gives its function: it commits when the function returns.
  void commit() {
    refuse_in_atomically("commit", "commits it for you when your function returns");
    commit_now();
  }

  /// Undoes every effect of the transaction (the paper's Abort); nothing if it is not
  /// active. Refused (`ftm::usage_error`) on the transaction `ftm::atomically` gives
  /// its function: throw an exception from the function to abort it.
  void abort() {
    refuse_in_atomically(
        "abort", "aborts it for you when your function throws: throw an exception to abort");
    abort_now();
  }

  using detail::transaction_base::active;
  [[nodiscard]] E& engine() const noexcept { return *engine_; }

  /// Creates a stable object, `T(args...)` or `T{args...}`. An aborted transaction
  /// frees it again.
  template <class T, class... Args>
  stable<T> create(Args&&... args) {
    static_assert(detail::check_stable_type<T>());
    require_active("create");
    allocation a = engine_->allocate(id_, detail::object_type_of<T>);
    if constexpr (std::is_constructible_v<T, Args...>) {
      ::new (a.storage) T(std::forward<Args>(args)...);
    } else {
      ::new (a.storage) T{std::forward<Args>(args)...};
    }
    return {detail::from_offset, a.offset};
  }

  /// Creates a stable object holding a copy of `value`.
  template <class T>
  stable<std::remove_cvref_t<T>> create(T&& value) {
    return create<std::remove_cvref_t<T>, T>(std::forward<T>(value));
  }

  /// Destroys a stable object. An aborted transaction keeps it.
  template <class T>
  void destroy(stable<T> ref) {
    static_assert(detail::check_stable_type<T>());
    require_active("destroy");
    require_not_null(ref, "destroy");
    engine_->deallocate(id_, ref.offset(), detail::object_type_of<T>);
  }

  /// Opens an object for writing (the paper's Open): takes its exclusive lock.
  template <class T>
  [[gnu::always_inline]] inline opened<T> open(stable<T> ref) {
    require_active("open");
    require_not_null(ref, "open");
    void* p = engine_->open_write(id_, ref.offset(), detail::object_type_of<T>);
    if (handles_ != nullptr) repoint(ref.offset(), p);
    return {detail::from_offset, static_cast<T*>(p), *this, ref.offset()};
  }

  /// Opens an object for reading; the view is const. It takes no lock: the engine
  /// checks at commit that what it read did not change meanwhile.
  template <class T>
  [[gnu::always_inline]] inline opened<const T> open_read(stable<T> ref) {
    require_active("open_read");
    require_not_null(ref, "open_read");
    const void* p = engine_->open_read(id_, ref.offset(), detail::object_type_of<T>);
    return {detail::from_offset, static_cast<const T*>(p), *this, ref.offset()};
  }

  /// The object named `name` in this pool, created value-initialised if there is
  /// none. Throws `ftm::type_mismatch` if the root holds another type.
  template <class T>
  stable<T> root(std::string_view name) {
    static_assert(detail::check_stable_type<T>());
    require_active("root");
    detail::refuse_reserved_root(name);
    return find_or_bind_root<T>(name);
  }

  /// This transaction's descriptor in its engine (valid while active).
  [[nodiscard]] tx_id id() const noexcept { return id_; }

 private:
  template <class T, ::ftm::engine F>
  friend stable<T> detail::reserved_root(transaction<F>& tx, std::string_view name);
  friend struct detail::atomically_access;
  friend struct detail::byte_access;

  void begin_now(begin_options options) {
    if constexpr (session_engine<E>) {
      if (attached_) {
        engine_->begin_attached(id_, options);
        active_ = true;
        return;
      }
    }
    id_ = engine_->begin(options);
    active_ = true;
  }
  void commit_now() {
    require_active("commit");
    end_generation();
    engine_->commit(id_);
  }
  void abort_now() noexcept {
    if (!active_) return;
    end_generation();
    engine_->abort(id_);
  }
  [[gnu::cold, gnu::noinline]] void abort_on_destruction() noexcept { abort_now(); }

  /// Out of line: `begin` inlines its two tests.
  [[noreturn, gnu::cold, gnu::noinline]] void refuse_begin() const {
    refuse_in_atomically("begin", "began it before calling your function");
    throw usage_error("transaction::begin: the transaction is already active");
  }

  /// `ftm::atomically` owns the transaction it passes to its function: a `begin`,
  /// `commit` or `abort` there would end the work behind its back, and it would then
  /// report an error for work that was done.
  void refuse_in_atomically(std::string_view what, std::string_view instead) const {
    if (in_atomically_) {
      throw usage_error(
          fmt::format("transaction::{}: this transaction belongs to ftm::atomically, which {}; "
                      "do not call {}() inside the function given to ftm::atomically",
                      what, instead, what));
    }
  }

  template <class T>
  stable<T> find_or_bind_root(std::string_view name) {
    const root_type type = detail::root_type_of<T>();
    if (auto off = engine_->find_root(id_, name, type); off != 0) return {detail::from_offset, off};
    stable<T> ref = create<T>();
    engine_->bind_root(id_, name, ref.offset(), type);
    return ref;
  }

  static void close_thunk(detail::transaction_base& base, std::uint64_t offset) noexcept {
    auto& self = static_cast<transaction&>(base);
    self.engine_->close(self.id_, offset);
  }

  void require_active(std::string_view what) const {
    if (!active_) [[unlikely]]
      refuse_inactive(what);
  }
  /// Out of line: the check above inlines into every open.
  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_inactive(std::string_view what) {
    throw usage_error(
        fmt::format("transaction::{}: the transaction is not active (call begin() first)", what));
  }

  template <class T>
  static void require_not_null(stable<T> ref, std::string_view what) {
    if (!ref) [[unlikely]]
      refuse_null(what, detail::type_name<T>());
  }
  [[noreturn, gnu::cold, gnu::noinline]] static void refuse_null(std::string_view what,
                                                                 std::string_view type) {
    throw usage_error(
        fmt::format("transaction::{}: the ftm::stable<{}> handle is null", what, type));
  }

  E* engine_;
  tx_id id_ = 0;
  bool attached_ = false;
  bool in_atomically_ = false;
};

/// `tx.create<T>(args...)` for generic code, where `tx` has a dependent type and the
/// member call would need the `template` keyword: `ftm::create<node>(tx, 1, next)`.
template <class T, engine E, class... Args>
stable<T> create(transaction<E>& tx, Args&&... args) {
  return tx.template create<T>(std::forward<Args>(args)...);
}

/// `tx.root<T>(name)` for generic code: `ftm::root<bank>(tx, "bank")`.
template <class T, engine E>
stable<T> root(transaction<E>& tx, std::string_view name) {
  return tx.template root<T>(name);
}

namespace detail {
/// `tx.root<T>(name)` without the refusal of reserved names: for ftm's own records
/// (`reserved_root_prefix`), never for programs' roots.
template <class T, engine E>
stable<T> reserved_root(transaction<E>& tx, std::string_view name) {
  static_assert(check_stable_type<T>());
  tx.require_active("root");
  return tx.template find_or_bind_root<T>(name);
}
}  // namespace detail

namespace detail {

/// A transaction's objects as bytes, for ftm's layers built on transactions (ports):
/// they lay out their objects themselves, so they open them by offset with the size
/// and name of the whole object rather than as a `stable<T>`. The locks, the undo and
/// the end of the transaction are the transaction's, exactly as for `open` and
/// `open_read`; only the typed handle is left out. Every function requires `tx` to be
/// active (the caller checks it, to word the error in its own terms).
struct byte_access {
  /// A new object of type `type`, uninitialised; an abort of `tx` frees it.
  template <engine E>
  static allocation allocate(transaction<E>& tx, const object_type& type) {
    return tx.engine_->allocate(tx.id_, type);
  }

  /// Opens the object at `offset` for writing (its exclusive lock), as `tx.open`.
  template <engine E>
  static std::byte* open_write(transaction<E>& tx, std::uint64_t offset, const object_type& type) {
    return static_cast<std::byte*>(tx.engine_->open_write(tx.id_, offset, type));
  }

  /// Opens the object at `offset` for reading, as `tx.open_read`.
  template <engine E>
  static const std::byte* open_read(transaction<E>& tx, std::uint64_t offset,
                                    const object_type& type) {
    return static_cast<const std::byte*>(tx.engine_->open_read(tx.id_, offset, type));
  }

  /// Opens bytes `[at, at + n)` of the object at `offset` for reading; `seen` is 0
  /// before the first part of that object in `tx` (see `ftm::partial_read_engine`). An
  /// engine without parts opens the object whole, once per `seen`, which then keeps its
  /// address, so that every part is of one value there too.
  template <engine E>
  static const std::byte* open_read_part(transaction<E>& tx, std::uint64_t offset,
                                         const object_type& type, std::size_t at, std::size_t n,
                                         std::uint64_t& seen) {
    if constexpr (partial_read_engine<E>) {
      return static_cast<const std::byte*>(
          tx.engine_->open_read_part(tx.id_, offset, type, at, n, seen));
    } else {
      if (at > type.size || n > type.size - at) {
        throw usage_error(fmt::format("bytes [{}, {}) are not inside a {} ({} bytes)", at, at + n,
                                      type.name, type.size));
      }
      if (seen == 0) seen = reinterpret_cast<std::uintptr_t>(open_read(tx, offset, type));
      return reinterpret_cast<const std::byte*>(seen) + at;
    }
  }

  /// Closes an object opened by `open_write` or `open_read`, as an `opened<T>` does at
  /// the end of its scope (its locks stay held until `tx` ends); nothing if `tx` has
  /// ended meanwhile.
  template <engine E>
  static void close(transaction<E>& tx, std::uint64_t offset) noexcept {
    if constexpr (!closing_is_noop<E>) {
      if (tx.active()) tx.engine_->close(tx.id_, offset);
    }
  }

  /// Copies `n` bytes from `src` to bytes `[at, at + n)` of the object at `offset`,
  /// which `tx` opened for writing, past the reach of abort and recovery (see
  /// `ftm::unlogged_write_engine`).
  template <unlogged_write_engine E>
  static void write_through(transaction<E>& tx, std::uint64_t offset, std::size_t at,
                            const void* src, std::size_t n) {
    tx.engine_->write_through(tx.id_, offset, at, src, n);
  }

  /// Watches the object at `offset`, which `tx` holds a lock on, for a blocking
  /// operation (see `ftm::watchable_engine`).
  template <watchable_engine E>
  static watch_token watch(transaction<E>& tx, std::uint64_t offset) {
    return tx.engine_->watch(tx.id_, offset);
  }

  /// The object bound to the root `name` (reserved names included), 0 if none.
  template <engine E>
  static std::uint64_t find_root(transaction<E>& tx, std::string_view name, const root_type& type) {
    return tx.engine_->find_root(tx.id_, name, type);
  }
};

}  // namespace detail

/// Thrown by an operation that cannot go on yet (a receive from an empty port, a send
/// to a full one): `ftm::atomically` aborts the transaction, waits until one of the
/// objects it watched changes (or the deadline passes), and runs it again. It is not
/// an `ftm::error`, so that handlers of errors let it through. Needs an
/// `ftm::watchable_engine`.
class retry_request {
 public:
  static constexpr std::size_t max_watches = 32;
  using clock = std::chrono::steady_clock;

  retry_request() = default;
  retry_request(watch_token t, clock::time_point deadline) : deadline_(deadline) { add(t); }

  /// Watches one more object (its token from the engine's `watch`).
  void add(watch_token t) {
    if (count_ == max_watches) {
      throw usage_error(
          fmt::format("ftm: a transaction may wait on at most {} objects at once", max_watches));
    }
    tokens_[count_++] = t;
  }
  /// Waits for the changes `other` waits for too, until the earlier deadline, and
  /// takes on its tidy-up work as well (`or_else`: each alternative's poison
  /// messages go to their dead-letter ports).
  void merge(const retry_request& other) {
    for (const watch_token& t : other.tokens())
      add(t);
    for (const tidy_work& w : other.tidies())
      add_tidy(w.function, w.object, w.arg);
    deadline_ = std::min(deadline_, other.deadline_);
  }
  [[nodiscard]] std::span<const watch_token> tokens() const noexcept {
    return {tokens_.data(), count_};
  }
  [[nodiscard]] clock::time_point deadline() const noexcept { return deadline_; }

  /// Work to commit on its own before waiting, which the aborted transaction would
  /// have undone: `function(engine, object, arg)` in a transaction of its own. A port
  /// uses it to move poison messages to its dead-letter port while its receivers wait.
  using tidy_function = void (*)(void* engine, std::uint64_t object, std::uint64_t arg) noexcept;
  struct tidy_work {
    tidy_function function;
    std::uint64_t object;
    std::uint64_t arg;
  };
  /// Adds tidy-up work; every piece added (or merged) runs before the wait.
  void add_tidy(tidy_function f, std::uint64_t object, std::uint64_t arg) {
    if (tidy_count_ == max_watches) {
      throw usage_error(fmt::format(
          "ftm: a transaction may leave at most {} pieces of tidy-up work before it waits",
          max_watches));
    }
    tidies_[tidy_count_++] = {f, object, arg};
  }
  [[nodiscard]] std::span<const tidy_work> tidies() const noexcept {
    return {tidies_.data(), tidy_count_};
  }
  /// Runs all the tidy-up work on `engine` (no transaction of this thread active).
  void tidy(void* engine) const noexcept {
    for (const tidy_work& w : tidies())
      w.function(engine, w.object, w.arg);
  }

 private:
  std::array<watch_token, max_watches> tokens_{};
  std::size_t count_ = 0;
  clock::time_point deadline_ = clock::time_point::max();
  // As many as watches: each piece of work comes with the watch of the port it tidies.
  std::array<tidy_work, max_watches> tidies_{};
  std::size_t tidy_count_ = 0;
};

/// How `atomically()` retries a transaction that lost a conflict.
struct retry_policy {
  std::uint32_t max_attempts = 100000;
  std::chrono::microseconds max_backoff{500};
};

namespace detail {

/// The pools this thread is inside `atomically()` on, innermost first.
class atomic_scope {
 public:
  using clock = std::chrono::steady_clock;

  explicit atomic_scope(const void* engine) : engine_(engine), outer_(innermost()) {
    for (const atomic_scope* s = outer_; s != nullptr; s = s->outer_) {
      if (s->engine_ == engine) {
        throw usage_error(
            "ftm::atomically called inside ftm::atomically on the same pool: the inner "
            "transaction would wait for the outer one forever; use the outer transaction");
      }
    }
    innermost() = this;
  }
  atomic_scope(const atomic_scope&) = delete;
  atomic_scope& operator=(const atomic_scope&) = delete;
  ~atomic_scope() { innermost() = outer_; }

  /// The innermost `atomically()` of this thread, or null outside one: blocking
  /// operations keep their deadline and time-out here across attempts.
  static atomic_scope* current() noexcept { return innermost(); }

  /// `timeout` after the first time an attempt of this `atomically()` asked for a
  /// deadline (the clock is read then, not on every transaction).
  clock::time_point deadline_after(clock::duration timeout) {
    if (!started_) {
      start_ = clock::now();
      started_ = true;
    }
    return timeout >= clock::time_point::max() - start_ ? clock::time_point::max()
                                                        : start_ + timeout;
  }
  /// Whether the last wait of this `atomically()` ran out of time.
  [[nodiscard]] bool timed_out() const noexcept { return timed_out_; }
  void set_timed_out() noexcept { timed_out_ = true; }

 private:
  static atomic_scope*& innermost() noexcept {
    thread_local atomic_scope* head = nullptr;
    return head;
  }
  const void* engine_;
  atomic_scope* outer_;
  clock::time_point start_{};
  bool started_ = false;
  bool timed_out_ = false;
};

/// Randomised exponential backoff: spreads out transactions that keep colliding.
inline void backoff(std::uint32_t attempt, std::chrono::microseconds cap) {
  thread_local std::minstd_rand rng{std::random_device{}()};
  if (attempt <= 2) {
    // The first retries of short transactions: a conflict usually clears within a few
    // hundred cycles, and a yield or the shortest sleep costs microseconds.
    const auto spins = std::uniform_int_distribution<std::uint32_t>{0, 32u << attempt}(rng);
    for (std::uint32_t i = 0; i < spins; ++i)
      cpu_relax();
    return;
  }
  const auto limit = std::min<std::int64_t>(cap.count(), std::int64_t{1} << std::min(attempt, 20u));
  const auto wait = std::uniform_int_distribution<std::int64_t>{0, limit}(rng);
  if (wait < 2) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(wait));
  }
}

}  // namespace detail

namespace detail {

/// What `atomically()` calls its function with.
template <class F, class E>
concept atomically_callable = requires(F& f, transaction<E>& tx) {
  std::invoke(f, tx);
};

/// The one statement of the rule, for `atomically` on an engine and on a session.
template <class F, class E>
constexpr bool check_atomically_callable() {
  static_assert(atomically_callable<F, E>,
                "ftm::atomically requires f to be callable as f(tx) with tx an "
                "ftm::transaction<E>& on the engine (or session) given: write "
                "[&](auto& tx) { ... } or [&](ftm::transaction<E>& tx) { ... }; what f "
                "returns, atomically returns");
  return true;
}

/// How `atomically()` drives the transaction it owns, past the refusals its function
/// gets.
struct atomically_access {
  /// `tx` is new: neither active nor `atomically`'s yet, so `begin`'s refusals have
  /// nothing to refuse.
  template <engine E>
  static void begin(transaction<E>& tx, begin_options options) {
    tx.begin_now(options);
    tx.in_atomically_ = true;
  }
  template <engine E>
  static void commit(transaction<E>& tx) {
    tx.commit_now();
  }
  template <engine E>
  static void abort(transaction<E>& tx) noexcept {
    tx.abort_now();
  }
};

/// The longest a blocking operation waits in one go outside a task with a lease.
inline constexpr std::chrono::steady_clock::duration whole_wait =
    std::chrono::steady_clock::duration::max();

/// `now + slice`, or the end of time if that overflows.
inline std::chrono::steady_clock::time_point deadline_after_slice(
    std::chrono::steady_clock::duration slice) {
  if (slice == std::chrono::steady_clock::duration::max()) {
    return std::chrono::steady_clock::time_point::max();
  }
  const auto now = std::chrono::steady_clock::now();
  return slice >= std::chrono::steady_clock::time_point::max() - now
             ? std::chrono::steady_clock::time_point::max()
             : now + slice;
}

/// After a lost conflict: the age to keep, the limit, the backoff.
inline void lost_conflict(begin_options& options, const retry_policy& policy,
                          std::string_view what) {
  if (options.priority == 0) options.priority = timestamp();
  if (++options.attempt >= policy.max_attempts) {
    throw retry_limit(
        fmt::format("ftm::atomically gave up after {} conflicting attempts; the last: {}",
                    options.attempt, what));
  }
  backoff(options.attempt, policy.max_backoff);
}

/// The body of `atomically()`: `make_tx()` gives a fresh, inactive transaction.
template <engine E, class MakeTx, class F>
auto run_atomically(E& engine, MakeTx make_tx, F& f, retry_policy policy)
    -> std::invoke_result_t<F&, transaction<E>&> {
  using result = std::invoke_result_t<F&, transaction<E>&>;
  static_assert(!is_opened<std::remove_cvref_t<result>>::value,
                "ftm::atomically: f must not return an opened handle: it is closed when the "
                "transaction ends; return the ftm::stable<T> handle, or copy the value out");
  static_assert(!std::is_reference_v<result>,
                "ftm::atomically: f must return a value, not a reference: a reference into "
                "the pool dangles once the transaction ends");
  // An inner transaction on the same pool would wait for the outer one forever.
  atomic_scope scope(&engine);

  // A retry carries the age of its first conflict, so it wins against newcomers in
  // the end. The first attempt leaves the age to the engine, which takes it only if
  // a conflict needs it: reading a clock on every transaction is not free.
  begin_options options{};
  for (;;) {
    transaction<E> tx = make_tx();
    atomically_access::begin(tx, options);
    try {
      if constexpr (std::is_void_v<result>) {
        std::invoke(f, tx);
        atomically_access::commit(tx);
        return;
      } else {
        result r = std::invoke(f, tx);
        atomically_access::commit(tx);
        return r;
      }
    } catch (const conflict& lost) {
      atomically_access::abort(tx);
      lost_conflict(options, policy, lost.what());
    } catch (const retry_request& wait) {
      atomically_access::abort(tx);
      if constexpr (watchable_engine<E>) {
        wait.tidy(&engine);
        // In a supervised task with a lease, waits at most a slice of it and renews
        // it: a task blocked in a receive is idle, not hung. An elapsed slice reruns
        // `f`, which watches again (as a spurious wake-up would).
        renew_lease();
        const auto slice_end = deadline_after_slice(renewal_slice(whole_wait));
        if (!engine.wait(wait.tokens(), std::min(wait.deadline(), slice_end)) &&
            wait.deadline() <= slice_end) {
          scope.set_timed_out();
        }
      } else {
        throw usage_error(
            "ftm: a blocking operation needs an engine that models "
            "ftm::watchable_engine; use the try_ operation instead");
      }
    } catch (...) {
      // On an engine whose readers validate, `f` may have read a mix of commits (and
      // failed because of it): then it lost a conflict, whatever it threw.
      if constexpr (requires { engine.valid(tx.id()); }) {
        if (!engine.valid(tx.id())) {
          atomically_access::abort(tx);
          lost_conflict(options, policy, "an object the transaction read changed meanwhile");
          continue;
        }
      }
      throw;
    }
  }
}

}  // namespace detail

/// Runs `f(tx)` in a transaction on `engine` and returns what `f` returns.
///
/// Commits when `f` returns; aborts and rethrows when `f` throws; aborts and runs `f`
/// again, after a randomised backoff, when it loses a lock conflict (`ftm::conflict`).
/// `f` may therefore run more than once: its effects on stable objects happen once,
/// its other side effects should be idempotent. Throws `ftm::retry_limit` after
/// `policy.max_attempts` conflicts. When `f` throws `ftm::retry_request` (a blocking
/// receive found nothing), aborts, waits without locks for a watched object to
/// change, and runs `f` again.
template <engine E, class F>
decltype(auto) atomically(E& engine, F&& f, retry_policy policy = {}) {
  if constexpr (detail::atomically_callable<F, E>) {
    return detail::run_atomically(
        engine, [&engine] { return transaction<E>(engine); }, f, policy);
  } else {
    static_assert(detail::check_atomically_callable<F, E>());
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_TRANSACTION_HPP
