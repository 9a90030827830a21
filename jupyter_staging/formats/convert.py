"""Conversion of tabular files (CSV/TSV, FITS tables, VOTable, ECSV, Parquet) to chunked Parquet.

A source is read as a stream of Arrow record batches and cut into part files of exactly ``chunk_rows``
rows (the last one may be shorter): ``part-00000.parquet``, ``part-00001.parquet``, ... Each part is
written as ``<name>.part`` while its sha256 is computed, fsynced, and only then published under its final
name, which is never overwritten (:class:`jupyter_staging.safety.partfile.PartFile`). Memory is bounded by the
chunk size, not the file size, except for VOTable and non-trivial ECSV files, which astropy can only read
whole.

Column units, UCDs and descriptions travel as Arrow field metadata (``unit``, ``ucd``, ``description``);
the source header travels as schema metadata, which Parquet stores as file key-value metadata (Apache
Parquet format, ``FileMetaData.key_value_metadata``; Arrow keeps its schema, field metadata included, under
the key ``ARROW:schema``). Readers that ignore Arrow metadata still find every column's unit, UCD and
description in the JSON under the key ``jupyter_staging.columns``.

References:

- FITS Standard 4.0 (IAU FITS Working Group, 2018), §7.2 (ASCII tables) and §7.3 (binary tables):
  ``TTYPEn``, ``TUNITn``, ``TSCALn``/``TZEROn`` (physical = TZERO + TSCAL × stored), ``TNULLn``,
  ``TDIMn``, logical ``L`` fields (``T``/``F``, 0 for null) and the "unsigned integer" ``TZEROn``
  convention (§7.3.2, Table 19). ``TUCDn`` and ``TCOMMn`` are the STIL/TOPCAT conventions, used if present.
- IVOA VOTable 1.4 (2019): ``FIELD`` attributes ``unit``, ``ucd``, ``utype``, ``datatype``,
  ``arraysize``, the ``DESCRIPTION`` element, ``PARAM`` and ``INFO``.
- Apache Parquet format: file-level key-value metadata; Apache Arrow columnar format: field metadata.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jupyter_staging._version import __version__
from jupyter_staging.errors import ConversionFailed, SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile

__all__ = ["ChunkInfo", "convert_to_parquet", "detect_format", "is_table", "part_name"]

log = logging.getLogger(__name__)

#: Output file name of part ``index``.
PART_TEMPLATE = "part-{:05d}.parquet"
#: Parquet codecs accepted by ``compression`` (``"none"`` writes uncompressed pages).
COMPRESSIONS = ("zstd", "snappy", "gzip", "lz4", "brotli", "none")
#: Largest row group written, rows. A part holds ceil(chunk_rows / this) row groups.
MAX_ROW_GROUP_ROWS = 1024 * 1024
#: Bytes of CSV text parsed per batch. Small blocks keep the reader's read-ahead small.
CSV_BLOCK_SIZE = 1024 * 1024
#: Bytes of CSV text column types are inferred from (then fixed for the whole file).
CSV_INFER_BYTES = 16 * 1024 * 1024
#: Raw FITS table bytes read per batch (a slice of whole rows, at most ``chunk_rows`` of them).
FITS_SLICE_BYTES = 16 * 1024 * 1024
#: Bytes the Parquet writer's output is gathered in before it is hashed and written.
WRITE_BUFFER_BYTES = 1024 * 1024
#: Batches the reader thread may hold ahead of the writer.
PREFETCH_BATCHES = 4

_FITS_SUFFIXES = {".fits", ".fit", ".fts", ".fz"}
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".ecsv": "ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".vot": "votable",
    ".votable": "votable",
    **dict.fromkeys(_FITS_SUFFIXES, "fits"),
}
#: Compression suffixes a text or FITS source may carry, with their Arrow codec names.
_COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_SNIFF_BYTES = 64 * 1024
_VOTABLE_TABLE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?TABLE[\s>/]")


@dataclass
class ChunkInfo:
    """One published part file.

    ``index`` is the 0-based part number, ``name`` the file name relative to the output folder
    (``part-00000.parquet``), ``rows`` its row count, ``bytes`` its size in bytes and ``sha256`` the hex
    digest of those bytes.
    """

    index: int
    name: str
    rows: int
    bytes: int
    sha256: str


def part_name(index: int) -> str:
    """File name of part ``index`` (0-based): ``part-00000.parquet``."""
    return PART_TEMPLATE.format(index)


# --------------------------------------------------------------------------------------------------
# Format detection


def _compression_of(path: Path) -> str | None:
    return _COMPRESSED_SUFFIXES.get(path.suffix.lower())


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through one compression suffix (``x.csv.gz`` -> ``.csv``)."""
    name = path.name.lower()
    suffix = Path(name).suffix
    if suffix in _COMPRESSED_SUFFIXES:
        suffix = Path(name[: -len(suffix)]).suffix
    return suffix


def _open_binary(path: Path) -> gzip.GzipFile | bz2.BZ2File | IO[bytes]:
    """Open ``path`` for reading, decompressing gzip/bz2 by suffix (zstd files are opened raw)."""
    codec = _compression_of(path)
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - returned to a with-statement


def _head(path: Path, size: int = _SNIFF_BYTES) -> bytes:
    """The first ``size`` bytes of ``path`` (decompressed), or ``b""`` if unreadable."""
    if _compression_of(path) == "zstd":
        try:
            with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as stream:
                return stream.read(size)
        except (OSError, pa.ArrowException):
            return b""
    try:
        with _open_binary(path) as fh:
            return fh.read(size)
    except (OSError, EOFError, ValueError):
        return b""


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"SIMPLE  ="):
        return "fits"
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"# %ECSV"):
        return "ecsv"
    if text.startswith(b"<") and re.search(rb"<(?:\w+:)?VOTABLE[\s>]", text):
        return "votable"
    return None


def detect_format(path: Path) -> str | None:
    """The tabular format of ``path``: ``'csv' | 'tsv' | 'fits' | 'votable' | 'ecsv' | 'parquet'``, or None.

    The first 64 KiB are sniffed first (through ``.gz``/``.bz2``/``.zst`` compression): FITS starts with
    ``SIMPLE  =`` (FITS Standard 4.0 §4.4.1.1), Parquet with ``PAR1``, ECSV with ``# %ECSV``, and a VOTable
    is XML with a ``VOTABLE`` root element. Otherwise the suffix decides (``.csv``, ``.tsv``/``.tab``,
    ``.ecsv``, ``.parquet``/``.pq``, ``.fits``/``.fit``/``.fts``/``.fz``, ``.vot``/``.votable``, each
    optionally followed by a compression suffix). ``.xml`` counts only when it sniffs as a VOTable.
    None means not a table this module converts (an image, a text file, an unknown suffix, a folder).
    Never raises for an unreadable path: the suffix alone decides then.
    """
    path = Path(path)
    if path.is_dir():
        return None
    sniffed = _sniff(_head(path))
    if sniffed is not None:
        return sniffed
    return _SUFFIX_FORMATS.get(_base_suffix(path))


def is_table(path: Path, hdu: int | str | None = None) -> bool:
    """True when :func:`convert_to_parquet` can convert ``path`` (with this ``hdu``).

    FITS files are opened (headers only) and need a binary or ASCII table HDU (or ``hdu`` must name one);
    an image-only FITS file gives False. VOTables need a ``TABLE`` element (with ``hdu`` given, the file is
    parsed to check that table exists); Parquet files need a readable footer; CSV, TSV and ECSV files are
    taken on trust (their content is only checked while converting). Never raises.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is None or not path.is_file():
        return False
    try:
        if fmt == "fits":
            from astropy.io import fits

            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                _select_fits_hdu(hdul, hdu, path.name)
            return True
        if fmt == "votable":
            if hdu is not None:
                _VOTableSource(path, hdu, chunk_rows=1).close()
                return True
            return _has_votable_table(path)
        if fmt == "parquet":
            pq.ParquetFile(path).close()
            return True
    except (ConversionFailed, OSError, ValueError, pa.ArrowException):
        return False
    return True


def _has_votable_table(path: Path) -> bool:
    """Whether the XML text contains a ``TABLE`` element, scanning in 1 MiB blocks."""
    tail = b""
    with _open_binary(path) as fh:
        while block := fh.read(1024 * 1024):
            if _VOTABLE_TABLE.search(tail + block):
                return True
            tail = block[-64:]
    return False


# --------------------------------------------------------------------------------------------------
# Arrow conversion helpers


def _native(values: np.ndarray) -> np.ndarray:
    """``values`` in native byte order (FITS data are big-endian, FITS Standard 4.0 §7.3.3)."""
    if values.dtype.byteorder not in ("=", "|") and not values.dtype.isnative:
        return values.astype(values.dtype.newbyteorder("="))
    return values


def _nest(flat: pa.Array, shape: tuple[int, ...]) -> pa.Array:
    """Wrap ``flat`` (rows × prod(shape) values) in fixed-size lists, innermost dimension first."""
    for size in reversed(shape):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _strings(values: np.ndarray, *, rstrip: bool = False) -> pa.Array:
    """1-d numpy bytes (``S``) or str (``U``) array -> Arrow string array."""
    if values.dtype.kind == "U":
        arr = pa.array(values, type=pa.string())
    else:
        binary = pa.array(values, type=pa.binary())
        try:
            arr = binary.cast(pa.string())
        except pa.ArrowInvalid:  # not UTF-8: FITS strings are ASCII, be lenient with Latin-1
            arr = pa.array(np.char.decode(values, "latin-1"), type=pa.string())
    if rstrip:
        arr = pc.utf8_rtrim(arr, characters=" ")
    return arr


def _object_array(values: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    """Object arrays (variable-length arrays, Python strings) -> Arrow, masked rows as nulls."""
    items: list[Any] = []
    for i, item in enumerate(values):
        if mask is not None and mask[i]:
            items.append(None)
        elif isinstance(item, np.ndarray):
            items.append(item.tolist())
        elif isinstance(item, np.generic):
            items.append(item.item())
        else:
            items.append(item)
    return pa.array(items)


def _ndarray_to_arrow(
    values: np.ndarray, mask: np.ndarray | None = None, *, rstrip: bool = False
) -> pa.Array:
    """A numpy column (rows first; extra dimensions become nested fixed-size lists) -> Arrow array.

    Masked entries become nulls. Complex values become fixed-size lists of two floats ``[re, im]``
    (Arrow has no complex type); float16 widens to float32.
    """
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values) if mask is None else mask | np.ma.getmaskarray(values)
        values = values.data
    values = np.asarray(values)
    if mask is not None and not mask.any():
        mask = None
    if values.dtype.kind == "O":
        return _object_array(values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values, mask)
    values = _native(values)
    shape = values.shape[1:]
    flat = values.reshape(-1)
    flat_mask = None
    if mask is not None:
        flat_mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape)
        flat_mask = np.ascontiguousarray(flat_mask).reshape(-1)
    if values.dtype.kind in "SU":
        arr = _strings(flat, rstrip=rstrip)
        if flat_mask is not None:
            arr = pc.if_else(pa.array(flat_mask), pa.scalar(None, pa.string()), arr)
    elif values.dtype.kind == "c":
        parts = flat.view(np.float32 if values.dtype.itemsize == 8 else np.float64)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(parts), 2)
        if flat_mask is not None:
            arr = pc.if_else(pa.array(flat_mask), pa.scalar(None, arr.type), arr)
    else:
        if values.dtype == np.float16:
            flat = flat.astype(np.float32)
        arr = pa.array(flat, mask=flat_mask)
    return _nest(arr, shape) if shape else arr


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def _field_meta(**items: Any) -> dict[bytes, bytes]:
    """Field metadata from the non-empty ``items`` (``unit``, ``ucd``, ``description``, ...)."""
    meta = {}
    for key, value in items.items():
        if value is None or value == "":
            continue
        meta[key.replace("__", ".").encode()] = str(value).encode()
    return meta


def _with_metadata(
    schema: pa.Schema, fields_meta: list[dict[bytes, bytes]], schema_meta: dict[str, str]
) -> pa.Schema:
    """``schema`` with per-field metadata added and ``schema_meta`` merged into its metadata.

    Also records every column's ``unit``/``ucd``/``description`` as JSON under ``jupyter_staging.columns``
    so readers that ignore Arrow field metadata still see them.
    """
    fields = []
    columns: dict[str, dict[str, str]] = {}
    for field, extra in zip(schema, fields_meta, strict=True):
        meta = dict(field.metadata or {})
        meta.update(extra)
        fields.append(field.with_metadata(meta) if meta else field)
        described = {k.decode(): meta[k].decode() for k in (b"unit", b"ucd", b"description") if k in meta}
        if described:
            columns[field.name] = described
    merged = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    merged.update(schema_meta)
    if columns:
        merged["jupyter_staging.columns"] = _dumps(columns)
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in merged.items()})


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema`` (types cast where they differ, metadata replaced)."""
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _Piece(NamedTuple):
    """A record batch and the source byte positions (approximate) it was read between."""

    batch: pa.RecordBatch
    start: int
    end: int


class _Source:
    """A tabular source: ``schema`` (with metadata), ``size`` bytes, ``pieces(skip_rows)`` in order."""

    schema: pa.Schema
    size: int

    def pieces(self, skip_rows: int) -> Iterator[_Piece]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the source's files."""


def _base_meta(path: Path, fmt: str) -> dict[str, str]:
    return {
        "jupyter_staging.source": path.name,
        "jupyter_staging.format": fmt,
        "jupyter_staging.converter_version": __version__,
    }


# --------------------------------------------------------------------------------------------------
# CSV, TSV and simple ECSV: pyarrow's streaming CSV reader


#: ECSV 1.0 ``datatype`` values read directly by the CSV reader.
_ECSV_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint8": pa.uint8(),
    "uint16": pa.uint16(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float16": pa.float32(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
}


def _comment_prefix_bytes(path: Path) -> int:
    """Bytes taken by the leading lines that start with ``#`` (comment header) in a text file."""
    if not _head(path, 1).startswith(b"#"):
        return 0
    head = _head(path, 4 * 1024 * 1024)
    offset = 0
    while head.startswith(b"#", offset):
        end = head.find(b"\n", offset)
        if end < 0:
            return len(head)
        offset = end + 1
    return offset


def _ecsv_header(path: Path) -> tuple[dict[str, Any], int] | None:
    """The parsed YAML header of an ECSV file and its size in bytes, or None if it is not one."""
    from astropy.table import meta as table_meta

    skip = _comment_prefix_bytes(path)
    lines = _head(path, skip).decode("utf-8", "replace").splitlines()
    if not lines or not re.match(r"#\s*%ECSV\s+\d", lines[0]):
        return None
    body = [line[2:] if line.startswith("# ") else line[1:] for line in lines[1:]]
    try:
        header = table_meta.get_header_from_yaml(body)
    except Exception as exc:  # astropy raises several YAML error types
        raise ConversionFailed(f"{path.name}: invalid ECSV header: {exc}") from None
    return header, skip


class _CsvSource(_Source):
    """CSV/TSV (and ECSV whose columns are plain scalars) via ``pyarrow.csv.open_csv``.

    Column types are inferred once from the first ``CSV_INFER_BYTES`` of text (ECSV: taken from its
    header) and then fixed for the whole file, so every part has the same schema; a later value that does
    not fit its column's type raises :class:`ConversionFailed`. Columns empty throughout that first block
    are read as strings. The file is then streamed in ``CSV_BLOCK_SIZE`` blocks: memory is a few blocks
    of text and their Arrow batches.
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
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.size = path.stat().st_size
        self._header_bytes = header_bytes
        self._delimiter = delimiter
        self._column_types = dict(column_types or {})
        self._ecsv = fmt == "ecsv"
        schema = self._infer_schema()
        untyped = [f.name for f in schema if pa.types.is_null(f.type)]
        if untyped:
            message = (
                f"{path.name}: columns {', '.join(untyped)} are empty in the first "
                f"{CSV_INFER_BYTES // (1024 * 1024)} MiB; reading them as strings"
            )
            log.warning("%s", message)
            if control is not None:
                control.log("warning", message)
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])
        if self._ecsv and column_types is not None and list(column_types) != schema.names:
            raise ConversionFailed(f"{path.name}: ECSV column names do not match its header")
        if len(set(schema.names)) == len(schema.names):
            self._column_types = {f.name: f.type for f in schema}
        meta = _base_meta(path, fmt) | (schema_meta or {})
        fields_meta = fields_meta or {}
        self.schema = _with_metadata(schema, [fields_meta.get(name, {}) for name in schema.names], meta)

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
            table = pacsv.read_csv(
                pa.BufferReader(sample),
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=self._delimiter),
                convert_options=self._convert_options(),
            )
        except pa.ArrowException as exc:
            raise ConversionFailed(
                f"{self.path.name}: not a readable {self.fmt.upper()} file: {exc}"
            ) from None
        finally:
            raw.close()
        return table.schema

    def _open_stream(self) -> tuple[pa.NativeFile, pa.NativeFile]:
        """``(raw file, text stream)``: the file decompressed if need be, positioned after the comment
        lines of the header. The caller closes the raw file. Raises :class:`ConversionFailed` when the
        file (or its compression) cannot be read."""
        raw = pa.OSFile(str(self.path), "rb")
        try:
            codec = _compression_of(self.path)
            stream: pa.NativeFile = pa.CompressedInputStream(raw, codec) if codec else raw
            if self._header_bytes:
                stream.read(self._header_bytes)
        except pa.ArrowException as exc:
            raw.close()
            raise ConversionFailed(
                f"{self.path.name}: not a readable {self.fmt.upper()} file: {exc}"
            ) from None
        except BaseException:
            raw.close()
            raise
        return raw, stream

    def _convert_options(self) -> pacsv.ConvertOptions:
        if self._ecsv:  # ECSV 1.0: missing values are empty fields, booleans True/False
            return pacsv.ConvertOptions(
                column_types=self._column_types,
                null_values=[""],
                strings_can_be_null=True,
                true_values=["True", "true"],
                false_values=["False", "false"],
            )
        return pacsv.ConvertOptions(column_types=self._column_types)

    def _open(self) -> tuple[pacsv.CSVStreamingReader, pa.NativeFile]:
        raw, stream = self._open_stream()
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=self._delimiter),
                convert_options=self._convert_options(),
            )
        except pa.ArrowException as exc:
            raw.close()
            raise ConversionFailed(
                f"{self.path.name}: not a readable {self.fmt.upper()} file: {exc}"
            ) from None
        except BaseException:
            raw.close()
            raise
        return reader, raw

    def pieces(self, skip_rows: int) -> Iterator[_Piece]:
        reader, raw = self._open()
        try:
            start = raw.tell()
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except pa.ArrowInvalid as exc:
                    raise ConversionFailed(
                        f"{self.path.name}: {exc} (column types were inferred from the first "
                        f"{CSV_INFER_BYTES // (1024 * 1024)} MiB of the file)"
                    ) from None
                end = raw.tell()
                if skip_rows >= batch.num_rows:
                    skip_rows -= batch.num_rows
                else:
                    if skip_rows:
                        batch = batch.slice(skip_rows)
                        skip_rows = 0
                    yield _Piece(batch, start, end)
                start = end
        finally:
            reader.close()
            raw.close()


def _ecsv_source(path: Path, chunk_rows: int, control: JobControl | None) -> _Source:
    """An ECSV file: streamed as CSV when its columns are plain scalars, else read whole by astropy."""
    found = _ecsv_header(path)
    if found is None:
        raise ConversionFailed(f"{path.name}: not an ECSV file (no '# %ECSV' first line)")
    header, header_bytes = found
    columns = header.get("datatype") or []
    table_meta = header.get("meta") or {}
    simple = (
        columns
        and all(c.get("datatype") in _ECSV_TYPES and "subtype" not in c for c in columns)
        and "__serialized_columns__" not in table_meta
        and len(header.get("delimiter", " ")) == 1
    )
    if not simple:
        return _AstropyTableSource.read_ecsv(path, chunk_rows)
    fields_meta = {}
    for column in columns:
        extra = dict(column.get("meta") or {})
        fields_meta[column["name"]] = _field_meta(
            unit=column.get("unit"),
            ucd=extra.pop("ucd", None),
            description=column.get("description"),
            ecsv__meta=_dumps(extra) if extra else None,
        )
    schema_meta = {"ecsv.meta": _dumps(table_meta)} if table_meta else {}
    return _CsvSource(
        path,
        "ecsv",
        header_bytes=header_bytes,
        delimiter=header.get("delimiter", " "),
        column_types={c["name"]: _ECSV_TYPES[c["datatype"]] for c in columns},
        fields_meta=fields_meta,
        schema_meta=schema_meta,
        control=control,
    )


# --------------------------------------------------------------------------------------------------
# FITS binary and ASCII tables (astropy.io.fits, memory-mapped)


def _fits_header_text(header: Any) -> str:
    """A FITS header as text: one card image per line, trailing blanks removed."""
    text = header.tostring(sep="\n", endcard=False, padding=False)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _describe_hdu(index: int, hdu: Any) -> str:
    name = hdu.name or ""
    return f"{index} {name} ({type(hdu).__name__})".replace("  ", " ")


def _is_table_hdu(hdu: Any) -> bool:
    from astropy.io import fits

    return isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and not isinstance(hdu, fits.CompImageHDU)


def _select_fits_hdu(hdul: Any, hdu: int | str | None, name: str) -> int:
    """Index of the table HDU to convert: ``hdu`` (index or EXTNAME) or the first table HDU.

    Raises :class:`ConversionFailed` when there is no such HDU or it is not a table.
    """
    try:
        count = len(hdul)
    except Exception as exc:  # astropy raises OSError/ValueError/VerifyError for damaged files
        raise ConversionFailed(f"{name}: not a readable FITS file: {exc}") from None
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    if hdu is None:
        for index in range(count):
            if _is_table_hdu(hdul[index]):
                return index
        listing = ", ".join(_describe_hdu(i, hdul[i]) for i in range(count))
        raise ConversionFailed(
            f"{name} holds no table HDU (HDUs: {listing}); only FITS binary and ASCII tables are "
            "converted to Parquet"
        )
    if isinstance(hdu, int):
        if not 0 <= hdu < count:
            raise ConversionFailed(f"{name}: HDU {hdu} does not exist; the file has HDUs 0 to {count - 1}")
        index = hdu
    else:
        matches = [i for i in range(count) if (hdul[i].name or "").upper() == hdu.strip().upper()]
        if not matches:
            names = ", ".join(repr(hdul[i].name) for i in range(count))
            raise ConversionFailed(f"{name}: no HDU named {hdu!r} (names: {names})")
        index = matches[0]
    if not _is_table_hdu(hdul[index]):
        tables = [_describe_hdu(i, hdul[i]) for i in range(count) if _is_table_hdu(hdul[i])]
        hint = f"; table HDUs: {', '.join(tables)}" if tables else "; the file holds no table HDU"
        raise ConversionFailed(
            f"{name}: HDU {_describe_hdu(index, hdul[index])} is not a table{hint}",
        )
    return index


#: numpy dtypes of FITS binary table element codes (FITS Standard 4.0 §7.3.3.1, Table 18).
_FITS_CODES: dict[str, np.dtype] = {
    "L": np.dtype("i1"),
    "B": np.dtype("u1"),
    "I": np.dtype(">i2"),
    "J": np.dtype(">i4"),
    "K": np.dtype(">i8"),
    "E": np.dtype(">f4"),
    "D": np.dtype(">f8"),
    "C": np.dtype(">c8"),
    "M": np.dtype(">c16"),
}
#: TZEROn values that mark unsigned (or, for ``B``, signed) integers stored offset (§7.3.2, Table 19).
_OFFSET_INTEGERS = {
    ("B", -128): np.dtype("i1"),
    ("I", 32768): np.dtype("u2"),
    ("J", 2147483648): np.dtype("u4"),
    ("K", 9223372036854775808): np.dtype("u8"),
}


class _FitsSource(_Source):
    """A FITS binary (``BINTABLE``) or ASCII (``TABLE``) table HDU, read in slices of whole rows.

    Each slice of at most ``FITS_SLICE_BYTES`` of rows is read as raw records and converted column by
    column: big-endian to native, ``TZEROn``/``TSCALn`` applied (offset unsigned integers kept as
    integers, other scaled columns as float64), integer ``TNULLn`` values and logical 0 bytes as nulls,
    trailing blanks of character fields removed, bits (``X``) as booleans, ``TDIMn``/repeat counts as
    nested fixed-size lists, variable-length arrays (``P``/``Q``) as lists. Float NaNs stay NaN.

    Binary tables without variable-length arrays are read with plain file reads at the data offset, so
    memory (resident set included) stays at a few slices. ASCII tables and tables with a heap are read
    through astropy's memory map (the pages read stay mapped: resident memory grows with the table, as
    reclaimable page cache). Compressed files (``.gz``) are decompressed into memory by astropy.
    """

    def __init__(self, path: Path, hdu: int | str | None, chunk_rows: int) -> None:
        from astropy.io import fits

        self.path = path
        self.size = path.stat().st_size
        try:
            self._hdul = fits.open(path, memmap=True, lazy_load_hdus=True, mode="readonly")
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError for non-FITS bytes
            raise ConversionFailed(f"{path.name}: not a readable FITS file: {exc}") from None
        try:
            self.index = _select_fits_hdu(self._hdul, hdu, path.name)
            self._hdu = self._hdul[self.index]
            self._ascii = isinstance(self._hdu, fits.TableHDU)
            self._columns = list(self._hdu.columns)
            header = self._hdu.header
            row_bytes = max(1, int(header.get("NAXIS1", 1)))
            self._file: Any = None
            self._data: Any = None
            self._raw_dtype = self._direct_dtype(path, row_bytes)
            if self._raw_dtype is not None:
                self._data_offset = int(self._hdul.fileinfo(self.index)["datLoc"])
                self.rows = int(header.get("NAXIS2", 0))
                self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
            else:
                self._data = self._hdu.data
                self.rows = 0 if self._data is None else len(self._data)
            self._slice_rows = max(1, min(chunk_rows, FITS_SLICE_BYTES // row_bytes))
            fields_meta = [self._column_meta(i, c, header) for i, c in enumerate(self._columns)]
            schema = pa.schema(
                [pa.field(c.name, t) for c, t in zip(self._columns, self._types(), strict=True)]
            )
            meta = _base_meta(path, "fits") | {
                "fits.hdu": str(self.index),
                **({"fits.extname": self._hdu.name} if self._hdu.name else {}),
                "fits.header": _fits_header_text(header),
                "fits.primary_header": _fits_header_text(self._hdul[0].header),
            }
            self.schema = _with_metadata(schema, fields_meta, meta)
        except ConversionFailed:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ConversionFailed(f"{path.name}: cannot read FITS table: {exc}") from None

    @staticmethod
    def _column_meta(i: int, column: Any, header: Any) -> dict[bytes, bytes]:
        n = i + 1
        comment = header.comments[f"TTYPE{n}"] if f"TTYPE{n}" in header else ""
        return _field_meta(
            unit=column.unit,
            ucd=header.get(f"TUCD{n}"),
            description=header.get(f"TCOMM{n}") or comment,
            fits__tform=header.get(f"TFORM{n}"),
            fits__tdim=header.get(f"TDIM{n}"),
            fits__tdisp=header.get(f"TDISP{n}"),
        )

    def _direct_dtype(self, path: Path, row_bytes: int) -> np.dtype | None:
        """The raw (big-endian) record dtype when rows can be read with plain file reads, else None."""
        if self._ascii or _compression_of(path) is not None:
            return None
        if any(c.format.format not in _FITS_CODES and c.format.format not in "AX" for c in self._columns):
            return None  # variable-length arrays live in the heap: astropy resolves them
        dtype = np.dtype(self._hdu.columns.dtype).newbyteorder(">")
        return dtype if dtype.itemsize == row_bytes else None

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        """Raw records ``start:stop`` read from the file (one sequential read)."""
        assert self._raw_dtype is not None
        itemsize = self._raw_dtype.itemsize
        buffer = np.empty((stop - start) * itemsize, dtype=np.uint8)
        self._file.seek(self._data_offset + start * itemsize)
        view, done = buffer.data, 0
        while done < len(buffer):
            got = self._file.readinto(view[done:])
            if not got:
                raise ValueError(f"the file ends inside the table, before row {start + done // itemsize}")
            done += got
        return buffer.view(self._raw_dtype)

    def _types(self) -> list[pa.DataType]:
        """Arrow types of the columns: ASCII tables from their ``TFORMn`` (astropy cannot convert zero
        rows of them), binary tables by converting zero rows."""
        if not self._ascii:
            return [array.type for array in self._convert(0, 0)]
        types = []
        for column in self._columns:
            dtype = np.dtype(column.format.recformat)
            types.append(pa.string() if dtype.kind in "SUa" else pa.from_numpy_dtype(dtype))
        return types

    def _convert(self, start: int, stop: int) -> list[pa.Array]:
        if self._raw_dtype is not None:
            records, raw = None, self._read_rows(start, stop)
        elif self._data is None:  # no data array at all (NAXIS2 = 0 in some writers)
            return [pa.array([], type=pa.null()) for _ in self._columns]
        else:
            records = self._data[start:stop]
            raw = np.array(records.view(np.ndarray))  # one sequential read of the slice
        names = raw.dtype.names or ()
        arrays = []
        for i, column in enumerate(self._columns):
            if self._ascii:
                arrays.append(self._ascii_column(records, raw[names[i]], i, column))
            else:
                arrays.append(self._binary_column(records, raw[names[i]], i, column))
        return arrays

    @staticmethod
    def _ascii_column(records: Any, raw: np.ndarray, i: int, column: Any) -> pa.Array:
        values = np.asarray(records.field(i))
        mask = None
        if column.null not in (None, ""):
            mask = np.char.strip(raw) == str(column.null).strip().encode()
        return _ndarray_to_arrow(values, mask, rstrip=True)

    @staticmethod
    def _binary_column(records: Any, raw: np.ndarray, i: int, column: Any) -> pa.Array:
        code = column.format.format
        if code in ("P", "Q"):
            return _fits_vla(records.field(i), column.format.p_format)
        if code == "X":  # bits, most significant first (FITS Standard 4.0 §7.3.3.1)
            packed = raw.reshape(raw.shape[0], int(np.prod(raw.shape[1:])))
            bits = np.unpackbits(packed, axis=1)[:, : column.format.repeat]
            return _ndarray_to_arrow(bits.astype(np.bool_))
        if code not in _FITS_CODES and code != "A":
            return _ndarray_to_arrow(np.asarray(records.field(i)))
        if code == "A":
            return _ndarray_to_arrow(raw, rstrip=True)
        if code == "L":
            return _ndarray_to_arrow(raw.view(np.uint8) == ord("T"), raw == 0)
        values = _native(raw)
        bzero = column.bzero if column.bzero not in (None, "") else 0
        bscale = column.bscale if column.bscale not in (None, "") else 1
        mask = None
        if code in "BIJK" and column.null not in (None, ""):
            mask = values == int(column.null)
        offset = _OFFSET_INTEGERS.get((code, bzero)) if bscale == 1 else None
        if offset is not None:
            sign = np.array(1 << (values.dtype.itemsize * 8 - 1), dtype=values.dtype.str.replace("i", "u"))
            values = (values.view(sign.dtype) ^ sign).view(offset)
        elif bzero != 0 or bscale != 1:
            values = values.astype(np.float64) * bscale + bzero
        return _ndarray_to_arrow(values, mask)

    def pieces(self, skip_rows: int) -> Iterator[_Piece]:
        start = min(skip_rows, self.rows)
        total = max(1, self.rows)
        while start < self.rows:
            stop = min(self.rows, start + self._slice_rows)
            try:
                arrays = self._convert(start, stop)
            except (OSError, ValueError, TypeError) as exc:
                raise ConversionFailed(f"{self.path.name}: cannot read rows {start}-{stop}: {exc}") from None
            batch = _conform(pa.RecordBatch.from_arrays(arrays, names=self.schema.names), self.schema)
            yield _Piece(batch, self.size * start // total, self.size * stop // total)
            start = stop

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
        hdul = getattr(self, "_hdul", None)
        if hdul is not None:
            self._data = None
            self._hdu = None
            hdul.close()
            self._hdul = None


def _fits_vla(values: Any, p_format: str) -> pa.Array:
    """A FITS variable-length array column (``P``/``Q``, FITS Standard 4.0 §7.3.5) -> Arrow list array."""
    if p_format == "A":
        return pa.array(
            [
                (v if isinstance(v, str) else "".join(np.asarray(v, dtype=str).tolist())).rstrip(" \0")
                for v in values
            ],
            type=pa.string(),
        )
    element = _FITS_CODES.get(p_format)
    if element is None:
        return _object_array(np.asarray(values, dtype=object), None)
    dtype = np.dtype(np.bool_) if p_format == "L" else element.newbyteorder("=")
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    if lengths.sum() >= 2**31:
        raise ValueError("a variable-length array column holds 2**31 or more elements in one slice")
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = _native(np.concatenate([np.asarray(v) for v in values])) if len(values) else np.empty(0, dtype)
    if p_format == "L" and flat.dtype != np.bool_:
        flat = flat.view(np.uint8) == ord("T")
    child = _ndarray_to_arrow(flat.astype(dtype, copy=False))  # complex -> [re, im] lists
    return pa.ListArray.from_arrays(pa.array(offsets), child)


# --------------------------------------------------------------------------------------------------
# Whole-table sources: VOTable, ECSV with mixins (astropy reads them whole)


class _TableSource(_Source):
    """A table held in memory as one Arrow table, cut into batches of at most ``chunk_rows`` rows."""

    def __init__(self, table: pa.Table, size: int, chunk_rows: int) -> None:
        self.table = table
        self.schema = table.schema
        self.size = size
        self._chunk_rows = chunk_rows

    def pieces(self, skip_rows: int) -> Iterator[_Piece]:
        total = max(1, self.table.num_rows)
        start = min(skip_rows, self.table.num_rows)
        for batch in self.table.slice(start).to_batches(max_chunksize=self._chunk_rows):
            stop = start + batch.num_rows
            yield _Piece(_conform(batch, self.schema), self.size * start // total, self.size * stop // total)
            start = stop

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]


class _AstropyTableSource(_TableSource):
    """A table astropy reads whole (ECSV with mixin or multidimensional columns)."""

    @classmethod
    def read_ecsv(cls, path: Path, chunk_rows: int) -> _AstropyTableSource:
        """An ECSV file read whole by ``astropy.table.Table.read`` (mixin columns split into plain ones)."""
        from astropy.table import Table
        from astropy.table.serialize import represent_mixins_as_columns

        try:
            table = represent_mixins_as_columns(Table.read(path, format="ascii.ecsv"))
        except Exception as exc:  # astropy raises many error types for malformed ECSV
            raise ConversionFailed(f"{path.name}: not a readable ECSV file: {exc}") from None
        arrays, fields_meta = [], []
        for name in table.colnames:
            column = table[name]
            extra = dict(column.meta or {})
            arrays.append(_ndarray_to_arrow(column))
            fields_meta.append(
                _field_meta(
                    unit=column.unit.to_string() if column.unit is not None else None,
                    ucd=extra.pop("ucd", None),
                    description=column.description,
                    ecsv__meta=_dumps(extra) if extra else None,
                )
            )
        meta = _base_meta(path, "ecsv")
        if table.meta:
            meta["ecsv.meta"] = _dumps(dict(table.meta))
        arrow = pa.table(arrays, names=table.colnames)
        arrow = arrow.cast(_with_metadata(arrow.schema, fields_meta, meta))
        return cls(arrow, path.stat().st_size, chunk_rows)


def _votable_unit(unit: Any) -> str | None:
    if unit is None:
        return None
    try:
        return unit.to_string("cds")  # the syntax astropy writes VOTables with (VOTable 1.4 §4.3)
    except Exception:  # a unit CDS cannot express
        return str(unit)


def _votable_param(param: Any, level: str) -> dict[str, Any]:
    value = param.value
    if isinstance(value, np.ma.MaskedArray):
        value = value.filled(None) if value.dtype.kind == "O" else value.tolist()
    return {
        k: v
        for k, v in {
            "level": level,
            "name": param.name,
            "ID": param.ID,
            "value": value,
            "datatype": param.datatype,
            "arraysize": param.arraysize,
            "unit": _votable_unit(param.unit),
            "ucd": param.ucd,
            "utype": param.utype,
            "description": param.description,
        }.items()
        if v not in (None, "")
    }


class _VOTableSource(_TableSource):
    """A VOTable ``TABLE`` (``hdu``: its 0-based position among the file's tables, or its ID/name).

    astropy has no streaming VOTable reader: the whole file is parsed into memory (roughly the table's
    binary size, times two while converting), then cut into parts.
    """

    def __init__(self, path: Path, hdu: int | str | None, chunk_rows: int) -> None:
        from astropy.io.votable import parse

        try:
            votable = parse(str(path), verify="ignore")
        except Exception as exc:  # astropy raises XML, value and unit errors for malformed files
            raise ConversionFailed(f"{path.name}: not a readable VOTable: {exc}") from None
        found = []

        def walk(resource: Any, params: list[dict[str, Any]]) -> None:
            params = params + [_votable_param(p, "RESOURCE") for p in resource.params]
            for table in resource.tables:
                found.append((table, params, resource))
            for child in resource.resources:
                walk(child, params)

        top = [_votable_param(p, "VOTABLE") for p in votable.params]
        for resource in votable.resources:
            walk(resource, top)
        if not found:
            raise ConversionFailed(f"{path.name}: the VOTable holds no TABLE")
        if isinstance(hdu, str) and hdu.strip().isdigit():
            hdu = int(hdu)
        if hdu is None:
            position = 0
        elif isinstance(hdu, int):
            if not 0 <= hdu < len(found):
                raise ConversionFailed(
                    f"{path.name}: table {hdu} does not exist; the VOTable has tables 0 to {len(found) - 1}"
                )
            position = hdu
        else:
            matches = [i for i, (t, _, _) in enumerate(found) if hdu in (t.ID, t.name)]
            if not matches:
                raise ConversionFailed(f"{path.name}: no VOTable TABLE with ID or name {hdu!r}")
            position = matches[0]
        table, params, resource = found[position]
        params = params + [_votable_param(p, "TABLE") for p in table.params]
        data = table.array
        names = data.dtype.names or ()
        arrays, fields_meta, columns = [], [], []
        for i, field in enumerate(table.fields):
            arrays.append(_ndarray_to_arrow(data[names[i]]))
            columns.append(field.name or field.ID or names[i])
            fields_meta.append(
                _field_meta(
                    unit=_votable_unit(field.unit),
                    ucd=field.ucd,
                    description=field.description,
                    utype=field.utype,
                    votable__datatype=field.datatype,
                    votable__arraysize=field.arraysize,
                    votable__xtype=field.xtype,
                )
            )
        meta = _base_meta(path, "votable") | {"votable.table": str(position)}
        if table.ID or table.name:
            meta["votable.table_name"] = table.name or table.ID
        if table.description:
            meta["votable.description"] = table.description
        if resource.description:
            meta["votable.resource_description"] = resource.description
        if params:
            meta["votable.params"] = _dumps(params)
        infos = [
            {"name": info.name, "value": info.value, "content": getattr(info, "content", None)}
            for info in list(votable.infos) + list(resource.infos) + list(getattr(table, "infos", []))
        ]
        if infos:
            meta["votable.infos"] = _dumps(infos)
        arrow = pa.table(arrays, names=columns)
        arrow = arrow.cast(_with_metadata(arrow.schema, fields_meta, meta))
        super().__init__(arrow, path.stat().st_size, chunk_rows)


# --------------------------------------------------------------------------------------------------
# Parquet sources (re-chunked)


class _ParquetSource(_Source):
    """A Parquet file re-chunked with ``ParquetFile.iter_batches``; schema and metadata are kept.

    Memory: pyarrow decodes one source row group at a time, so it is bounded by the source's row groups.
    """

    def __init__(self, path: Path, chunk_rows: int) -> None:
        self.path = path
        self.size = path.stat().st_size
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise ConversionFailed(f"{path.name}: not a readable Parquet file: {exc}") from None
        schema = self._file.schema_arrow
        self.schema = _with_metadata(schema, [{} for _ in schema], _base_meta(path, "parquet"))
        self._batch_rows = max(1, min(chunk_rows, 64 * 1024))
        self.rows = self._file.metadata.num_rows

    def pieces(self, skip_rows: int) -> Iterator[_Piece]:
        metadata = self._file.metadata
        first, skip_in_group, seen = metadata.num_row_groups, 0, 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if seen + rows > skip_rows:
                first, skip_in_group = group, skip_rows - seen
                break
            seen += rows
        position = skip_rows - skip_in_group
        total = max(1, self.rows)
        if first >= metadata.num_row_groups:
            return
        groups = list(range(first, metadata.num_row_groups))
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
                yield _Piece(
                    _conform(batch, self.schema), self.size * start // total, self.size * position // total
                )
        except (pa.ArrowException, OSError) as exc:
            raise ConversionFailed(f"{self.path.name}: cannot read Parquet data: {exc}") from None

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------------------------------
# Writing


class _Prefetch:
    """Runs an iterator in a reader thread, holding at most ``depth`` items ahead of the consumer.

    Reading (CSV parsing, FITS decoding) then overlaps with Parquet encoding in the caller's thread
    (``DESIGN.md``: overlapping reader and writer reaches DuckDB's speed). An exception in the reader is
    raised again in the consumer.
    """

    _END = object()

    def __init__(self, items: Iterator[_Piece], depth: int = PREFETCH_BATCHES) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-convert-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[_Piece]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the reader and wait for it (it finishes the batch it is reading).

        After the queue is emptied the reader can put at most one more item (there is room for it)
        before it sees the stop flag, so this never blocks on a full queue.
        """
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> _Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def _encode_part(
    final: Path, batches: list[pa.RecordBatch], schema: pa.Schema, compression: str, row_group_rows: int
) -> PartFile:
    """Write ``batches`` as one Parquet file into ``final.part``, hashing it; not yet fsynced or published.

    Raises :class:`DestinationExists` (before writing anything) if ``final`` exists; on any error the
    ``.part`` is removed.
    """
    part = PartFile(final)
    try:
        table = pa.Table.from_batches(batches, schema=schema)
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


def _open_source(
    src: Path, fmt: str, hdu: int | str | None, chunk_rows: int, control: JobControl | None
) -> _Source:
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        return _CsvSource(
            src, fmt, header_bytes=_comment_prefix_bytes(src), delimiter=delimiter, control=control
        )
    if fmt == "ecsv":
        return _ecsv_source(src, chunk_rows, control)
    if fmt == "fits":
        return _FitsSource(src, hdu, chunk_rows)
    if fmt == "votable":
        return _VOTableSource(src, hdu, chunk_rows)
    if fmt == "parquet":
        return _ParquetSource(src, chunk_rows)
    raise ConversionFailed(f"{src.name}: unknown table format {fmt!r}")


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
) -> list[ChunkInfo]:
    """Convert the table in ``src`` into Parquet part files in ``out_dir``; return the parts written.

    Parameters
    ----------
    src:
        A CSV, TSV, FITS (binary or ASCII table), VOTable, ECSV or Parquet file (see :func:`detect_format`;
        CSV/TSV/ECSV/FITS may be ``.gz``/``.bz2``/``.zst`` compressed).
    out_dir:
        Folder for ``part-00000.parquet``, ``part-00001.parquet``, ... (created if missing). Each part
        holds exactly ``chunk_rows`` rows except the last; a table of zero rows gives one empty part.
        ``pyarrow.dataset.dataset(out_dir)`` and ``pandas.read_parquet(out_dir)`` read them as one table.
    chunk_rows:
        Rows per part (≥ 1). Memory is a few parts' worth of Arrow data whatever the file size, except:
        VOTables and ECSV files with mixin or multidimensional columns are read whole by astropy;
        compressed FITS files are decompressed into memory; FITS ASCII tables and tables with
        variable-length arrays are read through a memory map, whose pages count as resident.
    compression:
        Parquet codec: ``zstd``, ``snappy``, ``gzip``, ``lz4``, ``brotli`` or ``none``.
    hdu:
        FITS: HDU index or EXTNAME of the table (default: the first binary or ASCII table HDU).
        VOTable: 0-based position of the ``TABLE`` in the file, or its ID or name (default: the first).
    fmt:
        Format, overriding :func:`detect_format`.
    control:
        ``check()`` is called between batches (so pause/cancel act within one batch);
        ``add_rows(n)`` after each part with its row count; ``add_bytes(n)`` with the bytes of source
        consumed by each part (approximate; parts skipped by ``start_index`` are not counted, the rest of
        the file is added when the last part is written).
    start_index:
        Resume: parts ``0 .. start_index-1`` exist already and are not written again; the first
        ``start_index * chunk_rows`` rows are skipped (FITS, VOTable, ECSV, Parquet seek to them; CSV
        parses and drops them).
    on_chunk:
        Called with each :class:`ChunkInfo` once that part is published, in the caller's thread and in
        part order (part N is published while part N+1 is encoded, and reported after that). If the job
        is interrupted meanwhile, for instance from this callback, the part being encoded is dropped.

    Units and descriptions: each Arrow field's metadata holds ``unit``, ``ucd`` and ``description`` where
    the source has them (FITS ``TUNITn``, ``TUCDn``, ``TCOMMn`` or the ``TTYPEn`` comment, FITS Standard
    4.0 §7.2–7.3; VOTable ``FIELD`` ``unit`` (as astropy writes it, CDS syntax) / ``ucd`` /
    ``DESCRIPTION``, VOTable 1.4 §4; ECSV ``unit``/``description``/``meta.ucd``). The schema metadata
    (Parquet key-value metadata) holds ``jupyter_staging.source``, ``jupyter_staging.format``,
    ``jupyter_staging.converter_version``, ``jupyter_staging.columns`` and, for FITS, ``fits.header`` and
    ``fits.primary_header`` (card images, one per line); for VOTables ``votable.params``,
    ``votable.infos`` (JSON) and ``votable.description``.

    Raises
    ------
    SourceNotFound
        ``src`` is not a file.
    ConversionFailed
        Not a table (e.g. an image-only FITS file), an HDU/table index or name that does not exist or is
        not a table, an unreadable or corrupt file, an unknown compression, a CSV value that does not fit
        its column's type.
    DestinationExists
        A part file to be written already exists; nothing is overwritten.
    JobInterrupted
        ``control`` was interrupted. Parts published so far stay (resume with ``start_index``); the part
        in progress is removed. On any error no ``.part`` file is left behind.
    """
    src, out_dir = Path(src), Path(out_dir)
    if chunk_rows < 1:
        raise ConversionFailed(f"chunk_rows must be at least 1, not {chunk_rows}")
    if start_index < 0:
        raise ConversionFailed(f"start_index must not be negative, not {start_index}")
    codec = compression.lower()
    if codec not in COMPRESSIONS:
        raise ConversionFailed(
            f"unknown Parquet compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    if not src.is_file():
        raise SourceNotFound(f"{src.name}: no such file")
    fmt = fmt or detect_format(src)
    if fmt is None:
        raise ConversionFailed(
            f"{src.name} is not a table this converter reads (CSV, TSV, FITS table, VOTable, ECSV, Parquet)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    source = _open_source(src, fmt, hdu, chunk_rows, control)
    try:
        chunks = _write_parts(source, out_dir, chunk_rows, codec, start_index, control, on_chunk)
    finally:
        source.close()
    elapsed = time.monotonic() - started
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
    return chunks


class _Inflight(NamedTuple):
    future: Future[tuple[int, str]]
    part: PartFile
    part_index: int
    rows: int
    read_to: int


class _PartWriter:
    """Cuts a stream of batches into parts of exactly ``chunk_rows`` rows and publishes them in order.

    Each part is encoded in the caller's thread, then fsynced and published by a committer thread while
    the next part is encoded (fsync is about a sixth of a conversion's time here). Bookkeeping
    (:class:`ChunkInfo`, ``control.add_rows``/``add_bytes``, ``on_chunk``) runs in the caller's thread, in
    part order, once a part is published; after an interrupt no further part is published.
    """

    def __init__(
        self,
        out_dir: Path,
        source: _Source,
        *,
        chunk_rows: int,
        compression: str,
        start_index: int,
        control: JobControl | None,
        on_chunk: Callable[[ChunkInfo], None] | None,
    ) -> None:
        self.chunks: list[ChunkInfo] = []
        self._out_dir = out_dir
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
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-convert-commit")
        # Source bytes reported through control.add_bytes, up to here; a resumed run starts counting
        # where its first row was read.
        self._reported: int | None = 0 if start_index == 0 else None
        self._read_to = 0

    def _check(self) -> None:
        if self._control is not None:
            self._control.check()

    def add(self, piece: _Piece) -> None:
        """Take the rows of ``piece``, writing every part that fills up."""
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

    def finish(self) -> list[ChunkInfo]:
        """Write the last (short, or for an empty table empty) part; wait for it; return all parts."""
        if self._pending_rows or self._index == 0:
            self._flush()
        self._settle()
        if self._reported is None and not self.chunks:
            self._reported = self._size  # resumed past the end: nothing read, nothing to report
        if self._control is not None and self._size > (self._reported or 0):
            self._control.add_bytes(self._size - (self._reported or 0))
            self._reported = self._size
        return self.chunks

    def _flush(self) -> None:
        self._check()
        part = _encode_part(
            self._out_dir / part_name(self._index),
            self._pending,
            self._schema,
            self._compression,
            self._row_group_rows,
        )
        job = (self._index, self._pending_rows, self._read_to)
        self._pending, self._pending_rows, self._index = [], 0, self._index + 1
        try:
            self._settle()
            self._check()  # an interrupt while the previous part was reported stops here
        except BaseException:
            part.discard()
            raise
        self._inflight = _Inflight(self._committer.submit(part.commit), part, *job)

    def _settle(self) -> None:
        """Wait until the part being published is published, then report it."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        try:
            size, sha256 = inflight.future.result()
        except BaseException:
            inflight.part.discard()
            raise
        info = ChunkInfo(
            index=inflight.part_index,
            name=part_name(inflight.part_index),
            rows=inflight.rows,
            bytes=size,
            sha256=sha256,
        )
        log.debug("published %s: %d rows, %d bytes", info.name, info.rows, info.bytes)
        self.chunks.append(info)
        if self._control is not None:
            self._control.add_rows(info.rows)
            done = inflight.read_to - (self._reported or 0)
            if done > 0:
                self._control.add_bytes(done)
                self._reported = inflight.read_to
        if self._on_chunk is not None:
            self._on_chunk(info)

    def close(self) -> None:
        """Stop the committer. After an error, a part already being published is still reported."""
        try:
            if self._inflight is not None:
                self._settle()
        except BaseException:  # the error that brought us here is the one to raise
            log.debug("part left unreported after an error", exc_info=True)
        finally:
            self._committer.shutdown(wait=True)


def _write_parts(
    source: _Source,
    out_dir: Path,
    chunk_rows: int,
    compression: str,
    start_index: int,
    control: JobControl | None,
    on_chunk: Callable[[ChunkInfo], None] | None,
) -> list[ChunkInfo]:
    writer = _PartWriter(
        out_dir,
        source,
        chunk_rows=chunk_rows,
        compression=compression,
        start_index=start_index,
        control=control,
        on_chunk=on_chunk,
    )
    try:
        with _Prefetch(source.pieces(start_index * chunk_rows)) as pieces:
            for piece in pieces:
                writer.add(piece)
        return writer.finish()
    finally:
        writer.close()
