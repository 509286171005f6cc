#ifndef FTM_DETAIL_TASK_RECORD_HPP
#define FTM_DETAIL_TASK_RECORD_HPP

/// \file
/// The supervisor's task-record protocol: each supervised task has a record in the
/// pool, under the root `ftm.task.<name>`, that says which process supervises it, which
/// instance it started last and whether the task finished. Every change to it is one
/// transaction, so supervisors on different processes (a task's node and its backup)
/// agree on who holds the task. Nothing here forks, signals or waits for a process:
/// that is `detail/task_process.hpp`.

#include <ftm/detail/config.hpp>
#include <ftm/detail/process.hpp>
#include <ftm/engine.hpp>
#include <ftm/transaction.hpp>

#include <cstdint>
#include <string_view>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// The task's record in the pool, under the root `ftm.task.<name>`: who runs the task
/// now, so that a new supervisor can make sure no earlier instance still runs.
struct task_record {
  owner_id owner;          // the instance started last (pid and start time), 0 if none
  std::uint64_t starts;    // instances started over the pool's life
  owner_id supervisor;     // the process supervising the task, 0 if none yet
  std::uint64_t finished;  // a `task_end`
};

/// How a task finished, as its record keeps it (`task_record::finished`).
enum class task_end : std::uint64_t {
  running = 0,    ///< not finished (or stopped: a stopped task may be taken over)
  completed = 1,  ///< its instance ended normally
  gave_up = 2,    ///< its supervisor reached the restart limit
};

/// The prefix of every task record's root name.
inline constexpr std::string_view task_record_prefix = "ftm.task.";

/// A claim's `holder` when no supervisor holds the task, but the claim waits for one
/// to have held it (`claim_task` with `after_failure`), or the task finished.
inline constexpr owner_id unclaimed_task = ~owner_id{0};

/// What claiming a task found: `holder` is 0 if the caller now holds it.
struct task_claim {
  owner_id holder;    // a live other supervisor, `unclaimed_task`, or 0
  owner_id previous;  // the instance started last
  task_end finished;  // for backups: the task finished, and is not taken over
};

/// How `claim_task` claims: at once, or as a backup (which leaves a finished task
/// alone), and then only after a first supervisor claimed it (`after_failure`).
struct task_claim_rule {
  bool backup = false;
  bool after_failure = false;
};

/// Claims the task whose record is the root `record`, in one transaction, unless
/// another live process holds it: two live supervisors of one task would kill each
/// other's instances.
template <engine E>
task_claim claim_task(E& engine, std::string_view record, task_claim_rule rule) {
  const owner_id self = self_owner_id();
  return atomically(engine, [&](transaction<E>& tx) {
    auto rec = tx.open(reserved_root<task_record>(tx, record));
    if (rec->supervisor != 0 && rec->supervisor != self && owner_alive(rec->supervisor)) {
      return task_claim{rec->supervisor, rec->owner, task_end::running};
    }
    if (rule.backup && rec->finished != 0) {
      return task_claim{unclaimed_task, rec->owner, static_cast<task_end>(rec->finished)};
    }
    if (rule.after_failure && rec->supervisor == 0) {
      return task_claim{unclaimed_task, rec->owner, task_end::running};
    }
    rec->supervisor = self;
    rec->finished = 0;
    return task_claim{0, rec->owner, task_end::running};
  });
}

/// Records `owner` as the task's instance, before it may run; returns its start
/// number over the pool's life (1 for the first).
template <engine E>
std::uint64_t record_start(E& engine, std::string_view record, owner_id owner) {
  return atomically(engine, [&](transaction<E>& tx) {
    auto rec = tx.open(reserved_root<task_record>(tx, record));
    rec->owner = owner;
    return ++rec->starts;
  });
}

/// Records how the task ended, so that backups leave a finished task alone.
template <engine E>
void record_end(E& engine, std::string_view record, task_end end) {
  atomically(engine, [&](transaction<E>& tx) {
    tx.open(reserved_root<task_record>(tx, record))->finished = static_cast<std::uint64_t>(end);
  });
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_TASK_RECORD_HPP
