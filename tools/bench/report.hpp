#ifndef FTM_TOOLS_BENCH_REPORT_HPP
#define FTM_TOOLS_BENCH_REPORT_HPP

/// \file
/// The results of a sweep as a table for people, JSON and CSV for programs, and an SVG
/// picture (svg.cpp).

#include "options.hpp"
#include "runner.hpp"

#include <string>
#include <vector>

namespace bench {

/// The percentiles every report gives, in this order.
inline constexpr double reported_percentiles[] = {50, 90, 99, 99.9};

std::string table(const std::vector<run_result>& results);
std::string json(const std::vector<run_result>& results, const options& o);
std::string csv(const std::vector<run_result>& results);
std::string svg(const std::vector<run_result>& results, const options& o);

/// The workload's name as on the command line.
std::string_view workload_name(workload w) noexcept;

}  // namespace bench

#endif  // FTM_TOOLS_BENCH_REPORT_HPP
