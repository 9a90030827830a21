"""A server of its own for a job, killed part way or made to die at a chosen call (as a kill would), and the
job resumed by the next server on the same job database: for tests of what a crash leaves behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from jupyter_staging.engine.models import DescribeJob
from tests.helpers.data import wait_until
from tests.helpers.managers import manager_for

REPO = Path(__file__).resolve().parents[2]


CHILD = """
import json, os, sys, time
from jupyter_staging.engine import runner, swap
from jupyter_staging.engine.expansion import ExpandingStager
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.partfile import PartFile
method, _, exit_at = sys.argv[4].partition(":")
owner, _, method = method.rpartition(".")
owners = {"": ExpandingStager, "PartFile": PartFile, "Confined": Confined, "swap": swap, "runner": runner}
owner = owners[owner]
if method:  # dies as a kill would, at the exit_at-th call of the method, before it runs
    original, calls = getattr(owner, method), []
    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == int(exit_at):
            os._exit(9)
        return original(self, *args, **kwargs)
    setattr(owner, method, dying)
mgr = StagingManager(sys.argv[1], db_url=sys.argv[2], sweep_interval=0)
mgr.start()
job, _ = mgr.create(CreateJob(**json.loads(sys.argv[3])))
print(job.id, flush=True)
time.sleep(600)
"""


def killed_part_way(
    tmp_path: Path, request: dict, done: Callable[[Path], bool] | None = None, *, exit_at: str = ""
) -> str:
    """Run ``request`` in a server of its own (a child process) on ``tmp_path / "root"`` and the job
    database ``tmp_path / "jobs.sqlite"``, kill it (SIGKILL) once ``done(root / "out")``, or let it die
    (exit status 9, nothing flushed) at a point ``exit_at`` names: ``"<method>:<n>"``, the n-th call of
    that method of the job's stager (``"_chunk_ready:300"``: the 300th file an unpacking publishes, before
    its chunk is recorded), or ``"PartFile.<method>:<n>"``, of a part file's (``"PartFile._publish:1"``:
    a verified file about to take its name), of ``Confined`` (``"Confined.rename:2"``), or of a function of
    the modules ``swap`` and ``runner`` (``"swap._carry_over:1"``); returns the job's id."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "root"), f"sqlite:///{tmp_path / 'jobs.sqlite'}",
         json.dumps(request), exit_at],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        out = tmp_path / "root" / "out"
        if done is None:
            assert child.wait(timeout=120) == 9, "the job ended before its planned death; nothing was tested"
        else:
            wait_until(lambda: out.is_dir() and done(out), timeout=120, what="part of the job")
            child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    return job_id


def resumed(tmp_path: Path, job_id: str) -> tuple[DescribeJob, list, str]:
    """Start a server on the job database ``tmp_path / "jobs.sqlite"`` (which resumes job ``job_id``),
    wait for the job to end, and stop it: ``(the job, its chunks, its log as one text)``."""
    manager = manager_for(tmp_path)
    try:
        done = manager.wait(job_id, timeout=300)
        chunks = manager.chunks(job_id)
        log = "\n".join(line["message"] for line in manager.job_log(job_id, limit=5000))
    finally:
        manager.stop()
    return done, chunks, log
