"""Folders of many small files through the real staging engine vs ``cp -r`` + fsync and ``cp -al``.

For each count (default 200, 2,000 and 20,000 files of 64 KiB, random bytes), five candidates run
interleaved (the order rotates every repetition), the page cache dropped before each run where permitted.
Each repetition runs every count in turn (their order rotating too), so the figures of two counts are taken
minutes apart, not a whole count's runs apart: the machine's speed drifts.

- ``engine copy``: a :class:`jupyter_staging.engine.manager.StagingManager` job with ``method="copy"``
  (through the manager directly, no HTTP): listing, per file a ``.part``, copy + sha256, fsync, publish,
  chunk records in batches, ``manifest.json``, SQLite state changes. Timed from ``create()`` to the job's
  ``finished_at``.
- ``cp -r+fsync``: ``cp -r SRC DST`` then ``sync FILE...`` of every copied file (coreutils ``sync`` with
  file arguments fsyncs each): the fair baseline, since the engine fsyncs every file too.
- ``engine hardlink``: the same job with ``method="hardlink"`` (links on one thread, one fsync of the
  folder per batch; no byte of the sources is read: ``engine/links.py``), the first time: a new manager
  and job database for each run (a server that has just started).
- ``engine hardlink again``: the same job on the main manager, after an untimed hardlink job of the same
  files (kept), into a new folder (the same user linking the same shared files again elsewhere; linking
  into the same folder again is answered at once as up to date, DESIGN.md "Re-running a notebook").
- ``cp -al``: ``cp -al SRC DST``.

Printed per count: files/s (median), the ratios ``engine files/s / baseline files/s`` (median of the
per-repetition ratios), CPU seconds (this process and its children, so the engine's threads and ``cp``)
and peak RSS (``VmHWM`` of this process, reset before each engine run through ``/proc/self/clear_refs``;
``cp``'s from ``RUSAGE_CHILDREN`` is not reliable, see README). The line is flat when files/s stays the
same while the count grows 10x: the last line gives, for each candidate, files/s of the largest count over
the one before, paired by repetition (median). Every engine run is checked: succeeded, one ready chunk per
file; a copy's manifest states the source's sha256 of every file, a hard link's output is the source's
inode. Usage::

    .venv/bin/python bench/bench_scale.py --counts 200 2000 20000 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from benchlib import WORK, BenchRun, PageCache, interleaved, med, rmtree, run_job

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

ROOT = WORK / "scale"
CANDIDATES = ("engine copy", "cp -r+fsync", "engine hardlink", "engine hardlink again", "cp -al")
BASELINE = {"engine copy": "cp -r+fsync", "engine hardlink": "cp -al", "engine hardlink again": "cp -al"}


def make_source(count: int, size: int) -> tuple[Path, dict[str, str]]:
    """``count`` files of ``size`` random bytes in ``ROOT/src-<count>-<size>``; returns the folder and
    ``{name: sha256}``. Reused when present."""
    folder = ROOT / f"src-{count}-{size}"
    stamp = ROOT / f"src-{count}-{size}.json"
    if folder.is_dir() and stamp.is_file():
        sums = json.loads(stamp.read_text())
        if len(sums) == count:
            return folder, sums
    rmtree(folder)
    folder.mkdir(parents=True)
    sums = {}
    for i in range(count):
        data = os.urandom(size)
        name = f"tess-lc-{i:06d}.fits"
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    stamp.write_text(json.dumps(sums))
    os.sync()
    return folder, sums


class EngineRun:
    """Runs engine jobs of one source folder and checks them."""

    def __init__(self, mgr: StagingManager, source: Path, sums: dict[str, str]) -> None:
        self.mgr = mgr
        self.source = source
        self.sums = sums
        self.rss: dict[str, list[float]] = {}

    def __call__(
        self,
        method: Literal["copy", "hardlink"],
        dest: str,
        *,
        name: str | None = None,
        mgr: StagingManager | None = None,
    ) -> float:
        """Run one job of ``method`` into ``dest`` on ``mgr`` (default: the main manager); returns its
        seconds from ``create()`` to ``finished_at``. Raises SystemExit when it is wrong."""
        mgr = mgr or self.mgr
        request = CreateJob(source=str(self.source), destination=dest, method=method)
        done = run_job(mgr, request, f"engine {method}")
        self.rss.setdefault(name or f"engine {method}", []).append(done.peak_rss_mib)
        chunks = done.chunks
        manifest = mgr.manifest(done.job_id)
        if len(chunks) != len(self.sums) or any(c.state.value != "ready" for c in chunks):
            raise SystemExit(f"engine {method}: {len(chunks)} chunks, not {len(self.sums)} ready ones")
        stated = {o["path"]: o["sha256"] for o in manifest["objects"]}
        if method == "copy" and stated != self.sums:
            raise SystemExit(f"engine {method}: the manifest's sha256 differ from the sources'")
        if method == "hardlink" and not all(
            (ROOT / dest / name).stat().st_ino == (self.source / name).stat().st_ino for name in self.sums
        ):
            raise SystemExit(f"engine {method}: an output is not the source's inode")
        return done.seconds


def first_time(engine: EngineRun, dest: str, db: Path, concurrent_items: int) -> float:
    """A hardlink job on a new manager with a new job database (nothing staged before)."""
    db.unlink(missing_ok=True)
    mgr = StagingManager(ROOT, db_url=f"sqlite:///{db}", sweep_interval=0, concurrent_items=concurrent_items)
    mgr.start()
    try:
        return engine("hardlink", dest, mgr=mgr)
    finally:
        mgr.stop()
        db.unlink(missing_ok=True)


def cp_fsync(src: Path, dst: Path) -> float:
    """``cp -r`` then ``sync FILE...`` (fsync of each copied file), timed together."""
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    files = [str(p) for p in dst.iterdir()]
    for i in range(0, len(files), 2000):  # keep each command line short
        subprocess.run(["sync", *files[i : i + 2000]], check=True)
    return time.perf_counter() - t0


def cp_al(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True)
    return time.perf_counter() - t0


class CountBench:
    """The five candidates of one count of files, run one repetition at a time (:meth:`rep`), so that the
    repetitions of every count alternate: the machine's speed drifts by tens of percent within a run, and
    files/s of 2,000 and 20,000 files measured minutes apart would compare the machine, not the engine."""

    def __init__(self, count: int, args: argparse.Namespace, cache: PageCache) -> None:
        self.count, self.args = count, args
        self.source, self.sums = make_source(count, args.size_kib * 1024)
        self.out = ROOT / f"out-{count}"
        rmtree(self.out)
        self.out.mkdir(parents=True)
        self.db = ROOT / f"jobs-{count}.sqlite"
        self.db.unlink(missing_ok=True)
        self.mgr = StagingManager(
            ROOT, db_url=f"sqlite:///{self.db}", sweep_interval=0, concurrent_items=args.concurrent_items
        )
        self.mgr.start()
        self.engine = EngineRun(self.mgr, self.source, self.sums)
        self.cache = cache
        self.inputs = sorted(self.source.iterdir()) if cache.mode == "warm" or cache.failed else []
        self.run_dirs: dict[str, Path] = {}
        self.times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
        self.cpu: dict[str, list[float]] = {}
        self.engine("hardlink", self.rel_of(self.out / "first-links"), name="warm-up")  # untimed
        first_db = ROOT / f"jobs-first-{count}.sqlite"
        self.candidates = {
            "engine copy": lambda rep: self.engine("copy", self.rel("engine copy")),
            "cp -r+fsync": lambda rep: cp_fsync(self.source, self.run_dirs["cp -r+fsync"]),
            "engine hardlink": lambda rep: first_time(
                self.engine, self.rel("engine hardlink"), first_db, args.concurrent_items
            ),
            "engine hardlink again": lambda rep: self.engine(
                "hardlink", self.rel("engine hardlink again"), name="engine hardlink again"
            ),
            "cp -al": lambda rep: cp_al(self.source, self.run_dirs["cp -al"]),
        }

    @staticmethod
    def rel_of(path: Path) -> str:
        return path.relative_to(ROOT).as_posix()

    def rel(self, name: str) -> str:
        return self.rel_of(self.run_dirs[name])

    def _before(self, name: str, rep: int) -> None:
        self.run_dirs[name] = self.out / f"{name.replace(' ', '_').replace('+', '_')}-{rep}"
        self.cache.prepare(*self.inputs)

    def _after(self, name: str, rep: int) -> None:
        rmtree(self.run_dirs[name])
        os.sync()

    def rep(self, rep: int) -> None:
        """Run repetition ``rep`` of every candidate (interleaved, the order rotating per repetition)."""
        print(f"  {self.count} files:", flush=True)
        times = interleaved(
            self.candidates,
            1,
            before=self._before,
            after=self._after,
            cpu=self.cpu,
            first_rep=rep,
            total_reps=self.args.reps,
        )
        for name, seconds in times.items():
            self.times[name].extend(seconds)

    def close(self) -> None:
        self.mgr.stop()
        rmtree(self.out)
        self.db.unlink(missing_ok=True)

    def result(self) -> dict:
        """The figures of this count (and their printout)."""
        count, times, cpu = self.count, self.times, self.cpu
        print(f"\n## {count} files of {self.args.size_kib} KiB ({count * self.args.size_kib / 1024:.0f} MiB)")
        result: dict = {"count": count, "files_per_s": {}, "median_s": {}, "cpu_s": {}, "ratios": {}}
        for name in CANDIDATES:
            result["median_s"][name] = med(times[name])
            result["files_per_s"][name] = count / med(times[name])
            result["cpu_s"][name] = med(cpu[name])
        for name, base in BASELINE.items():
            result["ratios"][name] = med([b / c for b, c in zip(times[base], times[name], strict=True)])
        result["peak_rss_mib"] = {name: max(v) for name, v in self.engine.rss.items() if name != "warm-up"}
        for name in CANDIDATES:
            ratio = f"  {result['ratios'][name]:.2f}x {BASELINE[name]}" if name in BASELINE else ""
            rss = result["peak_rss_mib"].get(name)
            fps, seconds = result["files_per_s"][name], result["median_s"][name]
            print(
                f"  {name:16s} {fps:10.0f} files/s  {seconds:7.2f} s  "
                f"{result['cpu_s'][name]:6.2f} CPU-s" + (f"  peak RSS {rss:.0f} MiB" if rss else "") + ratio,
                flush=True,
            )
        return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[200, 2000, 20000], help="files per run")
    ap.add_argument("--size-kib", type=int, default=64, help="size of each file (KiB)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each candidate (interleaved)")
    ap.add_argument("--concurrent-items", type=int, default=8, help="the engine's concurrent_items")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument("--keep", action="store_true", help="keep the generated sources")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    run = BenchRun("bench_scale", args.cache, f"; concurrent_items={args.concurrent_items}")
    benches: list[CountBench] = []
    try:
        for count in args.counts:
            benches.append(CountBench(count, args, run.cache))
        for rep in range(args.reps):
            print(f"\n# repetition {rep + 1}/{args.reps}", flush=True)
            k = rep % len(benches)
            for bench in benches[k:] + benches[:k]:  # the order of the counts rotates too
                bench.rep(rep)
        results = [bench.result() for bench in benches]
    finally:
        for bench in benches:
            bench.close()
    summary: dict = {"counts": results}
    print("\n# files/s by count (flat is the goal)")
    print("  " + "".join(f"{name:>22s}" for name in ("count", *CANDIDATES)))
    for r in results:
        print("  " + f"{r['count']:>22d}" + "".join(f"{r['files_per_s'][n]:>22.0f}" for n in CANDIDATES))
    if len(benches) > 1:
        # files/s of the largest count over that of the one before, in the same repetition (minutes apart
        # at most), median over the repetitions; the baselines' own figure shows what the machine did.
        small, large = benches[-2], benches[-1]
        summary["flatness"] = {
            name: med(
                [
                    (large.count / t_large) / (small.count / t_small)
                    for t_small, t_large in zip(small.times[name], large.times[name], strict=True)
                ]
            )
            for name in CANDIDATES
        }
        print(
            f"# {large.count} vs {small.count} files, files/s ratio (median of the repetitions' ratios): "
            + ", ".join(f"{n} {v:.2f}x" for n, v in summary["flatness"].items())
        )
    if not args.keep:
        for r in results:
            rmtree(ROOT / f"src-{r['count']}-{args.size_kib * 1024}")
            (ROOT / f"src-{r['count']}-{args.size_kib * 1024}.json").unlink(missing_ok=True)
    return run.finish(summary, args.json)


if __name__ == "__main__":
    main()
    sys.exit(0)
