"""Table -> Parquet: ``jupyter_staging.formats.convert.convert_to_parquet`` vs DuckDB, bare pyarrow, pandas
(CSV) or a hand-written raw-records reader (FITS): time, CPU seconds and peak RSS.

Input (``datagen.py``): a Kepler-like light-curve CSV (20 numeric columns, NaN gaps; ``--kind csv``,
default ~500 MB) or the same rows as a FITS binary table (``--kind fits``). Every run is a fresh
``python`` subprocess that imports only what its candidate needs, then times the conversion itself and
reads its own peak RSS (``VmHWM`` from ``/proc/self/status``) and CPU seconds (``getrusage``, user + system,
all its threads) as its last act; the page cache is dropped before each run when possible. Candidates:

- ``ours``: ``convert_to_parquet(src, out, chunk_rows=1_000_000, compression="zstd")`` — streaming
  reader thread, 1M-row part files each written through ``.part`` with sha256 + fsync + publish.
- ``duckdb`` (CSV, when ``duckdb`` is importable): ``COPY (SELECT * FROM read_csv(src)) TO out (FORMAT
  parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)`` with ``threads`` = cores and
  ``preserve_insertion_order = false`` (what a user tuning it would set), then fsync.
  ``duckdb-ordered`` (not run unless named in ``--candidates``): the same with DuckDB's defaults.
- ``pyarrow`` (CSV): ``pyarrow.csv.open_csv`` (our block size) with every batch written by
  ``ParquetWriter.write_batch`` into one zstd file, then fsync. ``pyarrow-1M``: batches gathered into
  1M-row row groups first (what a careful hand-written script does).
- ``pandas`` (CSV): ``pd.read_csv(src).to_parquet(out, compression="zstd")`` — whole file in memory.
- ``raw-records`` (FITS): the table's header read by astropy, then 1M-row slices of raw big-endian
  records read with ``numpy.fromfile``, made native and written as row groups by one ``ParquetWriter``
  that, as ours, tries no dictionary on float columns (trying one and falling back doubled its CPU).

Every output's row count is checked. Ratios per repetition, median over repetitions: time
``baseline / ours`` (≥ 1: ours is as fast) and peak RSS ``ours / baseline`` (< 1: ours holds less).
Usage::

    .venv/bin/python bench/bench_convert.py --size-mb 1000 --reps 3 --candidates ours duckdb
    .venv/bin/python bench/bench_convert.py --kind fits --size-mb 1000 --reps 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import (
    REPO,
    WORK,
    MachineLoad,
    PageCache,
    human,
    interleaved,
    machine,
    med,
    peak_rss_mib,
    ratios,
    rmtree,
    spread,
)

CHUNK_ROWS = 1_000_000
DEFAULT_CANDIDATES = {
    "csv": ["ours", "duckdb", "pyarrow", "pyarrow-1M", "pandas"],
    "fits": ["ours", "raw-records"],
}

# The candidates run in a child process that imports only what each needs (so its peak RSS counts no
# other library): their heavy imports are deferred into the functions below on purpose.


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_ours(src: Path, out: Path, chunk_rows: int, compression: str) -> None:
    from jupyter_staging.formats.convert import convert_to_parquet  # child only (see above)

    convert_to_parquet(src, out, chunk_rows=chunk_rows, compression=compression)


def run_duckdb(src: Path, out: Path, chunk_rows: int, compression: str, *, ordered: bool = False) -> None:
    import duckdb  # child only; optional: pip install duckdb (the "bench" extra)

    config = {"threads": os.cpu_count() or 1, "preserve_insertion_order": ordered}
    with duckdb.connect(config=config) as con:
        con.execute(
            f"COPY (SELECT * FROM read_csv('{src}')) TO '{out}' "
            f"(FORMAT parquet, COMPRESSION {compression}, ROW_GROUP_SIZE {chunk_rows})"
        )
    fsync_path(out)


def run_pyarrow(src: Path, out: Path, compression: str, group_rows: int | None) -> None:
    import pyarrow as pa  # child only (see above)
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from jupyter_staging.formats.csv import CSV_BLOCK_SIZE

    reader = pacsv.open_csv(src, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE))
    with pq.ParquetWriter(out, reader.schema, compression=compression) as writer:
        if group_rows is None:
            for batch in reader:
                writer.write_batch(batch)
        else:
            pending: list[pa.RecordBatch] = []
            rows = 0
            for batch in reader:
                pending.append(batch)
                rows += batch.num_rows
                if rows >= group_rows:
                    table = pa.Table.from_batches(pending)
                    writer.write_table(table.slice(0, group_rows), row_group_size=group_rows)
                    rest = table.slice(group_rows)
                    pending, rows = rest.to_batches(), rest.num_rows
            if rows:
                writer.write_table(pa.Table.from_batches(pending), row_group_size=group_rows)
    fsync_path(out)


def run_pandas(src: Path, out: Path, compression: str) -> None:
    import pandas as pd  # child only (see above)

    pd.read_csv(src).to_parquet(out, compression=compression)
    fsync_path(out)


def run_raw_records(src: Path, out: Path, chunk_rows: int, compression: str) -> None:
    import numpy as np  # child only (see above)
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io import fits

    with fits.open(src, memmap=False, lazy_load_hdus=True) as hdul:
        hdu = hdul[1]
        offset, rows = hdul.fileinfo(1)["datLoc"], hdu.header["NAXIS2"]
        dtype = np.dtype(hdu.columns.dtype).newbyteorder(">")
    names = list(dtype.names or ())
    schema = pa.schema([(n, pa.from_numpy_dtype(dtype[n].newbyteorder("="))) for n in names])
    # Tuned as ours is: no dictionary tried on float columns (measured values rarely repeat).
    dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
    with (
        open(src, "rb") as fh,
        pq.ParquetWriter(out, schema, compression=compression, use_dictionary=dictionary) as writer,
    ):
        fh.seek(offset)
        for start in range(0, rows, chunk_rows):
            records = np.fromfile(fh, dtype=dtype, count=min(chunk_rows, rows - start))
            arrays = [pa.array(records[n].astype(dtype[n].newbyteorder("="))) for n in names]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=chunk_rows)
    fsync_path(out)


RUNNERS: dict[str, Callable[[Path, Path, int, str], None]] = {
    "ours": run_ours,
    "duckdb": run_duckdb,
    "duckdb-ordered": lambda s, o, n, c: run_duckdb(s, o, n, c, ordered=True),
    "pyarrow": lambda s, o, n, c: run_pyarrow(s, o, c, None),
    "pyarrow-1M": lambda s, o, n, c: run_pyarrow(s, o, c, n),
    "pandas": lambda s, o, n, c: run_pandas(s, o, c),
    "raw-records": run_raw_records,
}
#: Modules imported before the clock starts (import time is not conversion time).
IMPORTS = {
    "ours": ["jupyter_staging.formats.convert"],
    "duckdb": ["duckdb"],
    "duckdb-ordered": ["duckdb"],
    "pyarrow": ["pyarrow.csv", "pyarrow.parquet", "jupyter_staging.formats.csv"],
    "pyarrow-1M": ["pyarrow.csv", "pyarrow.parquet", "jupyter_staging.formats.csv"],
    "pandas": ["pandas", "pyarrow.parquet"],
    "raw-records": ["numpy", "pyarrow.parquet", "astropy.io.fits"],
}


def child(name: str, src: Path, out: Path, chunk_rows: int, compression: str) -> dict:
    """Run one candidate in this (fresh) process: ``{"seconds", "cpu_s", "peak_rss_mib"}``."""
    for module in IMPORTS[name]:
        importlib.import_module(module)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    RUNNERS[name](src, out, chunk_rows, compression)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return {"seconds": seconds, "cpu_s": cpu, "peak_rss_mib": peak_rss_mib()}


def spawn(name: str, src: Path, out: Path, chunk_rows: int, compression: str) -> dict:
    """Run ``name`` in a fresh subprocess (this script with ``--child``); its figures."""
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    cmd = [sys.executable, __file__, "--child", name, str(src), str(out)]
    cmd += ["--chunk-rows", str(chunk_rows), "--compression", compression]
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, env=env, cwd=str(REPO))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parquet_rows(path: Path) -> tuple[int, int, int]:
    """(rows, row groups, files) of a Parquet file or a folder of them."""
    import pyarrow.parquet as pq  # parent only (see above)

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    rows = groups = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        groups += meta.num_row_groups
    return rows, groups, len(files)


def chosen(args: argparse.Namespace) -> list[str]:
    names = list(args.candidates or DEFAULT_CANDIDATES[args.kind])
    skip = {"pandas"} if args.no_pandas else set()
    skip |= {"pyarrow-1M"} if args.no_pyarrow_1m else set()
    if importlib.util.find_spec("duckdb") is None:
        skip |= {"duckdb", "duckdb-ordered"}
        print("# duckdb is not importable: its baseline is skipped (pip install duckdb)")
    unknown = set(names) - set(RUNNERS)
    if unknown or "ours" not in names:
        raise SystemExit(f"--candidates must name ours and some of {', '.join(RUNNERS)}")
    return [n for n in names if n not in skip]


def measure(args: argparse.Namespace, src: Path, rows: int, names: list[str]) -> dict:
    """Interleaved runs of ``names``; per candidate the lists of figures and the output's shape."""
    outs = args.workdir.resolve() / "out"
    rmtree(outs)
    outs.mkdir(parents=True)
    cache = PageCache(args.cache)
    figures: dict[str, dict[str, list[float]]] = {n: {"cpu_s": [], "peak_rss_mib": []} for n in names}
    sizes: dict[str, int] = {}
    shapes: dict[str, tuple[int, int, int]] = {}

    def candidate(name: str) -> Callable[[int], float]:
        def run(rep: int) -> float:
            out = outs / f"{name}-{rep}" if name == "ours" else outs / f"{name}-{rep}.parquet"
            got = spawn(name, src, out, args.chunk_rows, args.compression)
            sizes[name], shapes[name] = tree_size(out), parquet_rows(out)
            if shapes[name][0] != rows:
                raise SystemExit(f"{name} wrote {shapes[name][0]} rows, expected {rows}")
            for key in ("cpu_s", "peak_rss_mib"):
                figures[name][key].append(got[key])
            return got["seconds"]

        return run

    def after(_name: str, _rep: int) -> None:
        for entry in outs.iterdir():
            rmtree(entry) if entry.is_dir() else entry.unlink()

    load = MachineLoad()
    try:
        times = interleaved(
            {n: candidate(n) for n in names}, args.reps, before=lambda n, r: cache.prepare(src), after=after
        )
    finally:
        rmtree(outs)
    return {
        "times": times,
        "figures": figures,
        "bytes": sizes,
        "shapes": shapes,
        "cache": cache.describe(),
        "load": load.describe(),
    }


def report(args: argparse.Namespace, meta: dict, m: dict) -> dict:
    """Print the medians and ratios; the JSON result."""
    times, figures, sizes, shapes = m["times"], m["figures"], m["bytes"], m["shapes"]
    mb, ours = meta["bytes"] / 1e6, times["ours"]
    rss = {n: f["peak_rss_mib"] for n, f in figures.items()}
    print(f"# {m['cache']}\n# {m['load']}; load average now {os.getloadavg()}")
    result: dict = {
        "bench": "convert",
        "kind": args.kind,
        "size_mb": round(mb),
        "rows": meta["rows"],
        "reps": args.reps,
        "cache": m["cache"],
        "load": m["load"],
        "times": times,
        "median_s": {k: med(v) for k, v in times.items()},
        "median_cpu_s": {k: med(v["cpu_s"]) for k, v in figures.items()},
        "median_peak_rss_mib": {k: med(v) for k, v in rss.items()},
        "bytes": sizes,
        "row_groups": {k: v[1] for k, v in shapes.items()},
        "ratios": {},
        "rss_ratios": {},
    }
    for name, f in figures.items():
        print(
            f"# {name}: {med(times[name]):.2f} s ({mb / med(times[name]):.0f} MB/s), CPU "
            f"{med(f['cpu_s']):.1f} s, peak RSS {med(f['peak_rss_mib']):.0f} MiB, output "
            f"{human(sizes[name])} in {shapes[name][2]} files, {shapes[name][1]} row groups"
        )
    for name in times:
        if name == "ours":
            continue
        r, q = ratios(times[name], ours), [o / b for o, b in zip(rss["ours"], rss[name], strict=True)]
        result["ratios"][name], result["rss_ratios"][name] = med(r), med(q)
        print(
            f"convert {mb:.0f} MB {args.kind.upper()}: ours {med(ours):.2f} s, {name} "
            f"{med(times[name]):.2f} s "
            f"-> time ({name}/ours) {med(r):.2f}x {spread(r)}; peak RSS (ours/{name}) {med(q):.2f}x "
            f"{spread(q)}; size ours/{name} {sizes['ours'] / sizes[name]:.2f}x  [median of {args.reps}]"
        )
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("csv", "fits"), default="csv")
    ap.add_argument("--size-mb", type=float, default=500, help="input size, MB (10^6 bytes)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument("--candidates", nargs="+", help=f"default: {DEFAULT_CANDIDATES}")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    ap.add_argument("--no-pyarrow-1m", action="store_true", help="skip the pyarrow-1M baseline")
    ap.add_argument("--workdir", type=Path, default=WORK / "convert")
    ap.add_argument("--keep", action="store_true", help="keep the generated input for the next run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, metavar=("NAME", "SRC", "OUT"), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.child:
        name, src, out = args.child
        figures = child(name, Path(src), Path(out), args.chunk_rows, args.compression)
        print(json.dumps(figures))
        return figures
    import datagen  # parent only (see above)
    import pyarrow as pa

    names = chosen(args)
    src = args.workdir.resolve() / "src" / f"kepler_lc_{int(args.size_mb)}mb.{args.kind}"
    print(
        f"# bench_convert: ~{args.size_mb:g} MB {args.kind.upper()}, {args.reps} reps, chunk_rows="
        f"{args.chunk_rows}, {args.compression}; {machine()}, pyarrow {pa.__version__}; load average "
        f"{os.getloadavg()}"
    )
    t = time.perf_counter()
    meta = (datagen.write_csv if args.kind == "csv" else datagen.write_fits)(src, args.size_mb)
    print(
        f"# input ready in {time.perf_counter() - t:.1f}s: {src.name}, {meta['rows']} rows, {meta['bytes']} B"
    )
    try:
        result = report(args, meta, measure(args, src, meta["rows"], names))
    finally:
        if not args.keep:
            rmtree(src.parent)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
