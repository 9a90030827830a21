"""A job taken over from a runner that missed its lease, and the changes that meet a takeover: the run that
lost its job stops and records nothing, a job changed between its claim and its requeue is left as it is,
a run whose job ended already records nothing, a pause of a job whose runner is gone pauses it at once.
Real managers in this process play the hosts (``on_host``), on one real SQLite job database."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from datetime import timedelta

import pytest

from jupyter_staging.engine import processes, recovery
from jupyter_staging.engine.leases import DEFAULT_HEARTBEAT_INTERVAL, outlasts_lock_wait
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.recovery import RESUMING
from jupyter_staging.engine.store import utcnow
from tests.engine.conftest import job_of_a_dead_host
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer


def _log(mgr, job_id: str) -> list[str]:
    return [line["message"] for line in mgr.job_log(job_id)]


def test_a_live_run_that_missed_its_lease_stops_when_another_host_takes_its_job_and_records_nothing(
    tmp_path, on_host, caplog
):
    """Server A runs a manifest job and misses its lease while alive (its renewals held back, as a stopped
    or starved process); server B takes the job over. A's next beat finds the job is B's: its run stops
    and records nothing, and the job succeeds once, by B's run. Before, A's run went on: two runs of one
    job, ``succeeded`` recorded twice, both writing the same part files."""
    caplog.set_level(logging.WARNING, logger="jupyter_staging")
    (tmp_path / "www").mkdir()
    data = {f"e{i}": os.urandom(1024 * 1024) for i in range(6)}
    for name, payload in data.items():
        (tmp_path / "www" / f"{name}.bin").write_bytes(payload)
    a = on_host("podA")
    a.start()
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=250_000) as http:
        job, _ = a.create(CreateJob(manifest={k: http.url(f"{k}.bin") for k in data}, destination="out"))
        wait_until(lambda: a.get(job.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        held = a.heartbeat.held
        a.heartbeat.held = lambda: []  # A renews nothing: alive, but late
        lease = lambda: a.store.get_job(job.id, resume=False).lease_expires_at  # noqa: E731
        wait_until(lambda: utcnow() > lease(), timeout=10, what="A's lease to expire")
        b = on_host("podB")
        assert b.start() == [job.id]
        a.heartbeat.held = held
        assert b.wait(job.id, timeout=60).state.value == "succeeded"
        wait_until(lambda: not a.heartbeat.held(), timeout=10, what="A's run to end")
    log = _log(b, job.id)
    assert sum(line.startswith("succeeded") for line in log) == 1, log
    assert not any(line.startswith("failed") for line in log), log
    assert "taken over by another server" in caplog.text
    for name, payload in data.items():
        out = tmp_path / "root" / "out" / name / f"{name}.bin"
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()


def test_a_beat_interrupts_the_runs_of_the_jobs_another_process_took(tmp_path, on_host):
    """A heartbeat renewing fewer jobs than its process holds reads their runners: the run of a job whose
    runner is now another process's is interrupted ``superseded`` (which outranks a pending cancel: the
    job is no longer this run's to cancel); the jobs still held are left alone."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    kept, taken = (
        a.create(
            CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination=f"out-{i}"), start=False
        )[0]
        for i in range(2)
    )
    a.heartbeat.beat()
    assert not a._controls[kept.id].interrupted and not a._controls[taken.id].interrupted
    a.store.set_job_fields(taken.id, runner="podB:1:1")  # podB claimed it: A's lease had lapsed
    a._controls[taken.id].interrupt("cancelled")
    a.heartbeat.beat()
    assert a._controls[taken.id].reason == "superseded"
    assert not a._controls[kept.id].interrupted


def test_the_default_lease_outlasts_a_renewal_that_waited_the_whole_sqlite_busy_timeout():
    """A renewal waits up to the SQLite busy timeout (30 s) for another connection's write: with the default
    interval the next renewal still lands before the lease expires. Before, the lease (3 x 10 s) equalled
    the busy timeout: a 3 s write lock of another connection let another host take a live run's job."""
    assert outlasts_lock_wait(DEFAULT_HEARTBEAT_INTERVAL)
    assert not outlasts_lock_wait(10.0)


@pytest.mark.parametrize("verb", ["cancelled", "paused"])
def test_a_job_changed_between_its_claim_and_its_requeue_is_left_and_the_others_are_resumed(
    tmp_path, on_host, monkeypatch, verb
):
    """Server B takes over two jobs of a dead server A; the first is ended (or paused) right after B claimed
    it, before B queues it again. B leaves it as it is and resumes the other. Before, B's requeue was
    unconditional: a cancelled job raised ``JobEnded`` out of ``start()`` (the other jobs were never
    resumed) and a paused one was queued again."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")  # never started: killed
    jobs = [
        a.create(
            CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination=f"out-{i}"), start=False
        )[0]
        for i in range(2)
    ]
    for job in jobs:
        a.store.set_job_fields(job.id, state="running", lease_expires_at=utcnow() - timedelta(seconds=1))
    changed, other = jobs
    claim = recovery.claim

    def claim_then_change(store, rec, runner, until):
        claimed = claim(store, rec, runner, until)
        if rec.id == changed.id:  # a verb (or the old run) ends or pauses it right after the claim
            store.set_job_fields(rec.id, state=verb)
        return claimed

    monkeypatch.setattr(recovery, "claim", claim_then_change)
    b = on_host("podB")
    assert b.start() == [other.id]
    assert b.wait(other.id, timeout=60).state.value == "succeeded"
    assert b.get(changed.id).state.value == verb
    assert "the server stopped while this job ran; resuming it" not in _log(b, changed.id)


def test_a_run_whose_job_another_run_ended_succeeded_records_nothing(tmp_path, on_host, caplog):
    """A run that completes after another run of its job ended it ``succeeded`` leaves it as it is: its
    end, totals and ``finished_at`` are not written again, nor its cleanup policy applied. Before, a
    second ``succeeded`` was recorded (the same state was let through) and the policy ran twice."""
    caplog.set_level(logging.WARNING, logger="jupyter_staging")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    a = on_host("podA")
    a.start()
    cleanups = []
    policy = a.apply_cleanup_policy
    a.apply_cleanup_policy = lambda job_id, *args, **kw: (
        cleanups.append(job_id),
        policy(job_id, *args, **kw),
    )
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_000_000) as http:
        job, _ = a.create(CreateJob(source=http.url("survey.bin"), destination="survey"))
        wait_until(lambda: a.get(job.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        other_end = utcnow() - timedelta(hours=1)
        a.store.set_job_fields(job.id, state="succeeded", finished_at=other_end, bytes_done=123)
        wait_until(lambda: not a.heartbeat.held(), timeout=30, what="the run to end")
    rec = a.store.get_job(job.id, resume=False)
    assert (rec.state, rec.bytes_done, rec.finished_at) == ("succeeded", 123, other_end)
    assert not any(line.startswith("succeeded") for line in _log(a, job.id))
    assert cleanups == []
    assert caplog.text.count(job.id) == 1, caplog.text  # the run stopped, and said so once


def test_a_run_taken_over_as_it_ends_does_not_record_its_end(tmp_path, on_host, caplog):
    """The job of a run is taken over by another server at the last moment (as the run applies its cleanup
    policy): its ``succeeded`` is written only if the job is still running under this process, so it is
    not, and the job stays the other server's."""
    caplog.set_level(logging.WARNING, logger="jupyter_staging")
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    a.start()
    policy = a.apply_cleanup_policy

    def taken_over_now(job_id, outcome=None, **kw):
        far = utcnow() + timedelta(hours=1)  # podB's lease: not taken back meanwhile
        a.store.set_job_fields(job_id, runner="podB:1:1", lease_expires_at=far)
        policy(job_id, outcome, **kw)

    a.apply_cleanup_policy = taken_over_now
    job, _ = a.create(CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"))
    wait_until(lambda: "the run's end is not recorded" in caplog.text, timeout=30, what="the run to end")
    rec = a.store.get_job(job.id, resume=False)
    assert (rec.state, rec.runner) == ("running", "podB:1:1")
    assert not any(line.startswith("succeeded") for line in _log(a, job.id))


def test_a_pause_of_a_job_whose_runner_on_another_host_lost_its_lease_pauses_it_at_once(tmp_path, on_host):
    """The server of another host running the job was killed and its lease expired: a pause here pauses
    the job at once, as a cancel ends it, and a resume queues it again. Before, the pause asked the gone
    runner, waited 30 s, answered ``running`` and left its request pending."""
    job_id = job_of_a_dead_host(tmp_path, on_host, lease_left=-timedelta(minutes=5))
    b = on_host("podB")  # not started: no takeover yet
    began = time.monotonic()
    assert b.pause(job_id).state == JobState.paused
    assert time.monotonic() - began < 10
    rec = b.store.get_job(job_id, resume=False)
    assert (rec.state, rec.requested) == ("paused", None)
    assert _log(b, job_id)[-1] == "paused"
    assert b.resume(job_id).state in (JobState.queued, JobState.running, JobState.succeeded)


def test_a_takeover_between_a_resume_and_its_start_makes_one_run(tmp_path, monkeypatch):
    """A paused job whose runner was a process of this host that died (a crashed kernel), its lease
    expired: the user resumes it, and the heartbeat's takeover runs between the resume's requeue and its
    start (forced here from the "resumed" log line). One run holds the job: a stop interrupts it. (Two
    runs were started; the one moving bytes had no control, so the stop waited for the whole file.)"""
    served = tmp_path / "www"
    served.mkdir()
    (served / "big.fits").write_bytes(os.urandom(3_000_000))
    with RangeHTTPServer(served, throttle_bytes_per_s=200_000) as www:
        (tmp_path / "root").mkdir()
        # One job at a time: the first run started takes the job, a second would wait behind it.
        db_url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
        mgr = StagingManager(tmp_path / "root", db_url=db_url, sweep_interval=0, max_concurrent_jobs=1)
        mgr.start()
        try:
            job, _ = mgr.create(CreateJob(source=www.url("big.fits"), destination="a"))
            wait_until(lambda: mgr.get(job.id).progress.bytes_done > 0, 30, "bytes to move")
            assert mgr.pause(job.id).state == JobState.paused
            crashed = f"{processes.host_name()}:999999:12345"  # no such process
            mgr.store.update_job(job.id, runner=crashed, lease_expires_at=utcnow() - timedelta(seconds=5))
            taken: list[list[str]] = []
            log_event = mgr.log_event

            def with_takeover(job_id: str, level: str, message: str) -> None:
                log_event(job_id, level, message)
                if message == "resumed" and not taken:
                    taken.append(mgr.recover_expired())

            monkeypatch.setattr(mgr, "log_event", with_takeover)
            mgr.resume(job.id)
            assert taken == [[job.id]]
        finally:
            began = time.monotonic()
            mgr.stop(wait=True)
        assert time.monotonic() - began < 10, "the stop waited for the run to end"
        assert mgr.store.get_job(job.id, resume=False).state != "succeeded"


def test_a_server_stopping_as_its_heartbeat_takes_over_a_job_leaves_it_to_the_others(
    tmp_path, on_host, monkeypatch
):
    """Server B's heartbeat finds a dead server's job (its lease expired) as B stops: B does not claim it,
    so the job is not queued under a process that is shutting down, and a server of another host resumes
    it at once. Before, B claimed it, logged that it resumed it, and left it queued under B's runner."""
    job_id = job_of_a_dead_host(tmp_path, on_host, lease_left=timedelta(seconds=1))
    b = on_host("podB")
    assert b.start() == []  # podA's lease still runs
    found = threading.Event()
    expired = recovery.expired

    def expired_as_b_stops(*args):
        ids = expired(*args)
        if ids and not found.is_set():
            found.set()
            wait_until(lambda: b._stopped, timeout=10, what="B to stop")
        return ids

    monkeypatch.setattr(recovery, "expired", expired_as_b_stops)
    assert found.wait(10)
    b.stop()
    b.heartbeat._thread.join(10)  # the takeover in flight, if it outlived the stop
    rec = b.store.get_job(job_id, resume=False)
    assert (rec.state, rec.runner.split(":")[0]) == ("running", "podA")
    assert RESUMING not in _log(b, job_id)
    c = on_host("podC")
    assert c.start() == [job_id]
    assert c.wait(job_id, timeout=60).state.value == "succeeded"


def test_a_takeover_of_hundreds_of_jobs_does_not_hold_back_the_renewal_of_the_leases_held(tmp_path, on_host):
    """Server B runs a download when the leases of 500 jobs of a dead server A expire together: B's beats
    take them over a share of an interval at a time, and B's own lease never runs out meanwhile (a third
    server would have taken B's running job). Before, one beat took all 500 over before the next renewal
    (the renewal came an interval after the takeover ended): B's lease lapsed."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "s.bin").write_bytes(os.urandom(1024))
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big.bin").write_bytes(os.urandom(3_000_000))
    # Beats of 1 s (leases of 3 s): with the 0.5 s of the other tests, B's lease lapsed by 0.25 s once in a
    # CI run, by scheduling noise with the takeover spread over beats as it should be.
    a = on_host("podA", interval=1.0)  # never started: killed
    source = str(tmp_path / "archive" / "s.bin")
    dead = [a.create(CreateJob(source=source, destination=f"o{i}"), start=False)[0].id for i in range(500)]
    for job_id in dead:  # A's leases outlast making 500 jobs on a loaded machine; they expire below, together
        a.store.set_job_fields(job_id, lease_expires_at=utcnow() + timedelta(hours=1))
    b = on_host("podB", interval=1.0)
    assert b.start() == []
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=300_000) as http:
        mine, _ = b.create(CreateJob(source=http.url("big.bin"), destination="mine"))
        wait_until(lambda: b.get(mine.id).progress.bytes_done > 0, timeout=30, what="bytes to move")
        until = utcnow() + timedelta(seconds=0.2)
        for job_id in dead:
            a.store.set_job_fields(job_id, state="running", lease_expires_at=until)
        margins: list[float] = []
        watching = threading.Event()

        def watch() -> None:  # B's own lease, as a third server would read it
            while not watching.wait(0.01):
                rec = b.store.get_job(mine.id, resume=False)
                if rec.state == "running":
                    margins.append((rec.lease_expires_at - utcnow()).total_seconds())

        def all_taken() -> bool:
            held = b.store.list_jobs(root=str(tmp_path / "root"), states=["queued", "running"], limit=1000)
            return not any(rec.runner.startswith("podA:") for rec in held)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            wait_until(all_taken, timeout=60, what="the dead server's jobs to be taken over", interval=0.3)
            time.sleep(1.0)
        finally:
            watching.set()
            watcher.join()
        assert min(margins) > 0, f"B's lease ran out for {-min(margins):.2f} s"
    b.stop()


def test_a_run_that_lost_its_job_writes_no_chunk_row_after_the_takeover(tmp_path, on_host):
    """Server A runs a manifest job of six files, and another server takes it over (A missed its lease)
    just as A's run records a finished file (forced here at A's first chunk write with a file done). A's
    run writes nothing from then on, nor the job's resume data: the chunks are the new run's, and A's run
    stops. Before, A's run recorded the files it finished until its next progress report (up to one
    heartbeat): rows in the new run's job, beside the chunks that run makes."""
    (tmp_path / "www").mkdir()
    data = {f"e{i}": os.urandom(256 * 1024) for i in range(6)}
    for name, payload in data.items():
        (tmp_path / "www" / f"{name}.bin").write_bytes(payload)
    a = on_host("podA")
    a.start()
    write_chunks = a.store.write_chunks
    before: list[tuple[set, object]] = []

    def taken_over_first(job_id, new, updates, **kw):
        done = any(u.get("state") == "ready" for u in updates.values())
        if done and not before:  # another server claims the job now
            far = utcnow() + timedelta(hours=1)
            a.store.set_job_fields(job_id, runner="podB:1:1", lease_expires_at=far)
            rows = {(c.id, c.state, c.bytes) for c in a.store.list_chunks(job_id)}
            before.append((rows, a.store.get_job(job_id).resume))
        return write_chunks(job_id, new, updates, **kw)

    a.store.write_chunks = taken_over_first
    with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=400_000) as http:
        job, _ = a.create(CreateJob(manifest={k: http.url(f"{k}.bin") for k in data}, destination="out"))
        wait_until(lambda: before and not a.heartbeat.held(), timeout=60, what="A's run to stop")
    rows, resume = before[0]
    assert {(c.id, c.state, c.bytes) for c in a.store.list_chunks(job.id)} == rows
    assert a.store.get_job(job.id).resume == resume
    assert a.store.get_job(job.id, resume=False).runner == "podB:1:1"
