// Rule: a raw pointer dangles once the pool is mapped at another address (another
// process, a restart); reflected types are checked member by member where objects
// are created.
//
// expected-error-gcc: raw pointer
// expected-error-clang: raw pointer
// expected-error: raw_pointer_member<node, ftm::[a-z_:]*detail::member_name<'n', 'e', 'x', 't'>

#include <ftm/engines/dual_bank.hpp>
#include <ftm/ftm.hpp>

#include <boost/hana/define_struct.hpp>

struct node {
  BOOST_HANA_DEFINE_STRUCT(node, (long, value), (int*, next));
};

ftm::stable<node> push(ftm::transaction<ftm::engines::dual_bank>& tx) {
  return tx.create(node{1, nullptr});
}
