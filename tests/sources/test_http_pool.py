"""The HTTP client's connection pools (``clouds.http_client.shared_pools``), shared by every listing and
fetch of the process: requests of many items reuse kept-alive connections (a manifest of URLs:
tests/engine/test_manifest_jobs.py), and closing a session closes none of them."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from jupyter_staging.clouds import http_client
from jupyter_staging.errors import JobInterrupted
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources import base
from jupyter_staging.sources.http import HTTPSource


def test_a_forked_child_opens_connections_of_its_own():
    """Connections kept open for the process are never used by a forked child (two processes writing
    requests on one socket would interleave them)."""
    parent = http_client.shared_pools()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got the parent's adapter
        os.close(read)
        os.write(write, b"same" if http_client.shared_pools().manager is parent.manager else b"own")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 8) == b"own"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert http_client.shared_pools() is parent


def test_closing_a_session_keeps_the_shared_connections(range_server):
    (range_server.root / "a.bin").write_bytes(b"x" * 5000)
    for _ in range(3):
        with http_client.retrying_session() as session:
            assert session.get(range_server.url("a.bin"), timeout=10).content == b"x" * 5000
    assert len({r.client_port for r in range_server.requests_for("a.bin")}) == 1


def test_a_connection_left_mid_body_is_never_reused_for_another_files_answer(
    range_server, tmp_path, monkeypatch
):
    """A body left unfinished on a shared connection (a job cancelled while its server stalls mid-body, a
    body cut short, a connection dropped) leaves nothing behind for the next request on the pool: every
    file staged after it, through the same process-wide pools, is byte-identical to its source."""
    monkeypatch.setattr(base, "BACKOFF", 0.001)  # the resumes after a short body or a drop, at once
    files = {f"lc-{i}.fits": os.urandom(300_000 + i) for i in range(4)}
    for name, data in files.items():
        (range_server.root / name).write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    staged = 0

    def stage(name: str, control: JobControl | None = None) -> None:
        nonlocal staged
        source = HTTPSource(range_server.url(name))
        item = source.list_items()[0]
        staged += 1
        out = PartFile(dest / f"{staged}-{name}")
        try:
            source.fetch(item, out, control or JobControl())
        except BaseException:
            out.close()
            raise
        assert out.commit(item.size)[1] == hashlib.sha256(files[name]).hexdigest(), name

    range_server.stall_after_bytes = 100_000
    control = JobControl()
    cancel = threading.Timer(0.3, control.interrupt, args=("cancelled",))
    cancel.start()
    with pytest.raises(JobInterrupted):
        stage("lc-0.fits", control)
    cancel.join()
    for name in files:
        stage(name)
    range_server.short_body_by, range_server.short_bodies_left = 1000, 1
    for name in files:
        stage(name)
    range_server.drop_after_bytes = 50_000
    for name in files:
        stage(name)
    ports = {r.client_port for r in range_server.requests}
    assert 1 < len(ports) < len(range_server.requests)  # connections reused, the broken ones replaced
