"""Putting a replacing job's output in place of the old one (DESIGN.md, "Re-running a notebook").

A job that replaces an earlier output stages into a scratch folder (``placement.swap_folder``) and, once
complete, :func:`swap_in` puts it in place. Usually the scratch folder lies beside the destination folder and
the swap is two renames: the old folder is whole until then. A destination folder that is a mount point
(:func:`is_mount_point`) cannot be renamed (``EBUSY``); there the job stages into a hidden folder inside it
and the files move in one by one (:func:`_merge_in`). Either way the user's own files in the folder are
kept, every step is done by descriptor from the root (never through a symlink), and the folder at the
destination's path keeps the permission bits and group the user gave it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest
from jupyter_staging.engine.freshness import fingerprints_of, output_as_staged
from jupyter_staging.engine.models import DONE_STATES
from jupyter_staging.engine.schema import JobChunk, JobRecord
from jupyter_staging.errors import DestinationExists, PathNotAllowed
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.dirfd import (
    closing_fd,
    fsync_fd,
    lstat_at,
    open_below,
    rename_noreplace_at,
    set_aside_at,
    unlink_at,
    write_refused,
)

log = logging.getLogger(__name__)

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


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
        if len(fields) > 4 and _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]) == target:
            return True
    return False


def staged_inside(rel: str, into: str) -> bool:
    """Whether the output for folder ``rel`` was staged inside it (``into`` below ``rel``: a mount point,
    merged file by file) rather than beside it (renamed into place)."""
    return into.startswith(rel.rstrip("/") + "/")


@dataclass
class Swapped:
    """What :func:`swap_in` did with the entries of the old folder that were not its unchanged output
    (paths relative to the destination folder).

    ``moved``: the user's own entries (never staged) carried into the new folder under their names.
    ``set_aside``: ``{path: path now}`` of entries kept under a set-aside name
    (``_<name>.set-aside-<suffix>``, :func:`~jupyter_staging.safety.dirfd.set_aside_name`): a staged file
    the user changed since it was staged, and an entry of the user's whose name the new output takes.
    ``left``: entries that could not be moved (a folder not writable, a name the new output made a file):
    they stay in the old folder, kept beside the destination under the swap's ``aside_name``, or at their
    place in a mount point.
    """

    moved: list[str] = field(default_factory=list)
    set_aside: dict[str, str] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)


def recorded_outputs(manifest: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{relative path: what tells the staged file changed since}`` of each object of an output's
    ``manifest`` (:func:`changed_since_staged`): its ``size`` (bytes) and ``mtime_ns``; for a ``hardlink``
    job, whose link changes with its source, the source's ``inode`` the link shares; for a ``symlink``
    job, only that it is a link. Empty without a manifest."""
    method = (manifest or {}).get("method")
    return {
        str(obj.get("path")): recorded_output(
            method, obj.get("size"), obj.get("mtime_ns"), (obj.get("fingerprint") or {}).get("inode")
        )
        for obj in (manifest or {}).get("objects", [])
    }


def recorded_output(
    method: str | None, size: int | None, mtime_ns: int | None, inode: int | None = None
) -> dict[str, Any]:
    """What tells that one file a job of ``method`` staged changed since (:func:`changed_since_staged`):
    its ``size`` (bytes) and ``mtime_ns`` as published (those known); for a ``hardlink`` job the source's
    ``inode`` (None: unknown, then only a file that is no regular one any more counts as changed); for a
    ``symlink`` job only that it is a link."""
    if method == "hardlink":
        return {"link": "hardlink", "inode": inode}
    if method == "symlink":
        return {"link": "symlink"}
    return {key: value for key, value in (("size", size), ("mtime_ns", mtime_ns)) if value is not None}


def published_by(job: JobRecord, chunks: Iterable[JobChunk]) -> dict[str, dict[str, Any]]:
    """``{relative path: what tells it changed since}`` (:func:`recorded_output`) of the files failed job
    ``job`` (read with its resume data) published: its done ``chunks``, as it recorded them
    (size, time; for a hard link, the inode of the source it listed). One the user changed since, or put
    at such a name, is kept when the new output is swapped in (a failed job wrote no manifest)."""
    resume = job.resume or {}
    outputs, fingerprints = resume.get("outputs") or {}, fingerprints_of(resume)
    return {
        chunk.path: recorded_output(
            job.method,
            chunk.bytes,
            chunk.mtime_ns,
            fingerprints.get(outputs.get(chunk.path, chunk.path), {}).get("inode"),
        )
        for chunk in chunks
        if chunk.state in DONE_STATES
    }


def changed_since_staged(recorded: Mapping[str, Any] | None, st: os.stat_result | None) -> bool:
    """Whether a staged file, now of status ``st`` (an ``lstat``), is no longer as ``recorded``
    (:func:`recorded_outputs`) says the job left it: a file whose size (bytes) or ``mtime_ns`` changed
    (:func:`~jupyter_staging.engine.freshness.output_as_staged`: edited, appended to, saved over); a hard
    link that is no longer the source's inode (saved over: a new file) or no regular file; a symlink that
    is no link any more. False with nothing recorded (``{}``), for a folder, or when gone."""
    if not recorded or st is None or stat.S_ISDIR(st.st_mode):
        return False
    link = recorded.get("link")
    if link == "symlink":
        return not stat.S_ISLNK(st.st_mode)
    if link == "hardlink":
        inode = recorded.get("inode")
        return not stat.S_ISREG(st.st_mode) or (inode is not None and st.st_ino != inode)
    return not output_as_staged(st, recorded)


def kept_lines(done: Swapped, staged_before: set[str], aside: str) -> list[tuple[str, str]]:
    """The job's log lines (``(level, message)``) saying what a swap kept of the old folder (``done``):
    five paths a line, and how many more. ``staged_before``: the old output's paths (a set-aside one among
    them was changed since it was staged); ``aside``: where entries left stay (relative to the root: the
    old folder kept beside the destination, or the destination itself when it is a mount point)."""

    def count(n: int) -> str:
        return f"{n} entry" if n == 1 else f"{n} entries"

    def listed(paths: list[str]) -> str:
        return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")

    lines = []
    if done.moved:
        lines.append(("info", f"kept {count(len(done.moved))} of yours: {listed(done.moved)}"))
    if done.set_aside:
        changed = sum(before in staged_before for before in done.set_aside)
        pairs = [f"{before} as {now}" for before, now in done.set_aside.items()]
        lines.append(
            (
                "warning",
                f"kept {count(len(done.set_aside))} under another name ({changed} changed since staged, "
                f"{len(done.set_aside) - changed} of yours in the new output's way): {listed(pairs)}",
            )
        )
    if done.left:
        lines.append(
            (
                "warning",
                f"{count(len(done.left))} could not be moved into the new output and stay in {aside}: "
                f"{listed(done.left)}",
            )
        )
    return lines


def swap_in(
    root: Path,
    rel: str,
    into: str,
    *,
    staged_before: Mapping[str, Mapping[str, Any]],
    staged_now: set[str],
    aside_name: str,
    suffix: str,
) -> Swapped:
    """Replace the output in folder ``root/rel`` by the one staged in ``root/into``.

    ``staged_before``: ``{relative path: manifest object}`` of the old output's files (``size`` in bytes,
    ``mtime_ns``; ``{}`` where nothing was recorded); ``staged_now``: the relative paths of the new
    output's. With ``into`` beside ``rel``: two renames (the old folder is whole until then, and kept as
    ``aside_name`` until its entries are carried over: run again after a stop part way, the swap goes on
    from where it stopped); entries of the old folder that are not its unchanged output are moved into the
    new one (symlinks and empty folders of the user's too), so nothing is lost: a staged file the user
    changed since (:func:`changed_since_staged`) under a set-aside name (``_<name>.set-aside-<suffix>``),
    an entry of the user's under its own name, or a set-aside one when the new output has that name. The
    old folder is then removed (it is kept, renamed ``aside_name``, when some of its entries could not be
    moved). The new folder takes the old one's permission bits and, where this process may give it, its
    group before it is swapped in: a folder the user made private (0700) or shared with a group (2770)
    stays so. With ``into`` inside ``rel`` (a mount point): :func:`_merge_in`.

    Returns what was kept (:class:`Swapped`; paths relative to ``rel``). Raises :class:`PathNotAllowed`
    when ``rel`` or a folder above it became a symlink,
    :class:`~jupyter_staging.errors.DestinationNotWritable` when a folder may not be written into.
    """
    staged_before = {**staged_before, MANIFEST_NAME: {}}
    fs = Confined(root)
    final, new = root / rel, root / into
    there = fs.lstat(final)
    if there is not None and not stat.S_ISDIR(there.st_mode):
        raise PathNotAllowed(f"destination {rel!r} was replaced by a symbolic link or a file; not swapped in")
    if staged_inside(rel, into):  # the folder is a mount point
        return _merge_in(fs, final, new, staged_before, staged_now, suffix)
    aside = final.parent / aside_name
    if fs.lstat(aside) is None:
        if there is None:
            fs.rename(new, final, make_parents=True)
            return Swapped()
        with fs.folder(final) as old_fd, fs.folder(new) as new_fd:
            _same_access(os.fstat(old_fd), new_fd)
        # Both names change before the one fsync of their folder: a failing fsync stops nothing half-way.
        fs.rename(final, aside, sync=False)
        fs.rename(new, final)
    elif fs.lstat(new) is not None:  # run again after a stop between the two renames: the old folder is
        if there is not None:  # aside already, and something took its name since
            raise DestinationExists(
                f"{rel!r} was made again while its output was being replaced; the old output is in "
                f"{aside_name} beside it, the new one in {into!r}"
            )
        fs.rename(new, final)
    # else: run again after a stop past both renames; what the old folder still holds is carried over.
    with fs.folder(aside) as old_fd, fs.folder(final) as new_fd:
        done = _carry_over(old_fd, new_fd, staged_before, suffix)
    if not done.left:
        fs.remove_tree(aside)
    return done


def swap_started(resume: Mapping[str, Any] | None) -> bool:
    """Whether a job's resume data says its swap started (``swap["before"]``, what the old output
    recorded, is kept from the swap's start until it is done) or is done: its output is complete and being,
    or already, put in place. A run of an unfinished job that stopped then leaves the end to the next run
    (:meth:`~jupyter_staging.engine.runner.JobRunner.run_items`), and a pause or cancel comes too late."""
    swap = (resume or {}).get("swap") or {}
    return swap.get("before") is not None or bool(swap.get("done"))


def nothing_moved(root: Path, rel: str, into: str, aside_name: str) -> bool:
    """Whether a :func:`swap_in` that raised had moved nothing yet: the new output is still whole in its
    scratch folder ``root/into`` beside ``rel``, and the old folder was not set aside (``aside_name``).
    False for a merge into a mount point (its files move one by one)."""
    if staged_inside(rel, into):
        return False
    try:
        new = os.lstat(root / into)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(new.st_mode) and not os.path.lexists((root / rel).parent / aside_name)


def too_late(requested: str) -> str:
    """The log line of a pause or cancel (``requested``: ``"paused"``, ``"cancelled"``) that came once the
    job's swap had started (:func:`swap_started`)."""
    asked = {"paused": "pause", "cancelled": "cancel"}.get(requested, requested)
    return f"a {asked} was asked for too late: the output is complete and being swapped in"


def kept_before(final: Path, suffix: str, done: Swapped) -> list[str]:
    """The set-aside entries below ``final`` (``_<name>.set-aside-<suffix>``, or ``-2``... when taken)
    that ``done`` does not list: kept by a run of the swap that stopped, relative to ``final``, sorted."""
    ours = re.compile(rf"_.*\.set-aside-{re.escape(suffix)}(-[0-9]+)?")
    listed = set(done.set_aside.values())
    found = []
    for dirpath, dirs, files in os.walk(final):
        for name in [*files, *dirs]:
            rel = os.path.relpath(os.path.join(dirpath, name), final)
            if ours.fullmatch(name) and rel not in listed:
                found.append(rel)
    return sorted(found)


def swapped_already(root: Path, rel: str, into: str, aside_name: str, job_id: str) -> bool:
    """True when a swap of job ``job_id`` that a stop cut short was complete but for its record: the
    scratch folder ``root/into`` is gone (renamed into place, or emptied by a merge), nothing is left aside
    beside ``root/rel`` (``aside_name``), and ``root/rel`` holds the job's manifest (read by descriptor)."""
    final = root / rel
    if os.path.lexists(root / into) or os.path.lexists(final.parent / aside_name):
        return False
    manifest = read_manifest(final, root=root)
    return manifest is not None and manifest.get("job_id") == job_id


def _merge_in(
    fs: Confined,
    final: Path,
    new: Path,
    staged_before: Mapping[str, Mapping[str, Any]],
    staged_now: set[str],
    suffix: str,
) -> Swapped:
    """:func:`swap_in` for a folder that cannot be renamed (a mount point): the job staged into ``new``, a
    hidden folder inside ``final``.

    The old ``manifest.json`` goes first, so a folder caught half-way never claims the old output whole.
    Each new file then takes its name in ``final`` with one ``rename(2)``, which replaces the old staged file
    of that name at once; an entry of the user's with that name, or a staged file the user changed since
    (:func:`changed_since_staged`), is first set aside in its folder (``_<name>.set-aside-<suffix>``).
    The old staged files the new output lacks are removed (set aside when changed), the new manifest is
    moved last, and ``new`` is removed. Run again after a crash half-way, it moves what is left and
    removes only those (never a new file already moved). The folder keeps its identity (mode, owner,
    mount). Returns the entries set aside."""
    done = Swapped()
    dropped = set(staged_before) - staged_now - {MANIFEST_NAME}
    try:
        with fs.folder(final) as final_fd, fs.folder(new) as new_fd:
            if lstat_at(new_fd, MANIFEST_NAME) is not None:
                unlink_at(final_fd, MANIFEST_NAME)
                fsync_fd(final_fd)
            touched: set[str] = set()
            for dirpath, _dirs, files, dir_fd in os.fwalk(".", dir_fd=new_fd):
                folder = PurePosixPath(dirpath)
                for name in files:
                    if (folder, name) != (PurePosixPath("."), MANIFEST_NAME):
                        _move_in(folder, name, dir_fd, final_fd, staged_before, suffix, done)
                        touched.add(folder.as_posix())
            for rel in sorted(dropped):
                parent, _, name = rel.rpartition("/")
                try:
                    with closing_fd(open_below(final_fd, parent)) as fd:
                        if not changed_since_staged(staged_before[rel], lstat_at(fd, name)):
                            unlink_at(fd, name)
                        elif not _set_aside(fd, PurePosixPath(parent or "."), name, suffix, done):
                            done.left.append(rel)  # stays at its name
                except (FileNotFoundError, PathNotAllowed):
                    continue
            for folder_rel in sorted(touched - {"."}):  # each subfolder once, the top one with the manifest
                with closing_fd(open_below(final_fd, folder_rel)) as fd:
                    fsync_fd(fd)
            if lstat_at(new_fd, MANIFEST_NAME) is not None:
                _move_in(PurePosixPath("."), MANIFEST_NAME, new_fd, final_fd, staged_before, suffix, done)
            fsync_fd(final_fd)
    except PermissionError as exc:  # a folder of the mount the server's user may not write into
        raise write_refused(final.name, exc) from None
    fs.remove_tree(new)
    return done


def _set_aside(dir_fd: int, folder: PurePosixPath, name: str, suffix: str, done: Swapped) -> bool:
    """Rename entry ``name`` of ``dir_fd`` (folder ``folder`` of the output) to its set-aside name in the
    same folder and record it in ``done``; False when that fails (every set-aside name taken, a folder not
    writable): it stays."""
    try:
        new_name = set_aside_at(dir_fd, name, suffix)
    except (DestinationExists, OSError):
        return False
    done.set_aside[(folder / name).as_posix()] = (folder / new_name).as_posix()
    return True


def _move_in(
    folder: PurePosixPath,
    name: str,
    dir_fd: int,
    final_fd: int,
    staged: Mapping[str, Mapping[str, Any]],
    suffix: str,
    done: Swapped,
) -> None:
    """Rename ``name`` of ``dir_fd`` (the scratch folder's ``folder``) to ``folder/name`` below
    ``final_fd``, replacing a file of the old output (in ``staged``) as it was staged; an entry of the
    user's there, a folder, or a staged file changed since, is first set aside in that folder. A file gone
    from the scratch folder since it was listed (acked, so deleted, under ``delete_on_ack``) is not moved:
    the old output's file at its name is removed, as for a file the new output lacks."""
    rel = (folder / name).as_posix()
    with closing_fd(open_below(final_fd, folder.as_posix(), create=True)) as target_fd:
        there = lstat_at(target_fd, name)
        if there is not None and (
            rel not in staged or stat.S_ISDIR(there.st_mode) or changed_since_staged(staged[rel], there)
        ):
            if not _set_aside(target_fd, folder, name, suffix, done):  # never replaced: the job stops here
                raise DestinationExists(f"{rel} is not the old output as staged, and could not be set aside")
            there = None
        try:
            os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
        except FileNotFoundError:
            if lstat_at(dir_fd, name) is not None:
                raise
            if there is not None:  # the old output's file, as staged (else set aside above)
                with contextlib.suppress(FileNotFoundError):
                    unlink_at(target_fd, name)


def _same_access(old: os.stat_result, new_fd: int) -> None:
    """Give folder ``new_fd`` the permission bits (setgid and sticky too) of the old folder whose status is
    ``old``, the owner's read, write and search kept (the swap moves the user's files into it), and its
    group when this process may (a member of that group, or root). Where the group cannot be given, the
    folder's own group gets no more than others had in the old folder (a folder shared with one group,
    2770, becomes 0700, never 0770 for another group), and no setgid. Best effort: a group or mode the
    file system refuses (``EPERM``, ``EINVAL`` for a group not mapped in a user namespace, ``ENOTSUP``) is
    logged and the folder left as made."""
    mode = stat.S_IMODE(old.st_mode) | stat.S_IRWXU
    try:
        if os.fstat(new_fd).st_gid != old.st_gid:
            with contextlib.suppress(OSError):
                os.fchown(new_fd, -1, old.st_gid)
            if os.fstat(new_fd).st_gid != old.st_gid:
                others = mode & stat.S_IRWXO
                mode = (mode & ~(stat.S_ISGID | stat.S_IRWXG)) | (mode & stat.S_IRWXG & (others << 3))
        os.fchmod(new_fd, mode)  # after the chown, which may clear setgid
    except OSError as exc:
        log.warning("could not give a swapped-in folder the old one's permission bits: %s", exc.strerror)


def _same_subfolder_access(modes: dict[str, os.stat_result], new_fd: int) -> None:
    """Give each subfolder of ``new_fd`` named in ``modes`` (relative path: the old folder's status) the
    old one's access (:func:`_same_access`); one that is not there (or not a folder) is skipped. Parents
    first, so each is reached through folders already done."""
    for rel in sorted(modes, key=lambda r: r.count("/")):
        try:
            sub_fd = open_below(new_fd, rel)
        except (OSError, PathNotAllowed):
            continue
        with closing_fd(sub_fd):
            _same_access(modes[rel], sub_fd)


def _carry_over(old_fd: int, new_fd: int, staged: Mapping[str, Mapping[str, Any]], suffix: str) -> Swapped:
    """Move the entries of folder ``old_fd`` that are not its unchanged output into folder ``new_fd`` at
    the same relative path (never replacing anything, no symlink followed): files, symlinks (to folders
    too), and empty folders of the user's (made again; not one that held staged files, emptied by the
    user or by a removal a stop cut short); a staged file changed since (:func:`changed_since_staged`), or
    an entry whose name the new output has, under a set-aside name. Folders made for them are made 0700;
    then every subfolder of the new folder that the old one had takes the old one's permission bits and
    group (:func:`_same_subfolder_access`): a subfolder the user made private stays private, the new
    output's own too. Returns what was moved, and what had to stay (``Swapped.left``)."""
    done = Swapped()
    modes: dict[str, os.stat_result] = {}
    staged_folders = {"."} | {parent.as_posix() for rel in staged for parent in PurePosixPath(rel).parents}
    for dirpath, dirs, files, dir_fd in os.fwalk(".", dir_fd=old_fd):
        folder = PurePosixPath(dirpath)
        if folder != PurePosixPath("."):
            modes[folder.as_posix()] = os.fstat(dir_fd)
        users_empty_folder = not files and not dirs and folder.as_posix() not in staged_folders
        if users_empty_folder:
            try:
                os.close(open_below(new_fd, folder.as_posix(), create=True, mode=0o700))
                done.moved.append(f"{folder.as_posix()}/")
            except (PathNotAllowed, OSError):
                done.left.append(f"{folder.as_posix()}/")
            continue
        links = [d for d in dirs if (st := lstat_at(dir_fd, d)) is not None and stat.S_ISLNK(st.st_mode)]
        for name in [*files, *links]:
            rel = (folder / name).as_posix()
            if rel in staged and not changed_since_staged(staged[rel], lstat_at(dir_fd, name)):
                continue  # the old output as it was staged: it goes with the old folder
            try:
                _carry_one(dir_fd, folder, name, new_fd, suffix, staged=rel in staged, done=done)
            except (PathNotAllowed, DestinationExists, OSError):  # EACCES, ENOENT (gone meanwhile)
                done.left.append(rel)
    _same_subfolder_access(modes, new_fd)
    return done


def _carry_one(
    dir_fd: int, folder: PurePosixPath, name: str, new_fd: int, suffix: str, *, staged: bool, done: Swapped
) -> None:
    """Move entry ``name`` of ``dir_fd`` (folder ``folder`` of the old output) to the same folder below
    ``new_fd``, never replacing anything there: under its own name when it was never staged output
    (``staged`` False) and the name is free there, else under the first set-aside name free there.
    Raises :class:`PathNotAllowed` (the folder is not one there), ``DestinationExists`` (no name left)
    or ``OSError`` when it cannot be moved."""
    rel = (folder / name).as_posix()
    with closing_fd(open_below(new_fd, folder.as_posix(), create=True, mode=0o700)) as target_fd:
        if not staged and rename_noreplace_at(dir_fd, name, name, into=target_fd):
            done.moved.append(rel)
            return
        new_name = set_aside_at(dir_fd, name, suffix, into=target_fd)
    done.set_aside[rel] = (folder / new_name).as_posix()
