"""Byte ranges of one file fetched at once on parallel streams, the file hashed as they arrive: the part
the server's threads (:class:`~jupyter_staging.engine.streams.StreamingStager`) and Dask tasks
(:mod:`jupyter_staging.engine.tasks`) share.

A file is cut into ranges of :func:`range_step` bytes (32 to 256 MiB, four per stream at most), fetched
``streams`` at a time (``Source.fetch_range``: each conditional on the item's version, ``If-Range`` /
``IfMatch``, so two versions are never spliced) and written at their own offsets of one pre-sized part file.
:class:`PrefixHasher` hashes the file from its first byte while the ranges arrive (sha256, and MD5 when the
source states one), so only a tail is left to read once all are in. This module imports no database or
server code: a Dask worker loads it with the tasks.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

from jupyter_staging.engine.executors import run_bounded
from jupyter_staging.errors import SourceChanged, TransferFailed
from jupyter_staging.safety.checksums import optional_digest
from jupyter_staging.safety.control import DelegatingControl, JobControl
from jupyter_staging.safety.partfile import Hashed
from jupyter_staging.safety.writeback import start_writeback
from jupyter_staging.sources.base import Source, SourceItem

#: Bytes read back at a time by :class:`PrefixHasher`, into one buffer it reuses. Reading 1 GiB back in
#: new 8 MiB blocks (``os.pread``) and hashing it took 1.13-1.16 CPU-s here; into a reused buffer 0.80-0.87
#: (8 MiB) and 0.75 (1-2 MiB, which stay in the processor's cache while they are hashed).
HASH_BLOCK = 2 * 1024**2
#: Fewest bytes of one range of a file fetched on parallel streams.
STREAM_RANGE_BYTES = 32 * 1024**2
#: Ranges per stream at most: larger files get larger ranges (an endpoint slow per request, such as an
#: object store that reads the whole object for each ranged GET, is asked few times).
RANGES_PER_STREAM = 4
#: Most bytes of one range. A range is recorded done only once it is whole: a pause, a cancel or a crash
#: fetches the ranges in flight again from their first byte, so at most ``streams`` x this many bytes
#: (1 GiB on 4 streams) are fetched twice. Without it, 100 GiB on 4 streams were ranges of 6.4 GB each.
MAX_RANGE_BYTES = 256 * 1024**2
#: Smallest file (bytes) fetched on parallel streams.
STREAM_MIN_BYTES = 64 * 1024**2


def range_step(size: int, streams: int) -> int:
    """Bytes per range for a file of ``size`` bytes on ``streams`` streams: at least
    :data:`STREAM_RANGE_BYTES`, at most :data:`RANGES_PER_STREAM` ranges per stream (in whole MiB) while
    that keeps ranges within :data:`MAX_RANGE_BYTES` (1 GiB on 4 streams: 16 ranges of 64 MiB; 100 GiB: 400
    of 256 MiB). Several ranges per stream let them finish roughly in order, so the prefix hash keeps up."""
    mib = 1024**2
    wanted = -(-size // (streams * RANGES_PER_STREAM))
    return min(MAX_RANGE_BYTES, max(STREAM_RANGE_BYTES, -(-wanted // mib) * mib))


def byte_ranges(size: int, step: int, done: set[int] | None = None) -> list[tuple[int, int]]:
    """``(start, length)`` of the ranges of ``step`` bytes covering ``size`` bytes, without those whose
    start is in ``done``."""
    return [
        (start, min(step, size - start)) for start in range(0, size, step) if start not in (done or set())
    ]


class PrefixHasher:
    """Hashes a file from its first byte while its ranges arrive out of order: each completed range is
    reported with :meth:`completed`, and a helper thread hashes (sha256, and ``second`` when given: an
    algorithm of :data:`~jupyter_staging.safety.checksums.CHECKSUM_ALGORITHMS`) the longest
    run of completed bytes from where it stopped, reading them back from ``fd`` (still in the page cache)
    into one buffer of :data:`HASH_BLOCK` bytes (``preadv``: no new block per read).
    :meth:`finish` returns what it hashed, for ``PartFile(..., hashed=)``: only a tail is then left to
    read once all ranges are in."""

    def __init__(self, fd: int, *, second: str | None) -> None:
        self.fd = fd
        self._second = second
        self.hashed = Hashed(0, hashlib.sha256(), optional_digest(second))
        #: Bytes fed to the hash objects, always exactly (advanced block by block).
        self._offset = 0
        #: True once hashing failed in a way that may have left the hash objects ahead of ``_offset``.
        self._broken = False
        self._ranges: dict[int, int] = {}
        self._buffer = memoryview(bytearray(HASH_BLOCK))
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="staging-stream-hash", daemon=True)
        self._thread.start()

    def completed(self, start: int, length: int) -> None:
        """Bytes ``[start, start + length)`` are in the file."""
        with self._cond:
            self._ranges[start] = length
            self._cond.notify()

    def finish(self) -> Hashed:
        """Stop the helper thread; the bytes hashed so far (``offset``) and their hash objects. When hashing
        failed unexpectedly, nothing (offset 0, new hash objects): the part file then hashes it all."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._broken:
            return Hashed(0, hashlib.sha256(), optional_digest(self._second))
        return Hashed(self._offset, self.hashed.sha256, self.hashed.second)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._offset not in self._ranges and not self._closed:
                        self._cond.wait()
                    if self._offset not in self._ranges:
                        return
                    start, length = self._offset, self._ranges.pop(self._offset)
                if not self._hash(start, length):
                    return
        except BaseException:  # a hash object may hold bytes not counted: finish() hands over nothing
            with self._cond:
                self._broken = True

    def _hash(self, start: int, length: int) -> bool:
        """Hash ``length`` bytes at ``start``, ``_offset`` following each block; False when the file could
        not be read (the rest is then hashed when the part is published)."""
        end = start + length
        while start < end:
            try:
                n = os.preadv(self.fd, [self._buffer[: min(len(self._buffer), end - start)]], start)
            except OSError:
                return False
            if not n:
                return False
            self._update(self._buffer[:n])  # hashed before the buffer is read into again
            start += n
            with self._cond:
                self._offset = start
        return True

    def _update(self, block: memoryview) -> None:
        """Feed ``block`` to the hash objects, both done with it when this returns. An MD5 is taken on a
        second thread while this one takes the sha256 (both release the GIL): 690 MiB/s for the two here,
        against 500 MiB/s one after the other (MD5 alone runs at about 710 MiB/s, sha256 at 1,690). A CRC
        (several GiB/s), or an MD5 where no thread can be started, is taken here first. Raises what an
        update raised."""
        second = self.hashed.second
        beside: threading.Thread | None = None
        failed: list[BaseException] = []
        if second is not None and second.name == "md5":

            def feed_md5() -> None:
                try:
                    second.update(block)
                except BaseException as exc:  # re-raised on this thread, after the join
                    failed.append(exc)

            beside = threading.Thread(target=feed_md5, name="staging-stream-md5")
            try:
                beside.start()
            except RuntimeError:  # no thread to spare (a process limit): here, before the sha256
                beside = None
        if second is not None and beside is None:
            second.update(block)
        self.hashed.sha256.update(block)
        if beside is not None:
            beside.join()
            if failed:
                raise failed[0]


def streams_for(source: Source, item: SourceItem, streams: int) -> bool:
    """True when ``item`` is fetched on parallel streams: ``streams`` is 2 or more, and the item is a
    remote one of at least :data:`STREAM_MIN_BYTES` whose source serves ranges."""
    return (
        streams >= 2
        and item.size is not None
        and item.size >= STREAM_MIN_BYTES
        and source.local_path(item) is None
        and source.supports_ranges(item)
    )


def fetch_in_ranges(
    source: Source,
    item: SourceItem,
    fd: int,
    control: JobControl,
    *,
    streams: int,
    step: int,
    done: set[int] | None = None,
    second: str | None = None,
    on_range: Callable[[int], None] | None = None,
) -> Hashed:
    """Fetch the ranges of ``step`` bytes of ``item`` (``item.size`` bytes) not in ``done`` (their starts)
    into ``fd``, a part file of that size, ``streams`` at a time, each written at its offset
    (``Source.fetch_range``: conditional on the item's version), hashed from the first byte as they
    arrive (:class:`PrefixHasher`; the ``second`` digest too), its writeback started at once
    (:func:`~jupyter_staging.safety.writeback.start_writeback`: the fsync after the last range then finds
    little left to write). ``on_range(start)`` is called as each range is in. Returns what was hashed,
    for ``PartFile(..., resume=True, hashed=)``. When the version changed, the bytes this call reported to
    ``control`` are taken back before :class:`SourceChanged` is raised (the caller fetches the file again
    from its first byte).

    Raises :class:`TransferFailed` for a range that came short, :class:`SourceChanged` when the item's
    version changed, :class:`JobInterrupted` on pause or cancel, and what the source raises."""
    assert item.size is not None
    done = done or set()
    hasher = PrefixHasher(fd, second=second)
    for start, length in byte_ranges(item.size, step):
        if start in done:
            hasher.completed(start, length)

    counted = _Counted(control)

    def one(span: tuple[int, int]) -> None:
        control.check()
        start, length = span
        if source.fetch_range(item, start, length, fd, counted) != length:
            raise TransferFailed(f"{item.name}: range at byte {start} came short")
        hasher.completed(start, length)
        start_writeback(fd, start, length)  # the disk writes it while the other ranges arrive
        if on_range is not None:
            on_range(start)

    try:
        run_bounded(one, byte_ranges(item.size, step, done), streams, name="staging-stream")
    except SourceChanged:
        control.add_bytes(-counted.bytes)  # fetched again from the first byte, and counted again
        raise
    finally:
        hashed = hasher.finish()
    return hashed


class _Counted(DelegatingControl):
    """``control`` as the ranges of one file report through it, counting the bytes reported (to take them
    back when the file is fetched again); pause, cancel, rows and log lines are ``control``'s."""

    def __init__(self, control: JobControl) -> None:
        super().__init__(control, on_bytes=self._count, on_rows=control.add_rows, log=control.log)
        self._lock = threading.Lock()
        self.bytes = 0

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes += n
        self._job.add_bytes(n)
