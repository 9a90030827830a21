"""A kernel's in-process engine (``use_local``) on a Jupyter server's own job database: it never takes over
the server's jobs, dead or late, and the server still takes over its own after a crash. A real server
process (killed with SIGKILL) and the real local backend of this process."""

from __future__ import annotations

import hashlib
import os
import time

from jupyter_staging.kernel import api
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.servers import RangeHTTPServer


def test_a_kernel_engine_on_the_servers_database_leaves_the_dead_servers_job_to_the_server(tmp_path):
    """The server is killed mid-download; a kernel then runs ``use_local`` on the server's root and job
    database. Before, the kernel's engine took the job over at its start (the server's pid gone: a dead
    runner) and ran it in the kernel. Now the job stays the server's: the kernel neither claims nor runs
    it, and the server, started again, resumes and finishes it."""
    payload = os.urandom(4 * 1024 * 1024)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(payload)
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    server.start()
    try:
        with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=1_000_000) as http:
            job = server.create_job({"source": http.url("survey.bin"), "destination": "staging/survey"})
            server.wait_for(job["id"], lambda j: j["progress"]["bytes_done"] > 200_000, timeout=30)
            server.kill()
            backend = api.use_local(server.root_dir, db_url=f"sqlite:///{server.state_dir / 'jobs.sqlite'}")
            try:
                time.sleep(1.0)  # a takeover would have queued and started it by now
                record = backend.manager.store.get_job(job["id"], resume=False)
                assert record is not None
                runner = record.runner
                assert runner != backend.manager.runner_id, "the kernel's engine took the server's job over"
                assert record.state == "running", record.state
                assert not backend.manager.recover_expired()
                assert backend.manager.store.get_job(job["id"], resume=False).runner == runner
            finally:
                api.reset_backend()
            server.start()
            done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
            assert done["state"] == "succeeded", done
    finally:
        server.stop()
    final = server.root_dir / "staging" / "survey" / "survey.bin"
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(payload).digest()
