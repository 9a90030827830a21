"""Run the benchmarks (copy, convert, peak RSS, scale, responsiveness; with flags also Dask and streams)
with modest sizes (about 10 minutes on a 2-core machine) and print a summary.

Each benchmark runs in its own ``python`` process (so one's memory does not colour the next) and hands
its figures back as JSON. The goals are printed next to the figures; nothing fails on a ratio (a
shared machine's timings are evidence, not a test). Usage::

    .venv/bin/python bench/run_all.py               # modest defaults
    .venv/bin/python bench/run_all.py --full        # the sizes of the issue: 2 GiB copy x5, 500 MB CSV x5
    .venv/bin/python bench/run_all.py --smoke       # tiny sizes: only checks that everything runs
    .venv/bin/python bench/run_all.py --scale       # only many small files: 200, 2,000 and 20,000 files
    .venv/bin/python bench/run_all.py --dask        # also jobs on a Dask LocalCluster (bench_dask.py)
    .venv/bin/python bench/run_all.py --streams     # also downloads on parallel streams (bench_streams.py)

The default run also measures the server's responsiveness (``bench_responsiveness.py``: /api/status under
three jobs, POST /jobs with 10,000 jobs in the database); ``--skip responsiveness`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import BENCH_DIR, WORK, machine

GOAL_COPY = 0.95  # engine ≥ 0.95x cp+fsync
GOAL_CONVERT = 0.90  # ours ≥ 0.9x bare pyarrow
GOAL_CONVERT_DUCKDB = 1.0  # ours ≥ 1.0x DuckDB COPY ... TO parquet
GOAL_CONVERT_DUCKDB_RSS = 0.6  # ours' peak RSS ≤ 0.6x DuckDB's
GOAL_RSS = 1.5  # peak RSS grows < 1.5x while the input grows ~10x ("flat")
GOAL_SCALE_COPY = 1.0  # 2,000 x 64 KiB copy job ≥ 1.0x cp -r + fsync of each file
GOAL_SCALE_LINKS = 10_000  # hardlink job ≥ 10,000 files/s
GOAL_SCALE_FLAT = 0.9  # files/s of the largest count ≥ 0.9x that of the one before
GOAL_STATUS_P99_MS = 50.0  # GET /api/status p99 while a copy, a folder copy and a conversion run
GOAL_POST_P99_MS = 20.0  # POST /jobs p99 with 10,000 jobs in the job database
GOAL_DASK_OVERHEAD = 1.0  # a small job costs < 1 s more on Dask than on the local executor
#: bench_streams: (section, engine candidate, baseline) -> goal of baseline time / engine time
GOAL_STREAMS = {("fast", "engine 4", "curl"): 1.0, ("throttled", "engine 4", "curl"): 3.5}
GOAL_STREAMS[("throttled", "engine 4", "aria2c -x4")] = 1.0


def run(script: str, args: list[str], out: Path) -> dict | None:
    cmd = [sys.executable, str(BENCH_DIR / script), *args, "--json", str(out)]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd)
    print(f"# {script} finished in {time.perf_counter() - t:.0f}s (exit {proc.returncode})", flush=True)
    if proc.returncode != 0 or not out.is_file():
        return None
    return json.loads(out.read_text())


def verdict(ok: bool) -> str:
    return "meets goal" if ok else "BELOW goal"


def scale_rows(scale: dict) -> list[tuple[str, str, str, str]]:
    """Summary rows of ``bench_scale.py``: per count, the copy and hardlink ratios and files/s."""
    rows = []
    for r in scale["counts"]:
        fps, n = r["files_per_s"], r["count"]
        goal = n == 2000
        rows.append(
            (
                f"{n} small files: copy / cp -r+fsync",
                f"{r['ratios']['engine copy']:.2f}x",
                f"engine {fps['engine copy']:.0f} files/s, cp -r+fsync {fps['cp -r+fsync']:.0f} files/s",
                f"≥ {GOAL_SCALE_COPY}x: {verdict(r['ratios']['engine copy'] >= GOAL_SCALE_COPY)}"
                if goal
                else "information",
            )
        )
        for name in ("engine hardlink", "engine hardlink again"):
            if name not in fps:
                continue
            rows.append(
                (
                    f"{n} small files: {name.removeprefix('engine ')} files/s",
                    f"{fps[name]:.0f}",
                    f"cp -al {fps['cp -al']:.0f} files/s ({r['ratios'][name]:.3f}x)",
                    f"≥ {GOAL_SCALE_LINKS}: {verdict(fps[name] >= GOAL_SCALE_LINKS)}"
                    if goal
                    else "information",
                )
            )
    for name, ratio in (scale.get("flatness") or {}).items():
        rows.append(
            (
                f"{name}: files/s largest / previous count",
                f"{ratio:.2f}x",
                "flat is 1.0x (paired by repetition)",
                f"≥ {GOAL_SCALE_FLAT}x: {verdict(ratio >= GOAL_SCALE_FLAT)}"
                if name.startswith("engine")
                else "information (a baseline: what the machine did)",
            )
        )
    return rows


#: Arguments of each benchmark by size: smoke, modest (the default), full (the issue's sizes).
SIZES = {
    "smoke": {
        "copy": ["--size-mib", "64", "--reps", "2"],
        "convert": ["--size-mb", "20", "--reps", "2"],
        "rss": ["--csv-mb", "20", "60", "--fits-mb", "20", "60"],
        "scale": ["--counts", "50", "200", "--reps", "2"],
        "dask": ["--size-mb", "20", "--copy-mib", "64", "--chunk-rows", "20000", "--range-mib", "16"]
        + ["--reps", "1", "--small-reps", "2", "--cluster-starts", "1"],
        "streams": ["--size-mib", "96", "--throttled-size-mib", "96", "--rate", "50000000", "--reps", "1"],
        "responsiveness": ["--smoke"],
    },
    "modest": {
        "copy": ["--size-mib", "1024", "--reps", "5"],
        "convert": ["--size-mb", "200", "--reps", "3"],
        "rss": ["--csv-mb", "200", "2000", "--fits-mb", "100", "1000"],
        "scale": ["--counts", "200", "2000", "--reps", "3"],
        "dask": ["--size-mb", "500", "--copy-mib", "1024", "--chunk-rows", "250000", "--reps", "3"],
        "streams": ["--size-mib", "1024", "--throttled-size-mib", "512", "--reps", "3"],
        "responsiveness": ["--copy-mib", "1024", "--files", "2000", "--csv-mb", "200"],
    },
    "full": {
        "copy": ["--size-mib", "2048", "--reps", "5"],
        "convert": ["--size-mb", "500", "--reps", "5"],
        "rss": ["--csv-mb", "200", "2000", "--fits-mb", "100", "1000"],
        "scale": ["--counts", "200", "2000", "20000", "--reps", "3"],
        "dask": ["--size-mb", "2000", "--copy-mib", "2048", "--reps", "3"],
        "streams": ["--size-mib", "1024", "--throttled-size-mib", "1024", "--reps", "5", "--s3"],
        "responsiveness": [],  # the sizes are the defaults
    },
}
SCRIPTS = {
    "copy": "bench_copy.py",
    "convert": "bench_convert.py",
    "rss": "bench_rss.py",
    "scale": "bench_scale.py",
    "dask": "bench_dask.py",  # only with --dask
    "streams": "bench_streams.py",  # only with --streams
    "responsiveness": "bench_responsiveness.py",
}

Row = tuple[str, str, str, str]


def copy_rows(copy: dict) -> list[Row]:
    ms = copy["median_s"]
    rows = [
        (
            f"copy {copy['size_mib']} MiB: cp+fsync / engine",
            f"{copy['ratio_cp_fsync']:.2f}x",
            f"engine {ms['engine']:.2f} s, cp+fsync {ms['cp+fsync']:.2f} s",
            f"≥ {GOAL_COPY}x: {verdict(copy['ratio_cp_fsync'] >= GOAL_COPY)}",
        )
    ]
    if "ratio_cp_plain" in copy:
        rows.append(
            (
                "copy: cp (no fsync) / engine",
                f"{copy['ratio_cp_plain']:.2f}x",
                f"cp {ms['cp']:.2f} s",
                "information",
            )
        )
    if "ratio_listener" in copy:
        r = copy["ratio_listener"]
        rows.append(
            (
                "copy: no listener / with listener",
                f"{r:.3f}x",
                f"overhead {100 * (1 / r - 1):+.1f} %",
                "information",
            )
        )
    return rows


def convert_rows(convert: dict) -> list[Row]:
    ms = convert["median_s"]
    rows = []
    goals = {"pyarrow": GOAL_CONVERT, "duckdb": GOAL_CONVERT_DUCKDB}
    for name, r in convert["ratios"].items():
        goal = f"≥ {goals[name]}x: {verdict(r >= goals[name])}" if name in goals else "information"
        rows.append(
            (
                f"convert {convert['size_mb']} MB CSV: {name} / ours",
                f"{r:.2f}x",
                f"ours {ms['ours']:.2f} s, {name} {ms[name]:.2f} s; size "
                f"{convert['bytes']['ours'] / convert['bytes'][name]:.2f}x",
                goal,
            )
        )
    duckdb_rss = (convert.get("rss_ratios") or {}).get("duckdb")
    if duckdb_rss is not None:
        rows.append(
            (
                f"convert {convert['size_mb']} MB CSV: peak RSS ours / duckdb",
                f"{duckdb_rss:.2f}x",
                "each in a fresh process (VmHWM)",
                f"≤ {GOAL_CONVERT_DUCKDB_RSS}x: {verdict(duckdb_rss <= GOAL_CONVERT_DUCKDB_RSS)}",
            )
        )
    return rows


def rss_rows(rss: dict) -> list[Row]:
    rows = []
    for kind in ("csv", "fits"):
        series = rss.get(kind) or []
        summary = next((s for s in series if "rss_ratio" in s), None)
        points = [s for s in series if "vmhwm_mib" in s]
        if summary is None or len(points) < 2:
            continue
        a = summary["above_imports_ratio"]
        rows.append(
            (
                f"rss {kind} {points[-1]['size_mb']:.0f} MB / {points[0]['size_mb']:.0f} MB "
                f"(input {summary['input_ratio']:.1f}x)",
                f"{summary['rss_ratio']:.2f}x",
                f"peak {points[0]['vmhwm_mib']:.0f} -> {points[-1]['vmhwm_mib']:.0f} MiB; above "
                f"imports {a:.2f}x",
                f"flat (< {GOAL_RSS}x): {verdict(summary['rss_ratio'] < GOAL_RSS)}",
            )
        )
    return rows


def dask_rows(dask: dict) -> list[Row]:
    """Summary rows of ``bench_dask.py``: Dask 2 workers vs the local executor, the small-job overhead."""
    rows = []
    for key, label in (("convert", "CSV->Parquet"), ("copy", "copy")):
        fig = (dask.get(key) or {}).get("figures")
        if fig:
            wall = {name: statistics.median(f["wall"]) for name, f in fig.items()}
            rows.append(
                (
                    f"dask {label}: local executor / Dask 2 workers",
                    f"{wall['local'] / wall['dask 2w']:.2f}x",
                    ", ".join(f"{name} {s:.2f} s" for name, s in wall.items()),
                    "information",
                )
            )
    for kind, small in (dask.get("small") or {}).items():
        ok = small["overhead_s"] < GOAL_DASK_OVERHEAD
        rows.append(
            (
                f"dask overhead, small job ({kind})",
                f"{small['overhead_s']:+.2f} s",
                "median Dask - median local executor",
                f"< {GOAL_DASK_OVERHEAD:g} s: {verdict(ok)}",
            )
        )
    return rows


def streams_rows(streams: dict) -> list[Row]:
    """Summary rows of ``bench_streams.py``: every engine candidate against each baseline of its section."""
    rows = []
    for title in ("fast", "throttled", "s3"):
        res = streams.get(title)
        if not res:
            continue
        base = res["baseline"]
        for name, by_base in res["ratios"].items():
            if not name.startswith("engine"):
                continue
            for other, r in by_base.items():
                goal = GOAL_STREAMS.get((title, name, other))
                if other != base and goal is None:
                    continue
                rows.append(
                    (
                        f"streams {title} {res['size_mib']:.0f} MiB: {other} / {name}",
                        f"{r:.2f}x",
                        f"{name} {res['mb_s'][name]:.0f} MB/s, {other} {res['mb_s'][other]:.0f} MB/s",
                        f"≥ {goal}x: {verdict(r >= goal)}" if goal else "information",
                    )
                )
    return rows


def responsiveness_rows(res: dict) -> list[Row]:
    """Summary rows of ``bench_responsiveness.py``: /api/status p99 at rest and under load, the load jobs'
    outcome, POST /jobs p99 with an empty and a full job database."""
    rows: list[Row] = []
    status = res.get("status")
    if status:
        for key, label in (("rest_ms", "at rest"), ("load_ms", "under load")):
            s = status[key]
            goal = f"< {GOAL_STATUS_P99_MS:g} ms: {verdict(s['p99'] < GOAL_STATUS_P99_MS)}"
            rows.append(
                (
                    f"GET /api/status p99 {label}",
                    f"{s['p99']:.1f} ms",
                    f"p50 {s['p50']:.1f} ms, max {s['max']:.1f} ms (n={s['n']})",
                    goal if key == "load_ms" else "information",
                )
            )
        states = {label: job["state"] for label, job in status["jobs"].items()}
        ok = all(state == "succeeded" for state in states.values())
        rows.append(
            (
                "jobs run during the load",
                "all succeeded" if ok else "NOT all succeeded",
                ", ".join(f"{label}: {state}" for label, state in states.items()),
                "must succeed",
            )
        )
    for post in res.get("post") or []:
        s, seeded = post["post_ms"], post["seed_jobs"]
        goal = f"< {GOAL_POST_P99_MS:g} ms: {verdict(s['p99'] < GOAL_POST_P99_MS)}"
        rows.append(
            (
                f"POST /jobs p99, {seeded} jobs in the database",
                f"{s['p99']:.1f} ms",
                f"p50 {s['p50']:.1f} ms, max {s['max']:.1f} ms (n={s['n']}); {post['states']}",
                goal if seeded else "baseline",
            )
        )
    return rows


ROWS = {
    "copy": copy_rows,
    "convert": convert_rows,
    "rss": rss_rows,
    "scale": scale_rows,
    "dask": dask_rows,
    "streams": streams_rows,
    "responsiveness": responsiveness_rows,
}


def plan(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The sizes to run (a key of :data:`SIZES`) and the benchmarks to skip."""
    dask = ([] if args.dask else ["dask"]) + ([] if args.streams else ["streams"])
    if args.scale:
        return "full", [n for n in SCRIPTS if n not in ("scale", "dask", "streams")] + dask
    return ("smoke" if args.smoke else "full" if args.full else "modest"), list(args.skip) + dask


def print_rows(rows: list[Row]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    for r in rows:
        print("  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes (about 30 minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the scripts run (~2 minutes)")
    ap.add_argument("--scale", action="store_true", help="only bench_scale: 200, 2,000 and 20,000 files")
    ap.add_argument("--dask", action="store_true", help="also bench_dask: jobs on a Dask LocalCluster")
    ap.add_argument("--streams", action="store_true", help="also bench_streams: parallel downloads")
    ap.add_argument("--skip", nargs="*", default=[], choices=tuple(SCRIPTS))
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    label, skip = plan(args)
    print(f"# run_all ({'scale' if args.scale else label} sizes): {machine()}")
    results = {
        name: run(script, SIZES[label][name], WORK / f"{name}.json")
        for name, script in SCRIPTS.items()
        if name not in skip
    }
    rows: list[Row] = [row for name, res in results.items() if res for row in ROWS[name](res)]
    failed = any(res is None for res in results.values())
    print(
        f"\n# summary ({time.perf_counter() - started:.0f}s in all; ratios are medians of interleaved "
        "runs; ≥ 1 means ours is as fast as the baseline)"
    )
    print_rows(rows)
    for name in ("copy", "convert", "scale", "dask", "streams", "responsiveness"):
        res = results.get(name)
        if res:
            print(f"# {name}: {res.get('cache', '')}; {res.get('load', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
