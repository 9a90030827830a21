"""The verbs that steer a job between its runs: cancel, pause, resume.

Each decides on the job as it reads it, then changes it only as it found it (a compare-and-set in the
database, :mod:`~jupyter_staging.engine.transitions`): a verb that meets another (a cancel as the job's
runner takes it, two resumes at once) either wins whole or reads the job again. A running job is stopped
by its runner, asked through its control and the ``requested`` column (only while it runs: a request never
outlives its run); a queued or paused job is changed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from jupyter_staging.engine.cleanup import remove_job_output
from jupyter_staging.engine.leases import Verdict, verdict
from jupyter_staging.engine.models import DescribeJob, JobState
from jupyter_staging.engine.recovery import JobRecovery
from jupyter_staging.engine.store import JobRecord, utcnow
from jupyter_staging.engine.swap import swap_started, too_late
from jupyter_staging.engine.transitions import (
    CANCELLED,
    Guard,
    StateChanged,
    found,
    held_by,
    in_state,
    no_cancel_pending,
    stronger,
)
from jupyter_staging.errors import InvalidState, JobNotFound, StagingError

#: Times a verb reads the job again when another change was first, before it answers with the job as it is.
ATTEMPTS = 3


class JobSteering(JobRecovery):
    """Cancel, pause and resume (the base of :class:`~jupyter_staging.engine.manager.StagingManager`)."""

    def cancel(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Cancel a job and remove its partial output (and its output, for ``delete_always``).

        Cancelling a finished job is a no-op that returns it, and so is cancelling one whose complete
        output is being swapped in (:func:`~jupyter_staging.engine.swap.swap_started`; its log says so).
        A running job is cancelled by its runner (in this process or another sharing the database); this
        waits for it, at most 30 s. A queued or paused job is ended here (a runner about to take a queued
        one finds the cancel pending and ends it instead), and so is a running one whose runner is gone: a
        process of this host that died, or one of another host whose lease expired
        (:mod:`~jupyter_staging.engine.leases`). Raises :class:`JobNotFound`.
        """
        for _ in range(ATTEMPTS):
            rec = self._record(job_id, owner)
            state = JobState(rec.state)
            if state.is_final:
                return self.describe(rec)
            if swap_started(rec.resume):  # complete; a run (after a stop, the next) ends it
                self.log_event(job_id, "info", too_late(JobState.cancelled.value))
                return self.current(job_id, owner)
            if state == JobState.running and not self._runner_gone(rec):
                # Its runner ends it at its next block; unless it stopped meanwhile (read again).
                if self._request(job_id, JobState.cancelled):
                    return self.wait(job_id, timeout=30, owner=owner)
                continue
            # Queued (a runner of this process may be about to take it: then it finds the cancel, or the
            # claim finds it running), paused, or running in a process that is gone: ended here.
            if self._claim_cancel(job_id, state) and self.finish_cancelled(job_id, found(state, CANCELLED)):
                return self.current(job_id, owner)
        return self.current(job_id, owner)

    def _runner_gone(self, rec: JobRecord) -> bool:
        """Whether a running job's runner is gone and the job was not recovered yet: a process of this host
        that died (killed, crashed), or one of another host whose lease expired. Its cancel would wait for
        a run that never reads it. A runner of another host without a lease (a release before) is asked."""
        with self._lock:
            here = rec.id in self._controls
        if here or not rec.runner or rec.runner == self.runner_id:
            return False
        return verdict(rec, host=self.host, now=utcnow()) == Verdict.DEAD

    def _pause_abandoned(self, rec: JobRecord) -> bool:
        """Pause running job ``rec`` whose runner is gone (:meth:`_runner_gone`), if it is still as read:
        running, the same runner, its lease not renewed, no cancel pending. False when it changed."""

        def untouched(now: JobRecord) -> bool:
            same = now.runner == rec.runner and now.lease_expires_at == rec.lease_expires_at
            return same and no_cancel_pending(JobState.running)(now)

        try:
            self.set_state(rec.id, JobState.paused, requested=None, when=untouched)
        except StateChanged:
            return False
        return True

    def _claim_cancel(self, job_id: str, state: JobState) -> bool:
        """Record a pending cancel of a job no runner of this process holds, if it is still in ``state``:
        from then on no runner takes it and no resume queues it. False when it changed meanwhile."""

        def still(rec: JobRecord) -> dict[str, str]:
            if rec.state != state.value:
                raise StateChanged(f"job {job_id} is {rec.state} now")
            return {}

        try:
            self.update_job(job_id, defaults=still, requested=CANCELLED)
        except StateChanged:
            return False
        return True

    def finish_cancelled(self, job_id: str, when: Guard) -> bool:
        """Remove the job's output and end it ``cancelled``, its chunks ``expired`` in that transaction —
        if the job passes ``when`` (read before anything is removed, and again in that transaction).
        Returns False, nothing changed, when another state change was first."""
        rec = self._record(job_id, None)
        if not when(rec):
            return False
        try:
            remove_job_output(self, rec, keep_ready=False)
        except StagingError as exc:
            self.log_event(job_id, "warning", f"partial output not removed: {exc.message}")
            removed = False
        else:
            removed = True
        try:
            # The chunks whose files went are expired with the state, as _expire and the cleanup policies do.
            self.set_state(
                job_id,
                JobState.cancelled,
                requested=None,
                events=[("info", "cancelled; partial output removed")],
                expire_chunks=removed,
                when=when,
            )
        except StateChanged:
            return False
        return True

    def finish_paused(self, job_id: str) -> None:
        """End a running job's run ``paused`` (its runner stopped at a pause) — ``cancelled`` instead when a
        cancel is pending (asked for after the pause, or by another process): a cancel outranks a pause.
        Nothing when the job is no longer this process's (taken over: its runner is another's)."""
        mine = held_by(self.runner_id, no_cancel_pending(JobState.running))
        try:
            self.set_state(job_id, JobState.paused, requested=None, when=mine)
        except StateChanged:
            self.finish_cancelled(job_id, held_by(self.runner_id, in_state(JobState.running)))

    def _request(self, job_id: str, wanted: JobState) -> bool:
        """Ask the runner of a running job to pause or cancel: in this process through its control,
        in another process (a shared database) through the ``requested`` column it polls. A pending cancel
        stands (a pause does not replace it). False, nothing asked, when the job is no longer running (its
        run ended meanwhile: a request then would outlive it)."""

        def request(rec: JobRecord) -> dict[str, str]:
            if rec.state != JobState.running.value:
                raise StateChanged(f"job {job_id} is {rec.state} now")
            return {"requested": stronger(rec.requested, wanted.value)}

        try:
            self.store.update_job(job_id, load_resume=False, defaults=request)
        except StateChanged:
            return False
        with self._lock:
            control = self._controls.get(job_id)
        if control is not None:
            control.interrupt(wanted.value)
        return True

    def pause(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Stop moving bytes at the next block and keep the partial files; ``resume`` continues.

        A running job is paused by its runner, which this waits for (at most 30 s); one whose runner is gone
        (as for :meth:`cancel`) is paused here, at once. Raises :class:`InvalidState` (409): code
        ``invalid_state`` unless the job is queued, running or already paused, and ``swap_in_progress`` once
        its complete output is being swapped in (a re-run, :func:`~jupyter_staging.engine.swap.swap_started`,
        also when the swap began while the pause waited for the runner): no pause stops it then, the job
        goes on to its end.
        """
        for _ in range(ATTEMPTS):
            rec = self._record(job_id, owner)
            state = JobState(rec.state)
            if state == JobState.paused:
                return self.describe(rec)
            if state not in (JobState.queued, JobState.running):
                raise InvalidState(f"a {state.value} job cannot be paused")
            if swap_started(rec.resume):  # complete: it ends succeeded (or partial), never paused
                raise self._pause_too_late(job_id)
            if state == JobState.running and self._runner_gone(rec):  # as cancel: paused here
                if not self._pause_abandoned(rec):
                    continue
            elif state == JobState.running:
                if not self._request(job_id, JobState.paused):
                    continue  # its run ended meanwhile: read again
                until = lambda s: s not in (JobState.running, JobState.queued)  # noqa: E731
                self.wait(job_id, timeout=30, owner=owner, until=until)
                waited = self._record(job_id, owner)
                if waited.state == JobState.running.value and swap_started(waited.resume):
                    raise self._pause_too_late(job_id)  # the swap began before the runner read the pause
            else:
                try:  # queued: paused here, unless a runner took it or a cancel is pending (read again)
                    self.set_state(job_id, JobState.paused, requested=None, when=found(JobState.queued, None))
                except StateChanged:
                    continue
            job = self.current(job_id, owner)
            if job.state == JobState.paused:  # else a cancel asked for before stands, or the job ended
                self.log_event(job_id, "info", "paused")
            return job
        return self.current(job_id, owner)

    def _pause_too_late(self, job_id: str) -> InvalidState:
        """The 409 ``swap_in_progress`` of a pause that came once the job's complete output was being
        swapped in (:func:`~jupyter_staging.engine.swap.swap_started`): the job goes on to its end. The
        job's log says so too."""
        self.log_event(job_id, "info", too_late(JobState.paused.value))
        return InvalidState(
            "the job's output is complete and being swapped in; it can no longer be paused and will end by "
            "itself in a moment",
            code="swap_in_progress",
        )

    def resume(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Queue a paused job again; it continues from its partial files.

        Raises :class:`InvalidState` (409) unless the job is paused (a queued or running job is returned
        as it is).
        """
        rec = self._record(job_id, owner, resume=False)
        state = JobState(rec.state)
        if state in (JobState.queued, JobState.running):
            return self.current(job_id, owner)  # it may be ending: read again, after its counters
        if state != JobState.paused:
            raise InvalidState(f"a {state.value} job cannot be resumed")
        try:  # one resume of two at once (a double click) queues it and starts its one runner
            # A pause asked for as the run ended paused is spent; a pending cancel is not undone.
            self.set_state(job_id, JobState.queued, requested=None, when=no_cancel_pending(JobState.paused))
        except StateChanged:
            if JobState(self._record(job_id, owner, resume=False).state) in (
                JobState.queued,
                JobState.running,
            ):
                return self.current(job_id, owner)
            raise
        self.log_event(job_id, "info", "resumed")
        self.submit(job_id)
        return self.current(job_id, owner)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        owner: str | None = None,
        until: Callable[[JobState], bool] | None = None,
    ) -> DescribeJob:
        """Block until the job reaches a final state (or ``until(state)`` holds), at most ``timeout``
        seconds; returns the job as it then is."""
        until = until or (lambda s: s.is_final)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._record(job_id, owner, resume=False)  # JobNotFound for unknown and foreign ids
        while True:
            # Woken at every progress report: poll the state alone, read the whole job once at the end.
            head = self.store.job_state(job_id)
            if head is None:
                raise JobNotFound(f"no staging job {job_id!r}")
            remaining = None if deadline is None else deadline - time.monotonic()
            if until(JobState(head[0])) or (remaining is not None and remaining <= 0):
                return self.current(job_id, owner)
            with self._done:
                self._done.wait(timeout=0.5 if remaining is None else min(0.5, remaining))
