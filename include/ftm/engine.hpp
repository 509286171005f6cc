#ifndef FTM_ENGINE_HPP
#define FTM_ENGINE_HPP

/// \file
/// The `ftm::engine` concept: the contract between the transaction layer and a
/// pluggable stable-memory backend (`ftm::engines::dual_bank`, ...). The layers above
/// are written against this concept only and never include a concrete engine.

#include <ftm/detail/config.hpp>

#include <fmt/format.h>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE {

/// Names one active transaction inside its engine (in the bank engine, the index of its
/// descriptor, reused once the transaction ends).
using tx_id = std::uint32_t;

/// How a transaction begins. A retried transaction keeps an early priority, so an
/// engine that settles conflicts by age lets it win in the end (no starvation).
struct begin_options {
  std::uint64_t priority = 0;  ///< smaller is older; 0: the engine chooses
  std::uint32_t attempt = 0;   ///< 0 for the first attempt; counted as a retry otherwise
};

/// What the transaction layer tells an engine about the type of an object.
struct object_type {
  std::size_t size;
  std::size_t align;
  std::string_view name;
};

/// What a named root records about its type, to refuse a different one later.
struct root_type {
  object_type object;
  std::uint64_t fingerprint;
  std::string_view layout;  ///< `layout_description<T>()`, to say which field differs
};

/// A freshly allocated object: where it is and its (still unconstructed) storage.
struct allocation {
  std::uint64_t offset;
  void* storage;
};

/// Counters over the life of a pool, summed over every process that used it.
struct engine_stats {
  std::uint64_t commits = 0;
  std::uint64_t aborts = 0;     ///< every abort, including those caused by conflicts
  std::uint64_t conflicts = 0;  ///< transactions that lost a lock conflict
  std::uint64_t retries = 0;    ///< attempts after the first, by atomically()
};

/// What one `recover()` found and did.
struct recovery_report {
  std::uint64_t undone = 0;          ///< ACTIVE transactions of dead owners rolled back
  std::uint64_t redone = 0;          ///< COMMITTING transactions completed
  std::uint64_t locks_released = 0;  ///< locks those transactions held
};

/// Begin, commit and abort transactions, each named by a `tx_id`.
template <class E>
concept transactional_engine = requires(E& e, tx_id t, begin_options o) {
  { e.begin(o) } -> std::same_as<tx_id>;
  { e.commit(t) } -> std::same_as<void>;
  { e.abort(t) }
  noexcept;
};

/// Create and destroy stable objects inside a transaction.
template <class E>
concept allocating_engine = requires(E& e, tx_id t, const object_type& ty, std::uint64_t off) {
  { e.allocate(t, ty) } -> std::same_as<allocation>;
  { e.deallocate(t, off, ty) } -> std::same_as<void>;
};

/// Open objects for reading or writing, taking their locks, and close them.
template <class E>
concept object_engine = requires(E& e, tx_id t, const object_type& ty, std::uint64_t off) {
  { e.open_write(t, off, ty) } -> std::same_as<void*>;
  { e.open_read(t, off, ty) } -> std::same_as<const void*>;
  { e.close(t, off) }
  noexcept;
};

/// Find objects again by name after a restart.
template <class E>
concept rooted_engine = requires(E& e, tx_id t, std::string_view name, const root_type& ty,
                                 std::uint64_t off) {
  { e.find_root(t, name, ty) } -> std::same_as<std::uint64_t>;
  { e.bind_root(t, name, off, ty) } -> std::same_as<void>;
};

/// Survive the death of the processes using the pool.
template <class E>
concept recoverable_engine = requires(E& e, const E& ce) {
  { e.recover() } -> std::same_as<recovery_report>;
  { ce.stats() } -> std::same_as<engine_stats>;
};

/// Optional: keep a descriptor across transactions (`ftm::session`), so that a
/// transaction begins without claiming one.
///
/// Laws: `attach()` claims a descriptor for the calling process, idle; each
/// `begin_attached(t, o)` begins a transaction on it, which `commit(t)` or `abort(t)`
/// ends as usual, leaving it idle and still attached; `detach(t)` gives it back. A
/// process that dies with descriptors attached loses them to `recover()`.
template <class E>
concept session_engine = requires(E& e, tx_id t, begin_options o) {
  { e.attach() } -> std::same_as<tx_id>;
  { e.begin_attached(t, o) } -> std::same_as<void>;
  { e.detach(t) }
  noexcept;
};

/// A pluggable stable transactional memory.
///
/// A model names each transaction with a `tx_id` from `begin()` until `commit()` or
/// `abort()` ends it, and each object with an offset (never an address; offset 0 is
/// never an object). How it keeps the guarantees below (locks, versions, one
/// transaction at a time) is its own affair. The law suite `tests/laws/` checks them
/// for every engine; `ftm::engines::reference` is the smallest model that passes it.
///
/// Laws the compiler cannot check:
/// - Atomicity: a transaction's effects (writes, `allocate`, `deallocate`, bound
///   roots) take effect all at once at `commit()`, or not at all. After `abort()`,
///   and after an exception that ends the transaction, every object it wrote holds
///   its committed value again, an object it allocated does not exist (opening it is
///   an `ftm::usage_error`) and one it deallocated still does.
/// - Isolation: committed transactions are serializable, and a running transaction
///   never sees another's uncommitted writes: an object opened for reading holds a
///   committed value (or the transaction's own write) as long as it stays open, so no
///   read is torn. A model may break a deadlock, or refuse to wait, by throwing
///   `ftm::conflict` from an `open_*`, `allocate`, `deallocate`, `find_root`,
///   `bind_root` or `commit`; the transaction may then only be aborted, and
///   `ftm::atomically` runs it again.
/// - Durability to the engine's level: once `commit()` returns, the transaction's
///   effects are seen by every later transaction, and survive every failure the
///   engine promises to survive (an in-process engine: none; `dual_bank`: the death of
///   any of the processes that share it; `pmem`: also the end of every process, and
///   with `power` a power loss).
/// - Recovery: `recover()` finishes the transactions whose owners died: it undoes
///   those that had not committed and completes those that had, and frees whatever
///   they held, so that their objects can be opened again. It is idempotent and safe
///   to die in and rerun, and leaves the transactions of live owners alone. An engine
///   whose owners cannot die without it (an in-process one) has nothing to recover.
/// - Usage errors: opening or destroying an object with a type of another size, or
///   one that does not exist, and a second `bind_root` of one name throw
///   `ftm::usage_error`; a root of another type `ftm::type_mismatch`; an empty root
///   name `ftm::invalid_argument`; no room for an allocation `ftm::pool_full`. After
///   each, the transaction can still be aborted, undoing all it did.
template <class E>
concept engine = transactional_engine<E> && allocating_engine<E> && object_engine<E> &&
    rooted_engine<E> && recoverable_engine<E>;

/// An engine whose `close` does nothing says so with `static constexpr bool
/// close_is_noop = true`, and opened handles then skip the call.
template <class E>
concept closing_is_noop = requires {
  requires E::close_is_noop;
};

/// An engine whose state a `fork()`ed child shares, so that a parent can run
/// transactions beside its children and recover those of a child that died: what
/// `ftm::supervisor` needs to restart a task in a fresh process. A model says so with
/// `static constexpr bool fork_shared = true`.
///
/// Laws the compiler cannot check, on top of `engine`'s:
/// - A child forked from a process holding the engine uses the same pool: what either
///   commits, the other sees.
/// - Recovery across processes: when a process dies in the middle of transactions
///   (killed at any instruction), `recover()` in a survivor undoes their writes,
///   allocations and frees and releases their locks, so a survivor can then open and
///   write their objects; a transaction that had committed keeps its effects.
template <class E>
concept fork_shared_engine = engine<E> && requires {
  requires E::fork_shared;
};

/// An engine that can change bytes of an object past the reach of abort and recovery,
/// for the few facts that must outlive the transaction that learns them (a port's
/// delivery count: the receive that aborts, or whose process dies, still happened).
///
/// `write_through(t, off, at, src, n)` copies `n` bytes from `src` to bytes
/// `[at, at + n)` of the object at `off`. Laws:
/// - `t` must hold the object's write lock (it opened it for writing); otherwise
///   `ftm::usage_error`, and nothing is written.
/// - The bytes are the object's working value at once, and the value that `abort()`
///   and `recover()` restore: neither an abort of `t` nor the death of its process
///   undoes them. A commit of `t` keeps them (and whatever else `t` wrote).
/// - A crash inside `write_through` leaves, after recovery, the old or the new value
///   of each naturally aligned word of up to 8 bytes it wrote.
template <class E>
concept unlogged_write_engine = engine<E> &&
    requires(E& e, tx_id t, std::uint64_t off, std::size_t at, const void* src, std::size_t n) {
  { e.write_through(t, off, at, src, n) } -> std::same_as<void>;
};

/// Optional: read a part of an object, for a container that needs a few bytes of a
/// large node (a hash map's probe reads a node's tags, then the one entry they name),
/// where `open_read` would copy the whole object.
///
/// `open_read_part(t, off, ty, at, n, seen)` opens bytes `[at, at + n)` of the object
/// at `off` for reading, `ty` checked as `open_read` checks it, and returns their
/// address (that of byte `at`). `seen` belongs to the caller, one per object: 0 before
/// the first part it reads of that object in `t`, then the engine's (it may record
/// what it read there). Laws, on top of `open_read`'s:
/// - One value: the parts read with one `seen` are all of one committed value of the
///   object (or of `t`'s own writes, once `t` holds it for writing). If a commit
///   changed the object between two of them, the later one throws `ftm::conflict`
///   (the transaction may then only abort) and never returns bytes of another value.
/// - The bytes returned stay unchanged while `t` runs, and `t` commits only if what it
///   read is still the committed value, as for a whole `open_read`.
/// - Parts outside the object (`at + n` beyond `ty.size`) are a `ftm::usage_error`.
/// An engine without it is read whole: `detail::byte_access::open_read_part` falls
/// back to `open_read`, once per `seen`.
template <class E>
concept partial_read_engine = engine<E> &&
    requires(E& e, tx_id t, std::uint64_t off, const object_type& ty, std::size_t at, std::size_t n,
             std::uint64_t& seen) {
  { e.open_read_part(t, off, ty, at, n, seen) } -> std::same_as<const void*>;
};

/// What `watch()` registered, handed back to `wait()`. Opaque to the layers above.
struct watch_token {
  std::uint32_t slot;  ///< engine-defined: where the registration is
  std::uint32_t seen;  ///< engine-defined: the change counter when it was made
};

/// An engine that can wait for objects to change, for blocking operations (a receive
/// from an empty port) that abort, wait, and run again.
///
/// - `watch(t, off)` registers interest in the object at `off`, which `t` holds a
///   lock on (`ftm::usage_error` otherwise); `watch_all(t, out)` in every object `t`
///   holds a lock on, filling at most `out.size()` tokens (an engine may cover several
///   objects with one) and returning how many. `t` then ends (commits or, usually,
///   aborts) without waiting.
/// - `wait(tokens, deadline)` then blocks, holding no lock, until a transaction that
///   wrote one of the watched objects commits after its `watch`, or a `recover()`
///   finishes a transaction, or the deadline passes; it returns false only for the
///   deadline, and may return true spuriously. Every token is passed to `wait` once,
///   in the order `watch` made them: `wait` also unregisters them.
///
/// Laws the compiler cannot check:
/// - No lost wake-up: a commit that changes a watched object after the watcher read
///   it wakes the watcher, even if it commits before the watcher starts waiting, and
///   even across processes; `recover()` wakes every watcher, so a committer that dies
///   before it wakes anyone is made up for by whoever recovers it.
/// - No cost without waiters: a commit pays no system call, no locked instruction and
///   no write to memory shared with other committers when nobody waits.
template <class E>
concept watchable_engine = engine<E> &&
    requires(E& e, tx_id t, std::uint64_t off, std::span<const watch_token> tokens,
             std::span<watch_token> out, std::chrono::steady_clock::time_point deadline) {
  { e.watch(t, off) } -> std::same_as<watch_token>;
  { e.watch_all(t, out) } -> std::same_as<std::size_t>;
  { e.wait(tokens, deadline) } -> std::same_as<bool>;
};

}  // namespace ftm::FTM_ABI_NAMESPACE

template <>
struct fmt::formatter<ftm::engine_stats> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::engine_stats& s, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(), "commits: {}, aborts: {}, conflicts: {}, retries: {}",
                          s.commits, s.aborts, s.conflicts, s.retries);
  }
};

template <>
struct fmt::formatter<ftm::recovery_report> {
  constexpr auto parse(fmt::format_parse_context& ctx) { return ctx.begin(); }
  template <class FormatContext>
  auto format(const ftm::recovery_report& r, FormatContext& ctx) const {
    return fmt::format_to(ctx.out(), "undone: {}, redone: {}, locks released: {}", r.undone,
                          r.redone, r.locks_released);
  }
};

#endif  // FTM_ENGINE_HPP
