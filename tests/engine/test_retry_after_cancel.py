"""A server answering ``429`` / ``503`` with a long ``Retry-After`` (an hour): the HTTP client honoured it in
an uninterruptible sleep, up to six hours per retry (urllib3's own limit), five retries. A cancel of a job
waiting so did nothing: the job stayed ``running`` and kept its slot, so the next job stayed ``queued``. Now
a job's waits between retries end at its pause or cancel (the job is ``cancelled`` at once and the next one
starts), and a ``Retry-After`` is honoured up to :data:`RETRY_AFTER_MAX` seconds.

Real parts: an HTTP server on 127.0.0.1 that answers as a busy server does, the Range HTTP server for the next
job, a real :class:`StagingManager` with one job slot and its SQLite job database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jupyter_staging.clouds.http_client import RETRY_AFTER_MAX, retrying_session
from jupyter_staging.engine.models import CreateJob
from tests.helpers.managers import manager_for

#: Seconds a cancel may take, at most: far below the Retry-After the busy server asks for.
PROMPT = 10.0


class Busy(BaseHTTPRequestHandler):
    """``/get-busy.bin``: HEAD says 1,000 bytes, every GET is ``429 Retry-After: 3600``. ``/busy.bin``:
    every request is ``503 Retry-After: 3600``."""

    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self.requests.append(f"{self.command} {self.path}")
        if self.path == "/get-busy.bin":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        self._busy(503)

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append(f"{self.command} {self.path}")
        self._busy(429 if self.path == "/get-busy.bin" else 503)

    def _busy(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Retry-After", "3600")
        self.send_header("Content-Length", "4")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(b"busy")


@pytest.fixture
def busy_server() -> Iterator[str]:
    """The base URL of a :class:`Busy` server."""
    Busy.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("body", "asked"),
    [
        ({"source": "{url}/get-busy.bin", "destination": "one"}, "GET /get-busy.bin"),
        ({"manifest": {"a": "{url}/busy.bin", "b": "{url}/get-busy.bin"}, "destination": "two"}, "/busy.bin"),
    ],
    ids=["download", "manifest-listing"],
)
def test_a_cancel_ends_a_wait_on_retry_after_and_frees_the_slot(
    tmp_path: Path, busy_server: str, range_server, body: dict, asked: str
):
    (tmp_path / "root").mkdir()
    manager = manager_for(tmp_path, max_concurrent_jobs=1)
    try:
        body = {
            k: ({n: u.format(url=busy_server) for n, u in v.items()} if isinstance(v, dict) else v)
            for k, v in body.items()
        }
        if "source" in body:
            body["source"] = body["source"].format(url=busy_server)
        job, _ = manager.create(CreateJob(**body))
        wait_for(lambda: any(asked in r for r in Busy.requests))
        time.sleep(0.5)  # now waiting on the Retry-After
        (range_server.root / "next.bin").write_bytes(b"n" * 1000)
        following, _ = manager.create(CreateJob(source=range_server.url("next.bin"), destination="next"))

        started = time.monotonic()
        manager.cancel(job.id)
        wait_for(lambda: manager.get(job.id).state.value == "cancelled", timeout=PROMPT)
        done = manager.wait(following.id, timeout=PROMPT)
        assert done.state.value == "succeeded", done.error
        assert time.monotonic() - started < PROMPT
        assert not [p for p in (tmp_path / "root").rglob("*") if p.name.endswith(".part")]
    finally:
        manager.stop()


def test_a_retry_after_is_honoured_up_to_a_limit():
    """A Retry-After of an hour is waited for :data:`RETRY_AFTER_MAX` seconds at most (urllib3's own limit
    is six hours)."""
    retry = retrying_session().get_adapter("http://x").max_retries
    assert retry.parse_retry_after("3600") == RETRY_AFTER_MAX <= 60
    assert retry.parse_retry_after("2") == 2
