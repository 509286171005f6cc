// The stable containers: a string, a vector, a hash map and an ordered map in one pool,
// changed in transactions and read with the standard algorithms. Built and run by
// ctest, and quoted in docs/tutorial.md between the snippet markers.
#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>

namespace {

using pool_type = ftm::engines::dual_bank;
using transaction = ftm::transaction<pool_type>;

// [snippet:types]
struct book {
  std::uint64_t year;
  std::uint32_t pages;
};

/// A stable object can hold containers: through their handles, like any link.
struct library {
  ftm::stable<ftm::stable_hash_map<std::uint64_t, book>> by_isbn;
  ftm::stable<ftm::stable_map<std::uint64_t, std::uint64_t>> by_year;  // year*1e6+n -> isbn
  ftm::stable<ftm::stable_string> notes;
  ftm::stable<ftm::stable_vector<std::uint64_t>> loans;
};
// [end-snippet]

}  // namespace

int main() {
  pool_type pool{pool_type::options{.bank_size = std::size_t{16} << 20}};

  // [snippet:create]
  const auto lib = ftm::atomically(pool, [](transaction& tx) {
    auto l = tx.open(ftm::root<library>(tx, "library"));
    l->by_isbn = tx.create<ftm::stable_hash_map<std::uint64_t, book>>();
    l->by_year = tx.create<ftm::stable_map<std::uint64_t, std::uint64_t>>();
    l->notes = tx.create<ftm::stable_string>();
    l->loans = tx.create<ftm::stable_vector<std::uint64_t>>();
    return *l;  // the handles, copied out
  });
  // [end-snippet]

  // [snippet:change]
  ftm::atomically(pool, [&](transaction& tx) {
    auto books = ftm::open(tx, lib.by_isbn);  // a view, bound to this transaction
    auto years = ftm::open(tx, lib.by_year);
    for (std::uint64_t n = 0; n < 500; ++n) {
      const std::uint64_t isbn = 9780000000000 + n * 7;
      const book b{1950 + n % 70, static_cast<std::uint32_t>(100 + n)};
      books.insert_or_assign(isbn, b);
      years.insert(b.year * 1000000 + n, isbn);
    }
    books.erase(9780000000000);
    ftm::open(tx, lib.notes).append(std::string(200000, '.'));  // 200 KB: 49 chunks
    auto loans = ftm::open(tx, lib.loans);
    loans.push_back(9780000000007);
    loans.push_back(9780000000014);
  });
  // [end-snippet]

  // [snippet:read]
  const auto [count, pages, from_1960, notes] = ftm::atomically(pool, [&](transaction& tx) {
    auto books = ftm::open_read(tx, lib.by_isbn);  // shared locks only
    auto years = ftm::open_read(tx, lib.by_year);
    const auto pages =
        std::accumulate(books.begin(), books.end(), std::uint64_t{0},
                        [](std::uint64_t s, const auto& e) { return s + e.second.pages; });
    // A range scan in key order: the first ten books of 1960 or later.
    std::int64_t first = 0;
    for (auto it = years.lower_bound(1960 * 1000000); it != years.end() && first < 10; ++it)
      ++first;
    return std::tuple{books.size(), pages, first, ftm::open_read(tx, lib.notes).size()};
  });
  // [end-snippet]
  fmt::print("{} books, {} pages, {} from 1960 on in the first scan, {} bytes of notes\n", count,
             pages, from_1960, notes);

  // [snippet:strings]
  using titles_map = ftm::stable_map<ftm::stable_string, ftm::stable_string>;  // title -> text
  const auto titles = ftm::atomically(pool, [](transaction& tx) {
    auto t = ftm::open(tx, ftm::root<titles_map>(tx, "titles"));
    t.insert_or_assign("The Trial", "Someone must have slandered Josef K.");
    t.insert_or_assign("The Castle", std::string(300000, 'K'));  // 300 KB: the map owns it
    t.insert_or_assign("Amerika", "As Karl Rossmann, a poor boy of sixteen");
    t.insert_or_assign("The Castle", "It was late in the evening");  // frees the 300 KB
    t.erase("Amerika");
    return t.ref();
  });
  // Entries give their strings as ftm::string_ref: read in the transaction, copied out.
  const auto [first_the, opening] = ftm::atomically(pool, [&](transaction& tx) {
    auto t = ftm::open_read(tx, titles);
    const auto it = t.lower_bound("The ");
    return std::pair{it->first.str(), t.at("The Trial").substr(0, 17)};
  });
  // [end-snippet]
  fmt::print("first title from \"The \": {}; \"The Trial\" opens: {}\n", first_the, opening);

  const bool ok = count == 499 && pages == 499 * 100 + (499 * 500) / 2 && from_1960 == 10 &&
                  notes == 200000 && first_the == "The Castle" && opening == "Someone must have";
  return ok ? 0 : 1;
}
