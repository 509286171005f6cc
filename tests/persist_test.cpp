// ftm::detail::persist, the cache-line flushes of power's cache-line mode: what CPUID
// finds (checked against /proc/cpuinfo), which lines a range covers, and that the
// flushes run here and change no byte.
#include <ftm/detail/persist.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace persist = ftm::detail::persist;

/// The first value of `key` in /proc/cpuinfo, or "" if it has none.
std::string cpuinfo(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    if (name == key) return line.substr(colon + 1);
  }
  return {};
}

bool has_flag(const std::string& flags, const std::string& flag) {
  std::istringstream words(flags);
  for (std::string w; words >> w;) {
    if (w == flag) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("persist: CPUID finds the best cache-line flush and the line size the kernel lists") {
#if defined(__x86_64__)
  const std::string flags = cpuinfo("flags");
  REQUIRE(!flags.empty());
  const persist::line_flush expected = has_flag(flags, "clwb") ? persist::line_flush::clwb
                                       : has_flag(flags, "clflushopt")
                                           ? persist::line_flush::clflushopt
                                           : persist::line_flush::clflush;
  CHECK(persist::this_cpu().flush == expected);
  CHECK(persist::available());
  const std::string size = cpuinfo("clflush size");
  REQUIRE(!size.empty());
  CHECK(persist::this_cpu().line == std::stoul(size));
  MESSAGE("flushes with ", persist::to_string(persist::this_cpu().flush), ", lines of ",
          persist::this_cpu().line, " bytes");
#else
  CHECK(!persist::available());
  CHECK(persist::this_cpu().flush == persist::line_flush::none);
#endif
}

TEST_CASE("persist: a range's lines start at or before it and end at or after it") {
  const std::size_t line = persist::this_cpu().line;
  REQUIRE(line >= 8);
  REQUIRE((line & (line - 1)) == 0);
  const std::uintptr_t base = 1 << 20;  // aligned to any line size
  CHECK(persist::line_start(base) == base);
  CHECK(persist::line_start(base + line - 1) == base);
  CHECK(persist::line_start(base + line) == base + line);
  CHECK(persist::line_span(base, 0) == 0);
  CHECK(persist::line_span(base, 1) == line);
  CHECK(persist::line_span(base, line) == line);
  CHECK(persist::line_span(base, line + 1) == 2 * line);
  CHECK(persist::line_span(base + line - 1, 2) == 2 * line);  // straddles a boundary
  CHECK(persist::line_span(base + 8, 40) == line);            // a header inside one line
}

TEST_CASE("persist: flushing and fencing a buffer's lines runs here and keeps its bytes") {
  std::vector<std::uint8_t> buf(4096 + 3);
  for (std::size_t i = 0; i < buf.size(); ++i)
    buf[i] = static_cast<std::uint8_t>(i * 7 + 1);
  const std::vector<std::uint8_t> before = buf;
  persist::flush_lines(buf.data() + 1, buf.size() - 1);  // unaligned start and end
  persist::flush_lines(buf.data(), 0);
  persist::fence();
  CHECK(buf == before);
}
