"""Parquet in and out: a Parquet source re-chunked, and the part writer that cuts a stream of record
batches into ``part-NNNNN.parquet`` files of exactly ``chunk_rows`` rows.

Each part's schema metadata also holds ``table::len::<name>``, the longest string of each string column
in that part (astropy's Parquet convention, :mod:`jupyter_staging.formats.astropy_meta`).
Each part is written as ``<name>.part`` while its sha256 is computed, fsynced, and only then published
under its final name, which is never overwritten (:class:`jupyter_staging.safety.partfile.PartFile`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import conform
from jupyter_staging.formats.astropy_meta import string_lengths
from jupyter_staging.formats.base import ChunkInfo, Piece, Source, without_paths
from jupyter_staging.formats.metadata import base_meta, with_metadata
from jupyter_staging.formats.prefetch import Inline
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile

__all__ = [
    "COMPRESSIONS",
    "MAX_ROW_GROUP_ROWS",
    "PART_TEMPLATE",
    "WRITE_BUFFER_BYTES",
    "ParquetSource",
    "PartWriter",
    "part_name",
]

log = logging.getLogger(__name__)

#: Output file name of part ``index``.
PART_TEMPLATE = "part-{:05d}.parquet"
#: Parquet codecs accepted by ``compression`` (``"none"`` writes uncompressed pages).
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
#: Largest row group written, rows. A part holds ceil(chunk_rows / this) row groups.
MAX_ROW_GROUP_ROWS = 1024 * 1024
#: Bytes the Parquet writer's output is gathered in before it is hashed and written.
WRITE_BUFFER_BYTES = 1024 * 1024


def part_name(index: int) -> str:
    """File name of part ``index`` (0-based): ``part-00000.parquet``."""
    return PART_TEMPLATE.format(index)


class ParquetSource(Source):
    """A Parquet file re-chunked with ``ParquetFile.iter_batches``; schema and metadata are kept.

    Memory: pyarrow decodes one source row group at a time, so it is bounded by the source's row groups.
    Raises :class:`ConversionFailed` when the footer or the data cannot be read.
    """

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.size = path.stat().st_size
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ConversionFailed(
                f"{path.name}: not a readable Parquet file: {without_paths(str(exc), path)}"
            ) from None
        schema = self._file.schema_arrow
        self.schema = with_metadata(schema, [{} for _ in schema], base_meta(path, "parquet"))
        self._batch_rows = max(1, min(chunk_rows, 64 * 1024))
        self.rows = self._file.metadata.num_rows

    def _first_group(self, skip_rows: int) -> tuple[int, int]:
        """``(row group, rows to skip in it)`` where row ``skip_rows`` is; the group count past the end."""
        metadata = self._file.metadata
        seen = 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if seen + rows > skip_rows:
                return group, skip_rows - seen
            seen += rows
        return metadata.num_row_groups, 0

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        groups_count = self._file.metadata.num_row_groups
        first, skip_in_group = self._first_group(skip_rows)
        position = skip_rows - skip_in_group
        total = max(1, self.rows)
        if first >= groups_count:
            return
        groups = list(range(first, groups_count))
        try:
            for batch in self._file.iter_batches(batch_size=self._batch_rows, row_groups=groups):
                if skip_in_group >= batch.num_rows:
                    skip_in_group -= batch.num_rows
                    position += batch.num_rows
                    continue
                start = position + skip_in_group
                batch = batch.slice(skip_in_group)
                skip_in_group = 0
                position = start + batch.num_rows
                yield Piece(
                    conform(batch, self.schema), self.size * start // total, self.size * position // total
                )
        except (pa.ArrowException, OSError) as exc:
            raise ConversionFailed(f"{self.path.name}: cannot read Parquet data: {exc}") from None

    def close(self) -> None:
        self._file.close()


class _PartSink:
    """File-like adapter that lets ``pyarrow.parquet.ParquetWriter`` write into a :class:`PartFile`."""

    def __init__(self, part: PartFile) -> None:
        self._part = part
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._part.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self._part.offset

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True  # the PartFile is committed or discarded by its owner


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: flat non-float ones (flags, ids, names).

    Measured values (fluxes, times, coordinates) rarely repeat; trying a dictionary on them and falling
    back costs about a third of the write time for nothing.
    """
    return [
        field.name
        for field in schema
        if not pa.types.is_floating(field.type) and not pa.types.is_nested(field.type)
    ]


def _combined(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """The rows of ``batches`` (which is emptied) as a table of one contiguous chunk per column.

    Column by column, each column's batches freed once copied: memory holds the part's rows once plus
    one column, not twice.
    """
    columns = [[batch.column(i) for batch in batches] for i in range(len(schema))]
    batches.clear()
    arrays = []
    for i, field in enumerate(schema):
        chunks, columns[i] = columns[i], []
        arrays.append(pa.chunked_array(chunks, type=field.type).combine_chunks())
    return pa.Table.from_arrays(arrays, schema=schema)


def _encode_part(
    final: Path,
    batches: list[pa.RecordBatch],
    schema: pa.Schema,
    compression: str,
    row_group_rows: int,
    root: Path | None = None,
    owner: str | None = None,
    *,
    claim_untagged: bool = False,
    control: JobControl | None = None,
) -> PartFile:
    """Write ``batches`` as one Parquet file into ``final.part``, hashing it; not yet fsynced or published.
    ``batches`` is emptied once its rows are gathered into one table.

    ``owner``, with ``root``: the id of the job whose part this is, tagged on it before it is published
    (:mod:`jupyter_staging.safety.ownership`: a resumed run removes only the job's own); a file in the way
    of the ``.part`` that is not the job's (``claim_untagged``: an untagged one is) is set aside, and
    ``control``'s log says so.

    Raises :class:`DestinationExists` (before writing anything) if ``final`` exists, :class:`OSError`
    when the destination fails, :class:`ConversionFailed` when Arrow cannot write the table; on any error
    the ``.part`` is removed.
    """
    part = PartFile(final, root=root, owner=owner, claim_untagged=claim_untagged)
    notice = part.set_aside_notice()  # logged at once: the user's file moved, whatever happens next
    if notice is not None and control is not None:
        control.log("warning", notice)
    try:
        # One contiguous chunk per column: Parquet page boundaries follow the chunks written, so the
        # bytes of a part then depend only on its rows, not on how the source batched them (a part
        # written by a ranged conversion is byte-identical to the same part of a whole one).
        table = _combined(batches, schema)
        pa.default_memory_pool().release_unused()
        lengths = string_lengths(table)  # astropy's Parquet reader sizes its string columns from these
        if lengths:
            schema = schema.with_metadata(
                (schema.metadata or {}) | {k.encode(): v.encode() for k, v in lengths.items()}
            )
            table = table.replace_schema_metadata(schema.metadata)
        sink = pa.BufferedOutputStream(pa.PythonFile(_PartSink(part), mode="w"), WRITE_BUFFER_BYTES)
        try:
            with pq.ParquetWriter(
                sink, schema, compression=compression, use_dictionary=_dictionary_columns(schema)
            ) as writer:
                writer.write_table(table, row_group_size=row_group_rows)
        finally:
            if not sink.closed:
                sink.close()
    except pa.ArrowException as exc:
        part.discard()
        if isinstance(exc, OSError):  # the destination's problem (disk full, ...), not the table's
            raise
        raise ConversionFailed(f"{final.name}: cannot write Parquet: {exc}") from None
    except BaseException:
        part.discard()
        raise
    return part


class _Inflight(NamedTuple):
    future: Future[tuple[int, str]]
    part_index: int
    rows: int
    read_to: int


class PartWriter:
    """Cuts a stream of batches into parts of exactly ``chunk_rows`` rows and publishes them in order.

    Each full part is encoded, fsynced and published by a writer thread while the caller gathers the next
    part's rows (the source is read meanwhile: reading and encoding overlap for a whole part, not only
    for the few batches the reader holds ahead), so memory is about two parts of Arrow data. Bookkeeping
    (:class:`ChunkInfo`, ``control.add_rows``/``add_bytes``, ``on_chunk``) runs in the caller's thread, in
    part order, once a part is published; after an interrupt no further part is published (the writer
    thread checks ``control`` between encoding a part and publishing it).

    Parts are numbered from ``start_index``; ``compression`` is one of :data:`COMPRESSIONS`; without
    ``threads`` parts are encoded and published on the caller's thread (a small source). ``owner``: the
    job's id, tagged on each part before it is published (with ``root``); ``claim_untagged``: an untagged
    file at a new part's name is the job's too. Call
    :meth:`add` for each piece, :meth:`finish` at the end, and :meth:`close` always.
    """

    def __init__(
        self,
        out_dir: Path,
        source: Source,
        *,
        chunk_rows: int,
        compression: str,
        start_index: int,
        control: JobControl | None,
        on_chunk: Callable[[ChunkInfo], None] | None,
        root: Path | None = None,
        threads: bool = True,
        owner: str | None = None,
        claim_untagged: bool = False,
    ) -> None:
        self.chunks: list[ChunkInfo] = []
        self._out_dir = out_dir
        #: The confinement root: parts are written by descriptor from it (PartFile ``root=``).
        self._root = root
        #: The job whose parts these are (tagged as its own before they are published), if known.
        self._owner = owner
        #: An untagged file at a new part's name is the job's too (``PartFile(claim_untagged=)``).
        self._claim_untagged = claim_untagged
        self._schema = source.schema
        self._size = source.size
        self._chunk_rows = chunk_rows
        self._row_group_rows = min(chunk_rows, MAX_ROW_GROUP_ROWS)
        self._compression = compression
        self._index = start_index
        self._control = control
        self._on_chunk = on_chunk
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._inflight: _Inflight | None = None
        # Without ``threads`` (a small source: :func:`overlaps`), parts are encoded on this thread.
        self._encoder: ThreadPoolExecutor | Inline = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-convert-write")
            if threads
            else Inline()
        )
        # Source bytes reported through control.add_bytes, up to here; a resumed run starts counting
        # where its first row was read.
        self._reported: int | None = 0 if start_index == 0 else None
        self._read_to = 0

    def _check(self) -> None:
        if self._control is not None:
            self._control.check()

    def add(self, piece: Piece) -> None:
        """Take the rows of ``piece``, writing every part that fills up.

        Raises :class:`JobInterrupted` from ``control``, and what writing a part raises.
        """
        self._check()
        if self._reported is None:
            self._reported = piece.start
        self._read_to = piece.end
        batch = piece.batch
        while batch.num_rows:
            take = min(batch.num_rows, self._chunk_rows - self._pending_rows)
            self._pending.append(batch.slice(0, take))
            self._pending_rows += take
            batch = batch.slice(take)
            if self._pending_rows == self._chunk_rows:
                self._flush()

    def finish(self, *, to_end: bool = True) -> list[ChunkInfo]:
        """Write the last (short, or for an empty table empty) part; wait for it; return all parts.

        ``to_end=False``: the source was not read to its end (a ranged conversion stopped at its last
        part), so the rest of the source's bytes are not reported to ``control``.
        """
        if self._pending_rows or self._index == 0:
            self._flush()
        self._settle(last=to_end)
        if not to_end:
            return self.chunks
        if self._reported is None and not self.chunks:
            self._reported = self._size  # resumed past the end: nothing read, nothing to report
        if self._control is not None and self._size > (self._reported or 0):
            self._control.add_bytes(self._size - (self._reported or 0))
            self._reported = self._size
        return self.chunks

    def _flush(self) -> None:
        self._check()
        batches, index, rows = self._pending, self._index, self._pending_rows
        self._pending, self._pending_rows, self._index = [], 0, self._index + 1
        self._settle()
        self._check()  # an interrupt while the previous part was reported stops here
        future = self._encoder.submit(self._write, part_name(index), batches)
        self._inflight = _Inflight(future, index, rows, self._read_to)

    def _write(self, name: str, batches: list[pa.RecordBatch]) -> tuple[int, str]:
        """In the writer thread: encode ``batches`` as part ``name``, then fsync and publish it unless the
        job was interrupted meanwhile; ``(bytes, sha256)``. On any error the ``.part`` is removed."""
        part = _encode_part(
            self._out_dir / name,
            batches,
            self._schema,
            self._compression,
            self._row_group_rows,
            self._root,
            self._owner,
            claim_untagged=self._claim_untagged,
            control=self._control,
        )
        try:
            self._check()
            return part.commit()
        except BaseException:
            part.discard()
            raise

    def _settle(self, *, last: bool = False) -> None:
        """Wait until the part being published is published, then report it (``last``: the table's last
        part, :attr:`ChunkInfo.last`)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        size, sha256 = inflight.future.result()  # the writer thread removed the .part on an error
        info = ChunkInfo(
            index=inflight.part_index,
            name=part_name(inflight.part_index),
            rows=inflight.rows,
            bytes=size,
            sha256=sha256,
            last=last,
        )
        log.debug("published %s: %d rows, %d bytes", info.name, info.rows, info.bytes)
        self.chunks.append(info)
        self._report(info, inflight.read_to)
        if self._on_chunk is not None:
            self._on_chunk(info)

    def _report(self, info: ChunkInfo, read_to: int) -> None:
        """Tell ``control`` the part's rows and the source bytes read since the last report."""
        if self._control is None:
            return
        self._control.add_rows(info.rows)
        done = read_to - (self._reported or 0)
        if done > 0:
            self._control.add_bytes(done)
            self._reported = read_to

    def close(self) -> None:
        """Stop the committer. After an error, a part already being published is still reported."""
        try:
            if self._inflight is not None:
                self._settle()
        except BaseException:  # the error that brought us here is the one to raise
            log.debug("part left unreported after an error", exc_info=True)
        finally:
            self._encoder.shutdown(wait=True)
