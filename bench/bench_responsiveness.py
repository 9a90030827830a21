"""Server responsiveness while staging: latency of ``GET /api/status`` during a large local copy.

Starts a real Jupyter server with the extension (127.0.0.1), measures ``/api/status`` latency at rest
(baseline), then while a 1 GiB copy job runs, and prints p50 / p99 (milliseconds) of both and their ratio.
Goal: p99 under 100 ms while the copy runs (the copy runs on worker threads, never on the event loop).

    python bench/bench_responsiveness.py [--size-mib 1024] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.jupyter_proc import JupyterServerProcess  # noqa: E402


def make_file(path: Path, size_mib: int) -> None:
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as fh:
        for _ in range(size_mib // 8):
            fh.write(block)


def latencies(server: JupyterServerProcess, count: int, until=None) -> list[float]:
    session = requests.Session()
    out = []
    for _ in range(count):
        if until is not None and until():
            break
        t0 = time.perf_counter()
        response = session.get(f"{server.url}api/status", headers=server.headers, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
        time.sleep(0.01)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    work = Path(__file__).resolve().parent / "_work"
    work.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp_path = Path(tmp)
        src = tmp_path / "big.bin"
        make_file(src, args.size_mib)
        server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
        server.start()
        try:
            rest = latencies(server, args.requests)
            job = server.create_job({"source": str(src), "destination": "staging/big"})

            def finished() -> bool:
                return server.job(job["id"])["state"] not in ("queued", "running")

            t0 = time.perf_counter()
            busy = []
            while not finished():
                busy.extend(latencies(server, 20))
            elapsed = time.perf_counter() - t0
            final = server.job(job["id"])
        finally:
            server.stop()
    print(f"copy of {args.size_mib} MiB: {final['state']} in about {elapsed:.1f} s")
    for label, values in (("at rest ", rest), ("copying ", busy)):
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        print(f"/api/status {label}: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  (n={len(values)})")
    print(
        f"p99 ratio copying/rest: {pct(busy, 0.99) / pct(rest, 0.99):.2f}x; goal p99 < 100 ms: "
        f"{'met' if pct(busy, 0.99) < 100 else 'NOT met'}; mean {statistics.mean(busy):.1f} ms"
    )


if __name__ == "__main__":
    main()
