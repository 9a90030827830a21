"""Where a new job's output goes, and whether it needs to run at all.

DESIGN.md, "Re-running a notebook": without a destination the folder is stable (``staging/<name>``; a
different request that maps to the same name gets ``staging/<name>-<key8>``), so a re-run finds its own
output. A folder that holds the output of an earlier job of the same request is reused when every source
fingerprint still matches; otherwise (a source changed, or ``if_exists="refresh"``) the new job stages into
a scratch folder beside it (:func:`swap_folder`) and swaps it in when complete, so the old output stays
readable until then. The output of a job that failed or was cancelled (the files a folder copy published
before it stopped, the entries of a manifest job that were staged; a failed conversion leaves no parts) is
never reused: a request into its folder stages afresh beside it and swaps in, as a changed source would
(unless ``if_exists="error"``), when files of that job are still there; else it writes into the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest
from jupyter_staging.engine.freshness import Freshness, check_sources, outputs_present
from jupyter_staging.engine.models import DONE_STATES, JobState
from jupyter_staging.engine.store import JobRecord, Store
from jupyter_staging.errors import DestinationExists, PathNotAllowed
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.dirfd import closing_fd, fsync_fd, lstat_at, open_below, unlink_at
from jupyter_staging.safety.paths import resolve_destination

#: States of a job that still owns its destination folder.
ACTIVE_STATES = (JobState.queued.value, JobState.running.value, JobState.paused.value)
#: Final states of a job whose output is not whole: a new request into its folder replaces what it left.
UNFINISHED_STATES = (JobState.failed.value, JobState.cancelled.value)


@dataclass
class Placement:
    """The decision for one request.

    ``rel``: the destination folder, relative to the root. ``reuse``: an earlier job whose output answers
    the request as it is (up to date; nothing to run). ``active``: an earlier job of the same request still
    queued, running or paused (answered instead of a second job). ``replaces``: the earlier job whose
    folder the new job replaces by a swap (or ``""`` for output of no known job); None when the new job
    writes straight into ``rel``. ``fresh``: the fingerprint comparison, when one was made. ``inside``: the
    folder is a mount point, which cannot be renamed, so a replacing job stages into a hidden folder inside
    it and its files are moved in one by one (:func:`swap_folder`, :func:`swap_in`).
    """

    rel: str
    reuse: JobRecord | None = None
    active: JobRecord | None = None
    replaces: str | None = None
    fresh: Freshness | None = None
    notes: list[str] = field(default_factory=list)
    inside: bool = False


def request_key_of(rec: JobRecord | None) -> str | None:
    """The request key a job was admitted with (None for jobs of older versions)."""
    if rec is None:
        return None
    return ((rec.resume or {}).get("request") or {}).get("key")


def swap_folder(rel: str, job_id: str, *, inside: bool = False) -> str:
    """The scratch folder where a replacing job stages: beside ``rel`` (``parent/.<leaf>.staging-<id8>``),
    or with ``inside`` (``rel`` is a mount point) in it (``rel/.staging-<id8>``), on the same file system."""
    if inside:
        return f"{rel}/.staging-{job_id[:8]}"
    parent, _, leaf = rel.rpartition("/")
    name = f".{leaf}.staging-{job_id[:8]}"
    return f"{parent}/{name}" if parent else name


def is_mount_point(path: Path) -> bool:
    """Whether folder ``path`` is a mount point (its own file system, or a bind mount of a folder), which
    ``rename(2)`` cannot move (``EBUSY``): :func:`os.path.ismount`, then the mount points the kernel lists
    for this process (``/proc/self/mountinfo``, proc(5): field 5, octal escapes), where bind mounts of a
    folder of the same file system show."""
    if os.path.ismount(path):
        return True
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    target = os.path.realpath(path)
    for line in text.splitlines():
        fields = line.split(" ")
        if (
            len(fields) > 4
            and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == target
        ):
            return True
    return False


class Placer:
    """Decides :class:`Placement` s for the jobs of one root (see the module)."""

    def __init__(self, store: Store, *, root_dir: Path, staging_dir: str, source_roots: list[str] | None):
        self.store = store
        self.root_dir = root_dir
        self.staging_dir = staging_dir
        self.source_roots = source_roots

    def default_folder(self, name: str, key: str) -> str:
        """``staging/<name>``, unless it holds another request's output: then ``staging/<name>-<key8>``."""
        base = f"{self.staging_dir.strip('/')}/{name}".lstrip("/")
        for candidate in (base, f"{base}-{key[:8]}"):
            path, rel = resolve_destination(self.root_dir, candidate)
            owner = self.active_job(rel) or self.output_job(path)
            if owner is not None and request_key_of(owner) == key:
                return rel
            if owner is None and not (path / MANIFEST_NAME).exists():
                return rel
        return resolve_destination(self.root_dir, f"{base}-{key[:8]}")[1]

    def active_job(self, rel: str) -> JobRecord | None:
        """The newest queued, running or paused job of this root writing to ``rel`` (with its resume data).

        Found by one narrow ``SELECT`` of ids (:meth:`Store.active_job_id`): reading the active jobs' rows
        would read their resume data, which lists every item of a job (megabytes for a running folder of
        20,000 files) on every request; only the job found is read whole, for its request key."""
        job_id = self.store.active_job_id(str(self.root_dir), rel, list(ACTIVE_STATES))
        return None if job_id is None else self.store.get_job(job_id)

    def failed_job(self, rel: str) -> str | None:
        """The id of the newest failed or cancelled job of this root that wrote to ``rel`` when files it
        published (the first files of a folder it did not finish) are still in the folder, which has no
        ``manifest.json``: a new job writing straight into the folder would meet them. None otherwise, so a
        folder holding only the user's own files is written into, never swapped (it keeps its identity:
        its mode, a mount point)."""
        job_id = self.store.active_job_id(str(self.root_dir), rel, list(UNFINISHED_STATES))
        if job_id is None:
            return None
        folder = self.root_dir / rel
        published = (c.path for c in self.store.list_chunks(job_id) if c.state in DONE_STATES)
        return job_id if any(os.path.lexists(folder / path) for path in published) else None

    def output_job(self, folder: Path) -> JobRecord | None:
        """The job whose ``manifest.json`` is in ``folder`` (None when there is none, or no such job)."""
        manifest = read_manifest(folder) if (folder / MANIFEST_NAME).is_file() else None
        if manifest is None:
            return None
        rec = self.store.get_job(str(manifest.get("job_id")))
        if rec is None or rec.root != str(self.root_dir):
            return None
        return rec

    def place(
        self,
        rel: str,
        key: str,
        if_exists: str,
        sources: dict[str | None, str],
        prefix: Callable[[str | None, str], str],
    ) -> Placement:
        """Decide what a request with ``key`` into folder ``rel`` does (see the module and
        :class:`Placement`). Raises :class:`DestinationExists` (409) when the folder holds another
        request's output and ``if_exists`` is not ``refresh``, when it holds any output and ``if_exists``
        is ``error``, or when another request's job is still writing there."""
        path = self.root_dir / rel
        active = self.active_job(rel)
        if active is not None:
            if request_key_of(active) == key and if_exists != "error":
                return Placement(rel, active=active)
            raise DestinationExists(f"destination {rel!r} is used by another active job")
        if not (path / MANIFEST_NAME).is_file():
            failed = self.failed_job(rel) if if_exists != "error" and path.is_dir() else None
            placement = Placement(rel, replaces=failed) if failed is not None else Placement(rel)
        elif if_exists == "error":
            raise DestinationExists(f"destination {rel!r} already holds a staged job's output")
        else:
            placement = self._over_output(rel, key, if_exists, sources, prefix)
        placement.inside = placement.replaces is not None and is_mount_point(path)
        return placement

    def _over_output(
        self,
        rel: str,
        key: str,
        if_exists: str,
        sources: dict[str | None, str],
        prefix: Callable[[str | None, str], str],
    ) -> Placement:
        """:meth:`place` for a folder that holds a ``manifest.json`` and ``if_exists`` is not ``error``."""
        path = self.root_dir / rel
        prev = self.output_job(path)
        if prev is not None and prev.state in UNFINISHED_STATES:  # a failed job's output: staged again
            return Placement(rel, replaces=prev.id)
        same = prev is not None and request_key_of(prev) == key
        if not same and if_exists != "refresh":
            raise DestinationExists(
                f"destination {rel!r} already holds the output of a different request; choose another "
                "folder, or pass if_exists='refresh' to replace it"
            )
        if not same or if_exists == "refresh":
            return Placement(rel, replaces=prev.id if prev is not None else "")
        assert prev is not None
        fresh = check_sources(prev, sources, source_roots=self.source_roots, prefix=prefix)
        manifest = read_manifest(path) or {}
        if fresh.up_to_date and outputs_present(path, manifest):
            return Placement(rel, reuse=prev, fresh=fresh)
        return Placement(rel, replaces=prev.id, fresh=fresh)


def swap_in(root: Path, rel: str, into: str, *, staged_before: set[str], aside_name: str) -> list[str]:
    """Replace folder ``root/rel`` by ``root/into`` (two renames; the old folder is whole until then).

    Files of the old folder that were not staged output (``staged_before``: relative paths, and
    ``manifest.json``) are moved into the new folder when their name is free there, so nothing a user put
    beside the staged files is lost; the old folder is then removed (it is kept, renamed ``aside_name``,
    when some of its files could not be moved). The new folder takes the old one's permission bits and,
    where this process may give it, its group before it is swapped in: a folder the user made private
    (0700) or shared with a group (2770) stays so. Returns the relative paths of the files moved across.
    Every step is done by descriptor from ``root`` (:class:`~jupyter_staging.safety.confined.Confined`).
    Raises :class:`PathNotAllowed` when ``rel`` or a folder above it became a symlink.
    """
    fs = Confined(root)
    final, new = root / rel, root / into
    if fs.exists(final) and not fs.is_folder(final):
        raise PathNotAllowed(f"destination {rel!r} was replaced by a symbolic link or a file; not swapped in")
    if into.startswith(rel.rstrip("/") + "/"):  # staged inside: the folder is a mount point
        return _merge_in(fs, final, new, staged_before, aside_name)
    if not fs.exists(final):
        fs.rename(new, final, make_parents=True)
        return []
    with fs.folder(final) as old_fd, fs.folder(new) as new_fd:
        _same_access(old_fd, new_fd)
    aside = final.parent / aside_name
    # Both names change before the one fsync of their folder: a failing fsync stops nothing half-way.
    fs.rename(final, aside, sync=False)
    fs.rename(new, final)
    with fs.folder(aside) as old_fd, fs.folder(final) as new_fd:
        moved, kept = _carry_over(old_fd, new_fd, staged_before | {MANIFEST_NAME})
    if not kept:
        fs.remove_tree(aside)
    return moved


def _merge_in(fs: Confined, final: Path, new: Path, staged_before: set[str], aside_name: str) -> list[str]:
    """:func:`swap_in` for a folder that cannot be renamed (a mount point): the job staged into ``new``, a
    hidden folder inside ``final``. Each of its files takes its name in ``final`` with one ``rename(2)``,
    which replaces the old staged file of that name at once (``manifest.json`` last); a file of the user's
    with that name is first moved to ``final/<aside_name>/``. The old staged files the new output lacks
    are then removed, and ``new`` with them. The folder keeps its identity (mode, owner, mount). Returns
    the user's files moved aside."""
    staged = staged_before | {MANIFEST_NAME}
    written: set[str] = set()
    aside: list[str] = []

    def move(folder: PurePosixPath, name: str, dir_fd: int, final_fd: int) -> None:
        rel = (folder / name).as_posix()
        with closing_fd(open_below(final_fd, folder.as_posix(), create=True)) as target_fd:
            there = lstat_at(target_fd, name)
            if there is not None and (rel not in staged or stat.S_ISDIR(there.st_mode)):
                with closing_fd(open_below(final_fd, f"{aside_name}/{folder}", create=True)) as keep:
                    os.rename(name, name, src_dir_fd=target_fd, dst_dir_fd=keep)
                aside.append(rel)
            os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
        written.add(rel)

    with fs.folder(final) as final_fd, fs.folder(new) as new_fd:
        touched: set[str] = set()
        for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=new_fd):
            folder = PurePosixPath(dirpath)
            for name in files:
                if (folder, name) != (PurePosixPath("."), MANIFEST_NAME):
                    move(folder, name, dir_fd, final_fd)
                    touched.add(folder.as_posix())
        for folder_rel in sorted(touched - {"."}):  # each subfolder once, the top one with the manifest
            with closing_fd(open_below(final_fd, folder_rel)) as fd:
                fsync_fd(fd)
        if lstat_at(new_fd, MANIFEST_NAME) is not None:
            move(PurePosixPath("."), MANIFEST_NAME, new_fd, final_fd)
        fsync_fd(final_fd)
        for rel in sorted(staged - written):
            parent, _, name = rel.rpartition("/")
            try:
                with closing_fd(open_below(final_fd, parent)) as fd:
                    unlink_at(fd, name)
            except (FileNotFoundError, PathNotAllowed):
                continue
    fs.remove_tree(new)
    return aside


def _same_access(old_fd: int, new_fd: int) -> None:
    """Give folder ``new_fd`` the permission bits (setgid and sticky too) of folder ``old_fd``, the
    owner's read, write and search kept (the swap moves the user's files into it), and its group when
    this process may (a member of that group, or root); a group it may not give is left as made."""
    st = os.fstat(old_fd)
    if os.fstat(new_fd).st_gid != st.st_gid:
        with contextlib.suppress(PermissionError):
            os.fchown(new_fd, -1, st.st_gid)
    os.fchmod(new_fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)  # after the chown, which may clear setgid


def _carry_over(old_fd: int, new_fd: int, staged: set[str]) -> tuple[list[str], int]:
    """Move files of folder ``old_fd`` that are not in ``staged`` into folder ``new_fd`` at the same
    relative path (no overwrite, no symlink followed); returns the moved paths and the number of files
    that had to stay."""
    moved: list[str] = []
    kept = 0
    for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=old_fd):
        folder = PurePosixPath(dirpath)
        for name in files:
            rel = (folder / name).as_posix()
            if rel in staged or rel.endswith(".part"):
                continue
            try:
                target_fd = open_below(new_fd, folder.as_posix(), create=True)
            except PathNotAllowed:
                kept += 1
                continue
            try:
                if lstat_at(target_fd, name) is not None:
                    kept += 1
                    continue
                os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
                moved.append(rel)
            finally:
                os.close(target_fd)
    return moved, kept


def describe_changes(fresh: Freshness | None) -> str:
    """One log line saying which sources changed (``None`` stands for the job's single source)."""
    if fresh is None:
        return "staging again (if_exists=refresh, or the folder held other output)"
    changed = ", ".join("source" if e is None else e for e in fresh.changed) or "output files"
    reused = len(fresh.unchanged)
    return f"changed since the last run: {changed}; unchanged and reused from the local copy: {reused}"
