"""Run the three benchmarks with modest sizes (about 10 minutes on a 2-core machine) and print a summary.

Each benchmark runs in its own ``python`` process (so one's memory does not colour the next) and hands
its figures back as JSON. The goals are printed next to the figures; nothing fails on a ratio (a
shared machine's timings are evidence, not a test). Usage::

    .venv/bin/python bench/run_all.py               # modest defaults
    .venv/bin/python bench/run_all.py --full        # the sizes of the issue: 2 GiB copy x5, 500 MB CSV x5
    .venv/bin/python bench/run_all.py --smoke       # tiny sizes: only checks that everything runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchlib import BENCH_DIR, WORK, machine

GOAL_COPY = 0.95  # engine ≥ 0.95x cp+fsync
GOAL_CONVERT = 0.90  # ours ≥ 0.9x bare pyarrow
GOAL_RSS = 1.5  # peak RSS grows < 1.5x while the input grows ~10x ("flat")


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the issue's sizes (about 30 minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the scripts run (~1 minute)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("copy", "convert", "rss"))
    args = ap.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.smoke:
        copy_args = ["--size-mib", "64", "--reps", "2"]
        convert_args = ["--size-mb", "20", "--reps", "2"]
        rss_args = ["--csv-mb", "20", "60", "--fits-mb", "20", "60"]
    elif args.full:
        copy_args = ["--size-mib", "2048", "--reps", "5"]
        convert_args = ["--size-mb", "500", "--reps", "5"]
        rss_args = ["--csv-mb", "200", "2000", "--fits-mb", "100", "1000"]
    else:
        copy_args = ["--size-mib", "1024", "--reps", "5"]
        convert_args = ["--size-mb", "200", "--reps", "3"]
        rss_args = ["--csv-mb", "200", "2000", "--fits-mb", "100", "1000"]
    label = "smoke" if args.smoke else "full" if args.full else "modest"
    print(f"# run_all ({label} sizes): {machine()}")
    copy = None if "copy" in args.skip else run("bench_copy.py", copy_args, WORK / "copy.json")
    convert = None if "convert" in args.skip else run("bench_convert.py", convert_args, WORK / "convert.json")
    rss = None if "rss" in args.skip else run("bench_rss.py", rss_args, WORK / "rss.json")

    rows: list[tuple[str, str, str, str]] = []
    failed = False
    if copy:
        ms = copy["median_s"]
        rows.append(
            (
                f"copy {copy['size_mib']} MiB: cp+fsync / engine",
                f"{copy['ratio_cp_fsync']:.2f}x",
                f"engine {ms['engine']:.2f} s, cp+fsync {ms['cp+fsync']:.2f} s",
                f"≥ {GOAL_COPY}x: {verdict(copy['ratio_cp_fsync'] >= GOAL_COPY)}",
            )
        )
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
    elif "copy" not in args.skip:
        failed = True
    if convert:
        ms = convert["median_s"]
        for name, r in convert["ratios"].items():
            goal = f"≥ {GOAL_CONVERT}x: {verdict(r >= GOAL_CONVERT)}" if name == "pyarrow" else "information"
            rows.append(
                (
                    f"convert {convert['size_mb']} MB CSV: {name} / ours",
                    f"{r:.2f}x",
                    f"ours {ms['ours']:.2f} s, {name} {ms[name]:.2f} s; size "
                    f"{convert['bytes']['ours'] / convert['bytes'][name]:.2f}x",
                    goal,
                )
            )
    elif "convert" not in args.skip:
        failed = True
    if rss:
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
    elif "rss" not in args.skip:
        failed = True

    print(
        f"\n# summary ({time.perf_counter() - started:.0f}s in all; ratios are medians of interleaved "
        "runs; ≥ 1 means ours is as fast as the baseline)"
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)] if rows else [0] * 4
    for r in rows:
        print("  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip())
    for name, res in (("copy", copy), ("convert", convert)):
        if res:
            print(f"# {name}: {res.get('cache', '')}; {res.get('load', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
