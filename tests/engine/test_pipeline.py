"""Small local files copied on the job's thread with their fsyncs in flight (issue 12): files are published
in order once durable, an error or a pause publishes nothing more and keeps every written part for the
resume, and a paused folder copy resumes to the same bytes.

Real part files in ``tmp_path`` and a real :class:`StagingManager`; nothing is mocked.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import resource
import signal
import threading
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.pipeline import GROUPS_IN_FLIGHT, SYNC_GROUP_FILES, SyncPipeline
from jupyter_staging.errors import JobInterrupted
from jupyter_staging.safety.partfile import PartFile
from tests.engine.test_scale import make_files
from tests.helpers.data import wait_until
from tests.helpers.managers import manager_for


def written(folder: Path, name: str, data: bytes) -> PartFile:
    out = PartFile(folder / name)
    out.write(data)
    return out


def test_files_are_published_in_the_order_they_were_added(tmp_path: Path):
    published: list[str] = []

    def then(out: PartFile) -> None:
        size, digest = out.commit(len(data))
        assert digest == hashlib.sha256(data).hexdigest()
        published.append(out.final.name)

    data = os.urandom(50_000)
    # more than may wait at once
    names = [f"f{i:03d}" for i in range(2 * GROUPS_IN_FLIGHT * SYNC_GROUP_FILES + 5)]
    with SyncPipeline(3) as pipeline:
        for name in names:
            out = written(tmp_path, name, data)
            pipeline.add(out, functools.partial(then, out))
    assert published == names
    assert sorted(os.listdir(tmp_path)) == names  # no .part left
    assert all((tmp_path / n).read_bytes() == data for n in names)


def test_each_file_is_written_back_then_fsynced_on_the_pool_not_the_writing_thread(
    tmp_path: Path, monkeypatch
):
    """Every file's writeback is started (``POSIX_FADV_DONTNEED``) before its fsync, both on the pool's
    threads: the thread that writes the files makes neither call. The system calls are real; they are
    only watched."""
    calls: list[tuple[str, int, str]] = []
    real_fadvise, real_fsync = os.posix_fadvise, os.fsync

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            calls.append(("writeback", os.fstat(fd).st_ino, threading.current_thread().name))
        real_fadvise(fd, offset, length, advice)

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.fstat(fd).st_ino, threading.current_thread().name))
        real_fsync(fd)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "fsync", fsync)
    data = os.urandom(20_000)
    inodes = []
    with SyncPipeline(2) as pipeline:
        for i in range(2 * SYNC_GROUP_FILES + 3):
            out = written(tmp_path, f"f{i:03d}", data)
            inodes.append(os.fstat(out.fileno()).st_ino)
            pipeline.add(out, functools.partial(out.commit, len(data), sync_folder=False))
    writer = threading.current_thread().name
    for inode in inodes:
        mine = [(what, thread) for what, ino, thread in calls if ino == inode]
        assert [what for what, _ in mine] == ["writeback", "fsync"]
        assert all(thread.startswith("staging-fsync") and thread != writer for _, thread in mine)
    assert all((tmp_path / f"f{i:03d}").read_bytes() == data for i in range(len(inodes)))


def test_files_written_and_unpublished_stay_within_the_limit(tmp_path: Path):
    data = b"z" * 2048
    seen: list[int] = []
    with SyncPipeline(1) as pipeline:  # the limit: one group of SYNC_GROUP_FILES
        for i in range(3 * SYNC_GROUP_FILES + 3):
            out = written(tmp_path, f"f{i:03d}", data)
            pipeline.add(out, functools.partial(out.commit, len(data)))
            seen.append(len(pipeline._waiting) + len(pipeline._group))
    assert max(seen) <= SYNC_GROUP_FILES
    assert len(os.listdir(tmp_path)) == 3 * SYNC_GROUP_FILES + 3


def test_a_file_whose_fsync_failed_is_discarded_not_kept(tmp_path: Path):
    """An fsync error (EIO) is a fault this test cannot cause on a healthy disk: the one file's ``sync`` is
    replaced by one that raises. The file is not kept for a resume (a second fsync would report nothing);
    the files before it are published, the ones after it kept."""
    data = b"w" * 4096

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"), SyncPipeline(1) as pipeline:
        for i in range(5):
            out = written(tmp_path, f"f{i}", data)
            if i == 2:
                out.sync = broken  # type: ignore[method-assign]
            pipeline.add(out, functools.partial(out.commit, len(data)))
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1", "f3.part", "f4.part"]


def test_a_failing_step_stops_the_rest_and_keeps_their_parts(tmp_path: Path):
    data = b"x" * 4096

    def then(out: PartFile) -> None:
        if out.final.name == "f2":
            raise RuntimeError("verification of f2 failed")
        out.commit(len(data))

    with pytest.raises(RuntimeError, match="f2"), SyncPipeline(1) as pipeline:
        for i in range(8):
            out = written(tmp_path, f"f{i}", data)
            pipeline.add(out, functools.partial(then, out))
    names = set(os.listdir(tmp_path))
    assert {"f0", "f1", "f2.part"} <= names
    # Nothing after the failure is published; each file written before the pipeline stopped is kept as a
    # closed part holding every byte, and resumes.
    parts = sorted(n for n in names if n.endswith(".part"))
    assert not names - {"f0", "f1", *parts}
    assert parts == [f"f{i}.part" for i in range(2, 2 + len(parts))]
    for name in parts:
        resumed = PartFile(tmp_path / name.removesuffix(".part"), resume=True)
        assert resumed.offset == len(data)
        resumed.commit(len(data))
        assert (tmp_path / name.removesuffix(".part")).read_bytes() == data


def test_an_interruption_while_files_wait_publishes_none_of_them(tmp_path: Path):
    data = b"y" * 1000
    published: list[str] = []

    def then(out: PartFile) -> None:
        out.commit(len(data))
        published.append(out.final.name)

    with pytest.raises(JobInterrupted), SyncPipeline(2) as pipeline:
        for i in range(3):
            out = written(tmp_path, f"f{i}", data)
            pipeline.add(out, functools.partial(then, out))
        raise JobInterrupted("paused")
    # Files published before the interruption came are a prefix, in order; every other one stays a part,
    # complete and closed, for the resume.
    assert published == ["f0", "f1", "f2"][: len(published)]
    expected = [*published, *[f"f{i}.part" for i in range(len(published), 3)]]
    assert sorted(os.listdir(tmp_path)) == expected
    for name in expected:
        assert (tmp_path / name).read_bytes() == data


def test_a_paused_folder_copy_resumes_to_the_same_bytes(tmp_path: Path):
    root = tmp_path / "root"
    sums = make_files(root / "sector", 1500, size=16384)
    mgr = manager_for(tmp_path)
    try:
        job, _ = mgr.create(CreateJob(source=str(root / "sector"), destination="out", method="copy"))
        out = root / "out"
        wait_until(lambda: out.is_dir() and len(os.listdir(out)) >= 100, timeout=60)
        mgr.pause(job.id)
        paused = mgr.wait(job.id, timeout=60, until=lambda s: s in (JobState.paused, JobState.succeeded))
        if paused.state == JobState.paused:
            listed = os.listdir(out)
            assert len([n for n in listed if not n.endswith(".part")]) < 1500
            for name in listed:  # a published file is whole; a part is ours, left for the resume
                if not name.endswith(".part"):
                    assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sums[name]
            mgr.resume(job.id)
        done = mgr.wait(job.id, timeout=300)
        manifest = mgr.manifest(job.id)
    finally:
        mgr.stop()
    assert done.state == JobState.succeeded, done
    assert paused.state == JobState.paused, "the job ended before the pause; nothing was tested"
    assert sorted(os.listdir(out)) == sorted([*sums, "manifest.json"])
    assert {o["path"]: o["sha256"] for o in manifest["objects"]} == sums
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


def test_writeback_is_started_for_every_pipelined_file_and_bytes_stay_whole(tmp_path: Path, monkeypatch):
    root = tmp_path / "root"
    sums = make_files(root / "sector", 40, size=4096)  # small enough to sit in the write buffer
    advised: list[int] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            advised.append(os.fstat(fd).st_size)  # the buffered tail written before
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    mgr = manager_for(tmp_path)
    try:
        job, _ = mgr.create(CreateJob(source=str(root / "sector"), destination="out", method="copy"))
        done = mgr.wait(job.id, timeout=120)
    finally:
        mgr.stop()
    assert done.state == JobState.succeeded, done
    assert advised == [4096] * 40  # each file once, when all its bytes were written
    for name, digest in sums.items():
        assert hashlib.sha256((root / "out" / name).read_bytes()).hexdigest() == digest


def test_a_failing_writeback_hint_changes_nothing(tmp_path: Path, monkeypatch):
    def refused(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(errno.ESPIPE, "Illegal seek")  # what a pipe or an odd file system answers

    monkeypatch.setattr(os, "posix_fadvise", refused)
    data = os.urandom(70_000)
    out = written(tmp_path, "f.bin", data)
    out.start_writeback()
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_write_failing_when_writeback_starts_is_raised_by_the_fsync(tmp_path: Path):
    # A file too big for the process's limit (RLIMIT_FSIZE: EFBIG, as a full disk or a quota would fail
    # it): the buffered tail cannot be written when the writeback starts. That raises nothing there; the
    # fsync raises it, where the pipeline discards the part.
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    out = PartFile(tmp_path / "f.bin")
    out.write(os.urandom(4096))  # still in the write buffer
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
        out.start_writeback()
        with pytest.raises(OSError) as info:
            out.sync()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert info.value.errno == errno.EFBIG
    out.discard()
    assert os.listdir(tmp_path) == []
