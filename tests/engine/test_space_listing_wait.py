"""With ``min_free_bytes`` or ``quota_bytes`` set, ``POST /jobs`` lists the job's sources before it answers
(:mod:`jupyter_staging.engine.space`). A source answering 503 with ``Retry-After`` held that request for as
long as the retries waited (five of up to 60 s each: minutes). Now the listing made inside the request
waits a few seconds at most between retries (:data:`~jupyter_staging.engine.freshness.LISTING_WAIT_MAX`):
past that the source is left unlisted, the job is admitted at once and its runner lists it, honouring the
server's ``Retry-After`` as for any job, and the job's log says so.

Real parts: the Range HTTP server of tests/helpers on 127.0.0.1 (answering 503 + ``Retry-After`` on
purpose), a real :class:`StagingManager` with its SQLite job database.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from tests.helpers.managers import unstarted_manager
from tests.helpers.servers import RangeHTTPServer


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """``(folder served, the manager's root, the bytes of lc.fits in the folder)``."""
    www, root = tmp_path / "www", tmp_path / "root"
    www.mkdir()
    root.mkdir()
    data = os.urandom(50_000)
    (www / "lc.fits").write_bytes(data)
    return www, root, data


def test_a_source_asking_to_wait_does_not_hold_up_the_post(tmp_path: Path, served):
    www, root, data = served
    with RangeHTTPServer(www, fail_first_n=1) as server:
        server.retry_after = "20"  # the first answer: 503, come back in 20 s
        manager = unstarted_manager(root, tmp_path, min_free_bytes=1)
        manager.start()
        try:
            started = time.monotonic()
            job, created = manager.create(CreateJob(source=server.url("lc.fits"), destination="lc"))
            took = time.monotonic() - started
            assert created and took < 8, took  # was 20 s: the Retry-After waited inside the request
            done = manager.wait(job.id, timeout=120)
            assert done.state == JobState.succeeded, done.error
            assert (root / "lc" / "lc.fits").read_bytes() == data
            log = "\n".join(line["message"] for line in manager.job_log(job.id))
            assert "asked to wait" in log, log
        finally:
            manager.stop()


@pytest.mark.parametrize("retry_after", [2, 45])
def test_a_busy_source_does_not_hold_up_a_reruns_freshness_check(tmp_path: Path, served, retry_after: int):
    """A notebook re-run: ``POST /jobs`` of a staged URL lists it again to see whether it changed
    (:func:`~jupyter_staging.engine.freshness.check_sources`). A source answering 503 with a
    ``Retry-After`` held that request for the whole wait (up to five of 60 s). A short wait (2 s) is still
    waited for, and the answer is "up to date", nothing staged again; past
    :data:`~jupyter_staging.engine.freshness.FRESHNESS_WAIT_MAX` (45 s) the source counts as not checked
    and the answer comes at once with a new job, which lists it when it runs and stages it again."""
    www, root, data = served
    with RangeHTTPServer(www) as server:
        manager = unstarted_manager(root, tmp_path)
        manager.start()
        try:
            first, _ = manager.create(CreateJob(source=server.url("lc.fits"), destination="lc"))
            assert manager.wait(first.id, timeout=60).state == JobState.succeeded
            server.retry_after, server.fail_first_n = str(retry_after), 1  # the re-run's check: 503
            started = time.monotonic()
            again, created = manager.create(CreateJob(source=server.url("lc.fits"), destination="lc"))
            took = time.monotonic() - started
            if retry_after == 2:
                assert again.up_to_date and not created and took >= 2, (again, took)
            else:
                assert not again.up_to_date and took < 20, (again, took)  # was 45 s, inside the request
                done = manager.wait(again.id, timeout=120)
                assert done.state == JobState.succeeded, done.error
            assert (root / "lc" / "lc.fits").read_bytes() == data
        finally:
            manager.stop()
