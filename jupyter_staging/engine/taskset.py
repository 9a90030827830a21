"""The tasks of one job on a Dask cluster, as its runner in the server sees them.

:class:`JobTasks` is one run of one job on the executor's ``distributed.Client``: it adds the bytes and
rows its tasks report (Dask structured events on the job's topic) to the job's live progress, and keeps
:attr:`LiveProgress.tasks` (queued, running, done, running per worker) up to date, about once a second.

A :class:`TaskBatch` is what one of the runner's threads waits for together (a folder's files, one manifest
entry's files, the ranges of a file): it submits tasks (:mod:`jupyter_staging.engine.tasks`) and hands their
results back in the order they finish, so the runner records chunks as on its own threads. Meanwhile it

- relays a pause or cancel of the job to its running tasks (the batch's control ``distributed.Variable``;
  tasks poll it) and cancels its queued ones, then raises :class:`JobInterrupted`;
- stops its other tasks the same way when one fails, then raises that task's error (other batches of the
  job, such as other manifest entries, go on); in an *isolated* batch (the grouped entries of a manifest,
  each of which fails alone) a failed task is handed back as a :class:`BatchFailure` instead and the others
  go on.

A task whose worker dies is run again by the scheduler (``distributed.scheduler.allowed-failures``; once
they are spent, the batch fails with :class:`~jupyter_staging.errors.WorkerKilled`); one that raises is run
again :data:`TASK_RETRIES` times, unless its error is one of
:data:`~jupyter_staging.engine.taskoutcomes.FINAL_ERRORS`, which running it again would only repeat: that
task fails the batch at once.

A cluster lost under the job (its scheduler stopped, or restarted: Dask then cancels every task of the
client) fails the run with :class:`~jupyter_staging.errors.ClusterUnavailable`, never as a cancel: only
the job's own control says whether someone paused or cancelled it. From then on, every call of the run to
the scheduler raises it at once (:meth:`JobTasks.scheduler_call`), and stopping and closing skip the
scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from jupyter_staging.engine.daskwait import wait_for, within
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.taskoutcomes import BatchFailure, TaskFailed, on_worker
from jupyter_staging.engine.tasks import RUN, TaskContext
from jupyter_staging.errors import (
    ClusterUnavailable,
    JobInterrupted,
    StagingError,
    WorkerKilled,
)
from jupyter_staging.safety.control import JobControl

log = logging.getLogger(__name__)

#: Times a task that raised is run again (a lost connection, a full worker).
TASK_RETRIES = 2
#: Seconds the runner's thread waits for a task to finish before it looks at the job's control again.
WAIT_SECONDS = 0.25
#: Seconds between two updates of the task counts (one request to the scheduler each).
COUNT_SECONDS = 1.0
#: Seconds the running tasks of a stopping batch are given to notice and end.
STOP_SECONDS = 60.0
#: Levels of the log lines tasks send (:meth:`JobControl.log`'s).
LOG_LEVELS = ("info", "warning", "error")
#: Log lines from tasks kept until the runner's thread adds them; later ones are dropped.
MAX_LOGS_KEPT = 1000
#: Errors of a call to the scheduler meaning it cannot be reached: a connection refused, closed
#: (``CommClosedError``) or timed out (``OSError``), a client whose connections were closed as it gave up
#: reconnecting (``RuntimeError: ConnectionPool is closed``). Any error of a client that is no longer
#: running counts too (``ClosedClientError``, ``AttributeError`` of its scheduler gone).
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, RuntimeError)
#: Seconds the run waits for one call to the scheduler (the tasks it handed out, a control variable set):
#: a scheduler that hangs with its connections open (a frozen node) fails the run ``cluster_unavailable``,
#: or ends it paused or cancelled when that was asked, instead of waiting for ever.
SCHEDULER_SECONDS = 30.0
#: The ``reason`` of the cancel Dask gives the futures of a client that lost its scheduler.
CONNECTION_LOST = "scheduler-connection-lost"


class JobTasks:
    """One run of job ``ctx.job_id`` on ``client`` (a ``distributed.Client``): ``control`` is the job's
    control in the server, ``live`` its live counters, ``report`` persists and announces its progress.
    :meth:`close` when the run ends."""

    def __init__(
        self,
        client: Any,
        ctx: TaskContext,
        control: JobControl,
        live: LiveProgress,
        report: Callable[[], None],
    ) -> None:
        self.client = client
        #: The scheduler's address: calls left blocked on it hold back no other's (:func:`within`).
        self.scheduler = str(getattr(getattr(client, "scheduler", None), "address", "") or "")
        self.ctx = ctx
        self.control = control
        self.live = live
        self.report = report
        self._batches = itertools.count()
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # keys of every batch's unfinished tasks
        self._done = 0
        self._counted = 0.0
        #: Lines for the job's log its tasks sent (:meth:`TaskControl.log`), added by :meth:`flush_logs`.
        self._logs: list[tuple[str, str]] = []
        #: Task key -> (its try that reported last, bytes and rows that try reported).
        self._tries: dict[str, tuple[str, int, int]] = {}
        #: Why the cluster is lost to this run (the message of its ClusterUnavailable), or None.
        self.lost: str | None = None
        # Deferred: distributed is the optional dask extra; this module runs only with it.
        from distributed import Variable

        with self.scheduler_call():
            self._run = Variable(ctx.run_key, client=client)
            within(SCHEDULER_SECONDS, self._run.set, ctx.attempt, scheduler=self.scheduler)
            client.subscribe_topic(ctx.topic, self._on_event)

    @contextlib.contextmanager
    def scheduler_call(self) -> Iterator[None]:
        """Around the run's calls to the Dask scheduler (and its client). Raises
        :class:`ClusterUnavailable` at once, calling nothing, when the cluster was lost to this run
        already; and when a call fails for want of the cluster (:data:`CONNECTION_ERRORS`, or any error of
        a client that is closing or closed), which is remembered (:meth:`cluster_lost`)."""
        if self.lost is not None:
            raise ClusterUnavailable(self.lost)
        try:
            yield
        except Exception as exc:
            if not isinstance(exc, CONNECTION_ERRORS) and self.client.status == "running":
                raise
            raise self.cluster_lost(f"it cannot be reached: {type(exc).__name__}") from exc

    def cluster_lost(self, why: str) -> ClusterUnavailable:
        """Record that the cluster is lost to this run (``why``, for the job's error: no address, it may
        hold credentials); returns the :class:`ClusterUnavailable` to raise."""
        with self._lock:
            if self.lost is None:
                self.lost = (
                    f"the connection to the Dask scheduler was lost while the job ran ({why}); run the job "
                    "again once the cluster is back"
                )
            return ClusterUnavailable(self.lost)

    def batch(self, *, isolated: bool = False) -> TaskBatch:
        """A new :class:`TaskBatch` of this job (a context manager); ``isolated``: a task that fails is
        handed back as a :class:`BatchFailure`, the batch goes on."""
        ctx = dataclasses.replace(self.ctx, batch=str(next(self._batches)))
        return TaskBatch(self, ctx, isolated=isolated)

    def take_back(self, key: str) -> None:
        """Take the bytes and rows that task ``key`` reported out of the job's live progress: a task that
        failed and whose files are staged again by other tasks, which count them again (those its tries
        published too: they take them back)."""
        with self._lock:
            _, sent_bytes, sent_rows = self._tries.pop(key, ("", 0, 0))
        with self.live.lock:
            self.live.bytes_done -= sent_bytes
            self.live.rows_done -= sent_rows

    def close(self, *, forget_run: bool = True) -> None:
        """Stop listening to the job's progress events and forget its task counts, and with
        ``forget_run`` its current run: the run variable is deleted only while it still names this run.
        A run that was interrupted (paused, cancelled, the server stopping) passes False: a job paused and
        resumed at once may have a newer run that set the variable between this run's look and its
        deletion, whose tasks would then wait for it in vain (and fail after 30 s). The variable is
        deleted by the run that ends the job.

        A cluster that cannot be reached is not an error here (its variables are gone with it, or stay
        unused); the scheduler is not called at all once the cluster was lost to this run."""
        with contextlib.suppress(ClusterUnavailable), self.scheduler_call():  # no events are coming then
            self.client.unsubscribe_topic(self.ctx.topic)
        try:
            self.flush_logs()  # sent by a task before the run ended (one that failed it, too)
        except Exception:  # the job's log is not written (its database gone): the run's own error counts
            log.warning(
                "job %s: lines its Dask tasks sent for its log were not written",
                self.ctx.job_id,
                exc_info=True,
            )
        with self.live.lock:
            self.live.tasks = None
        if forget_run and self.lost is None:
            try:
                self._forget_run()
            except ClusterUnavailable:
                log.warning(
                    "job %s: the Dask scheduler left before the run's variable was deleted", self.ctx.job_id
                )

    def _forget_run(self) -> None:
        """Delete the run variable while it names this run (:meth:`close`)."""
        with self.scheduler_call():
            try:
                current = self._run.get(timeout=5)
            except (TimeoutError, asyncio.TimeoutError):  # gone already
                current = None
            if current == self.ctx.attempt:
                within(SCHEDULER_SECONDS, self._run.delete, scheduler=self.scheduler)

    def track(self, key: str, *, done: bool = False) -> None:
        """Count task ``key`` as submitted, or (``done``) as ended."""
        with self._lock:
            if done:
                if key in self._pending:
                    self._pending.discard(key)
                    self._done += 1
            else:
                self._pending.add(key)

    def forget(self, keys: list[str]) -> None:
        """Stop counting tasks that were cancelled or abandoned."""
        with self._lock:
            self._pending.difference_update(keys)

    def running_keys(self) -> set[str]:
        """Keys of the tasks the scheduler has handed to workers (one scheduler request). Raises
        :class:`ClusterUnavailable` (:meth:`scheduler_call`)."""
        with self.scheduler_call():
            return {key for keys in self._processing().values() for key in keys}

    def _processing(self) -> dict[Any, Any]:
        """``Client.processing()`` (worker -> keys of the tasks it runs) within :data:`SCHEDULER_SECONDS`
        (``TimeoutError`` past them: ``processing()`` has no time limit of its own)."""
        client = self.client
        return dict(
            client.sync(client.scheduler.processing, workers=None, callback_timeout=SCHEDULER_SECONDS)
        )

    def count(self, *, force: bool = False) -> None:
        """Update the live task counts (one scheduler request, at most every :data:`COUNT_SECONDS`).
        Raises :class:`ClusterUnavailable` (:meth:`scheduler_call`)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._counted < COUNT_SECONDS:
                return
            self._counted = now
            ours, done = set(self._pending), self._done
        workers: dict[str, int] = {}
        if ours:
            with self.scheduler_call():
                processing = self._processing()
            for worker, keys in processing.items():
                running = sum(1 for key in keys if key in ours)
                if running:
                    workers[str(worker)] = running
        running = sum(workers.values())
        with self.live.lock:
            self.live.tasks = {
                "queued": max(0, len(ours) - running),
                "running": running,
                "done": done,
                "workers": workers,
            }

    def flush_logs(self) -> None:
        """Add the lines the job's tasks sent for its log (on the runner's thread: a database write each)."""
        with self._lock:
            lines, self._logs = self._logs, []
        for level, message in lines:
            self.control.log(level, message)

    def _on_event(self, event: Any) -> None:
        """A task's event (on the client's event loop): progress is added to the live counters; a line for
        the job's log is kept for :meth:`flush_logs` (no database write on the event loop)."""
        _, message = event
        if not isinstance(message, dict) or message.get("attempt", self.ctx.attempt) != self.ctx.attempt:
            return  # a task of another run of the job (the topic is the job's), stopping
        line = message.get("log")
        if isinstance(line, (list, tuple)) and len(line) == 2 and line[0] in LOG_LEVELS:
            with self._lock:
                if len(self._logs) < MAX_LOGS_KEPT:
                    self._logs.append((str(line[0]), str(line[1])))
        added = int(message.get("bytes", 0)), int(message.get("rows", 0))
        bytes_done, rows_done = self._counted_once(message.get("task"), message.get("attempt_try"), *added)
        with self.live.lock:
            self.live.bytes_done += bytes_done
            self.live.rows_done += rows_done

    def _counted_once(
        self, task: Any, attempt_try: Any, added_bytes: int, added_rows: int
    ) -> tuple[int, int]:
        """What ``added_bytes`` / ``added_rows`` from try ``attempt_try`` of task ``task`` add to the job:
        when it is a new try of a task that reported before (Dask ran it again, from its start), less what
        the earlier try reported."""
        if not task or not attempt_try or not (added_bytes or added_rows):
            return added_bytes, added_rows
        with self._lock:
            last, sent_bytes, sent_rows = self._tries.get(task, (attempt_try, 0, 0))
            if last != attempt_try:  # what the earlier try counted is counted again by this one
                self._tries[task] = (attempt_try, added_bytes, added_rows)
                return added_bytes - sent_bytes, added_rows - sent_rows
            self._tries[task] = (attempt_try, sent_bytes + added_bytes, sent_rows + added_rows)
        return added_bytes, added_rows


class TaskBatch:
    """Tasks of ``job`` that one thread of the runner waits for together; a context manager whose exit
    stops what still runs and deletes the batch's control variable (neither when the cluster is lost).
    Raises :class:`ClusterUnavailable` when the scheduler cannot be reached."""

    def __init__(self, job: JobTasks, ctx: TaskContext, *, isolated: bool = False) -> None:
        # Deferred: distributed is the optional dask extra; this module runs only with it.
        from distributed import Variable

        self.job = job
        self.ctx = ctx
        #: A failed task is handed back as a BatchFailure (the others go on), not raised.
        self.isolated = isolated
        with job.scheduler_call():
            self._variable = Variable(ctx.control_key, client=job.client)
            within(SCHEDULER_SECONDS, self._variable.set, RUN, scheduler=job.scheduler)
        self._pending: dict[Any, Any] = {}  # future -> tag

    def __enter__(self) -> TaskBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pending:
                self._stop("cancelled")
        finally:
            # Gone with its scheduler, if lost: the batch's own outcome (or error) stands.
            with contextlib.suppress(ClusterUnavailable), self.job.scheduler_call():
                within(SCHEDULER_SECONDS, self._variable.delete, scheduler=self.job.scheduler)

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        tag: Any,
        retries: int = TASK_RETRIES,
        counted: bool = True,
        **kwargs: Any,
    ) -> None:
        """Run ``fn(*args, **kwargs)`` on a worker (again up to ``retries`` times when it raises); its
        result comes back from :meth:`results` with ``tag``. ``counted``: part of the job's work, shown in
        its task counts (False for the checks before it: the probe, a look at the source)."""
        key = f"staging-{fn.__name__}-{self.ctx.job_id[:8]}-{uuid.uuid4().hex[:12]}"
        with self.job.scheduler_call():
            future = self.job.client.submit(
                on_worker, fn, *args, key=key, pure=False, retries=retries, **kwargs
            )
        self._pending[future] = tag
        if counted:
            self.job.track(key)

    def results(self) -> Iterator[tuple[Any, Any]]:
        """``(tag, result)`` of each task as it finishes (tasks submitted meanwhile included), until none
        is left. Raises :class:`JobInterrupted` when the job is paused or cancelled, or the first task's
        error (:class:`ClusterUnavailable` when the cluster was lost, :class:`WorkerKilled` when every
        worker that ran a task died); either way, every other task of the batch has ended first (or was
        lost with the cluster)."""
        control = self.job.control
        while self._pending:
            if control.interrupted:
                self._stop(control.reason or "cancelled")
                raise JobInterrupted(control.reason or "cancelled")
            wait_for(list(self._pending), WAIT_SECONDS, every=False)
            try:
                self.job.count()
            except ClusterUnavailable:
                if control.interrupted:  # asked while the scheduler hung: a pause or cancel, not a failure
                    raise JobInterrupted(control.reason or "cancelled") from None
                raise
            self.job.report()
            self.job.flush_logs()
            for future in [f for f in self._pending if f.done()]:
                tag = self._pending.pop(future)
                self.job.track(future.key, done=True)
                yield tag, self._result(future)
        self.job.count(force=True)
        self.job.flush_logs()

    def _result(self, future: Any) -> Any:
        """The future's result; on its error (raised, or returned as :class:`TaskFailed`), stop the batch's
        other tasks and raise it, or in an isolated batch return it as a :class:`BatchFailure` (not a
        pause, a cancel or the cluster lost: those stop the batch and are raised)."""
        error: object
        if future.status == "finished":
            with self.job.scheduler_call():  # the result is fetched from the worker that holds it
                result = future.result(timeout=SCHEDULER_SECONDS)
            if not isinstance(result, TaskFailed):
                return result
            error = result.error
        elif future.status == "error":
            error = _worker_killed(future.exception())
        else:
            error = self._not_finished(future)
        if self.isolated and isinstance(error, Exception):
            if not isinstance(error, (JobInterrupted, ClusterUnavailable)):
                return BatchFailure(error, str(future.key))
        self._stop("failed")
        control = self.job.control
        if isinstance(error, JobInterrupted) and control.interrupted:
            raise JobInterrupted(control.reason or error.reason)
        if isinstance(error, BaseException):
            raise error
        raise StagingError(f"a task ended {future.status}")

    def _not_finished(self, future: Any) -> BaseException:
        """Why a task of the batch ended neither finished nor failed: cancelled by Dask, since the batch
        cancels its own only once it stopped waiting for them. :class:`JobInterrupted` when the job's
        control was interrupted (a pause or cancel relayed), else :class:`ClusterUnavailable`: the client
        lost its scheduler (Dask cancels every future of the client), or the cluster cancelled the task."""
        control = self.job.control
        if control.interrupted:
            return JobInterrupted(control.reason or "cancelled")
        # The cancel's reason, read where Dask keeps it (``FutureCancelledError.reason``): ``result()``
        # would wait on the client's event loop, stopped once a client gives up reconnecting.
        cancel = getattr(getattr(future, "_state", None), "exception", None)
        reason = getattr(cancel, "reason", None)
        if reason == CONNECTION_LOST:
            return self.job.cluster_lost("Dask cancelled its tasks")
        return self.job.cluster_lost(
            f"the cluster ended a task {future.status}, reason: {reason or 'unknown'}"
        )

    def _stop(self, reason: str) -> None:
        """Tell running tasks to stop (they raise at their next check), cancel queued ones, wait for the
        running ones to end (at most :data:`STOP_SECONDS`). When the cluster is lost, only forget them:
        they ended with it (a scheduler started again knows none of them)."""
        futures = list(self._pending)
        self._pending.clear()
        try:
            with self.job.scheduler_call():
                within(SCHEDULER_SECONDS, self._variable.set, reason, scheduler=self.job.scheduler)
                running = self.job.running_keys()
                queued = [f for f in futures if f.key not in running and not f.done()]
                if queued:
                    within(SCHEDULER_SECONDS, self.job.client.cancel, queued, scheduler=self.job.scheduler)
        except ClusterUnavailable:
            running = set()
        wait_for([f for f in futures if f.key in running], STOP_SECONDS, every=True)
        self.job.forget([f.key for f in futures])


def _worker_killed(error: BaseException | None) -> BaseException | None:
    """A failed task's ``error``, or the :class:`WorkerKilled` standing for a ``distributed.KilledWorker``
    (every worker that ran the task died while running it)."""
    from distributed import KilledWorker  # deferred: as above

    if not isinstance(error, KilledWorker):
        return error
    killed = WorkerKilled(
        f"a Dask task of the job was run on {error.allowed_failures + 1} worker(s) that all died while "
        "running it (most often out of memory: see the workers' logs); nothing of that task was published"
    )
    killed.__cause__ = error
    return killed
