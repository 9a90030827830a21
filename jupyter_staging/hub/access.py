"""Whether the user a call acts for may read a source or write into a folder, when the service's own
permissions would not say.

A service running as root may read every file under the shared roots, a root-only file (mode 0600) and a
file in another group's folder (0750) alike; it must not hand the user a copy, a download or a hard link of a
file the user could not read from a terminal. When it runs as root and the user is in the password database
(:func:`reader_for`), :func:`check_user_may_read` checks the user's permissions along the source's resolved
path: search (``x``) on every folder from ``/`` down, read (``r``) on the file, as the kernel decides it for
that uid and its groups, POSIX access ACLs (``system.posix_acl_access``, acl(5)) included. Likewise it must
not write, for the user, into a folder of the user's area the user may not write into (an administrator's
read-only folder there): :func:`user_may` answers for a folder open as a descriptor
(:meth:`~jupyter_staging.hub.areas.UserAreas.open_target` asks it). A service that is not root reads and
writes only what its own account may: it is not checked again here.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from jupyter_staging.errors import SourceNotFound

#: Permission bits asked for: read a file, write into a folder, search a folder.
READ, WRITE, SEARCH = 4, 2, 1

#: acl(5) entry tags as ``system.posix_acl_access`` stores them (linux/posix_acl_xattr.h), version 2.
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_HEADER, _ACL_ENTRY = struct.Struct("<I"), struct.Struct("<HHI")


@dataclass(frozen=True)
class Reader:
    """A user's numeric identity as the kernel checks it: ``uid`` and every group id it is in."""

    name: str
    uid: int
    gids: frozenset[int]


def reader_for(username: str) -> Reader | None:
    """The user's :class:`Reader` (uid, primary and supplementary groups) when this process runs as root
    and the user is in the password database; None otherwise (nothing to check: the service reads only
    what its own account may)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        return None
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    return Reader(entry.pw_name, entry.pw_uid, frozenset([entry.pw_gid, *groups]))


def check_user_may_read(path: Path, reader: Reader, identity: tuple[int, int] | None = None) -> None:
    """Raise :class:`SourceNotFound` (403, ``permission_denied``) unless ``reader`` may search every folder
    of the resolved, absolute ``path`` from ``/`` down and read the file (mode bits and POSIX ACLs; a name
    on the way that is a symbolic link now, or is gone, is refused too: the caller resolved it, and so is
    a file at ``path`` that is not of ``identity``, the (device, inode) the caller checked). The message
    names the path, not which folder or which bits refused."""
    if reader.uid == 0:
        return
    steps = [Path(*path.parts[:depth]) for depth in range(1, len(path.parts) + 1)]
    for step in steps:
        try:
            st = os.stat(step, follow_symlinks=False)
        except OSError:
            break
        want = READ if step == path else SEARCH
        if stat.S_ISLNK(st.st_mode) or not _granted(st, _acl_of(step), reader, want):
            break
        if step == path and identity is not None and (st.st_dev, st.st_ino) != identity:
            break
    else:
        return
    raise _not_readable(str(path), reader)


def check_user_may_reach(path: str, reader: Reader) -> None:
    """Raise :class:`SourceNotFound` (403, ``permission_denied``) when a folder on the way to ``path`` as
    written (absolute, made normal without resolving links) exists and ``reader`` may not search it: what
    lies below such a folder is not the user's to learn of, so a refusal of ``path`` for what is there
    (missing, a folder, a link leaving the roots) is answered as this instead. A name on the way that is
    missing, a link or not a folder ends the look (nothing raised)."""
    if reader.uid == 0 or not path.startswith("/") or "\x00" in path:
        return
    parts = Path(os.path.normpath(path)).parts
    for depth in range(1, len(parts)):
        step = Path(*parts[:depth])
        try:
            st = os.stat(step, follow_symlinks=False)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        if not _granted(st, _acl_of(step), reader, SEARCH):
            raise _not_readable(path, reader)


def _not_readable(path: str, reader: Reader) -> SourceNotFound:
    return SourceNotFound(
        f"source {path!r}: {reader.name} may not read it (its permissions, or a folder's on the way); "
        "the service stages only what the user may read",
        code="permission_denied",
        status=403,
    )


def user_may(fd: int, reader: Reader, want: int) -> bool:
    """Whether ``reader`` has the ``want`` bits (:data:`READ`, :data:`WRITE`, :data:`SEARCH`, or'ed) on the
    file or folder open as ``fd`` (mode bits, groups and its POSIX access ACL); always for root (uid 0)."""
    return reader.uid == 0 or _granted(os.fstat(fd), _acl_of(fd), reader, want)


def _acl_of(path: Path | int) -> bytes | None:
    """The POSIX access ACL of ``path`` (or of the file open as that descriptor) as stored (None when it
    has none, or the file system keeps none); a symbolic link's own, never its target's."""
    try:
        if isinstance(path, int):
            return os.getxattr(path, "system.posix_acl_access")
        return os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def _granted(st: os.stat_result, acl: bytes | None, reader: Reader, want: int) -> bool:
    """Whether ``reader`` has the ``want`` bits on a file of status ``st`` and access ACL ``acl``, decided
    as acl(5) "ACCESS CHECK ALGORITHM" does (the plain mode bits when there is no ACL)."""
    entries = _parse_acl(acl) if acl else []
    if reader.uid == st.st_uid:
        return _bits(st.st_mode >> 6, want)
    if entries is None:  # an ACL this code cannot read: nothing granted but to the owner
        return False
    if not entries:
        if st.st_gid in reader.gids:
            return _bits(st.st_mode >> 3, want)
        return _bits(st.st_mode, want)
    mask = next((perm for tag, perm, _ in entries if tag == _MASK), 0o7)
    for tag, perm, qualifier in entries:
        if tag == _USER and qualifier == reader.uid:
            return _bits(perm & mask, want)
    groups = [
        perm
        for tag, perm, qualifier in entries
        if (tag == _GROUP_OBJ and st.st_gid in reader.gids) or (tag == _GROUP and qualifier in reader.gids)
    ]
    if groups:
        return any(_bits(perm & mask, want) for perm in groups)
    return _bits(st.st_mode, want)


def _bits(perm: int, want: int) -> bool:
    return perm & 0o7 & want == want


def _parse_acl(raw: bytes) -> list[tuple[int, int, int]] | None:
    """``(tag, perm, id)`` of every entry of a stored ``system.posix_acl_access`` value; None for an ACL of
    another version or length (not what this kernel writes)."""
    body = len(raw) - _ACL_HEADER.size
    if body < 0 or body % _ACL_ENTRY.size or _ACL_HEADER.unpack_from(raw)[0] != _ACL_VERSION:
        return None
    return [_ACL_ENTRY.unpack_from(raw, _ACL_HEADER.size + i * _ACL_ENTRY.size) for i in range(body // 8)]
