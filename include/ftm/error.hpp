#ifndef FTM_ERROR_HPP
#define FTM_ERROR_HPP

/// \file
/// The ftm error hierarchy: every failure ftm reports at run time is an `ftm::error`
/// whose message names the cause.

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace ftm {

/// What went wrong, for callers that dispatch on a code rather than a type.
enum class errc {
  conflict,           ///< the transaction lost a lock conflict; retrying it may succeed
  pool_full,          ///< the pool has no room for the requested object
  usage_error,        ///< the program broke a rule of the API (use after close, ...)
  capacity_exceeded,  ///< a fixed limit of the pool was reached (objects per transaction, roots)
  type_mismatch,      ///< a named root holds an object of another type
  invalid_argument,   ///< a bad parameter (pool size, name, handle)
  retry_limit,        ///< atomically() gave up after too many conflicts
  bad_pool,           ///< a pool file is damaged, truncated, foreign or from a newer ftm
  io_error,           ///< the system refused a file operation
  port_full,          ///< a send found its port at capacity, and the port fails rather than waits
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
  }
  return "unknown";
}

/// Base of every exception ftm throws. `what()` reads "ftm: <kind>: <cause>".
class error : public std::runtime_error {
 public:
  error(errc code, std::string_view message)
      : std::runtime_error(fmt::format("ftm: {}: {}", to_string(code), message)), code_(code) {}

  [[nodiscard]] errc code() const noexcept { return code_; }

 private:
  errc code_;
};

/// The transaction lost a lock conflict and was chosen to abort (wait-die).
/// `atomically()` retries it; explicit transactions must abort and may begin again.
class conflict : public error {
 public:
  explicit conflict(std::string_view m) : error(errc::conflict, m) {}
};

/// No free space of the requested size is left in the pool.
class pool_full : public error {
 public:
  explicit pool_full(std::string_view m) : error(errc::pool_full, m) {}
};

/// The program broke a rule of the API that the type system could not catch.
class usage_error : public error {
 public:
  explicit usage_error(std::string_view m) : error(errc::usage_error, m) {}
};

/// A fixed limit chosen when the pool was created was reached.
class capacity_exceeded : public error {
 public:
  explicit capacity_exceeded(std::string_view m) : error(errc::capacity_exceeded, m) {}
};

/// A named root exists but holds an object of another type.
class type_mismatch : public error {
 public:
  explicit type_mismatch(std::string_view m) : error(errc::type_mismatch, m) {}
};

/// A parameter is out of range or malformed.
class invalid_argument : public error {
 public:
  explicit invalid_argument(std::string_view m) : error(errc::invalid_argument, m) {}
};

/// `atomically()` retried a conflicting transaction as often as its policy allows.
class retry_limit : public error {
 public:
  explicit retry_limit(std::string_view m) : error(errc::retry_limit, m) {}
};

/// A pool file that cannot be trusted: damaged, truncated, foreign, or written by a
/// newer version of ftm. Nothing is changed in it.
class bad_pool : public error {
 public:
  explicit bad_pool(std::string_view m) : error(errc::bad_pool, m) {}
};

/// The system refused a file operation (missing file, no permission, no space, ...).
class io_error : public error {
 public:
  explicit io_error(std::string_view m) : error(errc::io_error, m) {}
};

/// A send found its port holding as many messages as its capacity, and the port was
/// made with `ftm::when_full::fail`. The transaction may only abort; nothing was sent.
class port_full : public error {
 public:
  explicit port_full(std::string_view m) : error(errc::port_full, m) {}
};

}  // namespace ftm

#endif  // FTM_ERROR_HPP
