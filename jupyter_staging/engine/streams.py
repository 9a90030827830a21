"""Large downloads on parallel streams: the byte ranges of one file fetched at once by several threads.

One HTTP connection (or one S3 GET) rarely fills a fast link: per-connection windows, server-side limits and
object stores that serve each GET from one disk all cap it. A file of at least :data:`STREAM_MIN_BYTES`
whose source can serve ranges (``Source.supports_ranges``: HTTP with ``Accept-Ranges`` and a strong
validator, S3, Azure) is fetched as ranges (:func:`range_step`: 32 MiB and up, four per stream at most),
``streams_per_file`` at a time (``StagingApp.streams_per_file``), each written at its own offset of the one
pre-sized ``.part`` file. Every range is conditional on the item's validator (``If-Range`` / ``IfMatch``),
so two versions are never spliced. The file is hashed once, from its first byte, while the ranges arrive
(:class:`PrefixHasher`: sha256, and MD5 when the source states one); once all are in, what is left is
hashed, the file verified against the size and the source's checksums and published, exactly as a
one-stream download.

A file that changes between two ranges (the server answers ``200`` to ``If-Range``, or another ETag) is
fetched again from its first byte in one stream, as a one-stream download of a changed file is.

Resuming: the ranges finished are recorded in the job's resume data (``resume["ranges"][name]``, with the
part's owner tag); a paused or restarted job fetches only the others. Local files are copied in one stream
(``copy_file_range`` is not faster in pieces on one disk).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_staging.engine.executors import run_bounded
from jupyter_staging.engine.items import ItemStager
from jupyter_staging.engine.parts import owner_tag
from jupyter_staging.errors import JobInterrupted, SourceChanged, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import Hashed
from jupyter_staging.sources.base import Source, SourceItem

#: Bytes read back at a time by :class:`PrefixHasher`.
HASH_BLOCK = 8 * 1024**2
#: Fewest bytes of one range of a file fetched on parallel streams.
STREAM_RANGE_BYTES = 32 * 1024**2
#: Ranges per stream at most: larger files get larger ranges (an endpoint slow per request, such as an
#: object store that reads the whole object for each ranged GET, is asked few times).
RANGES_PER_STREAM = 4
#: Smallest file (bytes) fetched on parallel streams.
STREAM_MIN_BYTES = 64 * 1024**2


def range_step(size: int, streams: int) -> int:
    """Bytes per range for a file of ``size`` bytes on ``streams`` streams: at least
    :data:`STREAM_RANGE_BYTES`, and at most :data:`RANGES_PER_STREAM` ranges per stream (in whole MiB).
    Several ranges per stream let them finish roughly in order, so the prefix hash keeps up."""
    mib = 1024**2
    wanted = -(-size // (streams * RANGES_PER_STREAM))
    return max(STREAM_RANGE_BYTES, -(-wanted // mib) * mib)


def byte_ranges(size: int, step: int, done: set[int] | None = None) -> list[tuple[int, int]]:
    """``(start, length)`` of the ranges of ``step`` bytes covering ``size`` bytes, without those whose
    start is in ``done``."""
    return [
        (start, min(step, size - start)) for start in range(0, size, step) if start not in (done or set())
    ]


class PrefixHasher:
    """Hashes a file from its first byte while its ranges arrive out of order: each completed range is
    reported with :meth:`completed`, and a helper thread hashes (sha256, and MD5 with ``md5``) the longest
    run of completed bytes from where it stopped, reading them back from ``fd`` (still in the page cache).
    :meth:`finish` returns what it hashed, for ``PartFile(..., hashed=)``: only a tail is then left to
    read once all ranges are in."""

    def __init__(self, fd: int, *, md5: bool) -> None:
        self.fd = fd
        self.hashed = Hashed(0, hashlib.sha256(), hashlib.md5(usedforsecurity=False) if md5 else None)
        #: Bytes fed to the hash objects, always exactly (advanced block by block).
        self._offset = 0
        #: True once hashing failed in a way that may have left the hash objects ahead of ``_offset``.
        self._broken = False
        self._ranges: dict[int, int] = {}
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
            md5 = hashlib.md5(usedforsecurity=False) if self.hashed.md5 is not None else None
            return Hashed(0, hashlib.sha256(), md5)
        return Hashed(self._offset, self.hashed.sha256, self.hashed.md5)

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
                block = os.pread(self.fd, min(HASH_BLOCK, end - start), start)
            except OSError:
                return False
            if not block:
                return False
            self._update(block)
            start += len(block)
            with self._cond:
                self._offset = start
        return True

    def _update(self, block: bytes) -> None:
        """Feed ``block`` to the hash objects. With MD5 too, its MD5 is taken on a second thread while this
        one takes its sha256 (both release the GIL): 690 MiB/s for the two here, against 500 MiB/s one
        after the other (MD5 alone runs at about 710 MiB/s, sha256 at 1,690). Where no thread can be
        started, one after the other. Raises what an update raised."""
        md5 = self.hashed.md5
        beside: threading.Thread | None = None
        failed: list[BaseException] = []
        if md5 is not None:

            def feed_md5() -> None:
                try:
                    md5.update(block)
                except BaseException as exc:  # re-raised on this thread, after the join
                    failed.append(exc)

            beside = threading.Thread(target=feed_md5, name="staging-stream-md5")
            try:
                beside.start()
            except RuntimeError:  # no thread to spare (a process limit): here, before the sha256
                beside = None
                md5.update(block)
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
    md5: bool = False,
    on_range: Callable[[int], None] | None = None,
) -> Hashed:
    """Fetch the ranges of ``step`` bytes of ``item`` (``item.size`` bytes) not in ``done`` (their starts)
    into ``fd``, a part file of that size, ``streams`` at a time, each written at its offset
    (``Source.fetch_range``: conditional on the item's version), hashed from the first byte as they
    arrive (:class:`PrefixHasher`; MD5 too with ``md5``). ``on_range(start)`` is called as each range is
    in. Returns what was hashed, for ``PartFile(..., resume=True, hashed=)``.

    Raises :class:`TransferFailed` for a range that came short, :class:`SourceChanged` when the item's
    version changed, :class:`JobInterrupted` on pause or cancel, and what the source raises."""
    assert item.size is not None
    done = done or set()
    hasher = PrefixHasher(fd, md5=md5)
    for start, length in byte_ranges(item.size, step):
        if start in done:
            hasher.completed(start, length)

    def one(span: tuple[int, int]) -> None:
        control.check()
        start, length = span
        if source.fetch_range(item, start, length, fd, control) != length:
            raise TransferFailed(f"{item.name}: range at byte {start} came short")
        hasher.completed(start, length)
        if on_range is not None:
            on_range(start)

    try:
        run_bounded(one, byte_ranges(item.size, step, done), streams, name="staging-stream")
    finally:
        hashed = hasher.finish()
    return hashed


class StreamingStager(ItemStager):
    """Fetches large files of range-capable sources on parallel streams; everything else as
    :class:`~jupyter_staging.engine.items.ItemStager`."""

    def _fetch(self, source: Source, item: SourceItem, final: Path, *, sync_folder: bool) -> tuple[int, str]:
        streams = self.host.streams_per_file
        if not streams_for(source, item, streams):
            return super()._fetch(source, item, final, sync_folder=sync_folder)
        try:
            return self._fetch_ranges(source, item, final, streams, sync_folder=sync_folder)
        except SourceChanged:
            # A new version appeared between two ranges: no range of it is trusted; one stream fetches
            # it from its first byte (and the size and checksum checks then judge it).
            self._log("warning", f"{item.name}: changed while it was fetched in ranges; fetching it again")
            return super()._fetch(source, item, final, sync_folder=sync_folder)

    def _fetch_ranges(
        self, source: Source, item: SourceItem, final: Path, streams: int, *, sync_folder: bool
    ) -> tuple[int, str]:
        """Fetch ``item`` as ranges on ``streams`` threads into its pre-sized part, then hash, verify and
        publish it; returns ``(size_bytes, sha256_hex)``."""
        assert item.size is not None
        size = item.size
        record = self._range_record(item, range_step(size, streams))
        out = self._open_part(item, final, md5=False)  # sets aside a foreign .part; ours is kept
        try:
            if out.offset != size or not record["done"]:
                record["done"] = []
                os.ftruncate(out.fileno(), 0)
                os.ftruncate(out.fileno(), size)
            done = set(record["done"])
            todo = byte_ranges(size, int(record["step"]), done)
            if done:
                self._log("info", f"{item.name}: resuming, {len(todo)} of its ranges left")
                self.control.add_bytes(size - sum(length for _, length in todo))
            checksums = self._expected_checksums(item)

            def recorded(start: int) -> None:
                with self._lock:
                    record["done"].append(start)
                    self._save_resume()

            if todo:
                self._log("info", f"{item.name}: {len(todo)} ranges on {min(streams, len(todo))} streams")
            hashed = fetch_in_ranges(
                source,
                item,
                out.fileno(),
                self.control,
                streams=streams,
                step=int(record["step"]),
                done=done,
                md5="md5" in checksums,
                on_range=recorded,
            )
        except JobInterrupted:
            out.close()
            raise
        except BaseException:
            out.discard()
            self._drop_range_record(item)
            raise
        out.close()
        checksums = self._expected_checksums(item)
        whole = self.part_file(final, resume=True, md5="md5" in checksums, hashed=hashed)
        result = whole.commit(size, checksums=checksums or None, sync_folder=sync_folder)
        self._drop_range_record(item)
        return result

    def _range_record(self, item: SourceItem, step: int) -> dict[str, Any]:
        """The resume record of ``item``'s ranges (``{"tag", "size", "step", "done": [starts]}``: ranges of
        ``step`` bytes), the earlier run's when it matches this job, fingerprint and size (its step kept),
        else a new one."""
        tag = owner_tag(self.job_id, item.validator)
        with self._lock:
            ranges = self.resume.setdefault("ranges", {})
            record = ranges.get(item.name)
            if not record or record.get("tag") != tag or record.get("size") != item.size:
                record = ranges[item.name] = {"tag": tag, "size": item.size, "step": step, "done": []}
            record.setdefault("step", step)
            return record

    def _drop_range_record(self, item: SourceItem) -> None:
        with self._lock:
            if (self.resume.get("ranges") or {}).pop(item.name, None) is not None:
                self._save_resume()
