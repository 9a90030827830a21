"""Folders of many small tables converted to Parquet by the engine vs a pyarrow loop, at two counts.

A TESS sector is about 20,000 light curves; converting a folder of them is many small tables, where the
cost is the job's bookkeeping per table, not the bytes. The tables are made from the real Kepler light
curve in ``../shared/data`` (``TIME``, ``SAP_FLUX``, ``SAP_FLUX_ERR``, ``PDCSAP_FLUX``,
``SAP_QUALITY``): table ``i`` holds ``--rows`` consecutive rows of it, from row ``i * 7`` on (wrapping),
as CSV.

Candidates, interleaved (the order rotates every repetition; each repetition runs every count in turn, so
the counts' figures are taken minutes apart, not a whole count's runs apart), the page cache dropped before
each run where permitted:

- ``engine``: a :class:`~jupyter_staging.engine.manager.StagingManager` job converting the folder
  (``convert={}``: one ``<stem>.parquet/part-00000.parquet`` per table, zstd), timed from ``create()`` to
  its ``finished_at``. A new manager and job database for each run.
- ``pyarrow loop``: what a user would write instead: for each file ``pyarrow.csv.read_csv``, then
  ``pyarrow.parquet.write_table`` (zstd) into ``<stem>.parquet/part-00000.parquet`` and ``os.fsync`` of it
  (the engine makes every part durable too), on one thread.

Printed per count: tables/s (median), the ratio ``engine tables/s / pyarrow tables/s`` (median of the
per-repetition ratios), CPU seconds and peak RSS; the last line gives tables/s of the largest count over the
smaller one for each candidate (flat is 1.0). Every run is checked: one ready chunk per table, and the rows
of a sample of tables read back. Usage::

    .venv/bin/python bench/bench_tables.py --counts 1000 10000 --reps 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.io import fits
from benchlib import WORK, BenchRun, interleaved, med, peak_rss_mib, peak_rss_reset, rmtree, run_job

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

ROOT = WORK / "tables"
KEPLER = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ["TIME", "SAP_FLUX", "SAP_FLUX_ERR", "PDCSAP_FLUX", "SAP_QUALITY"]
CANDIDATES = ("engine", "pyarrow loop")


def kepler_file() -> Path:
    """The Kepler light curve of ``../shared/data`` (the first ``kplr*.fits`` found)."""
    found = sorted(KEPLER.rglob("kplr*.fits"))
    if not found:
        raise SystemExit(f"no Kepler light curve (kplr*.fits) below {KEPLER}")
    return found[0]


def make_source(count: int, rows: int) -> Path:
    """``count`` CSV tables of ``rows`` rows each in ``ROOT/src-<count>-<rows>`` (reused when complete)."""
    folder = ROOT / f"src-{count}-{rows}"
    if folder.is_dir() and len(os.listdir(folder)) == count:
        return folder
    rmtree(folder)
    folder.mkdir(parents=True)
    records = fits.getdata(kepler_file(), 1)
    arrow = pa.table(
        {name: np.asarray(records[name], dtype=records[name].dtype.newbyteorder("=")) for name in COLUMNS}
    )
    total = arrow.num_rows
    for i in range(count):
        start = (i * 7) % (total - rows)
        pacsv.write_csv(arrow.slice(start, rows), folder / f"lc-{i:06d}.csv")
    os.sync()
    return folder


def engine(source: Path, out: Path, count: int, rss: list[float]) -> float:
    """One conversion job of ``source`` into ``out`` on a new manager; returns its seconds."""
    db = ROOT / "jobs.sqlite"
    db.unlink(missing_ok=True)
    mgr = StagingManager(ROOT, db_url=f"sqlite:///{db}", sweep_interval=0)
    mgr.start()
    try:
        request = CreateJob(source=str(source), destination=out.relative_to(ROOT).as_posix(), convert={})
        done = run_job(mgr, request, "engine")
    finally:
        mgr.stop()
        db.unlink(missing_ok=True)
    rss.append(done.peak_rss_mib)
    if len(done.chunks) != count or any(c.state.value != "ready" for c in done.chunks):
        raise SystemExit(f"engine: {len(done.chunks)} chunks, not {count} ready ones")
    return done.seconds


def pyarrow_loop(source: Path, out: Path, rss: list[float]) -> float:
    """Each table read with pyarrow and written as ``<stem>.parquet/part-00000.parquet``, fsynced."""
    peak_rss_reset()
    t0 = time.perf_counter()
    for path in sorted(source.iterdir()):
        folder = out / f"{path.stem}.parquet"
        folder.mkdir(parents=True)
        part = folder / "part-00000.parquet"
        pq.write_table(pacsv.read_csv(path), part, compression="zstd")
        fd = os.open(part, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - t0
    rss.append(peak_rss_mib())
    return seconds


def check(out: Path, count: int, rows: int) -> None:
    """Raise SystemExit unless every table's folder is there and a sample reads back ``rows`` rows."""
    folders = sorted(out.glob("*.parquet"))
    if len(folders) != count:
        raise SystemExit(f"{out}: {len(folders)} table folders, not {count}")
    for folder in folders[:: max(1, count // 20)]:
        table = pq.read_table(folder)
        if table.num_rows != rows or table.column_names[: len(COLUMNS)] != COLUMNS:
            raise SystemExit(f"{folder}: {table.num_rows} rows, columns {table.column_names}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rows", type=int, default=50, help="rows per table")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cache", choices=["drop", "warm"], default="drop")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bench = BenchRun("many small tables -> Parquet", args.cache, f"; {args.rows} rows per table")
    sources = {count: make_source(count, args.rows) for count in args.counts}
    times: dict[int, dict[str, list[float]]] = {c: {n: [] for n in CANDIDATES} for c in args.counts}
    cpu: dict[int, dict[str, list[float]]] = {c: {} for c in args.counts}
    rss: dict[int, dict[str, list[float]]] = {c: {n: [] for n in CANDIDATES} for c in args.counts}
    for rep in range(args.reps):
        order = args.counts[rep % len(args.counts) :] + args.counts[: rep % len(args.counts)]
        for count in order:
            out = ROOT / f"out-{count}"

            def before(name: str, rep: int, out: Path = out, count: int = count) -> None:
                rmtree(out)
                out.mkdir(parents=True)
                bench.cache.prepare(*sorted(sources[count].iterdir()))

            def after(name: str, rep: int, out: Path = out, count: int = count) -> None:
                check(out, count, args.rows)
                rmtree(out)

            print(f"  {count} tables:", flush=True)
            got = interleaved(
                {
                    "engine": lambda r, c=count, o=out: engine(sources[c], o, c, rss[c]["engine"]),
                    "pyarrow loop": lambda r, c=count, o=out: pyarrow_loop(
                        sources[c], o, rss[c]["pyarrow loop"]
                    ),
                },
                1,
                before=before,
                after=after,
                cpu=cpu[count],
                first_rep=rep,
                total_reps=args.reps,
            )
            for name, values in got.items():
                times[count][name].extend(values)
    results: dict[str, object] = {"rows_per_table": args.rows, "counts": {}}
    for count in args.counts:
        t = times[count]
        per_rep = [b / e for b, e in zip(t["pyarrow loop"], t["engine"], strict=True)]
        line = {
            name: {
                "tables_per_s": count / med(t[name]),
                "cpu_s": med(cpu[count][name]),
                "peak_rss_mib": med(rss[count][name]),
            }
            for name in CANDIDATES
        }
        results["counts"][count] = {**line, "ratio": med(per_rep)}  # type: ignore[index]
        print(
            f"{count:>6} tables: engine {line['engine']['tables_per_s']:.0f} tables/s "
            f"({line['engine']['cpu_s']:.1f} CPU-s, {line['engine']['peak_rss_mib']:.0f} MiB), pyarrow loop "
            f"{line['pyarrow loop']['tables_per_s']:.0f} tables/s "
            f"({line['pyarrow loop']['cpu_s']:.1f} CPU-s); ratio {med(per_rep):.2f}x"
        )
    if len(args.counts) > 1:
        small, large = args.counts[-2], args.counts[-1]
        for name in CANDIDATES:
            flat = [
                (large / b) / (small / a) for a, b in zip(times[small][name], times[large][name], strict=True)
            ]
            print(f"flatness {name}: tables/s at {large} / at {small} = {med(flat):.2f}")
    bench.finish(results, args.json)


if __name__ == "__main__":
    main()
