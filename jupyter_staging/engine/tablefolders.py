"""The output folders of tables converted to Parquet: ``<stem>.parquet``, one per table.

A table ``a/b.csv.gz`` is converted into the folder ``a/b.parquet`` (:func:`parquet_folder`), read back as one
dataset. Two tables of one job whose names give one folder (``lc.csv`` and ``lc.fits``), or a table whose
folder would hold or be a file the job stages as it is (``lc.parquet/part-00000.parquet`` beside
``lc.csv``), would have made one dataset of two tables (the parts of the second numbered on after the
first's): :meth:`TableFolders._output_folder` refuses the second (``destination_exists``) before it writes
anything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.cleanup import resume_item_names
from jupyter_staging.engine.models import DONE_STATES, ChunkState
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import Store
from jupyter_staging.errors import DestinationExists, SourceChanged
from jupyter_staging.safety.dirfd import NAME_MAX_BYTES, name_with
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.sources.base import SourceItem

#: Resume key: ``{output folder: the table converted into it}``. Two tables of one job whose names give
#: one folder (``lc.csv`` and ``lc.fits`` both ``lc.parquet``) would have had their parts numbered on
#: into one dataset, read back as one table; the second is refused instead (:meth:`_output_folder`).
FOLDER_TABLES = "folder_tables"
#: Resume key: ``{table: the fingerprint of the version its recorded parts were converted from}``.
TABLE_VERSIONS = "table_versions"


class TableFolders:
    """Claims the output folder of each table one run of job ``job_id`` converts (the state is set by
    :class:`~jupyter_staging.engine.items.ItemStager`)."""

    job_id: str
    store: Store
    dest: Destination
    #: Engine bookkeeping persisted in ``JobRecord.resume`` (guarded by ``_lock``).
    resume: dict[str, Any]
    _lock: threading.RLock
    #: Change the resume data; the next flush of chunk records writes the change (ItemStager's).
    _resume_put: Callable[[str, str, Any], None]
    _resume_add: Callable[[str, Any], bool]
    #: True when a chunk of the job lies in the folder (ItemStager's).
    _holds_chunks: Callable[[str], bool]
    _chunks_under: Callable[[str], list[tuple[str, JobChunk]]]

    def _output_folder(self, name: str) -> str:
        """The checked output folder ``<stem>.parquet`` of output ``name`` (recorded for cleanup), claimed
        for table ``name``. Raises :class:`DestinationExists` before anything is written when another table
        of this job is converted into the same folder (``lc.csv`` and ``lc.fits``), or when an item the
        job listed is that folder or lies in it (``lc.parquet``, ``lc.parquet/part-00000.parquet``): their
        parts and files would make one dataset that a reader takes for one table."""
        out_rel = check_output_name(parquet_folder(name))
        listed = self._listed_paths.get(out_rel)
        if listed is not None:
            raise DestinationExists(
                f"{name} would be converted into {out_rel}, where this job also stages {listed}; {name} "
                "was not converted. Stage them in separate jobs, or as entries of a manifest (each entry "
                "has a folder of its own)"
            )
        with self._lock:  # saved before the first part (with the list of the user's parts)
            other = self.resume.get(FOLDER_TABLES, {}).get(out_rel)
            if other is None:
                self._resume_put(FOLDER_TABLES, out_rel, name)
            elif other != name:
                raise DestinationExists(
                    f"{name} and {other} would both be converted into {out_rel}, which would then read as "
                    f"one table; {name} was not converted. Stage them as entries of a manifest (each entry "
                    "has a folder of its own), or convert one of them in a job of its own"
                )
            self._resume_add("convert_dirs", out_rel)
        return out_rel

    def _same_version(self, item: SourceItem) -> None:
        """Record which version of table ``item`` (its fingerprint, ``item.validator``) the job converts,
        before its first part (kept in memory here, saved with the folder's claim or the first part). A
        resumed run that finds another version (the file rewritten while the job was paused or stopped)
        after parts of the first were recorded raises :class:`SourceChanged`, and the caller removes those
        parts: one table never holds rows of two versions (DESIGN.md: bytes of two versions are never
        spliced). Before, the run went on converting the new version after the old version's parts."""
        out_rel = parquet_folder(item.name)
        with self._lock:
            seen = self.resume.get(TABLE_VERSIONS, {}).get(item.name)
            if seen == item.validator:
                return
            if seen is None:  # a job of an earlier version kept none: as it is now
                self._resume_put(TABLE_VERSIONS, item.name, dict(item.validator))
                return
        done = sum(1 for c in self._table_parts(item.name, out_rel) if c.state in DONE_STATES)
        if not done:
            self._resume_put(TABLE_VERSIONS, item.name, dict(item.validator))
            return
        raise SourceChanged(
            f"{item.name} changed while the job was paused or stopped, after {done} of its Parquet parts "
            f"were converted from the version before; they are removed, so {out_rel} holds no rows of it. "
            "Stage it again to convert it as it is now"
        )

    def _table_parts(self, name: str, out_rel: str) -> list[JobChunk]:
        """The chunks recorded for the parts of table ``name`` in its folder ``out_rel`` (the resume data's
        ``outputs`` names the table of each part: a file staged there as it is is not one)."""
        return self._folder_chunks(name, out_rel)[0]

    def _recorded_parts(self, name: str, out_rel: str) -> tuple[list[JobChunk], set[str]]:
        """``(the chunks of table name's parts in out_rel, the paths every chunk there records)``, before
        the table converts on after its parts. Raises :class:`DestinationExists` when the folder holds a
        chunk of something else the job staged (a file taken out of an archive and staged as it is,
        another table converted by a job of an earlier version): the table would read as one with it."""
        parts, others = self._folder_chunks(name, out_rel)
        if others:
            raise DestinationExists(
                f"{name} would be converted into {out_rel}, where this job also staged "
                f"{self.dest.relative(others[0].path)}; {name} was not converted. Stage them in separate "
                "jobs, or as entries of a manifest (each entry has a folder of its own)"
            )
        return parts, {self.dest.relative(c.path) for c in parts}

    def _folder_chunks(self, name: str, out_rel: str) -> tuple[list[JobChunk], list[JobChunk]]:
        """``(table name's chunks in out_rel, the other chunks there still staged)``."""
        mine: list[JobChunk] = []
        others: list[JobChunk] = []
        if not self._holds_chunks(out_rel):
            return mine, others
        for rel, chunk in self._chunks_under(out_rel):
            with self._lock:
                made_by = self.resume.get("outputs", {}).get(rel)
            if made_by == name:
                mine.append(chunk)
            elif chunk.state in DONE_STATES or chunk.state == ChunkState.pending.value:
                others.append(chunk)
        return mine, others

    def _outside_table_folders(self, rel: str) -> None:
        """Raise :class:`DestinationExists` when ``rel``, a file the job stages as it is, would lie in (or
        be) the folder a table of the job is converted into."""
        with self._lock:
            claims = dict(self.resume.get(FOLDER_TABLES, {}))
        path = rel
        while path:
            table = claims.get(path)
            if table is not None:
                raise DestinationExists(
                    f"{rel} would be staged in {path}, the folder {table} is converted into, and read as "
                    f"part of that table; {rel} was not staged. Stage them in separate jobs"
                )
            path = path.rpartition("/")[0]

    @functools.cached_property
    def _listed_paths(self) -> dict[str, str]:
        """Every item name the job listed, and every folder above one, each mapped to an item name it is
        or holds (made once per run: one look per table, whatever the number of items)."""
        paths: dict[str, str] = {}
        for name in resume_item_names(self.resume):
            path = name
            while path and path not in paths:
                paths[path] = name
                path = path.rpartition("/")[0]
        return paths


def parquet_folder(name: str) -> str:
    """The output folder (relative, not checked) of table output ``name``: ``a/b.csv.gz`` ->
    ``a/b.parquet``; where that name would be longer than 255 bytes (a table named with 248 bytes or more),
    its stem cut short, ``~`` and 8 hex digits of the table's name's sha256 before ``.parquet``: the same
    folder for the same table on every run, another for tables named alike up to the cut."""
    stem = PurePosixPath(name)
    base = _strip_suffixes(stem.name)
    folder = f"{base}.parquet"
    if len(os.fsencode(folder)) > NAME_MAX_BYTES:
        tag = hashlib.sha256(os.fsencode(stem.name)).hexdigest()[:8]
        folder = name_with(base, f"~{tag}.parquet")
    return (stem.parent / folder).as_posix()


def _strip_suffixes(name: str) -> str:
    lowered = name.lower()
    for suffix in (".gz", ".bz2", ".fz"):
        if lowered.endswith(suffix):
            name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name
