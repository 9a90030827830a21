"""Hard links and symlinks of local source files: one thread links, and the sha256 is read ahead.

A link moves no byte, so its cost is Python's per-file bookkeeping (which holds the GIL: more threads do
not make it faster) plus the sha256 of the source that the manifest records (DESIGN.md, "Job model"). So a
link job links on one thread, leaving the GIL to the server's event loop as much as it can, while
:class:`SourceDigests` has the sources read ahead: small files by the kernel's readahead (then hashed on
the linking thread from memory), large ones by a pool whose reads and hashing of large blocks release the
GIL. On a folder of 20,000 files of 64 KiB (``bench/bench_scale.py``, page cache dropped) a pool of eight
threads for every file measured 2,300-2,700 files/s at 10-11.5 CPU-s, the linking thread waiting for the
GIL half of its time; the kernel's readahead measured 2,700-3,300 files/s at 6.7-8.2 CPU-s.

A digest taken ahead is a digest of some bytes at some moment; the manifest must state the bytes behind
the link. So each digest goes with the fingerprint (size, mtime, inode: DESIGN.md, "Re-running a
notebook") of the file it is of: the listed one for a digest an earlier job recorded, the one seen by
descriptor before and after reading for a digest read ahead. After linking, the fingerprint of what the
new name leads to (the linked inode itself, for a hard link) is compared with it; when they differ, the
linked file is hashed again by descriptor, and the job's resume data files the digest under the
fingerprint seen, not the listed one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from jupyter_staging.engine.executors import run_bounded
from jupyter_staging.engine.freshness import locator_identity
from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.reuse import ReusingWriter
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.staged import StagedIndex
from jupyter_staging.errors import DestinationExists, SourceChanged, TransferFailed
from jupyter_staging.safety.copying import fd_digest
from jupyter_staging.safety.dirfd import open_existing
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.local import LocalSource, fingerprint

#: A sha256 (hex) and the fingerprint of the file it was taken of (None: the file changed while read).
Digest = tuple[str, dict[str, int] | None]


def digest_of(fd: int) -> Digest:
    """The sha256 of open file ``fd`` from its current position, with its fingerprint when ``fstat`` saw
    the same one before and after reading (else None: it changed while it was read). Raises ``OSError``."""
    before = fingerprint(os.fstat(fd))
    digest = fd_digest(fd)
    after = fingerprint(os.fstat(fd))
    return digest, (after if after == before else None)


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


def read_digest(path: str) -> Digest:
    """:func:`digest_of` the regular file at ``path`` (:func:`open_regular`: a listed source is a file; a
    symlink or anything else put there since is refused with ``OSError``)."""
    fd = open_regular(path)
    try:
        return digest_of(fd)
    finally:
        os.close(fd)


def _open_ahead(path: str) -> int | None:
    """:func:`open_regular`, the kernel asked to read the file ahead (``POSIX_FADV_WILLNEED``, where the
    platform has it); None when it cannot be opened (its turn then reads the link itself)."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    return fd


#: Files up to this size (bytes) are hashed on the linking thread itself, the kernel reading them ahead.
INLINE_BYTES = 1024 * 1024

#: How many of those small files, ahead of the one being linked, are handed to the kernel's readahead.
READ_AHEAD_FILES = 32


class SourceDigests:
    """The sha256 of the items of one link job, each valid for one fingerprint: ``recorded(item)`` (the
    sha256 an earlier job recorded for the fingerprint the item was listed with, or None; run on the
    caller's thread: it is Python work), else read from the file.

    Files of up to :data:`INLINE_BYTES` are read on the linking thread when their turn comes, the next
    :data:`READ_AHEAD_FILES` of them opened and handed to the kernel's readahead
    (``posix_fadvise(POSIX_FADV_WILLNEED)``) meanwhile, so their bytes are in memory by then: a pool hashing
    them spent more time handing the GIL to and fro than hashing (a 20,000-file job's linking thread waited
    for the GIL half of its time). Larger files are read by ``read(item)`` (a :data:`Digest`) on ``workers``
    threads ahead, in the order the items will be linked: hashing a large block releases the GIL. Use as a
    context manager: leaving it cancels what has not started (a pause or a failure does not hash the rest
    of a folder) and closes what was opened ahead."""

    def __init__(
        self,
        read: Callable[[SourceItem], Digest],
        recorded: Callable[[SourceItem], str | None],
        workers: int,
    ) -> None:
        self._read = read
        self._recorded = recorded
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="staging-hash")
        self._known: dict[str, str] = {}
        self._futures: dict[str, Future[Digest]] = {}
        #: Small files in link order not opened yet (and their names); those opened ahead, in link order.
        self._queue: deque[SourceItem] = deque()
        self._queued: set[str] = set()
        self._opened: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> SourceDigests:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            opened, self._opened = list(self._opened.values()), OrderedDict()
            self._queue.clear()
            self._queued.clear()
        for fd in opened:
            os.close(fd)

    def start(self, items: Iterable[SourceItem]) -> None:
        """Look up the recorded sha256 of ``items`` and queue the others for reading (by name: a name
        given twice is looked up once)."""
        for item in items:
            name = item.name
            if name in self._known or name in self._futures or name in self._queued or name in self._opened:
                continue
            digest = self._recorded(item)
            with self._lock:
                if digest is not None:
                    self._known[name] = digest
                elif item.size is not None and item.size <= INLINE_BYTES:
                    self._queue.append(item)
                    self._queued.add(name)
                else:
                    self._futures[item.name] = self._pool.submit(self._read, item)

    def result(self, item: SourceItem, seen: dict[str, Any]) -> str | None:
        """The sha256 (hex) of ``item``'s bytes as they are behind its link, whose fingerprint after linking
        is ``seen``: the recorded one when ``seen`` is the listed fingerprint, the one read (here for a small
        file, ahead for a large one) when it was read from a file with fingerprint ``seen``; else None (the
        file changed since, or could not be read by its path: the caller hashes the linked file itself)."""
        with self._lock:
            known = self._known.pop(item.name, None)
            future = self._futures.pop(item.name, None)
        if known is not None:
            return known if seen == item.validator else None
        if future is None:
            return self._read_small(item, seen)
        if seen != item.validator and future.cancel():
            return None
        try:
            digest, read_from = future.result()
        except OSError:
            return None
        return digest if read_from == seen else None

    def _read_small(self, item: SourceItem, seen: dict[str, Any]) -> str | None:
        """:meth:`result` of a small file: read now from the descriptor opened ahead (its bytes read ahead
        by the kernel), the next ones opened and read ahead meanwhile; None for a file not given to
        :meth:`start` or that could not be opened."""
        fd = self._take(item.name)
        try:
            self._read_ahead()
            if fd is None:
                return None
            digest, read_from = digest_of(fd)
        except OSError:
            return None
        finally:
            if fd is not None:
                os.close(fd)
        return digest if read_from == seen else None

    def _take(self, name: str) -> int | None:
        """The descriptor of small file ``name``, opened ahead or now. The files before it in link order
        that were never asked for (a resumed run skips what the run before it linked) are closed, or
        dropped unopened. None when it was not given to :meth:`start`, or cannot be opened."""
        stale: list[int] = []
        item: SourceItem | None = None
        with self._lock:
            if name in self._opened:
                while True:
                    first, fd = self._opened.popitem(last=False)
                    if first == name:
                        break
                    stale.append(fd)
            elif name in self._queued:
                stale, self._opened = list(self._opened.values()), OrderedDict()
                while item is None or item.name != name:
                    item = self._queue.popleft()
                    self._queued.discard(item.name)
            else:
                return None
        for old in stale:
            os.close(old)
        return fd if item is None else _open_ahead(item.locator)

    def _read_ahead(self) -> None:
        """Open the next small files, up to :data:`READ_AHEAD_FILES` open at once, and have the kernel
        read each ahead; one that cannot be opened is dropped (its turn reads the link itself)."""
        while True:
            with self._lock:
                if not self._queue or len(self._opened) >= READ_AHEAD_FILES:
                    return
                item = self._queue.popleft()
                self._queued.discard(item.name)
            fd = _open_ahead(item.locator)
            if fd is not None:
                with self._lock:
                    self._opened[item.name] = fd


class LinkingWriter(ReusingWriter):
    """Hard links and symlinks of a local source's files for one run of job ``job_id`` (the state is set
    by :class:`~jupyter_staging.engine.items.ItemStager`)."""

    recovering: bool
    #: Outputs of the newest earlier jobs of the same source: the sha256 a link job may reuse.
    linked: StagedIndex
    #: Items of this job staged at once, across all of its manifest entries.
    _item_slots: threading.BoundedSemaphore
    #: The :class:`SourceDigests` of the link loop running on this thread (one per manifest entry).
    _link_digests: threading.local
    #: Counts a file found complete from the previous run (ItemStager's: one log line for all).
    _count_recovered: Callable[[], None]
    #: Files ``item`` under the fingerprint its bytes were seen with (ItemStager's; written before its
    #: chunk is marked ready).
    _relist: Callable[[SourceItem, dict[str, Any]], None]

    def _link_all(
        self, work: list[tuple[SourceItem, JobChunk]], one: Callable[[tuple[SourceItem, JobChunk]], None]
    ) -> None:
        """Run ``one`` on each ``(item, chunk)`` pair of a link job on this thread, the sha256 of the
        pending ones looked up, or read ahead (small files by the kernel, large ones on a pool)."""
        with SourceDigests(
            lambda item: read_digest(item.locator), self._recorded_digest, self.host.concurrent_items
        ) as digests:
            digests.start(item for item, chunk in work if chunk.state == ChunkState.pending.value)
            self._link_digests.current = digests
            try:
                run_bounded(one, work, 1, slots=self._item_slots)
            finally:
                self._link_digests.current = None

    def _link(self, source: Source, method: str, item: SourceItem, final: Path) -> tuple[int, str]:
        """Link ``item`` of ``source`` as ``final``; returns ``(size_bytes, sha256_hex)`` of the bytes behind
        the link. A hard link is made by descriptor of the source file's folder
        (:meth:`~jupyter_staging.sources.local.LocalSource.item_folder`: no symlink put on its path since
        the listing is followed). Raises :class:`DestinationExists`, :class:`TransferFailed`
        (``hardlink_failed`` / ``symlink_failed``), :class:`SourceChanged` for a file that kept changing
        while it was hashed, :class:`PathNotAllowed` for a source folder replaced by a symlink."""
        symbolic = method == "symlink"
        src = Path(item.locator)
        at_source = (
            source.item_folder(item)
            if isinstance(source, LocalSource) and not symbolic
            else contextlib.nullcontext(None)
        )
        try:
            with at_source as src_at:
                linked = self._link_into(src, final, symbolic=symbolic, src_at=src_at)
        except FileExistsError:
            if not (self.recovering and links_to(final, src, symbolic=symbolic)):
                raise DestinationExists(
                    f"{final.name} already exists in the destination; not overwritten"
                ) from None
            self._count_recovered()
            linked = os.stat(src) if symbolic else os.lstat(final)
        except OSError as exc:
            code = "hardlink_failed" if method == "hardlink" else "symlink_failed"
            hint = " (source and destination must be on the same file system)" if exc.errno == 18 else ""
            raise TransferFailed(f"cannot {method} {item.name}: {exc.strerror}{hint}", code=code) from None
        seen: dict[str, Any] = fingerprint(linked)
        digests: SourceDigests | None = getattr(self._link_digests, "current", None)
        if digests is not None:
            digest = digests.result(item, seen)
        else:
            digest = self._recorded_digest(item) if seen == item.validator else None
        if digest is None:
            digest, seen = self._hash_linked(item, final, symbolic=symbolic)
        if seen != item.validator:
            self._relist(item, seen)
        self.control.add_bytes(int(seen["size"]))
        return int(seen["size"]), digest

    def _hash_linked(self, item: SourceItem, final: Path, *, symbolic: bool) -> tuple[str, dict[str, Any]]:
        """The sha256 of the bytes behind the new link ``final`` and their fingerprint: the hard link read
        by descriptor (never following a symlink), a symlink's target by its path. Read again while the
        file changes during the read, three times at most, then :class:`SourceChanged`."""
        for _ in range(3):
            fd = open_regular(item.locator, follow=True) if symbolic else self._open_linked(final)
            try:
                digest, seen = digest_of(fd)
            finally:
                os.close(fd)
            if seen is not None:
                return digest, seen
        raise SourceChanged(f"{item.name} kept changing while it was read; not staged")

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

    def _recorded_digest(self, item: SourceItem) -> str | None:
        """The sha256 (hex) an earlier job of this server recorded for local file ``item`` with the
        fingerprint it was listed with (size, mtime, inode: the very bytes, as the re-run rules judge), else
        None; :meth:`_link` checks after linking that the file still has it. A link moves no byte, so
        hashing is most of its cost: linking the same shared files again reads none of them. Every size
        is looked up: with the page cache dropped, linking 2,000 files of 64 KiB again measured 1.15x the
        first time's files/s at 0.8x its CPU (``bench/bench_scale.py``), and a network file system makes
        reading dearer still."""
        if item.size is None or self.linked.empty():
            return None
        return self.linked.recorded_sha256(locator_identity(item.locator), item.validator, item.size)


def links_to(final: Path, src: Path, *, symbolic: bool) -> bool:
    """True when ``final`` is the link to ``src`` a previous run made: a symlink whose target is
    ``src``, or a hard link to ``src``'s inode. Never follows ``final``."""
    try:
        if symbolic:
            return os.readlink(final) == str(src)
        here, there = os.lstat(final), os.stat(src)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
