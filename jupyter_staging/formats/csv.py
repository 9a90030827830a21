"""CSV, TSV and simple ECSV, streamed with pyarrow's CSV reader (``pyarrow.csv.open_csv``)."""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.base import Piece, Source
from jupyter_staging.formats.compression import compression_of
from jupyter_staging.formats.halves import BoundedFile, read_in_halves
from jupyter_staging.formats.metadata import base_meta, with_metadata
from jupyter_staging.safety.control import JobControl

__all__ = [
    "CSV_BLOCK_SIZE",
    "CSV_MAX_BLOCK_SIZE",
    "CSV_INFER_BYTES",
    "CSV_NULLS",
    "CsvSource",
    "RaggedRows",
    "shown_encoding",
    "text_encoding",
]

log = logging.getLogger(__name__)

#: Fields read as null in a CSV/TSV file, text columns too (as pandas reads them): pyarrow's defaults
#: (``""``, ``NA``, ``NULL``, ``N/A`` ...) but for the spellings of NaN, which stay floating-point NaN as
#: astropy and numpy read them.
CSV_NULLS = [v for v in pacsv.ConvertOptions().null_values if v.lstrip("-").lower() != "nan"]
#: Bytes of CSV text parsed per batch. Small blocks keep the reader's read-ahead small.
CSV_BLOCK_SIZE = 1024 * 1024
#: Largest block (bytes): pyarrow needs a whole row in a block, so a file whose first ``CSV_INFER_BYTES``
#: hold a longer row (a long text field) is read in blocks doubled until that row fits, up to this.
CSV_MAX_BLOCK_SIZE = 64 * 1024 * 1024
#: Bytes of CSV text column types are inferred from (then fixed for the whole file).
CSV_INFER_BYTES = 16 * 1024 * 1024
#: Smallest first part (bytes of text, estimated from the inferred sample) read from two offsets at once
#: (:mod:`jupyter_staging.formats.halves`): below it a second thread gains less than it costs to start.
HALVES_MIN_BYTES = 32 * 1024 * 1024
#: pyarrow's message for a row whose field count differs from the header's.
_RAGGED = re.compile(r"Expected (\d+) columns, got (\d+)")


def text_encoding(name: str) -> str:
    """The Python codec name of text encoding ``name`` (``"latin-1"`` -> ``"iso8859-1"``, ``"UTF8"`` ->
    ``"utf-8"``), for a CSV/TSV file that is not UTF-8 text. Only encodings that write ``\n``, ``\r``,
    ``,``, ``\t``, ``"`` and the digits as ASCII bytes are taken (Latin-1, Windows-1252, the other
    ISO-8859 parts, ASCII, UTF-8): the file is split at line ends by byte offset. Raises
    :class:`ValueError` for an unknown encoding or one that is not ASCII-compatible (UTF-16, UTF-32,
    EBCDIC)."""
    try:
        info = codecs.lookup(name)
    except (LookupError, TypeError):
        raise ValueError(
            f"unknown text encoding {name!r}; use one Python knows, latin-1 or cp1252 say"
        ) from None
    probe = '\n\r,\t"0123456789.-+eE'
    try:
        same = (
            info.encode(probe)[0] == probe.encode("ascii") and info.decode(probe.encode("ascii"))[0] == probe
        )
    except (UnicodeError, ValueError, TypeError):
        same = False
    if not same:
        raise ValueError(
            f"text encoding {name!r} does not write line ends, delimiters and digits as ASCII (UTF-16 or "
            "UTF-32, say); save the file as UTF-8 to convert it"
        )
    return info.name


class RaggedRows(ConversionFailed):
    """Rows near the start of a CSV/TSV file have another number of fields than its header."""


class CsvSource(Source):
    """CSV/TSV (and ECSV whose columns are plain scalars) via ``pyarrow.csv.open_csv``.

    Column types are inferred once from the first ``CSV_INFER_BYTES`` of text (ECSV: taken from its
    header) and then fixed for the whole file, so every part has the same schema; a later value that does
    not fit its column's type raises :class:`ConversionFailed`. Columns empty throughout that first block
    are read as strings. The file is then streamed in ``CSV_BLOCK_SIZE`` blocks (larger when a row of
    that first block is longer, up to ``CSV_MAX_BLOCK_SIZE``): memory is a few blocks of text and their
    Arrow batches.

    ``header_bytes`` of comment lines at the start are skipped; ``column_types`` fixes types by name
    (ECSV); ``fields_meta`` (by column name) and ``schema_meta`` are added to the schema. ``first_rows``:
    the rows of the first part the caller writes; a plain CSV/TSV file whose first part holds at least
    :data:`HALVES_MIN_BYTES` of text has that part read from two offsets at once, on two threads
    (:mod:`jupyter_staging.formats.halves`; None: one stream). Raises :class:`ConversionFailed` when the
    text cannot be read or (ECSV) its columns do not match the header.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        *,
        header_bytes: int = 0,
        delimiter: str = ",",
        column_types: dict[str, pa.DataType] | None = None,
        fields_meta: dict[str, dict[bytes, bytes]] | None = None,
        schema_meta: dict[str, str] | None = None,
        control: JobControl | None = None,
        encoding: str = "utf-8",
        first_rows: int | None = None,
    ) -> None:
        self.path = path
        self.fmt = fmt
        #: The text's encoding (a Python codec name, :func:`text_encoding`); pyarrow decodes other than
        #: UTF-8 through Python's codecs, block by block.
        self.encoding = encoding
        self.size = path.stat().st_size
        self._header_bytes = header_bytes
        self._delimiter = delimiter
        self._column_types = dict(column_types or {})
        self._ecsv = fmt == "ecsv"
        self._first_rows = first_rows
        #: Mean bytes of text per row in the inferred sample (0.0 when it holds no row).
        self._row_bytes = 0.0
        #: A quoted value of the inferred sample holds a line break: pyarrow then parses with
        #: ``newlines_in_values`` (slower: its block boundaries follow the quotes), else a block boundary
        #: can fall inside such a value ("CSV parser got out of sync with chunker").
        self._quoted_breaks = False
        #: Bytes of text pyarrow parses at a time: at least the longest row of the inferred sample.
        self._block_size = CSV_BLOCK_SIZE
        schema = self._untyped_as_strings(self._infer_schema(), control)
        self._warn_not_utf8(schema, control)
        if self._ecsv and column_types is not None and list(column_types) != schema.names:
            raise ConversionFailed(f"{path.name}: ECSV column names do not match its header")
        if len(set(schema.names)) == len(schema.names):
            self._column_types = {f.name: f.type for f in schema}
        meta = base_meta(path, fmt) | (schema_meta or {})
        fields_meta = fields_meta or {}
        self.schema = with_metadata(schema, [fields_meta.get(name, {}) for name in schema.names], meta)

    def _untyped_as_strings(self, schema: pa.Schema, control: JobControl | None) -> pa.Schema:
        """``schema`` with columns of null type (empty in the inferred sample) read as strings, warned of."""
        untyped = [f.name for f in schema if pa.types.is_null(f.type)]
        if not untyped:
            return schema
        message = (
            f"{self.path.name}: columns {', '.join(untyped)} are empty in the first "
            f"{CSV_INFER_BYTES // (1024 * 1024)} MiB; reading them as strings"
        )
        log.warning("%s", message)
        if control is not None:
            control.log("warning", message)
        return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])

    def _warn_not_utf8(self, schema: pa.Schema, control: JobControl | None) -> None:
        """Warn of the columns read as bytes (``binary``): text that is not UTF-8 (another encoding, Latin-1
        say) in the inferred sample. Their values are kept byte for byte; pandas shows them as ``bytes``."""
        raw = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
        if not raw:
            return
        message = (
            f"{self.path.name}: columns {', '.join(raw)} are not {shown_encoding(self.encoding)} text "
            "(another encoding, Latin-1 say); kept as bytes: give the file's encoding (convert option "
            "encoding='latin-1', say) or save it as UTF-8 to read them as strings"
        )
        log.warning("%s", message)
        if control is not None:
            control.log("warning", message)

    def _infer_schema(self) -> pa.Schema:
        """Column names and types from the first ``CSV_INFER_BYTES`` (whole lines) of the text.

        ``read_csv`` on that sample promotes a column's type when a later block needs it (int64 to
        double to string), which the streaming reader cannot do once it has started.
        """
        raw, stream = self._open_stream()
        try:
            sample = stream.read_buffer(CSV_INFER_BYTES + 1)
            if sample.size > CSV_INFER_BYTES:  # cut after the last whole line (zero-copy)
                window = min(CSV_INFER_BYTES, 1024 * 1024)
                cut = sample.slice(CSV_INFER_BYTES - window, window).to_pybytes().rfind(b"\n")
                if cut >= 0:
                    sample = sample.slice(0, CSV_INFER_BYTES - window + cut + 1)
            try:
                table = self._read_sample(sample)
            except pa.ArrowInvalid as exc:  # a quoted line break across pyarrow's block boundary: "out of
                # sync with chunker", or a row cut there (a quoted value longer than a block) taken as short
                quoted = _RAGGED.search(str(exc)) and b'"' in sample.to_pybytes()
                if "out of sync" not in str(exc) and not quoted:
                    raise
                self._quoted_breaks = True
                sample = _whole_rows(sample, b'"')
                table = self._read_sample(sample)
            self._row_bytes = sample.size / table.num_rows if table.num_rows else 0.0
            self._quoted_breaks = self._quoted_breaks or _holds_line_breaks(table)
        except pa.ArrowException as exc:
            if not self._ecsv and _RAGGED.search(str(exc)):
                raise RaggedRows(f"{self.path.name}: {_ragged_message(exc)}") from None
            raise self._unreadable(exc) from None
        finally:
            raw.close()
        schema = table.schema
        del table, sample
        pa.default_memory_pool().release_unused()
        return schema

    def _read_sample(self, sample: pa.Buffer) -> pa.Table:
        """``sample`` parsed whole, the block size doubled while a row does not fit in one block (pyarrow:
        "straddling object straddles two block boundaries"), up to ``CSV_MAX_BLOCK_SIZE``."""
        while True:
            try:
                return pacsv.read_csv(pa.BufferReader(sample), **self._options())
            except pa.ArrowInvalid as exc:
                if "straddling object" not in str(exc):
                    raise
                if self._block_size >= CSV_MAX_BLOCK_SIZE:
                    longest = f"a row is longer than {CSV_MAX_BLOCK_SIZE >> 20} MiB"
                    raise ConversionFailed(f"{self.path.name}: {longest}; not converted") from None
                self._block_size *= 2

    def _read_error(self, exc: pa.ArrowInvalid) -> ConversionFailed:
        """The error for ``exc``, raised by pyarrow reading rows after the first block (whose types the
        inferred sample fixed)."""
        if _RAGGED.search(str(exc)):
            return ConversionFailed(
                f"{self.path.name}: {_ragged_message(exc)} after the first "
                f"{CSV_INFER_BYTES // (1024 * 1024)} MiB; such files are converted only "
                "when the first short row comes before that"
            )
        if "invalid UTF8" in str(exc):
            return self._not_text(exc, f" after the first {CSV_INFER_BYTES // (1024 * 1024)} MiB")
        if "straddling object" in str(exc):
            return ConversionFailed(
                f"{self.path.name}: a row longer than {self._block_size >> 20} MiB comes after the first "
                f"{CSV_INFER_BYTES >> 20} MiB, whose longest row fixed how much is read at a time; such files"
                " are converted only when a row as long comes before that"
            )
        if "out of sync with chunker" in str(exc):
            return ConversionFailed(
                f"{self.path.name}: a quoted value holds a line break after the first "
                f"{CSV_INFER_BYTES // (1024 * 1024)} MiB, and none before; such files are converted only "
                "when the first one comes before that"
            )
        return ConversionFailed(
            f"{self.path.name}: {exc} (column types were inferred from the first "
            f"{CSV_INFER_BYTES // (1024 * 1024)} MiB of the file)"
        )

    def _unreadable(self, exc: Exception) -> ConversionFailed:
        if "invalid UTF8" in str(exc):  # a range of rows read from a byte offset (a Dask task)
            return self._not_text(exc, "")
        return ConversionFailed(f"{self.path.name}: not a readable {self.fmt.upper()} file: {exc}")

    def _not_text(self, exc: Exception, where: str) -> ConversionFailed:
        """The error for text pyarrow could not decode as UTF-8 (``exc``), ``where`` in the file."""
        return ConversionFailed(
            f"{self.path.name}: not UTF-8 text{where} ({_column_of(exc)}another encoding, Latin-1 say); give "
            "the file's encoding (convert option encoding='latin-1', say) or save it as UTF-8 to convert it"
        )

    def _open_stream(self) -> tuple[pa.NativeFile, pa.NativeFile]:
        """``(raw file, text stream)``: the file decompressed if need be, positioned after the comment
        lines of the header. The caller closes the raw file. Raises :class:`ConversionFailed` when the
        file (or its compression) cannot be read."""
        raw = pa.OSFile(str(self.path), "rb")
        try:
            codec = compression_of(self.path)
            stream: pa.NativeFile = pa.CompressedInputStream(raw, codec) if codec else raw
            if self._header_bytes:
                stream.read(self._header_bytes)
        except BaseException as exc:
            raw.close()
            if isinstance(exc, pa.ArrowException):
                raise self._unreadable(exc) from None
            raise
        return raw, stream

    def _options(self) -> dict[str, Any]:
        """Read, parse and convert options for ``pyarrow.csv.read_csv``/``open_csv``."""
        if self._ecsv:  # ECSV 1.0: missing values are empty fields, booleans True/False
            convert = pacsv.ConvertOptions(
                column_types=self._column_types,
                null_values=[""],
                strings_can_be_null=True,
                true_values=["True", "true"],
                false_values=["False", "false"],
            )
        else:
            convert = pacsv.ConvertOptions(
                column_types=self._column_types, null_values=CSV_NULLS, strings_can_be_null=True
            )
        return {
            "read_options": pacsv.ReadOptions(block_size=self._block_size, encoding=self.encoding),
            "parse_options": pacsv.ParseOptions(
                delimiter=self._delimiter, newlines_in_values=self._quoted_breaks
            ),
            "convert_options": convert,
        }

    def _open(self) -> tuple[pacsv.CSVStreamingReader, pa.NativeFile]:
        raw, stream = self._open_stream()
        try:
            reader = pacsv.open_csv(stream, **self._options())
        except BaseException as exc:
            raw.close()
            if isinstance(exc, pa.ArrowException):
                raise self._unreadable(exc) from None
            raise
        return reader, raw

    def data_start(self) -> int:
        """Byte offset of the first data line: after the comment lines and the header line (the first
        non-empty line, as pyarrow reads it), the file's size when there is no data line.

        Raises :class:`ConversionFailed` when rows cannot be read from a byte offset: a compressed or
        ECSV file, repeated column names (their types are not fixed by name), or a header line that
        alone does not give the column names (a quoted line break in a name).
        """
        if self._ecsv or compression_of(self.path) is not None:
            raise ConversionFailed(f"{self.path.name}: only plain CSV/TSV files are read from a byte offset")
        if len(set(self.schema.names)) != len(self.schema.names):
            raise ConversionFailed(f"{self.path.name}: repeated column names; not read from a byte offset")
        with open(self.path, "rb") as fh:
            fh.seek(self._header_bytes)
            line = fh.readline()
            while line in (b"\n", b"\r\n"):  # pyarrow skips empty lines before the header too
                line = fh.readline()
            end = fh.tell()
        try:
            names = pacsv.read_csv(pa.BufferReader(line), **self._options()).column_names
        except pa.ArrowException:
            names = []
        if names != self.schema.names:
            raise ConversionFailed(
                f"{self.path.name}: the header is not one line; not read from a byte offset"
            )
        return end

    def pieces_at(self, offset: int) -> Iterator[Piece]:
        """The rows from the line that begins at byte ``offset`` (at or after :meth:`data_start`) to the
        end, parsed with this source's column names and types, as batches in order.

        Raises :class:`ConversionFailed` as :meth:`data_start` does, when ``offset`` is not the start of
        a data line, and as :meth:`pieces` does.
        """
        data_start = self.data_start()
        raw = pa.OSFile(str(self.path), "rb")
        try:
            if offset != data_start and not data_start < offset <= self.size:
                raise ConversionFailed(f"{self.path.name}: byte offset {offset} is outside the data lines")
            if offset != data_start:
                raw.seek(offset - 1)
                if raw.read(1) != b"\n":
                    raise ConversionFailed(
                        f"{self.path.name}: byte offset {offset} is not at the start of a line"
                    )
            if offset == self.size:  # no rows from here (pyarrow refuses an empty stream)
                raw.close()
                return
            raw.seek(offset)
            options = self._options()
            options["read_options"].column_names = self.schema.names
            reader = pacsv.open_csv(raw, **options)
        except BaseException as exc:
            raw.close()
            if isinstance(exc, pa.ArrowInvalid) and offset != data_start:  # rows past the first block
                raise self._read_error(exc) from None
            if isinstance(exc, pa.ArrowException):
                raise self._unreadable(exc) from None
            raise
        yield from self._read(reader, raw, 0)

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        middle = self._middle_of_first_part() if skip_rows == 0 else None
        if middle is None:
            yield from self._whole(skip_rows)
            return
        head_rows = int((middle - self.data_start()) / self._row_bytes)
        tail_rows = max(1, (self._first_rows or 0) - head_rows)
        yield from read_in_halves(self._head(middle), self.pieces_at(middle), tail_rows, self._whole)

    def _whole(self, skip_rows: int = 0) -> Iterator[Piece]:
        """The rows after the first ``skip_rows`` as one stream."""
        reader, raw = self._open()
        yield from self._read(reader, raw, skip_rows)

    def _middle_of_first_part(self) -> int | None:
        """The byte offset of the line nearest after the middle of the first part's text (estimated from
        the inferred sample's bytes per row), where its head ends and its tail begins
        (:mod:`jupyter_staging.formats.halves`); None when the part is read as one stream: no
        ``first_rows``, a part under :data:`HALVES_MIN_BYTES`, a file not read from a byte offset
        (:meth:`data_start`), no line feed in the 1 MiB after the middle, or none before the last line."""
        if self._first_rows is None or not self._row_bytes:
            return None
        first = min(self.size, int(self._first_rows * self._row_bytes))
        if first < HALVES_MIN_BYTES:
            return None
        try:
            start = self.data_start()
        except ConversionFailed:
            return None
        first = min(self.size - start, first)
        with open(self.path, "rb") as fh:
            fh.seek(start + first // 2)
            line_feed = fh.read(1024 * 1024).find(b"\n")
        if line_feed < 0 or start + first // 2 + line_feed + 1 >= self.size:
            return None
        return start + first // 2 + line_feed + 1

    def _head(self, middle: int) -> Iterator[Piece]:
        """The rows from the first data line to the line at ``middle``, read through a
        :class:`~jupyter_staging.formats.halves.BoundedFile` that refuses a quote character
        (:class:`~jupyter_staging.formats.halves.SplitRefused`)."""
        raw = pa.PythonFile(BoundedFile(self.path, self.data_start(), middle, b'"'), mode="r")
        options = self._options()
        options["read_options"].column_names = self.schema.names
        try:
            reader = pacsv.open_csv(raw, **options)
        except BaseException as exc:
            raw.close()
            if isinstance(exc, pa.ArrowException):
                raise self._unreadable(exc) from None
            raise
        yield from self._read(reader, raw, 0)

    def _read(self, reader: pacsv.CSVStreamingReader, raw: pa.NativeFile, skip_rows: int) -> Iterator[Piece]:
        """Batches of ``reader`` after the first ``skip_rows`` rows; closes ``reader`` and ``raw``."""
        try:
            start = raw.tell()
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    raise self._read_error(exc) from None
                end = raw.tell()
                if skip_rows >= batch.num_rows:
                    skip_rows -= batch.num_rows
                else:
                    if skip_rows:
                        batch = batch.slice(skip_rows)
                        skip_rows = 0
                    yield Piece(batch, start, end)
                start = end
        finally:
            reader.close()
            raw.close()


def shown_encoding(encoding: str) -> str:
    """``encoding`` as a message names it: ``UTF-8`` for Python's ``utf-8``."""
    return "UTF-8" if encoding == "utf-8" else encoding


def _column_of(exc: Exception) -> str:
    """``"column <n>, "`` (counted from 1) when pyarrow's message names a column (``In CSV column #0``),
    else ``""``."""
    found = re.search(r"column #(\d+)", str(exc))
    return f"column {int(found.group(1)) + 1}, " if found else ""


def _whole_rows(sample: pa.Buffer, quote: bytes) -> pa.Buffer:
    """``sample`` (the first bytes of a CSV text) cut after its last line feed outside quotes: an even
    number of ``quote`` characters before it (RFC 4180 doubles a quote inside a quoted value). The whole
    sample when it holds no such line feed."""
    data = sample.to_pybytes()
    end = len(data)
    quotes = data.count(quote)
    while end > 0:
        newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            break
        quotes -= data.count(quote, newline + 1, end)
        if quotes % 2 == 0:
            return sample.slice(0, newline + 1)
        end = newline
    return sample


def _holds_line_breaks(table: pa.Table) -> bool:
    """Whether a text column of ``table`` holds a line break (a quoted value over several lines)."""
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            if pc.any(pc.match_substring_regex(column, "[\\r\\n]")).as_py():
                return True
    return False


def _ragged_message(exc: Exception) -> str:
    match = _RAGGED.search(str(exc))
    assert match is not None
    return f"a row has {match.group(2)} fields where the header has {match.group(1)}"
