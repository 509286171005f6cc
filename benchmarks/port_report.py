#!/usr/bin/env python3
"""Turns ftm_port_bench's JSON output into the tables of docs/benchmarks.md.

    ftm_port_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \\
                   --benchmark_out=port.json --benchmark_out_format=json
    python3 benchmarks/port_report.py port.json

Prints Markdown tables of the medians: the call round trips and one-way throughput,
the ratios against the baselines (issue 3's goal: between threads, a call at most 2x
the baseline's time), and the recovery times after a kill.
"""

import json
import sys

WHERE = ["threads", "processes"]
BASELINE = {"threads": "mutex", "processes": "pthread"}
SYSTEMS = ["ftm", "ftm-session", "ftm-pmem", "mutex", "pthread"]


def load_medians(path):
    with open(path) as f:
        data = json.load(f)
    medians, cvs = {}, {}
    for b in data["benchmarks"]:
        # run_name looks like call/threads/ftm/real_time
        key = tuple(b["run_name"].split("/")[:3])
        if b.get("aggregate_name") == "median":
            medians[key] = b
        elif b.get("aggregate_name") == "cv":
            cvs[key] = b
    return data["context"], medians, cvs


def to_us(b, key):
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "ns")]
    return b[key] * scale


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    context, medians, cvs = load_medians(sys.argv[1])
    print(f"Load average at the start: {context.get('load_avg')}\n")

    print("| benchmark | between | system | us/op (real) | CPU us/op (client) | ops/s | "
          "spread (cv of real time) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for kind in ["call", "oneway"]:
        for where in WHERE:
            for system in SYSTEMS:
                b = medians.get((kind, where, system))
                if b is None:
                    continue
                rate = b["items_per_second"]
                print(f"| {kind} | {where} | {system} | {to_us(b, 'real_time'):.2f} | "
                      f"{to_us(b, 'cpu_time'):.2f} | {rate / 1e3:.1f} k/s | "
                      f"{100 * cvs[(kind, where, system)]['real_time']:.0f}% |")
    print()

    print("| ratio (time per op, against the baseline) | goal | real time | met? |")
    print("|---|---|---:|---|")
    for kind in ["call", "oneway"]:
        for where in WHERE:
            base = medians.get((kind, where, BASELINE[where]))
            if base is None:
                continue
            for system in ["ftm", "ftm-session", "ftm-pmem"]:
                b = medians.get((kind, where, system))
                if b is None:
                    continue
                ratio = b["real_time"] / base["real_time"]
                goal = "<= 2" if (kind, where) == ("call", "threads") else "-"
                met = ("yes" if ratio <= 2 else "NO") if goal != "-" else "-"
                print(f"| {kind}, {where}: {system} / {BASELINE[where]} | {goal} | "
                      f"{ratio:.2f} | {met} |")
    print()

    r = medians.get(("recovery", "processes", "ftm"))
    if r is not None:
        print("| recovery after SIGKILL (median of the runs' percentiles) | p50 | p99 |")
        print("|---|---:|---:|")
        print(f"| `recover()`, every kill | {r['recover_p50_us']:.1f} us | "
              f"{r['recover_p99_us']:.1f} us |")
        print(f"| `recover()`, kills inside a transaction | {r['recover_in_tx_p50_us']:.1f} us | "
              f"{r['recover_in_tx_p99_us']:.1f} us |")
        print(f"| reaped to a restarted server's answer | {r['restart_p50_us']:.0f} us | "
              f"{r['restart_p99_us']:.0f} us |")
        print(f"\nKills per run: {r['kills']:.0f}, of which inside a transaction "
              f"(median): {r['killed_in_tx']:.0f}; load calls answered per run (median): "
              f"{r['load_calls']:.0f}.")


if __name__ == "__main__":
    main()
