"""Per-file costs of folders of many small files (issue 12): a published file's folder fsync can be left
to the caller, files up to one copy step are copied and hashed in the calling thread, and whole-file
digests read into one reused buffer."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists, JobInterrupted
from jupyter_staging.safety import copying
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import block_buffer, copy_file, file_digest, file_md5
from jupyter_staging.safety.dirfd import folder_fd
from jupyter_staging.safety.partfile import BLOCK_SIZE, PartFile, part_path
from jupyter_staging.safety.publishing import publish_at


@pytest.fixture
def fsyncs(monkeypatch) -> list[str]:
    """The paths ``os.fsync`` is called on, in order (the real fsync still runs)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.fixture
def helper_threads(monkeypatch) -> list[str]:
    """Thread name prefixes of the pools :mod:`partfile` starts."""
    started: list[str] = []
    real = copying.ThreadPoolExecutor

    def pool(*args, **kwargs):
        started.append(kwargs.get("thread_name_prefix", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(copying, "ThreadPoolExecutor", pool)
    return started


@pytest.mark.parametrize("confined", [False, True])
@pytest.mark.parametrize("sync_folder", [True, False])
def test_commit_fsyncs_the_folder_only_when_asked(tmp_path: Path, fsyncs, confined: bool, sync_folder: bool):
    final = tmp_path / "out" / "a.fits"
    out = PartFile(final, root=tmp_path if confined else None)
    out.write(b"x" * 1000)
    size, sha = out.commit(1000, sync_folder=sync_folder)
    assert (size, sha) == (1000, hashlib.sha256(b"x" * 1000).hexdigest())
    assert final.read_bytes() == b"x" * 1000 and not part_path(final).exists()
    # The bytes are always fsynced (before the name exists); the folder only with sync_folder.
    assert fsyncs[0] == str(part_path(final))
    assert fsyncs[1:] == ([str(final.parent)] if sync_folder else [])


@pytest.mark.parametrize("sync", [True, False])
def test_publish_at_fsyncs_the_destination_folder_only_when_asked(tmp_path: Path, fsyncs, sync: bool):
    (tmp_path / "f.part").write_text("new")
    with folder_fd(tmp_path, "") as fd:
        publish_at(fd, "f.part", fd, "f", sync=sync)
        (tmp_path / "g.part").write_text("other")
        with pytest.raises(DestinationExists):  # still never replaces, whatever the sync
            publish_at(fd, "g.part", fd, "f", sync=sync)
    assert (tmp_path / "f").read_text() == "new"
    assert fsyncs == ([str(tmp_path)] if sync else [])


@pytest.mark.parametrize(
    ("size", "threaded"),
    [(0, False), (1, False), (64 * 1024, False), (256 * 1024, False), (256 * 1024 + 1, True)],
)
def test_files_up_to_one_step_are_copied_in_the_calling_thread(
    tmp_path: Path, helper_threads, size: int, threaded: bool
):
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    seen: list[int] = []
    out = PartFile(tmp_path / "out" / "copy.bin")
    copied = copy_file(src, out, JobControl(on_bytes=seen.append), step=256 * 1024)
    assert out.commit(size) == (size, hashlib.sha256(data).hexdigest())
    assert copied == sum(seen) == size
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert helper_threads == (["staging-hash"] if threaded else [])


def test_resume_with_one_step_left_copies_in_the_calling_thread(tmp_path: Path, helper_threads):
    data = os.urandom(3 * BLOCK_SIZE + 99)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    final = tmp_path / "copy.bin"
    part_path(final).write_bytes(data[: 2 * BLOCK_SIZE])
    out = PartFile(final, resume=True)
    assert copy_file(src, out, step=2 * BLOCK_SIZE) == BLOCK_SIZE + 99
    assert out.commit(len(data))[1] == hashlib.sha256(data).hexdigest()
    assert helper_threads == []


def test_pausing_a_small_copy_keeps_the_part(tmp_path: Path):
    data = os.urandom(2 * BLOCK_SIZE + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    control = JobControl(on_bytes=lambda n: control.interrupt("paused"))  # pause after the first block
    out = PartFile(tmp_path / "copy.bin")
    with pytest.raises(JobInterrupted):
        copy_file(src, out, control)
    out.close()
    assert part_path(tmp_path / "copy.bin").read_bytes() == data[:BLOCK_SIZE]


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE, BLOCK_SIZE + 7, 3 * BLOCK_SIZE - 1])
def test_file_digest_matches_hashlib(tmp_path: Path, size: int):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_md5(path) == hashlib.md5(data).hexdigest()  # noqa: S324 - the checksum under test


def test_block_buffer_is_reused_per_thread():
    mine = block_buffer()
    assert block_buffer() is mine and len(mine) == BLOCK_SIZE
    other: list[memoryview] = []
    thread = threading.Thread(target=lambda: other.append(block_buffer()))
    thread.start()
    thread.join()
    assert other[0] is not mine and other[0].obj is not mine.obj


def test_a_small_file_is_read_to_its_stated_size_with_no_read_past_its_end(tmp_path: Path, monkeypatch):
    """Given the size its caller's ``fstat`` found, a small file is copied in reads up to that size: a
    64 KiB file is one ``preadv``, not a second one that returns 0 (two fewer system calls per file with
    the ``fstat`` it spares). The reads are real; they are only counted."""
    src = tmp_path / "lc.fits"
    data = os.urandom(64 * 1024)
    src.write_bytes(data)
    reads: list[int] = []
    real = os.preadv

    def preadv(fd: int, buffers, offset: int) -> int:
        n = real(fd, buffers, offset)
        reads.append(n)
        return n

    monkeypatch.setattr(copying.os, "preadv", preadv)
    out = PartFile(tmp_path / "out" / "lc.fits")
    fd = os.open(src, os.O_RDONLY)
    try:
        assert copying.copy_from_fd(fd, out, size=os.fstat(fd).st_size) == len(data)
    finally:
        os.close(fd)
    assert reads == [len(data)]
    assert out.commit(len(data)) == (len(data), hashlib.sha256(data).hexdigest())


def test_a_source_that_grows_after_it_was_opened_is_refused_not_copied_short(tmp_path: Path, monkeypatch):
    """The copy stops at the size the source had when it was opened; a file appended to after that is
    refused as changed (its ``fstat`` after the copy differs), so bytes cut short are never published.
    The append is a real write to the source, made right after :meth:`LocalSource.open_item` returns."""
    from jupyter_staging.errors import SourceChanged
    from jupyter_staging.sources.local import LocalSource

    folder = tmp_path / "src"
    folder.mkdir()
    src = folder / "lc.fits"
    src.write_bytes(os.urandom(70_000))
    source = LocalSource(str(folder))
    (item,) = source.list_items()
    real_open = LocalSource.open_item

    def open_then_grow(self: LocalSource, it):
        opened = real_open(self, it)
        with src.open("ab") as fh:
            fh.write(os.urandom(1_000))
        return opened

    monkeypatch.setattr(LocalSource, "open_item", open_then_grow)
    final = tmp_path / "out" / "lc.fits"
    out = PartFile(final)
    with pytest.raises(SourceChanged):
        source.fetch(item, out, JobControl())
    out.discard()
    assert not final.exists()
    assert not part_path(final).exists()
