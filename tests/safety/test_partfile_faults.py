"""Faults while making a part file durable: a failed fsync publishes nothing, keeps nothing for a resume
and leaks no descriptor; a folder fsync that fails is an error, one the file system does not support is not.

EIO from fsync is a fault a healthy disk cannot produce, so ``os.fsync`` is replaced for the one call
(the only mock here); the descriptors are counted for real in ``/proc/self/fd``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists
from jupyter_staging.safety import dirfd, partfile
from jupyter_staging.safety.dirfd import FSYNC_UNSUPPORTED, fsync_dir
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.partfile import PartFile, part_path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def failing_fsync(code: int):
    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    return fsync


@pytest.mark.parametrize("confined", [False, True], ids=["by-path", "by-descriptor"])
def test_commit_whose_fsync_fails_publishes_nothing_and_leaks_nothing(tmp_path: Path, monkeypatch, confined):
    final = tmp_path / "sub" / "f.bin"
    cache = FolderCache(tmp_path) if confined else None
    before = open_fds()
    out = PartFile(final, folders=cache) if confined else PartFile(final)
    out.write(b"x" * 10_000)
    monkeypatch.setattr(partfile.os, "fsync", failing_fsync(errno.EIO))
    with pytest.raises(OSError) as caught:
        out.commit(10_000)
    monkeypatch.undo()
    assert caught.value.errno == errno.EIO
    assert not final.exists()
    # The bytes' durability is unknown after a failed fsync: the part is not kept for a resume.
    assert not part_path(final).exists()
    out.discard()  # what a caller does after any error: harmless a second time
    if cache is not None:
        cache.close()
    assert open_fds() == before


@pytest.mark.parametrize("confined", [False, True], ids=["by-path", "by-descriptor"])
def test_close_whose_fsync_fails_keeps_no_part_and_leaks_nothing(tmp_path: Path, monkeypatch, confined):
    final = tmp_path / "f.bin"
    cache = FolderCache(tmp_path) if confined else None
    before = open_fds()
    out = PartFile(final, folders=cache) if confined else PartFile(final)
    out.write(b"y" * 100)
    monkeypatch.setattr(partfile.os, "fsync", failing_fsync(errno.EIO))
    with pytest.raises(OSError):
        out.close()
    monkeypatch.undo()
    out.discard()  # what a caller does after the error: harmless
    if cache is not None:
        cache.close()
    assert open_fds() == before
    # Bytes not made durable are not resumed later (they would be trusted and rehashed).
    assert not part_path(final).exists()


def test_confined_commit_refused_at_publish_leaves_no_part(tmp_path: Path):
    """The final name taken while the part was written: nothing is published and no ``.part`` stays."""
    (tmp_path / "d").mkdir()
    final = tmp_path / "d" / "x.bin"
    out = PartFile(final, root=tmp_path)
    out.write(b"hello")
    final.write_bytes(b"someone else's")
    with pytest.raises(DestinationExists):
        out.commit()
    out.discard()
    assert sorted(os.listdir(tmp_path / "d")) == ["x.bin"]
    assert final.read_bytes() == b"someone else's"


def test_folder_fsync_errors_are_raised_unsupported_ones_ignored(tmp_path: Path, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dirfd.fsync_fd(fd)  # a real folder fsync on a real file system succeeds
        for code in FSYNC_UNSUPPORTED:
            monkeypatch.setattr(dirfd.os, "fsync", failing_fsync(code))
            dirfd.fsync_fd(fd)
        monkeypatch.setattr(dirfd.os, "fsync", failing_fsync(errno.EIO))
        with pytest.raises(OSError, match="Input/output"):
            dirfd.fsync_fd(fd)
        with pytest.raises(OSError, match="Input/output"):
            fsync_dir(tmp_path)
    finally:
        os.close(fd)
    fsync_dir(tmp_path / "missing")  # a folder that cannot be opened: nothing to make durable


def test_a_short_write_is_finished_or_raises_and_publishes_nothing(tmp_path: Path):
    """A confined part is written unbuffered, so a write the kernel takes only in part must be finished by
    :meth:`PartFile.write` itself. The fault is real: with ``RLIMIT_FSIZE`` at 100,000 bytes, a write of
    150,000 bytes is taken short (100,000, POSIX ``write(2)``), and the rest is refused (EFBIG): the error
    is raised, nothing is published and no part is left. Below the limit the same writes go through whole."""
    import resource
    import signal

    data = os.urandom(150_000)
    cache = FolderCache(tmp_path)
    ok = PartFile(tmp_path / "whole.bin", folders=cache)
    ok.write(data)
    assert ok.commit(len(data))[0] == len(data)
    assert (tmp_path / "whole.bin").read_bytes() == data

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal's default (exit)
    final = tmp_path / "capped.bin"
    out = PartFile(final, folders=cache)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
        with pytest.raises(OSError) as caught:
            out.write(data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert caught.value.errno == errno.EFBIG
    out.discard()
    cache.close()
    assert not final.exists()
    assert not part_path(final).exists()
