"""A kernel waiting for a job while its Jupyter server restarts: ``job.wait()`` (with or without its
progress bar) and ``job.iter_chunks()`` wait for the server to answer again and go on, rather than failing
``server_unreachable`` while the job resumes in the server. A real server process, stopped and started."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import pytest

from jupyter_staging.errors import StagingError
from jupyter_staging.kernel import api, outages
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.servers import RangeHTTPServer

PAYLOAD = os.urandom(2 * 1024 * 1024)


@pytest.fixture
def slow_download(tmp_path, monkeypatch):
    """``(server, job)``: a download at 400 kB/s into ``dl`` by a real server, under way; the kernel's
    backend is that server."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "survey.bin").write_bytes(PAYLOAD)
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    server.start()
    try:
        with RangeHTTPServer(tmp_path / "www", throttle_bytes_per_s=400_000) as http:
            monkeypatch.chdir(server.root_dir)
            api.use_server(server.url, server.token, server.root_dir)
            job = api.stage(http.url("survey.bin"), "dl")
            yield server, job
    finally:
        api.reset_backend()
        server.stop()


def _restart_while(server: JupyterServerProcess, waiting) -> dict:
    """Run ``waiting()`` in a thread, restart the server (stopped, 2 s without it, started) meanwhile;
    returns ``{"result": ...}`` or ``{"error": exc}``."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = waiting()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.0)
    server.stop()
    time.sleep(2.0)
    server.start()
    thread.join(120)
    assert not thread.is_alive()
    return out


@pytest.mark.parametrize("progress", [False, True], ids=["quiet", "progress-bar"])
def test_a_wait_rides_out_a_server_restart(slow_download, progress, caplog):
    """Before, ``job.wait()`` (and so ``%stage --wait``) raised ``staging error [server_unreachable]`` as
    soon as the server stopped, though the server resumed the job after its restart."""
    server, job = slow_download
    caplog.set_level(logging.WARNING, logger="jupyter_staging.kernel")
    out = _restart_while(server, lambda: job.wait(timeout=90, progress=progress))
    assert "error" not in out, out
    assert out["result"].state == "succeeded"
    assert "still waiting" in caplog.text and "answers again" in caplog.text
    final = server.root_dir / "dl" / "survey.bin"
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(PAYLOAD).digest()


def test_iter_chunks_rides_out_a_server_restart(slow_download):
    """Before, ``iter_chunks()`` raised ``server_unreachable`` mid-loop; now it yields the chunk once the
    resumed job has written it, and acks it."""
    server, job = slow_download

    def read_all() -> list:
        chunks = []
        for chunk in job.iter_chunks(timeout=90):
            chunks.append((chunk.index, chunk.read_bytes()))
            chunk.ack()
        return chunks

    out = _restart_while(server, read_all)
    assert "error" not in out, out
    digest = hashlib.sha256(PAYLOAD).digest()
    assert [(i, hashlib.sha256(b).digest()) for i, b in out["result"]] == [(0, digest)]
    assert [c["state"] for c in job.chunks] == ["acked"]


def test_a_wait_gives_up_at_its_deadline_or_the_outage_limit(monkeypatch):
    """The error of a server that stays silent is raised at the caller's deadline, or after the outage
    limit without one; another error at once."""
    calls = []

    def silent():
        calls.append(time.monotonic())
        raise StagingError("cannot reach the Jupyter server", code="server_unreachable", status=503)

    began = time.monotonic()
    with pytest.raises(StagingError, match="cannot reach"):
        outages.through_outage(silent, deadline=began + 0.5, poll=0.05)
    assert 0.45 <= time.monotonic() - began < 2 and len(calls) > 2

    monkeypatch.setattr(outages, "OUTAGE_LIMIT", 0.3)
    began = time.monotonic()
    with pytest.raises(StagingError, match="cannot reach"):
        outages.through_outage(silent, deadline=None, poll=0.05)
    assert time.monotonic() - began < 2

    def refused():
        calls.append(1)
        raise StagingError("no staging job 'x'", code="job_not_found", status=404)

    calls.clear()
    with pytest.raises(StagingError, match="no staging job"):
        outages.through_outage(refused, deadline=None, poll=0.05)
    assert calls == [1]
    proxy = StagingError("HTTP 503", code="http_error", status=503)
    broken = StagingError("HTTP 500", code="http_error", status=500)
    assert outages.is_outage(proxy) and not outages.is_outage(broken)
