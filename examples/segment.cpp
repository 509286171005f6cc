// The paper's section 4.1 example, written with ftm: a stable segment of ten
// 1 KiB pages, created atomically, then page 0 moved to page 1 atomically.
//
// As in the paper, the `segment` class knows nothing of transactions: it reads and
// writes pages of its own array. The code that uses a segment manages the
// transaction and the object's visibility (open, close) explicitly.
//
// Exit status 0 only if every check below holds; ctest runs this program.

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

int failures = 0;

void expect(bool ok, std::string_view what) {
  fmt::print("  [{}] {}\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

}  // namespace

// [snippet:segment]
constexpr int page_size = 1024;
using page = std::array<char, page_size>;  // the paper's `typedef char Page[page_size]`

/// A stable segment of ten pages. A plain, trivially copyable class: nothing in it
/// refers to ftm, yet its objects can live in a pool.
class segment {
 public:
  static constexpr int segment_size = 10 * page_size;  // 10 KiB

  void read_page(int no_page, page& p) const {
    const int offset = (no_page * page_size) % segment_size;
    std::copy_n(s_.begin() + offset, page_size, p.begin());
  }
  void write_page(int no_page, const page& p) {
    const int offset = (no_page * page_size) % segment_size;
    std::copy_n(p.begin(), page_size, s_.begin() + offset);
  }

 private:
  std::array<char, segment_size> s_{};  // the segment is an array of characters
};
// [end-snippet]

static_assert(ftm::stable_type<segment>);

namespace {

/// The first byte of each page, so the output shows what the segment holds.
std::string summary(const segment& seg) {
  std::string out;
  page first{};
  for (int i = 0; i < 10; ++i) {
    seg.read_page(i, first);
    out += first[0] == '\0' ? '.' : first[0];
  }
  return out;
}

/// Reads the segment in a transaction of its own, and prints its pages.
std::string show(ftm::engines::dual_bank& pool, ftm::stable<segment> s) {
  ftm::transaction tx{pool};
  tx.begin();
  auto seg = tx.open_read(s);
  std::string pages = summary(*seg);
  seg.close();
  tx.commit();
  fmt::print("  pages 0..9 begin with: {}   ('.' is an empty page)\n", pages);
  return pages;
}

}  // namespace

int main() {
  // The STM board: two banks of 1 MiB each (the paper's board had two of 32 MiB).
  ftm::engines::dual_bank pool{1 << 20};

  fmt::print("1. Atomic creation of the stable segment\n");
  // [snippet:create]
  ftm::transaction tx{pool};  // the paper's `Transaction T`: made inactive
  ftm::stable<segment> s;     // a handle to a stable segment: an offset, not a pointer
  page p{};                   // a volatile page

  tx.begin();  // atomic creation of the stable segment
  s = tx.create<segment>();
  tx.commit();
  // [end-snippet]
  fmt::print("  created {}\n", s);
  expect(static_cast<bool>(s), "the segment exists after the commit");
  expect(show(pool, s) == "..........", "a new segment holds ten empty pages");

  fmt::print("\n2. Fill pages 0, 2 and 9 in one transaction\n");
  tx.begin();
  {
    auto seg = tx.open(s);
    for (int no : {0, 2, 9}) {
      p.fill(static_cast<char>('A' + no));
      seg->write_page(no, p);
    }
  }  // an opened handle also closes at the end of its scope
  tx.commit();
  expect(show(pool, s) == "A.C......J", "pages 0, 2 and 9 are written");

  fmt::print("\n3. Atomic move of page 0 to page 1\n");
  // [snippet:move]
  tx.begin();  // atomic move of page 0 to page 1
  auto seg = tx.open(s);
  seg->read_page(0, p);
  seg->write_page(1, p);
  seg.close();
  tx.commit();
  // [end-snippet]
  expect(show(pool, s) == "AAC......J", "page 1 now holds a copy of page 0");

  fmt::print("\n4. A move of page 2 to page 3 that aborts\n");
  // [snippet:abort]
  tx.begin();
  auto moving = tx.open(s);
  moving->read_page(2, p);
  moving->write_page(3, p);  // done in place, in the working bank...
  moving.close();
  tx.abort();  // ...and undone from the second bank, which kept the committed state
  // [end-snippet]
  expect(show(pool, s) == "AAC......J", "the aborted move left the segment unchanged");

  fmt::print("\n5. A transaction destroyed while active aborts too\n");
  {
    ftm::transaction scoped{pool};
    scoped.begin();
    auto w = scoped.open(s);
    p.fill('Z');
    w->write_page(4, p);
  }  // never committed: the destructor aborts it
  expect(show(pool, s) == "AAC......J", "the unfinished transaction left no trace");

  const auto report = pool.check();
  fmt::print("\npool: {}; check: {} object(s), {} bytes in use, {}\n", pool.stats(), report.objects,
             report.bytes_in_use, report.ok() ? "consistent" : "PROBLEMS");
  for (const auto& p : report.problems)
    fmt::print("  problem: {}\n", p);
  expect(report.ok(), "pool.check() finds both banks in agreement and no lock held");

  if (failures != 0) {
    fmt::print("\nsegment: {} check(s) FAILED\n", failures);
    return EXIT_FAILURE;
  }
  fmt::print("\nsegment: all checks passed\n");
  return EXIT_SUCCESS;
}
