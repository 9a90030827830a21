"""Peak memory of a conversion at two input sizes: flat memory means the ratio stays ≈ 1 while the
input grows ~10x.

Each conversion runs in a fresh ``python`` subprocess (``convert_to_parquet(src, out, chunk_rows=...,
compression="zstd")``). Its peak RSS comes from the kernel:

- ``VmHWM`` ("peak RSS" below) from ``/proc/self/status``, read by the child itself as its last act;
- the peak of ``RssAnon`` (heap: Arrow buffers, numpy arrays), sampled every 20 ms by the parent.
  ``VmHWM`` also counts file pages the process has mapped (FITS tables are read through ``mmap``), which
  the kernel can drop at any time; ``RssAnon`` is the memory the conversion really holds.
- ``ru_maxrss`` from ``os.wait4(pid)`` is recorded in the JSON only: ``subprocess`` starts children with
  ``vfork``, and Linux then folds the *parent's* peak RSS at ``exec`` time into the child's
  ``ru_maxrss``, so it over-reports whenever this script itself is bigger than the child.

A child that only imports the same modules gives the interpreter + libraries baseline, subtracted in
the "above imports" figures. Usage::

    .venv/bin/python bench/bench_rss.py --csv-mb 200 2000 --fits-mb 100 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import datagen
from benchlib import REPO, WORK, machine, rmtree

CHILD = r"""
import json, sys, time
from pathlib import Path
mode, src, out, chunk_rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy, pyarrow, pyarrow.parquet, pyarrow.csv, astropy.io.fits  # what a conversion imports anyway
from jupyter_staging.formats.convert import convert_to_parquet
t0 = time.perf_counter()
rows = 0
if mode == "convert":
    parts = convert_to_parquet(Path(src), Path(out), chunk_rows=chunk_rows, compression="zstd")
    rows = sum(c.rows for c in parts)
elif mode == "pandas":
    import pandas as pd
    df = pd.read_csv(src)
    rows = len(df)
    df.to_parquet(out, compression="zstd")
elapsed = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"rows": rows, "seconds": elapsed, "VmHWM_kib": int(status["VmHWM"].split()[0])}))
"""


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def measure(mode: str, src: Path, out: Path, chunk_rows: int) -> dict:
    """Run one child; returns its peak figures (MiB) and result."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(src), str(out), str(chunk_rows)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _status_kib(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()  # until the child closes it (exits)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed with exit code {proc.returncode}")
    child = json.loads(stdout.decode().strip().splitlines()[-1])
    return {
        "maxrss_mib": usage.ru_maxrss / 1024,
        "vmhwm_mib": child["VmHWM_kib"] / 1024,
        "peak_anon_mib": peaks["RssAnon"] / 1024,
        "peak_file_mib": peaks["RssFile"] / 1024,
        "seconds": child["seconds"],
        "rows": child["rows"],
    }


def series(
    kind: str, sizes: list[float], chunk_rows: int, work: Path, base: dict, keep: bool, pandas: bool
) -> list[dict]:
    results = []
    for size in sizes:
        suffix = "csv" if kind == "csv" else "fits"
        src = work / "src" / f"kepler_lc_{size:g}mb.{suffix}"
        t = time.perf_counter()
        meta = (datagen.write_csv if kind == "csv" else datagen.write_fits)(src, size)
        print(
            f"# {src.name}: {meta['bytes'] / 1e6:.0f} MB, {meta['rows']} rows "
            f"(ready in {time.perf_counter() - t:.0f}s)"
        )
        out = work / "out" / src.stem
        rmtree(out)
        r = measure("convert", src, out, chunk_rows)
        if r["rows"] != meta["rows"]:
            raise SystemExit(f"converted {r['rows']} rows, expected {meta['rows']}")
        r.update(kind=kind, size_mb=meta["bytes"] / 1e6, input_rows=meta["rows"])
        print(
            f"rss {kind} {r['size_mb']:.0f} MB: peak RSS {r['vmhwm_mib']:.0f} MiB, peak RssAnon "
            f"{r['peak_anon_mib']:.0f} MiB (file-backed {r['peak_file_mib']:.0f}), above imports "
            f"{r['vmhwm_mib'] - base['vmhwm_mib']:.0f} MiB; {r['seconds']:.1f} s"
        )
        if pandas and kind == "csv":
            rmtree(out)
            p = measure("pandas", src, out.with_suffix(".pandas.parquet"), chunk_rows)
            r["pandas"] = p
            print(
                f"    pandas read_csv().to_parquet() on the same file: peak RSS {p['vmhwm_mib']:.0f} MiB, "
                f"{p['seconds']:.1f} s"
            )
        rmtree(out)
        out.with_suffix(".pandas.parquet").unlink(missing_ok=True)
        if not keep:
            src.unlink(missing_ok=True)
            src.with_name(src.name + ".json").unlink(missing_ok=True)
        results.append(r)
    if len(results) >= 2:
        small, large = results[0], results[-1]
        grow = large["size_mb"] / small["size_mb"]
        ratio = large["vmhwm_mib"] / small["vmhwm_mib"]
        above = (large["vmhwm_mib"] - base["vmhwm_mib"]) / max(1e-9, small["vmhwm_mib"] - base["vmhwm_mib"])
        anon = large["peak_anon_mib"] / max(1e-9, small["peak_anon_mib"])
        print(
            f"rss {kind}: {large['size_mb']:.0f} MB vs {small['size_mb']:.0f} MB input ({grow:.1f}x) -> "
            f"peak RSS ratio {ratio:.2f}x (above imports {above:.2f}x, RssAnon {anon:.2f}x)"
        )
        results.append(
            {
                "kind": kind,
                "input_ratio": grow,
                "rss_ratio": ratio,
                "above_imports_ratio": above,
                "anon_ratio": anon,
            }
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv-mb", type=float, nargs="*", default=[200, 2000], help="CSV sizes, MB")
    ap.add_argument(
        "--fits-mb", type=float, nargs="*", default=[100, 1000], help="FITS sizes, MB (none: skip)"
    )
    ap.add_argument("--chunk-rows", type=int, default=1_000_000)
    ap.add_argument("--pandas", action="store_true", help="also measure pandas on each CSV (needs RAM)")
    ap.add_argument("--workdir", type=Path, default=WORK / "rss")
    ap.add_argument("--keep", action="store_true", help="keep generated inputs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    (work / "out").mkdir(parents=True, exist_ok=True)
    print(f"# bench_rss: chunk_rows={args.chunk_rows}, zstd; {machine()}")
    base = measure("imports", Path("-"), Path("-"), args.chunk_rows)
    print(
        f"# imports only (python + numpy + pyarrow + astropy + jupyter_staging): peak RSS "
        f"{base['vmhwm_mib']:.0f} MiB"
    )
    result: dict = {"bench": "rss", "chunk_rows": args.chunk_rows, "imports": base, "csv": [], "fits": []}
    try:
        if args.csv_mb:
            result["csv"] = series("csv", args.csv_mb, args.chunk_rows, work, base, args.keep, args.pandas)
        if args.fits_mb:
            result["fits"] = series("fits", args.fits_mb, args.chunk_rows, work, base, args.keep, False)
    finally:
        rmtree(work / "out")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
