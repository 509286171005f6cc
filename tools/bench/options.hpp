#ifndef FTM_TOOLS_BENCH_OPTIONS_HPP
#define FTM_TOOLS_BENCH_OPTIONS_HPP

/// \file
/// ftm-bench's command line: what to run, how long, how many threads, where to write
/// the results. A bad option throws `usage_error`, which main() prints with the usage
/// and turns into exit status 2.

#include <fmt/format.h>

#include <bit>
#include <charconv>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace bench {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class workload { tiny, bank, rpc, ycsb_a, ycsb_b, ycsb_c, ycsb_e, ycsb_f };
enum class key_distribution { zipfian, uniform };
enum class engine_kind { dual_bank, pmem };
enum class level { none, process, power };  // none: dual_bank (memory only)

struct options {
  workload load = workload::tiny;
  engine_kind engine = engine_kind::dual_bank;
  level durability = level::none;
  std::string path;                // pmem: the pool file (removed before and after)
  std::vector<int> threads{1};     // a sweep: one run per count
  int processes = 1;               // worker processes, each with `threads` threads
  double duration = 2.0;           // seconds per run (unless `transactions` is set)
  std::uint64_t transactions = 0;  // per run, all workers together; 0: by duration
  double warmup = 0.5;             // seconds before measuring
  std::uint64_t objects = 0;       // objects, accounts or keys; 0: the workload's default
  std::uint32_t object_size = 64;  // bytes per object (tiny) or record (ycsb: 100 by default)
  std::uint32_t fields = 2;        // tiny: 8-byte fields changed per write
  double read_ratio = 0.0;         // share of read-only transactions, 0..1
  double hot_fraction = 0.0;       // --hot F:P: a share P of transactions go to a
  double hot_probability = 0.0;    //   share F of the objects (0: uniform)
  key_distribution distribution = key_distribution::zipfian;  // ycsb's key choice
  bool sessions = true;                                       // ftm::session per worker thread
  std::uint64_t seed = 1;
  std::size_t pool_size = 0;       // bytes per bank; 0: from objects and sizes
  std::vector<std::string> peers;  // sqlite, lmdb: run beside ftm, same workload
  bool check = true;
  bool miscount_for_test = false;  // tells each check one write more: every check must fail
  bool progress = true;            // live line on stderr, only if it is a terminal
  std::string json, csv, plot;     // output files ("-": standard output)
};

inline constexpr std::string_view usage_text = R"(usage: ftm-bench [options]

Runs transactions on an ftm pool and reports throughput, aborts and latency.

workload
  --workload W        tiny (update --fields fields of one object per transaction),
                      bank (random transfers among --objects accounts; the total is
                      checked), rpc (ftm::call to a reliable server in another process),
                      ycsb-a (50% reads, 50% updates), ycsb-b (95/5), ycsb-c (reads),
                      ycsb-e (95% scans of 1-100 records, 5% inserts; an ordered map),
                      ycsb-f (50% reads, 50% read-modify-writes): YCSB's core workloads
                      on a stable_hash_map (stable_map for ycsb-e)
  --objects N         objects, accounts or records (default: tiny 1 per worker, bank
                      1000, rpc 1 counter, ycsb 100000)
  --object-size B     bytes per object for tiny: 16, 64, 256, 1K, 4K, 16K, 64K,
                      256K or 1M (default 64); per record for ycsb: 100 (default)
                      or 1000
  --distribution D    ycsb: zipfian (default, YCSB's) or uniform (with --hot)
  --fields N          tiny: 8-byte fields changed per write (default 2, >= 2)
  --read-ratio R      share of read-only transactions, 0..1 (default 0)
  --hot F:P           contention: a share P of transactions pick among the first
                      share F of the objects (e.g. 0.01:0.9); default uniform

engine
  --engine E          dual_bank (default; in memory) or pmem (a pool file)
  --path FILE         pmem: the pool file to create (removed before and after;
                      default ./ftm-bench.pool)
  --durability D      pmem: process (default) or power
  --pool-size BYTES   bytes per bank (default: enough for the objects; K, M, G
                      suffixes)
  --sessions on|off   keep an ftm::session per worker thread (default on)

run
  --threads LIST      worker threads per process, a comma-separated sweep
                      (default 1; e.g. 1,2,4,8)
  --processes N       worker processes (default 1; rpc: client processes)
  --duration SECONDS  measured time per run (default 2)
  --transactions N    measured transactions per run instead of a duration
  --warmup SECONDS    unmeasured time before each run (default 0.5)
  --seed N            random seed (default 1)
  --peers LIST        also run the workload on sqlite and/or lmdb (when ftm-bench
                      was built with them), at the durability that matches
  --check on|off      verify each run's invariant at the end (default on): a
                      failed check exits with status 1
  --no-progress       no live progress line

output
  --json FILE         results as JSON ("-": standard output)
  --csv FILE          results as CSV ("-": standard output)
  --plot FILE.svg     throughput against threads and latency percentiles, as SVG
  -h, --help          this text
)";

namespace detail_options {

inline double to_double(std::string_view flag, std::string_view v) {
  double out = 0;
  const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc{} || p != v.data() + v.size()) {
    throw usage_error(fmt::format("{} wants a number, not '{}'", flag, v));
  }
  return out;
}

inline std::uint64_t to_count(std::string_view flag, std::string_view v, bool suffixes = false) {
  std::uint64_t out = 0;
  const auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc{} || p == v.data()) {
    throw usage_error(fmt::format("{} wants a whole number, not '{}'", flag, v));
  }
  std::string_view rest(p, static_cast<std::size_t>(v.data() + v.size() - p));
  if (suffixes && rest.size() == 1) {
    const int shift = rest == "K" || rest == "k" ? 10 : rest == "M" ? 20 : rest == "G" ? 30 : -1;
    if (shift < 0 || out > (~std::uint64_t{0} >> shift)) {
      throw usage_error(fmt::format("{}: '{}' is not a size (K, M or G)", flag, v));
    }
    return out << shift;
  }
  if (!rest.empty()) throw usage_error(fmt::format("{} wants a whole number, not '{}'", flag, v));
  return out;
}

inline bool to_switch(std::string_view flag, std::string_view v) {
  if (v == "on" || v == "true" || v == "1") return true;
  if (v == "off" || v == "false" || v == "0") return false;
  throw usage_error(fmt::format("{} wants on or off, not '{}'", flag, v));
}

inline std::vector<std::string_view> split(std::string_view v, char sep) {
  std::vector<std::string_view> out;
  while (true) {
    const auto at = v.find(sep);
    out.push_back(v.substr(0, at));
    if (at == std::string_view::npos) return out;
    v.remove_prefix(at + 1);
  }
}

}  // namespace detail_options

/// The options of `argv`, checked; throws `usage_error` naming the first bad one.
inline options parse_options(int argc, char** argv) {
  using namespace detail_options;
  options o;
  bool durability_given = false;
  bool size_given = false;
  bool distribution_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    std::string_view value;
    bool inline_value = false;
    if (const auto eq = flag.find('='); flag.starts_with("--") && eq != std::string_view::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      inline_value = true;
    }
    auto next = [&]() -> std::string_view {
      if (inline_value) return value;
      if (i + 1 >= argc) throw usage_error(fmt::format("{} needs a value", flag));
      return argv[++i];
    };
    if (flag == "-h" || flag == "--help") {
      throw usage_error("");  // main() prints the usage alone, and exits 0
    } else if (flag == "--workload") {
      const auto v = next();
      if (v == "tiny") {
        o.load = workload::tiny;
      } else if (v == "bank") {
        o.load = workload::bank;
      } else if (v == "rpc") {
        o.load = workload::rpc;
      } else if (v == "ycsb-a") {
        o.load = workload::ycsb_a;
      } else if (v == "ycsb-b") {
        o.load = workload::ycsb_b;
      } else if (v == "ycsb-c") {
        o.load = workload::ycsb_c;
      } else if (v == "ycsb-e") {
        o.load = workload::ycsb_e;
      } else if (v == "ycsb-f") {
        o.load = workload::ycsb_f;
      } else {
        throw usage_error(fmt::format(
            "unknown workload '{}' (tiny, bank, rpc, ycsb-a, ycsb-b, ycsb-c, ycsb-e or ycsb-f)",
            v));
      }
    } else if (flag == "--engine") {
      const auto v = next();
      if (v == "dual_bank") {
        o.engine = engine_kind::dual_bank;
      } else if (v == "pmem") {
        o.engine = engine_kind::pmem;
      } else {
        throw usage_error(fmt::format("unknown engine '{}' (dual_bank or pmem)", v));
      }
    } else if (flag == "--path") {
      o.path = next();
    } else if (flag == "--durability") {
      const auto v = next();
      durability_given = true;
      if (v == "process") {
        o.durability = level::process;
      } else if (v == "power") {
        o.durability = level::power;
      } else {
        throw usage_error(fmt::format("unknown durability '{}' (process or power)", v));
      }
    } else if (flag == "--pool-size") {
      o.pool_size = to_count(flag, next(), /*suffixes=*/true);
      if (o.pool_size == 0 || o.pool_size % (64 * 1024) != 0) {
        throw usage_error("--pool-size must be a multiple of 64K");
      }
    } else if (flag == "--sessions") {
      o.sessions = to_switch(flag, next());
    } else if (flag == "--threads") {
      o.threads.clear();
      for (const auto part : split(next(), ',')) {
        const auto n = to_count(flag, part);
        if (n < 1 || n > 256) throw usage_error("--threads: each count must be 1 to 256");
        o.threads.push_back(static_cast<int>(n));
      }
    } else if (flag == "--processes") {
      const auto n = to_count(flag, next());
      if (n < 1 || n > 64) throw usage_error("--processes must be 1 to 64");
      o.processes = static_cast<int>(n);
    } else if (flag == "--duration") {
      o.duration = to_double(flag, next());
      if (!(o.duration > 0 && o.duration <= 86400)) {
        throw usage_error("--duration must be more than 0 and at most 86400 seconds");
      }
    } else if (flag == "--transactions") {
      o.transactions = to_count(flag, next());
      if (o.transactions == 0) throw usage_error("--transactions must be at least 1");
    } else if (flag == "--warmup") {
      o.warmup = to_double(flag, next());
      if (!(o.warmup >= 0 && o.warmup <= 3600)) {
        throw usage_error("--warmup must be 0 to 3600 seconds");
      }
    } else if (flag == "--objects") {
      o.objects = to_count(flag, next());
      if (o.objects == 0) throw usage_error("--objects must be at least 1");
    } else if (flag == "--object-size") {
      const auto n = to_count(flag, next(), /*suffixes=*/true);
      if (n > (std::uint64_t{1} << 20)) throw usage_error("--object-size must be at most 1M");
      o.object_size = static_cast<std::uint32_t>(n);
      size_given = true;  // checked against the workload below
    } else if (flag == "--fields") {
      const auto n = to_count(flag, next());
      if (n < 2 || n > 1024) throw usage_error("--fields must be 2 to 1024");
      o.fields = static_cast<std::uint32_t>(n);
    } else if (flag == "--read-ratio") {
      o.read_ratio = to_double(flag, next());
      if (!(o.read_ratio >= 0 && o.read_ratio <= 1)) {
        throw usage_error("--read-ratio must be from 0 to 1");
      }
    } else if (flag == "--hot") {
      const auto parts = split(next(), ':');
      if (parts.size() != 2) throw usage_error("--hot wants F:P, e.g. 0.01:0.9");
      o.hot_fraction = to_double(flag, parts[0]);
      o.hot_probability = to_double(flag, parts[1]);
      if (!(o.hot_fraction > 0 && o.hot_fraction <= 1 && o.hot_probability >= 0 &&
            o.hot_probability <= 1)) {
        throw usage_error("--hot F:P wants 0 < F <= 1 and 0 <= P <= 1");
      }
    } else if (flag == "--distribution") {
      const auto v = next();
      if (v == "zipfian") {
        o.distribution = key_distribution::zipfian;
      } else if (v == "uniform") {
        o.distribution = key_distribution::uniform;
      } else {
        throw usage_error(fmt::format("unknown distribution '{}' (zipfian or uniform)", v));
      }
      distribution_given = true;
    } else if (flag == "--seed") {
      o.seed = to_count(flag, next());
    } else if (flag == "--peers") {
      o.peers.clear();
      for (const auto part : split(next(), ',')) {
        if (part != "sqlite" && part != "lmdb") {
          throw usage_error(fmt::format("unknown peer '{}' (sqlite or lmdb)", part));
        }
        o.peers.emplace_back(part);
      }
    } else if (flag == "--check") {
      o.check = to_switch(flag, next());
    } else if (flag == "--test-miscount") {  // for ftm-bench's own tests; not in the usage
      o.miscount_for_test = true;
    } else if (flag == "--no-progress") {
      o.progress = false;
    } else if (flag == "--json") {
      o.json = next();
    } else if (flag == "--csv") {
      o.csv = next();
    } else if (flag == "--plot") {
      o.plot = next();
    } else {
      throw usage_error(fmt::format("unknown option '{}'", flag));
    }
  }
  if (o.engine == engine_kind::dual_bank && durability_given) {
    throw usage_error("--durability is for --engine pmem (dual_bank keeps its pool in memory)");
  }
  if (o.engine == engine_kind::pmem) {
    if (o.durability == level::none) o.durability = level::process;
    if (o.path.empty()) o.path = "ftm-bench.pool";
  } else if (!o.path.empty()) {
    throw usage_error("--path is for --engine pmem");
  }
  const bool ycsb = o.load == workload::ycsb_a || o.load == workload::ycsb_b ||
                    o.load == workload::ycsb_c || o.load == workload::ycsb_e ||
                    o.load == workload::ycsb_f;
  if (ycsb) {
    // Each size is a record type the tool was compiled with.
    if (!size_given) o.object_size = 100;
    if (o.object_size != 100 && o.object_size != 1000) {
      throw usage_error(
          fmt::format("--object-size {}: a ycsb record is 100 or 1000 bytes", o.object_size));
    }
    if (o.read_ratio > 0) {
      throw usage_error(
          "--read-ratio: a ycsb workload has its own mix (choose ycsb-a, b, c, e "
          "or f)");
    }
    if (o.hot_probability > 0 && o.distribution == key_distribution::zipfian) {
      throw usage_error(
          "--hot: ycsb picks keys by a zipfian distribution; add "
          "--distribution uniform to pick a hot set instead");
    }
  } else {
    // Powers of 4: each size is a type the tool was compiled with.
    const std::uint64_t n = o.object_size;
    if (n < 16 || !std::has_single_bit(n) || std::countr_zero(n) % 2 != 0) {
      throw usage_error(
          fmt::format("--object-size {} is not one of 16, 64, 256, 1K, 4K, 16K, 64K, 256K, 1M", n));
    }
    if (distribution_given) throw usage_error("--distribution is for the ycsb workloads");
  }
  if (o.load == workload::tiny && o.fields * 8 > o.object_size) {
    throw usage_error(
        fmt::format("--fields {} do not fit in a {}-byte object", o.fields, o.object_size));
  }
  if (o.load == workload::rpc && !o.peers.empty()) {
    throw usage_error("--peers: the rpc workload has no peers");
  }
  if (o.load == workload::rpc && o.read_ratio > 0) {
    throw usage_error("--read-ratio: every call of the rpc workload writes");
  }
  if (o.load == workload::bank && o.objects == 1) {
    throw usage_error("--objects: a transfer needs at least 2 accounts");
  }
  if (o.json == "-" && o.csv == "-") throw usage_error("--json - and --csv - both want stdout");
  return o;
}

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_OPTIONS_HPP
