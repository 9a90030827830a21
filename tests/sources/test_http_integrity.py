"""HTTP downloads from misbehaving servers (tests/helpers/servers.py): the file is byte-identical to the
source or the item fails with a clear code; a spliced or truncated file is never published."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from jupyter_staging.errors import ChecksumMismatch, SizeMismatch, VerificationFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import part_path
from jupyter_staging.sources import base
from jupyter_staging.sources import http as http_source
from jupyter_staging.sources.http import HTTPSource
from tests.helpers.data import KEPLER_NAME, TESS_NAME, sha256
from tests.helpers.sources import Progress


def nothing_published(dest: Path, name: str) -> bool:
    return not (dest / name).exists()


def replace_file(path: Path, data: bytes) -> None:
    """New contents and a later mtime, so the ETag and Last-Modified change."""
    old = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(old + 5_000_000_000, old + 5_000_000_000))


@pytest.fixture
def kepler(shared_data) -> bytes:
    return (shared_data / KEPLER_NAME).read_bytes()


@pytest.fixture
def tess(shared_data) -> bytes:
    return (shared_data / TESS_NAME).read_bytes()


@pytest.fixture
def dest(tmp_path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


@pytest.fixture
def quick_retries(monkeypatch):
    """Back-off between resumes of a few milliseconds, so five fruitless attempts take no time."""
    monkeypatch.setattr(base, "BACKOFF", 0.001)


# -- If-Range ignored ----------------------------------------------------------------------------------


def test_206_of_a_new_version_restarts_from_byte_zero_never_splices(
    range_server, kepler, tess, dest, stage_verified
):
    """The connection drops, the file changes, the server ignores If-Range and sends the rest of the
    NEW file as a 206 with its new ETag: the part restarts, the result is the new file whole."""
    served = range_server.root / "lc.fits"
    served.write_bytes(kepler)
    range_server.ignore_if_range = True
    range_server.drop_after_bytes = 300_000
    source = HTTPSource(range_server.url("lc.fits"))
    [item] = source.list_items()
    old_etag = item.validator["etag"]
    lines: list[str] = []

    def on_log(level: str, message: str) -> None:
        lines.append(message)
        if "connection lost" in message:
            replace_file(served, tess)

    path, size, digest = stage_verified(source, item, dest, JobControl(log=on_log))

    assert path.read_bytes() == tess and (size, digest) == (len(tess), sha256(tess))
    first, resumed, again = range_server.requests_for("lc.fits", "GET")
    assert resumed.header("Range") == "bytes=300000-" and resumed.header("If-Range") == old_etag
    assert again.header("Range") is None
    assert any("ignored If-Range" in line for line in lines)
    assert item.validator["etag"] != old_etag and item.size == len(tess)


def test_206_of_the_same_version_continues(range_server, kepler, dest, stage_verified):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.ignore_if_range = True
    range_server.drop_after_bytes = 400_000
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    path, _, digest = stage_verified(source, item, dest)

    assert path.read_bytes() == kepler and digest == sha256(kepler)
    assert [g.header("Range") for g in range_server.requests_for("k.fits", "GET")] == [None, "bytes=400000-"]


def test_a_server_that_stalls_mid_body_is_resumed_after_the_read_timeout(
    range_server, kepler, dest, stage_verified, monkeypatch
):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.stall_after_bytes = 500_000
    monkeypatch.setattr(http_source, "TIMEOUT", (5.0, 1.0))  # the read timeout, 60 s in production
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    path, _, digest = stage_verified(source, item, dest)

    assert path.read_bytes() == kepler and digest == sha256(kepler)
    ranges = [g.header("Range") for g in range_server.requests_for("k.fits", "GET")]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 500_000


# -- bodies shorter or longer than announced ---------------------------------------------------------


def test_body_short_once_is_resumed_byte_identical(range_server, kepler, dest, stage_verified):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.short_body_by = 1000
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    def on_log(level: str, message: str) -> None:
        range_server.short_body_by = 0  # the next answer is whole

    path, _, digest = stage_verified(source, item, dest, JobControl(log=on_log))

    assert path.read_bytes() == kepler and digest == sha256(kepler)
    ranges = [g.header("Range") for g in range_server.requests_for("k.fits", "GET")]
    assert ranges == [None, f"bytes={len(kepler) - 1000}-"]


def test_body_always_short_fails_with_size_mismatch(
    range_server, kepler, dest, quick_retries, stage_verified
):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.short_body_by = 1000
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    with pytest.raises(SizeMismatch) as info:
        stage_verified(source, item, dest)

    assert info.value.code == "size_mismatch"
    assert nothing_published(dest, "k.fits")
    partial = part_path(dest / "k.fits").read_bytes()
    assert partial == kepler[: len(partial)]  # what is kept for a resume is a true prefix


def test_get_shorter_than_head_said_fails_with_size_mismatch(
    range_server, kepler, dest, quick_retries, stage_verified
):
    """HEAD says the full size, GET sends (with a matching Content-Length) only part of the same version."""
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.truncate_get_to = len(kepler) // 2
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()
    assert item.size == len(kepler)

    with pytest.raises(SizeMismatch) as info:
        stage_verified(source, item, dest)

    assert info.value.code == "size_mismatch" and nothing_published(dest, "k.fits")
    assert item.size == len(kepler)


def test_body_longer_than_announced_fails_with_size_mismatch(
    range_server, kepler, dest, quick_retries, stage_verified
):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.extra_body_bytes = 10
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    with pytest.raises(SizeMismatch) as info:
        stage_verified(source, item, dest)

    assert info.value.code == "size_mismatch" and nothing_published(dest, "k.fits")
    assert len(range_server.requests_for("k.fits", "GET")) == base.MAX_RESUMES


# -- checksums the server states -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "algorithms"),
    [("Repr-Digest", {"sha256"}), ("Digest", {"sha256", "md5"}), ("Content-MD5", {"md5"})],
)
def test_stated_checksums_are_listed_and_verified(
    range_server, kepler, dest, header, algorithms, stage_verified
):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.digest_headers = {header}
    source = HTTPSource(range_server.url("k.fits"))

    [item] = source.list_items()
    expected = {"sha256": sha256(kepler), "md5": hashlib.md5(kepler).hexdigest()}  # noqa: S324
    assert item.checksums == {a: expected[a] for a in algorithms}
    path, _, digest = stage_verified(source, item, dest)
    assert path.read_bytes() == kepler and digest == sha256(kepler)


@pytest.mark.parametrize("header", ["Repr-Digest", "Digest", "Content-MD5"])
def test_wrong_stated_checksum_is_checksum_mismatch_and_publishes_nothing(
    range_server, kepler, dest, header, stage_verified
):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.digest_headers = {header}
    range_server.wrong_digests = True
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()

    with pytest.raises(ChecksumMismatch) as info:
        stage_verified(source, item, dest)

    assert info.value.code == "checksum_mismatch" and isinstance(info.value, VerificationFailed)
    assert "k.fits" in info.value.message
    assert nothing_published(dest, "k.fits") and not part_path(dest / "k.fits").exists()


def test_checksums_follow_the_version_written_when_the_source_changes(
    range_server, kepler, tess, dest, stage_verified
):
    served = range_server.root / "lc.fits"
    served.write_bytes(kepler)
    range_server.digest_headers = {"Repr-Digest", "Content-MD5"}
    range_server.drop_after_bytes = 300_000
    source = HTTPSource(range_server.url("lc.fits"))
    [item] = source.list_items()
    assert item.checksums["sha256"] == sha256(kepler)
    progress = Progress()

    def on_log(level: str, message: str) -> None:
        progress.lines.append((level, message))
        if "connection lost" in message:
            replace_file(served, tess)

    path, _, digest = stage_verified(source, item, dest, JobControl(log=on_log))

    assert path.read_bytes() == tess and digest == sha256(tess)
    assert item.checksums == {"sha256": sha256(tess), "md5": hashlib.md5(tess).hexdigest()}  # noqa: S324
