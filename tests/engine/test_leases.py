"""Servers of two hosts sharing one job database (JupyterHub named servers in two pods, one shared home):
a job whose runner is on another host is taken over only once its lease has expired, never while that
runner renews it. Two real managers in this process play the two hosts (their runner ids name podA and
podB); the database and the transfers are real."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import timedelta

from jupyter_staging.engine.leases import LEASE_INTERVALS, claim
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import utcnow
from tests.engine.conftest import INTERVAL, job_of_a_dead_host
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer


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
    """Server A (another host) was killed with a job running, after servers B and C had started: its lease
    is left to expire. B and C leave the job alone until then; after, their heartbeats take it over (not
    only a server's start), and of the two one gets it. Before, a server took over only at its start:
    the job stayed ``running`` for ever."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024 * 1024))
    a = on_host("podA")  # never started: no heartbeat, as a killed server
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running")
    rec = a.store.get_job(job.id, resume=False)
    assert rec.runner.startswith("podA:") and rec.lease_expires_at > utcnow()

    b, c = on_host("podB"), on_host("podC")
    assert b.start() == [] and c.start() == []  # the lease still runs: podA may be alive
    assert b.get(job.id).state.value == "running"
    assert b.wait(job.id, timeout=60).state.value == "succeeded"
    assert utcnow() > rec.lease_expires_at
    log = [line["message"] for line in b.job_log(job.id)]
    assert log.count("the server stopped while this job ran; resuming it") == 1, log
    assert log.count("running") == 1, log  # the one run that took it over


def test_a_claim_takes_a_job_as_read_once(tmp_path, on_host):
    """Of two servers claiming one expired lease as read, one gets the job; a lease renewed since the
    read is not taken."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running", lease_expires_at=utcnow() - timedelta(seconds=1))
    until = utcnow() + timedelta(seconds=LEASE_INTERVALS * INTERVAL)
    expired = a.store.get_job(job.id, resume=False)
    assert claim(a.store, expired, "podC:1:1", until)
    assert not claim(a.store, expired, "podD:1:1", until)  # podC was first
    renewed = a.store.get_job(job.id, resume=False)
    a.store.set_job_fields(job.id, lease_expires_at=until + timedelta(seconds=1))  # podC renewed it
    assert not claim(a.store, renewed, "podD:1:1", until)


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
    job_id = job_of_a_dead_host(tmp_path, on_host, lease_left=-timedelta(seconds=1))
    (tmp_path / "root" / "out").mkdir()  # what the dead run had made
    b = on_host("podB")  # not started: no recovery yet
    began = time.monotonic()
    answer = b.cancel(job_id)
    assert answer.state.value == "cancelled"
    assert time.monotonic() - began < 10
    assert [line["message"] for line in b.job_log(job_id)][-1] == "cancelled; partial output removed"


def test_a_run_finding_its_job_ended_by_another_run_records_nothing_and_raises_nothing(
    tmp_path, on_host, caplog
):
    """A run (one manifest entry missing: it would end failed) whose job another server's run ended
    ``succeeded`` stops at its next progress report, leaves the job as it is and says so in this process's
    log, a warning: no ``InvalidState`` traceback, no cleanup of the other run's output, no failure in the
    job's log."""
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
        wait_until(lambda: not a.heartbeat.held(), timeout=60, what="the run to end")
    assert a.get(job.id).state.value == "succeeded"
    assert "could not record" not in caplog.text and "InvalidState" not in caplog.text, caplog.text
    assert not any(line["level"] == "error" for line in a.job_log(job.id))
    assert "its run stops" in caplog.text, caplog.text
    assert (tmp_path / "root" / "survey" / "survey").is_dir()  # not cleaned up


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


def test_a_renewal_in_flight_as_a_server_stops_lands_before_its_release(tmp_path, on_host):
    """A beat of server A's heartbeat is renewing as A stops (its renewal slow: a write lock, a starved
    thread). The stop waits for it before ending the leases, so the release is the last word: a server
    of another host resumes the job at once. Before, the stop did not wait: the renewal landed after the
    release, and the job looked held by the stopped server for a whole lease."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    a = on_host("podA")
    a.start()
    in_beat = threading.Event()
    held = a.heartbeat.held

    def slow_held():
        ids = held()  # read as the beat begins: the run still holds the job
        if ids and not in_beat.is_set():
            in_beat.set()
            wait_until(lambda: a._stopped, timeout=10, what="A to stop")
            time.sleep(2.0)  # the renewal is slow: A's runs end meanwhile
        return ids

    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=500_000) as http:
        job, _ = a.create(CreateJob(source=http.url("survey.bin"), destination="survey"))
        wait_until(lambda: a.get(job.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        a.heartbeat.held = slow_held
        assert in_beat.wait(10)
        a.stop()
        a.heartbeat._thread.join(10)  # the beat in flight, if it outlived the stop
        rec = a.store.get_job(job.id, resume=False)
        assert rec.state == "running" and rec.lease_expires_at <= utcnow()
        b = on_host("podB")
        assert b.start() == [job.id]
        assert b.wait(job.id, timeout=60).state.value == "succeeded"
