"""A Jupyter server stopped with SIGINT while a job runs, as JupyterHub's local spawners stop a user's server
(SIGINT first, then SIGTERM). With no terminal on stdin, jupyter_server lets SIGINT raise KeyboardInterrupt,
which ends the server without stopping its extensions: the running job met the interpreter's shutdown and
was recorded ``failed`` (``internal_error``, "unexpected error: RuntimeError"), though a stopped server's
jobs are to resume at its next start."""

from __future__ import annotations

import hashlib
import os
import signal
import time

from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.servers import RangeHTTPServer

PAYLOAD = os.urandom(1_500_000)


def test_a_server_stopped_with_sigint_resumes_its_running_job_at_its_next_start(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(PAYLOAD)
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    server.start()
    try:
        with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=300_000) as http:
            job = server.create_job({"source": http.url("survey.bin"), "destination": "dl"})
            server.wait_for(job["id"], lambda j: j["state"] == "running" and j["progress"]["bytes_done"] > 0)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGINT)
            assert server.proc.wait(timeout=30) is not None
            stopped = time.monotonic()
            server.start()
            done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded", done.get("error")
        assert time.monotonic() - stopped < 60
    finally:
        server.stop()
    got = (server.root_dir / "dl" / "survey.bin").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(PAYLOAD).digest()
    assert "RuntimeError" not in server.log_path.read_text()
