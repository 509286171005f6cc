#ifndef FTM_WAIT_HPP
#define FTM_WAIT_HPP

/// \file
/// Composable waiting, in the style of Haskell's STM: `ftm::retry` waits for objects
/// the transaction read to change, `ftm::or_else` tries a second alternative when the
/// first must wait, and waits for either when both must. Both work inside
/// `ftm::atomically`, which aborts, waits without locks and runs the transaction again.

#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <string_view>
#include <utility>

namespace ftm::FTM_ABI_NAMESPACE {

namespace detail {

/// The `ftm::atomically` a blocking operation runs in, or a clear error.
inline atomic_scope& require_wait_scope(std::string_view what) {
  atomic_scope* scope = atomic_scope::current();
  if (scope == nullptr) {
    throw usage_error(fmt::format(
        "ftm::{} waits, which only ftm::atomically can do (it aborts the transaction, waits "
        "and runs it again); in an explicit transaction use the try_ form",
        what));
  }
  return *scope;
}

/// Unregisters watches that will not be waited for (the alternative that made them
/// was abandoned), unless `keep()` hands them on.
template <class E>
class watch_guard {
 public:
  watch_guard(E& engine, const retry_request& r) noexcept : engine_(engine), request_(&r) {}
  watch_guard(const watch_guard&) = delete;
  watch_guard& operator=(const watch_guard&) = delete;
  ~watch_guard() {
    if (request_ != nullptr) {
      engine_.wait(request_->tokens(), std::chrono::steady_clock::time_point::min());
    }
  }
  void keep() noexcept { request_ = nullptr; }

 private:
  E& engine_;
  const retry_request* request_;
};

}  // namespace detail

/// Aborts the transaction and runs it again once one of the objects has changed. The
/// transaction must have opened each of them (read or write): what it saw is what a
/// change is measured against. Only inside `ftm::atomically`.
template <watchable_engine E, class T, class... More>
[[noreturn]] void retry(transaction<E>& tx, stable<T> object, stable<More>... more) {
  detail::require_wait_scope("retry");
  retry_request r;
  r.add(tx.engine().watch(tx.id(), object.offset()));
  (r.add(tx.engine().watch(tx.id(), more.offset())), ...);
  throw r;
}

/// Aborts the transaction and runs it again once a commit has changed any object it
/// opened so far (read or write), as Haskell's `retry` does. Only inside
/// `ftm::atomically`; `usage_error` if it opened nothing.
template <watchable_engine E>
[[noreturn]] void retry(transaction<E>& tx) {
  detail::require_wait_scope("retry");
  std::array<watch_token, retry_request::max_watches> tokens{};
  const std::size_t n = tx.engine().watch_all(tx.id(), tokens);
  retry_request r;
  for (std::size_t k = 0; k < n; ++k)
    r.add(tokens[k]);
  if (n == 0) {
    throw usage_error(
        "ftm::retry: the transaction has opened nothing whose change it could wait for");
  }
  throw r;
}

/// Runs `first(tx)` and returns its result; if it must wait (it throws
/// `ftm::retry_request`, as a blocking receive on an empty port does), runs
/// `second(tx)` instead; if that must wait too, the transaction waits for whichever
/// change comes first. Unlike Haskell's `orElse`, what `first` wrote before it asked
/// to wait is kept: let alternatives wait before they write (receives do).
template <watchable_engine E, class F, class G>
auto or_else(transaction<E>& tx, F&& first, G&& second) {
  try {
    return std::forward<F>(first)(tx);
  } catch (retry_request& r1) {
    detail::watch_guard<E> guard(tx.engine(), r1);
    try {
      return std::forward<G>(second)(tx);
    } catch (const retry_request& r2) {
      detail::watch_guard<E> guard2(tx.engine(), r2);
      retry_request both = r1;
      both.merge(r2);
      guard.keep();
      guard2.keep();
      throw both;
    }
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE

#endif  // FTM_WAIT_HPP
