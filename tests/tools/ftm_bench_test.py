#!/usr/bin/env python3
"""ftm-bench run as a user runs it: each workload on each engine and level, worker
processes, the read/write mix and hot set, the JSON, CSV and SVG outputs, the checks
(a run whose invariant fails exits 1), and bad command lines (exit 2 with the usage).

    ftm_bench_test.py <path to ftm-bench> <peers it was built with, comma-separated>
"""

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

BENCH = sys.argv[1]
PEERS = [p for p in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if p]
WORK = tempfile.mkdtemp(prefix="ftm-bench-test-")
SVG = "{http://www.w3.org/2000/svg}"

passed = 0
failed = 0


def bench(*args, timeout=300):
    """Runs ftm-bench (never a terminal: no progress line); returns (status, out, err)."""
    p = subprocess.run([BENCH, "--no-progress", *args], capture_output=True, text=True,
                       timeout=timeout, cwd=WORK)
    return p.returncode, p.stdout, p.stderr


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"[ok] {fn.__name__}")
    except AssertionError as e:
        failed += 1
        print(f"[FAILED] {fn.__name__}: {e}")
    except subprocess.TimeoutExpired as e:
        failed += 1
        print(f"[FAILED] {fn.__name__}: timed out: {e}")
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def results_of(out):
    data = json.loads(out)
    expect(isinstance(data.get("results"), list), "JSON without a results list")
    return data


def check_result(r, transactions=None):
    lat = r["latency_ns"]
    expect(r["check"]["ran"] and r["check"]["ok"], f"check not ok: {r['check']}")
    expect(r["throughput"] > 0 and r["seconds"] > 0, f"no throughput: {r}")
    expect(lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"],
           f"percentiles out of order: {lat}")
    expect(lat["min"] <= lat["p50"], f"min above p50: {lat}")
    if transactions is not None:
        expect(r["transactions"] == transactions,
               f"{r['transactions']} transactions measured, {transactions} asked")


ENGINES = {
    "dual_bank": [],
    "pmem_process": ["--engine", "pmem", "--path", "p.pool"],
    "pmem_power": ["--engine", "pmem", "--path", "p.pool", "--durability", "power"],
}


@case
def each_workload_on_each_engine():
    for engine, args in ENGINES.items():
        for workload in ("tiny", "bank", "rpc"):
            n = 40 if engine == "pmem_power" else 300
            status, out, err = bench("--workload", workload, *args, "--threads", "1,2",
                                     "--transactions", str(n), "--warmup", "0.05", "--json", "-")
            expect(status == 0, f"{workload} on {engine}: exit {status}: {err}")
            data = results_of(out)
            expect(data["workload"] == workload, f"workload {data['workload']}")
            runs = data["results"]
            expect([r["workers"] for r in runs] == [1, 2], f"workers {[r['workers'] for r in runs]}")
            for r in runs:
                check_result(r, n)
            expect(not os.path.exists(os.path.join(WORK, "p.pool")), "the pool file was left behind")
            expect("check ftm" in err, f"{workload} on {engine}: no check line in the table: {err}")


@case
def worker_processes():
    status, out, err = bench("--engine", "pmem", "--path", "p.pool", "--workload", "bank",
                             "--processes", "2", "--threads", "1,2", "--transactions", "400",
                             "--warmup", "0.05", "--json", "-")
    expect(status == 0, f"exit {status}: {err}")
    runs = results_of(out)["results"]
    expect([(r["processes"], r["workers"]) for r in runs] == [(2, 2), (2, 4)],
           f"{[(r['processes'], r['workers']) for r in runs]}")
    for r in runs:
        check_result(r, 400)


@case
def read_ratio_and_hot_set():
    status, out, err = bench("--workload", "bank", "--objects", "100", "--read-ratio", "0.5",
                             "--hot", "0.1:0.9", "--threads", "2", "--transactions", "4000",
                             "--warmup", "0", "--json", "-")
    expect(status == 0, f"exit {status}: {err}")
    r = results_of(out)["results"][0]
    check_result(r, 4000)
    expect(1400 <= r["read_only"] <= 2600, f"{r['read_only']} of 4000 read-only at ratio 0.5")


@case
def tiny_sizes_and_fields():
    for size, fields in (("16", "2"), ("4K", "16"), ("256K", "64")):
        status, out, err = bench("--object-size", size, "--fields", fields, "--objects", "3",
                                 "--transactions", "200", "--warmup", "0", "--json", "-")
        expect(status == 0, f"size {size}: exit {status}: {err}")
        check_result(results_of(out)["results"][0], 200)


@case
def plot_is_svg_with_a_series_per_system():
    plot = os.path.join(WORK, "plot.svg")
    peers = ["--peers", ",".join(PEERS)] if PEERS else []
    status, out, err = bench("--threads", "1,2", "--duration", "0.2", "--warmup", "0",
                             *peers, "--plot", plot, "--json", "-")
    expect(status == 0, f"exit {status}: {err}")
    systems = []
    for r in results_of(out)["results"]:
        if r["system"] not in systems:
            systems.append(r["system"])
    expect(len(systems) == 1 + len(PEERS), f"systems {systems}, peers {PEERS}")
    root = ET.parse(plot).getroot()  # raises if it is not well-formed XML
    expect(root.tag == SVG + "svg", f"root element {root.tag}")
    series = [g.get("data-system") for g in root.iter(SVG + "g") if g.get("class") == "series"]
    expect(series == systems, f"series {series}, systems {systems}")
    for g in root.iter(SVG + "g"):
        if g.get("class") == "series":
            lines = list(g.iter(SVG + "polyline"))
            expect(len(lines) == 2, f"{g.get('data-system')}: {len(lines)} lines, 2 wanted")
            points = lines[0].get("points").split()
            expect(len(points) == 2, f"{g.get('data-system')}: {len(points)} throughput points")


@case
def csv_on_standard_output():
    status, out, err = bench("--threads", "1,2", "--transactions", "100", "--warmup", "0",
                             "--csv", "-")
    expect(status == 0, f"exit {status}: {err}")
    rows = list(csv.DictReader(io.StringIO(out)))
    expect(len(rows) == 2, f"{len(rows)} rows")
    expect([r["workers"] for r in rows] == ["1", "2"], f"{rows}")
    expect(all(r["check"] == "ok" and r["transactions"] == "100" for r in rows), f"{rows}")
    expect("tx/s" in err, "the table is not on stderr when stdout carries the CSV")


@case
def a_failed_check_exits_1():
    peers = ["--peers", ",".join(PEERS)] if PEERS else []
    for workload in ("tiny", "bank", "rpc"):
        status, out, err = bench("--workload", workload, "--transactions", "50", "--warmup", "0",
                                 "--test-miscount", *(peers if workload != "rpc" else []))
        expect(status == 1, f"{workload}: exit {status}, 1 wanted: {err}")
        n = err.count("CHECK FAILED")
        want = 1 + (len(PEERS) if workload != "rpc" else 0)
        expect(n == want, f"{workload}: {n} failed checks reported, {want} wanted: {err}")


YCSB = ("ycsb-a", "ycsb-b", "ycsb-c", "ycsb-e", "ycsb-f")


@case
def ycsb_workloads_on_each_engine_and_peer():
    peers = ["--peers", ",".join(PEERS)] if PEERS else []
    for engine, args in ENGINES.items():
        for workload in YCSB:
            n = 40 if engine == "pmem_power" else 400
            status, out, err = bench("--workload", workload, *args, "--objects", "3000",
                                     "--threads", "2", "--transactions", str(n), "--warmup",
                                     "0.05", *peers, "--json", "-")
            expect(status == 0, f"{workload} on {engine}: exit {status}: {err}")
            data = results_of(out)
            expect(data["workload"] == workload, f"workload {data['workload']}")
            runs = data["results"]
            expect(len(runs) == 1 + len(PEERS), f"{len(runs)} runs")
            for r in runs:
                check_result(r, n)
            reads = runs[0]["read_only"]
            if workload == "ycsb-c":
                expect(reads == n, f"ycsb-c: {reads} of {n} read-only")
            elif workload in ("ycsb-b", "ycsb-e"):
                expect(reads >= n * 0.8, f"{workload}: only {reads} of {n} read-only")
            else:
                expect(n * 0.3 <= reads <= n * 0.7, f"{workload}: {reads} of {n} read-only")
            # The check line says what it verified: updates counted, or records inserted.
            what = "inserted" if workload == "ycsb-e" else "updates"
            expect(what in err, f"{workload} on {engine}: no '{what}' in the check: {err}")


@case
def ycsb_records_of_1000_bytes_uniform_keys_in_processes():
    status, out, err = bench("--workload", "ycsb-f", "--object-size", "1000", "--objects", "500",
                             "--distribution", "uniform", "--hot", "0.1:0.9", "--processes", "2",
                             "--transactions", "400", "--warmup", "0", "--json", "-")
    expect(status == 0, f"exit {status}: {err}")
    check_result(results_of(out)["results"][0], 400)


@case
def a_failed_ycsb_check_exits_1():
    peers = ["--peers", ",".join(PEERS)] if PEERS else []
    for workload in ("ycsb-a", "ycsb-e"):
        status, out, err = bench("--workload", workload, "--objects", "500", "--transactions",
                                 "100", "--warmup", "0", "--test-miscount", *peers)
        expect(status == 1, f"{workload}: exit {status}, 1 wanted: {err}")
        n = err.count("CHECK FAILED")
        expect(n == 1 + len(PEERS), f"{workload}: {n} failed checks reported: {err}")


@case
def check_off_is_reported():
    status, out, err = bench("--transactions", "50", "--warmup", "0", "--check", "off",
                             "--json", "-")
    expect(status == 0, f"exit {status}: {err}")
    r = results_of(out)["results"][0]
    expect(not r["check"]["ran"], f"{r['check']}")
    expect("checks OFF" in err, "the table does not say the checks were off")


@case
def a_run_that_cannot_start_exits_1_with_the_cause():
    status, out, err = bench("--engine", "pmem", "--path", "no/such/dir/p.pool",
                             "--transactions", "10")
    expect(status == 1, f"exit {status}")
    expect("the run failed" in err and "no/such/dir" in err, f"message: {err}")


@case
def bad_command_lines_exit_2_with_the_usage():
    bad = [
        ["--threads", "0"], ["--threads", "1,x"], ["--bogus"], ["--workload", "nope"],
        ["--workload", "ycsb-g"], ["--durability", "power"], ["--object-size", "48"],
        ["--workload", "ycsb-a", "--object-size", "64"],
        ["--workload", "ycsb-b", "--read-ratio", "0.5"], ["--workload", "ycsb-c", "--hot", "0.1:0.9"],
        ["--distribution", "uniform"], ["--workload", "ycsb-a", "--distribution", "pareto"],
        ["--read-ratio", "2"], ["--threads"], ["--hot", "0.1"], ["--peers", "oracle"],
        ["--pool-size", "1000"], ["--duration", "-1"], ["--workload", "rpc", "--read-ratio", "0.5"],
        ["--workload", "bank", "--objects", "1"], ["--fields", "9"], ["--json", "-", "--csv", "-"],
        ["--path", "x.pool"], ["--sessions", "maybe"],
    ]
    for args in bad:
        status, out, err = bench(*args)
        expect(status == 2, f"{args}: exit {status}, 2 wanted")
        expect("usage: ftm-bench" in err and err.startswith("ftm-bench: "),
               f"{args}: no cause and usage on stderr: {err[:200]}")
    status, out, err = bench("--help")
    expect(status == 0 and "usage: ftm-bench" in out, "--help")


print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
