/// \file
/// The picture: throughput against workers on the left, latency percentiles (at the
/// largest worker count of each system) on a log scale on the right, one colour per
/// system. Plain SVG 1.1, drawn here: no plotting program is needed.

#include "report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace bench {
namespace {

constexpr const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                   "#9467bd", "#8c564b", "#e377c2", "#17becf"};

std::string escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

/// A round step for about `n` ticks from 0 to `max`.
double nice_step(double max, int n) {
  const double raw = max / n;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (raw <= m * magnitude) return m * magnitude;
  }
  return 10 * magnitude;
}

std::string si(double v) {
  if (v >= 1e9) return fmt::format("{:.3g}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.3g}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.3g}k", v / 1e3);
  return fmt::format("{:.3g}", v);
}

std::string time_label(double ns) {
  if (ns >= 1e9) return fmt::format("{:.3g} s", ns / 1e9);
  if (ns >= 1e6) return fmt::format("{:.3g} ms", ns / 1e6);
  if (ns >= 1e3) return fmt::format("{:.3g} us", ns / 1e3);
  return fmt::format("{:.3g} ns", ns);
}

struct panel {
  double x, y, w, h;  // the plotting area
};

}  // namespace

std::string svg(const std::vector<run_result>& results, const options& o) {
  // The systems in order of first appearance, each with its runs by worker count.
  std::vector<std::string> systems;
  std::map<std::string, std::vector<const run_result*>> runs;
  for (const auto& r : results) {
    if (!runs.contains(r.system)) systems.push_back(r.system);
    runs[r.system].push_back(&r);
  }
  const double legend_rows = static_cast<double>((systems.size() + 2) / 3);
  const double width = 1000, height = 430 + 20 * legend_rows;
  const panel left{80, 70, 380, 300};
  const panel right{580, 70, 380, 300};
  std::string out = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      width, height);
  out += fmt::format(
      "<text x=\"{}\" y=\"28\" font-size=\"17\" font-weight=\"bold\" text-anchor=\"middle\">"
      "ftm-bench: {} workload, {}{}</text>\n",
      width / 2, workload_name(o.load), o.engine == engine_kind::pmem ? "pmem" : "dual_bank",
      o.durability == level::power     ? " at power durability"
      : o.durability == level::process ? " at process durability"
                                       : " (in memory)");

  // Left: throughput against workers; on a log scale when the systems differ by more
  // than 30x, so that the slower ones are not flat lines on the floor.
  double max_workers = 1, max_tx = 1, min_tx = 1e300;
  for (const auto& r : results) {
    max_workers = std::max(max_workers, static_cast<double>(r.workers));
    max_tx = std::max(max_tx, r.throughput());
    if (r.throughput() > 0) min_tx = std::min(min_tx, r.throughput());
  }
  const bool log_tx = min_tx < 1e300 && max_tx / min_tx > 30;
  const double w_top = std::max(2.0, max_workers);
  auto lx = [&](double workers) { return left.x + (workers - 1) / (w_top - 1) * left.w; };
  std::vector<double> tx_ticks;
  double tx_lo = 0, tx_hi = 1;
  if (log_tx) {
    tx_lo = std::floor(std::log10(min_tx));
    tx_hi = std::ceil(std::log10(max_tx));
    if (tx_hi <= tx_lo) tx_hi = tx_lo + 1;
    for (double d = tx_lo; d <= tx_hi + 0.01; d += 1)
      tx_ticks.push_back(std::pow(10.0, d));
  } else {
    const double tx_step = nice_step(max_tx, 5);
    tx_hi = std::ceil(max_tx / tx_step) * tx_step;
    for (double v = 0; v <= tx_hi + tx_step / 2; v += tx_step)
      tx_ticks.push_back(v);
  }
  auto ly = [&](double tx) {
    if (log_tx) {
      const double l = std::log10(std::max(tx, std::pow(10.0, tx_lo)));
      return left.y + left.h - (l - tx_lo) / (tx_hi - tx_lo) * left.h;
    }
    return left.y + left.h - tx / tx_hi * left.h;
  };
  out += "<g class=\"axes\" stroke=\"#999\" stroke-width=\"1\">\n";
  for (const double v : tx_ticks) {
    out += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e5e5e5\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\" stroke=\"none\" "
        "fill=\"#333\">{5}</text>\n",
        left.x, ly(v), left.x + left.w, left.x - 6, ly(v) + 4, si(v));
  }
  const double w_step = std::max(1.0, nice_step(w_top - 1, 6));
  for (double v = 1; v <= w_top + 0.01; v += w_step) {
    out += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#e5e5e5\"/>"
        "<text x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\" stroke=\"none\" "
        "fill=\"#333\">{4}</text>\n",
        lx(v), left.y, left.y + left.h, left.y + left.h + 16, v);
  }
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\"/>\n</g>\n",
                     left.x, left.y, left.w, left.h);
  out += fmt::format(
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">throughput "
      "(transactions/s{})</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">workers "
      "(threads x processes)</text>\n",
      left.x + left.w / 2, left.y - 10, log_tx ? ", log scale" : "", left.x + left.w / 2,
      left.y + left.h + 34);

  // Right: latency percentiles on a log scale.
  const char* labels[] = {"p50", "p90", "p99", "p99.9", "max"};
  double lo = 1e18, hi = 1;
  for (const auto& [name, list] : runs) {
    const run_result* r = list.back();
    for (const double p : reported_percentiles) {
      lo = std::min(lo, std::max(1.0, static_cast<double>(r->latency.percentile(p))));
    }
    hi = std::max(hi, static_cast<double>(r->latency.max()));
  }
  if (lo > hi) lo = 1;
  const double dlo = std::floor(std::log10(lo));
  const double dhi = std::max(dlo + 1, std::ceil(std::log10(std::max(hi, 1.0))));
  auto rx = [&](int i) { return right.x + (i + 0.5) * right.w / 5; };
  auto ry = [&](double ns) {
    const double l = std::log10(std::max(ns, 1.0));
    return right.y + right.h - (l - dlo) / (dhi - dlo) * right.h;
  };
  out += "<g class=\"axes\" stroke=\"#999\" stroke-width=\"1\">\n";
  for (double d = dlo; d <= dhi + 0.01; d += 1) {
    const double v = std::pow(10.0, d);
    out += fmt::format(
        "<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#e5e5e5\"/>"
        "<text x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\" stroke=\"none\" "
        "fill=\"#333\">{5}</text>\n",
        right.x, ry(v), right.x + right.w, right.x - 6, ry(v) + 4, time_label(v));
  }
  for (int i = 0; i < 5; ++i) {
    out += fmt::format(
        "<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" stroke=\"none\" "
        "fill=\"#333\">{}</text>\n",
        rx(i), right.y + right.h + 16, labels[i]);
  }
  out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\"/>\n</g>\n",
                     right.x, right.y, right.w, right.h);
  out += fmt::format(
      "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">latency per transaction "
      "(at each system's most workers)</text>\n",
      right.x + right.w / 2, right.y - 10);

  // One group per system: its throughput line, its latency line, its legend entry.
  for (std::size_t s = 0; s < systems.size(); ++s) {
    const auto& name = systems[s];
    const auto* colour = palette[s % std::size(palette)];
    auto list = runs[name];
    std::sort(list.begin(), list.end(),
              [](const run_result* a, const run_result* b) { return a->workers < b->workers; });
    out += fmt::format("<g class=\"series\" data-system=\"{}\" stroke=\"{}\" fill=\"{}\">\n",
                       escape(name), colour, colour);
    std::string points;
    for (const auto* r : list)
      points += fmt::format("{:.1f},{:.1f} ", lx(r->workers), ly(r->throughput()));
    out += fmt::format("<polyline fill=\"none\" stroke-width=\"2\" points=\"{}\"/>\n", points);
    for (const auto* r : list) {
      out += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\"><title>{}: {} workers, {:.0f} "
          "transactions/s</title></circle>\n",
          lx(r->workers), ly(r->throughput()), escape(name), r->workers, r->throughput());
    }
    const run_result* last = list.back();
    std::vector<double> values;
    for (const double p : reported_percentiles)
      values.push_back(static_cast<double>(last->latency.percentile(p)));
    values.push_back(static_cast<double>(last->latency.max()));
    points.clear();
    for (int i = 0; i < 5; ++i)
      points += fmt::format("{:.1f},{:.1f} ", rx(i), ry(values[static_cast<std::size_t>(i)]));
    out += fmt::format("<polyline fill=\"none\" stroke-width=\"2\" points=\"{}\"/>\n", points);
    for (int i = 0; i < 5; ++i) {
      out += fmt::format(
          "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\"><title>{} {}: {}</title></circle>\n", rx(i),
          ry(values[static_cast<std::size_t>(i)]), escape(name), labels[i],
          time_label(values[static_cast<std::size_t>(i)]));
    }
    const double legend_y = 436 + 20 * static_cast<double>(s / 3);
    const double legend_x = 80 + 300 * static_cast<double>(s % 3);
    out += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"14\"/>"
        "<text x=\"{}\" y=\"{}\" stroke=\"none\" fill=\"#111\">{} ({} workers at "
        "most)</text>\n</g>\n",
        legend_x, legend_y - 11, legend_x + 20, legend_y, escape(name), last->workers);
  }
  out += "</svg>\n";
  return out;
}

}  // namespace bench
