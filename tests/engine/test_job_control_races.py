"""Job control against a real :class:`StagingManager` at the exact points where two verbs meet: a cancel of
a job with ready chunks, a cancel as its runner takes it, a cancel then a pause, two resumes at once.

The races are made deterministic: a step of the real code is wrapped so that it stops (an Event) or acts
(a request) at the point under test; the jobs, their files and their database are real.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunkState, CreateJob, JobState
from jupyter_staging.errors import InvalidState
from jupyter_staging.sources.local import LocalSource
from tests.helpers.data import wait_until
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
    an ack answered ``acked`` for a file that was gone (it is a 409 ``chunk_expired`` now)."""
    mgr = one_at_a_time
    job = paused_at_second_file(mgr, src, monkeypatch)
    ready = [c.path for c in mgr.chunks(job.id) if c.state == ChunkState.ready]
    assert len(ready) == 1 and (root / "out" / ready[0]).is_file()

    assert mgr.cancel(job.id).state == JobState.cancelled
    assert not (root / "out").exists()
    assert {c.state for c in mgr.chunks(job.id)} == {ChunkState.expired}
    with pytest.raises(InvalidState) as refused:  # a read of a file that is gone cannot be recorded
        mgr.ack(job.id, "0")
    assert refused.value.code == "chunk_expired"
    assert {c.state for c in mgr.chunks(job.id)} == {ChunkState.expired}


def paused_at_second_file(mgr: StagingManager, src: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A manifest job of ``src`` run on ``mgr``, paused as its second file starts (the first published,
    its chunk ``ready``); returns the job as created."""
    job_id: list[str] = []
    on_fetch(monkeypatch, 2, lambda: mgr._request(job_id[0], JobState.paused))
    job, _ = mgr.create(manifest_of(src), start=False)
    job_id.append(job.id)
    mgr.submit(job.id, recorded=True)
    assert mgr.wait(job.id, timeout=60, until=lambda s: s == JobState.paused).state == JobState.paused
    return job


def in_thread(
    call: Callable[[], Any], threads: list[threading.Thread] | None = None
) -> tuple[threading.Thread, list[Any]]:
    """Start ``call`` on a thread (appended to ``threads`` first); its result (or exception) lands in the
    list returned."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    if threads is not None:
        threads.append(thread)
    thread.start()
    return thread, result


def test_a_cancel_as_the_runner_takes_the_job_cancels_it_once(
    manager: StagingManager,
    src: Path,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DELETE just after POST: the cancel reads the job queued while its runner (in this process) is about
    to take it. The cancel is handed to that runner, which ends the job ``cancelled`` with nothing
    published. Before, the cancel ended the job itself (held here until the runner was copying its first
    file): the job said cancelled, its whole output and manifest were published, and the runner's own
    state change failed with a traceback."""
    decided, copying, cancelled = threading.Event(), threading.Event(), threading.Event()
    finish_cancelled = manager.finish_cancelled
    canceller: list[threading.Thread] = []

    def held_finish(*args: Any) -> Any:
        if threading.current_thread() is not canceller[0]:
            return finish_cancelled(*args)
        decided.set()
        copying.wait(10)
        try:
            return finish_cancelled(*args)
        finally:
            cancelled.set()

    def copy_after_cancel() -> None:
        copying.set()
        cancelled.wait(10)

    monkeypatch.setattr(manager, "finish_cancelled", held_finish)
    on_fetch(monkeypatch, 1, copy_after_cancel)
    job, _ = manager.create(manifest_of(src), start=False)
    thread, answer = in_thread(lambda: manager.cancel(job.id), canceller)
    wait_until(
        lambda: decided.is_set() or manager.store.get_job(job.id, resume=False).requested == "cancelled",  # type: ignore[union-attr]
        what="the cancel decided",
    )
    manager.submit(job.id, recorded=True)
    thread.join(60)

    assert not thread.is_alive() and answer[0].state == JobState.cancelled, answer
    assert manager.wait(job.id, timeout=60).state == JobState.cancelled
    assert not (root / "out").exists()
    lines = [line["message"] for line in manager.job_log(job.id)]
    assert "running" not in lines and lines.count("cancelled; partial output removed") == 1, lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_two_resumes_at_once_start_one_runner(
    manager: StagingManager, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two resumes of a paused job (a double click): the second runs whole between the first's read of the
    job (paused) and its state change. One queues the job and starts its runner; the other answers the
    job as it then is. Before, both queued it and each started a runner."""
    job = paused_at_second_file(manager, src, monkeypatch)
    set_state, inner, outer = manager.set_state, [], threading.current_thread()

    def second_resume_first(job_id: str, state: JobState, **kwargs: Any) -> Any:
        if state == JobState.queued and threading.current_thread() is outer and not inner:
            inner.append(in_thread(lambda: manager.resume(job.id)))
            inner[0][0].join(60)
        return set_state(job_id, state, **kwargs)

    monkeypatch.setattr(manager, "set_state", second_resume_first)
    first = manager.resume(job.id)
    second = inner[0][1][0]
    assert not isinstance(second, Exception), repr(second)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    assert first.state in (JobState.queued, JobState.running, JobState.succeeded), first
    assert second.state in (JobState.queued, JobState.running, JobState.succeeded), second
    lines = [line["message"] for line in manager.job_log(job.id)]
    assert lines.count("resumed") == 1 and lines.count("running") == 2, lines


def test_a_pause_after_a_cancel_does_not_undo_it(
    one_at_a_time: StagingManager, src: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE then pause in quick succession: both reach the runner while it copies a file. The cancel
    stands (in the runner's control and in the ``requested`` column), the job ends ``cancelled`` with
    nothing left, and the pause answers the job as it is. Before, the pause replaced the cancel: the job
    ended paused, the DELETE answered after 30 s as if it had cancelled, and a resume completed it."""
    mgr = one_at_a_time
    copying, release, paused_asked = threading.Event(), threading.Event(), threading.Event()
    request = mgr._request

    def noted_request(job_id: str, wanted: JobState) -> bool:
        asked = request(job_id, wanted)
        if wanted == JobState.paused:
            paused_asked.set()
        return asked

    def held_copy() -> None:
        copying.set()
        release.wait(30)

    monkeypatch.setattr(mgr, "_request", noted_request)
    on_fetch(monkeypatch, 2, held_copy)
    job, _ = mgr.create(manifest_of(src))
    assert copying.wait(30)
    cancel, cancelled = in_thread(lambda: mgr.cancel(job.id))
    wait_until(lambda: mgr.store.get_job(job.id, resume=False).requested == "cancelled", what="the cancel")  # type: ignore[union-attr]
    pause, paused = in_thread(lambda: mgr.pause(job.id))
    assert paused_asked.wait(30)
    assert mgr.store.get_job(job.id, resume=False).requested == "cancelled"  # type: ignore[union-attr]
    release.set()
    cancel.join(60)
    pause.join(60)

    assert cancelled[0].state == JobState.cancelled, cancelled
    assert paused[0].state == JobState.cancelled, paused
    assert mgr.get(job.id).state == JobState.cancelled
    assert not (root / "out").exists()
    assert "paused" not in [line["message"] for line in mgr.job_log(job.id)]


def test_a_request_never_outlives_the_run_it_was_for(manager: StagingManager, src: Path, root: Path) -> None:
    """A second pause click (or a cancel) that read the job running and writes as the run ends paused: the
    request is for a run that is over. Before, it stayed in the ``requested`` column and every resume of
    the job answered 409, after a restart too, and a cancel waited 30 s and left the job paused."""
    job, _ = manager.create(manifest_of(src), start=False)
    manager.pause(job.id)  # queued, no runner yet: paused at once

    assert manager._request(job.id, JobState.paused) is False  # the click that came late
    assert manager.store.get_job(job.id, resume=False).requested is None  # type: ignore[union-attr]
    assert manager.resume(job.id).state in (JobState.queued, JobState.running)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded


def test_a_paused_job_is_cancelled_at_once_and_keeps_nothing(
    manager: StagingManager, src: Path, root: Path
) -> None:
    job, _ = manager.create(manifest_of(src), start=False)
    manager.pause(job.id)

    assert manager.cancel(job.id).state == JobState.cancelled
    assert manager.store.get_job(job.id, resume=False).requested is None  # type: ignore[union-attr]


def test_a_job_queued_behind_another_is_cancelled_at_once(
    root: Path, tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One job at a time: the second waits in this process's queue, its runner not started. A cancel ends
    it at once; before, it was handed to that runner and answered ``queued`` after 30 s."""
    mgr = manager_for(tmp_path, max_concurrent_jobs=1)
    copying, release = threading.Event(), threading.Event()

    def held_copy() -> None:
        copying.set()
        release.wait(30)

    on_fetch(monkeypatch, 1, held_copy)
    try:
        first, _ = mgr.create(manifest_of(src))
        assert copying.wait(30)
        second, _ = mgr.create(CreateJob(source=str(src / "a.bin"), destination="second"))
        answer = mgr.cancel(second.id)
        release.set()
        assert answer.state == JobState.cancelled
        assert mgr.wait(first.id, timeout=60).state == JobState.succeeded
        assert mgr.get(second.id).state == JobState.cancelled and not (root / "second").exists()
    finally:
        release.set()
        mgr.stop()


def test_a_job_set_again_to_its_final_state_is_left_as_it_is(manager: StagingManager, src: Path) -> None:
    """Two servers sweeping one root both expire a job: the second is a no-op, not an error that stopped
    its sweep with a traceback."""
    job, _ = manager.create(CreateJob(source=str(src / "a.bin"), destination="once"))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    manager.set_state(job.id, JobState.expired)
    manager.set_state(job.id, JobState.expired)
    assert manager.get(job.id).state == JobState.expired


def test_on_sqlite_a_checked_change_holds_off_another_processs_writes(
    root: Path, tmp_path: Path, src: Path
) -> None:
    """Two servers on one SQLite file: while one checks a job's row and writes it (a compare-and-set),
    the other's write waits, so the row checked is the row written. Before, the check read the row
    outside the write lock: a runner could commit ``running`` between another server's check and its
    ``paused``, and a resume there started a second runner."""
    a = manager_for(tmp_path)
    b = manager_for(tmp_path)  # the same job database, another "process"
    try:
        job, _ = a.create(manifest_of(src), start=False)
        written = threading.Event()

        def other_write() -> None:
            a.store.update_job(job.id, load_resume=False, name="renamed by a")
            written.set()

        def check(rec: Any) -> dict[str, Any]:
            writer = threading.Thread(target=other_write)
            writer.start()
            assert not written.wait(1.0)  # held off while this transaction checks and writes
            return {"requested": None}

        b.store.update_job(job.id, load_resume=False, defaults=check)
        assert written.wait(30)
        assert b.store.get_job(job.id, resume=False).name == "renamed by a"  # type: ignore[union-attr]
    finally:
        b.stop()
        a.stop()
