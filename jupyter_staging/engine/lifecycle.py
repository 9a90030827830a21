"""The life of jobs around their runs: state changes and events, recovery, TTL expiry, cleanup policies.

:class:`JobLifecycle` is the part of the manager its runners see (its ``JobHost``): every state change is
persisted in the :class:`~jupyter_staging.engine.store.Store` before it is announced; jobs left running by a
process that died (of this host, or of another whose lease expired: :mod:`~jupyter_staging.engine.leases`)
are resumed by :class:`~jupyter_staging.engine.recovery.JobRecovery`; finished jobs past their
``expires_at`` are expired by the sweeper thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import Destination
from jupyter_staging.destinations.registry import open_destination
from jupyter_staging.engine.acks import output_in_place
from jupyter_staging.engine.describe import describe_job
from jupyter_staging.engine.executors import DEFAULT_CONCURRENT_ITEMS, DEFAULT_STREAMS_PER_FILE, Executor
from jupyter_staging.engine.expansion import DEFAULT_MAX_UNPACKED_BYTES
from jupyter_staging.engine.failure import record_failure
from jupyter_staging.engine.leases import HELD_STATES, Heartbeat, lease_until, release
from jupyter_staging.engine.models import TRANSITIONS, DescribeJob, JobState
from jupyter_staging.engine.processes import SERVER, parse_runner, this_runner
from jupyter_staging.engine.progress import PROGRESS_INTERVAL, LiveProgress
from jupyter_staging.engine.records import has_sealed, without_sealed
from jupyter_staging.engine.retention import apply_cleanup_policy, sweep
from jupyter_staging.engine.runner import JobRunner
from jupyter_staging.engine.store import JobRecord, Store, utcnow
from jupyter_staging.engine.transitions import Guard, JobEnded, StateChanged
from jupyter_staging.errors import InvalidState, JobInterrupted, JobNotFound, StagingError
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.redact import redact_text
from jupyter_staging.safety.sealed import SecretBox

log = logging.getLogger("jupyter_staging.engine.manager")

Listener = Callable[[dict[str, Any]], None]


class JobLifecycle:
    """Job state, events, recovery and cleanup of one staging area (the base of
    :class:`~jupyter_staging.engine.manager.StagingManager`; see its parameters)."""

    #: Most bytes one archive or compressed file may expand to (``unpack`` / ``decompress``).
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    #: Items (files) of one job staged at the same time (plain transfers).
    concurrent_items: int = DEFAULT_CONCURRENT_ITEMS
    #: Streams (byte ranges at once) of one large download from a range-capable source; 1: one stream.
    streams_per_file: int = DEFAULT_STREAMS_PER_FILE

    def __init__(
        self,
        *,
        store: Store,
        secrets: SecretBox,
        root_dir: Path,
        scratch_root: Path,
        source_roots: list[str] | None,
        executor: Executor,
        sweep_interval: float,
        heartbeat_interval: float,
        raise_open_files: bool = False,
        runner_kind: str = SERVER,
    ) -> None:
        self.store = store
        #: :meth:`start` raises the process's soft open-file limit (``raise_open_file_limit``).
        self.raise_open_files = raise_open_files
        self.secrets = secrets
        self.root_dir = root_dir
        self.scratch_root = scratch_root
        self.source_roots = source_roots
        self.executor = executor
        self._listeners: list[Listener] = []
        self._controls: dict[str, JobControl] = {}
        #: Runners made by :meth:`prepare`, not submitted yet.
        self._prepared: dict[str, JobRunner] = {}
        self._live: dict[str, LiveProgress] = {}
        self._lock = threading.RLock()
        self._done = threading.Condition(self._lock)
        self._stopped = False
        #: Identifies this process as the runner of the jobs it submits (``host:pid:start``, a kernel's
        #: prefixed ``kernel/``): it takes over only the jobs of runners of its kind (``runner_kind``).
        self.runner_id = this_runner(runner_kind)
        self.runner_kind = runner_kind
        #: The host of :attr:`runner_id`: runners of this host are checked by pid, others by their lease.
        self.host = parse_runner(self.runner_id)[0]
        #: Renews the leases of the jobs this process holds (a runner prepared or submitted).
        self.heartbeat = Heartbeat(
            store,
            self.runner_id,
            str(root_dir),
            heartbeat_interval,
            held=self._held,
            lost=self._lost,
            recover=self.recover_expired,
        )
        self.sweep_interval = sweep_interval
        self._sweeper: threading.Thread | None = None
        self._sweep_stop = threading.Event()

    # -- recovery, TTL expiry, cleanup policies -------------------------------------------------------

    def recover_expired(self) -> list[str]:
        """Take over the jobs whose lease expired (:class:`~jupyter_staging.engine.recovery.JobRecovery`)."""
        raise NotImplementedError

    def _held(self) -> list[str]:
        """The ids of the jobs this process has a runner of (prepared, queued or running)."""
        with self._lock:
            return list(self._controls)

    def _lost(self, job_ids: list[str]) -> None:
        """Interrupt the runs of jobs ``job_ids``, which other processes took over (this one missed their
        leases) or ended: each stops at its next block, ``superseded``, and records nothing."""
        for job_id in job_ids:
            with self._lock:
                control = self._controls.get(job_id)
            if control is not None and control.reason != "superseded":
                log.warning("staging job %s: taken over by another server, or ended: its run stops", job_id)
                control.interrupt("superseded")

    def lease_until(self) -> datetime:
        """When a lease this process takes or renews now expires (its heartbeat's ``lease_until``)."""
        return lease_until(self.heartbeat.interval)

    def _sweep_loop(self) -> None:
        while not self._sweep_stop.wait(self.sweep_interval):
            try:
                self.sweep()
            except Exception:
                log.exception("staging TTL sweep failed")

    def sweep(self, now: datetime | None = None) -> list[str]:
        """Expire finished jobs past their ``expires_at`` (:func:`~jupyter_staging.engine.retention.sweep`);
        returns their ids. Runs every ``sweep_interval`` seconds."""
        return sweep(self, now)

    def apply_cleanup_policy(
        self, job_id: str, outcome: JobState | None = None, *, policy: str | None = None
    ) -> None:
        """When a job ends, its cleanup policy
        (:func:`~jupyter_staging.engine.retention.apply_cleanup_policy`, whose arguments these are)."""
        apply_cleanup_policy(self, job_id, outcome, policy=policy)

    def stop(self, wait: bool = True) -> None:
        """Pause nothing, persist progress and stop workers. Running jobs stay ``running`` in the
        database so that the next :meth:`start` resumes them. With ``wait``, the heartbeat's beat under
        way ends first, then this process's leases are released (a server of another host takes the jobs
        over at once); a takeover under way claims no more jobs."""
        self._stopped = True
        self._sweep_stop.set()
        self.heartbeat.stop()
        with self._lock:
            controls = list(self._controls.values())
        for control in controls:
            control.interrupt("shutdown")
        self.executor.shutdown(wait=wait)
        if wait:  # its runs have ended: a server of another host may resume its jobs at once
            if not self.heartbeat.join():  # a renewal landing after the release would hold them a lease
                log.warning("staging: the lease heartbeat did not end; job leases released regardless")
            try:
                release(self.store, self.runner_id, str(self.root_dir))
            except Exception as exc:  # they expire on their own
                log.warning("staging: job leases not released: %s", type(exc).__name__)
        self.store.close()

    # -- listeners ----------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every job change; returns a function that unsubscribes.

        ``event`` is ``{"type": "job", "job": <DescribeJob as JSON dict>}``. Listeners are called from
        worker threads and must not block.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def announce(self, rec: JobRecord) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._done.notify_all()
        if not listeners:
            return
        event = {"type": "job", "job": self.describe(rec).model_dump(mode="json")}
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break a job
                log.exception("staging event listener failed")

    # -- the JobHost protocol: what runners call -----------------------------------------------------

    def raw_sources(self, rec: JobRecord) -> tuple[str, dict[str, str] | None]:
        """The job's source and manifest entries as submitted, secrets included (unsealed).

        For the job runner only: never log, show or store what this returns. Raises
        :class:`~jupyter_staging.errors.SecretUnavailable` when the sealing key changed."""
        if rec.sealed:
            raw = self.secrets.open(rec.sealed)
            return str(raw.get("source") or rec.source), raw.get("entries") or rec.entries
        return rec.source, rec.entries

    def destination_of(self, rec: JobRecord, *, in_place: bool = False) -> Destination:
        """The :class:`~jupyter_staging.destinations.base.Destination` job ``rec`` writes into: its
        destination, or — for a job replacing an earlier output, until it swapped its own in — the scratch
        folder beside it (so cleaning up a failed replacement never touches the output it did not replace).
        A record read without its resume data will do for a job whose output is in place: ``in_place`` (the
        caller knows), or :func:`~jupyter_staging.engine.acks.output_in_place`; for another it raises
        ``ResumeNotRead``."""
        in_place = in_place or (not rec.has_resume() and output_in_place(rec))
        swap = None if in_place else (rec.resume or {}).get("swap")
        folder = swap["into"] if swap and not swap.get("done") else rec.destination
        return open_destination(rec.id, folder, root_dir=self.root_dir, scratch_root=self.scratch_root)

    def set_state(
        self,
        job_id: str,
        state: JobState,
        *,
        events: Sequence[tuple[str, str]] = (),
        load_resume: bool = False,
        sealed_dropped: bool = False,
        when: Guard | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Persist ``state`` (and ``fields``, and the log lines ``events``: ``(level, message)``, redacted
        here) in one transaction, then announce it; a final state also drops the sealed secrets (reading
        the resume data for the sealed locators of its items, unless ``sealed_dropped``: the caller
        knows there are none, or sets ``resume`` without them; a listing of 20,000 files is megabytes of
        JSON to read). The transition is checked against the state read inside that transaction. Returns
        the job as updated, without its resume data unless ``load_resume`` or ``fields`` sets it. Raises
        :class:`JobNotFound` and :class:`InvalidState` (a transition the model forbids; nothing written;
        :class:`JobEnded` when it had ended already), :class:`StateChanged` when ``when(job)`` is false
        for the job as read in that transaction (a compare-and-set:
        :mod:`~jupyter_staging.engine.transitions`). Setting ``running`` makes this process the job's
        runner, under its lease."""

        def defaults(rec: JobRecord) -> dict[str, Any]:
            current = JobState(rec.state)
            if when is not None and not when(rec):
                raise StateChanged(f"job {job_id} is {current.value} (requested: {rec.requested}) now")
            # Without a guard, a job already in ``state`` is set again (two sweepers expiring one job);
            # with one, the guard decided.
            if (when is not None or state != current) and state not in TRANSITIONS[current]:
                ended = JobEnded if current.is_final else InvalidState
                raise ended(f"a {current.value} job cannot become {state.value}")
            if state == JobState.running:  # taken by this process's runner: its own, under its lease
                return {"runner": self.runner_id, "lease_expires_at": self.lease_until()}
            if not state.is_final:
                return {}
            # The raw source is needed to run, not to remember: drop the sealed copies.
            extra: dict[str, Any] = {"finished_at": utcnow(), "sealed": None}
            if rec.has_resume() and rec.resume and has_sealed(rec.resume):
                extra["resume"] = without_sealed(rec.resume)
            return extra

        updated = self.update_job(
            job_id,
            events=events,
            load_resume=load_resume or (state.is_final and not sealed_dropped),
            defaults=defaults,
            state=state.value,
            **fields,
        )
        self.announce(updated)
        return updated

    def update_job(
        self,
        job_id: str,
        *,
        events: Sequence[tuple[str, str]] = (),
        load_resume: bool = False,
        defaults: Callable[[JobRecord], dict[str, Any]] | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Persist ``fields`` of job ``job_id`` with the log lines ``events`` (``(level, message)``, redacted
        here, then echoed to this process's log) in one transaction, without announcing it
        (:meth:`~jupyter_staging.engine.store.Store.update_job`). Returns the job as updated. Raises
        :class:`JobNotFound`."""
        lines = [(level, redact_text(message)) for level, message in events]
        updated = self.store.update_job(
            job_id, load_resume=load_resume, events=lines, defaults=defaults, **fields
        )
        if updated is None:
            raise JobNotFound(f"no staging job {job_id!r}")
        for level, message in lines:
            echo_event(job_id, level, message)
        return updated

    def write_chunks(
        self,
        job_id: str,
        new: list[dict[str, Any]],
        updates: dict[str, dict[str, Any]],
        *,
        events: Sequence[tuple[str, str]] = (),
        load_job: bool = False,
        **fields: Any,
    ) -> JobRecord | None:
        """Write chunk rows, columns of the job and its log lines ``events`` (redacted here, then echoed
        to this process's log) in one transaction (:meth:`~jupyter_staging.engine.store.Store.write_chunks`,
        whose arguments and result these are), only while the job is queued or running under this process:
        else nothing is written, the run is interrupted and :class:`JobInterrupted` (``superseded``) is
        raised."""
        lines = [(level, redact_text(message)) for level, message in events]
        try:  # only while the job is this process's: a run that lost it writes nothing, and stops
            rec = self.store.write_chunks(
                job_id, new, updates, load_job=load_job, events=lines, held_by=self.runner_id, **fields
            )
        except JobInterrupted:
            self._lost([job_id])
            raise
        for level, message in lines:
            echo_event(job_id, level, message)
        return rec

    def log_event(self, job_id: str, level: str, message: str) -> None:
        """Add ``message`` (redacted) to the job's log and to this process's log at ``level``."""
        message = redact_text(message)
        self.store.add_event(job_id, level, message)
        echo_event(job_id, level, message)

    def attach_live(self, job_id: str, live: LiveProgress) -> None:
        """Register the running job's in-memory progress counters (read by :meth:`describe`)."""
        with self._lock:
            self._live[job_id] = live

    def prepare(self, job_id: str) -> None:
        """Make the :class:`JobRunner` of job ``job_id`` and register its control, to be started by
        :meth:`submit`: from now on a pause or cancel is a request the runner honours when it starts."""
        runner = JobRunner(self, job_id)
        with self._lock:
            self._controls[job_id] = runner.control
            self._prepared[job_id] = runner

    def submit(self, job_id: str, *, recorded: bool = False) -> None:
        """Hand job ``job_id`` to the executor (the runner :meth:`prepare` made, else a new runner; not
        while a run of this process holds it and was not asked to stop), this process its runner (in the
        database already when ``recorded``: admission stores it with a new job)."""
        with self._lock:
            runner = self._prepared.pop(job_id, None)
            held = self._controls.get(job_id)
        if self._stopped or (runner is None and held is not None and not held.interrupted):
            return  # a run of this process holds it already (a takeover and a resume at once)
        if runner is None:
            runner = JobRunner(self, job_id)
        if not recorded:
            self.store.update_job(
                job_id, load_resume=False, runner=self.runner_id, lease_expires_at=self.lease_until()
            )
        with self._lock:
            self._controls[job_id] = runner.control
        try:
            self.executor.submit(runner.run)
        except RuntimeError:  # the executor shut down since the check above: the next start takes it over
            log.info("staging job %s stays queued for this server's next start", job_id)

    def finish_cancelled(self, job_id: str, when: Guard) -> bool:
        """Remove the job's output and end it ``cancelled`` if it passes ``when``
        (:class:`~jupyter_staging.engine.steering.JobSteering`)."""
        raise NotImplementedError

    def finish_paused(self, job_id: str) -> None:
        """End a running job's run ``paused``, or ``cancelled`` when a cancel is pending
        (:class:`~jupyter_staging.engine.steering.JobSteering`)."""
        raise NotImplementedError

    def report_progress(self, job_id: str, *, force: bool = False) -> None:
        """Persist and announce the live counters, at most every :data:`PROGRESS_INTERVAL` seconds unless
        ``force``; relays a pause / cancel that another process requested through the database. Nothing is
        written once the job is not queued or running under this process: its run is stopped instead."""
        live = self._live.get(job_id)
        if live is None:
            return
        now = time.monotonic()
        with live.lock:
            if not force and now - live.last_flush < PROGRESS_INTERVAL:
                return
            live.last_flush = now
            live.rate = live.meter.sample(live.bytes_done, now)
            bytes_done, rows_done = live.persisted()
        # Written only while the job is this process's: else it stops (taken over, or ended by another run).
        row = self.store.set_job_fields(
            job_id, held_by=self.runner_id, bytes_done=bytes_done, rows_done=rows_done
        )
        if row is None:
            return
        if row["runner"] != self.runner_id or row["state"] not in HELD_STATES:
            self._lost([job_id])
            return
        if row["requested"] in (JobState.paused.value, JobState.cancelled.value):
            with self._lock:
                control = self._controls.get(job_id)
            if control is not None and not control.interrupted:
                control.interrupt(row["requested"])
        with self._lock:
            heard = bool(self._listeners)
            self._done.notify_all()
        if heard:  # the record is read only when someone listens (never its resume data)
            rec = self.store.get_job(job_id, resume=False)
            if rec is not None:
                self.announce(rec)

    def fail(self, job_id: str, error: StagingError | Exception, when: Guard | None = None) -> None:
        """End the job ``failed`` with the error's code, if it is still this process's and passes ``when``
        (:func:`~jupyter_staging.engine.failure.record_failure`). Raises :class:`JobNotFound`."""
        record_failure(self, job_id, error, when)

    def still_held(self, job_id: str) -> bool:
        """Whether job ``job_id`` is still this process's to end: not ended (a final state), its runner
        still this process. When not, this process's log says so (a warning): a run finding it so as it
        ends records nothing (another run of it, or a verb, ended it first; another server took it over)."""
        rec = self.store.get_job(job_id, resume=False)
        if rec is None:
            return False
        if JobState(rec.state).is_final:
            why = f"{rec.state} already"
        elif rec.runner != self.runner_id:
            why = f"taken over by {rec.runner} (this run missed its lease)"
        else:
            return True
        log.warning("staging job %s: %s as this run ended; the run's end is not recorded", job_id, why)
        return False

    def release(self, job_id: str, control: JobControl, live: LiveProgress) -> None:
        """Forget the ``control`` and ``live`` counters of a runner of job ``job_id`` that has returned,
        unless they are another run's already: a job paused and at once resumed has its next runner
        registered before the last one returns."""
        with self._lock:
            if self._controls.get(job_id) is control:
                del self._controls[job_id]
            if self._live.get(job_id) is live:
                del self._live[job_id]

    def _record(self, job_id: str, owner: str | None, *, resume: bool = True) -> JobRecord:
        """Job ``job_id`` of this root (and of ``owner`` when given; without its resume data unless
        ``resume``). Raises :class:`JobNotFound` for unknown and foreign ids."""
        rec = self.store.get_job(job_id, resume=resume)
        if rec is None or rec.root != str(self.root_dir) or (owner is not None and rec.owner != owner):
            raise JobNotFound(f"no staging job {job_id!r}")
        return rec

    def describe(self, rec: JobRecord, live: Mapping[str, LiveProgress] | None = None) -> DescribeJob:
        """The API view of ``rec``, with the live counters of a job running in this process: those of
        ``live`` (:meth:`live_counters`, taken before ``rec`` was read) when given, else those registered
        now (right for a record its own runner just wrote; for a record read by anyone else, use
        :meth:`current`)."""
        return describe_job(rec, (self._live if live is None else live).get(rec.id))

    def live_counters(self) -> dict[str, LiveProgress]:
        """The live counters of the jobs running in this process (job id -> counters), to be taken
        *before* their records are read. A runner ends by writing its final counters with its final state,
        then forgets its live ones (:meth:`release`): a record read before that end with counters looked up
        after it would be a running job's lagging record (persisted every :data:`PROGRESS_INTERVAL`)
        without its counters, and its progress would go back for one read."""
        with self._lock:
            return dict(self._live)

    def current(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """The API view of job ``job_id`` as it is now: its live counters taken, then its record read
        (:meth:`live_counters`). Raises :class:`JobNotFound` for unknown and foreign ids."""
        with self._lock:
            live = self._live.get(job_id)
        rec = self._record(job_id, owner, resume=False)
        return describe_job(rec, live)


def echo_event(job_id: str, level: str, message: str) -> None:
    """Write a line of a job's log (already redacted) to this process's log at ``level``."""
    getattr(log, level if level in ("info", "warning", "error") else "info")(
        "staging job %s: %s", job_id, message
    )
