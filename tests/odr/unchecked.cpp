// The unchecked half of the ODR test: FTM_CHECKED off, whatever the build type says.
#undef FTM_CHECKED
#define FTM_CHECKED 0
#include "uses.hpp"

bool unchecked_use_after_commit_throws(const std::filesystem::path& pool_file) {
  return ftm_odr_test::use_after_commit_throws(pool_file);
}
