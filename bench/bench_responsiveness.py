"""Server responsiveness while staging, and job creation with a full job database (issue 12).

Starts a real Jupyter server with the extension (127.0.0.1, ``tests/helpers/jupyter.py``) and measures:

* ``load``: the latency of ``GET /api/status`` (the Jupyter server's own status endpoint, a measure of
  event-loop responsiveness) at rest, then while three jobs run at once in that server: a local copy of
  one large file (``--copy-mib``, default 2 GiB), a copy of a folder of ``--files`` files of 64 KiB
  (default 20,000) and a CSV -> Parquet conversion (``--csv-mb``, default 500 MB, ``bench/datagen.py``).
  Prints p50 / p99 / max (milliseconds) of both and each job's outcome (all must succeed). Every 0.5 s
  while they run, a small job is POSTed too (``POST /jobs under load``: information).
  Goal: p99 < 50 ms under load.
* ``post``: the latency of ``POST /api/v1/staging/jobs`` (``--posts`` small jobs: a tiny local file each,
  to distinct destinations), once with an empty job database and once with ``--seed-jobs`` (default
  10,000) finished jobs inserted in the server's database before it starts, each POST ~20 ms after the
  last answer (so each job's run overlaps the next POST little or not at all). Counted once ``--warmup``
  uncounted jobs have finished and the server has rested ``--settle`` seconds (default 3): in the first
  seconds after start, the server's full garbage collections of its import-time objects (100-160 ms each)
  stall any request. Goal: p99 < 20 ms with 10,000.

Inputs are made once under ``bench/_work/responsiveness`` and reused. ``--pyspy PY_SPY`` records the
server with py-spy during each measured phase (raw files beside the inputs). Nothing asserts on time::

    python bench/bench_responsiveness.py [--smoke] [--parts load post] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from benchlib import WORK, MachineLoad, MiB, machine, rmtree
from datagen import write_csv
from sqlalchemy import insert

from jupyter_staging.engine.processes import current_user
from jupyter_staging.engine.store import ChunkRecord, EventRecord, JobRecord, ResumeRecord, Store, utcnow
from tests.helpers.jupyter import JupyterServerProcess

ROOT = WORK / "responsiveness"
FILE_KIB = 64
GOAL_STATUS_P99_MS = 50.0
GOAL_POST_P99_MS = 20.0
FINAL = ("succeeded", "failed", "cancelled", "expired")
#: The issue's sizes, and tiny ones that only check that everything runs.
DEFAULTS = {"copy_mib": 2048, "files": 20_000, "csv_mb": 500.0, "seed_jobs": 10_000, "posts": 300}
SMOKE = {"copy_mib": 64, "files": 300, "csv_mb": 5.0, "seed_jobs": 500, "posts": 40}


# -- inputs ---------------------------------------------------------------------------------------------


def big_file(size_mib: int) -> Path:
    """``ROOT/big-<size>.bin``: ``size_mib`` MiB of random bytes (8 MiB blocks repeated). Reused."""
    path = ROOT / f"big-{size_mib}.bin"
    if path.is_file() and path.stat().st_size == size_mib * MiB:
        return path
    block = os.urandom(8 * MiB)
    with open(path, "wb") as fh:
        for _ in range(size_mib // 8):
            fh.write(block)
        fh.write(block[: (size_mib % 8) * MiB])
    return path


def file_folder(count: int) -> Path:
    """``ROOT/files-<count>``: ``count`` files of 64 KiB random bytes. Reused when complete."""
    folder = ROOT / f"files-{count}"
    stamp = ROOT / f"files-{count}.done"
    if folder.is_dir() and stamp.is_file():
        return folder
    rmtree(folder)
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"tess-lc-{i:06d}.fits").write_bytes(os.urandom(FILE_KIB * 1024))
    stamp.write_text(str(count))
    return folder


def tiny_files(count: int) -> list[Path]:
    """``count`` distinct files of a few bytes each (the sources of the small POSTed jobs)."""
    folder = ROOT / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"t-{i:05d}.txt" for i in range(count)]
    for i, path in enumerate(paths):
        if not path.is_file():
            path.write_text(f"tiny source {i}\n")
    return paths


# -- measuring ------------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    """``{"n", "p50", "p99", "max", "mean"}`` of latencies in milliseconds (p99: nearest rank)."""
    ordered = sorted(values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "n": len(ordered),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": ordered[-1],
        "mean": statistics.mean(ordered),
    }


def status_latencies(
    server: JupyterServerProcess, count: int | None = None, until: Callable[[], bool] | None = None
) -> list[float]:
    """Milliseconds of ``GET /api/status``, one request every ~10 ms, ``count`` times or until ``until()``."""
    session = requests.Session()
    out: list[float] = []
    while (count is None or len(out) < count) and not (until is not None and until()):
        t0 = time.perf_counter()
        response = session.get(f"{server.url}api/status", headers=server.headers, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
        time.sleep(0.01)
    return out


class JobWatcher(threading.Thread):
    """Polls jobs (every 0.5 s, on its own connection) until each is final; records when it ended. Each
    round also POSTs a small job (one of ``sources``, while they last): ``post_ms`` and ``posted`` (ids)
    are ``POST /jobs`` latencies while the jobs run."""

    def __init__(self, server: JupyterServerProcess, jobs: dict[str, str], sources: list[Path]) -> None:
        super().__init__(daemon=True)
        self.server, self.jobs, self.sources = server, jobs, list(sources)
        self.t0 = time.perf_counter()
        self.final: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}
        self.post_ms: list[float] = []
        self.posted: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        try:
            while len(self.final) < len(self.jobs):
                if self.sources:
                    src = self.sources.pop()
                    lat, ids = post_latencies(self.server, [src], f"load-{src.stem}", session)
                    self.post_ms += lat
                    self.posted += ids
                for label, job_id in self.jobs.items():
                    if label in self.final:
                        continue
                    url = f"{self.server.api}jobs/{job_id}"
                    job = session.get(url, headers=self.server.headers, timeout=60).json()
                    if job.get("state") in FINAL:
                        self.final[label] = job
                        self.seconds[label] = time.perf_counter() - self.t0
                time.sleep(0.5)
        finally:
            self.done.set()


@contextmanager
def pyspy(exe: str | None, pid: int, out: Path, *, gil: bool = False, idle: bool = False) -> Iterator[None]:
    """Record process ``pid`` with py-spy (raw folded stacks, 200 Hz, per thread) while inside; with
    ``gil`` only the thread holding the GIL (who keeps the event loop waiting); with ``idle`` waiting
    threads too (where a request waits: a lock, the database, the GIL)."""
    if exe is None:
        yield
        return
    cmd = [exe, "record", "-r", "200", "-f", "raw", "--threads", "-o", str(out), "--pid", str(pid)]
    cmd += ["--gil"] if gil else []
    cmd += ["--idle"] if idle else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
        proc.wait(timeout=60)
        print(f"  py-spy: {out}")


@contextmanager
def running_server(tmp: Path, extra: list[str], *, seed: int = 0) -> Iterator[JupyterServerProcess]:
    """A Jupyter server rooted at ``tmp/root`` (further command-line arguments ``extra``) whose job
    database holds ``seed`` finished jobs."""
    server = JupyterServerProcess(tmp / "root", tmp / "state", extra_args=extra)
    server.state_dir.mkdir(parents=True, exist_ok=True)
    if seed:
        t0 = time.perf_counter()
        seed_jobs(f"sqlite:///{server.state_dir / 'jobs.sqlite'}", server.root_dir, seed)
        print(f"  seeded {seed} finished jobs in {time.perf_counter() - t0:.1f} s")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- part 1: /api/status under load ---------------------------------------------------------------------


def load_bodies(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The three concurrent jobs' requests (inputs made first, outside the timing)."""
    csv = ROOT / f"kepler-{args.csv_mb:g}MB.csv"
    write_csv(csv, args.csv_mb)
    return {
        f"copy {args.copy_mib} MiB": {"source": str(big_file(args.copy_mib)), "destination": "staging/big"},
        f"copy {args.files} x {FILE_KIB} KiB": {
            "source": str(file_folder(args.files)),
            "destination": "staging/files",
        },
        f"convert {args.csv_mb:g} MB CSV": {
            "source": str(csv),
            "destination": "staging/table",
            "convert": {"format": "parquet"},
        },
    }


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """``/api/status`` at rest, then while the three jobs of :func:`load_bodies` run; their outcomes."""
    bodies = load_bodies(args)
    os.sync()
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp, running_server(Path(tmp), args.server_arg) as server:
        assert server.proc is not None
        rest = status_latencies(server, args.requests)
        with pyspy(args.pyspy, server.proc.pid, ROOT / "pyspy-load.txt", gil=args.pyspy_gil):
            jobs = {label: server.create_job(body)["id"] for label, body in bodies.items()}
            watcher = JobWatcher(server, jobs, tiny_files(args.posts))
            watcher.start()
            busy = status_latencies(server, until=watcher.done.is_set)
            watcher.join()
        posted = [server.wait_for(i, lambda j: j["state"] in FINAL, timeout=300) for i in watcher.posted]
    outcome = {
        label: {
            "state": job["state"],
            "seconds": round(watcher.seconds[label], 2),
            "error": job.get("error"),
            "chunks": job["progress"]["chunks_done"],
        }
        for label, job in watcher.final.items()
    }
    outcome[f"{len(posted)} small jobs"] = {
        "state": "succeeded" if all(j["state"] == "succeeded" for j in posted) else "failed",
        "seconds": 0.0,
        "error": next((j["error"] for j in posted if j["error"]), None),
        "chunks": sum(j["progress"]["chunks_done"] for j in posted),
    }
    return {
        "rest_ms": summary(rest),
        "load_ms": summary(busy),
        "post_under_load_ms": summary(watcher.post_ms) if watcher.post_ms else None,
        "jobs": outcome,
    }


# -- part 2: POST /jobs with a full job database --------------------------------------------------------


def seed_jobs(db_url: str, root_dir: Path, count: int) -> None:
    """Insert ``count`` succeeded copy jobs of ``root_dir`` (one file, one chunk, two log lines each) into
    the job database at ``db_url``, as the server would have left them; created one minute apart."""
    store = Store(db_url)
    owner, root, now = current_user(), str(root_dir.resolve()), utcnow()
    jobs, chunks, events = [], [], []
    for i in range(count):
        job_id = str(uuid.uuid4())
        created = now - timedelta(minutes=count - i)
        key = hashlib.sha256(f"seed {i}".encode()).hexdigest()
        item = {"name": f"kplr{i:09d}_llc.fits", "size": 65536, "validator": {"size": 65536, "mtime_ns": i}}
        jobs.append(
            {
                **dict(id=job_id, owner=owner, root=root, name=f"seed-{i}", method="copy"),
                **dict(source=f"/archive/kepler/kplr{i:09d}_llc.fits", destination=f"staging/seed-{i:05d}"),
                **dict(state="succeeded", bytes_done=65536, bytes_total=65536, chunks_done=1, chunks_total=1),
                **dict(
                    rows_done=0, cleanup_policy="retain", resume={"request": {"key": key}, "items": [item]}
                ),
                **dict(created_at=created, updated_at=created, started_at=created, finished_at=created),
            }
        )
        chunks.append(
            dict(id=f"{job_id}-0", job_id=job_id, index=0, path=item["name"], state="ready", bytes=65536)
        )
        events += [
            dict(job_id=job_id, time=created, level="info", message="job created: seed"),
            dict(job_id=job_id, time=created, level="info", message="succeeded"),
        ]
    resumes = [{"job_id": job["id"], "resume": job.pop("resume")} for job in jobs]
    with store.session() as s:
        tables = ((JobRecord, jobs), (ResumeRecord, resumes), (ChunkRecord, chunks), (EventRecord, events))
        for table, rows in tables:
            for start in range(0, len(rows), 5000):
                s.execute(insert(table), rows[start : start + 5000])
    store.close()


def post_latencies(
    server: JupyterServerProcess, sources: list[Path], tag: str, session: requests.Session | None = None
) -> tuple[list[float], list[str]]:
    """Milliseconds of ``POST /jobs`` for one small job per source (distinct destinations), ~20 ms apart;
    and the new jobs' ids. Raises RuntimeError on an answer other than 201."""
    session = session or requests.Session()
    out, ids = [], []
    for i, src in enumerate(sources):
        body = {"source": str(src), "destination": f"staging/post-{tag}-{i:05d}"}
        t0 = time.perf_counter()
        response = session.post(f"{server.api}jobs", json=body, headers=server.headers, timeout=60)
        out.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 201:
            log = server.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text[:300]}\n{log}")
        ids.append(response.json()["id"])
        time.sleep(0.02)
    return out, ids


def run_post(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """``POST /jobs`` latencies with ``seed`` finished jobs in the database; the posted jobs' outcome."""
    sources = tiny_files(args.warmup + args.posts)
    tag = f"seed{seed}"
    with (
        tempfile.TemporaryDirectory(dir=ROOT) as tmp,
        running_server(Path(tmp), args.server_arg, seed=seed) as server,
    ):
        assert server.proc is not None
        # First-use costs (lazy imports, the first jobs' code paths) and the server's own settling after
        # start (its import-time garbage: full GC passes of 100-160 ms in the first seconds) are not
        # what a POST costs: the warm-up jobs finish, then the server rests ``--settle`` seconds.
        _, warm = post_latencies(server, sources[: args.warmup], f"{tag}-warm")
        for job_id in warm:
            server.wait_for(job_id, lambda j: j["state"] in FINAL, timeout=300)
        time.sleep(args.settle)
        with pyspy(args.pyspy, server.proc.pid, ROOT / f"pyspy-post-{tag}.txt", idle=True):
            cpu0 = process_cpu(server.proc.pid)
            lat, ids = post_latencies(server, sources[args.warmup :], tag)
            for job_id in ids:  # the server's CPU per request includes the job it started
                server.wait_for(job_id, lambda j: j["state"] in FINAL, timeout=300)
            cpu_ms = (process_cpu(server.proc.pid) - cpu0) * 1000 / max(1, len(ids))
        states: dict[str, int] = {}
        error = None
        for job_id in warm + ids:
            job = server.wait_for(job_id, lambda j: j["state"] in FINAL, timeout=300)
            states[job["state"]] = states.get(job["state"], 0) + 1
            if job["error"] and not error:
                error = job["error"]
    return {
        "seed_jobs": seed,
        "post_ms": summary(lat),
        "server_cpu_ms_per_post": round(cpu_ms, 2),
        "states": states,
        "error": error,
    }


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (``/proc/<pid>/stat``, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- main -----------------------------------------------------------------------------------------------


def fmt(label: str, s: dict[str, float]) -> str:
    return (
        f"  {label:<34} p50 {s['p50']:7.1f} ms  p99 {s['p99']:7.1f} ms  max {s['max']:7.1f} ms  (n={s['n']})"
    )


def report(result: dict[str, Any]) -> None:
    load = result.get("status")
    if load:
        print("GET /api/status:")
        print(fmt("at rest", load["rest_ms"]))
        print(fmt("under load (3 jobs)", load["load_ms"]))
        if load.get("post_under_load_ms"):
            print(fmt("POST /jobs under load, every 0.5 s", load["post_under_load_ms"]))
        met = load["load_ms"]["p99"] < GOAL_STATUS_P99_MS
        print(f"  goal p99 < {GOAL_STATUS_P99_MS:g} ms under load: {'met' if met else 'NOT met'}")
        for label, job in load["jobs"].items():
            err = f" error {job['error']}" if job["error"] else ""
            print(f"  job {label:<30} {job['state']} in {job['seconds']:.1f} s ({job['chunks']} chunks){err}")
    posts = result.get("post") or []
    if posts:
        print("POST /api/v1/staging/jobs:")
        for p in posts:
            err = f" first error {p['error']}" if p["error"] else ""
            cpu = f"  server CPU {p['server_cpu_ms_per_post']:.1f} ms/POST (with its job)"
            print(fmt(f"{p['seed_jobs']} jobs in the database", p["post_ms"]) + cpu)
            print(f"    outcome {p['states']}{err}")
        met = posts[-1]["post_ms"]["p99"] < GOAL_POST_P99_MS
        verdict = "met" if met else "NOT met"
        print(f"  goal p99 < {GOAL_POST_P99_MS:g} ms with {posts[-1]['seed_jobs']} jobs: {verdict}")
    print(f"# {result['machine']}; {result['load']}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: only checks that everything runs")
    ap.add_argument("--parts", nargs="+", choices=("load", "post"), default=["load", "post"])
    ap.add_argument("--copy-mib", type=int, help=f"large file copied (MiB; default {DEFAULTS['copy_mib']})")
    ap.add_argument(
        "--files", type=int, help=f"64 KiB files in the folder copied (default {DEFAULTS['files']})"
    )
    ap.add_argument(
        "--csv-mb", type=float, help=f"CSV converted to Parquet (MB; default {DEFAULTS['csv_mb']:g})"
    )
    ap.add_argument(
        "--seed-jobs", type=int, help=f"finished jobs in the database (default {DEFAULTS['seed_jobs']})"
    )
    ap.add_argument("--posts", type=int, help=f"small jobs POSTed per database (default {DEFAULTS['posts']})")
    ap.add_argument("--warmup", type=int, default=5, help="uncounted POSTs before the counted ones")
    ap.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds the server rests after the warm-up jobs finished, before the counted POSTs",
    )
    ap.add_argument("--requests", type=int, default=300, help="GET /api/status requests at rest")
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument of the server (repeat), e.g. --server-arg=--StagingApp.sweep_interval=0",
    )
    ap.add_argument("--pyspy", help="path of py-spy: record the server during each measured phase")
    ap.add_argument(
        "--pyspy-all", dest="pyspy_gil", action="store_false", help="load part: every thread, not the GIL's"
    )
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    for name, value in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.smoke:
        args.requests = min(args.requests, 50)
        args.settle = min(args.settle, 0.2)
    return args


def all_succeeded(result: dict[str, Any]) -> bool:
    """True when every job of every part succeeded."""
    load = [j["state"] for j in (result.get("status") or {}).get("jobs", {}).values()]
    posted = [state for p in result.get("post") or [] for state in p["states"]]
    return all(state == "succeeded" for state in load + posted)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    ROOT.mkdir(parents=True, exist_ok=True)
    load = MachineLoad()
    result: dict[str, Any] = {"machine": machine(), "sizes": {k: getattr(args, k) for k in DEFAULTS}}
    result["server_args"] = args.server_arg
    if "load" in args.parts:
        result["status"] = run_load(args)
    if "post" in args.parts:
        result["post"] = [run_post(args, 0), run_post(args, args.seed_jobs)]
    result["load"] = load.describe()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    ok = all_succeeded(result)
    if not ok:
        print("# some jobs did not succeed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
