#ifndef FTM_ERROR_HPP
#define FTM_ERROR_HPP

/// \file
/// The ftm error hierarchy: every failure ftm reports at run time is an `ftm::error`
/// whose message names the cause, and also the standard exception that fits it:
/// misuse is a `std::logic_error`, a system failure a `std::system_error` carrying the
/// `errno`, the rest `std::runtime_error`. `ftm::errc` is a `std::error_code` enum.
///
/// The error vocabulary does not depend on `FTM_CHECKED`, so it lives outside the
/// ABI namespace (`detail/config.hpp`): one `catch (const ftm::error&)` catches what a
/// checked and an unchecked translation unit of the same program throw.

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

namespace ftm {

/// What went wrong, for callers that dispatch on a code rather than a type. A
/// `std::error_code` enum of `ftm::error_category()`: `std::error_code ec =
/// errc::pool_full;` works, and no enumerator is 0, which `std::error_code` reserves
/// for success.
enum class errc {
  conflict = 1,       ///< the transaction lost a lock conflict; retrying it may succeed
  pool_full,          ///< the pool has no room for the requested object
  usage_error,        ///< the program broke a rule of the API (use after close, ...)
  capacity_exceeded,  ///< a fixed limit of the pool was reached (objects per transaction, roots)
  type_mismatch,      ///< a named root holds an object of another type
  invalid_argument,   ///< a bad parameter (pool size, name, handle)
  retry_limit,        ///< atomically() gave up after too many conflicts
  bad_pool,           ///< a pool file is damaged, truncated, foreign or from a newer ftm
  io_error,           ///< the system refused a file operation
  port_full,          ///< a send found its port at capacity, and the port fails rather than waits
  call_failed,        ///< a service's handler threw: the reply carries its type and message
  key_too_old,        ///< an idempotency key below its client's window: its outcome is forgotten
};

constexpr std::string_view to_string(errc c) noexcept {
  switch (c) {
    case errc::conflict: return "conflict";
    case errc::pool_full: return "pool full";
    case errc::usage_error: return "usage error";
    case errc::capacity_exceeded: return "capacity exceeded";
    case errc::type_mismatch: return "type mismatch";
    case errc::invalid_argument: return "invalid argument";
    case errc::retry_limit: return "retry limit";
    case errc::bad_pool: return "bad pool";
    case errc::io_error: return "i/o error";
    case errc::port_full: return "port full";
    case errc::call_failed: return "call failed";
    case errc::key_too_old: return "key too old";
  }
  return "unknown";
}

/// The category of `ftm::errc` codes: named "ftm", whose messages are `to_string(errc)`.
inline const std::error_category& error_category() noexcept {
  // error.hpp names nothing in a `detail` namespace: `ftm::detail` is the ABI
  // namespace's (detail/config.hpp), and a second one would make it ambiguous.
  class category final : public std::error_category {
   public:
    [[nodiscard]] const char* name() const noexcept override { return "ftm"; }
    [[nodiscard]] std::string message(int value) const override {
      return std::string(to_string(static_cast<errc>(value)));
    }
  };
  static const category instance;
  return instance;
}

/// Makes `errc` a `std::error_code` (found by argument-dependent lookup).
inline std::error_code make_error_code(errc c) noexcept {
  return {static_cast<int>(c), error_category()};
}

/// Base of every exception ftm throws. `what()` reads "ftm: <kind>: <cause>".
///
/// Not itself a `std::exception`: each kind also derives from the standard exception
/// that fits it (`std::logic_error`, `std::runtime_error`, `std::system_error`), and
/// one `std::exception` base keeps `catch (const std::exception&)` unambiguous.
class error {
 public:
  error(const error&) = default;
  error& operator=(const error&) = default;
  virtual ~error() = default;

  /// The kind of failure.
  [[nodiscard]] errc code() const noexcept { return code_; }
  /// "ftm: <kind>: <cause>"; the same text as the standard base's `what()`.
  [[nodiscard]] virtual const char* what() const noexcept = 0;

  /// The base of each kind: an `ftm::error` that is also a `Std`.
  template <class Std, errc Code>
  class as;

 protected:
  explicit error(errc code) noexcept : code_(code) {}

  static std::string format_what(errc code, std::string_view message) {
    return fmt::format("ftm: {}: {}", to_string(code), message);
  }

 private:
  errc code_;
};

/// An `ftm::error` that is also a `Std` (`std::runtime_error`, `std::logic_error`, ...).
template <class Std, errc Code>
class error::as : public Std, public error {
 public:
  explicit as(std::string_view m) : Std(format_what(Code, m)), error(Code) {}
  [[nodiscard]] const char* what() const noexcept override { return Std::what(); }
};

/// The transaction lost a lock conflict and was chosen to abort (wait-die).
/// `atomically()` retries it; explicit transactions must abort and may begin again.
class conflict : public error::as<std::runtime_error, errc::conflict> {
 public:
  using as::as;
};

/// No free space of the requested size is left in the pool.
class pool_full : public error::as<std::runtime_error, errc::pool_full> {
 public:
  using as::as;
};

/// The program broke a rule of the API that the type system could not catch: a
/// `std::logic_error`, since it is a bug in the caller, not a condition of the run.
class usage_error : public error::as<std::logic_error, errc::usage_error> {
 public:
  using as::as;
};

/// A fixed limit chosen when the pool was created was reached.
class capacity_exceeded : public error::as<std::runtime_error, errc::capacity_exceeded> {
 public:
  using as::as;
};

/// A named root exists but holds an object of another type.
class type_mismatch : public error::as<std::runtime_error, errc::type_mismatch> {
 public:
  using as::as;
};

/// A parameter is out of range or malformed: a `std::invalid_argument`, a logic error.
class invalid_argument : public error::as<std::invalid_argument, errc::invalid_argument> {
 public:
  using as::as;
};

/// `atomically()` retried a conflicting transaction as often as its policy allows.
class retry_limit : public error::as<std::runtime_error, errc::retry_limit> {
 public:
  using as::as;
};

/// A pool file that cannot be trusted: damaged, truncated, foreign, or written by a
/// newer version of ftm. Nothing is changed in it.
class bad_pool : public error::as<std::runtime_error, errc::bad_pool> {
 public:
  using as::as;
};

/// The system refused an operation (missing file, no permission, no space, a failed
/// `mmap`, ...). A `std::system_error`: `code()` on an `io_error` is the system's
/// `std::error_code` (the `errno`, in `std::generic_category()`), while `code()`
/// through an `ftm::error&` is `errc::io_error`. The message already quotes the
/// system's reason, and `what()` is the message alone.
class io_error : public std::system_error, public error {
 public:
  /// A failure the system reported with `errno` value `e`.
  io_error(int e, std::string_view m) : io_error(std::error_code(e, std::generic_category()), m) {}
  io_error(std::error_code ec, std::string_view m)
      : std::system_error(ec), error(errc::io_error), what_(format_what(errc::io_error, m)) {}

  /// The system's error code.
  [[nodiscard]] const std::error_code& code() const noexcept { return std::system_error::code(); }
  [[nodiscard]] const char* what() const noexcept override { return what_.what(); }

 private:
  std::runtime_error what_;  // copying shares the text and cannot throw, as an exception must
};

/// A send found its port holding as many messages as its capacity, and the port was
/// made with `ftm::when_full::fail`. The transaction may only abort; nothing was sent.
class port_full : public error::as<std::runtime_error, errc::port_full> {
 public:
  using as::as;
};

/// A call's handler threw (`ftm::call` on the client's side): the server's transaction
/// was undone, and after the service's tries the request was dead-lettered. `what()`
/// names the handler's exception type and quotes its message.
class call_failed : public error::as<std::runtime_error, errc::call_failed> {
 public:
  using as::as;
};

/// A call's idempotency key is older than the service keeps keys for (below its
/// client's window of sequence numbers): the service cannot tell whether it was
/// applied, so it refuses to apply it.
class key_too_old : public error::as<std::runtime_error, errc::key_too_old> {
 public:
  using as::as;
};

}  // namespace ftm

/// `ftm::errc` converts to `std::error_code`.
template <>
struct std::is_error_code_enum<ftm::errc> : std::true_type {};

#endif  // FTM_ERROR_HPP
