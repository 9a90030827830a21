"""A folder outside the user's root that the server uses by path (``StagingApp.scratch_dir``): one no other
account controls.

The rule is OpenSSH's ``StrictModes`` for the folders on the way to a key file, with the sticky bit of
``/tmp`` allowed: every folder on the way, links resolved, is owned by this account or by root, and no other
account may write into it unless its sticky bit is set (then nobody else may rename or remove what this
account makes there: ``unlink(2)``, "EPERM ... the directory containing pathname has the sticky bit set
and the process's effective UID is neither the UID of the file to be deleted nor that of the directory
containing it"); a link on the way is this account's or root's. Once the rule holds, nobody else can change
what the path leads to, so later opens by path reach the folder that was checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jupyter_staging.errors import DestinationUnavailable, PathNotAllowed


def path_exposure(path: Path) -> str | None:
    """Why another account could change what the absolute, existing ``path`` leads to or what this
    account makes in it (a sentence naming the folder or link and its owner or mode), or None.

    Looks at each link on the way (``lstat``: owned by this account or root) and at each folder of the
    path with its links resolved, from ``/`` to the folder itself (owned by this account or root; writable
    by others only with the sticky bit). Raises ``OSError`` when a folder on the way cannot be read."""
    mine = (os.geteuid(), 0)
    current = Path(path.anchor)
    for part in path.parts[1:]:
        current = current / part
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in mine:
            return f"{current} is a link of another account (uid {info.st_uid})"
    real = path.resolve(strict=True)
    current = Path(real.anchor)
    for part in ("", *real.parts[1:]):
        current = current / part if part else current
        info = os.stat(current)
        if info.st_uid not in mine:
            return f"{current} belongs to another account (uid {info.st_uid})"
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(info.st_mode)
            return f"{current} can be written by other accounts (mode {mode:o}, no sticky bit)"
    return None


def check_private_folder(folder: Path, setting: str = "StagingApp.scratch_dir") -> None:
    """Make the absolute ``folder`` (its parents as needed, mode 0700 for itself) when missing, then check
    it with :func:`path_exposure`. ``setting``: what the administrator sets, named in messages.

    Raises :class:`PathNotAllowed` (``path_not_allowed``) when another account controls the folder or a
    folder or link on its way (it could swap a job's folder for its own and read or change what the job
    prepares), :class:`DestinationUnavailable` (``destination_unavailable``) when it cannot be made or
    looked at (a file on the way, no permission)."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        problem = path_exposure(folder)
    except OSError as exc:
        raise DestinationUnavailable(
            f"the scratch folder {str(folder)!r} cannot be made or looked at ({exc.strerror or exc}): check "
            f"{setting}"
        ) from None
    if problem:
        raise PathNotAllowed(
            f"the scratch folder {str(folder)!r} is not private: {problem}. Jobs writing to object storage "
            f"do not prepare their files there; make it a folder of this account with mode 0700 on a "
            f"path no other account controls, or leave {setting} empty"
        )


def check_own_folder(fd: int, name: str) -> None:
    """Check the folder open as ``fd`` (a job's folder made or found in a private scratch folder, which may
    be sticky and writable by all, as ``/tmp``): this account's. Raises :class:`PathNotAllowed`
    (``path_not_allowed``) otherwise: another account made it first, and could read what the job writes."""
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        raise PathNotAllowed(f"{name} was made by another account (uid {owner}); nothing is written in it")
