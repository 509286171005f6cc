/// \file
/// The table, JSON and CSV reports.

#include "report.hpp"

#include <fmt/format.h>

#include <string>

namespace bench {
namespace {

/// Nanoseconds as a person reads them: 850 ns, 12.3 us, 4.56 ms, 1.20 s.
std::string duration_text(double ns) {
  if (ns < 1e3) return fmt::format("{:.0f} ns", ns);
  if (ns < 1e6) return fmt::format("{:.1f} us", ns / 1e3);
  if (ns < 1e9) return fmt::format("{:.2f} ms", ns / 1e6);
  return fmt::format("{:.2f} s", ns / 1e9);
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

double per_second(std::uint64_t n, const run_result& r) {
  return r.seconds > 0 ? static_cast<double>(n) / r.seconds : 0.0;
}

double cpu_per_tx_ns(const run_result& r) {
  return r.transactions == 0 ? 0.0 : r.cpu_seconds * 1e9 / static_cast<double>(r.transactions);
}

}  // namespace

std::string_view workload_name(workload w) noexcept {
  switch (w) {
    case workload::tiny: return "tiny";
    case workload::bank: return "bank";
    case workload::rpc: return "rpc";
    case workload::ycsb_a: return "ycsb-a";
    case workload::ycsb_b: return "ycsb-b";
    case workload::ycsb_c: return "ycsb-c";
    case workload::ycsb_e: return "ycsb-e";
    case workload::ycsb_f: return "ycsb-f";
  }
  return "unknown";
}

std::string table(const std::vector<run_result>& results) {
  std::string out =
      fmt::format("{:<28} {:>7} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n",
                  "system", "workers", "tx/s", "aborts/s", "retry %", "p50", "p90", "p99", "p99.9",
                  "max", "cpu/tx", "check");
  for (const auto& r : results) {
    const auto attempts = r.transactions + r.retries;
    out += fmt::format(
        "{:<28} {:>7} {:>12.0f} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n", r.system,
        r.processes > 1 ? fmt::format("{}x{}", r.processes, r.threads)
                        : fmt::format("{}", r.workers),
        r.throughput(), r.counts_aborts ? fmt::format("{:.0f}", per_second(r.aborts, r)) : "-",
        r.counts_aborts && attempts > 0
            ? fmt::format("{:.2f}",
                          100.0 * static_cast<double>(r.retries) / static_cast<double>(attempts))
            : "-",
        duration_text(static_cast<double>(r.latency.percentile(50))),
        duration_text(static_cast<double>(r.latency.percentile(90))),
        duration_text(static_cast<double>(r.latency.percentile(99))),
        duration_text(static_cast<double>(r.latency.percentile(99.9))),
        duration_text(static_cast<double>(r.latency.max())), duration_text(cpu_per_tx_ns(r)),
        !r.checked   ? "off"
        : r.check.ok ? "ok"
                     : "FAILED");
  }
  return out;
}

std::string json(const std::vector<run_result>& results, const options& o) {
  std::string out = "{\n";
  out += fmt::format("  \"workload\": {},\n", json_string(workload_name(o.load)));
  out += fmt::format(
      "  \"options\": {{\"engine\": {}, \"durability\": {}, \"objects\": {}, \"object_size\": {}, "
      "\"fields\": {}, \"read_ratio\": {}, \"hot_fraction\": {}, \"hot_probability\": {}, "
      "\"sessions\": {}, \"processes\": {}, \"duration\": {}, \"transactions\": {}, \"warmup\": "
      "{}, "
      "\"seed\": {}}},\n",
      json_string(o.engine == engine_kind::pmem ? "pmem" : "dual_bank"),
      json_string(o.durability == level::power     ? "power"
                  : o.durability == level::process ? "process"
                                                   : "none"),
      o.objects, o.object_size, o.fields, o.read_ratio, o.hot_fraction, o.hot_probability,
      o.sessions ? "true" : "false", o.processes, o.duration, o.transactions, o.warmup, o.seed);
  out += "  \"results\": [\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    std::string latency;
    for (const double p : reported_percentiles)
      latency += fmt::format("\"p{}\": {}, ", p, r.latency.percentile(p));
    out += fmt::format(
        "    {{\"system\": {}, \"threads\": {}, \"processes\": {}, \"workers\": {}, "
        "\"seconds\": {:.6f}, \"transactions\": {}, \"read_only\": {}, \"throughput\": {:.3f}, "
        "\"aborts\": {}, \"conflicts\": {}, \"retries\": {}, \"cpu_ns_per_transaction\": {:.1f}, "
        "\"latency_ns\": {{{}\"min\": {}, \"mean\": {:.1f}, \"max\": {}}}, "
        "\"check\": {{\"ran\": {}, \"ok\": {}, \"message\": {}}}}}{}\n",
        json_string(r.system), r.threads, r.processes, r.workers, r.seconds, r.transactions,
        r.read_only, r.throughput(), r.counts_aborts ? fmt::format("{}", r.aborts) : "null",
        r.counts_aborts ? fmt::format("{}", r.conflicts) : "null",
        r.counts_aborts ? fmt::format("{}", r.retries) : "null", cpu_per_tx_ns(r), latency,
        r.latency.min(), r.latency.mean(), r.latency.max(), r.checked ? "true" : "false",
        !r.checked || r.check.ok ? "true" : "false", json_string(r.check.message),
        i + 1 < results.size() ? "," : "");
  }
  out += "  ]\n}\n";
  return out;
}

std::string csv(const std::vector<run_result>& results) {
  std::string out =
      "system,threads,processes,workers,seconds,transactions,read_only,throughput,aborts,"
      "conflicts,retries,cpu_ns_per_transaction,p50_ns,p90_ns,p99_ns,p99.9_ns,max_ns,check\n";
  for (const auto& r : results) {
    out += fmt::format("{},{},{},{},{:.6f},{},{},{:.3f},{},{},{},{:.1f},{},{},{},{},{},{}\n",
                       csv_field(r.system), r.threads, r.processes, r.workers, r.seconds,
                       r.transactions, r.read_only, r.throughput(),
                       r.counts_aborts ? fmt::format("{}", r.aborts) : "",
                       r.counts_aborts ? fmt::format("{}", r.conflicts) : "",
                       r.counts_aborts ? fmt::format("{}", r.retries) : "", cpu_per_tx_ns(r),
                       r.latency.percentile(50), r.latency.percentile(90), r.latency.percentile(99),
                       r.latency.percentile(99.9), r.latency.max(),
                       !r.checked   ? "off"
                       : r.check.ok ? "ok"
                                    : "failed");
  }
  return out;
}

}  // namespace bench
