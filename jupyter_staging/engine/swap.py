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
from pathlib import Path, PurePosixPath

from jupyter_staging.destinations.manifest import MANIFEST_NAME
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.dirfd import closing_fd, fsync_fd, lstat_at, open_below, unlink_at, write_refused

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


def swap_in(
    root: Path,
    rel: str,
    into: str,
    *,
    staged_before: set[str],
    staged_now: set[str],
    aside_name: str,
) -> list[str]:
    """Replace the output in folder ``root/rel`` by the one staged in ``root/into``.

    ``staged_before``: the relative paths of the old output's files (and ``manifest.json``);
    ``staged_now``: those of the new output. With ``into`` beside ``rel``: two renames (the old folder is
    whole until then); files of the old folder that were not staged output are moved into the new one when
    their name is free there (symlinks and empty folders of the user's too), so nothing a user put beside
    the staged files is lost; the old folder is then removed (it is kept, renamed ``aside_name``, when some
    of its entries could not be moved). The new folder takes the old one's permission bits and, where this
    process may give it, its group before it is swapped in: a folder the user made private (0700) or shared
    with a group (2770) stays so. With ``into`` inside ``rel`` (a mount point): :func:`_merge_in`.

    Returns the relative paths of the user's entries moved (into the new folder, or with a mount point
    into ``rel/<aside_name>/``). Raises :class:`PathNotAllowed` when ``rel`` or a folder above it became a
    symlink, :class:`~jupyter_staging.errors.DestinationNotWritable` when a folder may not be written into.
    """
    fs = Confined(root)
    final, new = root / rel, root / into
    there = fs.lstat(final)
    if there is not None and not stat.S_ISDIR(there.st_mode):
        raise PathNotAllowed(f"destination {rel!r} was replaced by a symbolic link or a file; not swapped in")
    if staged_inside(rel, into):  # the folder is a mount point
        return _merge_in(fs, final, new, staged_before | {MANIFEST_NAME}, staged_now, aside_name)
    if there is None:
        fs.rename(new, final, make_parents=True)
        return []
    with fs.folder(final) as old_fd, fs.folder(new) as new_fd:
        _same_access(os.fstat(old_fd), new_fd)
    aside = final.parent / aside_name
    # Both names change before the one fsync of their folder: a failing fsync stops nothing half-way.
    fs.rename(final, aside, sync=False)
    fs.rename(new, final)
    with fs.folder(aside) as old_fd, fs.folder(final) as new_fd:
        moved, kept = _carry_over(old_fd, new_fd, staged_before | {MANIFEST_NAME})
    if not kept:
        fs.remove_tree(aside)
    return moved


def _merge_in(
    fs: Confined, final: Path, new: Path, staged_before: set[str], staged_now: set[str], aside_name: str
) -> list[str]:
    """:func:`swap_in` for a folder that cannot be renamed (a mount point): the job staged into ``new``, a
    hidden folder inside ``final``.

    The old ``manifest.json`` goes first, so a folder caught half-way never claims the old output whole.
    Each new file then takes its name in ``final`` with one ``rename(2)``, which replaces the old staged file
    of that name at once; an entry of the user's with that name is first moved to ``final/<aside_name>/``.
    The old staged files the new output lacks (``staged_before - staged_now``) are removed, the new manifest
    is moved last, and ``new`` is removed. Run again after a crash half-way, it moves what is left and
    removes only those (never a new file already moved). The folder keeps its identity (mode, owner,
    mount). Returns the user's entries moved aside."""
    aside: list[str] = []
    dropped = staged_before - staged_now - {MANIFEST_NAME}
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
                        _move_in(folder, name, dir_fd, final_fd, staged_before, aside_name, aside)
                        touched.add(folder.as_posix())
            for rel in sorted(dropped):
                parent, _, name = rel.rpartition("/")
                try:
                    with closing_fd(open_below(final_fd, parent)) as fd:
                        unlink_at(fd, name)
                except (FileNotFoundError, PathNotAllowed):
                    continue
            for folder_rel in sorted(touched - {"."}):  # each subfolder once, the top one with the manifest
                with closing_fd(open_below(final_fd, folder_rel)) as fd:
                    fsync_fd(fd)
            if lstat_at(new_fd, MANIFEST_NAME) is not None:
                _move_in(
                    PurePosixPath("."), MANIFEST_NAME, new_fd, final_fd, staged_before, aside_name, aside
                )
            fsync_fd(final_fd)
    except PermissionError as exc:  # a folder of the mount the server's user may not write into
        raise write_refused(final.name, exc) from None
    fs.remove_tree(new)
    return aside


def _move_in(
    folder: PurePosixPath,
    name: str,
    dir_fd: int,
    final_fd: int,
    staged: set[str],
    aside_name: str,
    aside: list[str],
) -> None:
    """Rename ``name`` of ``dir_fd`` (the scratch folder's ``folder``) to ``folder/name`` below
    ``final_fd``, replacing a file of the old output (in ``staged``); an entry of the user's there, or a
    folder, is first moved to ``<aside_name>/folder/name`` (its path appended to ``aside``)."""
    rel = (folder / name).as_posix()
    with closing_fd(open_below(final_fd, folder.as_posix(), create=True)) as target_fd:
        there = lstat_at(target_fd, name)
        if there is not None and (rel not in staged or stat.S_ISDIR(there.st_mode)):
            with closing_fd(open_below(final_fd, f"{aside_name}/{folder}", create=True)) as keep:
                if lstat_at(keep, name) is None:
                    os.rename(name, name, src_dir_fd=target_fd, dst_dir_fd=keep)
                    aside.append(rel)
        os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)


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


def _carry_over(old_fd: int, new_fd: int, staged: set[str]) -> tuple[list[str], int]:
    """Move the entries of folder ``old_fd`` that are not in ``staged`` into folder ``new_fd`` at the same
    relative path (no overwrite, no symlink followed): files, symlinks (to folders too), and empty folders
    (made again). Folders made for them are made 0700; then every subfolder of the new folder that the old
    one had takes the old one's permission bits and group (:func:`_same_subfolder_access`): a subfolder the
    user made private stays private, the new output's own too. Returns the moved paths and the number of
    entries that had to stay."""
    moved: list[str] = []
    kept = 0
    modes: dict[str, os.stat_result] = {}
    for dirpath, dirs, files, dir_fd in os.fwalk(".", dir_fd=old_fd):
        folder = PurePosixPath(dirpath)
        if folder != PurePosixPath("."):
            modes[folder.as_posix()] = os.fstat(dir_fd)
        links = [d for d in dirs if (st := lstat_at(dir_fd, d)) is not None and stat.S_ISLNK(st.st_mode)]
        entries = [n for n in [*files, *links] if (folder / n).as_posix() not in staged]
        if not files and not dirs and folder != PurePosixPath("."):  # an empty folder of the user's
            try:
                os.close(open_below(new_fd, folder.as_posix(), create=True, mode=0o700))
                moved.append(f"{folder.as_posix()}/")
            except PathNotAllowed:
                kept += 1
            continue
        for name in entries:
            rel = (folder / name).as_posix()
            try:
                target_fd = open_below(new_fd, folder.as_posix(), create=True, mode=0o700)
            except PathNotAllowed:
                kept += 1
                continue
            with closing_fd(target_fd):
                if lstat_at(target_fd, name) is not None:
                    kept += 1
                    continue
                os.rename(name, name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
                moved.append(rel)
    _same_subfolder_access(modes, new_fd)
    return moved, kept
