"""Atomic, verified writes: PartFile, copy_file (copy_file_range + hash) and copy_stream."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from jupyter_staging.errors import DestinationExists, JobInterrupted, VerificationFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import copy_file, copy_stream
from jupyter_staging.safety.partfile import PartFile, part_path


@pytest.fixture
def payload(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    return src, data


@pytest.mark.parametrize("step", [64 * 1024, 8 * 1024 * 1024])
def test_copy_file_hashes_exactly_the_bytes_written(tmp_path, payload, step):
    src, data = payload
    out = PartFile(tmp_path / "out" / "copy.bin")
    seen = []
    copied = copy_file(src, out, JobControl(on_bytes=seen.append), step=step)
    size, sha = out.commit(len(data))
    assert copied == size == len(data) == sum(seen)
    assert sha == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert not part_path(tmp_path / "out" / "copy.bin").exists()


def test_copy_file_resumes_from_a_partial_file(tmp_path, payload):
    src, data = payload
    final = tmp_path / "copy.bin"
    part_path(final).write_bytes(data[:1_000_000])
    out = PartFile(final, resume=True)
    assert out.offset == 1_000_000
    assert copy_file(src, out, step=256 * 1024) == len(data) - 1_000_000
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()


def test_interrupt_keeps_the_part_for_later(tmp_path, payload):
    src, data = payload
    control = JobControl(on_bytes=lambda n: control.interrupt("paused"))  # pause after the first step
    out = PartFile(tmp_path / "copy.bin")
    with pytest.raises(JobInterrupted):
        copy_file(src, out, control, step=256 * 1024)
    out.close()
    assert 0 < part_path(tmp_path / "copy.bin").stat().st_size < len(data)
    assert not (tmp_path / "copy.bin").exists()


def test_copy_stream_with_and_without_readinto(tmp_path, payload):
    _, data = payload

    class ReadOnly:  # a stream with read() only, like a network body
        def __init__(self, raw):
            self.raw = io.BytesIO(raw)

        def read(self, n):
            return self.raw.read(n)

    for i, stream in enumerate([io.BytesIO(data), ReadOnly(data)]):
        out = PartFile(tmp_path / f"s{i}.bin")
        copy_stream(stream, out, block_size=100_000)
        assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()


def test_commit_checks_the_size_and_never_overwrites(tmp_path):
    out = PartFile(tmp_path / "a.bin")
    out.write(b"12345")
    with pytest.raises(VerificationFailed):
        out.commit(expected_size=6)
    assert not part_path(tmp_path / "a.bin").exists() and not (tmp_path / "a.bin").exists()

    (tmp_path / "b.bin").write_bytes(b"precious")
    with pytest.raises(DestinationExists):
        PartFile(tmp_path / "b.bin")
    out = PartFile(tmp_path / "c.bin")
    out.write(b"new")
    (tmp_path / "c.bin").write_bytes(b"arrived meanwhile")
    with pytest.raises(DestinationExists):
        out.commit()
    assert (tmp_path / "c.bin").read_bytes() == b"arrived meanwhile"


def test_a_big_copy_leaves_its_ranges_to_the_page_cache_until_its_fsync(tmp_path, payload, monkeypatch):
    """As ``cp`` does, a big copy starts no writeback of its own while it copies (no ``posix_fadvise`` on
    the part: starting it per range cost more CPU and time than it saved, ``copying._copy_ranges``); the
    fsync at commit makes every byte durable before the name is given. The calls are real; they are only
    watched."""
    src, data = payload
    out = PartFile(tmp_path / "out" / "copy.bin")
    part_ino = os.fstat(out.fileno()).st_ino
    advised: list[int] = []
    synced: list[int] = []
    real_fadvise, real_fsync = os.posix_fadvise, os.fsync

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if os.fstat(fd).st_ino == part_ino:
            advised.append(advice)
        real_fadvise(fd, offset, length, advice)

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if st.st_ino == part_ino:  # the descriptor's number is reused once the part is closed
            synced.append(st.st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "fsync", fsync)
    copy_file(src, out, step=1024 * 1024)
    assert advised == []
    assert synced == []
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()
    assert synced == [len(data)]
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
