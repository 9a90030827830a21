"""What reading a user's job of many chunks does to the JupyterHub staging service's own responsiveness.

A real JupyterHub (``examples/jupyterhub_config.py``: configurable-http-proxy, the staging service as a
managed service, alice's server spawned by the hub), as ``tests/hub`` runs it. A succeeded job of
``--chunks`` chunks (default 20,000, ``MOST_CHUNKS``: the most the service reads of one job) is written into
the job database of alice's server. The service reads a job's chunks (``HubAPI.job_chunks``: pages of
``CHUNK_PAGE`` = 5,000, 1.7 MB of JSON each, through the proxy) when it follows a ``jupyter_copy``; here
it follows ``--ops`` such operations left ``running`` with that job's id (as a replica that stopped
leaves them), which it takes over (4 at a time). ``GET .../api/operations?limit=1`` (alice's token,
straight to the service's port) is timed every 10 ms for 3 s at rest, then while the service reads the
pages; after each, the hub's own ``/hub/health``, a control: the machine's load delays it too, the service's
loop does not. Prints the latencies p50 / p99 / max (ms), how many operations ended (each read the whole list
once) and the service's CPU seconds per operation::

    PYTHONPATH=. .venv/bin/python bench/bench_hub_pages.py --ops 40

Needs configurable-http-proxy (``scripts/ci-hub-deps.sh``). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_notebook import seed_chunk_job  # noqa: E402
from bench.bench_responsiveness import summary  # noqa: E402
from jupyter_staging.hub.db import Operation, OperationStore  # noqa: E402
from tests.helpers.hub import HubProcess, find_proxy  # noqa: E402


def probe(hub: HubProcess, seconds: float) -> tuple[list[float], list[float]]:
    """Milliseconds of the service's cheap GET and, right after each, of the hub's ``/hub/health`` (a
    control: another process on the same cores), one pair every 10 ms after the previous answers."""
    session, service, control = requests.Session(), [], []
    url = f"http://127.0.0.1:{hub.service_port}/services/staging/api/operations?limit=1"
    headers = {"Authorization": f"token {hub.tokens['alice']}"}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.get(url, headers=headers, timeout=60).raise_for_status()
        t1 = time.perf_counter()
        session.get(f"{hub.url}/hub/health", timeout=60).raise_for_status()
        service.append((t1 - t0) * 1000)
        control.append((time.perf_counter() - t1) * 1000)
        time.sleep(0.01)
    return service, control


def service_process(hub: HubProcess) -> psutil.Process:
    """The staging service's process (a child of the hub's)."""
    assert hub.proc is not None
    for child in psutil.Process(hub.proc.pid).children(recursive=True):
        if "jupyter_staging.hub.app" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no staging service process")


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run(workdir: Path, chunks: int, ops: int) -> dict:
    proxy = find_proxy()
    if proxy is None:
        raise SystemExit("configurable-http-proxy is not installed: run scripts/ci-hub-deps.sh")
    hub = HubProcess(workdir, proxy=proxy, service_args=["--heartbeat-interval=0.5"])
    hub.archive.mkdir(parents=True, exist_ok=True)
    (hub.archive / "lc.fits").write_bytes(b"SIMPLE  =  T" * 10)
    hub.start()
    try:
        hub.start_server("alice")
        home = hub.homes / "alice"
        db = home / ".local" / "share" / "jupyter" / "jupyter_staging" / "jobs.sqlite"
        job_id = seed_chunk_job(f"sqlite:///{db}", home, chunks, owner="alice")
        page = hub.api("GET", "api/operations", token=hub.tokens["alice"])
        page.raise_for_status()
        service = service_process(hub)
        time.sleep(2.0)
        rest, rest_control = probe(hub, 3.0)
        store = OperationStore(f"sqlite:///{hub.service_dir / 'jupyter_staging_hub.sqlite'}")
        ids = [str(uuid.uuid4()) for _ in range(ops)]
        cpu, load = cpu_of(service), os.getloadavg()[0]
        for op_id in ids:
            store.add(
                Operation(
                    id=op_id, user="alice", actor="alice", method="jupyter_copy",
                    source=str(hub.archive / "lc.fits"), target=str(home / "staging" / f"{op_id}.fits"),
                    status="running", job_id=job_id,
                )
            )  # fmt: skip
        started = time.perf_counter()
        busy: list[float] = []
        control: list[float] = []
        while True:
            more, more_control = probe(hub, 1.0)
            busy, control = busy + more, control + more_control
            left = [op for op in map(store.get, ids) if op is not None and op.status == "running"]
            if not left or time.perf_counter() - started > 600:
                break
        seconds = time.perf_counter() - started
        cpu = cpu_of(service) - cpu
        ended = ops - len(left)
        errors = {
            str(op.error_code) for op in map(store.get, ids) if op is not None and op.status != "running"
        }
        store.close()
    finally:
        hub.stop()
    row = {
        "call": f"[{chunks} chunks, {ops} jupyter_copy takeovers] service GET while it reads the job's pages",
        "rest_ms": {k: round(v, 1) for k, v in summary(rest).items()},
        "reading_ms": {k: round(v, 1) for k, v in summary(busy).items()},
        "hub_health_rest_ms": {k: round(v, 1) for k, v in summary(rest_control).items()},
        "hub_health_reading_ms": {k: round(v, 1) for k, v in summary(control).items()},
        "ops_ended": ended,
        "seconds": round(seconds, 1),
        "service_cpu_s_per_op": round(cpu / max(1, ended), 3),
        "op_errors": sorted(errors),
        "load_average_before": round(load, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--ops", type=int, default=40)
    parser.add_argument("--work", type=Path, default=None, help="a folder to keep (default: a temporary one)")
    args = parser.parse_args()
    workdir = args.work or Path(tempfile.mkdtemp(prefix="bench-hub-pages-"))
    try:
        run(workdir, args.chunks, args.ops)
    finally:
        if args.work is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
