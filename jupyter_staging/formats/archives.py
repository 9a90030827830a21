"""Unpacking archives and decompressing single files into a destination folder, confined and bounded.

Formats (standard library only):

- tar: POSIX.1-2001 pax and POSIX.1-1988 ustar (and GNU) archives read by :mod:`tarfile`, plain or inside
  gzip (RFC 1952), bzip2 or xz (the .xz file format of XZ Utils / LZMA2); the compression is recognised
  from the bytes, the kind of archive from the name.
- zip: PKWARE APPNOTE.TXT archives (stored, deflate, bzip2, LZMA members; ZIP64) read by :mod:`zipfile`.
- single compressed files: gzip (RFC 1952, multi-member streams included), bzip2, xz.

Confinement (DESIGN.md, issue 10 "Unpack"). Every member is checked before anything is written, so a
refused archive writes nothing; the rules and the ``code`` of each refusal
(:class:`~jupyter_staging.errors.UnsafeArchive`) are in :mod:`jupyter_staging.formats.archive_checks`.

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
import stat
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jupyter_staging.errors import PathNotAllowed, UnsafeArchive
from jupyter_staging.formats.archive_checks import (
    RATIO_FLOOR_BYTES,
    ByteBudget,
    Member,
    check_layout,
    reading_archive,
    scan_members,
)
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import BLOCK_SIZE, PartFile

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
            while probe != self.fs.root:
                # One look per folder: between two (is it a folder? is anything there?) another archive
                # unpacking beside this one could make it, and it would be taken for a link.
                st = self.fs.lstat(probe)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    break
                if st is not None:
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
        self, final: Path, src: IO[bytes], budget: ByteBudget, control: JobControl | None
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


def _copy_bounded(src: IO[bytes], out: PartFile, budget: ByteBudget, control: JobControl | None) -> None:
    """Copy ``src`` to ``out`` block by block, counting real bytes against ``budget``."""
    view = memoryview(bytearray(BLOCK_SIZE))
    while True:
        if control is not None:
            control.check()
        with reading_archive(budget.what):
            n = src.readinto(view)  # type: ignore[attr-defined]
        if not n:
            return
        budget.add_written(n)
        out.write(view[:n])


def _extract(
    what: str,
    members: list[Member],
    into: Path,
    open_member: Callable[[Member], IO[bytes]],
    budget: ByteBudget,
    control: JobControl | None,
    root: Path,
) -> list[Extracted]:
    """Write the checked ``members`` in order; on any error remove what was written and re-raise."""
    writer = _Writer(into, root)
    extracted = []
    try:
        writer.folder(into)
        for entry in members:
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


def _open_zip_member(zf: zipfile.ZipFile) -> Callable[[Member], IO[bytes]]:
    def open_member(entry: Member) -> IO[bytes]:
        with reading_archive(entry.name):
            return zf.open(entry.member)  # type: ignore[arg-type]

    return open_member


def _open_tar_member(tf: tarfile.TarFile) -> Callable[[Member], IO[bytes]]:
    def open_member(entry: Member) -> IO[bytes]:
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
    """Extract the regular files and folders of ``archive`` (kind by :func:`archive_kind`) under ``into``,
    but for members with a hidden part (:func:`~jupyter_staging.formats.archive_checks.hidden_member`:
    ``.git/``, ``.DS_Store``, ``__MACOSX/._x``; counted in ``control``'s log).

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
    budget = ByteBudget(what, archive.stat().st_size, max_bytes, max_ratio)
    base = root or _trusted_parent(into)
    if kind == "zip":
        with reading_archive(what):
            zf = zipfile.ZipFile(archive)
        with zf:
            with reading_archive(what):
                members, hidden = scan_members(what, zf.infolist(), budget, control)
            check_layout(what, members, into)
            files = _extract(what, members, into, _open_zip_member(zf), budget, control, base)
    else:
        with reading_archive(what):
            tf = tarfile.open(archive, "r:*")
        with tf:
            with reading_archive(what):
                members, hidden = scan_members(what, tf, budget, control)
            check_layout(what, members, into)
            files = _extract(what, members, into, _open_tar_member(tf), budget, control, base)
    if control is not None:
        control.log("info", f"unpacked {len(files)} files ({budget.written} bytes) from {what}")
        if hidden:
            shown = ", ".join(repr(name[:100]) for name in hidden[:3])
            more = f" and {len(hidden) - 3} more" if len(hidden) > 3 else ""
            control.log("info", f"{len(hidden)} hidden member(s) of {what} not extracted: {shown}{more}")
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
    budget = ByteBudget(what, path.stat().st_size, max_bytes, max_ratio)
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
