#ifndef FTM_DETAIL_CONTAINER_NODES_HPP
#define FTM_DETAIL_CONTAINER_NODES_HPP

/// \file
/// How the stable containers reach their nodes: internal stable objects opened by
/// offset through the transaction (its locks, its undo), without typed handles,
/// so that a container's view can keep plain pointers for as long as it is open.

#include <ftm/detail/config.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/stable.hpp>
#include <ftm/transaction.hpp>

#include <fmt/format.h>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <string_view>
#include <type_traits>

namespace ftm::FTM_ABI_NAMESPACE::detail {

/// A 64-bit mix (splitmix64's finaliser): spreads a hash whose low bits are poor
/// (`std::hash<int>` is the identity) over every bit a container uses.
constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

/// One entry of a stable map, its `value_type`: named as `std::pair`'s members, but
/// trivially copyable (a `std::pair` is not), so that it can live in a pool.
template <class K, class V>
struct map_entry {
  K first;
  V second;
};

/// Key equality: `==` where the key has it, its bytes otherwise.
template <class K>
bool keys_equal(const K& a, const K& b) noexcept {
  if constexpr (std::equality_comparable<K>) {
    return a == b;
  } else {
    return std::memcmp(&a, &b, sizeof(K)) == 0;
  }
}

/// The node of type `N` at `off`, opened for reading.
template <class N, engine E>
const N* read_node(transaction<E>& tx, std::uint64_t off) {
  return reinterpret_cast<const N*>(byte_access::open_read(tx, off, object_type_of<N>));
}

/// Bytes `[at, at + n)` of the node of type `N` at `off`, opened for reading without
/// copying the rest; `seen` is 0 before the first part of this node, and every part
/// read with it is of one committed value (see `ftm::partial_read_engine`).
template <class N, engine E>
const std::byte* read_node_part(transaction<E>& tx, std::uint64_t off, std::size_t at,
                                std::size_t n, std::uint64_t& seen) {
  return byte_access::open_read_part(tx, off, object_type_of<N>, at, n, seen);
}

/// A `T` at byte `at` of the node of type `N` at `off`, read as a part of it.
template <class T, class N, engine E>
T read_node_field(transaction<E>& tx, std::uint64_t off, std::size_t at, std::uint64_t& seen) {
  static_assert(std::is_trivially_copyable_v<T>);
  T v;
  std::memcpy(&v, read_node_part<N>(tx, off, at, sizeof(T), seen), sizeof(T));
  return v;
}

/// The node of type `N` at `off`, opened for writing.
template <class N, engine E>
N* write_node(transaction<E>& tx, std::uint64_t off) {
  return reinterpret_cast<N*>(byte_access::open_write(tx, off, object_type_of<N>));
}

/// A new node of type `N`, value-initialised; an abort of `tx` frees it.
template <class N, engine E>
std::uint64_t new_node(transaction<E>& tx) {
  static_assert(check_stable_type<N>());
  const allocation a = byte_access::allocate(tx, object_type_of<N>);
  ::new (a.storage) N{};
  return a.offset;
}

/// Frees the node of type `N` at `off`; an abort of `tx` keeps it.
template <class N, engine E>
void free_node(transaction<E>& tx, std::uint64_t off) {
  tx.destroy(stable<N>{from_offset, off});
}

/// Refuses a container's use outside the transaction that opened it.
template <engine E>
void require_live(const transaction<E>* tx, std::string_view what) {
  if (tx == nullptr || !tx->active()) {
    throw usage_error(fmt::format(
        "{} used after its transaction ended (commit or abort closes every container it "
        "opened; open it again in the next transaction)",
        what));
  }
}

}  // namespace ftm::FTM_ABI_NAMESPACE::detail

#endif  // FTM_DETAIL_CONTAINER_NODES_HPP
