"""Files a job in the user's own server wrote (``jupyter_copy``), given their place by the hub service.

The job stages into a scratch folder beside the target (:mod:`~jupyter_staging.hub.jupytercopy`); the
file is linked from there under the target's name (:func:`publish_from_folder`: ``linkat``, which never
replaces and never follows a symlink), made read-only (:func:`make_read_only`, by descriptor) and the
scratch folder removed (:func:`remove_folder`). Everything is done relative to descriptors of the user's
folders (:class:`~jupyter_staging.hub.areas.Target`), on worker threads.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from jupyter_staging.errors import PathNotAllowed, StagingError
from jupyter_staging.hub.areas import Owner, Target
from jupyter_staging.hub.fileops import READ_FLAGS, SourceFile, copy_open, exists_error, sha256_of_fd
from jupyter_staging.safety.dirfd import fsync_fd, open_dir, rename_noreplace_at

log = logging.getLogger(__name__)


def make_read_only(target: Target) -> None:
    """``chmod 0444`` the regular file at ``target`` (opened without following a symlink), a file the
    user's own server wrote there. Where the service gives files to the user (``target.owner``: it runs as
    root), only a file the user owns already is touched (and its group made the user's): the name lies in
    the user's folder, and a hard link the user put there to someone else's file is never made read-only
    or given away by root. Best effort: a service without the right leaves it as is."""
    try:
        fd = os.open(target.name, READ_FLAGS, dir_fd=target.dir_fd)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return
        if target.owner is not None and st.st_uid != target.owner.uid:
            log.warning(
                "not making %s read-only: the file is not the user's (uid %d)", target.path, st.st_uid
            )
            return
        os.fchmod(fd, 0o444)
        if target.owner is not None:
            os.fchown(fd, target.owner.uid, target.owner.gid)
    except PermissionError:
        log.debug("cannot make %s read-only: not its owner", target.path)
    finally:
        os.close(fd)


def _same_bytes(folder_fd: int, name: str, target: Target) -> bool:
    """True when ``name`` in ``folder_fd`` and the target are regular files of the same size and sha256."""
    digests = []
    for dir_fd, file_name in ((folder_fd, name), (target.dir_fd, target.name)):
        fd = os.open(file_name, READ_FLAGS, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            digests.append(sha256_of_fd(fd))
        finally:
            os.close(fd)
    return digests[0] == digests[1]


def publish_from_folder(folder: str, file_name: str, target: Target) -> bool:
    """Give the file ``folder/file_name`` the target's name: ``folder`` lies in the target's folder (a
    ``jupyter_copy`` job's scratch folder); the file is linked with ``linkat``, which never replaces and
    never follows a symlink, and stays where it was too (see :func:`remove_folder`).

    Returns True when linked, False when the target already holds the same bytes (size and sha256).
    Raises :class:`DestinationExists` (``target_exists``) when a different file has the target's name,
    :class:`PathNotAllowed` when the folder or the file is a symlink or not what it should be,
    ``link_not_permitted`` (403) when the system refuses the link (``protected_hardlinks``: the service
    runs neither as root nor as the user), the rename (:func:`_move_in`, which it then tries) and reading
    the file to copy it (:func:`_copy_in`, tried last), :class:`FileNotFoundError` when the file is
    missing.
    """
    folder_fd = open_dir(target.dir_fd, folder)
    try:
        if not is_scratch_of(target.dir_fd, folder_fd, target.owner):
            raise PathNotAllowed(f"{folder} is not a folder the user's server made; nothing is taken from it")
        if not stat.S_ISREG(os.stat(file_name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
            raise PathNotAllowed(f"{folder}/{file_name} is not a regular file")
        try:
            os.link(
                file_name, target.name, src_dir_fd=folder_fd, dst_dir_fd=target.dir_fd, follow_symlinks=False
            )
        except FileExistsError:
            if not _same_bytes(folder_fd, file_name, target):
                raise exists_error(target) from None
            return False
        except PermissionError:  # protected_hardlinks: moved instead, never replacing
            if not _move_in(folder_fd, file_name, target):
                if not _same_bytes(folder_fd, file_name, target):
                    raise exists_error(target) from None
                return False
        fsync_fd(target.dir_fd)
        return True
    finally:
        os.close(folder_fd)


def _move_in(folder_fd: int, file_name: str, target: Target) -> bool:
    """Rename ``file_name`` of ``folder_fd`` to the target's name, never replacing (``renameat2`` with
    ``RENAME_NOREPLACE``): for a service that may not link the user's file (neither root nor the user's
    uid, with ``protected_hardlinks``) but may write in the user's folders. True when moved, False when the
    name was taken. Where the rename is refused too (the scratch folder is the user's, 0755), the file is
    copied in (:func:`_copy_in`), which raises as it says."""
    try:
        return rename_noreplace_at(folder_fd, file_name, target.name, into=target.dir_fd)
    except PermissionError:
        return _copy_in(folder_fd, file_name, target)


def _copy_in(folder_fd: int, file_name: str, target: Target) -> bool:
    """Copy ``file_name`` of ``folder_fd`` to the target as ``local_copy`` does (an unnamed file linked in
    when complete, never replacing): for a service that may neither link nor move the file the user's
    server wrote (its scratch folder is the user's, 0755) but may write in the user's folder (a group's).
    True when copied, False when the same bytes were there already. Raises :class:`StagingError`
    (``link_not_permitted``, 403) when it may not read the file either."""
    try:
        fd = os.open(file_name, READ_FLAGS, dir_fd=folder_fd)
    except PermissionError:
        raise StagingError(
            f"the system refused to link, move or read the file the user's server wrote for {target.path} "
            "(protected_hardlinks, folder permissions); run the service as root or as the users' uid",
            code="link_not_permitted",
            status=403,
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathNotAllowed(f"{file_name} is not a regular file")
        written = SourceFile(Path(file_name), st.st_size, st.st_dev, st.st_ino)
        return copy_open(fd, written, target).status == "succeeded"
    finally:
        os.close(fd)


def is_scratch_of(parent_fd: int, folder_fd: int, owner: Owner | None) -> bool:
    """True when the folder open as ``folder_fd`` (in ``parent_fd``) may be a job's scratch folder, made by
    the user's server: always for a service that is not root (the system decides what it may touch); as
    root, a folder of the user's uid (``owner``; where the user is not in the password database, of the uid
    of the folder it is in). The user knows the scratch folder's name (the operation's id) and may rename
    another folder of their area onto it, one they may not write into (an administrator's): root would
    have emptied it, and linked its files under the target's name."""
    if os.geteuid() != 0:
        return True
    expected = owner.uid if owner is not None else os.fstat(parent_fd).st_uid
    return os.fstat(folder_fd).st_uid == expected


def remove_folder(parent_fd: int, name: str, owner: Owner | None = None) -> None:
    """Remove folder ``name`` of ``parent_fd`` and the files right in it (links are removed, never
    followed; a subfolder keeps the folder), if it is a scratch folder of the user's (:func:`is_scratch_of`,
    ``owner`` the target's). Best effort: what cannot be removed stays, and is logged."""
    try:
        fd = open_dir(parent_fd, name)
    except (OSError, PathNotAllowed):
        return
    try:
        if not is_scratch_of(parent_fd, fd, owner):
            log.warning("not removing folder %s: it is not the user's (uid %d)", name, os.fstat(fd).st_uid)
            return
        for entry in os.listdir(fd):
            try:
                if not stat.S_ISDIR(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(entry, dir_fd=fd)
            except OSError as err:
                log.warning("cannot remove %s from %s: %s", entry, name, err.strerror)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError as err:
        log.warning("cannot remove folder %s: %s", name, err.strerror)
