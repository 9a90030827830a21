"""Leases on the jobs a process runs, so that servers of several hosts may share one job database.

A job's ``runner`` names the process that queued or runs it (``host:pid:start``,
:func:`~jupyter_staging.engine.processes.this_runner`). A server of the same host checks that process by its
pid and start time; a server of another host (JupyterHub named servers in two pods, one shared home and
job database) cannot. So the runner holds a lease, ``lease_expires_at`` (UTC): set with the runner (a new
job, a submitted one, one taken ``running``) and pushed on by the process's :class:`Heartbeat` every
``heartbeat_interval`` seconds, to :data:`LEASE_INTERVALS` intervals ahead. A server of another host takes
a job over only once its lease has expired (:func:`verdict`), claiming it with a conditional ``UPDATE``
(:func:`claim`): of two servers starting at once, one gets it. A cancel of a job whose lease expired ends it
at once, and so does a pause (paused).

A runner that misses its lease though alive (stopped, starved, its renewal stuck behind another write) may
find its job taken over: each beat compares the jobs renewed with those held, and the run of a job another
process took is interrupted (``superseded``) and records nothing; its final writes are conditional on
``runner`` still naming it. The same beat takes over (:mod:`~jupyter_staging.engine.recovery`) the jobs of
other processes whose lease expired, not only at a server's start. The lease outlasts the SQLite busy timeout
(:data:`~jupyter_staging.engine.database.SQLITE_BUSY_TIMEOUT`) by an interval with the default interval
(:func:`outlasts_lock_wait`).

A job of another host's runner without a lease was written by a release before leases (whose runner ids
were ``host:pid``): it is taken over at once, as those releases did. Lease times come from each host's
clock (UTC): keep them in sync (NTP), within a fraction of the lease.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, or_, select, update

from jupyter_staging.engine.database import SQLITE_BUSY_TIMEOUT
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.processes import KERNEL, KERNEL_PREFIX, parse_runner, runner_alive, runner_kind
from jupyter_staging.engine.store import JobRecord, Store, utcnow
from jupyter_staging.safety.redact import redact_text

log = logging.getLogger(__name__)

#: Seconds between two renewals of a process's leases, by default (``StagingApp.heartbeat_interval``): a
#: lease of 60 s, so a renewal that waited the whole SQLite busy timeout (30 s) still lands in time.
DEFAULT_HEARTBEAT_INTERVAL = 20.0
#: Heartbeat intervals a lease lasts: a runner is taken for dead after this many renewals missed.
LEASE_INTERVALS = 3

_JOBS = cast(Table, JobRecord.__table__)
#: The states a runner holds a job in (queued in its executor, or running).
HELD_STATES = (JobState.queued.value, JobState.running.value)


class Verdict(enum.Enum):
    """What the server reading a job's row knows of the process its ``runner`` names."""

    #: A live process of this host, or one of another host whose lease has not expired.
    ALIVE = "alive"
    #: A process of this host that is gone, or one of another host whose lease expired.
    DEAD = "dead"
    #: A process of another host holding no lease (a release before leases): nothing is known.
    UNLEASED = "unleased"


def lease_until(interval: float, now: datetime | None = None) -> datetime:
    """When a lease taken or renewed ``now`` (default: now) expires: :data:`LEASE_INTERVALS` heartbeat
    intervals of ``interval`` seconds later (aware UTC datetime)."""
    return (now or utcnow()) + timedelta(seconds=LEASE_INTERVALS * interval)


def outlasts_lock_wait(interval: float) -> bool:
    """Whether a lease renewed every ``interval`` seconds outlasts a renewal that waited the whole SQLite
    busy timeout (:data:`~jupyter_staging.engine.database.SQLITE_BUSY_TIMEOUT`, seconds) for another
    connection's write lock: the beat after a renewal lands before the lease it renewed expires."""
    return (LEASE_INTERVALS - 1) * interval > SQLITE_BUSY_TIMEOUT


def verdict(rec: JobRecord, *, host: str, now: datetime) -> Verdict:
    """Whether the runner of job ``rec`` (which names one) is alive, as seen at ``now`` from host ``host``
    (the host of the reader's own runner id): by its pid and start time on this host, by its lease on
    another. A lease running up to ``now`` exactly is taken as expired."""
    runner = rec.runner or ""
    if parse_runner(runner)[0] == host:
        return Verdict.ALIVE if runner_alive(runner, host) else Verdict.DEAD
    if rec.lease_expires_at is None:
        return Verdict.UNLEASED
    return Verdict.ALIVE if rec.lease_expires_at > now else Verdict.DEAD


def claim(store: Store, rec: JobRecord, runner: str, until: datetime) -> bool:
    """Make ``runner`` the runner of job ``rec``, its lease until ``until``, if its row is still as read:
    same state, same runner, its lease not renewed since (one conditional ``UPDATE``). Returns whether it
    did: False when another server claimed it first or its runner renewed its lease meanwhile."""
    lease = _JOBS.c.lease_expires_at
    old = rec.lease_expires_at
    kept = lease.is_(None) if old is None else or_(lease.is_(None), lease <= old)
    with store.session() as s:
        result = s.execute(
            update(_JOBS)
            .where(_JOBS.c.id == rec.id, _JOBS.c.state == rec.state, _JOBS.c.runner == rec.runner, kept)
            .values(runner=runner, lease_expires_at=until)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def renew(store: Store, runner: str, root: str, until: datetime) -> int:
    """Extend to ``until`` the leases of every queued or running job of root folder ``root`` whose runner
    is ``runner``: one ``UPDATE`` whatever their number (``updated_at`` is left alone: nothing about the
    jobs changed). Returns the number of jobs renewed."""
    with store.session() as s:
        result = s.execute(
            update(_JOBS)
            .where(_JOBS.c.runner == runner, _JOBS.c.root == root, _JOBS.c.state.in_(HELD_STATES))
            .values(lease_expires_at=until)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def runners_of(store: Store, job_ids: Collection[str]) -> dict[str, str | None]:
    """The ``runner`` of each of the jobs ``job_ids`` that exist (job id -> runner id): one ``SELECT``."""
    with store.read_session() as s:
        rows = s.execute(select(_JOBS.c.id, _JOBS.c.runner).where(_JOBS.c.id.in_(list(job_ids))))
        return {row.id: row.runner for row in rows}


def expired(store: Store, runner: str, root: str, now: datetime) -> list[str]:
    """The ids of the queued or running jobs of root folder ``root`` whose runner is not ``runner`` but of
    its kind (:func:`~jupyter_staging.engine.processes.runner_kind`) and whose lease ran out by ``now``: one
    ``SELECT`` on the indexed ``state`` (jobs to take over)."""
    lease = _JOBS.c.lease_expires_at
    of_kernels = _JOBS.c.runner.startswith(KERNEL_PREFIX, autoescape=True)
    same_kind = of_kernels if runner_kind(runner) == KERNEL else ~of_kernels
    with store.read_session() as s:
        query = select(_JOBS.c.id).where(
            _JOBS.c.state.in_(HELD_STATES),
            _JOBS.c.root == root,
            _JOBS.c.runner != runner,
            same_kind,
            lease <= now,
        )
        return list(s.execute(query).scalars())


def release(store: Store, runner: str, root: str) -> None:
    """End the leases of ``runner``'s queued and running jobs of ``root`` now (a server stopped with its
    runs ended): a server of another host may take them over at its start, without waiting for them to
    expire."""
    renew(store, runner, root, utcnow())


class Heartbeat:
    """A daemon thread that, every ``interval`` seconds, renews the leases of runner ``runner`` on the jobs of
    root folder ``root`` in ``store`` while it holds some (``held()``: the ids of the jobs it has a runner
    of; an idle server writes nothing), calls ``lost(ids)`` with those another process took meanwhile (the
    row's runner is another's: a lease missed), then ``recover()`` (the takeover of jobs whose lease
    expired). Beats begin ``interval`` seconds apart (a beat that took long is followed by a shorter pause).
    A failure (the database unreachable) is logged and tried again at the next beat. Raises
    :class:`ValueError` unless ``interval`` (seconds) is positive."""

    def __init__(
        self,
        store: Store,
        runner: str,
        root: str,
        interval: float,
        held: Callable[[], Collection[str]],
        lost: Callable[[list[str]], None] = lambda ids: None,
        recover: Callable[[], object] = lambda: None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive, not {interval}")
        self.store = store
        self.runner = runner
        self.root = root
        self.interval = interval
        self.held = held
        self.lost = lost
        self.recover = recover
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (nothing when it runs already)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="staging-lease-heartbeat", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread at its next wake-up (the leases it renewed run out unless :func:`release`\\ d);
        a beat under way ends first (:meth:`join`)."""
        self._stop.set()

    def join(self, timeout: float = 2 * SQLITE_BUSY_TIMEOUT) -> bool:
        """Wait up to ``timeout`` seconds for the thread, once stopped, to end: a beat under way (a renewal
        waiting for the database's write lock, a takeover) lands first. Returns whether the thread has
        ended (True too when it never started, or when called from the thread itself)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def beat(self) -> None:
        """Renew the leases once, now, and report the jobs lost (``lost``): when fewer rows were renewed
        than jobs are held, their runners are read (one more ``SELECT``). A job held but no longer queued
        or running (its run ending) is not lost."""
        held = set(self.held())  # before the renewal: each held job named this runner before it was held
        if not held:
            return
        if renew(self.store, self.runner, self.root, lease_until(self.interval)) >= len(held):
            return
        runners = runners_of(self.store, held)
        gone = sorted(i for i in held if i in runners and runners[i] != self.runner)
        if gone:
            self.lost(gone)

    def _loop(self) -> None:
        pause = self.interval
        while not self._stop.wait(pause):
            began = time.monotonic()  # the next beat one interval after this one began, not after it ended
            for step, what in ((self.beat, "renew the job leases"), (self.recover, "take over jobs")):
                try:
                    step()
                except Exception as exc:  # the next beat tries again; the lease runs LEASE_INTERVALS beats
                    log.warning("staging: could not %s of %s: %s", what, self.runner, redact_text(str(exc)))
            pause = max(0.0, self.interval - (time.monotonic() - began))
