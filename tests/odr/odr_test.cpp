// One program, two translation units that include the same ftm headers, one with
// FTM_CHECKED on (checked.cpp) and one off (unchecked.cpp), both using the same types.
// Each keeps its own bodies: the checked half still catches a use after commit, the
// unchecked half still does not pay for the check. The halves are compiled without
// inlining, so every call goes through a linked symbol: were the two bodies one symbol,
// the linker would give both halves the same one and one of these checks would fail.
// (check_symbols.cmake checks the names themselves.)
#include <doctest/doctest.h>

#include <filesystem>

#include "../engines.hpp"

bool checked_use_after_commit_throws(const std::filesystem::path& pool_file);
bool unchecked_use_after_commit_throws(const std::filesystem::path& pool_file);

TEST_CASE("a checked and an unchecked translation unit each keep their own ftm") {
  CHECK(checked_use_after_commit_throws(ftm_test::scratch_file("checked")));
  CHECK_FALSE(unchecked_use_after_commit_throws(ftm_test::scratch_file("unchecked")));
}
