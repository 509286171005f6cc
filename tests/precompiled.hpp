// The headers nearly every test includes, precompiled once per build for all the test
// executables (tests/CMakeLists.txt, FTM_TEST_PCH): parsing them is about 4 to 7 s of
// each test's compile time. Tests still include what they use; this header only
// makes that cheaper.
#include <ftm/engines/dual_bank.hpp>
#include <ftm/engines/pmem.hpp>
#include <ftm/ftm.hpp>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>
