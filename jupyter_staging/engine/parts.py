"""Who may resume a part file: ownership tags, part files set aside, unnamed parts; and whether a Parquet
part file was published since a job started (:func:`published_since`).

DESIGN.md, "Re-running a notebook": a part file is resumed only by the job that wrote it, for the same
fingerprint. Ownership is an extended attribute of the part file (:data:`OWNER_XATTR`: the job id and a
digest of the fingerprint, :func:`owner_tag`), so recording it costs no database write; on a file system
without user xattrs it is kept in the job's resume data instead. Any other ``.part`` in the way (a planted
one, another job's, another version's) is set aside, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_staging.engine.folders import DestinationWriter
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.dirfd import lstat_at, open_existing, set_aside_at, set_aside_name, unlink_at
from jupyter_staging.safety.ownership import OWNER_XATTR, part_owner_prefix
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.safety.unnamed import create_unnamed
from jupyter_staging.sources.base import SourceItem

#: How far before a job's start (ns) a part file's ``ctime`` may be and the file still count as the job's
#: own: file systems stamp times from the kernel's coarse clock (a tick, up to 10 ms, behind the clock the
#: start was read from), and a Dask worker's host keeps a clock of its own.
CTIME_SLACK_NS = 1_000_000_000


def published_since(st: os.stat_result | None, since_ns: int) -> bool:
    """Whether ``st`` (an ``lstat``) is a regular file published at or after ``since_ns`` (ns since the
    epoch, less :data:`CTIME_SLACK_NS`): linking or renaming a file into place sets its ``ctime``, so a
    Parquet part this job wrote passes and a file the user had there before the job started does not."""
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_ctime_ns >= since_ns - CTIME_SLACK_NS


def owner_tag(job_id: str, fingerprint: dict[str, Any]) -> str:
    """``<job id>:<sha256 of the fingerprint, 16 hex>``: who may resume a part file (it begins with
    :func:`~jupyter_staging.safety.ownership.part_owner_prefix`, which the cleanup of a failed job goes
    by)."""
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    return f"{part_owner_prefix(job_id)}{digest[:16]}"


class PartOwnership(DestinationWriter):
    """The part files of one run of job ``job_id``, opened, tagged and found again by ownership (the state
    is set by :class:`~jupyter_staging.engine.items.ItemStager`)."""

    job_id: str
    recovering: bool
    #: Engine bookkeeping persisted in ``JobRecord.resume`` (guarded by ``_lock``).
    resume: dict[str, Any]
    _lock: threading.RLock
    #: Change the resume data, and write the changes (ItemStager's).
    _resume_put: Callable[[str, str, Any], None]
    _save_changes: Callable[..., Any]

    def _open_part(self, item: SourceItem, final: Path, *, second: str | None) -> PartFile:
        """The part file of ``item``, resumed only when this job wrote it for this fingerprint; any other
        ``.part`` in the way (a planted one, another job's, another version's) is set aside, never
        trusted (DESIGN.md, "Re-running a notebook").

        Ownership is an extended attribute of the part file (``user.jupyter_staging.owner``: the job id
        and a digest of the fingerprint), so recording it costs no database write; on a file system
        without user xattrs it is kept in the job's resume data instead. (A small file may use
        :meth:`_open_unnamed_part` instead.)"""
        root = self.dest.confinement_root
        part = part_path(final)
        tag = owner_tag(self.job_id, item.validator)
        if root is None:
            if (part.exists() or part.is_symlink()) and self._part_owner(item, part) != tag:
                aside = part.with_name(set_aside_name(part.name, self.job_id[:8]))
                if aside.exists() or aside.is_symlink():
                    aside.unlink()
                os.rename(part, aside)  # renames a planted symlink itself, never its target
                self._log_set_aside(item, aside.name)
            return self._tag_part(item, tag, self.part_file(final, resume=True, second=second))
        fd = self.folders.open(self._folder_below_root(final), create=True, placed=True)
        try:
            resume = self._clear_part_at(item, fd, part.name, tag)
        except BaseException:
            os.close(fd)
            raise
        # The folder's descriptor is handed over to the part file (no second open of the folder).
        return self._tag_part(item, tag, self.part_file(final, resume=resume, second=second, dir_fd=fd))

    def _open_unnamed_part(self, final: Path, *, second: str | None) -> PartFile | None:
        """An unnamed part file (``O_TMPFILE``) in ``final``'s folder, for a file small enough that resuming
        it would save nothing: nothing to look for, tag or remove, and nothing left behind by a crash.
        None (use :meth:`_open_part`) outside a confined destination, in a recovering run (it uses
        ``.part`` names, so that a part left by an earlier version is still found), or where the file
        system cannot make one."""
        if self.dest.confinement_root is None or self.recovering:
            return None
        fd, lent = self.folders.lend(self._folder_below_root(final), create=True)
        try:
            blank = create_unnamed(fd)
        except BaseException:
            if not lent:
                os.close(fd)
            raise
        if blank is None:
            if not lent:
                os.close(fd)
            return None
        return self.part_file(final, second=second, dir_fd=fd, dir_fd_lent=lent, unnamed_fd=blank)

    def _clear_part_at(self, item: SourceItem, dir_fd: int, name: str, tag: str) -> bool:
        """Make way for the part file ``name`` in ``dir_fd``: True when the ``.part`` there is ours
        (``tag``) to resume; an empty untagged one, or one of this job's of no known source version, is
        removed; any other set aside. A hard link (a second name on the file: ``st_nlink`` above 1) is
        never resumed, tag or not: writing into it would change the file at its other name (where the file
        system keeps no user attributes, any regular file at the name passes the resume data's check)."""
        st = lstat_at(dir_fd, name)
        if st is None:  # without a part of ours there is nothing to resume: it is created, not looked for
            return False
        owner = self._part_owner_at(item, dir_fd, name) if st.st_nlink <= 1 else None
        if owner is None and stat.S_ISREG(st.st_mode) and st.st_size == 0:
            # Created, then the process died before tagging it (the tag follows the creation at once,
            # before any byte): an empty file, nothing to keep.
            unlink_at(dir_fd, name)
        elif owner == part_owner_prefix(self.job_id) and stat.S_ISREG(st.st_mode):
            # This job's, of no known source version (a Dask worker's fetch, stopped; a part made, then the
            # process died before its version was tagged): not resumable, and nobody else's to keep.
            unlink_at(dir_fd, name)
        elif owner != tag:
            aside_name = set_aside_at(dir_fd, name, self.job_id[:8])  # a planted symlink itself
            self._log_set_aside(item, aside_name)
        return owner == tag

    def _tag_part(self, item: SourceItem, tag: str, out: PartFile) -> PartFile:
        """Record ``tag`` as the owner of the new or resumed part ``out`` (its xattr, else the resume
        data); returns ``out``."""
        try:
            os.setxattr(out.fileno(), OWNER_XATTR, tag.encode())
        except OSError:  # no user xattrs here: remember it in the resume data (one database write)
            self._resume_put("parts", item.name, tag)
            self._save_changes()
        return out

    def _drop_published_part(self, final: Path) -> None:
        """Publishing is ``linkat(part, final)`` then ``unlinkat(part)``: a process killed between the two
        leaves both names on one file. Drop the ``.part`` name of such a file (same inode as ``final``, by
        descriptor), so the file counts as published."""
        part = part_path(final)
        try:
            final_st, part_st = os.lstat(final), os.lstat(part)
        except FileNotFoundError:
            return
        if stat.S_ISREG(final_st.st_mode) and os.path.samestat(final_st, part_st):
            self.dest.files.unlink(part)

    def _log_set_aside(self, item: SourceItem, aside_name: str) -> None:
        self._log(
            "warning",
            f"{item.name}: a partial file this job did not write for this version of the source was "
            f"set aside as {aside_name}; starting from byte 0",
        )

    def _part_owner_at(self, item: SourceItem, dir_fd: int, name: str) -> str | None:
        """The owner tag of part file ``name`` in ``dir_fd`` (opened without following a symlink: a
        planted symlink has no owner), else the resume data's (also for a part tagged with this job's
        prefix alone, whose full tag was refused and kept there), or None."""
        try:
            fd = open_existing(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
        except PathNotAllowed:
            return None
        tagged = None
        if fd is not None:
            try:
                tagged = os.getxattr(fd, OWNER_XATTR).decode()
            except OSError:
                pass
            finally:
                os.close(fd)
        if tagged is not None and tagged != part_owner_prefix(self.job_id):
            return tagged
        # This job's, its version tag refused (a quota): the resume data holds it, when it was recorded.
        with self._lock:
            return (self.resume.get("parts") or {}).get(item.name) or tagged

    def _part_owner(self, item: SourceItem, part: Path) -> str | None:
        """The owner tag of an existing part file (its xattr, else the resume data), or None."""
        try:
            return os.getxattr(part, OWNER_XATTR, follow_symlinks=False).decode()
        except OSError:
            with self._lock:
                return (self.resume.get("parts") or {}).get(item.name)
