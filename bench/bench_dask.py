"""Jobs on a Dask cluster (issue 15) vs the same jobs on the server's threads and the tools a user picks.

Real :class:`jupyter_staging.engine.manager.StagingManager` jobs (through the manager, no HTTP) run on the
local executor (threads) and on :class:`jupyter_staging.engine.executors.DaskExecutor` connected to
``distributed.LocalCluster`` s started here (127.0.0.1, no dashboard, ``--threads-per-worker`` threads per
worker process; the executor connects at manager start). Candidates run interleaved (the order rotates every
repetition), the page cache dropped before each timed run where permitted. Sections:

1. **CSV -> Parquet** (Kepler-like light-curve CSV from ``datagen.py``, default ~2 GB; ``convert:
   {"format": "parquet", "chunk_rows": N}``): local executor vs Dask with 1 worker process vs 2, and DuckDB
   ``COPY (SELECT * FROM read_csv(...)) TO ... (FORMAT parquet, COMPRESSION zstd)`` when ``duckdb`` is
   importable (bench/ does not install it). Every run's rows are checked, and the sha256 of every part file
   on disk must equal the local executor's (and the chunk records').
2. **Local file copy** (random bytes, default 2 GiB): local executor vs Dask 2 workers (ranges of
   ``--range-mib``) vs ``cp SRC DST && sync DST``; chunk sha256 = source's, a Dask output re-hashed on disk.
3. **Overhead of the Dask path on a small job**: one 1 MB file and a manifest of 3 files of 100 kB, on the
   local executor vs Dask 2 workers, median of ``--small-reps``; page cache warm (the question is the
   fixed cost, not the disk). One untimed first job per manager and kind comes before (worker imports).
4. **Cluster start**: ``LocalCluster(n_workers=2)`` until both workers are up, median of ``--cluster-starts``.
5. **A folder of many small files** (``--files`` files of ``--file-kib`` KiB, default 2,000 x 64 KiB: a sector
   of light curves): local executor vs Dask 2 workers (the small files go as tasks of several files each);
   every chunk's sha256 checked against the sources'. The page cache is dropped before each run (no
   warming in ``--cache warm``).
6. **A manifest of many single local files** (``--manifest-files``, default 300 and 1,000 entries of
   ``--file-kib`` KiB, each a local path: a MAST download list on the shared storage; 1,000 is the most a
   manifest holds, ``MAX_MANIFEST_ENTRIES``): local executor vs Dask 2 workers; every chunk's sha256
   checked, the page cache dropped before each run.

Measured per run: wall seconds (``create()`` to the job's ``finished_at``), CPU seconds of this process (the
server: manager, threads, the in-process scheduler, waited-for children such as ``cp``) and of the Dask
worker processes (psutil ``cpu_times``), and peak RSS (``VmHWM``, reset through ``/proc/PID/clear_refs``
before each run) of this process and of the largest worker. Tasks are counted by polling
``manager.get(job_id).progress.tasks`` every 50 ms (queued + running + done, so a lower bound for short
tasks). Usage::

    .venv/bin/python bench/bench_dask.py --size-mb 2000 --copy-mib 2048 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import datagen
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from bench_convert import fsync_path
from bench_copy import make_source
from benchlib import WORK, CpuClock, MachineLoad, MiB, PageCache, interleaved, machine, med, rmtree
from distributed import Client, LocalCluster

from jupyter_staging.engine.executors import DaskExecutor, LocalExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ConvertOptions, CreateJob, DescribeJob, JobState

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}
POLL_S = 0.05


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def reset_peak(pid: int | str) -> None:
    """Reset ``VmHWM`` of process ``pid`` (Linux ``5 > /proc/PID/clear_refs``); ignored where refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5\n")
    except OSError:
        pass


def peak_mib(pid: int | str) -> float:
    """``VmHWM`` of process ``pid`` (MiB)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Cluster:
    """A ``LocalCluster`` of ``workers`` processes on 127.0.0.1 (no dashboard) and a client; ``seconds``
    is how long it took until every worker had joined."""

    def __init__(self, workers: int, threads: int) -> None:
        t0 = time.perf_counter()
        self.cluster = LocalCluster(
            n_workers=workers, threads_per_worker=threads, host="127.0.0.1", dashboard_address=None
        )
        self.client = Client(self.cluster, set_as_default=False)
        self.client.wait_for_workers(workers, timeout=120)
        self.seconds = time.perf_counter() - t0
        self.address: str = self.cluster.scheduler_address
        self.procs = [psutil.Process(pid) for pid in self.client.run(os.getpid).values()]

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class Meter:
    """CPU seconds and peak RSS of one run, of this process and of the worker processes ``procs``."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    @contextmanager
    def run(self, into: dict[str, list[float]]) -> Iterator[None]:
        """Measure the block; appends ``cpu_server``, ``cpu_workers``, ``rss_server``, ``rss_worker``."""
        pa.default_memory_pool().release_unused()  # else memory kept from earlier runs counts here
        for pid in ("self", *(p.pid for p in self.procs)):
            reset_peak(pid)
        cpu0, w0 = CpuClock.now(), [self._cpu(p) for p in self.procs]
        yield
        into.setdefault("cpu_server", []).append(CpuClock.now() - cpu0)
        workers = sum(self._cpu(p) - c for p, c in zip(self.procs, w0, strict=True))
        into.setdefault("cpu_workers", []).append(workers)
        into.setdefault("rss_server", []).append(peak_mib("self"))
        into.setdefault("rss_worker", []).append(max((peak_mib(p.pid) for p in self.procs), default=0.0))


class Engine:
    """A manager on one executor, in its own root, with the worker processes its tasks run on."""

    def __init__(self, root: Path, cluster: Cluster | None, range_bytes: int) -> None:
        rmtree(root)
        root.mkdir(parents=True)
        self.root = root
        self.procs = cluster.procs if cluster is not None else []
        options = {"scheduler_address": cluster.address, "range_bytes": range_bytes} if cluster else {}
        self.manager = StagingManager(
            root,
            db_url=f"sqlite:///{root}/.jobs.db",
            sweep_interval=0,
            executor_class=DaskExecutor if cluster is not None else LocalExecutor,
            executor_options=options,
        )
        self.manager.start()
        self.last_tasks = 0  # tasks (queued + running + done) seen in the last run
        self.last_workers: set[str] = set()  # workers seen running its tasks
        self.notes: set[str] = set()  # what the job logs said about tasks

    def run(self, request: CreateJob, timeout: float = 3600) -> tuple[float, DescribeJob]:
        """Run one job to its end, polling its task counts; returns (seconds, the job). Exits unless it
        succeeded."""
        started, t0 = time.time(), time.perf_counter()
        job, _ = self.manager.create(request)
        seen, self.last_workers = 0, set()
        while True:
            job = self.manager.get(job.id)
            if job.progress.tasks is not None:
                t = job.progress.tasks
                seen = max(seen, t.queued + t.running + t.done)
                self.last_workers.update(t.workers)
            if job.state in FINAL:
                break
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"job {job.id} still {job.state.value} after {timeout} s")
            time.sleep(POLL_S)
        waited = time.perf_counter() - t0
        if job.state != JobState.succeeded or job.finished_at is None:
            raise SystemExit(f"job {job.id} ended {job.state.value}: {job.error}")
        self.last_tasks = seen
        for line in self.manager.job_log(job.id):
            if "Dask tasks" in line["message"] or "not as Dask" in line["message"]:
                self.notes.add(line["message"].split(": ", 1)[-1])
        finished = job.finished_at.timestamp() - started
        return (min(waited, finished) if finished > 0 else waited), job

    def stop(self) -> None:
        self.manager.stop(wait=True)
        rmtree(self.root)


Figures = dict[str, dict[str, list[float]]]


Runs = Mapping[str, Callable[[int], float]]


def measured(engines: dict[str, Engine], figures: Figures, runs: Runs) -> Runs:
    """Wrap each run so that its CPU and peak RSS land in ``figures[name]`` (workers of its engine)."""

    def wrap(name: str, fn: Callable[[int], float]) -> Callable[[int], float]:
        meter = Meter(engines[name].procs if name in engines else [])

        def run(rep: int) -> float:
            with meter.run(figures.setdefault(name, {})):
                seconds = fn(rep)
            figures[name].setdefault("wall", []).append(seconds)
            if name in engines:
                figures[name].setdefault("tasks", []).append(engines[name].last_tasks)
                figures[name].setdefault("busy_workers", []).append(len(engines[name].last_workers))
            return seconds

        return run

    return {name: wrap(name, fn) for name, fn in runs.items()}


def part_digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*.parquet"))
        if p.is_file()
    }


def convert_section(args: argparse.Namespace, engines: dict[str, Engine], cache: PageCache) -> dict:
    """Section 1: CSV -> Parquet on each engine (and DuckDB); returns figures, parts, tasks."""
    src = args.work / "src" / f"kepler_lc_{int(args.size_mb)}mb.csv"
    t = time.perf_counter()
    meta = datagen.write_csv(src, args.size_mb)
    print(
        f"\n## CSV -> Parquet: {meta['bytes'] / 1e6:.0f} MB, {meta['rows']} rows, chunk_rows "
        f"{args.chunk_rows} (input made in {time.perf_counter() - t:.0f} s)",
        flush=True,
    )
    convert = ConvertOptions(format="parquet", chunk_rows=args.chunk_rows, compression="zstd")
    digests: dict[str, list[dict[str, str]]] = {}
    outputs: dict[str, Path] = {}

    def engine_run(name: str) -> Callable[[int], float]:
        def run(rep: int) -> float:
            dest = f"csv-{rep}"
            seconds, job = engines[name].run(CreateJob(source=str(src), destination=dest, convert=convert))
            chunks = engines[name].manager.chunks(job.id, urls=False)
            if sum(c.rows or 0 for c in chunks) != meta["rows"]:
                raise SystemExit(f"{name}: {sum(c.rows or 0 for c in chunks)} rows, not {meta['rows']}")
            outputs[name] = engines[name].root / dest
            digests.setdefault(name, []).append({c.path: c.sha256 or "" for c in chunks})
            return seconds

        return run

    def duckdb_run(rep: int) -> float:
        outputs["duckdb"] = args.work / "duckdb"
        return duckdb_copy(src, outputs["duckdb"] / f"out-{rep}.parquet", meta["rows"])

    runs = {name: engine_run(name) for name in engines}
    if importlib.util.find_spec("duckdb") is not None:
        runs["duckdb"] = duckdb_run

    def after(name: str, rep: int) -> None:  # untimed: the files on disk are what the chunks say
        if name in engines:
            if part_digests(outputs[name]) != digests[name][-1]:
                raise SystemExit(f"{name}: the part files in the destination differ from the chunk records")
        rmtree(outputs[name])
        os.sync()

    figures: Figures = {}
    try:
        interleaved(
            measured(engines, figures, runs), args.reps, before=lambda n, r: cache.prepare(src), after=after
        )
    finally:
        if not args.keep:
            rmtree(src.parent)
        rmtree(args.work / "duckdb")
    reference = digests["local"][0]
    if any(m != reference for maps in digests.values() for m in maps):
        raise SystemExit("part files differ from the local executor's (sha256)")
    print(
        f"# every engine run: {meta['rows']} rows; {len(reference)} part files, sha256 identical to the "
        "local executor's",
        flush=True,
    )
    return {"figures": figures, "rows": meta["rows"], "bytes": meta["bytes"], "parts": len(reference)}


def duckdb_copy(src: Path, out: Path, rows: int) -> float:
    """DuckDB ``COPY (SELECT * FROM read_csv(src)) TO out (FORMAT parquet, COMPRESSION zstd)`` and an fsync;
    returns seconds. Exits unless ``out`` has ``rows`` rows."""
    import duckdb  # optional: only where the bench venv has it (bench/ does not install it)

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(f"COPY (SELECT * FROM read_csv('{src}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    fsync_path(out)
    seconds = time.perf_counter() - t0
    if pq.ParquetFile(out).metadata.num_rows != rows:
        raise SystemExit(f"duckdb wrote {pq.ParquetFile(out).metadata.num_rows} rows, not {rows}")
    return seconds


def copy_section(args: argparse.Namespace, engines: dict[str, Engine], cache: PageCache) -> dict:
    """Section 2: a large local file copied by the local executor, by Dask in ranges, and by cp + sync."""
    size = args.copy_mib * MiB
    src = args.work / "copysrc" / "lightcurves.bin"
    src_sha = make_source(src, size)
    print(f"\n## copy {args.copy_mib} MiB (Dask ranges of {args.range_mib} MiB)", flush=True)
    out = args.work / "cp"
    outputs: dict[str, Path] = {}
    copies: dict[str, Path] = {}

    def engine_run(name: str) -> Callable[[int], float]:
        def run(rep: int) -> float:
            dest = f"copy-{rep}"
            seconds, job = engines[name].run(CreateJob(source=str(src), destination=dest, method="copy"))
            [chunk] = engines[name].manager.chunks(job.id, urls=False)
            if chunk.bytes != size or chunk.sha256 != src_sha:
                raise SystemExit(f"{name}: copy is wrong: {chunk.bytes} bytes, sha256 {chunk.sha256}")
            outputs[name] = engines[name].root / dest
            copies[name] = outputs[name] / chunk.path
            return seconds

        return run

    def cp_sync(rep: int) -> float:
        out.mkdir(parents=True, exist_ok=True)
        dst = out / f"cp-{rep}.bin"
        outputs["cp+sync"] = out
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        subprocess.run(["sync", str(dst)], check=True)
        seconds = time.perf_counter() - t0
        if dst.stat().st_size != size:
            raise SystemExit(f"cp wrote {dst.stat().st_size} bytes")
        return seconds

    def after(name: str, rep: int) -> None:
        if name.startswith("dask"):  # untimed: the bytes the workers wrote, read back
            if sha256_file(copies[name]) != src_sha:
                raise SystemExit(f"{name}: the file on disk differs from the source")
        rmtree(outputs[name])
        os.sync()

    runs = {"local": engine_run("local"), "dask 2w": engine_run("dask 2w"), "cp+sync": cp_sync}
    figures: Figures = {}
    try:
        interleaved(
            measured(engines, figures, runs), args.reps, before=lambda n, r: cache.prepare(src), after=after
        )
    finally:
        rmtree(out)
        if not args.keep:
            rmtree(src.parent)
    print(f"# every copy: {size} bytes, sha256 = the source's", flush=True)
    return {"figures": figures, "bytes": size}


def files_section(args: argparse.Namespace, engines: dict[str, Engine], cache: PageCache) -> dict:
    """Section 5: a folder of ``--files`` small files of ``--file-kib`` KiB each (a sector of light curves),
    copied by the local executor and by Dask 2 workers (tasks of several files each), interleaved."""
    folder = args.work / "files"
    rmtree(folder)
    folder.mkdir(parents=True)
    sums = []
    for i in range(args.files):
        data = os.urandom(args.file_kib * 1024)
        (folder / f"lc-{i:06d}.fits").write_bytes(data)
        sums.append(hashlib.sha256(data).hexdigest())
    sums.sort()
    print(f"\n## a folder of {args.files} files of {args.file_kib} KiB", flush=True)

    def engine_run(name: str) -> Callable[[int], float]:
        def run(rep: int) -> float:
            dest = f"files-{rep}"
            seconds, job = engines[name].run(CreateJob(source=str(folder), destination=dest, method="copy"))
            got = sorted(c.sha256 or "" for c in engines[name].manager.chunks(job.id, urls=False))
            if got != sums:
                raise SystemExit(f"{name}: the staged files differ from the sources")
            return seconds

        return run

    def after(name: str, rep: int) -> None:
        rmtree(engines[name].root / f"files-{rep}")
        os.sync()

    runs = {"local": engine_run("local"), "dask 2w": engine_run("dask 2w")}
    figures: Figures = {}
    try:
        interleaved(
            measured(engines, figures, runs),
            args.reps,
            before=lambda n, r: cache.prepare(folder),
            after=after,
        )
    finally:
        if not args.keep:
            rmtree(folder)
    return {"figures": figures, "files": args.files, "kib": args.file_kib}


def manifest_section(args: argparse.Namespace, engines: dict[str, Engine], cache: PageCache) -> dict:
    """Section 6: manifests of ``--manifest-files`` entries, each one local file of ``--file-kib`` KiB,
    staged by the local executor and by Dask 2 workers, interleaved. ``{count: {"figures"}}``."""
    folder = args.work / "manifest"
    rmtree(folder)
    folder.mkdir(parents=True)
    sums = []
    for i in range(max(args.manifest_files)):
        data = os.urandom(args.file_kib * 1024)
        (folder / f"lc-{i:06d}.fits").write_bytes(data)
        sums.append(hashlib.sha256(data).hexdigest())
    result = {}
    try:
        for count in args.manifest_files:
            print(f"\n## a manifest of {count} local files of {args.file_kib} KiB", flush=True)
            manifest = {f"e{i:06d}": str(folder / f"lc-{i:06d}.fits") for i in range(count)}
            expected = sorted(sums[:count])

            def engine_run(name: str, manifest: dict = manifest, expected: list = expected) -> Callable:
                def run(rep: int) -> float:
                    request = CreateJob(manifest=manifest, destination=f"man-{rep}", method="copy")
                    seconds, job = engines[name].run(request)
                    got = sorted(c.sha256 or "" for c in engines[name].manager.chunks(job.id, urls=False))
                    if got != expected:
                        raise SystemExit(f"{name}: the staged files differ from the sources")
                    return seconds

                return run

            def after(name: str, rep: int) -> None:
                rmtree(engines[name].root / f"man-{rep}")
                os.sync()

            runs = {"local": engine_run("local"), "dask 2w": engine_run("dask 2w")}
            figures: Figures = {}
            interleaved(
                measured(engines, figures, runs),
                args.reps,
                before=lambda n, r: cache.prepare(folder),
                after=after,
            )
            result[count] = {"figures": figures}
    finally:
        if not args.keep:
            rmtree(folder)
    return {"counts": result, "kib": args.file_kib}


def small_section(args: argparse.Namespace, engines: dict[str, Engine]) -> dict:
    """Section 3: one 1 MB file and a manifest of 3 x 100 kB, local vs Dask 2 workers; the difference of
    the medians is the fixed cost of the Dask path."""
    folder = args.work / "small"
    rmtree(folder)
    folder.mkdir(parents=True)
    sums = {}
    for name, size in (("one", 1_000_000), ("m0", 100_000), ("m1", 100_000), ("m2", 100_000)):
        data = os.urandom(size)
        (folder / f"{name}.bin").write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    manifest = {f"m{i}": str(folder / f"m{i}.bin") for i in range(3)}
    print(f"\n## small jobs (median of {args.small_reps}; page cache warm)", flush=True)
    result = {
        "1 file": small_kind(args, engines, "one", {"source": str(folder / "one.bin")}, [sums["one"]]),
        "manifest of 3": small_kind(
            args, engines, "man", {"manifest": manifest}, [sums[n] for n in manifest]
        ),
    }
    rmtree(folder)
    return result


def small_kind(
    args: argparse.Namespace, engines: dict[str, Engine], kind: str, fields: dict, sums: list[str]
) -> dict:
    """One small job ``CreateJob(**fields)`` on the local executor and on Dask, interleaved."""

    def run(name: str, dest: str) -> float:
        seconds, job = engines[name].run(CreateJob(destination=dest, **fields))
        got = sorted(c.sha256 or "" for c in engines[name].manager.chunks(job.id, urls=False))
        if got != sorted(sums):
            raise SystemExit(f"{name} {kind}: staged files differ from the sources")
        rmtree(engines[name].root / dest)
        return seconds

    names = ("local", "dask 2w")
    first = {name: run(name, f"first-{kind}") for name in names}
    runs = {name: (lambda rep, n=name: run(n, f"{kind}-{rep}")) for name in names}
    print(f"# {kind}: first (untimed) job: " + ", ".join(f"{n} {s:.2f} s" for n, s in first.items()))
    figures: Figures = {}
    interleaved(measured(engines, figures, runs), args.small_reps)
    overhead = med(figures["dask 2w"]["wall"]) - med(figures["local"]["wall"])
    return {"figures": figures, "first": first, "overhead_s": overhead}


def cluster_starts(args: argparse.Namespace) -> list[float]:
    """Section 4: seconds to start a 2-worker LocalCluster until both workers joined, ``--cluster-starts``
    times (each closed at once)."""
    seconds = []
    for _ in range(args.cluster_starts):
        cluster = Cluster(2, args.threads_per_worker)
        seconds.append(cluster.seconds)
        cluster.close()
    return seconds


COLUMNS = (
    "section|candidate|wall s|local/this|CPU s server + workers|peak RSS server|max RSS worker|tasks seen"
)
HEADERS = tuple(COLUMNS.split("|"))


def table_rows(section: str, figures: Figures, baseline: str = "local") -> list[tuple[str, ...]]:
    """One row per candidate: medians, and ``baseline`` time / candidate time (median of per-repetition
    ratios; > 1: faster than the baseline)."""
    rows: list[tuple[str, ...]] = []
    for name, fig in figures.items():
        speed = ratio(figures, baseline, name)
        seen = max(fig.get("tasks", [0]))
        tasks = f"{seen}, {max(fig['busy_workers'])} workers seen busy" if seen else "-"
        cpu = f"{med(fig['cpu_server']):.1f} + {med(fig['cpu_workers']):.1f}"
        worker = f"{max(fig['rss_worker']):.0f} MiB" if max(fig["rss_worker"]) else "-"
        rss = f"{max(fig['rss_server']):.0f} MiB"
        rows.append((section, name, f"{med(fig['wall']):.2f}", f"{speed:.2f}x", cpu, rss, worker, tasks))
    return rows


def ratio(figures: Figures, baseline: str, name: str) -> float:
    """Median over repetitions of ``baseline`` time / ``name`` time (> 1: ``name`` is faster)."""
    return med([b / c for b, c in zip(figures[baseline]["wall"], figures[name]["wall"], strict=True)])


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in (HEADERS, *rows)) for i in range(len(HEADERS))]
    for r in (HEADERS, *rows):
        print("  " + "  ".join(col.ljust(w) for col, w in zip(r, widths, strict=True)).rstrip())


def report(result: dict) -> None:
    """Print the table and the lines beside it."""
    rows: list[tuple[str, ...]] = []
    if "convert" in result:
        rows += table_rows(
            f"CSV->Parquet {result['convert']['bytes'] / 1e6:.0f} MB", result["convert"]["figures"]
        )
    if "copy" in result:
        rows += table_rows(f"copy {result['copy']['bytes'] // MiB} MiB", result["copy"]["figures"])
    for kind, small in result.get("small", {}).items():
        rows += table_rows(f"small: {kind}", small["figures"])
    if "files" in result:
        rows += table_rows(
            f"{result['files']['files']} x {result['files']['kib']} KiB", result["files"]["figures"]
        )
    for count, one in result.get("manifest", {}).get("counts", {}).items():
        rows += table_rows(f"manifest {count} x {result['manifest']['kib']} KiB", one["figures"])
    print(
        "\n# bench_dask: medians; 'local/this' = local executor time / this time (> 1: faster than it); "
        "CPU = user+sys; peak RSS = VmHWM"
    )
    print_table(rows)
    if "copy" in result:
        fig = result["copy"]["figures"]
        cp = {name: ratio(fig, "cp+sync", name) for name in ("dask 2w", "local")}
        print("# copy: " + ", ".join(f"cp+sync / {name} {r:.2f}x" for name, r in cp.items()))
    for kind, small in result.get("small", {}).items():
        verdict = "meets" if small["overhead_s"] < 1.0 else "BELOW"
        print(
            f"# Dask overhead, {kind}: {small['overhead_s']:+.2f} s (median dask - median local; goal < 1 s: "
            f"{verdict} goal)"
        )
    if "files" in result:
        files = result["files"]
        rates = {n: files["files"] / med(f["wall"]) for n, f in files["figures"].items()}
        print("# folder of small files: " + ", ".join(f"{n} {r:,.0f} files/s" for n, r in rates.items()))
    for count, one in result.get("manifest", {}).get("counts", {}).items():
        rates = {n: count / med(f["wall"]) for n, f in one["figures"].items()}
        print(f"# manifest of {count}: " + ", ".join(f"{n} {r:,.0f} files/s" for n, r in rates.items()))
    if "cluster_start_s" in result:
        starts = result["cluster_start_s"]
        print(
            f"# LocalCluster 2 workers start: median {med(starts):.2f} s of {len(starts)} "
            f"[{', '.join(f'{s:.2f}' for s in starts)}]; clusters of this run: {result['clusters_s']}"
        )
    for name, notes in result.get("notes", {}).items():
        print(f"# {name} job log: {'; '.join(notes) or 'no task split logged'}")
    if "convert" in result and not result["duckdb"]:
        print(
            "# DuckDB baseline not run: duckdb is not installed in the bench venv (bench/ does not use it; "
            "DESIGN.md measured DuckDB COPY TO parquet at 5.2 s per GB CSV here with 2 threads)"
        )
    print(f"# {result['cache']}\n# {result['load']}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=2000, help="CSV size, MB (10^6 bytes)")
    ap.add_argument("--copy-mib", type=int, default=2048, help="size of the copied file (MiB)")
    ap.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per Parquet part")
    ap.add_argument("--range-mib", type=int, default=256, help="DaskExecutor range_bytes (MiB)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of sections 1 and 2 (interleaved)")
    ap.add_argument("--small-reps", type=int, default=10, help="repetitions of section 3")
    ap.add_argument("--cluster-starts", type=int, default=3, help="cluster starts timed (section 4)")
    ap.add_argument("--threads-per-worker", type=int, default=2)
    ap.add_argument("--files", type=int, default=2000, help="files of section 5 (a folder)")
    ap.add_argument("--file-kib", type=int, default=64, help="size of each file of sections 5 and 6 (KiB)")
    ap.add_argument(
        "--manifest-files", type=int, nargs="+", default=[300, 1000], help="entries of section 6's manifests"
    )
    ap.add_argument(
        "--sections",
        nargs="+",
        default=["convert", "copy", "small", "files", "manifest"],
        choices=("convert", "copy", "small", "files", "manifest"),
    )
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument("--workdir", type=Path, default=WORK / "dask")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # not every worker start / stop
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")  # its HTTP server moves on
    args.work = args.workdir.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    print(
        f"# bench_dask: {machine()}; {args.threads_per_worker} threads per worker; {args.reps} reps",
        flush=True,
    )
    load = MachineLoad()
    result: dict = {
        "bench": "dask",
        "cluster_start_s": cluster_starts(args),
        "duckdb": importlib.util.find_spec("duckdb") is not None,
    }
    clusters = {
        "dask 1w": Cluster(1, args.threads_per_worker),
        "dask 2w": Cluster(2, args.threads_per_worker),
    }
    result["clusters_s"] = {name: round(c.seconds, 2) for name, c in clusters.items()}
    engines: dict[str, Engine] = {}
    cache = PageCache(args.cache)
    try:
        engines["local"] = Engine(args.work / "root-local", None, args.range_mib * MiB)
        for name, cluster in clusters.items():
            engines[name] = Engine(args.work / f"root-{name[-2:]}", cluster, args.range_mib * MiB)
        if "convert" in args.sections:
            result["convert"] = convert_section(args, engines, cache)
        if "copy" in args.sections:  # Dask 1 worker is not a candidate of the copy
            result["copy"] = copy_section(args, {k: v for k, v in engines.items() if k != "dask 1w"}, cache)
        if "small" in args.sections:
            result["small"] = small_section(args, engines)
        if "files" in args.sections:
            result["files"] = files_section(args, engines, cache)
        if "manifest" in args.sections:
            result["manifest"] = manifest_section(args, engines, cache)
        result["notes"] = {n: sorted(e.notes) for n, e in engines.items() if n != "local"}
    finally:
        for engine in engines.values():
            engine.stop()
        for cluster in clusters.values():
            cluster.close()
    result["cache"], result["load"] = cache.describe(), load.describe()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=sorted))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
