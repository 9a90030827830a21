"""Recovery at start: jobs of a dead server are resumed, but never a job this manager already runs."""

from __future__ import annotations

import hashlib
import os

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
