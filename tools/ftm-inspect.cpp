// ftm-inspect: shows what a pmem pool file holds, and verifies it, without changing it.
//
//   ftm-inspect [--check] POOL
//
// Prints the header, the named roots (each value decoded with the layout the pool
// recorded, and each container's kind, size and storage), the space used and free, the descriptors
// in use, and the ports (from the port directory, root `ftm.ports`) with their depths and counts.
// With --check, also verifies the pool's structures, its ports and, for a `power` pool, its redo
// log (missing, not the pool's, or cut short), and lists what is wrong. Exit status: 0 fine; 1
// --check found problems; 2 the file is not a usable pool (or the command line is wrong), with an
// ftm error message on stderr.
#include <ftm/engines/pmem.hpp>
#include <ftm/error.hpp>
#include <ftm/inspect.hpp>
#include <ftm/inspect_roots.hpp>
#include <ftm/port.hpp>

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr int exit_problems = 1;
constexpr int exit_bad_file = 2;

void usage(std::FILE* to) {
  fmt::print(to,
             "usage: ftm-inspect [--check] POOL\n"
             "  Shows the header, roots, space, descriptors and ports of an ftm pool file,\n"
             "  read-only.\n"
             "  --check  also verify its structures; exit 1 if any is wrong\n");
}

/// The magic number as its eight characters, most significant first ("ftm-dua1").
std::string magic_text(std::uint64_t magic) {
  std::string s;
  for (int shift = 56; shift >= 0; shift -= 8) {
    const auto c = static_cast<char>((magic >> shift) & 0xff);
    s += (c >= 0x20 && c < 0x7f) ? c : '.';
  }
  return s;
}

int inspect(const std::string& path, bool check) {
  const auto pool = ftm::engines::pmem::inspect(path);
  const auto& h = pool.header();

  fmt::print("pool {}\n", path);
  fmt::print("header\n");
  fmt::print("  magic           {:#018x} ({})\n", h.magic, magic_text(h.magic));
  fmt::print("  format version  {}\n", h.version);
  fmt::print("  pool id         {:#018x}\n", h.pool_id);
  fmt::print("  bank size       {} bytes ({} chunks of {} bytes)\n", h.bank_size, h.chunks,
             pool.chunk_size);
  fmt::print("  log capacity    {} objects per transaction\n", h.max_objects_per_transaction);
  fmt::print("  descriptors     {} (transactions at once)\n", h.max_transactions);
  fmt::print("  control region  {} bytes\n", h.control_size);
  fmt::print("  file size       {} bytes\n", h.file_size);
  fmt::print("  boot id         {} ({})\n", h.boot_id.empty() ? "(none)" : h.boot_id,
             h.earlier_boot ? "an earlier boot: every owner is dead" : "this boot");
  // The level of its current users, or of its last ones.
  if (h.level == ftm::durability::power) {
    fmt::print("  durability      power, redo log flushed by {}\n", ftm::to_string(h.log_flush));
    if (h.log_missing) {
      fmt::print("  redo log        {} MISSING (pmem::open refuses the pool)\n",
                 h.log_path.string());
    }
  } else {
    fmt::print("  durability      process\n");
  }
  fmt::print("  protected mode  {}\n",
             !h.protected_mode   ? "off"
             : h.protection_keys ? "on, with protection keys (its latest opener's threads may "
                                   "write only objects their transactions opened)"
                                 : "on, with mprotect (its latest opener may write only objects "
                                   "it opened)");

  const auto roots = pool.roots();
  fmt::print("roots ({})\n", roots.size());
  for (const auto& r : roots) {
    fmt::print("  '{}'  type {}  size {}  fingerprint {:#018x}  offset {}\n", r.name, r.type,
               r.size, r.fingerprint, r.offset);
    if (r.layout == 0) continue;  // a pool's own record, or a type without one
    // The value, decoded with the layout the pool recorded; containers walked.
    try {
      const auto bytes = pool.object(r.layout);
      const std::string layout(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      const auto v = ftm::decode_root(pool, r, layout);
      fmt::print("      value {}\n", v.text);
      for (const auto& c : v.containers) {
        fmt::print("      {} at offset {}: {} {}, storage {} objects, {} bytes\n", c.kind, c.offset,
                   c.size, c.kind == "stable_string" ? "bytes" : "elements", c.objects, c.bytes);
        for (const auto& p : c.problems)
          fmt::print("        damaged: {}\n", p);
      }
    } catch (const ftm::error& e) {
      fmt::print("      value unreadable: {}\n", e.what());
    }
  }

  // The space figures come from the same walk as --check; its problems are shown
  // only when asked for.
  const auto report = pool.check();
  fmt::print("space\n");
  fmt::print("  chunks          {} in all, {} in use, {} free\n", report.chunks,
             report.chunks - report.free_chunks, report.free_chunks);
  fmt::print("  objects         {} live, {} bytes (without headers)\n", report.objects,
             report.bytes_in_use);
  fmt::print("  bytes free      {} (free chunks and free blocks)\n", report.bytes_free);

  const auto descriptors = pool.descriptors();
  fmt::print("descriptors in use ({})\n", descriptors.size());
  for (const auto& d : descriptors) {
    fmt::print("  #{}  pid {} ({})  {}  {} log entries\n", d.index, d.pid,
               d.alive ? "alive" : "dead", d.state_name(), d.count);
    for (const auto& e : d.log) {
      fmt::print("      {:<5}  offset {}  length {}\n", ftm::to_string(e.kind), e.offset, e.length);
    }
  }

  std::vector<std::string> problems = report.problems;
  auto listing = ftm::inspect_ports(pool);
  problems.insert(problems.end(), listing.problems.begin(), listing.problems.end());
  fmt::print("ports ({})\n", listing.ports.size());
  for (const auto& p : listing.ports) {
    if (!p.readable) {
      fmt::print("  offset {}  {}  capacity {}  (damaged: see --check)\n", p.offset, p.type,
                 p.stats.capacity);
      continue;
    }
    const ftm::port_stats& st = p.stats;
    fmt::print(
        "  offset {}  {}  depth {}/{}  in flight {}  sent {}  received {}  redelivered {}  "
        "dead-lettered {}",
        p.offset, p.type, st.depth, st.capacity, st.in_flight, st.sent, st.received, st.redelivered,
        st.dead_lettered);
    if (p.dead_letter != 0) fmt::print("  dead letters to offset {}", p.dead_letter);
    fmt::print("\n");
  }

  if (!check) return 0;
  if (problems.empty()) {
    fmt::print("check: ok\n");
    return 0;
  }
  fmt::print("check: {} problem{}\n", problems.size(), problems.size() == 1 ? "" : "s");
  for (const auto& p : problems)
    fmt::print("  - {}\n", p);
  return exit_problems;
}

}  // namespace

int main(int argc, char** argv) {
  bool check = false;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--check") {
      check = true;
    } else if (arg == "-h" || arg == "--help") {
      usage(stdout);
      return 0;
    } else if (arg.starts_with("-") || !path.empty()) {
      usage(stderr);
      return exit_bad_file;
    } else {
      path = arg;
    }
  }
  if (path.empty()) {
    usage(stderr);
    return exit_bad_file;
  }
  try {
    return inspect(path, check);
  } catch (const ftm::error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ftm-inspect: {}\n", e.what());
    return exit_bad_file;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ftm-inspect: {}\n", e.what());
    return exit_bad_file;
  }
}
