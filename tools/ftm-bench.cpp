/// \file
/// ftm-bench: what transactions cost on this machine. Runs a workload (tiny, bank,
/// rpc) on an ftm pool, and on peers (SQLite, LMDB) when asked, for each thread count
/// of a sweep; prints throughput, abort and retry rates, latency percentiles and CPU
/// time per transaction; writes JSON, CSV and an SVG picture; and checks each run's
/// invariant, so that no number comes from a broken run.
///
/// Exit status: 0 when every run's check passed, 1 when a check or a run failed, 2 on
/// a bad command line.

#include "bench/options.hpp"
#include "bench/report.hpp"
#include "bench/runner.hpp"
#include "bench/system.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

/// Writes `text` to `file`, or to standard output for "-".
void write_file(const std::string& file, const std::string& text) {
  if (file == "-") {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw std::runtime_error(fmt::format("cannot write '{}'", file));
}

}  // namespace

int main(int argc, char** argv) {
  bench::options o;
  std::vector<std::unique_ptr<bench::system>> systems;
  try {
    o = bench::parse_options(argc, argv);
    systems.push_back(bench::make_ftm_system(o));
    for (const auto& name : o.peers) {
      auto peer = bench::make_peer(name, o);
      if (!peer) {
        throw bench::usage_error(
            fmt::format("--peers: this ftm-bench was built without {} (its development package "
                        "was not found when ftm was configured)",
                        name));
      }
      systems.push_back(std::move(peer));
    }
  } catch (const bench::usage_error& e) {
    if (std::string_view(e.what()).empty()) {
      fmt::print("{}", bench::usage_text);
      return 0;
    }
    fmt::print(stderr, "ftm-bench: {}\n\n{}", e.what(), bench::usage_text);
    return 2;
  }

  // With --json - or --csv -, standard output carries that and the table goes to stderr.
  std::FILE* table_out = o.json == "-" || o.csv == "-" ? stderr : stdout;
  std::vector<bench::run_result> results;
  bool all_ok = true;
  try {
    for (const int threads : o.threads) {
      for (auto& sys : systems) {
        results.push_back(bench::run(*sys, o, threads));
        const auto& r = results.back();
        if (r.checked && !r.check.ok) {
          all_ok = false;
          fmt::print(stderr, "ftm-bench: CHECK FAILED for {} with {} workers: {}\n", r.system,
                     r.workers, r.check.message);
        }
      }
    }
  } catch (const bench::usage_error& e) {
    fmt::print(stderr, "ftm-bench: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "ftm-bench: the run failed: {}\n", e.what());
    all_ok = false;
  }
  if (results.empty()) return 1;

  fmt::print(table_out, "ftm-bench: workload {}, {} per run{}\n", bench::workload_name(o.load),
             o.transactions != 0 ? fmt::format("{} transactions", o.transactions)
                                 : fmt::format("{} s", o.duration),
             o.check ? ", invariants checked" : ", checks OFF");
  fmt::print(table_out, "{}", bench::table(results));
  for (const auto& r : results) {
    if (r.checked && r.check.ok) {
      fmt::print(table_out, "  check {} ({} workers): {}\n", r.system, r.workers, r.check.message);
    }
  }
  try {
    if (!o.json.empty()) write_file(o.json, bench::json(results, o));
    if (!o.csv.empty()) write_file(o.csv, bench::csv(results));
    if (!o.plot.empty()) write_file(o.plot, bench::svg(results, o));
  } catch (const std::exception& e) {
    fmt::print(stderr, "ftm-bench: {}\n", e.what());
    return 1;
  }
  return all_ok ? 0 : 1;
}
