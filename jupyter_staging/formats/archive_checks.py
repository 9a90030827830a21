"""The checks an archive passes before and while it is extracted: member names and kinds, the layout they
make in the destination, and the byte limits.

Every member is checked before anything is written (:func:`scan_members`, :func:`check_layout`), so a
refused archive writes nothing; the limits are checked again on the bytes really written
(:meth:`ByteBudget.add_written`). Each refusal raises :class:`~jupyter_staging.errors.UnsafeArchive` with a
specific ``code``:

- ``unsafe_archive_path``: an absolute name (``/x``, ``C:x``), any ``..`` component (even one that would
  stay inside, such as ``a/../b``), ``manifest.json`` at the top (the staging manifest's name), a name
  ending in ``.part`` (reserved for files being written), a name given twice or used both as a file and as
  a folder. Backslashes are read as separators (Windows tools write them), so ``a\\b`` is ``a/b``.
- ``unsafe_archive_link``: every symbolic or hard link, whether or not it points inside the folder (the
  simplest rule that is safe), zip entries whose Unix mode says "symlink", and a link already in the
  destination on the way to a member.
- ``unsafe_archive_device``: character and block devices, FIFOs, sockets, anything not a file or folder.
- ``archive_too_large``: more than ``max_bytes`` bytes of files, declared by the archive or really written.
- ``archive_bomb``: more than ``max_ratio`` times the archive's size, declared or really written, once
  past :data:`RATIO_FLOOR_BYTES` (so a small, very compressible file is not called a bomb).
- ``archive_corrupt``: the archive cannot be read (:func:`reading_archive`).
- ``archive_unsupported``: an encrypted zip member or unknown zip compression.

Members with a hidden part (``.git/config``, ``__MACOSX/._a.fits``, ``.DS_Store``) are checked as the
others are but not extracted, as a folder copy leaves out hidden entries (:func:`hidden_member`; the job's
log counts and names them): no job publishes a hidden name. A Zarr v2 store's metadata files (``.zarray``,
``.zattrs``, ...) are data and are extracted. A hidden tar member's bytes still count against the limits:
a tar stream is read (decompressed) through them to reach the next member; a zip's are never read.

Archive formats: tar members as :mod:`tarfile` reads them (POSIX.1-2001 pax, POSIX.1-1988 ustar, GNU) and
zip members as :mod:`zipfile` reads them (PKWARE APPNOTE.TXT).
"""

from __future__ import annotations

import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jupyter_staging.errors import DestinationExists, UnsafeArchive
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PART_SUFFIX
from jupyter_staging.safety.paths import hidden_part

__all__ = [
    "RATIO_FLOOR_BYTES",
    "ByteBudget",
    "Member",
    "check_layout",
    "hidden_member",
    "reading_archive",
    "scan_members",
]

#: Expanded bytes below which no ratio is called a bomb (a 10 kB zip of a 1 MB table is fine).
RATIO_FLOOR_BYTES = 1024 * 1024
#: zip compression methods :mod:`zipfile` reads.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
#: What reading a damaged archive or compressed stream raises.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Member:
    """A checked member: normalised name, folder or file, declared size (bytes), the archive's record."""

    #: POSIX path relative to the folder unpacked into ("" for that folder itself).
    name: str
    is_dir: bool
    #: Bytes the archive declares for the file (0 for a folder).
    size: int
    member: tarfile.TarInfo | zipfile.ZipInfo


class ByteBudget:
    """The byte limits of one extraction: ``max_bytes`` and ``max_ratio`` times ``packed`` (the archive's
    size in bytes), counted once on the sizes the archive declares and once on the bytes really written.

    ``what`` names the archive in messages. Raises :class:`ValueError` if ``max_bytes < 0`` or
    ``max_ratio <= 0``.
    """

    def __init__(self, what: str, packed: int, max_bytes: int, max_ratio: float) -> None:
        if max_bytes < 0 or max_ratio <= 0:
            raise ValueError("max_bytes must be >= 0 and max_ratio > 0")
        self.what = what
        self.max_bytes = max_bytes
        self.max_expanded = max(RATIO_FLOOR_BYTES, max_ratio * max(packed, 1))
        self.max_ratio = max_ratio
        self.declared = 0
        self.written = 0

    def check(self, total: int, verb: str) -> None:
        """Raise ``archive_too_large`` / ``archive_bomb`` if ``total`` bytes are over a limit."""
        if total > self.max_bytes:
            raise UnsafeArchive(
                f"{self.what} {verb} more than {self.max_bytes} bytes (the unpacked size limit)",
                code="archive_too_large",
            )
        if total > self.max_expanded:
            raise UnsafeArchive(
                f"{self.what} {verb} more than {self.max_ratio:g} times its own size (a compression bomb)",
                code="archive_bomb",
            )

    def declare(self, size: int) -> None:
        """Count ``size`` declared bytes; raises :class:`UnsafeArchive` once the total is over a limit."""
        self.declared += size
        self.check(self.declared, "declares")

    def add_written(self, size: int) -> None:
        """Count ``size`` bytes really written; raises :class:`UnsafeArchive` once over a limit."""
        self.written += size
        self.check(self.written, "expands to")


@contextmanager
def reading_archive(what: str) -> Iterator[None]:
    """Turn what reading a damaged archive or compressed stream raises (:class:`OSError`, :class:`EOFError`,
    zlib / LZMA / zip / tar errors) into :class:`UnsafeArchive` ``archive_corrupt`` naming ``what``."""
    try:
        yield
    except _READ_ERRORS as exc:
        raise UnsafeArchive(f"{what} cannot be read: {exc}", code="archive_corrupt") from None


def _refuse(what: str, raw: str, reason: str, code: str) -> UnsafeArchive:
    return UnsafeArchive(f"{what}: member {raw!r} refused: {reason}", code=code)


def _member_name(what: str, raw: str, is_dir: bool) -> str:
    """The member name ``raw`` as a confined POSIX path relative to the destination ("" for its root)."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise _refuse(what, raw, "absolute name", "unsafe_archive_path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(what, raw, "'..' in the name", "unsafe_archive_path")
    relative = "/".join(parts)
    if not relative and not is_dir:
        raise _refuse(what, raw, "a file without a name", "unsafe_archive_path")
    if relative.lower() == "manifest.json":
        raise _refuse(what, raw, "manifest.json is the staging manifest's name", "unsafe_archive_path")
    if relative.endswith(PART_SUFFIX):
        raise _refuse(
            what, raw, f"{PART_SUFFIX} names are reserved for files being written", "unsafe_archive_path"
        )
    return relative


def _tar_member(what: str, info: tarfile.TarInfo) -> Member:
    name = _member_name(what, info.name, info.isdir())
    if info.issym() or info.islnk():
        raise _refuse(
            what,
            info.name,
            f"a link (to {info.linkname!r}); links are never extracted",
            "unsafe_archive_link",
        )
    if not (info.isreg() or info.isdir()):
        raise _refuse(what, info.name, "a device, FIFO or other special file", "unsafe_archive_device")
    return Member(name, info.isdir(), info.size if info.isreg() else 0, info)


def _zip_member(what: str, info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16
    is_dir = info.is_dir() or stat.S_ISDIR(mode)
    name = _member_name(what, info.filename, is_dir)
    if stat.S_ISLNK(mode):
        raise _refuse(
            what, info.filename, "a symbolic link; links are never extracted", "unsafe_archive_link"
        )
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(what, info.filename, "a device, FIFO or other special file", "unsafe_archive_device")
    if info.flag_bits & 0x1:
        raise _refuse(what, info.filename, "encrypted", "archive_unsupported")
    if info.compress_type not in _ZIP_METHODS:
        raise _refuse(what, info.filename, f"compression method {info.compress_type}", "archive_unsupported")
    return Member(name, is_dir, 0 if is_dir else info.file_size, info)


def scan_members(
    what: str,
    members: Iterable[tarfile.TarInfo | zipfile.ZipInfo],
    budget: ByteBudget,
    control: JobControl | None,
) -> tuple[list[Member], list[str]]:
    """Check every member of the archive ``what``, in archive order, and declare the size of each one to
    extract to ``budget``.

    Stops at the first refusal, before a bomb's data is read. ``control.check()`` runs between members.
    Returns the members to extract (the archive's own root folder left out) and the names of the hidden
    ones left out (:func:`hidden_member`: checked all the same; the size of a hidden tar member is declared
    too, as its bytes are read through, a hidden zip member's not).
    Raises :class:`UnsafeArchive` (``unsafe_archive_path``, ``unsafe_archive_link``,
    ``unsafe_archive_device``, ``archive_unsupported``, ``archive_too_large``, ``archive_bomb``) and
    :class:`~jupyter_staging.errors.JobInterrupted` from ``control``.
    """
    members_out = []
    hidden = []
    for member in members:
        if control is not None:
            control.check()
        if isinstance(member, tarfile.TarInfo):
            checked = _tar_member(what, member)
        else:
            checked = _zip_member(what, member)
        if hidden_member(checked):
            hidden.append(checked.name)
            if isinstance(member, tarfile.TarInfo):  # decompressed all the same, to reach the next member
                budget.declare(checked.size)
            continue
        budget.declare(checked.size)
        if checked.name:
            members_out.append(checked)
    return members_out, hidden


def hidden_member(member: Member) -> bool:
    """Whether ``member`` is left out of an extraction: a part of its name is hidden (a leading dot), a file
    named as a Zarr v2 store's metadata excepted (:data:`~jupyter_staging.safety.paths.DATA_DOT_NAMES`)."""
    parts = member.name.split("/")
    last = len(parts) - 1
    return any(hidden_part(part, last=i == last and not member.is_dir) for i, part in enumerate(parts))


def _ancestors(name: str) -> list[str]:
    """``"a/b/c"`` -> ``["a", "a/b"]``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_names(what: str, members: list[Member]) -> tuple[set[str], set[str]]:
    """Refuse a file name given twice or used both as a file and a folder; returns ``(files, folders)``
    (folders include every member's parents)."""
    files: set[str] = set()
    folders: set[str] = set()
    for member in members:
        if member.name in files:
            raise _refuse(what, member.name, "the name appears twice", "unsafe_archive_path")
        (folders if member.is_dir else files).add(member.name)
        folders.update(_ancestors(member.name))
    clashes = sorted(files & folders)
    if clashes:
        raise _refuse(what, clashes[0], "used both as a file and as a folder", "unsafe_archive_path")
    return files, folders


def check_layout(what: str, members: list[Member], into: Path) -> None:
    """Refuse the layout ``members`` would make under the folder ``into``, before anything is written.

    Raises :class:`UnsafeArchive` ``unsafe_archive_path`` for a file name given twice or used both as a
    file and as a folder, ``unsafe_archive_link`` for a symbolic link already in ``into`` where a folder
    goes, and :class:`DestinationExists` where a member's name is already taken in ``into``.
    """
    files, folders = _check_names(what, members)
    for name in sorted(folders):
        path = into.joinpath(*name.split("/"))
        if path.is_symlink():
            raise _refuse(what, name, "a link in the destination is in the way", "unsafe_archive_link")
        if path.exists() and not path.is_dir():
            raise DestinationExists(f"{name} already exists in the destination and is not a folder")
    for name in files:
        path = into.joinpath(*name.split("/"))
        if path.exists() or path.is_symlink():
            raise DestinationExists.not_overwritten(name)
