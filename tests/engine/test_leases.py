"""Servers of two hosts sharing one job database (JupyterHub named servers in two pods, one shared home):
a job whose runner is on another host is taken over only once its lease has expired, never while that
runner renews it. Two real managers in this process play the two hosts (their runner ids name podA and
podB); the database and the transfers are real."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_staging.engine import processes
from jupyter_staging.engine.leases import LEASE_INTERVALS, claim
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import utcnow
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer

#: Seconds between two lease renewals in these tests: a lease lasts LEASE_INTERVALS of them.
INTERVAL = 0.5


@pytest.fixture
def on_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``on_host(name)``: an unstarted manager on ``tmp_path / "root"`` and the shared job database, whose
    runner id names host ``name`` (only :func:`~jupyter_staging.engine.processes.host_name` is replaced,
    while it is made); all are stopped at the end."""
    (tmp_path / "root").mkdir(exist_ok=True)
    made: list[StagingManager] = []

    def make(name: str) -> StagingManager:
        with monkeypatch.context() as patch:
            patch.setattr(processes, "host_name", lambda: name)
            mgr = StagingManager(
                tmp_path / "root",
                db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}",
                sweep_interval=0,
                heartbeat_interval=INTERVAL,
            )
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        mgr.stop()


def test_a_job_a_server_of_another_host_runs_is_left_to_it_while_it_renews_its_lease(tmp_path, on_host):
    """Server B starts while server A (another host) runs a download, after A's first lease would have
    expired: A's heartbeat renewed it, so B leaves the job alone. Before, B took any runner of another
    host for dead and ran the job too: both resumed the same part files, the log got false
    ``destination_exists`` failures and the job could end ``failed``."""
    payload = os.urandom(4 * 1024 * 1024)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(payload)
    a = on_host("podA")
    a.start()
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_000_000) as http:
        job, _ = a.create(CreateJob(source=http.url("survey.bin"), destination="survey"))
        first_lease = a.store.get_job(job.id, resume=False).lease_expires_at
        wait_until(lambda: utcnow() > first_lease, timeout=10, what="the first lease to pass")
        b = on_host("podB")
        assert b.start() == []
        assert b.get(job.id).state.value == "running"
        done = a.wait(job.id, timeout=60)
    log = [line["message"] for line in b.job_log(job.id)]
    assert done.state.value == "succeeded", done.error
    assert not any("resuming it" in line or "failed" in line for line in log), log
    out = tmp_path / "root" / "survey" / "survey.bin"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()


def test_a_job_of_a_server_of_another_host_that_stopped_renewing_is_resumed_once_its_lease_expired(
    tmp_path, on_host
):
    """Server A (another host) was killed with a job running: its lease is left to expire. Server B leaves
    the job alone until then, and resumes it after; of two servers claiming it at once, one gets it."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024 * 1024))
    a = on_host("podA")  # never started: no heartbeat, as a killed server
    early = on_host("podB")
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running")
    rec = a.store.get_job(job.id, resume=False)
    assert rec.runner.startswith("podA:") and rec.lease_expires_at > utcnow()

    assert early.start() == []  # the lease still runs: podA may be alive
    wait_until(lambda: utcnow() > rec.lease_expires_at, timeout=10, what="the lease to expire")
    until = utcnow() + timedelta(seconds=LEASE_INTERVALS * INTERVAL)
    expired = a.store.get_job(job.id, resume=False)
    assert claim(a.store, expired, "podC:1:1", until)
    assert not claim(a.store, expired, "podD:1:1", until)  # podC was first
    a.store.set_job_fields(job.id, lease_expires_at=utcnow() - timedelta(seconds=1))  # podC died too

    late = on_host("podB")
    assert late.start() == [job.id]
    assert late.wait(job.id, timeout=60).state.value == "succeeded"
    log = [line["message"] for line in late.job_log(job.id)]
    assert "the server stopped while this job ran; resuming it" in log


def test_a_job_of_a_server_of_another_host_is_kept_leased_while_it_waits_queued(tmp_path, on_host):
    """A server's heartbeat renews the leases of its queued jobs too (waiting for a free slot): another
    host's server leaves them queued for it. One ``UPDATE`` renews them all."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    jobs = [
        a.create(
            CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination=f"out-{i}"), start=False
        )[0]
        for i in range(3)
    ]
    a.heartbeat.start()  # the jobs wait: nothing runs them yet
    first = max(a.store.get_job(j.id, resume=False).lease_expires_at for j in jobs)
    wait_until(lambda: utcnow() > first + timedelta(seconds=INTERVAL), timeout=10, what="the leases to pass")
    assert all(a.store.get_job(j.id, resume=False).lease_expires_at > utcnow() for j in jobs)
    assert on_host("podB").start() == []


def test_a_job_of_a_release_before_leases_on_another_host_is_resumed_at_once(tmp_path, on_host):
    """A runner id of an earlier release (``host:pid``, no lease) is judged as then: a server of another
    host takes its job over at start."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running", runner="podZ:4242", lease_expires_at=None)
    b = on_host("podB")
    assert b.start() == [job.id]
    assert b.wait(job.id, timeout=60).state.value == "succeeded"


def test_a_cancel_ends_at_once_a_job_whose_runner_on_another_host_lost_its_lease(tmp_path, on_host):
    """The server of another host running the job was killed and its lease expired: a cancel here ends the
    job at once, as one of a dead runner of this host (it asked the gone runner and waited 30 s)."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")  # never started: killed
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running", lease_expires_at=utcnow() - timedelta(seconds=1))
    (tmp_path / "root" / "out").mkdir()  # what the dead run had made
    b = on_host("podB")  # not started: no recovery yet
    began = time.monotonic()
    answer = b.cancel(job.id)
    assert answer.state.value == "cancelled"
    assert time.monotonic() - began < 10
    assert [line["message"] for line in b.job_log(job.id)][-1] == "cancelled; partial output removed"


def test_a_run_finding_its_job_ended_by_another_run_records_nothing_and_raises_nothing(
    tmp_path, on_host, caplog
):
    """A run that ends failed (one manifest entry missing) after another server's run of its job ended it
    ``succeeded`` leaves the job as it is and says so in this process's log, a warning: no ``InvalidState``
    traceback, no cleanup of the other run's output, no failure in the job's log."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    a = on_host("podA")
    a.start()
    caplog.set_level(logging.WARNING, logger="jupyter_staging")
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_000_000) as http:
        entries = {"survey": http.url("survey.bin"), "gone": http.url("gone.bin")}
        job, _ = a.create(CreateJob(manifest=entries, destination="survey"))
        wait_until(lambda: a.get(job.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        a.store.set_job_fields(job.id, state="succeeded")  # the other run ended the job meanwhile
        ended = ("as this run ended", "could not record")
        wait_until(lambda: any(w in caplog.text for w in ended), timeout=60, what="the run to end")
    assert a.get(job.id).state.value == "succeeded"
    assert "could not record" not in caplog.text and "InvalidState" not in caplog.text, caplog.text
    assert not any(line["level"] == "error" for line in a.job_log(job.id))
    assert (tmp_path / "root" / "survey" / "survey" / "survey.bin").exists()  # not cleaned up


def test_a_server_stopped_cleanly_ends_its_leases_so_another_host_resumes_its_job_at_once(tmp_path, on_host):
    """A server that stops (its runs ended, its jobs left ``running`` for the next start) ends its leases:
    a server of another host starting right after resumes the job without waiting for them to expire."""
    payload = os.urandom(2 * 1024 * 1024)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(payload)
    a = on_host("podA")
    a.start()
    b = on_host("podB")
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_000_000) as http:
        job, _ = a.create(CreateJob(source=http.url("survey.bin"), destination="survey"))
        wait_until(lambda: a.get(job.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        a.stop()
        assert b.start() == [job.id]
        assert b.wait(job.id, timeout=60).state.value == "succeeded"
    out = tmp_path / "root" / "survey" / "survey.bin"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()
