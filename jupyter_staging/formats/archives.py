"""Unpacking archives and decompressing single files into a destination folder, confined and bounded.

Formats (standard library only):

- tar: POSIX.1-2001 pax and POSIX.1-1988 ustar (and GNU) archives read by :mod:`tarfile`, plain or inside
  gzip (RFC 1952), bzip2 or xz (the .xz file format of XZ Utils / LZMA2); the compression is recognised
  from the bytes, the kind of archive from the name.
- zip: PKWARE APPNOTE.TXT archives (stored, deflate, bzip2, LZMA members; ZIP64) read by :mod:`zipfile`.
- single compressed files: gzip (RFC 1952, multi-member streams included), bzip2, xz.

Confinement (DESIGN.md, issue 10 "Unpack"). Every member is checked before anything is written, so a
refused archive writes nothing; each refusal raises :class:`~jupyter_staging.errors.UnsafeArchive` with a
specific ``code``:

- ``unsafe_archive_path``: an absolute name (``/x``, ``C:x``), any ``..`` component (even one that would
  stay inside, such as ``a/../b``), ``manifest.json`` at the top (the staging manifest's name), a name
  ending in ``.part`` (reserved for files being written), a name given twice or used both as a file and as
  a folder. Backslashes are read as separators (Windows tools write them), so ``a\\b`` is ``a/b``.
  Hidden files (``.x``, ``__MACOSX/``) are ordinary data and are extracted.
- ``unsafe_archive_link``: every symbolic or hard link, whether or not it points inside the folder (the
  simplest rule that is safe), zip entries whose Unix mode says "symlink", and a link already in the
  destination on the way to a member.
- ``unsafe_archive_device``: character and block devices, FIFOs, sockets, anything not a file or folder.
- ``archive_too_large``: more than ``max_bytes`` bytes of files, declared by the archive or really written.
- ``archive_bomb``: more than ``max_ratio`` times the archive's size, declared or really written, once
  past :data:`RATIO_FLOOR_BYTES` (so a small, very compressible file is not called a bomb).
- ``archive_corrupt``: the archive cannot be read, or a member holds other bytes than it declares (a zip
  central directory that lies fails its CRC-32).
- ``archive_unsupported``: an unknown archive name, an encrypted zip member or unknown zip compression.

Only regular files and folders are created; modes, owners and times stored in the archive are not applied.
Each file goes through :class:`~jupyter_staging.safety.partfile.PartFile` (``<name>.part``, sha256 while
writing, fsync, published under its final name only when complete, never over an existing file). Real
bytes are counted while writing; when a limit trips, or on any other error (a pause or cancel included),
everything this call wrote is removed.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jupyter_staging.errors import DestinationExists, PathNotAllowed, UnsafeArchive
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import BLOCK_SIZE, PART_SUFFIX, PartFile

__all__ = [
    "RATIO_FLOOR_BYTES",
    "Extracted",
    "archive_kind",
    "compressed_kind",
    "decompress",
    "decompressed_name",
    "unpack",
]

#: Archive name suffixes (lower case, longest first) and the kind each names.
ARCHIVE_SUFFIXES = (
    (".tar.gz", "tar.gz"),
    (".tar.bz2", "tar.bz2"),
    (".tar.xz", "tar.xz"),
    (".tgz", "tar.gz"),
    (".tar", "tar"),
    (".zip", "zip"),
)
#: Single-file compression suffixes (lower case) and the kind each names.
COMPRESSED_SUFFIXES = {".gz": "gz", ".bz2": "bz2", ".xz": "xz"}
#: Expanded bytes below which no ratio is called a bomb (a 10 kB zip of a 1 MB table is fine).
RATIO_FLOOR_BYTES = 1024 * 1024
#: zip compression methods :mod:`zipfile` reads.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
#: What reading a damaged archive or compressed stream raises.
_READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, zipfile.BadZipFile, tarfile.TarError)
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Openers of single compressed files by :func:`compressed_kind`.
_DECOMPRESSORS: dict[str, Callable[..., Any]] = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}


@dataclass(frozen=True)
class Extracted:
    """One file written by :func:`unpack` or :func:`decompress`."""

    #: POSIX path relative to the folder unpacked into (for :func:`decompress`: the output's file name).
    name: str
    #: Bytes written.
    size: int
    #: Hex sha256 of the bytes written.
    sha256: str


@dataclass(frozen=True)
class _Entry:
    """A checked member: normalised name, folder or file, declared size (bytes), the archive's record."""

    name: str
    is_dir: bool
    size: int
    member: tarfile.TarInfo | zipfile.ZipInfo


def archive_kind(name: str) -> str | None:
    """``"zip" | "tar" | "tar.gz" | "tar.bz2" | "tar.xz"`` for an archive's file name (``.tgz`` is
    ``"tar.gz"``; case-insensitive), else None."""
    lower = name.lower()
    for suffix, kind in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind
    return None


def compressed_kind(name: str) -> str | None:
    """``"gz" | "bz2" | "xz"`` for a single compressed file's name (``x.fits.gz``), None for anything
    else, tarballs (``x.tar.gz``, ``x.tgz``) included."""
    if archive_kind(name) is not None:
        return None
    stem, dot, suffix = name.lower().rpartition(".")
    return COMPRESSED_SUFFIXES.get(dot + suffix) if stem else None


def decompressed_name(name: str) -> str:
    """``name`` without its compression suffix: ``x.fits.gz`` -> ``x.fits``.

    Raises :class:`ValueError` if :func:`compressed_kind` does not recognise ``name``.
    """
    if compressed_kind(name) is None:
        raise ValueError(f"{name!r} is not a .gz, .bz2 or .xz file")
    return name.rpartition(".")[0]


class _Budget:
    """The byte limits of one call: ``max_bytes`` and ``max_ratio`` times ``packed`` (archive bytes)."""

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
        self.declared += size
        self.check(self.declared, "declares")

    def add_written(self, size: int) -> None:
        self.written += size
        self.check(self.written, "expands to")


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn what reading a damaged archive raises into :class:`UnsafeArchive` ``archive_corrupt``."""
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


def _tar_entry(what: str, info: tarfile.TarInfo) -> _Entry:
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
    return _Entry(name, info.isdir(), info.size if info.isreg() else 0, info)


def _zip_entry(what: str, info: zipfile.ZipInfo) -> _Entry:
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
    return _Entry(name, is_dir, 0 if is_dir else info.file_size, info)


def _scan(
    what: str,
    members: Iterable[tarfile.TarInfo | zipfile.ZipInfo],
    budget: _Budget,
    control: JobControl | None,
) -> list[_Entry]:
    """Check every member, in archive order, stopping at the first refusal (before a bomb's data is read)."""
    entries = []
    for member in members:
        if control is not None:
            control.check()
        if isinstance(member, tarfile.TarInfo):
            entry = _tar_entry(what, member)
        else:
            entry = _zip_entry(what, member)
        budget.declare(entry.size)
        if entry.name:
            entries.append(entry)
    return entries


def _ancestors(name: str) -> list[str]:
    """``"a/b/c"`` -> ``["a", "a/b"]``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _check_names(what: str, entries: list[_Entry]) -> tuple[set[str], set[str]]:
    """Refuse a file name given twice or used both as a file and a folder; returns ``(files, folders)``
    (folders include every member's parents)."""
    files: set[str] = set()
    folders: set[str] = set()
    for entry in entries:
        if entry.name in files:
            raise _refuse(what, entry.name, "the name appears twice", "unsafe_archive_path")
        (folders if entry.is_dir else files).add(entry.name)
        folders.update(_ancestors(entry.name))
    clashes = sorted(files & folders)
    if clashes:
        raise _refuse(what, clashes[0], "used both as a file and as a folder", "unsafe_archive_path")
    return files, folders


def _check_layout(what: str, entries: list[_Entry], into: Path) -> None:
    """Refuse bad names (:func:`_check_names`) and anything already in the way in ``into``."""
    files, folders = _check_names(what, entries)
    for name in sorted(folders):
        path = into.joinpath(*name.split("/"))
        if path.is_symlink():
            raise _refuse(what, name, "a link in the destination is in the way", "unsafe_archive_link")
        if path.exists() and not path.is_dir():
            raise DestinationExists(f"{name} already exists in the destination and is not a folder")
    for name in files:
        path = into.joinpath(*name.split("/"))
        if path.exists() or path.is_symlink():
            raise DestinationExists(f"{name} already exists in the destination; not overwritten")


class _Writer:
    """Creates folders and files under ``into`` and remembers them, so a failed call can remove them.

    Everything is done by descriptor from ``root`` (the trusted folder ``into`` lies below,
    :class:`~jupyter_staging.safety.confined.Confined`): a folder on the way that is or becomes a symlink
    is refused (``unsafe_archive_link``), never followed."""

    def __init__(self, into: Path, root: Path) -> None:
        self.into = into
        self.fs = Confined(root)
        self.files: list[Path] = []
        self.folders: list[Path] = []
        self.part: PartFile | None = None

    def folder(self, path: Path) -> None:
        """Create ``path`` and its missing parents (by descriptor); refuse a link in the way."""
        missing = []
        probe = path
        try:
            while probe != self.fs.root and not self.fs.is_folder(probe):
                if self.fs.exists(probe):
                    raise PathNotAllowed(f"{probe.name!r} is a symbolic link or a file")
                missing.append(probe)
                probe = probe.parent
            for folder in reversed(missing):
                self.fs.mkdir(folder)
                self.folders.append(folder)
        except PathNotAllowed:
            raise UnsafeArchive(
                f"{path.name}: a link in the destination is in the way", code="unsafe_archive_link"
            ) from None

    def file(
        self, final: Path, src: IO[bytes], budget: _Budget, control: JobControl | None
    ) -> tuple[int, str]:
        """Copy ``src`` into ``final`` through a part file; returns ``(size_bytes, sha256_hex)``."""
        self.folder(final.parent)
        try:
            self.part = PartFile(final, root=self.fs.root)
        except PathNotAllowed:
            raise UnsafeArchive(
                f"{final.name}: a link in the destination is in the way", code="unsafe_archive_link"
            ) from None
        _copy_bounded(src, self.part, budget, control)
        size, digest = self.part.commit()
        self.part = None
        self.files.append(final)
        return size, digest

    def remove_all(self) -> None:
        """Delete the part file in progress, every file and then every folder this writer created."""
        if self.part is not None:
            self.part.discard()
        for path in reversed(self.files):
            try:
                self.fs.unlink(path)
            except PathNotAllowed:
                pass  # its folder was swapped for a link: nothing of ours is reachable there
        for folder in reversed(self.folders):
            try:
                self.fs.rmdir(folder)
            except PathNotAllowed:
                pass


def _trusted_parent(folder: Path) -> Path:
    """``folder``'s parent, made when missing: the root to work from when the caller names none."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.parent


def _copy_bounded(src: IO[bytes], out: PartFile, budget: _Budget, control: JobControl | None) -> None:
    """Copy ``src`` to ``out`` block by block, counting real bytes against ``budget``."""
    view = memoryview(bytearray(BLOCK_SIZE))
    while True:
        if control is not None:
            control.check()
        with _reading(budget.what):
            n = src.readinto(view)  # type: ignore[attr-defined]
        if not n:
            return
        budget.add_written(n)
        out.write(view[:n])


def _extract(
    what: str,
    entries: list[_Entry],
    into: Path,
    open_member: Callable[[_Entry], IO[bytes]],
    budget: _Budget,
    control: JobControl | None,
    root: Path,
) -> list[Extracted]:
    """Write the checked ``entries`` in order; on any error remove what was written and re-raise."""
    writer = _Writer(into, root)
    extracted = []
    try:
        writer.folder(into)
        for entry in entries:
            final = into.joinpath(*entry.name.split("/"))
            if entry.is_dir:
                writer.folder(final)
                continue
            with open_member(entry) as src:
                size, digest = writer.file(final, src, budget, control)
            if size != entry.size:
                raise UnsafeArchive(
                    f"{what}: member {entry.name!r} declares {entry.size} bytes but holds {size}",
                    code="archive_corrupt",
                )
            extracted.append(Extracted(entry.name, size, digest))
    except BaseException:
        writer.remove_all()
        raise
    return extracted


def _open_zip_member(zf: zipfile.ZipFile) -> Callable[[_Entry], IO[bytes]]:
    def open_member(entry: _Entry) -> IO[bytes]:
        with _reading(entry.name):
            return zf.open(entry.member)  # type: ignore[arg-type]

    return open_member


def _open_tar_member(tf: tarfile.TarFile) -> Callable[[_Entry], IO[bytes]]:
    def open_member(entry: _Entry) -> IO[bytes]:
        src = tf.extractfile(entry.member)  # type: ignore[arg-type]
        if src is None:  # only regular files reach here; kept for the type checker
            raise UnsafeArchive(f"{entry.name}: not a regular file", code="unsafe_archive_device")
        return src

    return open_member


def unpack(
    archive: Path,
    into: Path,
    *,
    max_bytes: int,
    max_ratio: float = 100.0,
    control: JobControl | None = None,
    root: Path | None = None,
) -> list[Extracted]:
    """Extract the regular files and folders of ``archive`` (kind by :func:`archive_kind`) under ``into``.

    ``max_bytes`` limits the total bytes of files (declared and really written); ``max_ratio`` limits that
    total over the archive's size in bytes. ``into`` is created if missing. Folders are created but not
    listed. ``root`` is the trusted folder ``into`` lies below (default: ``into``'s parent, made when
    missing): every folder and file is made by descriptor from it, never through a symlink.
    ``control.check()`` runs between blocks (``add_bytes`` is not called: the engine counts the source's
    bytes). A compressed tarball is read twice: once to check every member, once to extract.
    Returns the files written, in archive order.

    Raises :class:`UnsafeArchive` (codes in the module docstring; nothing is written, or what was written
    is removed), :class:`DestinationExists` when a member's name is taken in ``into`` (checked before
    writing), :class:`JobInterrupted` (what was written is removed), :class:`OSError` on write errors.
    """
    what = archive.name
    kind = archive_kind(what)
    if kind is None:
        raise UnsafeArchive(
            f"{what}: not a .zip, .tar, .tar.gz, .tgz, .tar.bz2 or .tar.xz file", code="archive_unsupported"
        )
    budget = _Budget(what, archive.stat().st_size, max_bytes, max_ratio)
    base = root or _trusted_parent(into)
    if kind == "zip":
        with _reading(what):
            zf = zipfile.ZipFile(archive)
        with zf:
            with _reading(what):
                entries = _scan(what, zf.infolist(), budget, control)
            _check_layout(what, entries, into)
            files = _extract(what, entries, into, _open_zip_member(zf), budget, control, base)
    else:
        with _reading(what):
            tf = tarfile.open(archive, "r:*")
        with tf:
            with _reading(what):
                entries = _scan(what, tf, budget, control)
            _check_layout(what, entries, into)
            files = _extract(what, entries, into, _open_tar_member(tf), budget, control, base)
    if control is not None:
        control.log("info", f"unpacked {len(files)} files ({budget.written} bytes) from {what}")
    return files


def decompress(
    path: Path,
    out: Path,
    *,
    max_bytes: int,
    max_ratio: float = 100.0,
    control: JobControl | None = None,
    root: Path | None = None,
) -> Extracted:
    """Decompress the single gzip / bzip2 / xz file ``path`` (kind by :func:`compressed_kind`) into ``out``.

    The same limits as :func:`unpack`, counted on the bytes really written (these formats declare no
    trustworthy size). Returns the file written, named ``out.name``. ``root``: the trusted folder ``out``
    lies below (default: ``out``'s folder's parent); the file is written by descriptor from it.

    Raises :class:`UnsafeArchive` (``archive_too_large``, ``archive_bomb``, ``archive_corrupt``,
    ``archive_unsupported``; the partial output is removed), :class:`DestinationExists` if ``out``
    exists, :class:`JobInterrupted`, :class:`OSError` on write errors.
    """
    what = path.name
    kind = compressed_kind(what)
    if kind is None:
        raise UnsafeArchive(f"{what}: not a .gz, .bz2 or .xz file", code="archive_unsupported")
    budget = _Budget(what, path.stat().st_size, max_bytes, max_ratio)
    base = root or _trusted_parent(out.parent)
    Confined(base).makedirs(out.parent)
    part = PartFile(out, root=base)
    try:
        with _DECOMPRESSORS[kind](path, "rb") as src:
            _copy_bounded(src, part, budget, control)
        size, digest = part.commit()
    except BaseException:
        part.discard()
        raise
    return Extracted(out.name, size, digest)
