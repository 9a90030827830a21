"""A job's progress read as its runner ends never goes back (CI on 2be7244: ``bytes_done went backwards``,
the whole file, then 1,638,400 of 2,666,681 bytes, for one read).

A runner ends by writing its final counters with its final state, then forgets its live counters. A read
that took the record before that write and looked the live counters up after it got a running job's record
(its counters persisted every 0.25 s, so lagging) and no live counters. The interleaving is a few
microseconds wide: here the test's own reads of the job table are held, after they read, until the runner
has ended (``Store.get_job`` wrapped for the test's thread only; the job, the download and the runner are
real). Readers now take the live counters first, then the record.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.runner import JobRunner
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer

SIZE = 3 * 1024 * 1024


@pytest.fixture
def slow_server(tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "lightcurves.tar").write_bytes(os.urandom(SIZE))
    with RangeHTTPServer(www, throttle_bytes_per_s=3_000_000) as server:  # about one second
        yield server


def held_after_reading(manager: StagingManager, job_id: str) -> Callable[[], Any]:
    """Make the calling thread's next read of the job's record wait, once read, until the job's runner
    has ended and forgotten its live counters; returns a function undoing it."""
    real = manager.store.get_job
    reader = threading.get_ident()
    held = []

    def get_job(wanted: str, **kwargs: Any):
        rec = real(wanted, **kwargs)
        if threading.get_ident() == reader and wanted == job_id and not held:
            held.append(rec)
            wait_until(lambda: job_id not in manager.live_counters(), timeout=60, what="the runner's end")
        return rec

    manager.store.get_job = get_job  # type: ignore[method-assign]
    return lambda: held


def test_a_status_read_as_the_job_ends_shows_the_final_counters(manager, slow_server):
    job, _ = manager.create(CreateJob(source=slow_server.url("lightcurves.tar"), destination="tess"))
    wait_until(lambda: 0 < manager.get(job.id).progress.bytes_done < SIZE, what="bytes under way")
    held = held_after_reading(manager, job.id)

    seen = manager.get(job.id)

    [rec] = held()
    assert rec.state == JobState.running.value and rec.bytes_done < SIZE  # the record read was a lagging one
    assert seen.state == JobState.running
    assert seen.progress.bytes_done == SIZE  # the runner's counters as it ended, taken before that read
    assert manager.wait(job.id, timeout=60).progress.bytes_done == SIZE


def test_a_job_list_read_as_the_job_ends_shows_the_final_counters(manager, slow_server):
    job, _ = manager.create(CreateJob(source=slow_server.url("lightcurves.tar"), destination="tess"))
    wait_until(lambda: 0 < manager.get(job.id).progress.bytes_done < SIZE, what="bytes under way")
    real = manager.store.list_jobs

    def list_jobs(*args: Any, **kwargs: Any):
        recs = real(*args, **kwargs)
        wait_until(lambda: job.id not in manager.live_counters(), timeout=60, what="the runner's end")
        return recs

    manager.store.list_jobs = list_jobs  # type: ignore[method-assign]
    [listed] = manager.list_jobs().jobs

    assert listed.state == JobState.running
    assert listed.progress.bytes_done == SIZE


def test_a_runner_ending_after_the_next_one_started_leaves_that_ones_counters(
    manager, slow_server, monkeypatch
):
    """Paused and at once resumed: the paused run's thread returns after the resumed run has registered its
    counters and control (held here in its last step, closing its folders). The resumed run keeps them:
    its progress is still live, and a pause still reaches it."""
    first_run_may_end = threading.Event()
    real_close = JobRunner.close_folders
    closing: list[JobRunner] = []

    def close_folders(runner: JobRunner) -> None:
        closing.append(runner)
        if len(closing) == 1:
            first_run_may_end.wait(60)
        real_close(runner)

    real_release = manager.release
    released: list[object] = []

    def release(job_id: str, *args: Any) -> None:
        real_release(job_id, *args)
        released.append(args)

    monkeypatch.setattr(JobRunner, "close_folders", close_folders)
    monkeypatch.setattr(manager, "release", release)
    job, _ = manager.create(CreateJob(source=slow_server.url("lightcurves.tar"), destination="tess"))
    wait_until(lambda: 0 < manager.get(job.id).progress.bytes_done < SIZE, what="bytes under way")
    manager.pause(job.id)
    wait_until(lambda: closing, what="the paused run's last step")
    paused_run = manager.live_counters()[job.id]  # not released yet
    slow_server.throttle_bytes_per_s = 200_000  # the resumed run takes seconds
    manager.resume(job.id)
    wait_until(lambda: manager.live_counters()[job.id] is not paused_run, what="the resumed run's counters")
    resumed = manager.live_counters()[job.id]
    first_run_may_end.set()
    wait_until(lambda: released, what="the paused run's end")

    assert manager.live_counters().get(job.id) is resumed
    manager.pause(job.id)
    assert manager.wait(job.id, timeout=30).state == JobState.paused
    assert manager.get(job.id).progress.bytes_done < SIZE  # paused again before the end


def test_a_file_restarted_from_its_first_byte_takes_its_bytes_back_at_once(manager, tmp_path):
    """The connection drops after 1.5 of 2 MiB and the server, which ignores ``Range``, sends the whole file
    again: the file restarts, and its 1.5 MiB are taken back then, not after it was fetched again. Held
    (a stalled body) 256 KiB into the second answer, the job shows at most 256 KiB; it showed 1.5 MiB or more
    (and 100 % half way through the second answer)."""
    size = 2 * 1024 * 1024
    www = tmp_path / "www"
    www.mkdir()
    (www / "spectra.fits").write_bytes(os.urandom(size))
    with RangeHTTPServer(www, throttle_bytes_per_s=2_000_000, drop_after_bytes=3 * size // 4) as server:
        server.ranges = False
        server.stall_seconds = 4.0
        job, _ = manager.create(CreateJob(source=server.url("spectra.fits"), destination="spectra"))
        wait_until(
            lambda: manager.get(job.id).progress.bytes_done > size // 4, what="the first answer under way"
        )
        server.stall_after_bytes = 256 * 1024  # taken by the next answer
        wait_until(lambda: len(server.requests_for("spectra.fits", "GET")) >= 2, what="the second answer")
        time.sleep(1.0)  # 256 KiB arrive in 0.13 s; the stall lasts 4 s
        during_the_stall = manager.get(job.id).progress.bytes_done
        assert during_the_stall <= 256 * 1024, during_the_stall  # (read in blocks: perhaps 0)
        done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.succeeded, done.error
    assert done.progress.bytes_done == size
