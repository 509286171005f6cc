/// \file
/// doctest's `main()`, compiled once and linked into every test executable, so the
/// test sources themselves only hold test cases.

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
