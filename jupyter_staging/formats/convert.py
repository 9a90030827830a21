"""Conversion of tabular files (CSV/TSV, FITS tables, VOTable, ECSV, Parquet) to chunked Parquet.

A source is read as a stream of Arrow record batches (a reader thread reads ahead while the caller's
thread encodes) and cut into part files of exactly ``chunk_rows`` rows (the last one may be shorter):
``part-00000.parquet``, ``part-00001.parquet``, ... Each part is written as ``<name>.part`` while its
sha256 is computed, fsynced, and only then published under its final name, which is never overwritten
(:class:`jupyter_staging.safety.partfile.PartFile`). A table of zero rows gives one empty part.
``pyarrow.dataset.dataset(out_dir)`` and ``pandas.read_parquet(out_dir)`` read the parts as one table.

Memory is a few parts' worth of Arrow data whatever the file size, except: VOTables other than those
:mod:`jupyter_staging.formats.votable_stream` reads a slice of rows at a time (one ``TABLE`` of
``TABLEDATA`` or of a base64 ``BINARY``/``BINARY2`` stream, not compressed) and ECSV
files with mixin or multidimensional columns are read whole by astropy; compressed FITS files are
decompressed into memory; FITS ASCII tables and tables with variable-length arrays are read through a
memory map, whose pages count as resident.

Resuming (``start_index``): parts ``0 .. start_index-1`` exist already and are not written again; the
first ``start_index * chunk_rows`` rows are skipped (FITS, VOTable, ECSV, Parquet seek to them; CSV parses
and drops them, unless ``start_offset`` gives the byte offset of part ``start_index``'s first line).

Ranges (``stop_index``): only parts ``start_index .. stop_index-1`` are written, so several calls (on
several processes) can write disjoint ranges of one conversion into one folder; their parts are
byte-identical to those of a single call (a part's bytes depend only on its rows, the options and the
source's schema and metadata, which hold no time or host). :mod:`jupyter_staging.formats.split` plans
the ranges and, for CSV/TSV, the byte offsets.

Progress (``control``): ``check()`` is called between batches (so pause/cancel act within one
batch); ``add_rows(n)`` after each part with its row count; ``add_bytes(n)`` with the bytes of source
consumed by each part (approximate; parts skipped by ``start_index`` are not counted, the rest of the
file is added when the last part is written, unless ``stop_index`` stopped before the end).
``on_chunk`` is called with each :class:`ChunkInfo` once that part is published, in the caller's thread
and in part order (part N is encoded and published on a writer thread while part N+1's rows are read,
and reported once part N+1 is complete). If the job is interrupted meanwhile, for instance from this
callback, the part being encoded is dropped.

Units and descriptions (:mod:`jupyter_staging.formats.metadata`): each Arrow field's metadata holds
``unit``, ``ucd`` and ``description`` where the source has them (FITS ``TUNITn``, ``TUCDn``, ``TCOMMn`` or
the ``TTYPEn`` comment, FITS Standard 4.0 §7.2–7.3; VOTable ``FIELD`` ``unit`` (as astropy writes it, CDS
syntax) / ``ucd`` / ``DESCRIPTION``, VOTable 1.4 §4; ECSV ``unit``/``description``/``meta.ucd``). The
schema metadata (Parquet key-value metadata) holds ``jupyter_staging.source``, ``jupyter_staging.format``,
``jupyter_staging.converter_version``, ``jupyter_staging.columns`` and, for FITS, ``fits.header`` and
``fits.primary_header`` (card images, one per line); for VOTables ``votable.params`` (array values as
lists), ``votable.infos`` (JSON) and ``votable.description``; for ECSV ``ecsv.meta`` (a ``Quantity`` as
``{"value", "unit"}``). The same units, UCDs and descriptions are also written in astropy's own Parquet
convention (``table_meta_yaml``, ``table::len::<name>``), so ``astropy.table.QTable.read(part,
format="parquet")`` returns them (:mod:`jupyter_staging.formats.astropy_meta`).

Awkward columns: complex values become ``[re, im]`` fixed-size lists; a zero-width column (FITS
``TFORMn = '0D'``, VOTable ``arraysize="0"``) a list column of empty lists; a VOTable ``TABLE`` without
``DATA`` an empty table with its FIELDs' columns. A CSV/TSV whose rows have fewer fields than its header
(in the first ``CSV_INFER_BYTES``) is read whole by astropy, missing fields masked, up to
``RAGGED_MAX_BYTES``. Error messages name the file, never its folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from jupyter_staging.errors import ConversionFailed, SourceNotFound
from jupyter_staging.formats.base import ChunkInfo, Piece, Source
from jupyter_staging.formats.compression import comment_prefix_bytes, compression_of
from jupyter_staging.formats.csv import CsvSource, RaggedRows, text_encoding
from jupyter_staging.formats.detect import detect_format
from jupyter_staging.formats.ecsv import ecsv_source
from jupyter_staging.formats.fits import FitsSource
from jupyter_staging.formats.parquet import COMPRESSIONS, ParquetSource, PartWriter
from jupyter_staging.formats.prefetch import ahead_of, overlaps
from jupyter_staging.formats.ragged import read_ragged
from jupyter_staging.formats.votable_stream import votable_source
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.control import JobControl

__all__ = ["convert_to_parquet"]

log = logging.getLogger(__name__)


def convert_to_parquet(
    src: Path,
    out_dir: Path,
    *,
    chunk_rows: int = 100_000,
    compression: str = "zstd",
    hdu: int | str | None = None,
    fmt: str | None = None,
    control: JobControl | None = None,
    start_index: int = 0,
    on_chunk: Callable[[ChunkInfo], None] | None = None,
    root: Path | None = None,
    stop_index: int | None = None,
    start_offset: int | None = None,
    encoding: str | None = None,
    owner: str | None = None,
    claim_untagged: bool = False,
) -> list[ChunkInfo]:
    """Convert the table in ``src`` into Parquet part files in ``out_dir``; return the parts written.

    ``src`` is a CSV, TSV, FITS (binary or ASCII table), VOTable, ECSV or Parquet file (see
    :func:`jupyter_staging.formats.detect.detect_format`, or give ``fmt``); CSV/TSV/ECSV/FITS may be
    ``.gz``/``.bz2``/``.zst`` compressed. ``out_dir`` (created if missing) receives ``part-00000.parquet``,
    ... of ``chunk_rows`` (≥ 1) rows each except the last. ``compression`` is the Parquet codec: ``zstd``,
    ``snappy``, ``gzip``, ``lz4``, ``brotli`` or ``none``. ``hdu``: for FITS the HDU index or EXTNAME of
    the table (default: the first binary or ASCII table HDU); for VOTables the 0-based position of the
    ``TABLE`` in the file, or its ID or name (default: the first). ``control``, ``start_index`` (resume)
    and ``on_chunk`` (called with each published :class:`ChunkInfo`) are described in the module
    docstring, as are memory use and the units, UCDs, descriptions and headers kept as Arrow metadata.
    ``root``: the trusted folder ``out_dir`` lies below; when given, ``out_dir`` and every part are made
    by descriptor from it (:class:`~jupyter_staging.safety.confined.Confined`), never through a symlink
    (:class:`PathNotAllowed` otherwise). ``stop_index`` (> ``start_index``; None: to the end): write
    parts up to ``stop_index - 1`` only. ``start_offset`` (plain CSV/TSV only): the byte offset in
    ``src`` of the first line of part ``start_index`` (from
    :func:`jupyter_staging.formats.split.csv_part_offsets`); reading starts there instead of parsing
    and dropping the rows before it; the header is still read for the column names and types.
    ``encoding``: the text encoding of a CSV/TSV file (default UTF-8; :func:`~jupyter_staging.formats.csv.
    text_encoding` lists what is taken), for files written in Latin-1 or Windows-1252, say; the other
    formats state their own (FITS headers are ASCII, FITS Standard 4.0 §4.1; a VOTable's XML declaration;
    ECSV is UTF-8 by its standard) and ignore it. ``owner``, with ``root``: the id of the job whose parts
    these are, tagged on each before it is published (:mod:`jupyter_staging.safety.ownership`);
    ``claim_untagged``: an untagged file at a new part's name is the job's too (``PartFile``'s).

    Raises :class:`SourceNotFound` if ``src`` is not a file; :class:`ConversionFailed` for an unknown
    or not ASCII-compatible ``encoding``, for something
    that is not a table (e.g. an image-only FITS file), an HDU/table index or name that does not exist or
    is not a table, an unreadable or corrupt file, an unknown compression, a CSV value that does not fit
    its column's type, a ``stop_index`` not above ``start_index``, a ``start_offset`` for a file that is
    not a plain CSV/TSV (or whose rows are read whole, or whose header is not one line) or that is not
    the start of a data line; :class:`DestinationExists` if a part file to be written already exists
    (nothing is overwritten); :class:`JobInterrupted` when ``control`` was interrupted (parts published
    so far stay, resume with ``start_index``; the part in progress is removed). On any error no ``.part``
    file is left.
    """
    src, out_dir = Path(src), Path(out_dir)
    codec = _check_arguments(chunk_rows, start_index, compression)
    try:
        text = text_encoding(encoding or "utf-8")
    except ValueError as exc:
        raise ConversionFailed(str(exc)) from None
    if stop_index is not None and stop_index <= start_index:
        raise ConversionFailed(f"stop_index must be above start_index ({start_index}), not {stop_index}")
    fmt = _table_format(src, fmt)
    if root is None:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        Confined(root).makedirs(out_dir)
    started = time.monotonic()
    source = _open_source(src, fmt, hdu, chunk_rows, control, text)
    try:
        pieces = _pieces(src, source, start_index * chunk_rows, start_offset)
        parts = (start_index, stop_index)
        threads = overlaps(None if compression_of(src) is not None else source.size)
        chunks = _write_parts(
            source,
            pieces,
            out_dir,
            chunk_rows,
            codec,
            parts,
            control,
            on_chunk,
            root,
            threads=threads,
            owner=owner,
            claim_untagged=claim_untagged,
        )
    finally:
        source.close()
    _log_converted(src, fmt, chunks, time.monotonic() - started)
    return chunks


def _check_arguments(chunk_rows: int, start_index: int, compression: str) -> str:
    """The Parquet codec name; raises :class:`ConversionFailed` for a bad argument."""
    if chunk_rows < 1:
        raise ConversionFailed(f"chunk_rows must be at least 1, not {chunk_rows}")
    if start_index < 0:
        raise ConversionFailed(f"start_index must not be negative, not {start_index}")
    codec = compression.lower()
    if codec not in COMPRESSIONS:
        raise ConversionFailed(
            f"unknown Parquet compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    return codec


def _table_format(src: Path, fmt: str | None) -> str:
    """``fmt`` or the detected format of ``src``; raises :class:`SourceNotFound`/:class:`ConversionFailed`."""
    if not src.is_file():
        raise SourceNotFound(f"{src.name}: no such file")
    fmt = fmt or detect_format(src)
    if fmt is None:
        raise ConversionFailed(
            f"{src.name} is not a table this converter reads (CSV, TSV, FITS table, VOTable, ECSV, Parquet)"
        )
    return fmt


def _open_source(
    src: Path, fmt: str, hdu: int | str | None, chunk_rows: int, control: JobControl | None, encoding: str
) -> Source:
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        try:
            return CsvSource(
                src,
                fmt,
                header_bytes=comment_prefix_bytes(src),
                delimiter=delimiter,
                control=control,
                encoding=encoding,
                first_rows=chunk_rows,
            )
        except RaggedRows as exc:
            log.info("%s; read whole by astropy, missing fields masked", exc.message)
            return read_ragged(src, fmt, chunk_rows, encoding)
    if fmt == "ecsv":
        return ecsv_source(src, chunk_rows, control)
    if fmt == "fits":
        return FitsSource(src, hdu, chunk_rows)
    if fmt == "votable":
        return votable_source(src, hdu, chunk_rows)
    if fmt == "parquet":
        return ParquetSource(src, chunk_rows)
    raise ConversionFailed(f"{src.name}: unknown table format {fmt!r}")


def _pieces(src: Path, source: Source, skip_rows: int, start_offset: int | None) -> Iterator[Piece]:
    """The source's pieces after ``skip_rows`` rows, or (CSV/TSV) from the line at ``start_offset``."""
    if start_offset is None:
        return source.pieces(skip_rows)
    if not isinstance(source, CsvSource) or source.fmt not in ("csv", "tsv"):
        raise ConversionFailed(
            f"{src.name}: start_offset is for plain CSV/TSV files whose rows are streamed, not read whole"
        )
    return source.pieces_at(start_offset)


def _limited(pieces: Iterator[Piece], rows: int | None) -> Iterator[Piece]:
    """``pieces`` up to ``rows`` rows in all (None: all of them), the last one cut."""
    for piece in pieces:
        if rows is not None and piece.batch.num_rows >= rows:
            if rows:
                yield piece._replace(batch=piece.batch.slice(0, rows))
            return
        if rows is not None:
            rows -= piece.batch.num_rows
        yield piece


def _write_parts(
    source: Source,
    pieces: Iterator[Piece],
    out_dir: Path,
    chunk_rows: int,
    compression: str,
    parts: tuple[int, int | None],
    control: JobControl | None,
    on_chunk: Callable[[ChunkInfo], None] | None,
    root: Path | None,
    *,
    threads: bool,
    owner: str | None = None,
    claim_untagged: bool = False,
) -> list[ChunkInfo]:
    """Parts ``parts[0] .. parts[1]-1`` (None: to the end) of ``pieces`` written into ``out_dir``; read,
    encoded and published on three threads with ``threads``, else on this one."""
    start_index, stop_index = parts
    limit = None if stop_index is None else (stop_index - start_index) * chunk_rows
    writer = PartWriter(
        out_dir,
        source,
        chunk_rows=chunk_rows,
        compression=compression,
        start_index=start_index,
        control=control,
        on_chunk=on_chunk,
        root=root,
        threads=threads,
        owner=owner,
        claim_untagged=claim_untagged,
    )
    try:
        taken = 0
        with ahead_of(pieces, threads) as ahead:
            for piece in _limited(ahead, limit):
                writer.add(piece)
                taken += piece.batch.num_rows
        return writer.finish(to_end=limit is None or taken < limit)
    finally:
        writer.close()


def _log_converted(src: Path, fmt: str, chunks: list[ChunkInfo], elapsed: float) -> None:
    rows = sum(c.rows for c in chunks)
    log.info(
        "converted %s (%s) to %d Parquet parts, %d rows in %.2f s (%.0f rows/s)",
        src.name,
        fmt,
        len(chunks),
        rows,
        elapsed,
        rows / elapsed if elapsed > 0 else 0.0,
    )
