#ifndef FTM_DETAIL_BANK_COMMIT_LOG_HPP
#define FTM_DETAIL_BANK_COMMIT_LOG_HPP

/// \file
/// The hook commit and recovery call between a commit's two phases (`pmem`'s `power`
/// level keeps its redo log behind it).

#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A durability layer that commit calls between its two phases (`pmem`'s `power`
/// level keeps a redo log with it). Without one (`process`), commit calls nothing.
class commit_log {
 public:
  /// Returns once the after-images of every object `d` holds for writing are on the
  /// medium; called after phase 1 (COMMITTING) and before phase 2, by the committer or
  /// (`recovering`) by whoever completes a dead committer's phase 2.
  virtual void make_durable(tx_id d, bool recovering) noexcept = 0;
  /// Phase 2 of `d` is complete: the second bank holds its after-images.
  virtual void applied(tx_id d) noexcept = 0;

 protected:
  commit_log() = default;
  commit_log(const commit_log&) = default;
  commit_log& operator=(const commit_log&) = default;
  ~commit_log() = default;
};

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_BANK_COMMIT_LOG_HPP
