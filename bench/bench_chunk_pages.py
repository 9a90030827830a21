"""``iter_chunks`` over a running job of many small local files, through a real Jupyter server: how many
requests the kernel makes, how many bytes it receives (chunk listings and status) and how many CPU seconds
the server spends, from the job's creation until the last chunk was yielded (``--wait-only``: the same job
followed by ``job.wait()``, for the job's own cost).

Run it with the code to measure first on the path (the server inherits ``PYTHONPATH``)::

    PYTHONPATH=. .venv/bin/python bench/bench_chunk_pages.py --files 20000

The source folder (``--files`` files of 100 bytes) is made once in ``bench/_work/chunkpages`` and kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_staging.kernel.backends import ServerBackend  # noqa: E402
from jupyter_staging.kernel.job import Job  # noqa: E402
from tests.helpers.jupyter import JupyterServerProcess  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "chunkpages"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its threads included), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_source(count: int) -> Path:
    folder = WORK / f"src-{count}"
    if not (folder / f"f{count - 1:06d}.txt").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"f{i:06d}.txt").write_bytes(f"{i:06d}".encode() * 16 + b"\n" * 4)
    return folder


def run(count: int, follow: bool = True) -> dict[str, object]:
    source = make_source(count)
    state = WORK / "server"
    shutil.rmtree(state, ignore_errors=True)
    server = JupyterServerProcess(state / "root", state / "state")
    server.start()
    try:
        assert server.proc is not None
        backend = ServerBackend(server.url, server.token, server.root_dir)
        requests_by_kind: Counter[str] = Counter()
        bytes_by_kind: Counter[str] = Counter()

        def count_response(response, *args, **kwargs):  # type: ignore[no-untyped-def]
            kind = "chunks" if "/chunks" in response.url else "status"
            requests_by_kind[kind] += 1
            bytes_by_kind[kind] += len(response.content)

        backend._session.hooks["response"].append(count_response)
        cpu_before = cpu_seconds(server.proc.pid)
        started = time.monotonic()
        job = Job(backend.create({"source": str(source), "destination": "out", "method": "copy"}), backend)
        seen = [chunk.index for chunk in job.iter_chunks()] if follow else [] if job.wait() else []
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        assert job.refresh().state == "succeeded", job
        assert seen == list(range(count)) or not follow, "every chunk once, in index order"
        return {
            "files": count,
            "followed": follow,
            "seconds": round(elapsed, 1),
            "requests": dict(requests_by_kind),
            "bytes_received": dict(bytes_by_kind),
            "server_cpu_seconds": round(cpu, 1),
        }
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--wait-only", action="store_true", help="job.wait() instead: the job's own cost")
    args = parser.parse_args()
    figures = run(args.files, follow=not args.wait_only)
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
