"""What a :class:`~jupyter_staging.engine.runner.JobRunner` needs from the manager that runs it.

The runner reaches its manager only through this protocol, so the runner never imports the manager (no
cycle) and a test or another executor can host a runner with anything that provides these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.executors import Executor
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.store import JobRecord, Store
from jupyter_staging.engine.transitions import Guard
from jupyter_staging.errors import StagingError
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.sealed import SecretBox


class JobHost(Protocol):
    """The manager as its job runners see it.

    Every method is thread-safe: runners call them from executor threads. State changes are persisted
    before they are announced to listeners.
    """

    store: Store
    secrets: SecretBox
    #: The folder local destinations lie below (the server's root: the user may write anywhere in it).
    root_dir: Path
    #: What runs the jobs (its type says whether a job's work becomes tasks on a cluster).
    executor: Executor
    source_roots: list[str] | None
    #: Most bytes one archive or compressed file may expand to (``unpack`` / ``decompress``).
    max_unpacked_bytes: int
    #: Items (files) of one job staged at the same time (plain transfers), at least 1.
    concurrent_items: int
    #: Byte ranges of one large download from a range-capable source fetched at once; 1: one stream.
    streams_per_file: int
    #: This process as a job's ``runner`` (``host:pid:start``): a run's final writes are conditional on it.
    runner_id: str

    def destination_of(self, rec: JobRecord, *, in_place: bool = False) -> Destination:
        """The destination (local folder or object-store prefix) of job ``rec`` (its own folder, not a
        scratch folder it stages into, when ``in_place``)."""
        ...

    def raw_sources(self, rec: JobRecord) -> tuple[str, dict[str, str] | None]:
        """The job's source and manifest entries as submitted, secrets unsealed (never log them)."""
        ...

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
        """Persist a state transition (and other columns, and the log lines ``events``: ``(level,
        message)``) in one transaction and announce it; returns the job (with its resume data when
        ``load_resume``). ``sealed_dropped``: the caller knows the stored resume data holds no sealed
        locator (or sets ``resume`` without them), so a final state need not read it. Raises
        :class:`~jupyter_staging.errors.InvalidState` for a transition the job model forbids, and
        :class:`~jupyter_staging.engine.transitions.StateChanged` when the job as read in that transaction
        fails ``when`` (nothing written)."""
        ...

    def update_job(
        self, job_id: str, *, events: Sequence[tuple[str, str]] = (), load_resume: bool = False, **fields: Any
    ) -> JobRecord:
        """Persist columns of the job and the redacted log lines ``events`` in one transaction (not
        announced); returns the job as updated."""
        ...

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
        """Insert the chunk rows ``new``, apply ``updates`` (by chunk id), set ``fields`` on the job and add
        the redacted log lines ``events``, in one transaction; returns the job with ``load_job``. Raises
        :class:`~jupyter_staging.errors.JobInterrupted` (``superseded``), nothing written, when the job is
        no longer queued or running under this process (another server took it over)."""
        ...

    def log_event(self, job_id: str, level: str, message: str) -> None:
        """Add a redacted line (``level``: info, warning, error) to the job's log."""
        ...

    def announce(self, rec: JobRecord) -> None:
        """Tell listeners that job ``rec`` changed (after it was persisted)."""
        ...

    def attach_live(self, job_id: str, live: LiveProgress) -> None:
        """Register the running job's in-memory progress counters."""
        ...

    def report_progress(self, job_id: str, *, force: bool = False) -> None:
        """Persist and announce live progress, at most every ``PROGRESS_INTERVAL`` seconds unless
        ``force``; also relays a pause / cancel requested by another process."""
        ...

    def apply_cleanup_policy(
        self, job_id: str, outcome: JobState | None = None, *, policy: str | None = None
    ) -> None:
        """Remove the job's output when its cleanup policy (``policy``, read from the job when None) says
        so for ``outcome``."""
        ...

    def finish_cancelled(self, job_id: str, when: Guard) -> bool:
        """Remove the job's partial output and end it ``cancelled`` if the job as read in that transaction
        passes ``when``; False (nothing changed) when another state change was first."""
        ...

    def finish_paused(self, job_id: str) -> None:
        """End a running job's run ``paused`` — ``cancelled`` instead when a cancel is pending (asked for
        after the pause, or by another process): a cancel outranks a pause."""
        ...

    def fail(self, job_id: str, error: StagingError | Exception, when: Guard | None = None) -> None:
        """End the job ``failed`` with the error's code and a redacted message (``internal_error`` for
        anything that is not a :class:`~jupyter_staging.errors.StagingError`); with ``when``, only if the
        job as read in that transaction passes it (else nothing is recorded)."""
        ...

    def still_held(self, job_id: str) -> bool:
        """Whether the job is still this process's to end (not ended, its runner still this process);
        when not, this process's log says why."""
        ...

    def submit(self, job_id: str) -> None:
        """Hand the queued job ``job_id`` to the executor for a new run, this process its runner (not
        while another run of this process holds it, nor once the host is stopping)."""
        ...

    def release(self, job_id: str, control: JobControl, live: LiveProgress) -> None:
        """Forget the runner's ``control`` and ``live`` counters once it has returned (not those of a
        later runner of the job)."""
        ...
