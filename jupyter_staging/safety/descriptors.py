"""The process's open-file limit (``RLIMIT_NOFILE``, getrlimit(2)) and the share of it a job keeps open.

A job keeps descriptors open to save work: the destination folders it writes into (:class:`FolderCache`),
the source folders it reads from (:class:`SourceFolders`), the files written and waiting for their fsync
(:class:`~jupyter_staging.engine.pipeline.SyncPipeline`). Four jobs of a deep tree kept up to 854 at once
here, against a soft limit of 1,024 under systemd (and 512 or less on some sites): jobs failed with
``EMFILE``. So each of those caches sizes itself from the soft limit it finds (:func:`descriptor_share`),
so that :data:`JOBS_PLANNED_FOR` jobs stay within it whatever the limit, and the server's manager raises its
soft limit to the hard one when it starts (``StagingApp.raise_open_file_limit``): systemd keeps the soft
limit at 1,024 only for programs that use ``select()``, and leaves a program free to raise it up to the
hard limit (524,288 by default).
"""

from __future__ import annotations

import resource

#: Soft limit asked for at most when raising it (descriptors): more than any number of jobs here needs.
WANTED_OPEN_FILES = 65536
#: Jobs at once the shares below are planned for (``StagingApp.max_concurrent_jobs``' default).
JOBS_PLANNED_FOR = 4
#: Thousandths of the soft limit one job's destination folders (:class:`FolderCache`), source folders
#: (:class:`SourceFolders`) and files in flight (``SyncPipeline``, one or two descriptors each) may keep.
FOLDERS_PER_MILLE, SOURCE_FOLDERS_PER_MILLE, FILES_IN_FLIGHT_PER_MILLE = 60, 15, 30


def open_file_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (descriptors); :data:`WANTED_OPEN_FILES` when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return WANTED_OPEN_FILES if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted``, at most to the hard limit; never lowers it.
    Returns ``(before, after)`` (descriptors). A limit that cannot be raised (``OSError``, ``ValueError``)
    stays as it was: the caches then size themselves to it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = open_file_limit()
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return before, before
    return before, open_file_limit()


def descriptor_share(per_mille: int, *, low: int, high: int) -> int:
    """``per_mille`` thousandths of the soft limit (descriptors), between ``low`` and ``high``: what one
    job's cache of descriptors may keep. A job's shares (folders 60, source folders 15, files in flight
    30 x up to 2 descriptors) come to about 13% of a limit of 512 or 1,024, so that
    :data:`JOBS_PLANNED_FOR` jobs leave about half of it to the rest of the server; above 4,267 each cache
    keeps its ``high`` (448 descriptors a job in all)."""
    return max(low, min(high, open_file_limit() * per_mille // 1000))
