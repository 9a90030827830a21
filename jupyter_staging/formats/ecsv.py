"""ECSV 1.0: streamed as CSV when its columns are plain scalars, else read whole by astropy.

The YAML header (``# %ECSV 1.0`` then ``# ``-prefixed lines) gives each column's ``datatype``, ``unit``,
``description`` and ``meta``; mixin columns (``__serialized_columns__``), ``subtype`` columns and
multi-character delimiters need astropy's reader.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import ndarray_to_arrow
from jupyter_staging.formats.astropy_meta import SERIALIZED_COLUMNS_KEY
from jupyter_staging.formats.base import Source, TableSource, without_paths
from jupyter_staging.formats.compression import comment_prefix_bytes, head
from jupyter_staging.formats.csv import CsvSource
from jupyter_staging.formats.metadata import base_meta, dumps, ecsv_field_meta, with_metadata
from jupyter_staging.formats.ragged import RAGGED_MAX_BYTES
from jupyter_staging.safety.control import JobControl

__all__ = ["ECSV_TYPES", "ecsv_source", "read_ecsv_whole"]

#: pyarrow's error for a row with more or fewer fields than the header.
_FIELD_COUNT = re.compile(r"Expected \d+ columns, got \d+")

#: ECSV 1.0 ``datatype`` values read directly by the CSV reader.
ECSV_TYPES: dict[str, pa.DataType] = {
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


def _ecsv_header(path: Path) -> tuple[dict[str, Any], int] | None:
    """The parsed YAML header of an ECSV file and its size in bytes, or None if it is not one.

    Raises :class:`ConversionFailed` when the header is not YAML or lists no columns (``datatype``)."""
    # astropy is heavy (about a second to import): loaded only when an ECSV file is read
    from astropy.table import meta as table_meta

    skip = comment_prefix_bytes(path)
    lines = head(path, skip).decode("utf-8", "replace").splitlines()
    if not lines or not re.match(r"#\s*%ECSV\s+\d", lines[0]):
        return None
    body = [line[2:] if line.startswith("# ") else line[1:] for line in lines[1:]]
    try:
        header = table_meta.get_header_from_yaml(body)
    except Exception as exc:  # astropy raises several YAML error types
        raise ConversionFailed(f"{path.name}: invalid ECSV header: {_yaml_words(exc)}") from None
    if not isinstance(header, dict) or not isinstance(header.get("datatype"), list):
        raise ConversionFailed(f"{path.name}: invalid ECSV header: it has no 'datatype' list of columns")
    return header, skip


def _yaml_words(exc: Exception) -> str:
    """What is wrong with an ECSV header, on one line: astropy's ``YamlParseError`` has no words of its own,
    the YAML parser's (its cause) say what it found and where (the line of the file, the ``# %ECSV`` line
    being line 1)."""
    cause = exc.__cause__ or exc.__context__ or exc
    problem = getattr(cause, "problem", None)
    mark = getattr(cause, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(cause, "context", None)
        return f"{context + ': ' if context else ''}{problem} (line {mark.line + 2})"
    return " ".join(str(cause).split()) or type(cause).__name__


def _is_simple(header: dict[str, Any]) -> bool:
    """Whether the CSV reader can read the file: plain scalar columns, one-character delimiter."""
    columns = header.get("datatype") or []
    return bool(
        columns
        and all(c.get("datatype") in ECSV_TYPES and "subtype" not in c for c in columns)
        and "__serialized_columns__" not in (header.get("meta") or {})
        and len(header.get("delimiter", " ")) == 1
    )


def ecsv_source(path: Path, chunk_rows: int, control: JobControl | None) -> Source:
    """An ECSV file: streamed as CSV when its columns are plain scalars, else read whole by astropy.

    Raises :class:`ConversionFailed` when it is not an ECSV file or cannot be read.
    """
    found = _ecsv_header(path)
    if found is None:
        raise ConversionFailed(f"{path.name}: not an ECSV file (no '# %ECSV' first line)")
    header, header_bytes = found
    if not _is_simple(header):
        return read_ecsv_whole(path, chunk_rows)
    try:
        return _streamed(path, header, header_bytes, control)
    except ConversionFailed as exc:
        # Columns aligned with runs of spaces, or a blank at a line's end: astropy's reader takes them
        # (whitespace-separated), the CSV reader's one-space delimiter counts more fields. Read whole,
        # up to the size the ragged CSV files are read whole at; any other error stands.
        aligned = header.get("delimiter", " ") == " " and _FIELD_COUNT.search(str(exc))
        if not aligned or path.stat().st_size > RAGGED_MAX_BYTES:
            raise
        return read_ecsv_whole(path, chunk_rows)


def _streamed(path: Path, header: dict[str, Any], header_bytes: int, control: JobControl | None) -> Source:
    """:func:`ecsv_source` of a file whose columns the CSV reader reads (``_is_simple``)."""
    columns = header["datatype"]
    table_meta = header.get("meta") or {}
    fields_meta = {
        column["name"]: ecsv_field_meta(column.get("unit"), column.get("description"), column.get("meta"))
        for column in columns
    }
    return CsvSource(
        path,
        "ecsv",
        header_bytes=header_bytes,
        delimiter=header.get("delimiter", " "),
        column_types={c["name"]: ECSV_TYPES[c["datatype"]] for c in columns},
        fields_meta=fields_meta,
        schema_meta={"ecsv.meta": dumps(table_meta)} if table_meta else {},
        control=control,
    )


def read_ecsv_whole(path: Path, chunk_rows: int) -> TableSource:
    """An ECSV file read whole by ``astropy.table.Table.read``: mixin columns are split into plain ones
    (``c.ra``, ``c.dec``) and described under the schema key :data:`SERIALIZED_COLUMNS_KEY`.

    Memory is the whole table. Raises :class:`ConversionFailed` when astropy cannot read it.
    """
    # astropy is heavy (about a second to import): loaded only when such a file is read
    from astropy.io.misc import yaml as astropy_yaml
    from astropy.table import Table
    from astropy.table.serialize import represent_mixins_as_columns
    from astropy.utils.data_info import serialize_context_as

    try:
        # In ECSV's own context a Time column stays the text the file holds (its formatted value), not
        # astropy's two-double split (jd1, jd2) of the Parquet and FITS contexts.
        with serialize_context_as("ecsv"):
            table = represent_mixins_as_columns(Table.read(path, format="ascii.ecsv"))
    except Exception as exc:  # astropy raises many error types for malformed ECSV
        raise ConversionFailed(
            f"{path.name}: not a readable ECSV file: {without_paths(str(exc), path)}"
        ) from None
    arrays, fields_meta = [], []
    for name in table.colnames:
        column = table[name]
        arrays.append(ndarray_to_arrow(column))
        unit = column.unit.to_string() if column.unit is not None else None
        fields_meta.append(ecsv_field_meta(unit, column.description, column.meta))
    meta = base_meta(path, "ecsv")
    table_meta = dict(table.meta)
    serialized = table_meta.pop("__serialized_columns__", None)
    if serialized:  # the mixins' description, kept as astropy's YAML: to_table() rebuilds them from it
        meta[SERIALIZED_COLUMNS_KEY] = astropy_yaml.dump(serialized)
    if table_meta:
        meta["ecsv.meta"] = dumps(table_meta)
    arrow = pa.table(arrays, names=table.colnames)
    schema = with_metadata(arrow.schema, fields_meta, meta)
    return TableSource(pa.Table.from_arrays(arrow.columns, schema=schema), path.stat().st_size, chunk_rows)
