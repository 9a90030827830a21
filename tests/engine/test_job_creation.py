"""Creating a job costs one commit, and a request's write is not queued behind running jobs' (issue 12).

``POST /jobs`` answered in 15-60 ms with its p99 made of waits: three commits per job, each queued behind
the bookkeeping transactions of the jobs started by earlier requests (a ``threading.RLock`` that the
releasing thread takes again before a waiter wakes), and SQLite's automatic checkpoint (an fsync) run
inside whichever commit crossed 1,000 pages. These tests pin the remedies without timing anything: the
store's write lock is granted in order (a request's first), a new job, its runner and its first log lines
are one transaction, and checkpoints happen on the store's own thread.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections import deque
from pathlib import Path

import pytest
from sqlalchemy import event

from jupyter_staging.engine import database
from jupyter_staging.engine.database import FairLock
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import JobRecord, Store, utcnow
from tests.helpers.data import KEPLER, wait_until
from tests.helpers.managers import unstarted_manager


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    return Path(shutil.copyfile(KEPLER, folder / KEPLER.name))


def count_commits(store: Store) -> list[int]:
    """A list that grows by one at every commit of ``store``'s engine that wrote something (reads
    commit too)."""
    commits: list[int] = []
    wrote: set[int] = set()

    def statement(conn, _cursor, text, *_args) -> None:
        if text.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            wrote.add(id(conn))

    def commit(conn) -> None:
        if id(conn) in wrote:
            wrote.discard(id(conn))
            commits.append(1)

    event.listen(store.engine, "before_cursor_execute", statement)
    event.listen(store.engine, "commit", commit)
    return commits


def queue_on(lock: FairLock, order: list[str], name: str, *, first: bool = False) -> threading.Thread:
    """Start a thread that takes ``lock`` (``first`` or not), appends ``name`` to ``order`` and releases
    it; returns once the thread waits in the lock's queue."""
    queued = len(lock._waiters)

    def take() -> None:
        lock.acquire(first)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=take, name=f"waiter-{name}")
    thread.start()
    wait_until(lambda: len(lock._waiters) > queued, timeout=30)
    return thread


def test_write_lock_is_granted_in_order_and_a_first_waiter_goes_before_the_queue():
    lock = FairLock()
    order: list[str] = []
    lock.acquire()
    threads = [queue_on(lock, order, name) for name in ("job-1", "job-2")]
    threads.append(queue_on(lock, order, "request", first=True))
    threads.append(queue_on(lock, order, "job-3"))
    lock.release()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["request", "job-1", "job-2", "job-3"]


def test_requests_go_first_among_themselves_in_arrival_order():
    lock = FairLock()
    order: list[str] = []
    lock.acquire()
    threads = [queue_on(lock, order, "job-1")]
    threads += [queue_on(lock, order, name, first=True) for name in ("request-1", "request-2")]
    lock.release()
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["request-1", "request-2", "job-1"]


def test_an_interrupted_wait_leaves_the_lock_usable():
    """A wait broken by an exception (a signal's, as a kernel interrupt raises KeyboardInterrupt) takes its
    place out of the queue: the next release hands the lock to a thread that still waits."""
    lock = FairLock()
    order: list[str] = []
    holder_may_release = threading.Event()

    def hold() -> None:
        lock.acquire()
        holder_may_release.wait(30)
        lock.release()

    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lambda: lock._owner is not None, timeout=30)

    class Interrupted(Exception):
        pass

    def interrupt(_signum, _frame) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            lock.acquire()  # this (main) thread waits; the alarm breaks the wait
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert lock._waiters == deque()
    waiter = queue_on(lock, order, "other")
    holder_may_release.set()
    holder.join(timeout=30)
    waiter.join(timeout=30)
    assert order == ["other"] and lock._owner is None


def test_write_lock_is_reentrant_and_free_once_released_as_often_as_taken():
    lock = FairLock()
    order: list[str] = []
    lock.acquire()
    lock.acquire()  # a session inside a session of the same thread
    waiter = queue_on(lock, order, "other")
    lock.release()
    assert order == [] and waiter.is_alive()  # still held once
    lock.release()
    waiter.join(timeout=30)
    assert order == ["other"]
    lock.acquire()  # free again: taken at once by this thread
    lock.release()


def test_a_new_job_its_runner_and_first_log_lines_are_one_commit(manager, source):
    commits = count_commits(manager.store)
    job, created = manager.create(CreateJob(source=str(source), destination="staging/one"), start=False)
    assert created and len(commits) == 1
    rec = manager.store.get_job(job.id, resume=False)
    assert rec is not None and rec.state == "queued" and rec.runner == manager.runner_id
    lines = manager.job_log(job.id)
    assert [line["level"] for line in lines] == ["info"]
    assert lines[0]["message"].startswith("job created: ") and "staging/one (copy)" in lines[0]["message"]
    # Not started until the caller submits it (the server does once its answer is written).
    assert manager.get(job.id).state.value == "queued"
    manager.submit(job.id, recorded=True)
    done = manager.wait(job.id, timeout=120)
    assert done.state.value == "succeeded", done.error
    assert (manager.root_dir / "staging/one" / KEPLER.name).read_bytes() == KEPLER.read_bytes()
    assert manager.job_log(job.id)[0]["message"] == lines[0]["message"]  # still the first line


def test_create_starts_the_job_by_default_and_a_repeat_adds_no_job(manager, source):
    body = CreateJob(source=str(source), destination="staging/two", idempotency_key="k-2")
    job, created = manager.create(body)
    assert created
    assert manager.wait(job.id, timeout=120).state.value == "succeeded"
    commits = count_commits(manager.store)
    again, created_again = manager.create(body)
    assert again.id == job.id and not created_again and commits == []


def test_an_idempotency_key_is_the_roots_own_in_a_database_shared_by_two_roots(manager, source, tmp_path):
    (tmp_path / "other").mkdir()
    other = unstarted_manager(tmp_path / "other", tmp_path)  # a second project of the same user, same DB
    other.start()
    try:
        body = CreateJob(source=str(source), destination="staging/run", idempotency_key="run-42")
        first, _ = manager.create(body)
        second, created = other.create(body)
        assert created and second.id != first.id  # was: 404 job_not_found, naming a job it cannot show
        assert other.wait(second.id, timeout=120).state.value == "succeeded"
        assert (tmp_path / "other/staging/run" / KEPLER.name).read_bytes() == KEPLER.read_bytes()
        again, created_again = other.create(body)
        assert again.id == second.id and not created_again
    finally:
        other.stop()


def test_add_job_writes_the_job_and_its_lines_in_one_transaction(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    commits = count_commits(store)
    now = utcnow()
    rec = JobRecord(
        **dict(id="j-1", owner="me", root="/r", name="n", source="/s", destination="d", method="copy"),
        **dict(state="queued", cleanup_policy="retain", created_at=now, updated_at=now, resume={}),
    )
    store.add_job(rec, [("info", "first"), ("warning", "second")])
    assert len(commits) == 1
    assert [(e.level, e.message) for e in store.list_events("j-1")] == [
        ("info", "first"),
        ("warning", "second"),
    ]
    store.delete_job("j-1")
    assert store.get_job("j-1") is None and store.list_events("j-1") == []
    store.close()


def test_sqlite_checkpoints_run_on_the_store_thread_not_in_commits(tmp_path, monkeypatch):
    monkeypatch.setattr(database, "CHECKPOINT_DELAY", 0.01)
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    seen: list[tuple[str, str]] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        if "wal_checkpoint" in statement:
            seen.append((threading.current_thread().name, statement))

    event.listen(store.engine, "before_cursor_execute", record)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0  # none inside a commit
    now = utcnow()
    for i in range(3):
        rec = JobRecord(
            **dict(id=f"j-{i}", owner="me", root="/r", name="n", source="/s", destination=f"d{i}"),
            **dict(method="copy", state="queued", cleanup_policy="retain", created_at=now, updated_at=now),
        )
        store.add_job(rec, [("info", "created")])
    wait_until(lambda: bool(seen), timeout=30)
    assert {name for name, _ in seen} == {"staging-db-checkpoint"}
    assert all("wal_checkpoint(PASSIVE)" in statement for _, statement in seen)
    store.close()
