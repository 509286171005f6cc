// Test helpers for supervisors: a supervisor running in a thread of the test.
#ifndef FTM_TESTS_SUPERVISION_HPP
#define FTM_TESTS_SUPERVISION_HPP

#include <ftm/supervisor.hpp>

#include <doctest/doctest.h>

#include <exception>
#include <optional>
#include <thread>

namespace ftm_test {

/// Runs `sup.run()` in a thread; the report, or the exception it threw.
template <class E>
class running_supervisor {
 public:
  explicit running_supervisor(ftm::supervisor<E>& sup,
                              std::optional<ftm::claim_policy> backup = std::nullopt)
      : thread_([this, &sup, backup] {
          try {
            report_ = backup ? sup.run_as_backup(*backup) : sup.run();
          } catch (...) {
            error_ = std::current_exception();
          }
        }) {}
  running_supervisor(const running_supervisor&) = delete;
  running_supervisor& operator=(const running_supervisor&) = delete;
  ~running_supervisor() {
    if (thread_.joinable()) thread_.join();
  }
  ftm::supervision_report join() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
    REQUIRE(report_.has_value());
    return *report_;
  }

 private:
  std::optional<ftm::supervision_report> report_;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace ftm_test

#endif
