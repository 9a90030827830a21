"""CSV -> Parquet: ``jupyter_staging.formats.convert.convert_to_parquet`` vs bare pyarrow vs pandas.

Input: a Kepler-like light-curve CSV (``datagen.py``; 20 numeric columns, NaN gaps), default ~500 MB.
Candidates, interleaved in one process, the page cache dropped before each run when possible:

- ``ours``: ``convert_to_parquet(src, out, chunk_rows=1_000_000, compression="zstd")`` — streaming
  reader thread, 1M-row part files each written through ``.part`` with sha256 + fsync + publish.
- ``pyarrow``: the bare streaming baseline — ``pyarrow.csv.open_csv`` (same 8 MiB blocks as ours)
  with every batch written by ``ParquetWriter.write_batch`` into one zstd file, then fsync.
- ``pyarrow-1M``: the same reader, batches gathered into 1M-row row groups before writing (what a
  careful hand-written script does), then fsync.
- ``pandas``: ``pd.read_csv(src).to_parquet(out, compression="zstd")`` — whole file in memory (the naive
  baseline), then fsync. (``to_parquet``'s default codec is snappy; zstd keeps sizes comparable.)

Ratios are ``baseline_time / ours_time`` per repetition, median over repetitions (≥ 1: ours is as fast).
Usage::

    .venv/bin/python bench/bench_convert.py --size-mb 500 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import datagen
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from benchlib import WORK, MachineLoad, PageCache, human, interleaved, machine, med, ratios, rmtree, spread

CHUNK_ROWS = 1_000_000


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parquet_rows(path: Path) -> tuple[int, int, int]:
    """(rows, row groups, files) of a Parquet file or a folder of them."""
    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    rows = groups = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        groups += meta.num_row_groups
    return rows, groups, len(files)


def run_ours(src: Path, out: Path, chunk_rows: int, compression: str) -> None:
    from jupyter_staging.formats.convert import convert_to_parquet

    convert_to_parquet(src, out, chunk_rows=chunk_rows, compression=compression)


def run_pyarrow(src: Path, out: Path, compression: str, group_rows: int | None) -> None:
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
    import pandas as pd

    pd.read_csv(src).to_parquet(out, compression=compression)
    fsync_path(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=500, help="CSV size, MB (10^6 bytes)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    ap.add_argument("--compression", default="zstd")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    ap.add_argument("--no-pyarrow-1m", action="store_true", help="skip the pyarrow-1M baseline")
    ap.add_argument("--workdir", type=Path, default=WORK / "convert")
    ap.add_argument("--keep", action="store_true", help="keep the generated CSV for the next run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    work = args.workdir.resolve()
    src = work / "src" / f"kepler_lc_{int(args.size_mb)}mb.csv"
    outs = work / "out"
    rmtree(outs)
    outs.mkdir(parents=True)
    print(
        f"# bench_convert: ~{args.size_mb:g} MB CSV, {args.reps} reps, chunk_rows={args.chunk_rows}, "
        f"{args.compression}; {machine()}, pyarrow {pa.__version__}"
    )
    t = time.perf_counter()
    meta = datagen.write_csv(src, args.size_mb)
    print(
        f"# input ready in {time.perf_counter() - t:.1f}s: {src.name}, {meta['rows']} rows, "
        f"{len(datagen.COLUMNS)} columns, {meta['bytes'] / 1e6:.0f} MB"
    )

    cache = PageCache(args.cache)
    sizes: dict[str, int] = {}
    shapes: dict[str, tuple[int, int, int]] = {}

    def candidate(name: str, fn):  # noqa: ANN001
        def run(rep: int) -> float:
            out = outs / f"{name}-{rep}" if name == "ours" else outs / f"{name}-{rep}.parquet"
            t0 = time.perf_counter()
            fn(out)
            elapsed = time.perf_counter() - t0
            sizes[name] = tree_size(out)
            shapes[name] = parquet_rows(out)
            if shapes[name][0] != meta["rows"]:
                raise SystemExit(f"{name} wrote {shapes[name][0]} rows, expected {meta['rows']}")
            return elapsed

        return run

    candidates = {
        "ours": candidate("ours", lambda out: run_ours(src, out, args.chunk_rows, args.compression)),
        "pyarrow": candidate("pyarrow", lambda out: run_pyarrow(src, out, args.compression, None)),
    }
    if not args.no_pyarrow_1m:
        candidates["pyarrow-1M"] = candidate(
            "pyarrow-1M", lambda out: run_pyarrow(src, out, args.compression, args.chunk_rows)
        )
    if not args.no_pandas:
        candidates["pandas"] = candidate("pandas", lambda out: run_pandas(src, out, args.compression))

    def before(_name: str, _rep: int) -> None:
        cache.prepare(src)

    def after(_name: str, _rep: int) -> None:
        for entry in outs.iterdir():
            rmtree(entry) if entry.is_dir() else entry.unlink()

    cpu: dict[str, list[float]] = {}
    load = MachineLoad()
    try:
        times = interleaved(candidates, args.reps, before=before, after=after, cpu=cpu)
    finally:
        rmtree(outs)
        if not args.keep:
            rmtree(src.parent)

    ours = times["ours"]
    mb = meta["bytes"] / 1e6
    print(f"# {cache.describe()}")
    print(f"# {load.describe()}")
    print(
        f"# ours: {med(ours):.2f} s ({mb / med(ours):.0f} MB/s of CSV), output {human(sizes['ours'])} in "
        f"{shapes['ours'][2]} part files, {shapes['ours'][1]} row groups"
    )
    result: dict = {
        "bench": "convert",
        "size_mb": round(mb),
        "rows": meta["rows"],
        "reps": args.reps,
        "cache": cache.describe(),
        "load": load.describe(),
        "times": times,
        "median_s": {k: med(v) for k, v in times.items()},
        "median_cpu_s": {k: med(v) for k, v in cpu.items()},
        "bytes": sizes,
        "row_groups": {k: v[1] for k, v in shapes.items()},
        "ratios": {},
    }
    for name in candidates:
        if name == "ours":
            continue
        r = ratios(times[name], ours)
        result["ratios"][name] = med(r)
        print(
            f"convert {mb:.0f} MB CSV: ours {med(ours):.2f} s, {name} {med(times[name]):.2f} s -> ratio "
            f"({name}/ours) {med(r):.2f}x  [median of {args.reps}; {spread(r)}]  sizes: ours "
            f"{human(sizes['ours'])}, {name} {human(sizes[name])} ({sizes['ours'] / sizes[name]:.2f}x), "
            f"row groups {shapes['ours'][1]} vs {shapes[name][1]}"
        )
    print("# median CPU seconds (user+sys): " + ", ".join(f"{k} {med(v):.1f}" for k, v in cpu.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
