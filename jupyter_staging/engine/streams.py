"""Large downloads on parallel streams: the byte ranges of one file fetched at once by several threads.

One HTTP connection (or one S3 GET) rarely fills a fast link: per-connection windows, server-side limits and
object stores that serve each GET from one disk all cap it. A remote file of 64 MiB or more whose source
serves ranges (``Source.supports_ranges``: HTTP with ``Accept-Ranges`` and a strong validator, S3, Azure) is
fetched as conditional byte ranges, ``StagingApp.streams_per_file`` at a time, into one pre-sized ``.part``
and hashed as they arrive (:mod:`jupyter_staging.engine.ranges`, shared with Dask tasks); once all are in,
what is left is hashed, the file verified against the size and the source's checksums and published, exactly
as a one-stream download.

A file that changes between two ranges (the server answers ``200`` to ``If-Range``, or another ETag) is
fetched again from its first byte in one stream, as a one-stream download of a changed file is.

Resuming: the ranges finished are recorded in the job's resume data (``resume["ranges"][name]``, with the
part's owner tag); a paused or restarted job fetches only the others. Local files are copied in one stream
(``copy_file_range`` is not faster in pieces on one disk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_staging.engine.items import ItemStager
from jupyter_staging.engine.parts import owner_tag
from jupyter_staging.engine.ranges import byte_ranges, fetch_in_ranges, range_step, streams_for
from jupyter_staging.engine.verified import reopened
from jupyter_staging.errors import JobInterrupted, SourceChanged
from jupyter_staging.safety.checksums import second_algorithm
from jupyter_staging.sources.base import Source, SourceItem


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
        source.ask_checksums(item)  # the ranges' answers state none (an S3 listing neither)
        size = item.size
        record = self._range_record(item, range_step(size, streams))
        credited = 0  # bytes of ranges a previous run finished, counted as done
        out = self._open_part(item, final, second=None)  # sets aside a foreign .part; ours is kept
        try:
            if out.offset != size or not record["done"]:
                record["done"] = []
                os.ftruncate(out.fileno(), 0)
                os.ftruncate(out.fileno(), size)
            done = set(record["done"])
            todo = byte_ranges(size, int(record["step"]), done)
            if done:
                self._log("info", f"{item.name}: resuming, {len(todo)} of its ranges left")
                credited = size - sum(length for _, length in todo)
                self.control.add_bytes(credited)
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
                second=second_algorithm(checksums),
                on_range=recorded,
            )
            # Agreed again now the ranges are in (a source may have stated more), inside the guard: when
            # they cannot be (ChecksumMismatch), the part is discarded, its descriptors closed.
            checksums = self._expected_checksums(item)
        except JobInterrupted:
            out.close()
            raise
        except BaseException as exc:
            if self._keeps_parts(exc):  # an expired URL: the ranges done stay for a submit with a new one
                out.close()
                raise
            if isinstance(exc, SourceChanged):  # fetched again from the first byte, and counted again
                self.control.add_bytes(-credited)
            out.discard()
            self._drop_range_record(item)
            raise
        second = second_algorithm(checksums)
        # Opened again while ``out`` is still open, and only as that very file: ``hashed`` is of its bytes.
        whole = reopened(out, lambda h: self.part_file(final, resume=True, second=second, hashed=h), hashed)
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
