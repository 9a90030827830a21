"""Local file copy through the real staging engine vs ``cp``.

The candidate is a :class:`jupyter_staging.engine.manager.StagingManager` job with ``method="copy"``: listing,
``.part`` file, pipelined read + sha256 + write (``transfer.copy_stream``), fsync, size check, publish
(link + unlink + directory fsync), chunk record, ``manifest.json`` (itself fsynced) and the state changes in
SQLite. It is timed from ``create()`` to the job's ``finished_at`` (the moment it is marked succeeded).

Baselines, interleaved with it in the same process:

- ``cp+fsync``: ``cp SRC DST && sync DST`` (coreutils ``sync FILE`` fsyncs that file): the fair baseline,
  since the engine fsyncs too. This is the ratio the goal (≥ 0.95x) is about.
- ``cp``: plain ``cp`` (its dirty pages are flushed, untimed, before the next run).
- ``engine+listener``: the same engine job with ``manager.subscribe(lambda e: None)``: the cost of
  building and announcing progress events.

Ratios are ``baseline_time / engine_time`` per repetition, median over repetitions (≥ 1 means the
engine is as fast as the baseline). Usage::

    .venv/bin/python bench/bench_copy.py --size-mib 2048 --reps 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import (
    WORK,
    MachineLoad,
    MiB,
    PageCache,
    interleaved,
    machine,
    med,
    ratios,
    rmtree,
    spread,
)

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState


def make_source(path: Path, size: int) -> str:
    """A file of ``size`` random (incompressible) bytes; returns its sha256. Reused when present."""
    stamp = path.with_name(path.name + ".sha256")
    if path.is_file() and path.stat().st_size == size and stamp.is_file():
        return stamp.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12345)
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as fh:
        while left:
            block = rng.bytes(min(left, 64 * MiB))
            digest.update(block)
            fh.write(block)
            left -= len(block)
    stamp.write_text(digest.hexdigest())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=2048, help="size of the file copied (MiB)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each candidate (interleaved)")
    ap.add_argument(
        "--cache",
        choices=("drop", "warm"),
        default="drop",
        help="drop the page cache before each run (default; needs root) or start warm",
    )
    ap.add_argument("--no-listener", action="store_true", help="skip the engine+listener variant")
    ap.add_argument("--no-plain-cp", action="store_true", help="skip the plain cp (no sync) baseline")
    ap.add_argument("--workdir", type=Path, default=WORK / "copy")
    ap.add_argument("--keep", action="store_true", help="keep the source file for the next run")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)

    size = args.size_mib * MiB
    work = args.workdir.resolve()
    root = work / "root"
    rmtree(root)
    root.mkdir(parents=True)
    src = work / "src" / "lightcurves.bin"
    print(f"# bench_copy: {args.size_mib} MiB, {args.reps} reps, {machine()}, {work}")
    t = time.perf_counter()
    src_sha = make_source(src, size)
    print(f"# source ready in {time.perf_counter() - t:.1f}s: {src}")
    cp_version = subprocess.run(["cp", "--version"], capture_output=True, text=True).stdout.split("\n")[0]

    db = work / "jobs.db"
    db.unlink(missing_ok=True)
    manager = StagingManager(root, db_url=f"sqlite:///{db}")
    manager.start()
    cache = PageCache(args.cache)
    out_dir = root / "out"
    events = {"n": 0}

    def engine(rep: int, listener: bool = False) -> float:
        unsubscribe = None
        if listener:

            def on_event(_event: dict) -> None:
                events["n"] += 1

            unsubscribe = manager.subscribe(on_event)
        try:
            dest = f"out/engine-{rep}-{int(listener)}"
            w0 = time.time()
            t0 = time.perf_counter()
            job, _ = manager.create(CreateJob(source=str(src), destination=dest, method="copy"))
            final = manager.wait(job.id, timeout=3600)
            waited = time.perf_counter() - t0
        finally:
            if unsubscribe is not None:
                unsubscribe()
        if final.state != JobState.succeeded:
            raise SystemExit(f"engine job ended {final.state.value}: {final.error}")
        chunk = manager.chunks(job.id)[0]
        if chunk.bytes != size or chunk.sha256 != src_sha:
            raise SystemExit(f"engine copy is wrong: {chunk.bytes} bytes, sha256 {chunk.sha256}")
        assert final.finished_at is not None
        finished = final.finished_at.timestamp() - w0
        # wait() may return up to one poll (0.5 s) late if it misses the notify; finished_at does not.
        return min(waited, finished) if finished > 0 else waited

    def cp_fsync(rep: int) -> float:
        dst = out_dir / f"cp-{rep}.bin"
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        subprocess.run(["sync", str(dst)], check=True)
        return time.perf_counter() - t0

    def cp_plain(rep: int) -> float:
        dst = out_dir / f"cpplain-{rep}.bin"
        t0 = time.perf_counter()
        subprocess.run(["cp", str(src), str(dst)], check=True)
        return time.perf_counter() - t0

    candidates = {"engine": engine, "cp+fsync": cp_fsync}
    if not args.no_listener:
        candidates["engine+listener"] = lambda rep: engine(rep, listener=True)
    if not args.no_plain_cp:
        candidates["cp"] = cp_plain

    def before(_name: str, _rep: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        cache.prepare(src)

    def after(_name: str, _rep: int) -> None:
        os.sync()  # plain cp's dirty pages must not slow the next candidate down
        for entry in out_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    cpu: dict[str, list[float]] = {}
    load = MachineLoad()
    try:
        times = interleaved(candidates, args.reps, before=before, after=after, cpu=cpu)
    finally:
        manager.stop()
        rmtree(root)
        db.unlink(missing_ok=True)
        for extra in ("-wal", "-shm"):
            Path(str(db) + extra).unlink(missing_ok=True)
        if not args.keep:
            rmtree(src.parent)

    e = times["engine"]
    r_sync = med(ratios(times["cp+fsync"], e))
    mb = size / 1e6
    print(f"# {cache.describe()}")
    print(f"# {load.describe()}")
    print(f"# baseline: {cp_version} (copies with copy_file_range, in the kernel)")
    print(
        f"copy {args.size_mib} MiB: engine {med(e):.2f} s ({mb / med(e):.0f} MB/s), "
        f"cp+fsync {med(times['cp+fsync']):.2f} s -> ratio (cp+fsync/engine) {r_sync:.2f}x  "
        f"[median of {args.reps}; ratios {spread(ratios(times['cp+fsync'], e))}]"
    )
    result = {
        "bench": "copy",
        "size_mib": args.size_mib,
        "reps": args.reps,
        "cache": cache.describe(),
        "times": times,
        "median_s": {k: med(v) for k, v in times.items()},
        "ratio_cp_fsync": r_sync,
    }
    print(
        "# median CPU seconds (user+sys, this process + children): "
        + ", ".join(f"{k} {med(v):.2f}" for k, v in cpu.items())
    )
    result["median_cpu_s"] = {k: med(v) for k, v in cpu.items()}
    result["load"] = load.describe()
    if "cp" in times:
        r_plain = med(ratios(times["cp"], e))
        print(
            f"copy {args.size_mib} MiB: engine {med(e):.2f} s, cp (no sync) {med(times['cp']):.2f} s "
            f"-> ratio (cp/engine) {r_plain:.2f}x  [median of {args.reps}]"
        )
        result["ratio_cp_plain"] = r_plain
    if "engine+listener" in times:
        el = times["engine+listener"]
        r_listen = med(ratios(e, el))
        print(
            f"progress listener: engine {med(e):.2f} s, engine+listener {med(el):.2f} s -> ratio "
            f"(no listener/with listener) {r_listen:.3f}x, overhead {100 * (1 / r_listen - 1):+.1f} %  "
            f"[median of {args.reps}; {events['n']} events delivered in all]"
        )
        result["ratio_listener"] = r_listen
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
