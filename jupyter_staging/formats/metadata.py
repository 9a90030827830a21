"""Source metadata as Arrow metadata: units, UCDs, descriptions per field; headers and tables per schema.

Column units, UCDs and descriptions travel as Arrow field metadata (``unit``, ``ucd``, ``description``);
the source header travels as schema metadata, which Parquet stores as file key-value metadata (Apache
Parquet format, ``FileMetaData.key_value_metadata``; Arrow keeps its schema, field metadata included, under
the key ``ARROW:schema``). Readers that ignore Arrow metadata still find every column's unit, UCD and
description in the JSON under the key ``jupyter_staging.columns``.

References:

- FITS Standard 4.0 (IAU FITS Working Group, 2018), §7.2 (ASCII tables) and §7.3 (binary tables):
  ``TTYPEn``, ``TUNITn``, ``TFORMn``, ``TDIMn``, ``TDISPn``. ``TUCDn`` and ``TCOMMn`` are the STIL/TOPCAT
  conventions, used if present.
- IVOA VOTable 1.4 (2019): ``FIELD`` attributes ``unit``, ``ucd``, ``utype``, ``datatype``,
  ``arraysize``, the ``DESCRIPTION`` element, ``PARAM`` and ``INFO``.
- ECSV 1.0: per-column ``unit``, ``description`` and ``meta`` (``meta.ucd``), table ``meta``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jupyter_staging._version import __version__
from jupyter_staging.formats.astropy_meta import META_YAML_KEY, table_meta_yaml

__all__ = [
    "base_meta",
    "dumps",
    "ecsv_field_meta",
    "field_meta",
    "fits_column_meta",
    "fits_header_text",
    "votable_field_meta",
    "votable_param",
    "votable_unit",
    "unique_names",
    "with_metadata",
]

#: Field metadata keys also gathered, per column, into the ``jupyter_staging.columns`` JSON.
_DESCRIBED = (b"unit", b"ucd", b"description")


def _blank(value: Any) -> bool:
    """Whether an attribute value is absent: None or an empty string (an empty array is a value)."""
    return value is None or (isinstance(value, str | bytes) and not value)


def _json_default(value: Any) -> Any:
    if hasattr(value, "unit") and hasattr(value, "to_value"):  # an astropy Quantity: value + unit
        return {"value": value.to_value(), "unit": value.unit.to_string()}
    if isinstance(value, np.ma.MaskedArray):
        return np.ma.masked_array(value, dtype=object).filled(None).tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def dumps(value: Any) -> str:
    """``value`` as JSON text; numpy values become Python ones (masked entries null), an astropy
    ``Quantity`` ``{"value": ..., "unit": "..."}``, bytes UTF-8 text, anything else ``str``."""
    return json.dumps(value, default=_json_default, ensure_ascii=False)


def field_meta(**items: Any) -> dict[bytes, bytes]:
    """Field metadata from the non-empty ``items`` (``unit``, ``ucd``, ``description``, ...).

    A double underscore in a key becomes a dot: ``fits__tform`` is stored as ``fits.tform``.
    """
    meta = {}
    for key, value in items.items():
        if _blank(value):
            continue
        meta[key.replace("__", ".").encode()] = str(value).encode()
    return meta


def base_meta(path: Path, fmt: str) -> dict[str, str]:
    """The schema metadata every part carries: source file name, its format, this converter's version."""
    return {
        "jupyter_staging.source": path.name,
        "jupyter_staging.format": fmt,
        "jupyter_staging.converter_version": __version__,
    }


def unique_names(names: list[str]) -> list[str]:
    """``names`` with each repeated one made unique as ``astropy.io.ascii`` does: the second ``ra`` becomes
    ``ra_1``, the third ``ra_2`` (a number further on when that name is taken). A TAP join (``SELECT a.ra,
    b.ra``) or a CSV header can repeat a name; Parquet keeps both columns, but no reader can then pick one."""
    taken = set(names)
    seen: set[str] = set()
    unique = []
    for name in names:
        if name in seen:
            n = 1
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        seen.add(name)
        unique.append(name)
    return unique


def with_metadata(
    schema: pa.Schema, fields_meta: list[dict[bytes, bytes]], schema_meta: dict[str, str]
) -> pa.Schema:
    """``schema`` with per-field metadata added and ``schema_meta`` merged into its metadata.

    ``fields_meta`` has one dict per field, in order. A repeated column name is made unique
    (:func:`unique_names`), the name in the source kept as the field's ``original_name``: batches are
    matched to the schema by position (:func:`~jupyter_staging.formats.arrow.conform`). Also records every
    column's ``unit``/``ucd``/``description`` as JSON under ``jupyter_staging.columns`` so readers that ignore
    Arrow field metadata still see them, and writes them in astropy's Parquet convention under
    ``table_meta_yaml`` (:mod:`jupyter_staging.formats.astropy_meta`) unless the schema holds one.
    """
    fields = []
    columns: dict[str, dict[str, str]] = {}
    names = unique_names(schema.names)
    for field, extra, name in zip(schema, fields_meta, names, strict=True):
        meta = dict(field.metadata or {})
        meta.update(extra)
        if name != field.name:
            meta[b"original_name"] = field.name.encode()
            field = field.with_name(name)
        fields.append(field.with_metadata(meta) if meta else field)
        described = {k.decode(): meta[k].decode() for k in _DESCRIBED if k in meta}
        if described:
            columns[field.name] = described
    merged = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    merged.update(schema_meta)
    if columns:
        merged["jupyter_staging.columns"] = dumps(columns)
    result = pa.schema(fields, metadata={k.encode(): v.encode() for k, v in merged.items()})
    if META_YAML_KEY not in merged:
        result = result.with_metadata(
            result.metadata | {META_YAML_KEY.encode(): table_meta_yaml(result).encode()}
        )
    return result


# FITS


def fits_header_text(header: Any) -> str:
    """A FITS header (``astropy.io.fits.Header``) as text: one card image per line, trailing blanks
    removed."""
    text = header.tostring(sep="\n", endcard=False, padding=False)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def fits_column_meta(i: int, column: Any, header: Any) -> dict[bytes, bytes]:
    """Field metadata of table column ``i`` (0-based; an ``astropy.io.fits.Column``) from its HDU ``header``.

    ``unit`` from ``TUNITn``, ``ucd`` from ``TUCDn``, ``description`` from ``TCOMMn`` or else the comment
    of ``TTYPEn``; ``fits.tform``, ``fits.tdim``, ``fits.tdisp`` as written.
    """
    n = i + 1
    comment = header.comments[f"TTYPE{n}"] if f"TTYPE{n}" in header else ""
    return field_meta(
        unit=column.unit,
        ucd=header.get(f"TUCD{n}"),
        description=header.get(f"TCOMM{n}") or comment,
        fits__tform=header.get(f"TFORM{n}"),
        fits__tdim=header.get(f"TDIM{n}"),
        fits__tdisp=header.get(f"TDISP{n}"),
    )


# VOTable


def votable_unit(unit: Any) -> str | None:
    """An astropy unit as VOTable text (CDS syntax, as astropy writes VOTables, VOTable 1.4 §4.3)."""
    if unit is None:
        return None
    try:
        return unit.to_string("cds")
    except Exception:  # a unit CDS cannot express
        return str(unit)


def votable_param(param: Any, level: str) -> dict[str, Any]:
    """A VOTable ``PARAM`` as a JSON-ready dict of its non-empty attributes; ``level`` says where it sat
    (``'VOTABLE' | 'RESOURCE' | 'TABLE'``)."""
    value = param.value
    if isinstance(value, np.ma.MaskedArray):
        value = np.ma.masked_array(value, dtype=object).filled(None).tolist()
    elif isinstance(value, np.ndarray):  # an array PARAM (arraysize), kept as a list
        value = value.tolist()
    return {
        k: v
        for k, v in {
            "level": level,
            "name": param.name,
            "ID": param.ID,
            "value": value,
            "datatype": param.datatype,
            "arraysize": param.arraysize,
            "unit": votable_unit(param.unit),
            "ucd": param.ucd,
            "utype": param.utype,
            "description": param.description,
        }.items()
        if not _blank(v)
    }


def votable_field_meta(field: Any) -> dict[bytes, bytes]:
    """Field metadata of a VOTable ``FIELD``: ``unit``, ``ucd``, ``description``, ``utype`` and
    ``votable.datatype``/``votable.arraysize``/``votable.xtype``."""
    return field_meta(
        unit=votable_unit(field.unit),
        ucd=field.ucd,
        description=field.description,
        utype=field.utype,
        votable__datatype=field.datatype,
        votable__arraysize=field.arraysize,
        votable__xtype=field.xtype,
    )


# ECSV


def ecsv_field_meta(
    unit: str | None, description: str | None, meta: dict[str, Any] | None
) -> dict[bytes, bytes]:
    """Field metadata of an ECSV column: ``unit``, ``description``, ``ucd`` from ``meta['ucd']`` and the
    rest of the column's ``meta`` as JSON under ``ecsv.meta``."""
    extra = dict(meta or {})
    return field_meta(
        unit=unit,
        ucd=extra.pop("ucd", None),
        description=description,
        ecsv__meta=dumps(extra) if extra else None,
    )
