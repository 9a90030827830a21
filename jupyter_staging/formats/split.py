"""Planning one conversion as independent tasks, each writing a disjoint range of its Parquet parts.

A task is ``(start_index, stop_index, start_offset)``: the arguments of
:func:`jupyter_staging.formats.convert.convert_to_parquet` that write parts ``start_index ..
stop_index-1``. Tasks can run in any order, at the same time, in other processes, into one folder; their
parts are byte-identical to those of one whole conversion with the same ``chunk_rows`` and compression.

FITS tables (uncompressed) and Parquet files: the row count is in the header (``NAXIS2``, FITS Standard
4.0 §7.3.1) or footer, and a task seeks to its first row, so planning reads no data. CSV/TSV files: a
task starts reading at the byte offset of its first row, so planning finds those offsets, itself in
parallel steps: :func:`csv_spans` cuts the data into byte spans, :func:`count_csv_rows` counts the rows
beginning in each span (a task per span), :func:`span_part_offsets` (a task per span, given the span's
first row number) or :func:`csv_part_offsets` (all spans) gives each part's first byte; :func:`plan`
does it all in one process.

Which CSV/TSV files split (:func:`splittable`): plain (uncompressed) files whose header gives unique
column names on one line and whose first ``CSV_INFER_BYTES`` have no short rows (those are read whole by
astropy). Leading ``#`` comment lines and empty lines are handled as the converter handles them (empty
lines are not rows). Row boundaries are taken to be line ends (``\\n`` or ``\\r\\n``), which holds unless
a quoted value holds a line break (the converter reads those with pyarrow's ``newlines_in_values`` when
its first ``CSV_INFER_BYTES`` show one), so the rule here is that :func:`count_csv_rows` checks every
block of lines that holds a quote character by parsing it with pyarrow (quoted line breaks allowed)
followed by a sentinel row, and raises
:class:`NotSplittable` unless it gives exactly one row per non-empty line plus the sentinel (a quote
left open swallows the sentinel). A bare ``\\r`` line end is also :class:`NotSplittable`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.compression import comment_prefix_bytes, compression_of
from jupyter_staging.formats.csv import CsvSource, RaggedRows
from jupyter_staging.formats.detect import detect_format
from jupyter_staging.formats.fits import select_fits_hdu

__all__ = [
    "SCAN_BLOCK_BYTES",
    "NotSplittable",
    "Task",
    "count_csv_rows",
    "csv_data_start",
    "csv_part_offsets",
    "csv_spans",
    "fits_table_rows",
    "plan",
    "span_part_offsets",
    "splittable",
    "tasks_from_offsets",
]

#: Bytes of CSV/TSV text scanned at a time when counting rows (memory of a scan: about twice this).
SCAN_BLOCK_BYTES = 8 * 1024 * 1024

_LF, _CR = 10, 13


class NotSplittable(ConversionFailed):
    """The file cannot be converted as independent ranges of parts; convert it in one task."""

    code = "not_splittable"


class Task(NamedTuple):
    """One range of parts: ``convert_to_parquet(..., start_index=, stop_index=, start_offset=)``.

    ``start_offset`` is the byte offset of part ``start_index``'s first line (CSV/TSV), else None.
    """

    start_index: int
    stop_index: int
    start_offset: int | None


def _format(src: Path, fmt: str | None) -> str | None:
    return fmt or detect_format(Path(src))


def _csv_source(src: Path, fmt: str) -> CsvSource:
    """The CSV/TSV source as the converter opens it (same header skip, delimiter, schema inference)."""
    delimiter = "\t" if fmt == "tsv" else ","
    return CsvSource(src, fmt, header_bytes=comment_prefix_bytes(src), delimiter=delimiter)


def csv_data_start(src: Path, fmt: str | None = None) -> int:
    """Byte offset in ``src`` of the first data line (after comment lines and the header line).

    Infers the column types as the converter does (reads up to ``CSV_INFER_BYTES``). Raises
    :class:`NotSplittable` when ``src`` is not a plain CSV/TSV file whose rows can be read from an
    offset (see the module docstring); :class:`ConversionFailed` when it cannot be read at all.
    """
    src = Path(src)
    fmt = _format(src, fmt)
    if fmt not in ("csv", "tsv") or compression_of(src) is not None:
        raise NotSplittable(f"{src.name}: only plain CSV/TSV files are split by byte offset")
    try:
        source = _csv_source(src, fmt)
    except RaggedRows as exc:
        raise NotSplittable(f"{exc.message}; such files are read whole") from None
    try:
        return source.data_start()
    except ConversionFailed as exc:
        raise NotSplittable(exc.message) from None


def splittable(src: Path, fmt: str | None = None, hdu: int | str | None = None) -> bool:
    """Whether ``src`` can be converted as ranges of parts: an uncompressed FITS table, a Parquet file,
    or a CSV/TSV file as described in the module docstring (a quoted line break further in the file is
    only found by :func:`count_csv_rows`). False too for a file that cannot be read (the conversion
    itself then reports why). Never raises for a readable path.
    """
    src = Path(src)
    fmt = _format(src, fmt)
    try:
        if fmt in ("csv", "tsv"):
            csv_data_start(src, fmt)
        elif fmt == "fits":
            fits_table_rows(src, hdu)
        elif fmt == "parquet":
            pq.read_metadata(src)
        else:
            return False
    except (ConversionFailed, pa.ArrowException, OSError):
        return False
    return True


def _fits_table(src: Path, hdu: int | str | None) -> tuple[int, int]:
    """``(NAXIS2, NAXIS1)`` of the table HDU the converter picks: rows and bytes per row."""
    # astropy is heavy (about a second to import): loaded only when a FITS file is planned
    from astropy.io import fits

    src = Path(src)
    if compression_of(src) is not None:
        raise NotSplittable(f"{src.name}: a compressed FITS file is read whole, not by row ranges")
    try:
        with fits.open(src, memmap=True, lazy_load_hdus=True, mode="readonly") as hdul:
            header = hdul[select_fits_hdu(hdul, hdu, src.name)].header
            return int(header.get("NAXIS2", 0)), int(header.get("NAXIS1", 0))
    except ConversionFailed:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError for non-FITS bytes
        raise ConversionFailed(f"{src.name}: not a readable FITS file: {type(exc).__name__}") from None


def fits_table_rows(src: Path, hdu: int | str | None = None) -> int:
    """Rows (``NAXIS2``) of the FITS table HDU the converter would convert (``hdu`` as for
    :func:`convert_to_parquet`), read from the headers only.

    Raises :class:`NotSplittable` for a compressed file (``.gz``/``.bz2``/``.zst``: read whole);
    :class:`ConversionFailed` when the file is not FITS or the HDU is missing or not a table.
    """
    return _fits_table(src, hdu)[0]


def csv_spans(src: Path, span_bytes: int, fmt: str | None = None) -> list[tuple[int, int]]:
    """Byte spans ``[start, end)`` of about ``span_bytes`` (≥ 1) each covering the data of ``src``,
    in order; at least one (empty when there is no data). Spans need not begin at line starts: a row
    belongs to the span it begins in.

    Raises as :func:`csv_data_start`; :class:`ConversionFailed` for ``span_bytes`` < 1.
    """
    if span_bytes < 1:
        raise ConversionFailed(f"span_bytes must be at least 1, not {span_bytes}")
    src = Path(src)
    start, size = csv_data_start(src, fmt), src.stat().st_size
    count = max(1, math.ceil((size - start) / span_bytes))
    bounds = [start + (size - start) * i // count for i in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _first_line_start(fh: BinaryIO, start: int) -> int:
    """The first offset ≥ ``start`` at which a line begins (the file's size if none)."""
    if start == 0:
        return 0
    fh.seek(start - 1)
    position = start - 1
    while True:
        data = fh.read(64 * 1024)
        if not data:
            return position
        found = data.find(b"\n")
        if found >= 0:
            return position + found + 1
        position += len(data)


class _Lines(NamedTuple):
    """Whole lines of the file: ``text[:length]`` read at byte ``position`` (``text`` is not sliced, to
    save a copy of each block)."""

    position: int
    text: bytes
    length: int

    def has(self, byte: bytes) -> bool:
        return self.text.find(byte, 0, self.length) >= 0  # one byte: a memchr, no copy

    def array(self) -> np.ndarray:
        return np.frombuffer(self.text, dtype=np.uint8, count=self.length)


def _line_blocks(src: Path, start: int, end: int) -> Iterator[_Lines]:
    """The whole lines that begin in ``[start, end)``, in blocks of about ``SCAN_BLOCK_BYTES`` (longer
    when a line is). A block's unfinished last line is read again at the start of the next."""
    with open(src, "rb") as fh:
        position = _first_line_start(fh, start)
        while position < end:
            fh.seek(position)
            text = fh.read(SCAN_BLOCK_BYTES)
            while True:
                last = position + len(text) >= end
                cut = text.find(b"\n", end - 1 - position) if last else text.rfind(b"\n")
                if cut >= 0:
                    break
                more = fh.read(SCAN_BLOCK_BYTES)
                if not more:  # the file's last line, without a line end
                    last, cut = True, len(text) - 1
                    break
                text += more
            if cut >= 0:
                yield _Lines(position, text, cut + 1)
            if last:
                return
            position += cut + 1


def _row_starts(lines: _Lines) -> np.ndarray:
    """Offsets in ``lines`` of the lines that are rows: not empty (pyarrow skips those)."""
    data = lines.array()
    if not len(data):
        return np.empty(0, dtype=np.int64)
    starts = np.concatenate(([0], np.flatnonzero(data[:-1] == _LF) + 1))
    first = data[starts]
    empty = first == _LF
    if lines.has(b"\r"):
        second = data[np.minimum(starts + 1, len(data) - 1)]
        empty |= (first == _CR) & (second == _LF) & (starts + 1 < len(data))
    return starts[~empty] if empty.any() else starts


def _count_rows(lines: _Lines) -> int:
    """Rows (non-empty lines) in ``lines``."""
    if not lines.length:
        return 0
    if lines.has(b"\r"):
        return len(_row_starts(lines))
    data = lines.array()
    newline = data == _LF
    count = int(np.count_nonzero(newline)) + int(data[-1] != _LF)
    empty = int(np.count_nonzero(newline[:-1] & newline[1:])) + int(data[0] == _LF)
    return count - empty


def _check_lines(src: Path, lines: _Lines, delimiter: str) -> None:
    """Raise :class:`NotSplittable` unless each row of ``lines`` is one line (see the module docstring)."""
    if lines.has(b"\r"):
        data = lines.array()
        if np.count_nonzero(data == _CR) != np.count_nonzero((data[:-1] == _CR) & (data[1:] == _LF)):
            raise NotSplittable(f"{src.name}: lines end with a bare carriage return")
    if not lines.has(b'"'):
        return
    starts = _row_starts(lines)
    if not len(starts):
        return
    text = lines.text[: lines.length]
    line_end = text.find(b"\n", starts[0])
    first = text[starts[0] : line_end + 1] if line_end >= 0 else text[starts[0] :] + b"\n"
    read = pacsv.ReadOptions(autogenerate_column_names=True)
    parse = pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    try:
        columns = pacsv.read_csv(pa.BufferReader(first), read_options=read, parse_options=parse).num_columns
        sentinel = delimiter.join(['""'] * columns).encode() + b"\n"
        parsed = pacsv.read_csv(
            pa.BufferReader(text + (b"" if text.endswith(b"\n") else b"\n") + sentinel),
            read_options=read,
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(include_columns=["f0"]),
        ).num_rows
    except pa.ArrowException:
        parsed = -1
    if parsed != len(starts) + 1:
        raise NotSplittable(f"{src.name}: a quoted value holds a line break (or its quotes do not close)")


def _delimiter(src: Path, fmt: str | None) -> str:
    fmt = _format(src, fmt)
    if fmt not in ("csv", "tsv"):
        raise NotSplittable(f"{src.name}: only CSV/TSV files are split by byte offset")
    return "\t" if fmt == "tsv" else ","


def count_csv_rows(src: Path, start: int, end: int, fmt: str | None = None) -> int:
    """Rows of ``src`` that begin in the byte span ``[start, end)`` (a span of :func:`csv_spans`;
    ``fmt`` ``"csv"``/``"tsv"``, default detected). Reads the span and the rest of its last line.

    Raises :class:`NotSplittable` when the span shows the rows are not one line each (a quoted line
    break, quotes left open, a bare ``\\r`` line end; see the module docstring), :class:`OSError` when
    the file cannot be read.
    """
    src = Path(src)
    delimiter = _delimiter(src, fmt)
    rows = 0
    for lines in _line_blocks(src, start, end):
        _check_lines(src, lines, delimiter)
        rows += _count_rows(lines)
    return rows


def span_part_offsets(src: Path, start: int, end: int, first_row: int, chunk_rows: int) -> list[int]:
    """Byte offsets of the first lines of the parts that begin in the span ``[start, end)`` of
    ``src``, whose first row is row ``first_row`` (0-based) of the table: the rows whose number is a
    multiple of ``chunk_rows``. Assumes the span passed :func:`count_csv_rows`.

    Raises :class:`ConversionFailed` for ``chunk_rows`` < 1, :class:`OSError` when the file cannot be read.
    """
    if chunk_rows < 1:
        raise ConversionFailed(f"chunk_rows must be at least 1, not {chunk_rows}")
    offsets: list[int] = []
    row = first_row
    target = -(-first_row // chunk_rows) * chunk_rows
    for lines in _line_blocks(Path(src), start, end):
        rows = _count_rows(lines)
        if target < row + rows:
            starts = _row_starts(lines)
            while target < row + rows:
                offsets.append(lines.position + int(starts[target - row]))
                target += chunk_rows
        row += rows
    return offsets


def csv_part_offsets(
    src: Path, spans: list[tuple[int, int]], counts: list[int], chunk_rows: int
) -> list[int]:
    """Byte offset of each part's first line, part 0 first, from the spans of :func:`csv_spans` and
    their :func:`count_csv_rows`. A file without rows gives ``[data start]``: one (empty) part.

    Raises :class:`ConversionFailed` when ``spans`` and ``counts`` differ in length or ``chunk_rows`` < 1.
    """
    if len(spans) != len(counts) or not spans:
        raise ConversionFailed("csv_part_offsets needs one row count per span, and at least one span")
    offsets: list[int] = []
    first_row = 0
    for (start, end), count in zip(spans, counts, strict=True):
        if count:
            offsets += span_part_offsets(src, start, end, first_row, chunk_rows)
        first_row += count
    return offsets or [spans[0][0]]


def tasks_from_offsets(
    offsets: list[int], end: int, task_bytes: int, *, byte_offsets: bool = True
) -> list[Task]:
    """Consecutive parts grouped into tasks of about ``task_bytes`` of source (at least one part each).

    ``offsets``: the source byte offset where each part begins (part 0 first); ``end``: where the last
    ends. ``byte_offsets``: give each task its ``start_offset`` (CSV/TSV), else None.
    """
    tasks: list[Task] = []
    first = 0
    for index in range(1, len(offsets) + 1):
        stop = offsets[index] if index < len(offsets) else end
        if index == len(offsets) or stop - offsets[first] >= task_bytes:
            tasks.append(Task(first, index, offsets[first] if byte_offsets else None))
            first = index
    return tasks


def _row_tasks(rows: int, row_bytes: float, chunk_rows: int, task_bytes: int) -> list[Task]:
    parts = max(1, math.ceil(rows / chunk_rows))
    offsets = [int(i * chunk_rows * row_bytes) for i in range(parts)]
    return tasks_from_offsets(offsets, int(rows * row_bytes), task_bytes, byte_offsets=False)


def plan(
    src: Path,
    fmt: str | None = None,
    hdu: int | str | None = None,
    *,
    chunk_rows: int,
    task_bytes: int,
) -> list[Task] | None:
    """The tasks of converting ``src`` in ranges of about ``task_bytes`` of source each, in one
    process (for CSV/TSV it reads the whole file once: spans of ``task_bytes``, counted in turn); None
    when the file is not splittable (convert it in one call). ``fmt``, ``hdu`` and ``chunk_rows`` as
    for :func:`convert_to_parquet`, which must be given the same ones.

    Raises :class:`ConversionFailed` for ``chunk_rows`` or ``task_bytes`` < 1.
    """
    if chunk_rows < 1 or task_bytes < 1:
        raise ConversionFailed("chunk_rows and task_bytes must be at least 1")
    src = Path(src)
    fmt = _format(src, fmt)
    if not splittable(src, fmt, hdu):
        return None
    if fmt == "fits":
        rows, row_bytes = _fits_table(src, hdu)
        return _row_tasks(rows, row_bytes, chunk_rows, task_bytes)
    if fmt == "parquet":
        rows = pq.read_metadata(src).num_rows
        return _row_tasks(rows, src.stat().st_size / max(1, rows), chunk_rows, task_bytes)
    spans = csv_spans(src, task_bytes, fmt)
    try:
        counts = [count_csv_rows(src, start, end, fmt) for start, end in spans]
    except NotSplittable:
        return None
    offsets = csv_part_offsets(src, spans, counts, chunk_rows)
    return tasks_from_offsets(offsets, spans[-1][1], task_bytes)
