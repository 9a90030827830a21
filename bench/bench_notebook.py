"""What each call a notebook makes costs, through a real Jupyter server, at the scale of issue 12: a job of
``--files`` small files (a TESS sector: 20,000), a job of ``--tables`` small CSV tables converted to Parquet
(many datasets), and a job database of ``--jobs`` jobs.

For each call (``job.refresh()``, a widget's poll, ``job.chunks``, ``job.paths``, ``to_pandas()``,
``%stage jobs``' table ...) it prints the wall time (ms), the requests the kernel made and the bytes it
received, the kernel's CPU seconds, the server's CPU seconds and, for the readers, the peak RSS growth.
Run it with the code to measure first on the path (the server inherits ``PYTHONPATH``)::

    PYTHONPATH=. .venv/bin/python bench/bench_notebook.py --files 20000 --tables 2000 --jobs 10000

Part ``listing`` (``--only listing``, not run by default): what reading a big job's chunk list does to
the rest of the server. A succeeded job of ``--listing-chunks`` chunks (default 20,000) is written into the
server's job database before it starts; ``GET /api/status`` is then timed every 10 ms for 3 s at rest and
for ``--listing-seconds`` while another process reads the whole chunk list in a loop
(``GET .../jobs/{id}/chunks``: ``job.chunks``, the panel's job view; ``--listing-page 5000``: in pages, as
the hub's ``job_chunks``). Prints the status latency p50 / p99 / max (ms) at rest and during the listings,
how many listings were read, their time (ms) and the server's CPU seconds per listing::

    PYTHONPATH=. .venv/bin/python bench/bench_notebook.py --only listing --listing-seconds 20

Part ``manifest`` (``--only manifest``, not run by default): the same, while another process reads the
job's manifest in a loop (``GET .../jobs/{id}/manifest``: ``job.manifest()``), a ``manifest.json`` of
``--listing-chunks`` files (6 MB for 20,000) written beside the seeded job as a job writes it.

Sources are made once in ``--work`` (default ``bench/_work/notebook``) and kept; the servers' state is new
at each run. Timings on a shared machine are noisy: read the counts beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_responsiveness import seed_jobs, summary  # noqa: E402
from jupyter_staging.engine.processes import current_user  # noqa: E402
from jupyter_staging.engine.store import ChunkRecord, JobRecord, ResumeRecord, Store, utcnow  # noqa: E402
from jupyter_staging.kernel.backends import ServerBackend  # noqa: E402
from jupyter_staging.kernel.job import Job  # noqa: E402
from tests.helpers.jupyter import JupyterServerProcess  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "notebook"


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds of process ``pid`` (its threads included), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Meter:
    """Counts the kernel's requests (by kind) and bytes received, CPU seconds and peak RSS of one call."""

    def __init__(self, backend: ServerBackend, server: JupyterServerProcess) -> None:
        self.server = server
        self.requests: Counter[str] = Counter()
        self.received = 0
        backend._session.hooks["response"].append(self._count)
        self.rows: list[dict[str, Any]] = []

    def _count(self, response: Any, *args: Any, **kwargs: Any) -> None:
        path = response.url.split("/api/v1/staging/", 1)[-1].split("?", 1)[0]
        kind = "chunks" if path.endswith("/chunks") else "jobs" if path == "jobs" else path.rsplit("/", 1)[-1]
        self.requests["job" if len(kind) == 36 else kind] += 1
        self.received += len(response.content)

    def measure(self, label: str, call: Callable[[], Any], repeat: int = 1) -> Any:
        """Run ``call`` ``repeat`` times; record the figures per call; return its last result."""
        assert self.server.proc is not None
        self.requests.clear()
        self.received = 0
        peak = [rss_bytes()]
        start_rss = peak[0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.01):
                peak[0] = max(peak[0], rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        server_cpu, cpu, started = cpu_seconds(self.server.proc.pid), cpu_seconds(), time.perf_counter()
        result = None
        for _ in range(repeat):
            result = call()
        wall = time.perf_counter() - started
        cpu, server_cpu = cpu_seconds() - cpu, cpu_seconds(self.server.proc.pid) - server_cpu
        stop.set()
        sampler.join()
        row = {
            "call": label,
            "ms": round(1000 * wall / repeat, 1),
            "requests": {k: round(v / repeat, 2) for k, v in sorted(self.requests.items())},
            "kB_received": round(self.received / repeat / 1000, 1),
            "kernel_cpu_s": round(cpu / repeat, 3),
            "server_cpu_s": round(server_cpu / repeat, 3),
            "peak_rss_MB": round((peak[0] - start_rss) / 1e6, 1),
        }
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return result


def make_files(count: int) -> Path:
    folder = WORK / f"files-{count}"
    if not (folder / f"f{count - 1:06d}.txt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"f{i:06d}.txt").write_bytes(f"{i:06d}".encode() * 16 + b"\n" * 4)
    return folder


def make_tables(count: int, rows: int = 200) -> Path:
    """``count`` CSV tables of ``rows`` rows (time, flux, flux_err, quality), as a folder of light curves."""
    folder = WORK / f"tables-{count}"
    if not (folder / f"lc{count - 1:05d}.csv").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            lines = ["time,flux,flux_err,quality"]
            for r in range(rows):
                lines.append(
                    f"{1325.0 + r * 0.0208:.6f},{1000 + (r * 7 + i) % 50:.3f},{0.5 + r % 3 / 10:.3f},{r % 2}"
                )
            (folder / f"lc{i:05d}.csv").write_text("\n".join(lines) + "\n")
    return folder


def start_server(name: str) -> tuple[JupyterServerProcess, ServerBackend]:
    state = WORK / name
    shutil.rmtree(state, ignore_errors=True)
    server = JupyterServerProcess(state / "root", state / "state")
    return server, ServerBackend(server.url, server.token, server.root_dir)


def run_files(meter: Meter, backend: ServerBackend, count: int) -> None:
    from jupyter_staging.kernel.widgets import JobWidget

    source = make_files(count)
    job = Job(backend.create({"source": str(source), "destination": "files", "method": "copy"}), backend)
    widget = JobWidget(job, follow=False)
    time.sleep(1.0)
    meter.measure(f"[{count} files, running] job.refresh()", job.refresh, repeat=5)
    meter.measure(f"[{count} files, running] widget poll", widget._poll, repeat=5)
    meter.measure(f"[{count} files, running] job.chunks", lambda: job.chunks)
    meter.measure(f"[{count} files, running] job.wait(timeout=2)", lambda: _timeout(job.wait, 2.0))
    meter.measure(f"[{count} files] job.wait() to the end", job.wait)
    print("job", job.state, job.progress["chunks_done"], flush=True)
    meter.measure(f"[{count} files, done] job.refresh() + repr", lambda: repr(job.refresh()), repeat=5)
    meter.measure(f"[{count} files, done] JobWidget(job)", lambda: JobWidget(job, follow=False))
    meter.measure(f"[{count} files, done] job.chunks", lambda: job.chunks)
    meter.measure(f"[{count} files, done] job.paths", lambda: job.paths)
    meter.measure(f"[{count} files, done] job.tables", lambda: job.tables)
    meter.measure(f"[{count} files, done] job.manifest()", job.manifest)
    meter.measure(f"[{count} files, done] job.log()", job.log)
    meter.measure(f"[{count} files, done] list(job.iter_chunks())", lambda: list(job.iter_chunks()))


def _timeout(call: Callable[..., Any], seconds: float) -> None:
    try:
        call(timeout=seconds)
    except TimeoutError:
        pass


def run_tables(meter: Meter, backend: ServerBackend, count: int) -> None:
    source = make_tables(count)
    body = {"source": str(source), "destination": "tables", "convert": {"format": "parquet"}}
    job = Job(backend.create(body), backend)
    meter.measure(f"[{count} tables] job.wait() to the end", job.wait)
    print("job", job.state, job.progress["chunks_done"], flush=True)
    meter.measure(f"[{count} tables] job.tables", lambda: job.tables)
    meter.measure(f"[{count} tables] job.to_arrow()", job.to_arrow)
    meter.measure(f"[{count} tables] job.to_pandas()", job.to_pandas)
    meter.measure(f"[{count} tables] job.to_table()", job.to_table)
    meter.measure(f"[{count} tables] job.dataset()", job.dataset)
    meter.measure(f"[{count} tables] job.dataset().to_table()", lambda: job.dataset().to_table())
    meter.measure(f"[{count} tables] job.to_pandas(table=one)", lambda: job.to_pandas(table=job.tables[-1]))
    names = job.tables[:200]
    meter.measure(
        f"[{count} tables] for name in job.tables[:200]: job.to_pandas(table=name) (the whole loop)",
        lambda: [job.to_pandas(table=name) for name in names],
    )


def run_jobs(meter: Meter, backend: ServerBackend, count: int) -> None:
    from jupyter_staging.kernel.widgets import JobsTable

    def listing() -> list[Job]:
        return [Job(data, backend) for data in backend.list_jobs()]

    meter.measure(f"[{count} jobs] list_jobs() (100)", listing, repeat=5)
    meter.measure(f"[{count} jobs] list_jobs(state='running')", lambda: backend.list_jobs(state="running"), 5)
    table = meter.measure(f"[{count} jobs] %stage jobs: JobsTable", lambda: JobsTable(listing, follow=False))
    meter.measure(f"[{count} jobs] JobsTable poll", table._poll, repeat=5)
    job_id = backend.list_jobs(limit=1)[0]["id"]
    meter.measure(f"[{count} jobs] get_job(id)", lambda: backend.get(job_id), repeat=5)


def seed_chunk_job(db_url: str, root_dir: Path, count: int, owner: str | None = None) -> str:
    """Insert a succeeded copy job of ``count`` ready chunks (a TESS sector's light curves: name, size,
    sha256, content type) into the job database at ``db_url``, as the server would have left it, owned by
    ``owner`` (default: this process's user; a hub user's server: the hub's user name); its id."""
    store = Store(db_url)
    now, job_id, owner = utcnow(), str(uuid.uuid4()), owner or current_user()
    job = dict(id=job_id, owner=owner, root=str(root_dir.resolve()), name="sector", method="copy")
    job |= dict(source="/archive/tess/sector-01", destination="staging/sector-01", state="succeeded")
    job |= dict(bytes_done=count * 2_039_040, bytes_total=count * 2_039_040, chunks_done=count)
    job |= dict(chunks_total=count, rows_done=0, cleanup_policy="retain", created_at=now, updated_at=now)
    job |= dict(started_at=now, finished_at=now)
    chunks = [
        dict(id=f"{job_id}-{i}", job_id=job_id, index=i, state="ready", bytes=2_039_040, mtime_ns=i)
        | dict(path=f"tess2018206045859-s0001-{i:016d}-0120-s_lc.fits", content_type="application/fits")
        | dict(sha256=hashlib.sha256(f"lc {i}".encode()).hexdigest())
        for i in range(count)
    ]
    with store.session() as s:
        s.execute(insert(JobRecord), [job])
        s.execute(insert(ResumeRecord), [{"job_id": job_id, "resume": {"request": {}, "items": []}}])
        for start in range(0, count, 5000):
            s.execute(insert(ChunkRecord), chunks[start : start + 5000])
    store.close()
    return job_id


def seed_manifest(server: JupyterServerProcess, job_id: str, count: int) -> None:
    """Write the ``manifest.json`` a copy of ``count`` light curves leaves in the folder of job ``job_id``
    (:func:`seed_chunk_job`), laid out as the engine writes it: 300 bytes a file, 6 MB for 20,000."""
    from jupyter_staging.destinations.manifest import build_manifest, manifest_bytes

    objects = []
    for i in range(count):
        name = f"tess2018206045859-s0001-{i:016d}-0120-s_lc.fits"
        obj = dict(
            path=name, size=2_039_040, sha256=hashlib.sha256(f"lc {i}".encode()).hexdigest(), rows=None
        )
        obj |= dict(content_type="application/fits", source_item=name, mtime_ns=1_700_000_000_000_000_000 + i)
        obj["fingerprint"] = {
            "size": 2_039_040,
            "mtime_ns": 1_600_000_000_000_000_000 + i,
            "inode": 10**7 + i,
        }
        objects.append(obj)
    now = utcnow()
    manifest = build_manifest(
        job_id=job_id,
        name="sector",
        source="/archive/tess/sector-01",
        method="copy",
        convert=None,
        objects=objects,
        created_at=now,
        finished_at=now,
    )
    folder = server.root_dir / "staging" / "sector-01"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_bytes(manifest_bytes(manifest))


def status_every_10ms(server: JupyterServerProcess, seconds: float) -> list[float]:
    """Milliseconds of ``GET /api/status``, one request 10 ms after the previous answer, for ``seconds``."""
    session, out = requests.Session(), []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.get(f"{server.url}api/status", headers=server.headers, timeout=60).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    return out


def read_listings(url: str, headers: dict[str, str], count: int, page: int, stop: Any, out: Any) -> None:
    """Read the whole chunk list at ``url`` (``count`` chunks, in pages of ``page``, 0: one request; a
    ``.../manifest`` URL: the manifest of ``count`` objects) again and again until ``stop`` is set; put the
    list of each listing's milliseconds on ``out``. Run in a process of its own: decoding 6.8 MB of JSON
    holds its GIL 0.1 s, which would delay the status requests timed beside it."""
    session, times = requests.Session(), []
    key = "objects" if url.endswith("/manifest") else "chunks"
    while not stop.is_set():
        t0, read, offset = time.perf_counter(), 0, 0
        while True:
            params = {"offset": offset, "limit": page} if page and key == "chunks" else {}
            answer = session.get(url, headers=headers, params=params, timeout=120)
            answer.raise_for_status()
            got = answer.json()[key]
            read += len(got)
            if key == "objects" or not page or read >= count or not got:
                break
            offset = got[-1]["index"] + 1
        assert read == count, (read, count)
        times.append((time.perf_counter() - t0) * 1000)
    out.put(times)


def run_listing(
    server: JupyterServerProcess, job_id: str, count: int, seconds: float, page: int, what: str = "chunks"
) -> dict:
    """``/api/status`` at rest, then while another process reads job ``job_id``'s whole chunk list (in
    pages of ``page``, 0: one request; ``what="manifest"``: its manifest) in a loop for ``seconds``; the
    figures (ms) and the listings'."""
    assert server.proc is not None
    url = f"{server.api}jobs/{job_id}/{what}"
    requests.get(
        url, headers=server.headers, timeout=120
    ).raise_for_status()  # warm: the first is not counted
    time.sleep(3.0)  # the server's first full garbage collections (see bench_responsiveness --settle)
    rest = status_every_10ms(server, 3.0)
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    lister = context.Process(target=read_listings, args=(url, server.headers, count, page, stop, out))
    cpu, load = cpu_seconds(server.proc.pid), os.getloadavg()[0]
    lister.start()
    busy = status_every_10ms(server, seconds)
    stop.set()
    listings = out.get(timeout=300)
    lister.join()
    cpu = cpu_seconds(server.proc.pid) - cpu
    figures = {"rest_ms": summary(rest), "listing_status_ms": summary(busy), "listings_ms": summary(listings)}
    rounded = {k: {m: round(v, 1) for m, v in f.items()} for k, f in figures.items()}
    read = f"the chunk list is read (page {page or 'all'})" if what == "chunks" else "the manifest is read"
    row = {"call": f"[{count} {'chunks' if what == 'chunks' else 'files'}] /api/status while {read}"}
    row |= rounded | {"server_cpu_s_per_listing": round(cpu / max(1, len(listings)), 3)}
    row |= {"load_average_before": round(load, 2), "load_average_after": round(os.getloadavg()[0], 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument(
        "--only",
        choices=["files", "tables", "jobs", "listing", "manifest"],
        action="append",
        help="parts to run",
    )
    parser.add_argument("--listing-chunks", type=int, default=20000, help="chunks of the listed job")
    parser.add_argument(
        "--listing-seconds", type=float, default=20.0, help="seconds /api/status is timed during the listings"
    )
    parser.add_argument(
        "--listing-page", type=int, default=0, help="chunks per request of a listing (0: all in one)"
    )
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.work is not None:
        globals()["WORK"] = args.work
    rows: list[dict[str, Any]] = []
    for part in args.only or ["files", "tables", "jobs"]:
        server, backend = start_server(f"server-{part}")
        if part in ("jobs", "listing", "manifest"):
            server.state_dir.mkdir(parents=True, exist_ok=True)
            server.root_dir.mkdir(parents=True, exist_ok=True)
            # The server makes its tables at its first start: start, stop, seed, start.
            server.start()
            server.stop()
            db_url = f"sqlite:///{server.state_dir / 'jobs.sqlite'}"
            if part == "jobs":
                seed_jobs(db_url, server.root_dir, args.jobs)
            else:
                listed = seed_chunk_job(db_url, server.root_dir, args.listing_chunks)
                if part == "manifest":
                    seed_manifest(server, listed, args.listing_chunks)
        server.start()
        try:
            meter = Meter(backend, server)
            if part in ("listing", "manifest"):
                n, seconds, page = args.listing_chunks, args.listing_seconds, args.listing_page
                what = "chunks" if part == "listing" else "manifest"
                rows.append(run_listing(server, listed, n, seconds, page, what))
            elif part == "files":
                run_files(meter, backend, args.files)
            elif part == "tables":
                run_tables(meter, backend, args.tables)
            else:
                run_jobs(meter, backend, args.jobs)
            rows += meter.rows
        finally:
            backend.close()
            server.stop()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
