"""Atomic, verified writes: PartFile, copy_file (copy_file_range + hash) and copy_stream."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from jupyter_staging.errors import DestinationExists, JobInterrupted, VerificationFailed
from jupyter_staging.safety import copying, writeback
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import copy_file, copy_stream
from jupyter_staging.safety.partfile import WRITEBACK_STEP, PartFile, part_path


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


def test_a_single_stream_starts_the_writeback_of_each_step_it_appends(tmp_path, monkeypatch):
    """A file written block by block (one HTTP or S3 stream, a copy without ``copy_file_range``) starts
    the writeback of every :data:`WRITEBACK_STEP` bytes it appends, in order and once each; a restart
    (the source changed) starts again from byte 0; the fsync at commit still makes it durable. The calls
    are real, only watched."""
    first = os.urandom(WRITEBACK_STEP + 3 * 1024 * 1024)
    data = os.urandom(2 * WRITEBACK_STEP + 5 * 1024 * 1024 + 17)
    out = PartFile(tmp_path / "out" / "stream.bin")
    part_ino = os.fstat(out.fileno()).st_ino
    started: list[tuple[int, int, bool]] = []
    real = writeback.start_writeback

    def watched(fd: int, offset: int, length: int) -> bool:
        done = real(fd, offset, length)
        if os.fstat(fd).st_ino == part_ino:
            started.append((offset, length, done))
        return done

    monkeypatch.setattr(writeback, "start_writeback", watched)
    assert copy_stream(io.BytesIO(first), out, block_size=1024 * 1024) == len(first)
    assert started == [(0, WRITEBACK_STEP, True)]
    out.restart()
    started.clear()
    assert copy_stream(io.BytesIO(data), out, block_size=1024 * 1024) == len(data)
    assert started == [(0, WRITEBACK_STEP, True), (WRITEBACK_STEP, WRITEBACK_STEP, True)]
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out" / "stream.bin").read_bytes() == data


def test_a_big_copy_starts_each_ranges_writeback_and_its_fsync_makes_it_durable(
    tmp_path, payload, monkeypatch
):
    """A big copy starts the writeback of each range as soon as it is copied (``sync_file_range``, through
    :func:`~jupyter_staging.safety.writeback.start_writeback`: the ranges cover the file once, in order),
    never ``posix_fadvise`` (which drops the pages and cost more CPU than it saved), and no fsync while it
    copies; the fsync at commit makes every byte durable before the name is given. The calls are real;
    they are only watched."""
    src, data = payload
    out = PartFile(tmp_path / "out" / "copy.bin")
    part_ino = os.fstat(out.fileno()).st_ino
    advised: list[int] = []
    synced: list[int] = []
    written_back: list[tuple[int, int, bool]] = []
    real_fadvise, real_fsync, real_writeback = os.posix_fadvise, os.fsync, copying.start_writeback

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if os.fstat(fd).st_ino == part_ino:
            advised.append(advice)
        real_fadvise(fd, offset, length, advice)

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if st.st_ino == part_ino:  # the descriptor's number is reused once the part is closed
            synced.append(st.st_size)
        real_fsync(fd)

    def writeback(fd: int, offset: int, length: int) -> bool:
        started = real_writeback(fd, offset, length)
        if os.fstat(fd).st_ino == part_ino:
            written_back.append((offset, length, started))
        return started

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(copying, "start_writeback", writeback)
    copy_file(src, out, step=1024 * 1024)
    assert advised == []
    assert synced == []
    step = 1024 * 1024
    assert written_back == [
        (start, min(step, len(data) - start), True) for start in range(0, len(data), step)
    ]
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()
    assert synced == [len(data)]
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
