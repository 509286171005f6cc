#ifndef FTM_SESSION_HPP
#define FTM_SESSION_HPP

/// \file
/// Sessions: a thread's standing claim on a transaction descriptor of a pool (the
/// paper's processor attached to the STM), so that its transactions begin without
/// claiming one each time.

#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <concepts>
#include <functional>
#include <type_traits>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE {

/// One thread's descriptor on a pool, held from construction to destruction.
///
/// `ftm::atomically(session, f)` and `session.transaction()` run transactions on it,
/// one at a time; they skip the atomic claim of a descriptor that every
/// `ftm::atomically(engine, f)` makes, which is most of the cost of a tiny
/// transaction. A pool has a fixed number of descriptors (for the dual-bank
/// engines `options::max_transactions`, 64 unless chosen): while a session lives,
/// its descriptor serves nobody else, so keep one session per thread that runs many
/// transactions, not one per transaction.
///
/// A session belongs to the thread and process that made it: not copyable nor
/// movable, and a transaction begun on it in a `fork()`ed child throws
/// `ftm::usage_error`. Its descriptor returns to the pool when it is destroyed, or to
/// `recover()` when its process dies.
template <engine E>
class session {
  static_assert(session_engine<E>,
                "ftm::session requires an engine that models ftm::session_engine "
                "(attach, begin_attached, detach); use ftm::atomically(engine, f) instead");

 public:
  explicit session(E& engine) : engine_(&engine), id_(engine.attach()) {}
  session(const session&) = delete;
  session& operator=(const session&) = delete;
  ~session() { engine_->detach(id_); }

  [[nodiscard]] E& engine() const noexcept { return *engine_; }

  /// A transaction on this session's descriptor, inactive until `begin()`.
  [[nodiscard]] ftm::transaction<E> transaction() noexcept {
    return ftm::transaction<E>(*engine_, detail::on_session, id_);
  }

 private:
  E* engine_;
  tx_id id_;
};

/// `ftm::atomically(engine, f)` on a session's descriptor: the same guarantees,
/// without claiming a descriptor per transaction.
template <engine E, class F>
decltype(auto) atomically(session<E>& s, F&& f, retry_policy policy = {}) {
  if constexpr (detail::atomically_callable<F, E>) {
    return detail::run_atomically(
        s.engine(), [&s] { return s.transaction(); }, f, policy);
  } else {
    static_assert(detail::check_atomically_callable<F, E>());
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_SESSION_HPP
