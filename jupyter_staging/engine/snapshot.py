"""The jobs a client following changes starts from: every queued, running or paused job of an owner.

``GET /events`` opens with their current state, then streams changes. It read the newest 1,000 jobs of any
state and kept the unfinished ones: with years of jobs in the database, 1,000 finished rows were read and
described for each connection (74 ms with 10,000 jobs), and a job paused before the newest 1,000 was left
out of the opening, so the panel never showed it. Only the unfinished jobs are read now, through the
``(owner, state, created_at, id)`` index (migration 0012), all of them, a page at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jupyter_staging.engine.models import DescribeJob
from jupyter_staging.engine.placement import ACTIVE_STATES

if TYPE_CHECKING:
    from jupyter_staging.engine.lifecycle import JobLifecycle
    from jupyter_staging.engine.store import JobRecord

__all__ = ["unfinished_jobs"]

#: Jobs read per ``SELECT`` of :func:`unfinished_jobs`.
PAGE = 1000


def unfinished_jobs(host: JobLifecycle, owner: str) -> list[DescribeJob]:
    """Every ``queued``, ``running`` or ``paused`` job of ``owner`` in ``host``'s root, newest first, as the
    API shows them (with the live counters of those running in this process, taken before the records are
    read: :meth:`~jupyter_staging.engine.lifecycle.JobLifecycle.live_counters`). Reads no finished job and
    no resume data: one state at a time (for ``state IN (...)`` SQLite walks the owner's jobs in order
    instead). A job that changes state meanwhile may be left out, or read twice (its newer record kept): the
    stream's listener, subscribed before, sends its change. Raises what the store raises when the database
    cannot be reached."""
    live = host.live_counters()
    records: dict[str, JobRecord] = {}  # a job that changed state between two reads: its newer record
    for state in ACTIVE_STATES:
        before = None
        while True:
            page = host.store.list_jobs(
                owner, root=str(host.root_dir), states=[state], limit=PAGE, before=before, resume=False
            )
            for rec in page:
                seen = records.get(rec.id)
                if seen is None or rec.updated_at >= seen.updated_at:
                    records[rec.id] = rec
            if len(page) < PAGE:
                break
            before = (page[-1].created_at, page[-1].id)
    newest = sorted(records.values(), key=lambda rec: (rec.created_at, rec.id), reverse=True)
    return [host.describe(rec, live) for rec in newest]
