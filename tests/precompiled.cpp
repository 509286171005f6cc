// The translation unit that builds tests/precompiled.hpp's precompiled header, which
// every test executable reuses (tests/CMakeLists.txt).
