"""Owner attributes: which job published a file, so that a run resumed after a crash takes as its own only
what it published itself.

A job publishes a file under its final name (``linkat``) and records its chunk later, in a batch; a server
killed between the two leaves files published and not recorded. The next run finds them at their names.
Size, bytes or times cannot tell such a file from one the user put there meanwhile (a copy of the very
bytes, a ``chmod`` that sets the ctime), and taking a user's file as the job's output is a loss: acking the
chunk, its TTL or a cancel's delete policy would remove it later. So every file a job publishes in a local
destination carries, from before it has its name, the extended attribute :data:`PUBLISHED_XATTR` with
:func:`published_tag`: 32 hex digits of a digest of the job's id, the file's path and its bytes' sha256. A
resumed run takes a file as its own only with that tag for the bytes it holds (:func:`taken_back`).

The value is 32 bytes so that ext4 keeps it inside a 256-byte inode: a longer one (53 bytes) cost every
tagged file a 4 KiB block of its own. Where the file system keeps no user attributes (NFS before 4.2, for
example) files go untagged, and nothing can tell the job's from a user's (:func:`keeps_attributes`): a
resumed run there takes a regular file of the expected size (and bytes, where they are known: an
extracted file's), as it did before the tag.
A named part file (``<name>.part``) also carries :data:`OWNER_XATTR`, from the moment it is made: which job
made it (:func:`part_owner_prefix`; :func:`tag_part`) and, for a download, which source version may resume
it (:func:`jupyter_staging.engine.parts.owner_tag`); the published file keeps it, unused. The cleanup of a
failed or cancelled job removes a ``.part`` only when it is the job's (:func:`part_of_job`): a file the user
put at such a name is left where it is.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import stat

from jupyter_staging.errors import PathNotAllowed

#: Extended attribute naming the job (and source version) that writes a part file, which may resume it
#: (:func:`jupyter_staging.engine.parts.owner_tag`; ``user.``: any owner of the file may set it, setxattr(2)).
OWNER_XATTR = "user.jupyter_staging.owner"

#: Extended attribute naming the job that published a file, for its path and bytes (:func:`published_tag`).
#: An attribute of its own: a part stopped after it is set and before it takes its name keeps its
#: :data:`OWNER_XATTR`, and is resumed by its rules (this job, this version of the source).
PUBLISHED_XATTR = "user.jupyter_staging.published"

#: Extended attribute of a part file the server made for Dask range tasks to fill: a random token the
#: tasks are given, and compare before they write into or publish the file at the part's name
#: (:func:`mark_ranges_part`, :func:`check_ranges_part`). A token rather than ``(st_dev, st_ino)``: each NFS
#: client numbers its mounts itself, and a file made at the name after an unlink may get the same inode.
RANGES_XATTR = "user.jupyter_staging.ranges"

#: Bytes read at a time when a file's sha256 is checked against its tag.
_READ_BYTES = 1 << 20
#: Jobs whose refused tag was logged (once each); emptied when it holds this many.
_REFUSALS_KEPT = 1024

log = logging.getLogger(__name__)
_refusals_logged: set[str] = set()


def part_owner_prefix(job_id: str) -> str:
    """How the :data:`OWNER_XATTR` of every part file job ``job_id`` makes begins: ``"<job id>:"`` (a
    download's then names the source version, :func:`jupyter_staging.engine.parts.owner_tag`)."""
    return f"{job_id}:"


def tag_part(fd: int, job_id: str) -> bool:
    """Mark the part file just made, open as ``fd``, as job ``job_id``'s (:data:`OWNER_XATTR` set to
    :func:`part_owner_prefix`), before any byte is written. Returns False, the part untagged, where the
    file system keeps no user attributes (the cleanup there goes by the rules before the tag:
    :func:`part_of_job`) or refuses this one (``EDQUOT``, a security module: the job's cleanup then leaves
    that part, never a file of the user's)."""
    try:
        os.setxattr(fd, OWNER_XATTR, part_owner_prefix(job_id).encode())
    except OSError:
        return False
    return True


def part_of_job(fd: int, job_id: str, *, untagged: bool = False) -> bool:
    """Whether the part file open as ``fd`` is job ``job_id``'s to remove after the job failed or was
    cancelled: a regular file whose :data:`OWNER_XATTR` begins with :func:`part_owner_prefix`, or one
    whose attribute cannot tell (the file system keeps no user attributes, ``ENOTSUP``; or it is empty and
    untagged, made by a process that died before its tag; with ``untagged``, any untagged one: the job's
    part files were made untagged, by an earlier version or on a mount without attributes). Not: a symlink
    or other non-regular file, another job's part, a file of the user's (untagged, with bytes).
    One ``fstat``, one ``fgetxattr``."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    try:
        owner = _attribute(fd, OWNER_XATTR)
    except OSError:
        return False
    if owner is None:  # no attributes here: nothing tells
        return True
    if not owner:  # untagged
        return untagged or st.st_size == 0
    return owner.decode(errors="replace").startswith(part_owner_prefix(job_id))


def mark_ranges_part(fd: int) -> str | None:
    """Give the part file open as ``fd`` (made by the server, to be filled by range tasks) a new random
    token in :data:`RANGES_XATTR`; returns it (32 hex digits), or None where the file system keeps no user
    attributes (the tasks then check nothing: the rule before the token). Raises ``OSError`` when the file
    system refuses this one (``EDQUOT``, a security module): the tasks would otherwise check nothing."""
    token = secrets.token_hex(16)
    try:
        os.setxattr(fd, RANGES_XATTR, token.encode())
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return token


def check_ranges_part(fd: int, token: str | None, name: str) -> None:
    """Check that the file open as ``fd``, opened at part name ``name``, is the part the server made for
    the range tasks (its :data:`RANGES_XATTR` is ``token``), not a file put at that name since: a file of
    the same size is not refused by opening it (``O_NOFOLLOW`` refuses only a symlink). Nothing is checked
    without a token, or where this host's mount keeps no user attributes (``ENOTSUP``). Raises
    :class:`~jupyter_staging.errors.PathNotAllowed` otherwise."""
    if token is None:
        return
    try:
        mark = _attribute(fd, RANGES_XATTR)
    except OSError as exc:  # refused (a security module): what the name holds is not known
        raise PathNotAllowed(
            f"{name}: the part file's mark could not be read ({os.strerror(exc.errno or 0)}); "
            "nothing was written or published"
        ) from None
    if mark is not None and mark != token.encode():  # None: this mount keeps no attributes
        raise PathNotAllowed(f"{name}: the part file was replaced while its ranges were fetched")


def published_tag(job_id: str, rel: str, sha256: str) -> bytes:
    """The owner attribute of a file job ``job_id`` publishes at ``rel`` (POSIX, relative to the
    destination's confinement root) holding bytes of ``sha256`` (hex): 32 hex digits (ASCII bytes) of a
    sha256 of the three."""
    return hashlib.sha256(f"{job_id}\0{rel}\0{sha256}".encode()).hexdigest()[:32].encode()


def tag_published(fd: int, job_id: str, rel: str, sha256: str) -> bool:
    """Set :func:`published_tag` on the file open as ``fd`` (any mode: ``fsetxattr``), before it takes its
    name. Returns False, the file untagged, where the file system keeps no user attributes (a resumed run
    then goes by the rules before the tag, :func:`keeps_attributes`) or refuses this one (``EACCES``,
    ``ENOSPC``, an SELinux denial: a resumed run then refuses the file, never takes it). A refusal is
    logged (a warning, once per job: the reason a resumed job may fail ``destination_exists``)."""
    try:
        os.setxattr(fd, PUBLISHED_XATTR, published_tag(job_id, rel, sha256))
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            _log_refusal(job_id, exc)
        return False
    return True


def _log_refusal(job_id: str, exc: OSError) -> None:
    """Warn, once for job ``job_id``, that the file system refused a published file's tag (``exc``)."""
    if job_id in _refusals_logged:
        return
    if len(_refusals_logged) >= _REFUSALS_KEPT:
        _refusals_logged.clear()
    _refusals_logged.add(job_id)
    log.warning(
        "job %s: the file system refused the attribute %s (%s); the files the job publishes are untagged, "
        "and a run resumed after a crash refuses those it published and did not record "
        "(destination_exists) instead of taking them back",
        job_id,
        PUBLISHED_XATTR,
        os.strerror(exc.errno) if exc.errno else type(exc).__name__,
    )


def keeps_attributes(fd: int) -> bool:
    """Whether the file system of the open file ``fd`` keeps user extended attributes: False where
    ``getxattr`` answers ``ENOTSUP`` (NFS before 4.2, ramfs, some FUSE file systems), where no file can be
    tagged and no tag can tell whose a file is. True otherwise (a missing attribute is ``ENODATA``)."""
    try:
        return _attribute(fd, PUBLISHED_XATTR) is not None
    except OSError:
        return True


def taken_back(
    fd: int,
    job_id: str,
    rel: str,
    *,
    tagged: bool = True,
    size: int | None = None,
    sha256: str | None = None,
) -> tuple[int, str] | None:
    """``(size_bytes, sha256_hex)`` of the regular file open as ``fd`` (readable) when a run of job
    ``job_id`` resumed after a crash takes it back as the file it published at ``rel`` and did not record:
    it is of ``size`` bytes and ``sha256`` when given, and carries the job's :func:`published_tag` for
    ``rel`` and for the bytes it holds now (all read, from the first; ``pread``, the descriptor's offset is
    left as it is). None otherwise: no tag (a user's file, whatever it holds), another job's or another
    name's, bytes changed since it was published, not a regular file. Errors reading it count as not.

    Where no tag can tell, the rules before the tag hold and a regular file of that size (and sha256) is
    taken: when ``tagged`` is False (a job an earlier version started, whose files carry none; a private
    scratch folder, where every file is the job's) and where the file system keeps no user attributes
    (``getxattr`` answers ``ENOTSUP``: :func:`keeps_attributes`). One ``getxattr`` and one read of the
    bytes per file.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return None
        tag = _attribute(fd, PUBLISHED_XATTR) if tagged else None
        digest = hashlib.sha256()
        offset = 0
        while block := os.pread(fd, _READ_BYTES, offset):
            digest.update(block)
            offset += len(block)
    except OSError:
        return None
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        return None
    if tag is not None and tag != published_tag(job_id, rel, actual):
        return None
    return offset, actual


def _attribute(fd: int, name: str) -> bytes | None:
    """The extended attribute ``name`` of the open file ``fd``: ``b""`` when it has none (``ENODATA``:
    untagged), None where the file system keeps no user attributes (``ENOTSUP``: no tag can tell). Raises
    :class:`OSError` for other errors reading it (a security module's refusal)."""
    try:
        return os.getxattr(fd, name)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        if exc.errno == errno.ENODATA:
            return b""
        raise
