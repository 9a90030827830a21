"""Room for a job's output: its known size against the free space and the server's quota.

Admission asks :class:`SpaceLimits` before a local job exists. The size of a request is what its sources
list (:meth:`~jupyter_staging.sources.base.Source.list_items`): a ``stat`` for local files, a ``HEAD`` for an
HTTP URL, a listing for an S3 / Azure prefix. The listing is handed to the job's runner in its resume data
(``resume["items"]``, ``resume["entries"][name]["items"]``), which then does not list again: a remote
source is asked once per job, as without the check. Sizes are the sources' (a conversion to Parquet, an
unpacked archive or a decompressed file may be larger or smaller): the check is an estimate; a disk that
fills up anyway fails the item with ``no_space`` (:class:`~jupyter_staging.errors.NoSpace`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from sqlalchemy import Table, and_, func, or_, select

from jupyter_staging.clouds.http_client import WaitTooLong, bounded_wait, waiting_with
from jupyter_staging.engine.freshness import CHECK_CONCURRENCY, LISTING_WAIT_MAX
from jupyter_staging.engine.models import ChunkState, JobState
from jupyter_staging.engine.store import ChunkRecord, JobRecord, Store
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import InsufficientSpace
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.sources.base import SourceItem, skipped_notice
from jupyter_staging.sources.registry import open_source

#: States of a job that is going to write (its announced total counts against the quota).
WRITING_STATES = (JobState.queued.value, JobState.running.value, JobState.paused.value)
#: States of a finished job whose published chunks stay on disk until cleaned up or expired.
KEPT_STATES = (JobState.succeeded.value, JobState.failed.value)


@dataclass
class Listing:
    """The items admission listed, by manifest entry (key None for a single source), names as the job
    writes them (``<entry>/<name>`` for a manifest). ``unknown``: a source could not be listed or an item
    has no size, so :attr:`total` is only a lower bound."""

    items: dict[str | None, list[SourceItem]] = field(default_factory=dict)
    unknown: bool = False
    #: Warnings for the job's log, ``(level, message)``: objects below a listed prefix left out
    #: (:func:`~jupyter_staging.sources.base.skipped_notice`), the entry named.
    notices: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Bytes of the items whose size is known."""
        return sum(i.size or 0 for items in self.items.values() for i in items)

    @property
    def exact_total(self) -> int | None:
        """Bytes of every item, or None when :attr:`unknown`."""
        return None if self.unknown else self.total


def notices_of(listing: Listing | None) -> list[tuple[str, str]]:
    """The warnings of ``listing`` for the job's log (:attr:`Listing.notices`); none without a listing."""
    return listing.notices if listing is not None else []


def list_sources(sources: dict[str | None, str], *, source_roots: list[str] | None) -> Listing:
    """List ``sources`` (``{entry or None: raw URI}``), at most :data:`CHECK_CONCURRENCY` at once.

    Never raises: a source that cannot be listed now (missing, refused, network down) is left out and
    marks the listing ``unknown``; the job reports its error when it runs. So is one asking to be retried
    later than :data:`~jupyter_staging.engine.freshness.LISTING_WAIT_MAX` seconds in all (a 503 with
    ``Retry-After``): the request is not held up, the job lists it when it runs, and its log says so."""

    def look(entry: str | None) -> tuple[str | None, list[SourceItem] | None, list[tuple[str, str]]]:
        try:
            source = open_source(sources[entry], source_roots=source_roots)
            with waiting_with(bounded_wait(LISTING_WAIT_MAX)):  # this thread's HTTP sessions
                items = source.list_items()
            for item in items:
                item.name = check_output_name(item.name if entry is None else f"{entry}/{item.name}")
        except WaitTooLong:
            what = "the source" if entry is None else f"entry {entry}: the source"
            notice = f"{what} asked to wait before it answers; listed when the job runs"
            return entry, None, [("info", notice)]
        except Exception:  # the runner lists it again and reports why it cannot
            return entry, None, []
        named = [
            (level, text if entry is None else f"entry {entry}: {text}")
            for level, text in skipped_notice(source)
        ]
        return entry, items, named

    listing = Listing()
    workers = max(1, min(CHECK_CONCURRENCY, len(sources)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="staging-size") as pool:
        for entry, items, notices in pool.map(look, list(sources)):
            listing.notices += notices
            if items is None:
                listing.unknown = True
                continue
            listing.items[entry] = items
            listing.unknown = listing.unknown or any(i.size is None for i in items)
    return listing


def figure(count: int) -> str:
    """``count`` bytes as shown in messages: ``"4194304 bytes (4.19 MB)"``."""
    return f"{count} bytes ({format_bytes(count)})"


def nearest_folder(path: Path) -> Path:
    """``path`` when it is a folder, else its nearest existing parent folder (``/`` at the latest): where
    ``path`` would be made, on the file system that would hold it."""
    return next((folder for folder in (path, *path.parents) if folder.is_dir()), Path("/"))


def free_bytes(path: Path) -> int:
    """Bytes free to this process on the file system that holds ``path``, or would once it is created
    (``shutil.disk_usage`` of its :func:`nearest_folder`)."""
    return shutil.disk_usage(nearest_folder(path)).free


def unwritable(path: Path) -> str | None:
    """Why nothing can be made at ``path`` (below its :func:`nearest_folder`), or None: on a file system
    mounted read-only (``statvfs(3)``'s ``ST_RDONLY``), or a folder this process may not write into
    (``faccessat(2)`` with the effective ids, ``W_OK | X_OK``: always allowed to root). None too when it
    cannot be asked."""
    folder = nearest_folder(path)
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return "lies in a folder this server may not write into (permission denied)"
    return None


class SpaceLimits:
    """The space rules of one root (see the module).

    ``min_free_bytes``: bytes that must stay free on the destination's file system after a job whose size
    is known (0: no check). ``quota_bytes``: most bytes the staged output of this root's jobs may hold
    together (0: no quota). Both apply to local destinations only: object storage has its own limits.
    """

    def __init__(self, store: Store, root_dir: Path, *, min_free_bytes: int = 0, quota_bytes: int = 0):
        self.store = store
        self.root_dir = root_dir
        self.min_free_bytes = max(0, int(min_free_bytes))
        self.quota_bytes = max(0, int(quota_bytes))

    @property
    def enabled(self) -> bool:
        """True when a rule is set (else admission lists nothing for it)."""
        return bool(self.min_free_bytes or self.quota_bytes)

    def staged_bytes(self) -> int:
        """Bytes the local output of this root's jobs holds or is going to hold: the announced total (else
        the bytes done) of a queued, running or paused job, the published chunks of a finished one (its
        ``ready`` chunks, and its ``acked`` ones unless acked chunks are deleted: ``delete_on_ack``).

        One statement of two narrow sums whatever the number of jobs and chunks, summed by the database:
        the writing jobs' sizes and the kept chunks' bytes, read in one snapshot (a job ending meanwhile
        is counted once). A destination naming an object store (``://``, as
        :func:`~jupyter_staging.destinations.registry.is_object_destination`) is left out. Every ``POST
        /jobs`` asks this when a quota is set: loading each finished job's chunk records took 2.5 s per
        request with 10,000 jobs in the database."""
        jobs, chunks = cast(Table, JobRecord.__table__), cast(Table, ChunkRecord.__table__)
        # SQLite's SUM of integers fails ("integer overflow") past 2**63 - 1 bytes (sizes a remote server
        # announced); its TOTAL is a float, exact to 2**53 bytes (8 PiB), beyond that near enough.
        add = func.total if self.store.engine.dialect.name == "sqlite" else func.sum
        local = and_(jobs.c.root == str(self.root_dir), ~jobs.c.destination.contains("://"))
        published = or_(
            chunks.c.state == ChunkState.ready.value,
            and_(chunks.c.state == ChunkState.acked.value, jobs.c.cleanup_policy != "delete_on_ack"),
        )
        kept = (
            select(add(chunks.c.bytes))
            .select_from(jobs.join(chunks, chunks.c.job_id == jobs.c.id))
            .where(local, jobs.c.state.in_(KEPT_STATES), published)
        )
        announced = func.coalesce(jobs.c.bytes_total, jobs.c.bytes_done, 0)
        writing = select(add(announced)).where(local, jobs.c.state.in_(WRITING_STATES))
        # One statement, so one snapshot: as two, a job ending between them (PostgreSQL's READ COMMITTED,
        # SQLite without BEGIN) was counted as writing and as kept.
        both = select(writing.scalar_subquery(), kept.scalar_subquery())
        with self.store.read_session() as s:
            row = s.execute(both).one()
        # SUM is NULL over no row, and a DECIMAL on PostgreSQL and MariaDB (no overflow there).
        return sum(int(value or 0) for value in row)

    def check(self, listing: Listing, rel: str, *, free: Callable[[Path], int] = free_bytes) -> None:
        """Refuse a job of ``listing`` into folder ``rel`` (relative to the root) that would leave less
        than :attr:`min_free_bytes` free, or take staged output beyond :attr:`quota_bytes`.

        With an ``unknown`` listing only its known part is checked (refused when even that does not fit).
        Raises :class:`~jupyter_staging.errors.InsufficientSpace` (409) naming the figures in bytes and
        binary units."""
        need = listing.total
        at_least = "at least " if listing.unknown else ""
        if self.min_free_bytes:
            available = free(self.root_dir / rel)
            if available - need < self.min_free_bytes:
                raise InsufficientSpace(
                    f"this job needs {at_least}{figure(need)} but only {figure(available)} are free where "
                    f"{rel!r} is; {figure(self.min_free_bytes)} must stay free (StagingApp.min_free_bytes)"
                )
        if self.quota_bytes:
            held = self.staged_bytes()
            if held + need > self.quota_bytes:
                raise InsufficientSpace(
                    f"this job needs {at_least}{figure(need)} but staged output already holds "
                    f"{figure(held)} of the {figure(self.quota_bytes)} allowed (StagingApp.quota_bytes)"
                )
