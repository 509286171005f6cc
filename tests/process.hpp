// Test helpers for tests that fork: memory shared with the children, a body run in a
// child process, and a child killed in the middle of its work.
#ifndef FTM_TESTS_PROCESS_HPP
#define FTM_TESTS_PROCESS_HPP

#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <functional>
#include <new>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace ftm_test {

/// A `MAP_SHARED` anonymous mapping of a `T`, shared with every child forked later.
template <class T>
class shared_page {
 public:
  shared_page() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    ptr_ = ::new (p) T{};
  }
  shared_page(const shared_page&) = delete;
  shared_page& operator=(const shared_page&) = delete;
  ~shared_page() {
    ptr_->~T();
    ::munmap(ptr_, sizeof(T));
  }
  T* operator->() const { return ptr_; }
  T& operator*() const { return *ptr_; }
  T* get() const { return ptr_; }

 private:
  T* ptr_;
};

/// Runs `body` in a forked child that dies with its parent; returns its wait status
/// (the child exits with what `body` returned, 1 if it threw).
inline int in_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int code = 1;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

/// The processor fails here: this process dies by SIGKILL, and whatever it was in the
/// middle of (an open transaction, the locks it holds) stays as it is.
[[noreturn]] inline void die_now() {
  ::kill(::getpid(), SIGKILL);
  ::_exit(1);  // not reached
}

/// Runs `body` in a forked child that dies with its parent; `body` ends by calling
/// `die_now()` in the middle of its work (in a transaction it left open, say). Returns
/// the child's pid once it is dead, and fails the test unless SIGKILL ended it (`body`
/// returned, threw or exited).
inline pid_t killed_child(const std::function<void()>& body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    try {
      body();
      std::fprintf(stderr, "child: returned instead of dying\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL),
                  "the child was not killed: wait status " << status);
  return pid;
}

}  // namespace ftm_test

#endif  // FTM_TESTS_PROCESS_HPP
