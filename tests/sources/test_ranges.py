"""Byte ranges of one item written into one pre-sized file (``Source.fetch_range``), against real servers
on 127.0.0.1 (tests/helpers/servers.py) and real files: HTTP(S), S3 (moto) and local paths."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from jupyter_staging.errors import JobInterrupted, SourceChanged, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.sources import base
from jupyter_staging.sources.azure import AzureSource
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.http import HTTP_BLOCK, HTTPSource
from jupyter_staging.sources.local import LocalSource
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.data import KEPLER, TESS

#: Bytes of the large test file: real mission data (TESS, then Kepler light curves) repeated.
BIG = 20_000_003
#: What the part file holds before a range is written, so stray writes show.
FILL = 0xA5


@pytest.fixture(scope="module")
def big_bytes() -> bytes:
    pattern = TESS.read_bytes() + KEPLER.read_bytes()
    return (pattern * (BIG // len(pattern) + 1))[:BIG]


@pytest.fixture
def quick_retries(monkeypatch):
    """Back-off between resumes of a few milliseconds, so five fruitless attempts take no time."""
    monkeypatch.setattr(base, "BACKOFF", 0.001)


class Counting(JobControl):
    """A control counting the bytes reported; with ``pause_after`` bytes it asks for a pause."""

    def __init__(self, pause_after: int | None = None) -> None:
        super().__init__()
        self.bytes = 0
        self.pause_after = pause_after

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.pause_after is not None and self.bytes >= self.pause_after:
            self.interrupt("paused")


@pytest.fixture
def part(tmp_path) -> Iterator[tuple[Path, int]]:
    """A file pre-filled with :data:`FILL` bytes, open for writing: ``(path, fd)``."""
    path = tmp_path / "big.bin.part"
    path.write_bytes(bytes([FILL]) * BIG)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    yield path, fd
    os.close(fd)


@dataclass
class Served:
    """The big file served by the range server: the file the server reads, a source for its URL and the
    item that source listed."""

    path: Path
    source: HTTPSource
    item: SourceItem


@pytest.fixture
def served(range_server, big_bytes) -> Served:
    """:func:`big_bytes` served as ``big.bin`` by the range server, listed once."""
    path = range_server.root / "big.bin"
    path.write_bytes(big_bytes)
    source = HTTPSource(range_server.url("big.bin"))
    [item] = source.list_items()
    return Served(path, source, item)


def seven_ranges(size: int) -> list[tuple[int, int]]:
    """``size`` cut into 7 uneven ``(start, length)`` ranges, shuffled."""
    cuts = sorted(random.Random(7).sample(range(1, size), 6))
    bounds = [0, *cuts, size]
    ranges = [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    random.Random(15).shuffle(ranges)
    return ranges


def fetch_in_ranges(source: Source, item: SourceItem, path: Path, control: JobControl) -> list[int]:
    """Pre-size ``path`` to ``item.size`` and fetch 7 shuffled ranges of ``item`` into it on 4 threads,
    all writing through one descriptor; returns the bytes each range call wrote."""
    assert item.size is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, item.size)
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(source.fetch_range, item, start, length, fd, control)
                for start, length in seven_ranges(item.size)
            ]
            return [f.result() for f in futures]
    finally:
        os.close(fd)


def fetch_whole_and_compare(source: Source, item: SourceItem, out: Path, expected: bytes) -> None:
    """Fetch all of ``item`` into ``out`` in 7 shuffled ranges (:func:`fetch_in_ranges`) and check that
    every byte was counted once and ``out`` holds ``expected``."""
    control = Counting()
    written = fetch_in_ranges(source, item, out, control)
    assert sum(written) == control.bytes == BIG
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()


def outside_untouched(path: Path, start: int, length: int) -> bool:
    """True when every byte of ``path`` outside ``[start, start + length)`` still holds :data:`FILL`."""
    data = path.read_bytes()
    fill = bytes([FILL])
    return data[:start] == fill * start and data[start + length :] == fill * (len(data) - start - length)


# -- the whole file from 7 shuffled ranges ---------------------------------------------------------------


def test_http_20_mb_in_7_shuffled_ranges_is_byte_identical(range_server, served, big_bytes, tmp_path):
    source, item = served.source, served.item
    assert item.accept_ranges and source.supports_ranges(item)
    fetch_whole_and_compare(source, item, tmp_path / "out.bin", big_bytes)
    gets = range_server.requests_for("big.bin", "GET")
    assert len(gets) == 7
    assert {g.header("If-Range") for g in gets} == {item.validator["etag"]}
    asked = sorted(g.header("Range") for g in gets)
    assert asked == sorted(f"bytes={a}-{a + n - 1}" for a, n in seven_ranges(BIG))


def test_s3_20_mb_in_7_shuffled_ranges_is_byte_identical(s3_env, big_bytes, tmp_path, s3_server):
    client, bucket = s3_env
    client.put_object(Bucket=bucket, Key="data/big.bin", Body=big_bytes)
    source = S3Source(f"s3://{bucket}/data/big.bin")
    [item] = source.list_items()
    assert source.supports_ranges(item)
    s3_server.start_recording()
    try:
        fetch_whole_and_compare(source, item, tmp_path / "out.bin", big_bytes)
    finally:
        s3_server.stop_recording()
    gets = [r for r in s3_server.recorded() if r["method"] == "GET" and "big.bin" in r["url"]]
    headers = [{k.lower(): v for k, v in (g["headers"] or {}).items()} for g in gets]
    assert len(headers) == 7
    assert {h.get("if-match") for h in headers} == {item.validator["etag"]}
    assert sorted(h.get("range") for h in headers) == sorted(
        f"bytes={a}-{a + n - 1}" for a, n in seven_ranges(BIG)
    )


def test_azure_20_mb_in_7_shuffled_ranges_is_byte_identical(azure_env, big_bytes, tmp_path):
    azure_env.upload_blob("data/big.bin", big_bytes)
    source = AzureSource(f"az://{azure_env.container_name}/data/big.bin")
    [item] = source.list_items()
    assert source.supports_ranges(item)
    fetch_whole_and_compare(source, item, tmp_path / "out.bin", big_bytes)


def test_local_20_mb_in_7_shuffled_ranges_is_byte_identical(tmp_path, big_bytes):
    src = tmp_path / "src" / "big.bin"
    src.parent.mkdir()
    src.write_bytes(big_bytes)
    source = LocalSource(str(src))
    [item] = source.list_items()
    assert source.supports_ranges(item)
    fetch_whole_and_compare(source, item, tmp_path / "out.bin", big_bytes)


def test_local_range_across_file_systems_reads_and_writes(big_bytes, part):
    """From tmpfs (/dev/shm) into the test's disk folder ``copy_file_range`` answers EXDEV: the range is
    read and written instead, with the same result."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        src = Path(shm) / "big.bin"
        src.write_bytes(big_bytes)
        source = LocalSource(str(src))
        [item] = source.list_items()
        path, fd = part
        start, length = 3_000_001, 17_000_000
        control = Counting()
        assert source.fetch_range(item, start, length, fd, control) == length == control.bytes
    assert path.read_bytes()[start : start + length] == big_bytes[start : start + length]
    assert outside_untouched(path, start, length)


# -- another version, or a server that answers 200 ---------------------------------------------------------


def test_http_server_answering_200_to_a_range_is_source_changed_and_writes_nothing(
    range_server, served, part
):
    """The listing said Accept-Ranges, then the server ignores Range (200, the whole file)."""
    source, item = served.source, served.item
    range_server.ranges = False
    path, fd = part
    with pytest.raises(SourceChanged) as err:
        source.fetch_range(item, 5_000_000, 1_000_000, fd, JobControl())
    assert err.value.code == "source_changed"
    assert path.read_bytes() == bytes([FILL]) * BIG


def test_http_file_replaced_after_listing_is_source_changed(range_server, served, big_bytes, part):
    """If-Range names the listed ETag; the server has a new version and answers 200."""
    source, item = served.source, served.item
    served.path.write_bytes(big_bytes[::-1])  # same size, new mtime: a new ETag
    path, fd = part
    with pytest.raises(SourceChanged):
        source.fetch_range(item, 0, 4_000_000, fd, JobControl())
    assert path.read_bytes() == bytes([FILL]) * BIG
    [get] = range_server.requests_for("big.bin", "GET")
    assert get.header("If-Range") == item.validator["etag"]


def test_http_server_ignoring_if_range_sends_new_version_source_changed(
    range_server, served, big_bytes, part
):
    """The server ignores If-Range and sends a 206 of the new version (its new ETag): nothing written."""
    source, item = served.source, served.item
    range_server.ignore_if_range = True
    served.path.write_bytes(big_bytes[::-1])
    path, fd = part
    with pytest.raises(SourceChanged, match="another version"):
        source.fetch_range(item, 1_000_000, 2_000_000, fd, JobControl())
    assert path.read_bytes() == bytes([FILL]) * BIG


def test_http_file_of_another_size_is_source_changed(range_server, served, big_bytes, part):
    source, item = served.source, served.item
    range_server.ignore_if_range = True
    served.path.write_bytes(big_bytes + b"more")
    path, fd = part
    with pytest.raises(SourceChanged, match=f"now has {BIG + 4} bytes"):
        source.fetch_range(item, 0, 1000, fd, JobControl())
    assert path.read_bytes() == bytes([FILL]) * BIG


def test_s3_object_replaced_after_listing_is_source_changed(s3_env, big_bytes, part):
    client, bucket = s3_env
    client.put_object(Bucket=bucket, Key="big.bin", Body=big_bytes[:3_000_000])
    source = S3Source(f"s3://{bucket}/big.bin")
    [item] = source.list_items()
    client.put_object(Bucket=bucket, Key="big.bin", Body=big_bytes[1:3_000_001])  # new ETag, same size
    path, fd = part
    with pytest.raises(SourceChanged) as err:
        source.fetch_range(item, 100, 1_000_000, fd, JobControl())
    assert err.value.code == "source_changed"
    assert path.read_bytes() == bytes([FILL]) * BIG


def test_azure_blob_replaced_after_listing_is_source_changed(azure_env, big_bytes, part):
    azure_env.upload_blob("big.bin", big_bytes[:2_000_000])
    source = AzureSource(f"az://{azure_env.container_name}/big.bin")
    [item] = source.list_items()
    azure_env.upload_blob("big.bin", big_bytes[1:2_000_001], overwrite=True)
    path, fd = part
    with pytest.raises(SourceChanged) as err:
        source.fetch_range(item, 10, 1_500_000, fd, JobControl())
    assert err.value.code == "source_changed"
    assert path.read_bytes() == bytes([FILL]) * BIG


def test_local_file_changed_after_listing_is_source_changed(tmp_path, big_bytes, part):
    src = tmp_path / "big.bin"
    src.write_bytes(big_bytes[:1_000_000])
    source = LocalSource(str(src))
    [item] = source.list_items()
    time.sleep(0.01)
    src.write_bytes(big_bytes[1:1_000_001])
    path, fd = part
    with pytest.raises(SourceChanged):
        source.fetch_range(item, 0, 1000, fd, JobControl())
    assert path.read_bytes() == bytes([FILL]) * BIG


# -- broken answers resume within the range ---------------------------------------------------------------


def test_http_short_body_resumes_within_the_range(range_server, served, big_bytes, part, quick_retries):
    source, item = served.source, served.item
    range_server.short_body_by = 300_000
    range_server.short_bodies_left = 1
    path, fd = part
    start, length = 7_000_000, 2_500_000
    control = Counting()
    assert source.fetch_range(item, start, length, fd, control) == length == control.bytes
    data = path.read_bytes()
    assert data[start : start + length] == big_bytes[start : start + length]
    assert outside_untouched(path, start, length)
    ranges = [g.header("Range") for g in range_server.requests_for("big.bin", "GET")]
    end = start + length - 1
    assert ranges == [f"bytes={start}-{end}", f"bytes={start + length - 300_000}-{end}"]


def test_http_dropped_connection_mid_range_resumes(range_server, served, big_bytes, part, quick_retries):
    source, item = served.source, served.item
    range_server.drop_after_bytes = 1_000_000
    path, fd = part
    start, length = BIG - 3_000_003, 3_000_003
    assert source.fetch_range(item, start, length, fd, JobControl()) == length
    assert path.read_bytes()[start:] == big_bytes[start:]
    assert outside_untouched(path, start, length)
    ranges = [g.header("Range") for g in range_server.requests_for("big.bin", "GET")]
    assert ranges == [f"bytes={start}-{BIG - 1}", f"bytes={start + 1_000_000}-{BIG - 1}"]


def test_http_body_always_short_fails_after_the_budget_without_secrets(
    range_server, big_bytes, part, quick_retries
):
    (range_server.root / "big.bin").write_bytes(big_bytes)
    source = HTTPSource(range_server.url("big.bin") + "?X-Amz-Signature=topsecret123&X-Amz-Credential=me")
    [item] = source.list_items()
    range_server.short_body_by = 200_000  # every answer: the last 200 kB never come
    path, fd = part
    with pytest.raises(TransferFailed) as err:
        source.fetch_range(item, 0, 1_000_000, fd, JobControl())
    assert err.value.code == "transfer_failed"
    assert "topsecret123" not in err.value.message
    assert path.read_bytes()[:800_000] == big_bytes[:800_000]
    assert outside_untouched(path, 0, 1_000_000)


# -- pause ------------------------------------------------------------------------------------------------


def test_http_pause_stops_within_one_block(range_server, served, part):
    source, item = served.source, served.item
    range_server.throttle_bytes_per_s = 8_000_000
    _, fd = part
    control = Counting(pause_after=1)
    started = time.monotonic()
    with pytest.raises(JobInterrupted):
        source.fetch_range(item, 0, 10_000_000, fd, control)
    assert 0 < control.bytes <= HTTP_BLOCK
    assert time.monotonic() - started < 2.0


def test_s3_and_local_pause_stop_within_one_block(s3_env, big_bytes, tmp_path, part):
    client, bucket = s3_env
    client.put_object(Bucket=bucket, Key="big.bin", Body=big_bytes[:5_000_000])
    src = tmp_path / "big.bin"
    src.write_bytes(big_bytes)
    _, fd = part
    for source, step in ((S3Source(f"s3://{bucket}/big.bin"), 1 << 20), (LocalSource(str(src)), 16 << 20)):
        [item] = source.list_items()
        control = Counting(pause_after=1)
        with pytest.raises(JobInterrupted):
            source.fetch_range(item, 0, item.size, fd, control)
        assert 0 < control.bytes <= step


# -- when ranges are not offered --------------------------------------------------------------------------


def test_no_ranges_without_accept_ranges_or_with_weak_etags(range_server, big_bytes, part):
    (range_server.root / "big.bin").write_bytes(big_bytes[:1000])
    range_server.ranges = False
    source = HTTPSource(range_server.url("big.bin"))
    [plain] = source.list_items()
    assert not plain.accept_ranges and not source.supports_ranges(plain)
    _, fd = part
    with pytest.raises(TransferFailed, match="no byte ranges"):
        source.fetch_range(plain, 0, 10, fd, JobControl())
    assert range_server.requests_for("big.bin", "GET") == []

    range_server.ranges = True
    range_server.weak_etags = True
    [weak] = source.list_items()
    assert weak.accept_ranges and weak.validator["etag"].startswith("W/")
    assert not source.supports_ranges(weak)

    weak.validator["etag"] = None  # no ETag at all: Last-Modified is the validator
    assert source.supports_ranges(weak)


def test_a_range_outside_the_item_is_a_caller_error(tmp_path, part):
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 100)
    source = LocalSource(str(src))
    [item] = source.list_items()
    _, fd = part
    for start, length in ((-1, 10), (0, -1), (90, 11)):
        with pytest.raises(ValueError, match="not a range"):
            source.fetch_range(item, start, length, fd, JobControl())
    assert source.fetch_range(item, 90, 10, fd, JobControl()) == 10
