"""Units, UCDs and descriptions in astropy's own Parquet convention, so ``QTable.read(part)`` finds them.

astropy's Parquet reader (``astropy.io.misc.parquet.read_table_parquet``) takes each column's ``unit``,
``description``, ``format`` and ``meta`` from a YAML document under the Parquet key-value metadata key
``table_meta_yaml`` (the ECSV 1.0 header layout: ``datatype`` is a list of ``{name, datatype, unit,
description, meta}``, ``meta`` the table's metadata), and the length of string columns from
``table::len::<name>``. The converter writes both beside its own Arrow field metadata.

Units: a source's unit text is read by :func:`~jupyter_staging.formats.units.astropy_unit` (the FITS
Standard's meaning first, never a different physical unit; ``e-/s`` is ``electron / s``, as lightkurve
reads Kepler and TESS files; ``BJD - 2454833`` is days). A unit it cannot read (``DEGREES``, ``MPC``)
is written as it is spelled, which astropy reads back as an ``UnrecognizedUnit``, as
its FITS, VOTable and ECSV readers give it; no case or spelling is guessed. The original text stays in the
Arrow field metadata (``unit``) and in the column's ``meta`` as ``original_unit`` when it differs.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from jupyter_staging.formats.units import astropy_unit, parses_as_generic

__all__ = [
    "META_YAML_KEY",
    "SERIALIZED_COLUMNS_KEY",
    "astropy_unit",
    "string_lengths",
    "table_meta_yaml",
    "time_components",
]

#: Parquet key-value metadata key astropy reads column units and descriptions from.
META_YAML_KEY = "table_meta_yaml"
#: Schema metadata key holding, as astropy's YAML, the ``__serialized_columns__`` of a table whose mixin
#: columns (a ``Time``, a ``SkyCoord``, a ``Quantity`` with a dtype of its own) astropy split into plain
#: ones (``c.ra``, ``c.dec``); it becomes the ``table_meta_yaml`` table meta's ``__serialized_columns__``,
#: which astropy's readers (``QTable.read(part)``) and ``to_table()`` rebuild the mixins from.
SERIALIZED_COLUMNS_KEY = "astropy.serialized_columns"
#: libyaml's emitter where PyYAML was built with it (YAML that reads back the same as PyYAML's own, though
#: long values may be folded at other places; about 5x faster: a folder of small tables writes one document
#: per table).
_DUMPER: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
#: Schema metadata keys not repeated in the YAML's table ``meta`` (Arrow's own, or already per column).
_NOT_META = ("ARROW:", META_YAML_KEY, "table::len::", "jupyter_staging.columns", SERIALIZED_COLUMNS_KEY)
#: ECSV 1.0 datatypes of Arrow types; any other type is described as ``string``.
_DATATYPES = {
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.uint8(): "uint8",
    pa.uint16(): "uint16",
    pa.uint32(): "uint32",
    pa.uint64(): "uint64",
    pa.float16(): "float16",
    pa.float32(): "float32",
    pa.float64(): "float64",
}


def _column_entry(field: pa.Field) -> dict[str, Any]:
    """The YAML ``datatype`` entry of one field: name, datatype, unit, description, meta (ucd, ...)."""
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    entry: dict[str, Any] = {"name": field.name, "datatype": _DATATYPES.get(field.type, "string")}
    original = meta.pop("unit", None)
    unit = astropy_unit(original)
    if unit is not None:
        entry["unit"] = unit
    elif original is not None and original.strip() and not parses_as_generic(original.strip()):
        # as astropy writes an UnrecognizedUnit: its text, read back as UnrecognizedUnit(text); an
        # ambiguous text astropy would read as a unit (``Gal``: a galileo) is left out, kept in the meta
        entry["unit"] = original.strip()
    description = meta.pop("description", None)
    if description:
        entry["description"] = description
    column_meta = {k: v for k, v in meta.items() if not k.startswith("ARROW:")}
    if original is not None and original != unit:
        column_meta["original_unit"] = original
    if column_meta:
        entry["meta"] = column_meta
    return entry


def time_components(serialized: dict[str, Any]) -> set[str]:
    """Names of the plain columns that ``serialized`` (a ``__serialized_columns__`` mapping) builds a
    ``Time`` from (its ``jd1``, ``jd2`` or ``value``): they carry no unit of their own."""
    names: set[str] = set()
    for mixin in serialized.values():
        if isinstance(mixin, dict) and mixin.get("__class__") == "astropy.time.core.Time":
            names.update(str(v["name"]) for v in mixin.values() if isinstance(v, dict) and "name" in v)
    return names


def table_meta_yaml(schema: pa.Schema) -> str:
    """The ``table_meta_yaml`` document for ``schema``: every field's entry, and the schema metadata
    (source, format, FITS header, VOTable PARAMs ...) as the table's ``meta``, with the mixin columns'
    ``__serialized_columns__`` when the schema holds them (:data:`SERIALIZED_COLUMNS_KEY`)."""
    meta = {
        k.decode(): v.decode()
        for k, v in (schema.metadata or {}).items()
        if not k.decode().startswith(_NOT_META)
    }
    header = {"datatype": [_column_entry(field) for field in schema], "meta": meta}
    serialized = (schema.metadata or {}).get(SERIALIZED_COLUMNS_KEY.encode())
    if serialized is None:
        return yaml.dump(header, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
    # astropy's YAML (its tags: !astropy.table.SerializedColumn) for the mixins' description; loaded only
    # for such tables (astropy takes about a second to import)
    from astropy.io.misc import yaml as astropy_yaml

    meta["__serialized_columns__"] = astropy_yaml.load(serialized.decode())
    for entry in header["datatype"]:
        if entry["name"] in time_components(meta["__serialized_columns__"]):
            # a Time is built from plain numbers: astropy refuses a Quantity jd2 beside a float jd1
            entry.pop("unit", None)
    return str(astropy_yaml.dump(header, sort_keys=False, allow_unicode=True))


def _max_length(column: pa.ChunkedArray | pa.Array) -> int:
    """Longest string (in UTF-8 bytes, at least its characters) of a string column or of the strings
    inside its lists; at least 1."""
    while pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = pc.list_flatten(column)
    longest = pc.max(pc.binary_length(column)).as_py()  # UTF-8 bytes: never fewer than characters
    return max(1, int(longest or 0))


def _stringlike(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind))


def string_lengths(table: pa.Table) -> dict[str, str]:
    """``table::len::<name>`` metadata for each string or binary column of ``table``: the length astropy's
    Parquet reader gives its numpy string dtype, the longest value in bytes (at least its characters,
    at least 1)."""
    return {
        f"table::len::{field.name}": str(_max_length(table.column(i)))
        for i, field in enumerate(table.schema)
        if _stringlike(field.type)
    }
