"""Taking jobs over: those a process that is gone left queued or running, at a server's start and, for the
jobs of processes whose lease expired (:mod:`~jupyter_staging.engine.leases`), at every heartbeat after.

A job is claimed first (one conditional ``UPDATE``: of two servers taking it at once, one gets it); a
running one is then queued again only if it is still running under the claim (a verb, or the run that missed
its lease, may have ended or paused it in between); each job is taken on its own, so one that changed
meanwhile does not keep the others from being resumed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from jupyter_staging.engine.leases import Verdict, claim, expired, verdict
from jupyter_staging.engine.lifecycle import JobLifecycle
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.processes import runner_kind
from jupyter_staging.engine.store import JobRecord, utcnow
from jupyter_staging.errors import InvalidState, JobNotFound
from jupyter_staging.safety.descriptors import raise_open_file_limit

log = logging.getLogger("jupyter_staging.engine.manager")

#: The log line of a running job taken over.
RESUMING = "the server stopped while this job ran; resuming it"
#: The part of a heartbeat interval one beat's takeover may last (the renewal comes first, at every beat).
TAKEOVER_SHARE = 0.5


class JobRecovery(JobLifecycle):
    """Recovery after a restart and takeover of expired leases (the base of
    :class:`~jupyter_staging.engine.steering.JobSteering`)."""

    def start(self) -> list[str]:
        """Recover after a restart: jobs left ``running`` or ``queued`` by a process that is gone are
        queued again and resume from their partial files — not those this manager runs already (created
        before it was started), nor those of a live process: of this host, checked by pid; of another, one
        whose lease has not expired (:mod:`~jupyter_staging.engine.leases`). Each is claimed first: of two
        servers starting at once, one takes it. Returns the ids of the jobs resubmitted. Starts the lease
        heartbeat (which takes over jobs whose lease expires later: :meth:`recover_expired`); with
        ``raise_open_files``, raises the process's soft open-file limit first
        (:func:`raise_open_file_limit`)."""
        before, after = raise_open_file_limit() if self.raise_open_files else (0, 0)
        if after != before:
            log.info("staging: raised the soft open-file limit (RLIMIT_NOFILE) from %d to %d", before, after)
        self.executor.start()
        self.heartbeat.start()
        held = self.store.list_jobs(
            root=str(self.root_dir),
            states=[JobState.running.value, JobState.queued.value],
            limit=100000,
            resume=False,
        )
        resumed = self.take_over(held, utcnow())
        if self.sweep_interval > 0 and self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="staging-ttl-sweeper", daemon=True)
            self._sweeper.start()
        return resumed

    def recover_expired(self) -> list[str]:
        """Take over the queued and running jobs of other processes whose lease expired (a server of another
        host that died after this one started): one ``SELECT`` when there are none. Returns the ids of the
        jobs resubmitted. Called by the lease heartbeat every ``heartbeat_interval`` seconds, after its
        renewal: it takes over jobs for :data:`TAKEOVER_SHARE` of an interval at most, and leaves the rest to
        the next beats, so that the next renewal of the leases this process holds is not held back."""
        if self._stopped:
            return []
        began = time.monotonic()
        ids = expired(self.store, self.runner_id, str(self.root_dir), utcnow())
        if not ids:
            return []
        # Read as they are taken: a takeover cut short by its deadline reads no more of them.
        records = (rec for rec in map(lambda i: self.store.get_job(i, resume=False), ids) if rec is not None)
        return self.take_over(records, utcnow(), deadline=began + self.heartbeat.interval * TAKEOVER_SHARE)

    def take_over(
        self, records: Iterable[JobRecord], now: datetime, *, deadline: float | None = None
    ) -> list[str]:
        """Claim, queue again and submit those of the queued and running jobs ``records`` (newest first)
        whose runner is gone as seen at ``now`` (or names none) and is of this engine's kind (a kernel's
        engine takes no server's job, a server no kernel's: ``runner_kind``); returns their ids. A job that
        changed between its claim and its requeue (ended, paused) is left as it is, and so is one another
        server claimed first; once this manager is stopping (:meth:`stop`), or past ``deadline`` (a
        ``time.monotonic()`` value), no more jobs are claimed."""
        taken = []
        for rec in records:
            if self._stopped:
                break  # a process shutting down claims nothing: its jobs would wait queued under it
            if deadline is not None and time.monotonic() > deadline:
                break  # the rest at the next beat: the heartbeat renews this process's leases first
            with self._lock:
                if rec.id in self._controls:
                    continue  # created and submitted by this manager before it started: its runner has it
            runner = rec.runner
            if runner_kind(runner) != self.runner_kind:
                continue  # a server's job is never run by a kernel's engine, nor a kernel's by a server
            if runner and runner != self.runner_id:
                if verdict(rec, host=self.host, now=now) == Verdict.ALIVE:
                    continue  # another live process (a second kernel, a script, a server of another host)
                if not claim(self.store, rec, self.runner_id, self.lease_until()):
                    continue  # another server took it first, or its runner renewed its lease meanwhile
                runner = self.runner_id
            if rec.state == JobState.running.value and not self._requeue(rec.id, runner):
                continue
            taken.append(rec.id)
        for job_id in reversed(taken):  # oldest first
            self.submit(job_id)
        return taken

    def _requeue(self, job_id: str, runner: str | None) -> bool:
        """Queue running job ``job_id`` again, with its log line, if it is still running under ``runner``
        (the claim's); False, nothing written, when it changed meanwhile (this process's log says so)."""

        def untouched(rec: JobRecord) -> bool:
            return rec.state == JobState.running.value and rec.runner == runner

        try:
            self.set_state(job_id, JobState.queued, events=[("warning", RESUMING)], when=untouched)
        except (InvalidState, JobNotFound) as exc:  # StateChanged, JobEnded: a verb or its old run was first
            log.warning("staging job %s: not resumed, it changed as it was taken over: %s", job_id, exc)
            return False
        return True
