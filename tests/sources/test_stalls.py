"""A server that stalls mid-body (keeps the connection open, sends nothing) must not hold a pause or a
cancel for the read timeout (60 s): the read blocked on it is woken at once, the bytes received stay in
the part file, and the download resumes from them. Real servers on 127.0.0.1: the Range HTTP server, also
as a path-style S3 endpoint (``/<bucket>/<key>``) for boto3."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_staging.errors import JobInterrupted
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.base import Source
from jupyter_staging.sources.http import HTTPSource
from jupyter_staging.sources.pumping import pump
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.data import sha256

SIZE = 3_000_000
STALL_AT = 1_200_000
#: Seconds a pause may take (the read timeout it used to wait for is 60 s).
PROMPT = 3.0


@pytest.fixture
def payload(range_server) -> bytes:
    data = os.urandom(SIZE)
    (range_server.root / "bucket").mkdir()
    (range_server.root / "bucket" / "big.bin").write_bytes(data)
    range_server.stall_after_bytes = STALL_AT
    range_server.stall_seconds = 120
    return data


@pytest.fixture
def s3_on_range_server(range_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", range_server.base_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)


def pause_while_stalled(work: Callable[[JobControl], object], reason: str) -> float:
    """Run ``work(control)`` on a thread, interrupt it with ``reason`` once the server stalls; seconds
    the worker took to stop. Asserts it raised :class:`JobInterrupted` with that reason."""
    lines: list[str] = []
    control = JobControl(log=lambda level, message: lines.append(message))
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work(control)
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    time.sleep(1.5)  # 1.2 MB on loopback arrive well before: the server now stalls
    assert worker.is_alive()
    asked = time.monotonic()
    control.interrupt(reason)
    worker.join(PROMPT + 5)
    took = time.monotonic() - asked
    assert not worker.is_alive(), "the worker still waits on the stalled server"
    [exc] = raised
    assert isinstance(exc, JobInterrupted) and exc.reason == reason
    assert not [line for line in lines if "connection lost" in line]  # the pause broke it, not the network
    return took


@pytest.mark.parametrize("kind", ["http", "s3"])
@pytest.mark.parametrize("reason", ["paused", "cancelled"])
def test_pause_or_cancel_wakes_a_read_stalled_mid_body_and_the_download_resumes(
    kind, reason, range_server, payload, s3_on_range_server, tmp_path: Path
):
    source: Source = (
        HTTPSource(range_server.url("bucket/big.bin")) if kind == "http" else S3Source("s3://bucket/big.bin")
    )
    [item] = source.list_items()
    out = PartFile(tmp_path / item.name)

    def work(control: JobControl) -> None:
        try:
            source.fetch(item, out, control)
        finally:
            out.close()

    assert pause_while_stalled(work, reason) < PROMPT
    partial = (tmp_path / (item.name + ".part")).read_bytes()
    assert 0 < len(partial) <= STALL_AT and partial == payload[: len(partial)]

    again = PartFile(tmp_path / item.name, resume=True)
    source.fetch(item, again, JobControl())
    assert again.commit(item.size)[1] == sha256(payload)


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_pause_wakes_a_byte_range_stalled_mid_body(kind, range_server, payload, s3_on_range_server, tmp_path):
    source: Source = (
        HTTPSource(range_server.url("bucket/big.bin")) if kind == "http" else S3Source("s3://bucket/big.bin")
    )
    [item] = source.list_items()
    assert source.supports_ranges(item)
    fd = os.open(tmp_path / "ranges", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        assert (
            pause_while_stalled(lambda control: source.fetch_range(item, 0, SIZE, fd, control), "paused")
            < PROMPT
        )
        assert source.fetch_range(item, 0, SIZE, fd, JobControl()) == SIZE
        assert os.pread(fd, SIZE, 0) == payload
    finally:
        os.close(fd)


def test_a_body_ended_by_a_pause_is_never_taken_for_a_complete_one(tmp_path: Path):
    """A body without a length ends when the connection closes: the close a pause causes must not make the
    bytes so far look like the whole file."""
    control = JobControl()
    blocks = [b"first bytes", b""]

    def read() -> bytes:
        block = blocks.pop(0)
        if not block:
            control.interrupt("paused")  # the pause shut the connection down: the body "ended"
        return block

    out = PartFile(tmp_path / "x.bin")
    with pytest.raises(JobInterrupted):
        pump(read, out, control)
    out.close()
    assert not (tmp_path / "x.bin").exists()


def test_a_pause_of_a_flowing_download_logs_no_lost_connection(range_server, payload, tmp_path: Path):
    range_server.stall_after_bytes = None
    range_server.throttle_bytes_per_s = 200_000
    source = HTTPSource(range_server.url("bucket/big.bin"))
    [item] = source.list_items()
    out = PartFile(tmp_path / item.name)

    def work(control: JobControl) -> None:
        try:
            source.fetch(item, out, control)
        finally:
            out.close()

    assert pause_while_stalled(work, "paused") < PROMPT
