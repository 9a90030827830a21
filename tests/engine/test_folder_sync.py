"""A copied file's folder is fsynced once per batch of chunk records, before the batch says ``ready``
(issue 12): the file's bytes are fsynced when it is published, its name is made durable by the ledger's
fsync of its folder, and only then does the database record the chunk as ready.

A real :class:`StagingManager` job; ``os.fsync`` and the store's ``write_chunks`` are observed (and still
run) so the order of the three steps can be checked for every chunk.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.engine.test_scale import make_files, manager_for, staged_job


class Timeline:
    """What happened, in order: ``("fsync", path)`` and ``("ready", chunk path)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        #: The inode of the file or folder of each ``fsync`` event, by index in ``events``.
        self.inodes: dict[int, int] = {}

    def fsync_spy(self, real):
        def fsync(fd: int) -> None:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = "?"
            self.inodes[len(self.events)] = os.fstat(fd).st_ino
            self.events.append(("fsync", target))
            real(fd)

        return fsync

    def write_spy(self, real):
        def write_chunks(job_id: str, new: list[dict[str, Any]], updates: dict[str, dict], **kw: Any):
            for row in [*new, *updates.values()]:
                if row.get("state") == "ready":
                    self.events.append(("ready", row["path"]))
            return real(job_id, new, updates, **kw)

        return write_chunks

    def first(self, kind: str, value: str) -> int:
        return self.events.index((kind, value))

    def last_before(self, kind: str, match, before: int) -> int:
        """Index of the last event of ``kind`` before ``before`` whose value passes ``match``; -1 if none."""
        hits = [i for i, (k, v) in enumerate(self.events[:before]) if k == kind and match(v)]
        return hits[-1] if hits else -1

    def last_fsync_of(self, inode: int, before: int) -> int:
        """Index of the last fsync of file ``inode`` before ``before``; -1 if none. By inode: a small file's
        part has no name while it is written (``O_TMPFILE``), a bigger one is ``<name>.part``."""
        hits = [i for i in range(before) if self.events[i][0] == "fsync" and self.inodes[i] == inode]
        return hits[-1] if hits else -1


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_each_ready_chunk_follows_its_file_and_folder_fsync(tmp_path: Path, monkeypatch, layout: str):
    root = tmp_path / "root"
    src = root / "src"
    make_files(src if layout == "flat" else src / "a", 120)
    if layout == "nested":
        make_files(src / "b" / "c", 30)
    mgr = manager_for(tmp_path)
    timeline = Timeline()
    try:
        monkeypatch.setattr(os, "fsync", timeline.fsync_spy(os.fsync))
        monkeypatch.setattr(mgr.store, "write_chunks", timeline.write_spy(mgr.store.write_chunks))
        job = staged_job(mgr, src, "out", "copy")
    finally:
        monkeypatch.undo()
        mgr.stop()
    assert job["state"] == "succeeded", job
    out = root / "out"
    ready = [value for kind, value in timeline.events if kind == "ready"]
    assert len(ready) == (120 if layout == "flat" else 150)
    folders = set()
    for rel in ready:
        assert (out / rel).is_file()
        marked = timeline.first("ready", rel)
        # The bytes were fsynced (unnamed, or as the .part) before the chunk says ready ...
        data_sync = timeline.last_fsync_of((out / rel).stat().st_ino, marked)
        assert data_sync >= 0, rel
        part = timeline.events[data_sync][1]
        assert part.startswith(f"{(out / rel).parent}/"), part  # written in its own folder
        folder = str((out / rel).parent)
        folders.add(folder)
        # ... and then its folder, making the published name durable.
        folder_sync = timeline.last_before("fsync", lambda v, f=folder: v == f, marked)
        assert data_sync < folder_sync < marked, rel
    # The folder is fsynced once per batch of records, not once per file.
    for folder in folders:
        syncs = sum(1 for kind, value in timeline.events if kind == "fsync" and value == folder)
        assert syncs < 30, (folder, syncs)


@pytest.mark.parametrize("code, expected", [(errno.ENOSPC, "no_space"), (errno.EIO, "internal_error")])
def test_a_failing_folder_fsync_fails_the_job_and_records_nothing_ready(
    tmp_path: Path, monkeypatch, code: int, expected: str
):
    """A folder fsync that fails (a full disk, a write-back error: faults a healthy disk cannot produce,
    so ``os.fsync`` of folders is replaced) means the published names may not survive a crash: the job
    ends ``failed`` with a code, not ``running`` forever, and no chunk is recorded ready (a retried
    fsync would report the error no more)."""
    root = tmp_path / "root"
    make_files(root / "src", 5)
    mgr = manager_for(tmp_path)
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real(fd)

    try:
        monkeypatch.setattr(os, "fsync", fsync)
        job = staged_job(mgr, root / "src", "out", "copy")
        monkeypatch.undo()
        states = {c.state for c in mgr.store.list_chunks(job["id"])}
        log = [line["message"] for line in mgr.job_log(job["id"])]
    finally:
        monkeypatch.undo()
        mgr.stop()
    assert job["state"] == "failed" and job["error"]["code"] == expected, job
    assert states == {"pending"}
    assert log[-1].startswith("failed:")
