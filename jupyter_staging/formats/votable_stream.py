"""A VOTable of one ``TABLE`` read a slice of rows at a time, so that memory follows the part size.

astropy parses a VOTable whole, into about nine times the file's size in memory for a BINARY table (a
545 MB file took 4.6 GB). A plain (not compressed) file whose one ``TABLE`` holds its rows inline, as
``TABLEDATA`` or as a base64 ``BINARY``/``BINARY2`` ``STREAM`` (IVOA VOTable 1.4 §5; each row's length
told from its ``FIELD``s and the counts before its variable-length arrays), is cut instead: the text
before its rows (``FIELD``s, ``PARAM``s, ``INFO``s) and the text after them are kept, and each slice of
rows is parsed by astropy between the two, as a small VOTable of its own. Each value, null and unit is
therefore the one astropy gives for the whole file. Other VOTables (several ``TABLE``s, compressed,
``FITS`` or external streams, variable-length arrays of several dimensions in a binary stream, rows that
do not end within the file's last MiB) are read whole by
:class:`~jupyter_staging.formats.votable.VOTableSource`; so is a ``TABLE`` picked with ``hdu``.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import conform
from jupyter_staging.formats.base import Piece, Source, without_paths
from jupyter_staging.formats.compression import compression_of
from jupyter_staging.formats.metadata import votable_field_meta, with_metadata
from jupyter_staging.formats.votable import VOTableSource, _schema_meta, _tables, arrow_table

__all__ = ["NotStreamable", "StreamedVOTable", "streamed_layout", "votable_source"]

#: Bytes read at a time while scanning and cutting the file.
_BLOCK = 1 << 20
#: Bytes at the end of the file searched for the end of the rows (trailing ``INFO``s of a TAP answer).
_TAIL = 1 << 20
#: Rows astropy parses at once (at most: fewer when a part holds fewer).
SLICE_ROWS = 20_000
_NAME = rb"(?:[A-Za-z_][\w.-]*:)?"
_TABLE_TAG = re.compile(rb"<" + _NAME + rb"TABLE[\s>/]")
_DATA_TAG = re.compile(rb"<" + _NAME + rb"(TABLEDATA|BINARY2|BINARY|FITS)[\s>/]")
_STREAM_TAG = re.compile(rb"<" + _NAME + rb"STREAM[\s>/]")
#: What ends each text that is not markup (a comment, CDATA section, processing instruction), by its opener:
#: a tag written inside one (``<!-- <TABLEDATA> -->``, ``<TD><![CDATA[</TR>]]></TD>``) is no tag.
_CLOSERS = {b"<!--": b"-->", b"<![CDATA[": b"]]>", b"<?": b"?>"}
_OPENER = re.compile(rb"<!--|<!\[CDATA\[|<\?")
_ROW_TOKEN = re.compile(rb"<!--|<!\[CDATA\[|<\?|</" + _NAME + rb"TR\s*>")
#: Characters at the end of a text searched again once more text follows (a token cut by a block's end).
_REACH = 64
_BASE64 = re.compile(rb"""encoding\s*=\s*["']base64["']""")
_WHITESPACE = b" \t\r\n"
#: Bytes per element of each VOTable ``datatype`` in a binary stream (VOTable 1.4 §5.4); ``bit`` is not
#: here (bits are packed, 8 to a byte); a table with an unknown datatype is read whole.
_SIZES = {
    "boolean": 1,
    "unsignedByte": 1,
    "short": 2,
    "int": 4,
    "long": 8,
    "char": 1,
    "unicodeChar": 2,
    "float": 4,
    "double": 8,
    "floatComplex": 8,
    "doubleComplex": 16,
}
#: Arrow types of a column whose rows, in the first slice, were all null (astropy's object columns):
#: what they hold when they are not, as the whole-file reader gives them.
_OBJECT_TYPES = {
    "char": pa.string(),
    "unicodeChar": pa.string(),
    "boolean": pa.list_(pa.bool_()),
    "unsignedByte": pa.list_(pa.int64()),
    "short": pa.list_(pa.int64()),
    "int": pa.list_(pa.int64()),
    "long": pa.list_(pa.int64()),
    "float": pa.list_(pa.float64()),
    "double": pa.list_(pa.float64()),
}


class NotStreamable(ConversionFailed):
    """The VOTable is to be read whole (a binary stream of fields whose size cannot be told)."""


@dataclass
class _Layout:
    """Where the rows of the file's one ``TABLE`` lie: ``kind`` ``TABLEDATA | BINARY | BINARY2``, the text
    before them (``head``, ending with the ``TABLEDATA``/``STREAM`` start tag), the file offsets
    ``start``/``stop`` of the rows, and the text after them (``tail``)."""

    kind: str
    head: bytes
    start: int
    stop: int
    tail: bytes


def _masked(text: bytes) -> bytes:
    """``text`` with each comment, CDATA section and processing instruction blanked to spaces (to the end of
    ``text`` when it does not end within it), so that tags are searched in markup only; offsets are kept."""
    parts, at = [], 0
    while (opener := _OPENER.search(text, at)) is not None:
        closer = _CLOSERS[opener.group()]
        end = text.find(closer, opener.end())
        end = len(text) if end < 0 else end + len(closer)
        parts += [text[at : opener.start()], b" " * (end - opener.start())]
        at = end
    parts.append(text[at:])
    return b"".join(parts)


def _row_ends(text: bytes, at: int, ends: list[int]) -> int:
    """Add to ``ends`` the offset after each ``</TR>`` of ``text`` from ``at`` on that is not inside a
    comment, CDATA section or processing instruction; return where to search on once ``text`` grows (a
    token the text may end inside, or a comment or CDATA section that does not end within it)."""
    while (token := _ROW_TOKEN.search(text, at)) is not None:
        closer = _CLOSERS.get(token.group())
        if closer is None:
            ends.append(token.end())
            at = token.end()
            continue
        end = text.find(closer, token.end())
        if end < 0:
            return token.start()
        at = end + len(closer)
    return max(at, len(text) - _REACH)


def _scan(fh: IO[bytes]) -> tuple[int, re.Match[bytes] | None, bytes]:
    """The number of ``TABLE`` start tags in the file (counting stops at 2), the first data start tag
    (``TABLEDATA``, ``BINARY``, ``BINARY2``, ``FITS``), matched in the returned text: the file from its
    start to at least one block past that tag."""
    text = b""
    found = None
    while found is None:
        block = fh.read(_BLOCK)
        if not block:
            return len(_TABLE_TAG.findall(_masked(text))), None, text
        text += block
        found = _DATA_TAG.search(_masked(text))
    text += fh.read(_BLOCK)  # the STREAM start tag, whole
    tables = len(_TABLE_TAG.findall(_masked(text)))
    overlap = text[-64:]
    while tables < 2 and (block := fh.read(_BLOCK)):
        window = overlap + block  # a tag ending in the overlap was counted in the previous window
        tables += sum(1 for m in _TABLE_TAG.finditer(window) if m.end() > len(overlap))
        overlap = window[-64:]
    return tables, found, text


def streamed_layout(path: Path) -> _Layout | None:
    """Where the rows of the VOTable at ``path`` lie, when it can be read a slice at a time (the module
    docstring says when); None when it is to be read whole. Raises ``OSError`` when it cannot be read."""
    if compression_of(path) is not None:
        return None
    size = path.stat().st_size
    with open(path, "rb") as fh:
        tables, found, text = _scan(fh)
        if tables != 1 or found is None or found.group(1) == b"FITS":
            return None
        kind = found.group(1).decode()
        opening = found.start()
        if kind != "TABLEDATA":
            stream = _STREAM_TAG.search(_masked(text), found.end())
            if stream is None:
                return None
            opening = stream.start()
        close = text.find(b">", opening)
        if close < 0 or text[close - 1 : close] == b"/":
            return None
        start_tag = text[opening:close]
        if kind != "TABLEDATA" and (b"href" in start_tag or not _BASE64.search(start_tag)):
            return None
        tail_at = max(close + 1, size - _TAIL)
        fh.seek(tail_at)
        tail = fh.read()
    word = re.compile(b"</" + _NAME + (b"TABLEDATA" if kind == "TABLEDATA" else b"STREAM") + rb"\s*>")
    ends = list(word.finditer(_masked(tail)))
    if not ends:
        return None
    stop = tail_at + ends[-1].start()
    return _Layout(kind, text[: close + 1], close + 1, stop, tail[ends[-1].start() :])


def _parse_bytes(document: bytes, path: Path, rows: str) -> Any:
    """astropy's parse of a small VOTable made of the file's head, some rows and its tail."""
    # astropy is heavy (about a second to import): loaded only when a VOTable is read
    from astropy.io.votable import parse

    try:
        return parse(io.BytesIO(document), verify="ignore", filename=path.name)
    except Exception as exc:  # astropy raises XML, value and unit errors for malformed files
        words = without_paths(str(exc), path).strip() or type(exc).__name__
        raise ConversionFailed(f"{path.name}: not a readable VOTable ({rows}): {words}") from None


def _row_steps(fields: list[Any], null_flags: bool) -> list[tuple[int, int, bool]] | None:
    """How a row of a BINARY (``null_flags``: BINARY2) stream of these fields is laid out: steps of
    (fixed bytes, then the element size of a variable-length field (0: none), whether it holds bits),
    or None when a field's size cannot be told (an unknown datatype, a variable dimension that is not
    the only one)."""
    steps = []
    fixed = (len(fields) + 7) // 8 if null_flags else 0  # BINARY2: the null flags before each row
    for field in fields:
        size = _SIZES.get(field.datatype)
        bits = field.datatype == "bit"
        if size is None and not bits:
            return None
        dimensions = (field.arraysize or "1").split("x")
        if "*" in dimensions[-1] and len(dimensions) == 1:  # "*" or "n*": a count, then the items
            steps.append((fixed, size or 1, bits))
            fixed = 0
            continue
        if not all(dimension.isdigit() for dimension in dimensions):
            return None
        count = 1
        for dimension in dimensions:
            count *= int(dimension)
        fixed += (count + 7) // 8 if bits else count * (size or 1)  # bits are packed, 8 to a byte
    return steps + [(fixed, 0, False)]


def _rows_in(steps: list[tuple[int, int, bool]], raw: bytes, most: int) -> tuple[int, int]:
    """How many complete rows (at most ``most``) ``raw`` starts with, and their length in bytes."""
    if len(steps) == 1:
        size = steps[0][0]
        rows = min(most, len(raw) // size) if size else most
        return rows, rows * size
    rows, end, length = 0, 0, len(raw)
    while rows < most:
        position = end
        for fixed, element, bits in steps:
            position += fixed
            if element:
                if position + 4 > length:
                    return rows, end
                count = int.from_bytes(raw[position : position + 4], "big")
                position += 4 + ((count + 7) // 8 if bits else count * element)
        if position > length:
            break
        rows, end = rows + 1, position
    return rows, end


class StreamedVOTable(Source):
    """The one ``TABLE`` of the VOTable at ``path`` (laid out as :func:`streamed_layout` found), read a
    slice of at most ``min(chunk_rows, SLICE_ROWS)`` rows at a time.

    Raises :class:`ConversionFailed` when astropy cannot parse the text around the rows or a slice of
    rows (the message names which rows), or when a slice's values do not fit the first slice's types;
    :class:`NotStreamable` when the rows are a binary stream of fields whose size cannot be told.
    """

    def __init__(self, path: Path, layout: _Layout, chunk_rows: int) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._layout = layout
        self._slice = max(1, min(chunk_rows, SLICE_ROWS))
        skeleton = _parse_bytes(layout.head + layout.tail, path, "the text around its rows")
        found = _tables(skeleton)
        if len(found) != 1:
            raise ConversionFailed(f"{path.name}: the VOTable holds {len(found)} TABLEs, not one")
        self._fields = list(found[0].table.fields)
        self._steps = _row_steps(self._fields, layout.kind == "BINARY2")
        if layout.kind != "TABLEDATA" and self._steps is None:
            raise NotStreamable(f"{path.name}: a binary stream of fields whose size cannot be told")
        fields_meta = [votable_field_meta(field) for field in self._fields]
        arrow = self._first_slice_schema()
        self.schema = with_metadata(arrow, fields_meta, _schema_meta(path, skeleton, found[0], 0))

    def _first_slice_schema(self) -> pa.Schema:
        """The Arrow types of the first slice's columns; columns null throughout it typed from their
        ``datatype``."""
        first = next(self._slice_tables(), None)
        schema = first.schema if first is not None else arrow_table(self._parse(b"", 0, 0)).schema
        fields = []
        for field, vo_field in zip(schema, self._fields, strict=True):
            if pa.types.is_null(field.type) and vo_field.datatype in _OBJECT_TYPES:
                field = field.with_type(_OBJECT_TYPES[vo_field.datatype])
            fields.append(field)
        return pa.schema(fields)

    def _parse(self, rows: bytes, first: int, count: int) -> Any:
        layout = self._layout
        where = f"rows {first + 1} to {first + count}" if count else "no rows"
        return _tables(_parse_bytes(layout.head + rows + layout.tail, self.path, where))[0].table

    def _slice_tables(self) -> Iterator[pa.Table]:
        for rows, first, count, _start, _end in self._slices(0):
            yield arrow_table(self._parse(rows, first, count))

    def _slices(self, skip_rows: int) -> Iterator[tuple[bytes, int, int, int, int]]:
        """(rows text, first row's 0-based number, row count, file offsets of the slice) after
        ``skip_rows`` rows."""
        if self._steps is None or self._layout.kind == "TABLEDATA":
            return self._tabledata(skip_rows)
        return self._binary(skip_rows, self._steps)

    def _blocks(self) -> Iterator[bytes]:
        """The file's text between the rows' start and end, in blocks."""
        layout = self._layout
        with open(self.path, "rb") as fh:
            fh.seek(layout.start)
            position = layout.start
            while position < layout.stop:
                block = fh.read(min(_BLOCK, layout.stop - position))
                if not block:
                    raise ConversionFailed(f"{self.path.name}: the file changed while it was read")
                position += len(block)
                yield block

    def _tabledata(self, skip_rows: int) -> Iterator[tuple[bytes, int, int, int, int]]:
        text, row, offset, at = b"", 0, self._layout.start, 0
        ends: list[int] = []  # where each complete row ends in ``text``
        for block in self._blocks():
            text += block
            at = _row_ends(text, at, ends)  # ``at``: where the search goes on in ``text``
            while ends and (row < skip_rows or len(ends) >= self._slice):
                count = min(len(ends), skip_rows - row) if row < skip_rows else self._slice
                cut = ends[count - 1]
                if row >= skip_rows:
                    yield text[:cut], row, count, offset, offset + cut
                text, offset, row, at = text[cut:], offset + cut, row + count, at - cut
                ends = [end - cut for end in ends[count:]]
        if ends and row >= skip_rows:
            yield text, row, len(ends), offset, self._layout.stop

    def _binary(
        self, skip_rows: int, steps: list[tuple[int, int, bool]]
    ) -> Iterator[tuple[bytes, int, int, int, int]]:
        raw, carry, row, used = b"", b"", 0, 0  # used: the decoded bytes before raw
        for block in self._blocks():
            clean = carry + block.translate(None, _WHITESPACE)
            whole = len(clean) // 4 * 4
            raw += self._decoded(clean[:whole], row)
            carry = clean[whole:]
            while True:
                want = skip_rows - row if row < skip_rows else self._slice
                rows, cut = _rows_in(steps, raw, want)
                if rows < want:
                    break
                if row >= skip_rows:
                    yield self._encoded(raw[:cut], row, rows, used)
                raw, row, used = raw[cut:], row + rows, used + cut
        if carry:
            raw += self._decoded(carry + b"=" * (-len(carry) % 4), row)
        if row < skip_rows:
            rows, cut = _rows_in(steps, raw, skip_rows - row)
            raw, row, used = raw[cut:], row + rows, used + cut
        if raw and row >= skip_rows:  # the last rows (astropy names what is wrong with a cut one)
            yield self._encoded(raw, row, max(1, _rows_in(steps, raw, len(raw))[0]), used)

    def _decoded(self, text: bytes, row: int) -> bytes:
        try:
            return base64.b64decode(text)
        except binascii.Error as exc:
            raise ConversionFailed(
                f"{self.path.name}: not a readable VOTable (after row {row}): its base64 stream is damaged "
                f"({exc})"
            ) from None

    def _encoded(self, raw: bytes, row: int, count: int, used: int) -> tuple[bytes, int, int, int, int]:
        """A slice of a binary stream (``used`` decoded bytes after its start) as the base64 text the
        small VOTable holds, with its file offsets (estimated: four characters for three bytes)."""
        span = self._layout.stop - self._layout.start
        start = self._layout.start + min(span, used * 4 // 3)
        end = self._layout.start + min(span, (used + len(raw)) * 4 // 3)
        return base64.b64encode(raw), row, count, start, end

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        for rows, first, count, start, end in self._slices(skip_rows):
            table = arrow_table(self._parse(rows, first, count))
            for batch in table.to_batches():
                try:
                    yield Piece(conform(batch, self.schema), start, end)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ConversionFailed(
                        f"{self.path.name}: rows {first + 1} to {first + count} do not fit the types of "
                        f"the first rows: {exc}"
                    ) from None


def votable_source(path: Path, hdu: int | str | None, chunk_rows: int) -> Source:
    """A VOTable ``TABLE`` as a source of batches: read a slice at a time (:class:`StreamedVOTable`)
    when ``hdu`` is None and the file allows it (module docstring), else whole
    (:class:`~jupyter_staging.formats.votable.VOTableSource`, which takes ``hdu``).

    Raises :class:`ConversionFailed` as those do.
    """
    try:
        layout = streamed_layout(path) if hdu is None else None
    except OSError:
        layout = None  # the whole-file reader says what is wrong
    if layout is not None:
        try:
            return StreamedVOTable(path, layout, chunk_rows)
        except NotStreamable:
            pass
    return VOTableSource(path, hdu, chunk_rows)
