"""Job control against a real :class:`StagingManager` at the exact points where two verbs meet: a cancel of
a job with ready chunks, a cancel as its runner takes it, a cancel then a pause, two resumes at once.

The races are made deterministic: a step of the real code is wrapped so that it stops (an Event) or acts
(a request) at the point under test; the jobs, their files and their database are real.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunkState, CreateJob, JobState
from jupyter_staging.sources.local import LocalSource
from tests.helpers.managers import manager_for

FILES = ("a.bin", "b.bin", "c.bin")


@pytest.fixture
def one_at_a_time(root: Path, tmp_path: Path) -> Iterator[StagingManager]:
    """A started manager staging one file of a job at a time (its files in name order)."""
    mgr = manager_for(tmp_path, concurrent_items=1)
    yield mgr
    mgr.stop()


@pytest.fixture
def src(root: Path) -> Path:
    folder = root / "src"
    folder.mkdir()
    for i, name in enumerate(FILES):
        (folder / name).write_bytes(bytes([i]) * 65536)
    return folder


def on_fetch(monkeypatch: pytest.MonkeyPatch, nth: int, action: Callable[[], Any]) -> None:
    """Run ``action`` once, as the copy of the ``nth`` file fetched (from 1) starts (then copy it)."""
    fetch = LocalSource.fetch
    started: list[str] = []
    lock = threading.Lock()

    def fetch_then(self: LocalSource, item: Any, out: Any, control: Any) -> None:
        with lock:
            started.append(item.name)
            due = len(started) == nth
        if due:
            action()
        fetch(self, item, out, control)

    monkeypatch.setattr(LocalSource, "fetch", fetch_then)


def manifest_of(src: Path) -> CreateJob:
    """A manifest job of the files of ``src``, one entry each (staged one at a time, each entry's chunk
    marked ready as it is published)."""
    return CreateJob(manifest={name: str(src / name) for name in FILES}, destination="out")


def test_a_cancelled_job_expires_the_chunks_whose_files_it_removed(
    one_at_a_time: StagingManager, src: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paused after its first file was published (chunk ``ready``), then cancelled: the files go and so
    do the chunks (``expired``, in the transaction of the ``cancelled`` state); they stayed ``ready``, and
    an ack answered ``acked`` for a file that was gone."""
    mgr = one_at_a_time
    job_id: list[str] = []
    on_fetch(monkeypatch, 2, lambda: mgr._request(job_id[0], JobState.paused))
    job, _ = mgr.create(manifest_of(src), start=False)
    job_id.append(job.id)
    mgr.submit(job.id, recorded=True)
    assert mgr.wait(job.id, timeout=60, until=lambda s: s == JobState.paused).state == JobState.paused
    ready = [c.path for c in mgr.chunks(job.id) if c.state == ChunkState.ready]
    assert len(ready) == 1 and (root / "out" / ready[0]).is_file()

    assert mgr.cancel(job.id).state == JobState.cancelled
    assert not (root / "out").exists()
    assert {c.state for c in mgr.chunks(job.id)} == {ChunkState.expired}
    assert mgr.ack(job.id, "0").state == ChunkState.expired
