"""The HTTP client's connection pools (``clouds.http_client.shared_pools``), shared by every listing and
fetch of the process: requests of many items reuse kept-alive connections (a manifest of URLs:
tests/engine/test_manifest_jobs.py), and closing a session closes none of them."""

from __future__ import annotations

import os

from jupyter_staging.clouds import http_client


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
