#ifndef FTM_DETAIL_VIOLATION_HPP
#define FTM_DETAIL_VIOLATION_HPP

/// \file
/// Protected mode's fault handler: a write to a pool's read-only view (an object not
/// opened for writing) raises SIGSEGV; the handler names the pool offset, the object
/// and the code address on stderr, aborts the faulting thread's transactions, and
/// stops the program. Faults anywhere else go to the handler that was there before.

#include <ftm/detail/bank/mapping.hpp>
#include <ftm/detail/config.hpp>
#include <ftm/detail/protected_view.hpp>

#include <fmt/format.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <mutex>
#include <string_view>

#include <execinfo.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// One pool in protected mode, as the fault handler sees it: its view, and how to
/// abort a transaction of its engine.
struct protected_pool {
  protected_view* view;
  void* engine;
  void (*abort)(void* engine, descriptor_index d) noexcept;
  /// If `address` is in a read-only copy of an object this thread's transaction read,
  /// sets `off` to the pool offset of the byte it shows.
  bool (*locate)(void* engine, const std::byte* address, std::uint64_t& off) noexcept;
};

/// The protected pools of this process, read by the fault handler (no lock there).
struct protected_registry {
  static constexpr std::size_t capacity = 64;
  std::array<std::atomic<const protected_pool*>, capacity> slots{};
  struct sigaction previous {};
  std::once_flag installed;
  std::mutex installing;
};

inline protected_registry& protected_pools() noexcept {
  static protected_registry r;
  return r;
}

/// Calls `f` on the view of every protected pool of this process.
template <class F>
void for_each_protected_view(F f) noexcept {
  for (auto& slot : protected_pools().slots) {
    const protected_pool* p = slot.load(std::memory_order_acquire);
    if (p != nullptr) f(*p->view);
  }
}

/// What a pool offset (of the working bank) holds, in words, into `out`: the object
/// it is part of, or "no object" and why. Reads the pool without locks (a report).
inline void describe_offset(const bank_mapping& pool, std::uint64_t off, fmt::memory_buffer& out) {
  using namespace bank_layout;
  auto in_object = [&](std::uint64_t block, std::string_view what) {
    const std::uint32_t size = pool.header(block).size;
    if (size == 0) {
      fmt::format_to(std::back_inserter(out),
                     "no object (the block at offset {} holds no object: destroyed, or never "
                     "created)",
                     block);
    } else if (off < block + header_size) {
      fmt::format_to(std::back_inserter(out), "the header of the {}-byte {} at offset {}", size,
                     what, block);
    } else if (off < block + header_size + size) {
      fmt::format_to(std::back_inserter(out), "the {}-byte {} at offset {} (its byte {})", size,
                     what, block, off - block - header_size);
    } else {
      fmt::format_to(std::back_inserter(out),
                     "no object (past the end of the {}-byte {} at offset {}, by {} bytes)", size,
                     what, block, off - block - header_size - size);
    }
  };
  if (off >= pool.bank_size()) {
    fmt::format_to(std::back_inserter(out), "no object (outside the working bank)");
  } else if (off < roots_offset) {
    fmt::format_to(std::back_inserter(out), "no object (the bank's first bytes)");
  } else if (off < metas_begin) {
    in_object(roots_offset, "roots table");
  } else if (off < pool.chunks_offset()) {
    const std::uint64_t c = (off - metas_begin) / meta_stride;
    if (c >= pool.nchunks()) {
      fmt::format_to(std::back_inserter(out), "no object (after the allocator's records)");
    } else {
      in_object(bank_mapping::meta_offset(c), "allocator record");
    }
  } else {
    const std::uint64_t c = pool.chunk_of(off);
    const chunk_meta& m = pool.meta(c);
    const std::uint64_t base = pool.chunk_base(c);
    if (m.cls >= 1 && m.cls <= nclasses) {
      const std::uint64_t bs = bank_mapping::block_size(m.cls);
      in_object(base + (off - base) / bs * bs, "object");
    } else if (m.cls == cls_large_head) {
      in_object(base, "object");
    } else if (m.cls == cls_large_tail && m.head < pool.nchunks()) {
      in_object(pool.chunk_base(m.head), "object");
    } else {
      fmt::format_to(std::back_inserter(out), "no object (chunk {} is free)", c);
    }
  }
}

/// The address of the faulting instruction, from the signal's context (0 where this
/// platform's context is not known here).
inline std::uintptr_t fault_code_address(const void* context) noexcept {
  const auto* uc = static_cast<const ucontext_t*>(context);
#if defined(__x86_64__)
  return static_cast<std::uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]);
#elif defined(__aarch64__)
  return static_cast<std::uintptr_t>(uc->uc_mcontext.pc);
#else
  static_cast<void>(uc);
  return 0;
#endif
}

inline void write_stderr(const char* p, std::size_t n) noexcept {
  while (n > 0) {
    const ssize_t w = ::write(STDERR_FILENO, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// Reports the write at `address` into `pool`'s view or, if `copy`, into the
/// transaction's read-only copy of the pool's byte at offset `copied`.
inline void report_violation(const protected_pool& pool, const std::byte* address,
                             std::uintptr_t code, bool copy = false,
                             std::uint64_t copied = 0) noexcept {
  const protected_view& v = *pool.view;
  const auto at = static_cast<std::uint64_t>(address - v.begin());
  fmt::memory_buffer out;
  try {
    fmt::format_to(std::back_inserter(out), "ftm: protected mode: a write to the pool '{}' ",
                   v.name());
    if (copy) {
      fmt::format_to(std::back_inserter(out), "at pool offset {}, in ", copied);
      describe_offset(v.pool(), copied, out);
      fmt::format_to(std::back_inserter(out), ", through a read view (its copy), ");
    } else if (at < v.bank_begin()) {
      fmt::format_to(std::back_inserter(out),
                     "at byte {} of its control region, which no program may write, ", at);
    } else if (at >= v.bank_begin() + v.pool().bank_size()) {
      fmt::format_to(std::back_inserter(out),
                     "at offset {} of its second bank, which no program may write, ",
                     at - v.bank_begin() - v.pool().bank_size());
    } else {
      const std::uint64_t off = at - v.bank_begin();
      fmt::format_to(std::back_inserter(out), "at pool offset {}, in ", off);
      describe_offset(v.pool(), off, out);
      fmt::format_to(std::back_inserter(out), ", ");
    }
    fmt::format_to(std::back_inserter(out),
                   "was rejected: it is not an object this thread's transaction opened for "
                   "writing. Code address {:#x}",
                   code);
  } catch (...) {
    // Formatting into the buffer only fails for want of memory: report what we have.
  }
  out.push_back('\n');
  write_stderr(out.data(), out.size());
  if (code != 0) {
    void* frame = reinterpret_cast<void*>(code);
    write_stderr("ftm:   at ", 10);
    ::backtrace_symbols_fd(&frame, 1, STDERR_FILENO);
  }
}

/// Aborts every transaction the calling thread runs on a protected pool (the one the
/// faulting write hit, and any other), and says so on stderr.
inline void abort_this_threads_transactions() noexcept {
  for (auto& slot : protected_pools().slots) {
    const protected_pool* p = slot.load(std::memory_order_acquire);
    if (p == nullptr) continue;
    for (descriptor_index d = 0; d < bank_layout::max_descriptors; ++d) {
      if (!p->view->runs(d)) continue;
      p->abort(p->engine, d);
      fmt::memory_buffer line;
      try {
        fmt::format_to(std::back_inserter(line),
                       "ftm: the transaction on descriptor {} of the pool '{}' was aborted: none "
                       "of its writes reach the pool\n",
                       d, p->view->name());
      } catch (...) {
      }
      write_stderr(line.data(), line.size());
    }
  }
}

/// The SIGSEGV handler of protected mode.
inline void on_protection_fault(int sig, siginfo_t* info, void* context) {
  auto& r = protected_pools();
  const auto* address = static_cast<const std::byte*>(info->si_addr);
  const protected_pool* hit = nullptr;
  for (auto& slot : r.slots) {
    const protected_pool* p = slot.load(std::memory_order_acquire);
    if (p != nullptr && address >= p->view->begin() &&
        address < p->view->begin() + p->view->size()) {
      hit = p;
      break;
    }
  }
  std::uint64_t copied = 0;
  if (hit == nullptr) {
    // A read view: a copy of an object, in memory of its own (see read_copies).
    for (auto& slot : r.slots) {
      const protected_pool* p = slot.load(std::memory_order_acquire);
      if (p != nullptr && p->locate != nullptr && p->locate(p->engine, address, copied)) {
        hit = p;
        break;
      }
    }
  }
  if (hit == nullptr) {
    // Not ours: whoever handled SIGSEGV before (or the default action) has it.
    if ((r.previous.sa_flags & SA_SIGINFO) != 0 && r.previous.sa_sigaction != nullptr) {
      r.previous.sa_sigaction(sig, info, context);
      return;
    }
    if (r.previous.sa_handler != SIG_DFL && r.previous.sa_handler != SIG_IGN &&
        r.previous.sa_handler != nullptr) {
      r.previous.sa_handler(sig);
      return;
    }
    ::signal(SIGSEGV, SIG_DFL);  // the write faults again, and the default action stops us
    return;
  }
  report_violation(
      *hit, address, fault_code_address(context),
      address < hit->view->begin() || address >= hit->view->begin() + hit->view->size(), copied);
  abort_this_threads_transactions();
  static constexpr char stop[] = "ftm: stopping the program (SIGSEGV)\n";
  write_stderr(stop, sizeof stop - 1);
  // The write faults again on return, and kills the process with SIGSEGV: a supervisor
  // restarts the task, a shell sees the signal, a debugger stops at the write.
  ::signal(SIGSEGV, SIG_DFL);
}

/// Adds `pool` to those the handler knows, and installs the handler unless it is the
/// current one (a handler installed since, by the program or a test framework, is
/// chained to for faults outside the protected pools).
inline void register_protected_pool(const protected_pool* pool) {
  auto& r = protected_pools();
  std::call_once(r.installed, [] {
    void* warm[1];
    ::backtrace(warm, 1);  // loads what backtrace needs now, not in the handler
    // A thread that forks while another is inside a view's lock would leave the child
    // a lock nobody releases: the fork waits for every view's lock instead.
    ::pthread_atfork(
        [] { for_each_protected_view([](protected_view& v) { v.lock_for_fork(); }); },
        [] { for_each_protected_view([](protected_view& v) { v.unlock_after_fork(); }); },
        [] {
          for_each_protected_view([](protected_view& v) {
            v.forget_other_threads();
            v.unlock_after_fork();
          });
        });
  });
  {
    const std::lock_guard lock(r.installing);
    struct sigaction current {};
    ::sigaction(SIGSEGV, nullptr, &current);
    if ((current.sa_flags & SA_SIGINFO) == 0 || current.sa_sigaction != &on_protection_fault) {
      struct sigaction sa {};
      sa.sa_sigaction = &on_protection_fault;
      sa.sa_flags = SA_SIGINFO;
      sigemptyset(&sa.sa_mask);
      ::sigaction(SIGSEGV, &sa, &r.previous);
    }
  }
  for (auto& slot : r.slots) {
    const protected_pool* expected = nullptr;
    if (slot.compare_exchange_strong(expected, pool, std::memory_order_acq_rel)) return;
  }
  throw usage_error(fmt::format("protected mode: more than {} protected pools in one process",
                                protected_registry::capacity));
}

inline void unregister_protected_pool(const protected_pool* pool) noexcept {
  for (auto& slot : protected_pools().slots) {
    const protected_pool* expected = pool;
    if (slot.compare_exchange_strong(expected, nullptr, std::memory_order_acq_rel)) return;
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_VIOLATION_HPP
