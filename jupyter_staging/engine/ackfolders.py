"""Where an acknowledgement under ``delete_on_ack`` deletes a chunk's file, without reading the job's resume
data at every ack.

A job replacing an earlier output stages into a scratch folder until it swaps its own in (``swap`` in its
resume data: :meth:`~jupyter_staging.engine.lifecycle.JobLifecycle.destination_of`); the resume data lists
every item of the job, megabytes for 20,000 files (about 20 ms to read). A consumer acking each file as a
job runs read it at every ack. But a job's swap is decided when it is admitted, and once done it stays done:
a job whose resume data shows no swap pending has its output in its destination folder for good. Such jobs
are remembered here (this process, the last :data:`REMEMBERED`), so only a job that is still to swap its
output in reads its resume data at each ack.

Such an ack may find the scratch folder just before the job swaps it in: :meth:`AckFolders.remove_chunk`
then deletes the file where the swap put it, the job's own folder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from jupyter_staging.engine.acks import output_in_place
from jupyter_staging.engine.swap import swap_started
from jupyter_staging.errors import JobNotFound

if TYPE_CHECKING:
    from jupyter_staging.destinations.base import Destination, PublishedFile
    from jupyter_staging.engine.lifecycle import JobLifecycle
    from jupyter_staging.engine.store import JobRecord

__all__ = ["AckFolders", "swap_pending"]

#: Jobs remembered by one :class:`AckFolders` (their ids), the least recently acked forgotten first.
REMEMBERED = 4096


def swap_pending(resume: dict[str, Any] | None) -> bool:
    """Whether a job's resume data says it stages beside an earlier output, not swapped in yet."""
    swap = (resume or {}).get("swap") or {}
    return bool(swap) and not swap.get("done")


class AckFolders:
    """The destination an ack of a job's chunk deletes in, the job's resume data read only while it may
    hold a pending swap (see the module). Thread-safe."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        self._in_place: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def destination(self, host: JobLifecycle, rec: JobRecord) -> Destination:
        """The destination of job ``rec`` (a record of ``host``'s root, read with or without its resume
        data). Raises :class:`JobNotFound` when the job is gone meanwhile."""
        if output_in_place(rec) or self._known(rec.id):
            return host.destination_of(rec, in_place=True)
        full = rec if rec.has_resume() else host.store.get_job(rec.id, resume=True)
        if full is None:
            raise JobNotFound(f"no staging job {rec.id!r}")
        if not swap_pending(full.resume):
            self._remember(rec.id)
        return host.destination_of(full)

    def remove_chunk(
        self,
        host: JobLifecycle,
        rec: JobRecord,
        destination: Destination,
        chunk_path: str,
        published: PublishedFile | None,
    ) -> bool:
        """Delete the file of job ``rec``'s chunk ``chunk_path`` in ``destination`` (what :meth:`destination`
        gave), as :meth:`Destination.remove_chunk` does; True when a file was deleted. When ``destination``
        is the scratch folder of a job still to swap its output in and the file is not there, the job's
        swap started since (its resume data, read again, says so) and moved the file into the job's own
        folder: it is deleted there. Before, the ack answered ``acked`` and the file stayed in the folder
        for good, even once the job was ``expired``. Raises what ``remove_chunk`` raises
        (:class:`~jupyter_staging.errors.PathNotAllowed` when a folder on the way is a symlink)."""
        removed = destination.remove_chunk(chunk_path, published)
        if removed or destination.remote:
            return removed
        own = host.destination_of(rec, in_place=True)
        if own.workdir == destination.workdir:  # the job's own folder: the file is gone, or the user's
            return False
        full = host.store.get_job(rec.id, resume=True)
        if full is None or not swap_started(full.resume):  # nothing moved: the file is no longer there
            return False
        return own.remove_chunk(chunk_path, published)

    def _known(self, job_id: str) -> bool:
        with self._lock:
            if job_id not in self._in_place:
                return False
            self._in_place.move_to_end(job_id)
            return True

    def _remember(self, job_id: str) -> None:
        with self._lock:
            self._in_place[job_id] = None
            self._in_place.move_to_end(job_id)
            while len(self._in_place) > self._size:
                self._in_place.popitem(last=False)
