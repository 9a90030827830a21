"""Re-running a notebook (issue 10, acceptance 6): how much cheaper the second run of a manifest is.

Prints, as ratios measured in one process:

- the first run of an N-file manifest (default 1,000 local files of 64 KiB) against its re-run, which finds
  every fingerprint unchanged and answers ``up_to_date`` (goal: >= 50x faster);
- the up-to-date check's time per item for local files (goal: <= 2 ms per item);
- for HTTP sources on a loopback Range server: the HEAD requests per item of a re-run (goal: <= 1) and the
  check's time per item (they run concurrently).

The first run's page cache is dropped (root) before it starts; nothing here asserts on time.
Usage: ``.venv/bin/python bench/bench_rerun.py [--files 1000] [--http-files 200] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from benchlib import WORK, PageCache

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.servers import RangeHTTPServer  # noqa: E402


def make_files(folder: Path, count: int, size: int) -> dict[str, str]:
    """``count`` files of ``size`` bytes (distinct contents); returns manifest entries ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i in range(count):
        path = folder / f"lc{i:05d}.bin"
        path.write_bytes(i.to_bytes(4, "big") * (size // 4))
        entries[f"e{i:05d}"] = str(path)
    return entries


def timed_create(manager: StagingManager, body: dict) -> tuple[float, float, bool]:
    """``(wall seconds until the job ended, CPU seconds, up_to_date)`` of one request."""
    cpu = time.process_time()
    started = time.perf_counter()
    job, _ = manager.create(CreateJob(**body))
    done = manager.wait(job.id, timeout=3600)
    assert done.state.value == "succeeded", done
    return time.perf_counter() - started, time.process_time() - cpu, job.up_to_date


def local_case(work: Path, files: int, cache: PageCache) -> dict:
    entries = make_files(work / "src", files, 64 * 1024)
    root = work / "root"
    root.mkdir()
    manager = StagingManager(root, db_url=f"sqlite:///{work / 'jobs.sqlite'}", sweep_interval=0)
    manager.start()
    try:
        body = {"manifest": entries, "destination": "many"}
        cache.prepare(work / "src")
        first, first_cpu, _ = timed_create(manager, body)
        reruns = [timed_create(manager, body) for _ in range(5)]
    finally:
        manager.stop()
    rerun = sorted(r[0] for r in reruns)[len(reruns) // 2]
    assert all(r[2] for r in reruns), "a re-run was not up to date"
    return {
        "files": files,
        "first_s": first,
        "first_cpu_s": first_cpu,
        "rerun_s": rerun,
        "rerun_cpu_s": sorted(r[1] for r in reruns)[len(reruns) // 2],
        "speedup": first / rerun,
        "check_ms_per_item": rerun / files * 1000,
    }


def http_case(work: Path, files: int) -> dict:
    src = work / "web"
    make_files(src, files, 16 * 1024)
    root = work / "root-http"
    root.mkdir()
    server = RangeHTTPServer(src)
    server.start()
    manager = StagingManager(root, db_url=f"sqlite:///{work / 'jobs-http.sqlite'}", sweep_interval=0)
    manager.start()
    try:
        entries = {f"e{i:05d}": server.url(f"lc{i:05d}.bin") for i in range(files)}
        body = {"manifest": entries, "destination": "web"}
        first, _, _ = timed_create(manager, body)
        before = list(server.requests)
        rerun, cpu, up_to_date = timed_create(manager, body)
        after = server.requests[len(before) :]
    finally:
        manager.stop()
        server.stop()
    assert up_to_date
    heads = sum(1 for r in after if r.method == "HEAD")
    gets = sum(1 for r in after if r.method == "GET")
    return {
        "files": files,
        "first_s": first,
        "rerun_s": rerun,
        "rerun_cpu_s": cpu,
        "speedup": first / rerun,
        "heads_per_item": heads / files,
        "gets": gets,
        "check_ms_per_item": rerun / files * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--http-files", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = WORK / "rerun"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cache = PageCache("drop")
    local = local_case(work, args.files, cache)
    http = http_case(work, args.http_files)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(cache.describe())
    print(
        f"local manifest, {local['files']} files x 64 KiB: first run {local['first_s']:.2f} s "
        f"({local['first_cpu_s']:.2f} CPU-s), re-run {local['rerun_s'] * 1000:.0f} ms "
        f"({local['rerun_cpu_s']:.2f} CPU-s): {local['speedup']:.0f}x faster (goal >= 50x); "
        f"check {local['check_ms_per_item']:.2f} ms per item (goal <= 2 ms)"
    )
    print(
        f"HTTP manifest, {http['files']} files: first run {http['first_s']:.2f} s, re-run "
        f"{http['rerun_s'] * 1000:.0f} ms: {http['speedup']:.0f}x faster; {http['heads_per_item']:.2f} HEAD "
        f"per item (goal <= 1), {http['gets']} GETs; check {http['check_ms_per_item']:.2f} ms per item"
    )
    print(f"peak RSS {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"local": local, "http": http, "peak_rss_mib": rss}, indent=2))
    os.sync()


if __name__ == "__main__":
    main()
