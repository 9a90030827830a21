"""Acknowledgements of chunks racing what else removes a job's files: a re-run's swap, a second ack, the TTL
sweep, a cancel's clean-up.

The races are made deterministic as in ``test_job_control_races``: a step of the real code is wrapped so that
the other party acts (or waits on a barrier) at the point under test; managers, files and the SQLite job
database are real.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.destinations.local import LocalDestination
from jupyter_staging.engine import manager as manager_module
from jupyter_staging.engine import retention, runner
from jupyter_staging.engine.acks import expire_chunks
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunkState, CreateJob, JobState
from jupyter_staging.engine.store import utcnow
from jupyter_staging.errors import InvalidState
from jupyter_staging.sources.local import LocalSource
from tests.helpers.data import KEPLER, SPITZER, TESS, sha256
from tests.helpers.managers import manager_for


def log_lines(mgr: StagingManager, job_id: str) -> list[str]:
    return [line["message"] for line in mgr.job_log(job_id)]


def chunk_of(mgr: StagingManager, job_id: str, name: str) -> Any:
    """The chunk of ``job_id`` whose path ends with ``name``."""
    (chunk,) = [c for c in mgr.chunks(job_id) if c.path.endswith(name)]
    return chunk


def before_chunk_read(
    mgr: StagingManager, monkeypatch: pytest.MonkeyPatch, action: Callable[[], Any]
) -> None:
    """Run ``action`` once, right after an ack (or any verb) of ``mgr`` has read its chunk's record."""
    read = mgr._chunk
    done: list[bool] = []

    def read_then(job_id: str, chunk_id: str) -> Any:
        chunk = read(job_id, chunk_id)
        if not done:
            done.append(True)
            action()
        return chunk

    monkeypatch.setattr(mgr, "_chunk", read_then)


def acked(mgr: StagingManager, job_id: str, index: int) -> Any:
    """The answer of an ack of chunk ``index``: the chunk, or the error raised."""
    try:
        return mgr.ack(job_id, str(index))
    except InvalidState as exc:
        return exc


def test_an_ack_of_a_replaced_jobs_chunk_during_the_swap_leaves_the_new_output_whole(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A (``delete_on_ack``) of two entries; its request runs again after one source changed: job B
    hard-links the unchanged file from A's output and swaps its folder in. An ack of A's still-ready chunk
    of that file, right after the rename, deleted the file at A's chunk path -- B's file now, a link to the
    same bytes, its size and time A's -- and B stayed ``succeeded`` with a file missing. A's chunks are
    expired before the first rename now: the ack answers ``chunk_expired`` and deletes nothing."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    body = {
        "manifest": {"k": str(src), "s": str(archive / SPITZER.name)},
        "destination": "d",
        "cleanup_policy": "delete_on_ack",
    }
    first, _ = manager.create(CreateJob(**body))
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    kept = chunk_of(manager, first.id, SPITZER.name)
    shutil.copyfile(TESS, src)
    os.utime(src)
    swap_in, answers = runner.swap_in, []

    def swap_then_ack(*args: Any, **kwargs: Any) -> Any:
        done = swap_in(*args, **kwargs)
        answers.append(acked(manager, first.id, kept.index))
        return done

    monkeypatch.setattr(runner, "swap_in", swap_then_ack)
    second, created = manager.create(CreateJob(**body))
    assert created and manager.wait(second.id, timeout=60).state == JobState.succeeded
    (answer,) = answers
    assert isinstance(answer, InvalidState) and answer.code == "chunk_expired", answer
    out = manager.root_dir / "d"
    assert sha256(out / "s" / SPITZER.name) == sha256(SPITZER)  # B's file, whole
    assert sha256(out / "k" / "lc.fits") == sha256(TESS)
    assert {c.state for c in manager.chunks(second.id)} == {ChunkState.ready}
    assert {c.state for c in manager.chunks(first.id)} == {ChunkState.expired}
    assert manager.get(first.id).state == JobState.expired
    assert not any("deleted on ack" in line for line in log_lines(manager, first.id))


def test_a_failed_swap_before_any_rename_gives_the_replaced_jobs_chunks_back(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replaced job's chunks are expired before the swap's first rename; a swap that fails before it
    (here: the folder cannot be renamed) leaves the old output whole where it was, and its chunks ``ready``
    again, never ``expired`` over files that are still there."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    body = {"source": str(src), "destination": "d", "cleanup_policy": "delete_on_ack"}
    first, _ = manager.create(CreateJob(**body))
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    shutil.copyfile(TESS, src)
    os.utime(src)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner, "swap_in", refused)
    second, created = manager.create(CreateJob(**body))
    assert created and manager.wait(second.id, timeout=60).state == JobState.failed
    assert sha256(manager.root_dir / "d" / "lc.fits") == sha256(KEPLER)
    assert manager.get(first.id).state == JobState.succeeded
    assert {c.state for c in manager.chunks(first.id)} == {ChunkState.ready}
    assert acked(manager, first.id, 0).state == ChunkState.acked


def test_two_acks_at_once_of_the_last_chunks_expire_the_job_once(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last two ready chunks of a ``delete_on_ack`` job acked at once: both acks found nothing left
    ready and both expired the job (its output removed twice, two ``expired`` lines in its log). It is
    expired once now; both acks answer ``acked``, and the user's file in the folder stays."""
    body = {
        "manifest": {"k": str(archive / KEPLER.name), "s": str(archive / SPITZER.name)},
        "destination": "d",
        "cleanup_policy": "delete_on_ack",
    }
    job, _ = manager.create(CreateJob(**body))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    mine = manager.root_dir / "d" / "notes.txt"
    mine.write_text("mine\n")
    both = threading.Barrier(2, timeout=10)
    expire = manager_module.expire_if_consumed

    def together(host: Any, job_id: str) -> bool:
        both.wait()  # both acks have marked their chunk: each finds no chunk left ready
        return expire(host, job_id)

    monkeypatch.setattr(manager_module, "expire_if_consumed", together)
    answers: list[Any] = [None, None]
    threads = [
        threading.Thread(target=lambda i=i: answers.__setitem__(i, acked(manager, job.id, i))) for i in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.state for a in answers] == [ChunkState.acked, ChunkState.acked], answers
    lines = log_lines(manager, job.id)
    assert len([line for line in lines if line.startswith("expired")]) == 1, lines
    assert manager.get(job.id).state == JobState.expired
    assert mine.read_text() == "mine\n"
    assert sorted(p.name for p in (manager.root_dir / "d").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("policy", ["retain", "delete_on_ack"])
def test_an_ack_the_ttl_sweep_overtakes_answers_chunk_expired(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """An ack that read its chunk ``ready`` just before the TTL sweep removed the job's output: it set the
    chunk ``acked`` over ``expired`` afterwards (an expired job with an acked chunk, whose object a refresh
    would presign again), and under ``delete_on_ack`` deleted at the chunk's path again. It answers
    ``chunk_expired`` now and changes nothing."""
    body = {"source": str(archive / KEPLER.name), "destination": "d", "cleanup_policy": policy}
    job, _ = manager.create(CreateJob(**body))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    manager.store.set_job_fields(job.id, expires_at=utcnow() - timedelta(seconds=1))
    before_chunk_read(manager, monkeypatch, lambda: retention.sweep(manager))
    answer = acked(manager, job.id, 0)
    assert isinstance(answer, InvalidState) and answer.code == "chunk_expired", answer
    assert manager.get(job.id).state == JobState.expired
    assert {c.state for c in manager.chunks(job.id)} == {ChunkState.expired}
    lines = log_lines(manager, job.id)
    assert len([line for line in lines if line.startswith("expired")]) == 1, lines
    assert not any("acknowledged" in line for line in lines), lines


def test_an_ack_a_cancel_overtakes_answers_chunk_expired(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paused ``delete_on_ack`` job with one ready chunk, cancelled just after an ack read that chunk:
    the ack set it ``acked`` over the ``expired`` of the cancel (a cancelled job with an acked chunk). It
    answers ``chunk_expired`` now; the job is cancelled with every chunk expired and nothing left."""
    folder = root / "src"
    folder.mkdir()
    for i, name in enumerate(("a.bin", "b.bin")):
        (folder / name).write_bytes(bytes([i]) * 65536)
    mgr = manager_for(tmp_path, concurrent_items=1)
    try:
        fetch, job_ids, fetched = LocalSource.fetch, [], []

        def fetch_then(self: LocalSource, item: Any, out: Any, control: Any) -> None:
            fetched.append(item.name)
            if len(fetched) == 2:  # the first file published: paused as the second starts
                mgr._request(job_ids[0], JobState.paused)
            fetch(self, item, out, control)

        monkeypatch.setattr(LocalSource, "fetch", fetch_then)
        request = CreateJob(
            manifest={n: str(folder / n) for n in ("a.bin", "b.bin")},
            destination="out",
            cleanup_policy="delete_on_ack",
        )
        job, _ = mgr.create(request, start=False)
        job_ids.append(job.id)
        mgr.submit(job.id, recorded=True)
        assert mgr.wait(job.id, timeout=60, until=lambda s: s == JobState.paused).state == JobState.paused
        ready = [c for c in mgr.chunks(job.id) if c.state == ChunkState.ready]
        assert len(ready) == 1
        before_chunk_read(mgr, monkeypatch, lambda: mgr.cancel(job.id))
        answer = acked(mgr, job.id, ready[0].index)
        assert isinstance(answer, InvalidState) and answer.code == "chunk_expired", answer
        assert mgr.get(job.id).state == JobState.cancelled
        assert {c.state for c in mgr.chunks(job.id)} == {ChunkState.expired}
        assert not (root / "out").exists()
    finally:
        mgr.stop()


def test_an_expiry_waits_for_an_ack_deleting_its_file(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order of the swap's race: an ack has set its chunk ``acked`` and is deleting its file
    when the chunks are expired (a re-run about to rename its folder over the old one). The expiry waits
    until the file is deleted, so no rename can put another file at that path first; it finds the chunk
    ``acked``. Before, the ack's deletion came after its state change had committed, whatever came between."""
    body = {"source": str(archive / KEPLER.name), "destination": "d", "cleanup_policy": "delete_on_ack"}
    job, _ = manager.create(CreateJob(**body))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    remove, seen = LocalDestination.remove_chunk, []
    expiry: list[threading.Thread] = []

    def remove_slowly(self: LocalDestination, *args: Any, **kwargs: Any) -> bool:
        expiry.append(threading.Thread(target=lambda: seen.append(expire_chunks(manager.store, job.id))))
        expiry[0].start()
        expiry[0].join(0.5)
        seen.append("deleting")  # the expiry has not ended while the file is not deleted yet
        return remove(self, *args, **kwargs)

    monkeypatch.setattr(LocalDestination, "remove_chunk", remove_slowly)
    assert manager.ack(job.id, "0").state == ChunkState.acked
    expiry[0].join(30)
    assert seen[0] == "deleting" and list(seen[1].values()) == ["acked"], seen
    assert not (manager.root_dir / "d" / KEPLER.name).exists()
