"""Parquet parts a stopped or failed conversion left: which are the job's to remove, which the user's.

A conversion publishes part ``n`` while it encodes part ``n + 1`` and records each in a batch, so a run
stopped part way (a crash, a Dask range finished out of order) leaves parts published and not recorded, and a
failed conversion leaves the parts of a partial table. They are removed only when they are this job's: not in
the folder before the job (:data:`FOREIGN_PARTS`), published since it started, and tagged as its for their
path and bytes (:mod:`jupyter_staging.safety.ownership`). A part file of the user's is never touched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import Destination, PublishedFile, remove_tree_if_empty
from jupyter_staging.engine.models import DONE_STATES, ChunkState
from jupyter_staging.engine.parts import published_since
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import BYTES_COLUMNS, PART_BYTES, Store
from jupyter_staging.engine.tablefolders import parquet_folder
from jupyter_staging.errors import DestinationExists, as_staging_error
from jupyter_staging.safety.redact import redact_text

_PART_RE = re.compile(r"part-(\d+)\.parquet")
#: Resume key: ``{output folder (relative): [part file names]}``, the part files a table's output folder
#: held before this job wrote any there (the user's, usually none): never removed as a dead attempt's.
FOREIGN_PARTS = "foreign_parts"
#: Resume key, True: the job was started by a version that lists them (:data:`FOREIGN_PARTS`) as each table
#: starts; a job without it (started by an earlier version, resumed by this one) falls back to ``ctime``.
FOREIGN_PARTS_LISTED = "foreign_parts_listed"


class DeadParts:
    """Removes the Parquet parts of a stopped or failed conversion that are the job's (the state is set by
    :class:`~jupyter_staging.engine.items.ItemStager`; mixed into
    :class:`~jupyter_staging.engine.conversion.ConvertingStager`)."""

    store: Store
    dest: Destination
    #: Engine bookkeeping persisted in ``JobRecord.resume`` (guarded by ``_lock``).
    resume: dict[str, Any]
    _lock: threading.RLock
    recovering: bool
    started_ns: int
    _resume_put: Callable[[str, str, Any], None]
    _resume_drop: Callable[[str, str], None]
    _save_changes: Callable[..., Any]
    _log: Callable[[str, str], None]
    _chunks_under: Callable[[str], list[tuple[str, JobChunk]]]
    _table_parts: Callable[[str, str], list[JobChunk]]
    _published_before_the_stop: Callable[..., tuple[int, str] | None]

    def _withdraw_parts(self, name: str, exc: Exception, started_ns: int) -> None:
        """After the conversion of table ``name`` failed (``exc``), remove the Parquet parts it published,
        so no partial table is left under ``<stem>.parquet`` for a reader to take for the whole one (the
        job fails, or its manifest entry does, and a run again converts from the start). Their chunks
        become ``expired``; a part published but not recorded (a range a Dask worker finished out of order)
        is removed too when it was published since ``started_ns`` (its ``ctime``, in ns since the epoch)
        and the folder did not hold it before the job (:meth:`_foreign_parts`), unless the failure was a
        name already taken (``destination_exists``): a part file of the user's is never touched. Nothing
        here raises: a part that cannot be removed is logged, the failure stands."""
        out_rel = parquet_folder(name)
        relative = self.dest.relative
        removed = rows = 0
        try:
            self._save_changes()  # a part's record waiting in the ledger is read below, not written after
            parts = [c for c in self._table_parts(name, out_rel) if c.state in DONE_STATES]
            for chunk in parts:
                published = PublishedFile(chunk.bytes, chunk.mtime_ns) if chunk.bytes is not None else None
                self.dest.remove_chunk(chunk.path, published)
                self.store.update_chunk(chunk.id, state=ChunkState.expired.value)
                removed, rows = removed + 1, rows + int(chunk.rows or 0)
            with self._lock:
                for chunk in parts:
                    rel = relative(chunk.path)
                    self._resume_drop("outputs", rel)
                    self._resume_drop(PART_BYTES, rel)
                self._resume_drop(BYTES_COLUMNS, name)
                self._save_changes()
            out_dir = self.dest.workdir / out_rel
            if not isinstance(exc, DestinationExists):
                # Any item's: a file staged there as it is is not a dead part.
                recorded_paths = {rel for rel, _ in self._chunks_under(out_rel)}
                with self._lock:
                    foreign = frozenset(self.resume.get(FOREIGN_PARTS, {}).get(out_rel, []))
                removed += self._drop_unrecorded_parts(out_dir, recorded_paths, started_ns, foreign)
            remove_tree_if_empty(out_dir, self.dest.workdir)
        except Exception as cleanup:  # the conversion's own error is the one the job reports
            known = as_staging_error(cleanup)
            why = redact_text(known.message) if known is not None else type(cleanup).__name__
            self._log("warning", f"{name}: Parquet parts of the failed conversion not all removed: {why}")
        if removed:
            self._log(
                "warning",
                f"{name}: conversion failed; the {removed} Parquet part(s) written before it ({rows:,} rows) "
                f"were removed, so {out_rel} holds no partial table",
            )

    def _foreign_parts(self, out_rel: str, out_dir: Path) -> frozenset[str]:
        """The names of the part files folder ``out_dir`` (``out_rel``) held before this job wrote any
        there: the user's, never removed as a dead attempt's (a Dask range, a resumed run). Listed the first
        time the table converts and saved in the resume data (:data:`FOREIGN_PARTS`) before any part is
        written: one more write of the resume data per table, where each part makes one. A resumed run of a
        job started by an earlier version, which kept no lists (:data:`FOREIGN_PARTS_LISTED`, set by
        :meth:`JobRunner.before_start` at a conversion's first start), takes those not published since the
        job first started (:func:`published_since`). Called before a table's first part is converted or
        taken from the output a job replaces (:meth:`_reuse_converted`)."""
        with self._lock:
            kept = self.resume.get(FOREIGN_PARTS, {}).get(out_rel)
            older = self.recovering and not self.resume.get(FOREIGN_PARTS_LISTED)
        if kept is not None:
            return frozenset(kept)
        if self.dest.remote:
            return frozenset()
        names = (
            []
            if not out_dir.is_dir() or out_dir.is_symlink()
            else sorted(
                path.name
                for path in out_dir.iterdir()
                if _PART_RE.fullmatch(path.name)
                and not (older and published_since(path.lstat(), self.started_ns))
            )
        )
        self._resume_put(FOREIGN_PARTS, out_rel, names)
        self._save_changes()  # with the table's claim of its folder
        return frozenset(names)

    def _drop_unrecorded_parts(
        self, out_dir: Path, recorded: set[str], since_ns: int, foreign: frozenset[str]
    ) -> int:
        """Remove the part files in ``out_dir`` whose path (relative to the destination) is not in
        ``recorded``, which the folder did not hold before the job (not in ``foreign``), were published
        since ``since_ns`` (``ctime``: a link or rename sets it) and carry the job's tag for their path and
        bytes (:meth:`_published_before_the_stop`): this conversion's, never recorded. Returns how many."""
        if self.dest.remote or not out_dir.is_dir() or out_dir.is_symlink():
            return 0
        removed = 0
        for path in out_dir.iterdir():
            rel = path.relative_to(self.dest.workdir).as_posix()
            if (
                _PART_RE.fullmatch(path.name)
                and rel not in recorded
                and path.name not in foreign
                and published_since(path.lstat(), since_ns)
                and self._published_before_the_stop(path) is not None
            ):
                self.dest.files.unlink(path)
                removed += 1
        return removed

    def _drop_unrecorded_part(self, out_dir: Path, start_index: int, kept: Collection[str]) -> None:
        """Remove the part file ``start_index`` if a previous run published it but stopped before
        recording it (the converter publishes a part while encoding the next): it carries the job's tag
        for its path and bytes (:meth:`_published_before_the_stop`); it is written again. A file of that
        name in ``kept`` (the folder held it before the job: the user's; or a chunk records it), or without
        the tag (put there since, whatever it holds), is left, and the conversion fails
        ``destination_exists`` at it."""
        if not out_dir.is_dir() or out_dir.is_symlink():
            return
        for path in out_dir.iterdir():
            match = _PART_RE.fullmatch(path.name)
            if (
                match
                and int(match.group(1)) == start_index
                and path.name not in kept
                and path.relative_to(self.dest.workdir).as_posix() not in kept
                and path.is_file()
                and not path.is_symlink()
                and self._published_before_the_stop(path) is not None
            ):
                self._log(
                    "info", f"{path.name}: published but not recorded before the stop; writing it again"
                )
                self.dest.files.unlink(path)
