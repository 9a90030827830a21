"""Hard links and symlinks of local source files, made on one thread; their bytes are read only to verify a
checksum.

A link moves no byte and its content is the source file itself, so a link job does what ``cp -al`` does:
it links, and records each file's fingerprint (size, mtime, inode: DESIGN.md, "Re-running a notebook";
for a hard link the inode *is* the staged file, so the fingerprint names its bytes). It reads a file only
to verify a checksum the request or its manifest entry expects, before linking it: a mismatch links
nothing (``checksum_mismatch``). The sha256 in its chunks and manifest is that verified one, otherwise
null, as the hub service records links (``hub/db.py``). Hashing every file made linking a folder cost
what reading it costs: 2,000 files of 64 KiB, page cache dropped, took 0.6-0.9 s where ``cat`` reads them
in 0.5-0.8 s, and a TESS sector of 20,000 light curves is ~40 GB of reads. The per-file work left is
Python's, which holds the GIL (more threads do not make it faster): a link job links on one thread.

A digest is a digest of some bytes at some moment, and the manifest states the bytes behind the link: a
digest read to verify goes with the fingerprint ``fstat`` saw before and after reading; when the file
linked has another fingerprint (it changed between the read and the link), the bytes behind the link are
read again and verified. The job's resume data files an item under the fingerprint seen after linking,
never the listed one, so a re-run judges the bytes that were linked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from jupyter_staging.engine.folders import no_symlink
from jupyter_staging.engine.models import PENDING
from jupyter_staging.engine.reuse import ReusingWriter
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.errors import (
    DestinationExists,
    JobInterrupted,
    PathNotAllowed,
    SourceChanged,
    StagingError,
    TransferFailed,
)
from jupyter_staging.safety.checksums import first_mismatch
from jupyter_staging.safety.copying import fd_digests
from jupyter_staging.safety.dirfd import check_name, open_existing
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.local import LocalSource, fingerprint

#: Digests (``{"sha256": hex, "md5": hex}``, as asked) and the fingerprint of the file they were taken of
#: (None: the file changed while it was read).
Digests = tuple[dict[str, str], dict[str, int] | None]

#: How many times a file that changes while it is read for a checksum is read again.
READ_TRIES = 3


def digests_of(
    fd: int, algorithms: tuple[str, ...] = ("sha256",), check: Callable[[], None] | None = None
) -> Digests:
    """The ``algorithms`` digests of open file ``fd`` from its current position, with its fingerprint when
    ``fstat`` saw the same one (and the same change time) before and after reading, else None: it changed
    while it was read. ``check`` is called before each block (:meth:`JobControl.check`: a pause or cancel
    stops the read). Raises ``OSError``, what ``check`` raises."""
    st = os.fstat(fd)
    before = (fingerprint(st), st.st_ctime_ns)
    sums = fd_digests(fd, algorithms, check)
    st = os.fstat(fd)
    after = (fingerprint(st), st.st_ctime_ns)
    return sums, (after[0] if after == before else None)


def open_regular(path: str, *, follow: bool = False) -> int:
    """A read-only descriptor of the regular file at ``path``: opened without blocking (a FIFO put there
    would hang an open) and, unless ``follow``, without following a final symlink. Raises ``OSError``
    (``ELOOP`` for a symlink, ``EINVAL`` for anything but a regular file)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{os.path.basename(path)} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_steady(
    open_fd: Callable[[], int],
    algorithms: tuple[str, ...],
    what: str,
    check: Callable[[], None] | None = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """:func:`digests_of` the file ``open_fd()`` opens (closed after), read again while it changes during
    the read, :data:`READ_TRIES` times at most, then :class:`SourceChanged`; the fingerprint returned is
    never None. Raises what ``open_fd`` and ``check`` raise, ``OSError``."""
    for _ in range(READ_TRIES):
        fd = open_fd()
        try:
            sums, seen = digests_of(fd, algorithms, check)
        finally:
            os.close(fd)
        if seen is not None:
            return sums, seen
    raise SourceChanged(f"{what} kept changing while it was read; not staged")


class LinkingWriter(ReusingWriter):
    """Hard links and symlinks of a local source's files for one run of job ``job_id`` (the state is set
    by :class:`~jupyter_staging.engine.items.ItemStager`)."""

    recovering: bool
    #: Items of this job staged at once, across all of its manifest entries.
    _item_slots: threading.BoundedSemaphore
    #: Counts a file found complete from the previous run (ItemStager's: one log line for all).
    _count_recovered: Callable[[], None]
    #: Files ``item`` under the fingerprint its bytes were seen with (ItemStager's; written before its
    #: chunk is marked ready).
    _relist: Callable[[SourceItem, dict[str, Any]], None]
    #: Stages one ``(item, chunk)`` pair and records it (ItemStager's).
    _transfer: Callable[[Source, str, SourceItem, JobChunk], None]
    #: Marks a chunk ready with the next batch, fsyncing ``folder`` before (ItemStager's).
    _chunk_done: Callable[..., None]

    def _link_all(self, source: Source, method: str, work: list[tuple[SourceItem, JobChunk]]) -> None:
        """Link each ``(item, chunk)`` pair of a link job, in order, on this thread, holding one of the job's
        item slots throughout (the work is Python's: more threads would only take turns at the GIL). Each
        file reports its bytes, and with them the job's progress (:meth:`ItemStager._on_bytes`); an empty
        one reports the progress itself (which also relays a pause asked for by another process). The first
        error stops the rest; a pause or cancel is seen before each file.

        A first run's hard links of a local folder, with no checksum to verify, take :meth:`_hard_link`:
        the same work as :meth:`_link`, each folder's descriptors opened once for the files that follow
        in it (walk order keeps a folder's files together)."""
        if not work:
            return
        plain = (
            method == "hardlink"
            and isinstance(source, LocalSource)
            and not self.recovering
            and self.dest.confinement_root is not None
        )
        with self._item_slots, _LinkFolders(self) as folders:
            for item, chunk in work:
                self.control.check()
                if plain and chunk.state == PENDING and not self._expected_checksums(item):
                    self._hard_link(folders, cast(LocalSource, source), item, chunk)
                else:
                    self._transfer(source, method, item, chunk)
                if not chunk.bytes:
                    self.host.report_progress(self.job_id)

    def _hard_link(
        self, folders: _LinkFolders, source: LocalSource, item: SourceItem, chunk: JobChunk
    ) -> None:
        """Hard-link ``item`` as its output and mark ``chunk`` ready with the next batch, as :meth:`_link`
        and :meth:`ItemStager._record_transfer` do for a hard link without a checksum: linked by
        descriptor of both folders (the destination's found still at its path first), the link's ``lstat``
        taken by descriptor (a symlink put in the source's place since the listing is removed, never
        staged), the item relisted when its fingerprint changed. Raises what :meth:`_make_link` raises."""
        src_fd, src_name = folders.source(source, item)
        name = item.name.rpartition("/")[2]
        try:
            dst_fd, name, parent = folders.destination(item)
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            st = os.stat(name, dir_fd=dst_fd, follow_symlinks=False)
            st = no_symlink(st, src_name, lambda: os.unlink(name, dir_fd=dst_fd))
        except OSError as exc:
            raise _link_failed(exc, "hardlink", item, name) from None
        seen: dict[str, Any] = fingerprint(st)
        if seen != item.validator:
            self._relist(item, seen)
        self.control.add_bytes(st.st_size)
        self._chunk_done(
            chunk, folder=parent, bytes=st.st_size, sha256=None, path=self.dest.chunk_path(item.name)
        )

    def _link(self, source: Source, method: str, item: SourceItem, final: Path) -> tuple[int, str | None]:
        """Link ``item`` of ``source`` as ``final``; returns ``(size_bytes, sha256_hex or None)`` of the
        bytes behind the link: the sha256 verified against the checksums the job expects for the item
        (read before linking; a mismatch links nothing), else None (no byte is read). A hard link is made
        by descriptor of the source file's folder
        (:meth:`~jupyter_staging.sources.local.LocalSource.item_folder`: no symlink put on its path since
        the listing is followed). A recovering run keeps the link the previous run made (verified again
        when a checksum is expected: it may have stopped before it verified it).

        Raises :class:`DestinationExists`, :class:`TransferFailed` (``hardlink_failed`` /
        ``symlink_failed``), :class:`ChecksumMismatch`, :class:`SourceChanged` for a file that kept
        changing while it was read, :class:`PathNotAllowed` for a source folder replaced by a symlink,
        :class:`JobInterrupted` while a file is read."""
        symbolic = method == "symlink"
        expected = self._expected_checksums(item)
        checked = None
        linked = self._previous_link(source, item, final, symbolic=symbolic) if self.recovering else None
        recovered = linked is not None
        if linked is None:
            checked = self._read_source(source, item, expected, symbolic=symbolic) if expected else None
            linked = self._make_link(source, method, item, final)
        seen: dict[str, Any] = fingerprint(linked)
        digest = None
        if expected:
            if checked is None or checked[1] != seen:
                # The previous run's link, or a file changed between its read and its link: what is
                # behind the link counts.
                checked = self._read_linked(item, final, expected, symbolic=symbolic, linked=linked)
                seen = checked[1]
            digest = checked[0]["sha256"]
        if recovered:
            self._count_recovered()  # once verified, when a checksum is expected
        if seen != item.validator:
            self._relist(item, seen)
        self.control.add_bytes(int(seen["size"]))
        return int(seen["size"]), digest

    def _make_link(self, source: Source, method: str, item: SourceItem, final: Path) -> os.stat_result:
        """Make the link ``final`` to ``item``; returns the ``stat`` of what it leads to (see
        :meth:`~jupyter_staging.engine.folders.DestinationWriter._link_into`). Raises
        :class:`DestinationExists`, :class:`TransferFailed`, :class:`PathNotAllowed`."""
        symbolic = method == "symlink"
        at_source = (
            source.item_folder(item)
            if isinstance(source, LocalSource) and not symbolic
            else contextlib.nullcontext(None)
        )
        try:
            with at_source as src_at:
                return self._link_into(Path(item.locator), final, symbolic=symbolic, src_at=src_at)
        except OSError as exc:
            raise _link_failed(exc, method, item, final.name) from None

    def _previous_link(
        self, source: Source, item: SourceItem, final: Path, *, symbolic: bool
    ) -> os.stat_result | None:
        """The ``stat`` of what ``final`` leads to when it is the link to ``item`` a previous run of this
        job made, else None: a symlink whose target is the item's path (its target's ``stat``), or a hard
        link to the inode the source has now, or to the listed one (a source renamed over since the
        previous run linked it: same device, inode, size and mtime). ``final`` is looked at by descriptor
        of its folder, never followed (:meth:`_look_at_output`). Raises :class:`PathNotAllowed` when that
        folder was moved or replaced, and what :meth:`LocalSource.item_folder` raises."""
        looked = self._look_at_output(final)
        if looked is None:
            return None
        here, target = looked
        if symbolic:
            if target != item.locator:
                return None
            try:
                return os.stat(item.locator)
            except OSError:
                return None
        if not stat.S_ISREG(here.st_mode) or not isinstance(source, LocalSource):
            return None
        with source.item_folder(item) as (folder, name):
            device = os.fstat(folder).st_dev
            try:
                there: os.stat_result | None = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except OSError:
                there = None
        if there is not None and (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            return here
        return here if here.st_dev == device and fingerprint(here) == item.validator else None

    def _read_source(
        self, source: Source, item: SourceItem, expected: dict[str, str], *, symbolic: bool
    ) -> tuple[dict[str, str], dict[str, int]]:
        """The digests (sha256, and those ``expected`` names) of ``item``'s file before it is linked, read
        by descriptor (its folder reached without following a symlink; a symlink's target by its path),
        with the fingerprint they are of. Raises :class:`ChecksumMismatch` when they are not ``expected``,
        :class:`SourceChanged`, and what :meth:`~jupyter_staging.sources.local.LocalSource.open_item`
        raises."""

        def open_fd() -> int:
            if symbolic or not isinstance(source, LocalSource):
                return open_regular(item.locator, follow=symbolic)
            return source.open_item(item)[0]

        return self._read_verified(open_fd, item, expected)

    def _read_linked(
        self,
        item: SourceItem,
        final: Path,
        expected: dict[str, str],
        *,
        symbolic: bool,
        linked: os.stat_result,
    ) -> tuple[dict[str, str], dict[str, int]]:
        """The digests of the bytes behind the link ``final`` and their fingerprint: the hard link read by
        descriptor (never following a symlink), a symlink's target by its path (as the symlink leads).
        When they are not ``expected``, :class:`ChecksumMismatch`; on that and on any other failure
        (:class:`SourceChanged`, ``OSError``) the link is removed first, if the name is still that link: a
        hard link to the inode ``linked`` (its ``stat``), or a symlink to the item's path; whatever took
        the name while the bytes were read (a user's own file) is left. A pause or cancel
        (:class:`JobInterrupted`) keeps it: the resumed run verifies it again."""

        def still_ours(st: os.stat_result, target: str | None) -> bool:
            if symbolic:
                return target == item.locator
            return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (linked.st_dev, linked.st_ino)

        def open_fd() -> int:
            return open_regular(item.locator, follow=True) if symbolic else self._open_linked(final)

        try:
            return self._read_verified(open_fd, item, expected)
        except JobInterrupted:
            raise  # kept: the run that resumes the job finds this link and verifies it again
        except BaseException:
            # Unverified bytes are not left under the final name; a failure to remove them does not hide
            # why they were to be removed.
            with contextlib.suppress(OSError, PathNotAllowed):
                if not self._remove_output(final, still_ours):
                    self._log("warning", f"{item.name}: its output was replaced while it was verified; left")
            raise

    def _read_verified(
        self, open_fd: Callable[[], int], item: SourceItem, expected: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, int]]:
        """:func:`read_steady` the file ``open_fd()`` opens for sha256 and the algorithms ``expected``
        names (a pause or cancel stops the read); raises :class:`ChecksumMismatch` when the digests are not
        ``expected``."""
        checked = read_steady(open_fd, _algorithms(expected), item.name, self.control.check)
        mismatch = first_mismatch(item.name, expected, checked[0])
        if mismatch is not None:
            raise mismatch
        return checked

    def _open_linked(self, final: Path) -> int:
        """A read-only descriptor of the hard link ``final``, opened in its folder by descriptor where the
        destination is confined to a root. Raises ``OSError``, :class:`PathNotAllowed`."""
        if self.dest.confinement_root is None:
            return open_regular(str(final))
        with self.folders.placed(self._folder_below_root(final)) as folder:
            fd = open_existing(folder, final.name, os.O_RDONLY | os.O_NONBLOCK)
        if fd is None:
            raise FileNotFoundError(f"{final.name} is gone from the destination")
        return fd


def _link_failed(exc: OSError, method: str, item: SourceItem, name: str) -> StagingError:
    """The error for a link of ``item`` named ``name`` that failed with ``exc``: :class:`DestinationExists`
    when the name is taken, else :class:`TransferFailed` (``hardlink_failed`` / ``symlink_failed``; for
    ``EXDEV``, the hint that both must be on one file system)."""
    if isinstance(exc, FileExistsError):
        return DestinationExists.not_overwritten(name)
    code = "hardlink_failed" if method == "hardlink" else "symlink_failed"
    hint = " (source and destination must be on the same file system)" if exc.errno == errno.EXDEV else ""
    return TransferFailed(f"cannot {method} {item.name}: {exc.strerror}{hint}", code=code)


class _LinkFolders:
    """The source and destination folders of the file a link job links now, kept open for the files
    that follow in the same folders (:meth:`LinkingWriter._hard_link`); closed on exit."""

    def __init__(self, writer: LinkingWriter) -> None:
        self._writer = writer
        self._source: tuple[str, int] | None = None
        #: (folder of the item's name, descriptor, lent by the folder cache, folder below the root, path)
        self._dest: tuple[str, int, bool, str, Path] | None = None

    def __enter__(self) -> _LinkFolders:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_source()
        self._close_dest()

    def source(self, source: LocalSource, item: SourceItem) -> tuple[int, str]:
        """``(descriptor of item's folder, its file name)``: :meth:`LocalSource.open_folder`, once per
        folder. Raises what it raises."""
        folder, _, name = item.locator.rpartition("/")
        if self._source is None or self._source[0] != folder:
            self._close_source()
            fd, name = source.open_folder(item)
            self._source = (folder, fd)
        return self._source[1], check_name(name)

    def destination(self, item: SourceItem) -> tuple[int, str, Path]:
        """``(descriptor of the output's folder, the output's name, the folder's path)``: the folder walked
        to (made when missing) once per folder from the confinement root, and found still at its path
        for every file (:meth:`FolderCache.check_placed`). Raises :class:`PathNotAllowed` when it was moved
        or replaced during the run."""
        writer = self._writer
        folder, _, name = item.name.rpartition("/")
        if self._dest is None or self._dest[0] != folder:
            self._close_dest()
            final = writer.dest.workdir / item.name
            rel = writer._folder_below_root(final)
            fd, lent = writer.folders.lend(rel, create=True)
            self._dest = (folder, fd, lent, rel, final.parent)
        _, fd, _, rel, parent = self._dest
        writer.folders.check_placed(rel, fd)
        return fd, name, parent

    def _close_source(self) -> None:
        if self._source is not None:
            os.close(self._source[1])
            self._source = None

    def _close_dest(self) -> None:
        if self._dest is not None and not self._dest[2]:
            os.close(self._dest[1])
        self._dest = None


def _algorithms(expected: dict[str, str]) -> tuple[str, ...]:
    """sha256 (the manifest's), then the other algorithms ``expected`` names."""
    return ("sha256", *sorted(set(expected) - {"sha256"}))
