"""Recovery at start: jobs of a dead server are resumed, but never a job this manager already runs."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer


def test_a_job_created_before_start_is_not_run_a_second_time(tmp_path):
    """``create`` runs a job at once; ``start`` afterwards (the Python API used in that order) must not
    take it for one left ``running`` by a dead server and start a second runner on the same part file (the
    second run failed ``invalid_state`` once the first had ended, or both wrote the part)."""
    payload = os.urandom(3 * 1024 * 1024)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(payload)
    (tmp_path / "root").mkdir()
    mgr = StagingManager(tmp_path / "root", db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0)
    try:
        with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_500_000) as http:
            job, created = mgr.create(CreateJob(source=http.url("survey.bin"), destination="survey"))
            assert created
            wait_until(lambda: mgr.get(job.id).state.value == "running", timeout=30)
            assert mgr.start() == []
            done = mgr.wait(job.id, timeout=60)
        log = [line["message"] for line in mgr.job_log(job.id)]
    finally:
        mgr.stop()
    assert done.state.value == "succeeded", done.error
    assert not any("resuming it" in line or "invalid_state" in line for line in log), log
    out = tmp_path / "root" / "survey" / "survey.bin"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()


def test_a_job_whose_runners_pid_now_belongs_to_another_process_is_resumed(tmp_path):
    """A restarted container reuses pids (the server was PID 1, and PID 1 is now a shell): the job's
    runner id holds when its process started, so a live process of that pid started since is not it."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024 * 1024))
    (tmp_path / "root").mkdir()
    other = subprocess.Popen(["sleep", "600"])  # the process that has the old runner's pid now
    try:
        for started, resumed in (("1", True), (None, False)):
            db = f"sqlite:///{tmp_path / f'jobs-{resumed}.sqlite'}"
            gone = StagingManager(tmp_path / "root", db_url=db, sweep_interval=0)  # never started: "killed"
            request = CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination=f"out-{resumed}")
            job, _ = gone.create(request, start=False)
            start = started or this_runner_started(other.pid)
            gone.store.set_job_fields(job.id, runner=f"{socket.gethostname()}:{other.pid}:{start}")
            mgr = StagingManager(tmp_path / "root", db_url=db, sweep_interval=0)
            try:
                assert mgr.start() == ([job.id] if resumed else [])
                if resumed:
                    assert mgr.wait(job.id, timeout=60).state.value == "succeeded"
                else:  # the live runner it names has it
                    assert mgr.get(job.id).state.value == "queued"
            finally:
                mgr.stop()
    finally:
        other.kill()
        other.wait()


def this_runner_started(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat``: when ``pid`` started (clock ticks since boot)."""
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()[19]


def test_a_running_job_whose_runner_died_is_cancelled_at_once(tmp_path):
    """The server running the job was killed and another server of this host (sharing the database) has
    not recovered it yet: a cancel there ends it at once. Before, it asked the dead runner, waited 30 s
    and answered ``running``."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024 * 1024))
    (tmp_path / "root").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    db = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    gone = StagingManager(tmp_path / "root", db_url=db, sweep_interval=0)  # never started: "killed"
    job, _ = gone.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    gone.store.set_job_fields(job.id, state="running", runner=f"{socket.gethostname()}:{dead.pid}:1")
    (tmp_path / "root" / "out").mkdir()  # what the dead run had made
    mgr = StagingManager(tmp_path / "root", db_url=db, sweep_interval=0)  # not started: no recovery yet
    try:
        answer = mgr.cancel(job.id)
    finally:
        mgr.stop()
    assert answer.state.value == "cancelled"
    assert [line["message"] for line in mgr.job_log(job.id)][-1] == "cancelled; partial output removed"
