#!/usr/bin/env python3
"""Turns ftm_bench's JSON output into the tables of docs/benchmarks.md.

    ftm_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
              --benchmark_out=bench.json --benchmark_out_format=json
    python3 benchmarks/report.py bench.json

Prints a Markdown table of the medians and the ratios that issue 2 sets goals for.
"""

import json
import sys

SYSTEMS = ["ftm", "ftm-session", "floor", "mutex", "itm"]
CASES = [("single", 1), ("disjoint", 2), ("shared", 2)]
WORKLOADS = ["tiny_write", "read_only"]


def load_medians(path):
    with open(path) as f:
        data = json.load(f)
    medians = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        if b.get("time_unit", "ns") != "ns":
            sys.exit(f"{b['name']}: expected times in ns, got {b['time_unit']}")
        # run_name looks like tiny_write/single/ftm/real_time/threads:1
        workload, sharing, system = b["run_name"].split("/")[:3]
        medians[(workload, sharing, system)] = b
    return data["context"], medians


def fmt_rate(x):
    return f"{x / 1e6:.1f} M/s"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    context, med = load_medians(sys.argv[1])
    systems = [s for s in SYSTEMS if any(k[2] == s for k in med)]
    reps = next(iter(med.values())).get("repetitions", "?")

    print(f"Medians of {reps} repetitions. ns/tx is wall-clock time divided by the "
          "transactions of all threads (the inverse of the throughput); CPU ns/tx is "
          "the CPU time of the benchmark threads per transaction.\n")
    print("| workload | threads | system | ns/tx (real) | CPU ns/tx | transactions/s |")
    print("|---|---|---|---:|---:|---:|")
    for w in WORKLOADS:
        for sharing, threads in CASES:
            for s in systems:
                b = med.get((w, sharing, s))
                if b is None:
                    continue
                label = "1" if sharing == "single" else f"2, {sharing}"
                print(f"| {w} | {label} | {s} | {b['real_time']:.1f} | {b['cpu_time']:.1f} | "
                      f"{fmt_rate(b['items_per_second'])} |")

    def t(s, field="real_time", w="tiny_write", sharing="single"):
        b = med.get((w, sharing, s))
        return None if b is None else b[field]

    print("\n| ratio (tiny write) | goal | measured (real time) | CPU-time ratio | met? |")
    print("|---|---|---:|---:|---|")

    def row(label, goal, value, cpu_value, ok):
        if value is None:
            print(f"| {label} | {goal} | n/a | n/a | not measured |")
        else:
            print(f"| {label} | {goal} | {value:.2f} | {cpu_value:.2f} | {'yes' if ok(value) else 'NO'} |")

    for mine in ["ftm", "ftm-session"]:
        for peer, goal, limit in [("mutex", "<= 1.5", 1.5), ("itm", "<= 0.6", 0.6)]:
            v = c = None
            if t(mine) is not None and t(peer) is not None:
                v = t(mine) / t(peer)
                c = t(mine, "cpu_time") / t(peer, "cpu_time")
            row(f"1 thread, {mine} time / {peer} time", goal, v, c, lambda x, l=limit: x <= l)
    if t("floor") is not None and t("mutex") is not None:
        print(f"| 1 thread, floor time / mutex time (the design's own bound) | - | "
              f"{t('floor') / t('mutex'):.2f} | "
              f"{t('floor', 'cpu_time') / t('mutex', 'cpu_time'):.2f} | - |")

    for s in systems:
        one = t(s, "items_per_second")
        two = t(s, "items_per_second", sharing="disjoint")
        if one is None or two is None:
            continue
        # With CPU time, the 2-thread "throughput" is per CPU-second of both threads,
        # so twice that is what two cores would give if neither thread were preempted.
        cpu_scaling = 2 * t(s, "cpu_time") / t(s, "cpu_time", sharing="disjoint")
        if s in ("ftm", "ftm-session"):
            row(f"{s} throughput, 2 threads disjoint / 1 thread", ">= 1.8", two / one,
                cpu_scaling, lambda x: x >= 1.8)
        else:
            print(f"| {s} throughput, 2 threads disjoint / 1 thread (for reference) | - | "
                  f"{two / one:.2f} | {cpu_scaling:.2f} | - |")

    print(f"\nContext: {context.get('num_cpus')} CPUs at {context.get('mhz_per_cpu')} MHz, "
          f"load average at start {context.get('load_avg')}, "
          f"library build type {context.get('library_build_type')}.")


if __name__ == "__main__":
    main()
