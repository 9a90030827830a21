"""A job's Parquet output as an astropy ``QTable``: units as ``Quantity``, nulls masked, FITS times as
``Time``.

Units, descriptions and column ``meta`` come from the ``table_meta_yaml`` document the converter writes in
astropy's Parquet convention (:mod:`jupyter_staging.formats.astropy_meta`); the table's ``meta`` holds the
source's metadata (file name, format, FITS header, VOTable PARAMs). Time columns of a FITS table become
``astropy.time.Time`` where its header says how: the FITS time keywords of FITS Standard 4.0 §9
(``TCTYPn``/``TCUNIn``, ``TIMESYS``, ``MJDREF``/``JDREF``, read by ``astropy.io.fits.fitstime``), or the
Kepler/K2/TESS convention (a ``TIME`` column in days since ``BJDREFI`` + ``BJDREFF``, scale ``TIMESYS``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy import units as u
from astropy.io import fits
from astropy.io.fits.fitstime import fits_to_time
from astropy.table import MaskedColumn, QTable, Table
from astropy.table.meta import get_header_from_yaml
from astropy.time import Time

from jupyter_staging.formats.astropy_meta import META_YAML_KEY, time_components
from jupyter_staging.formats.fits_time import TIME_SCALES

__all__ = ["to_qtable"]

log = logging.getLogger(__name__)

#: Column attributes taken from the ``table_meta_yaml`` entries (as astropy's Parquet reader does).
_ATTRIBUTES = ("unit", "description", "format", "meta")


def _yaml_header(schema: pa.Schema) -> dict[str, Any]:
    """The parsed ``table_meta_yaml`` of ``schema`` (``{"datatype": [...], "meta": {...}}``), or empty."""
    text = (schema.metadata or {}).get(META_YAML_KEY.encode())
    if not text:
        return {}
    try:
        return dict(get_header_from_yaml(text.decode().split("\n")))
    except Exception:  # astropy raises its own YAML error type; the columns are still worth having
        log.warning("the Parquet schema's %s could not be read; columns have no units", META_YAML_KEY)
        return {}


def _flatten(array: pa.Array) -> tuple[pa.Array, tuple[int, ...]]:
    """The values below nested fixed-size lists, and the shape those lists give each row."""
    shape: list[int] = []
    rows = len(array)
    while pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        shape.append(size)
        array = array.values.slice(array.offset * size, len(array) * size)
    return array, (rows, *shape)


def _fill_value(kind: pa.DataType) -> Any:
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return ""
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return b""
    if pa.types.is_boolean(kind):
        return False
    return 0


def _to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """One Arrow column as numpy, rows first: fixed-size lists as extra dimensions, nulls masked
    (a ``numpy.ma.MaskedArray``), variable-length lists as an object array of numpy arrays (as astropy's
    Parquet reader gives them), structs as an object array of dicts."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    rows = len(array)
    row_nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    values, shape = _flatten(array)
    if pa.types.is_nested(values.type) or pa.types.is_null(values.type):
        data = np.empty(rows, dtype=object)
        data[:] = _variable_rows(array) or [
            np.asarray(v) if isinstance(v, list) else v for v in array.to_pylist()
        ]
        return np.ma.MaskedArray(data, mask=row_nulls) if row_nulls is not None else data
    element_nulls = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    if element_nulls is not None:
        values = pc.fill_null(values, _fill_value(values.type))
    data = values.to_numpy(zero_copy_only=False)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        data = data.astype(str)
    data = data.reshape(shape)
    mask = np.zeros(shape, dtype=bool)
    if element_nulls is not None:
        mask |= element_nulls.reshape(shape)
    if row_nulls is not None:
        mask |= row_nulls.reshape((rows,) + (1,) * (len(shape) - 1))
    return np.ma.MaskedArray(data, mask=mask) if mask.any() else data


def _variable_rows(array: pa.Array) -> list[np.ndarray] | None:
    """The rows of a variable-length list column (FITS ``P``/``Q`` arrays, VOTable ``arraysize="*"``) as
    numpy arrays of the element type the file gives (``uint8``, ``float32`` ...; ``np.asarray`` of Python
    lists would widen them to int64 / float64), each row's values below fixed-size lists as extra
    dimensions; None for other columns, or when an element is null (those keep their Python values)."""
    if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        return None
    flat = pc.list_flatten(array)
    elements, element_shape = _flatten(flat)
    if pa.types.is_nested(elements.type) or pa.types.is_null(elements.type) or elements.null_count:
        return None
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    data = elements.to_numpy(zero_copy_only=False)
    if pa.types.is_string(elements.type) or pa.types.is_large_string(elements.type):
        data = data.astype(str)
    data = data.reshape(element_shape)
    return np.split(data, np.cumsum(lengths)[:-1]) if len(lengths) else []


#: FITS ``TFORMn`` of a complex column (``C``/``M``, repeated, or a ``P``/``Q`` array of them).
_FITS_COMPLEX = re.compile(r"\s*\d*[PQ]?[CM]\b", re.IGNORECASE)


def _is_complex(field: pa.Field) -> bool:
    """Whether ``field`` holds complex values, kept as ``[re, im]`` pairs (Arrow has no complex type): the
    FITS ``TFORMn`` (FITS Standard 4.0, Table 18: ``C``, ``M``) or VOTable ``datatype`` (``floatComplex``,
    ``doubleComplex``) the converter kept in its metadata says so."""
    meta = field.metadata or {}
    tform = meta.get(b"fits.tform", b"").decode(errors="replace")
    datatype = meta.get(b"votable.datatype", b"").decode(errors="replace")
    return bool(_FITS_COMPLEX.match(tform)) or datatype.endswith("Complex")


def _as_complex(values: Any) -> Any:
    """``[re, im]`` pairs (a last dimension of 2; masked, or an object column of such arrays) as complex
    values without that dimension."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        data = np.empty(len(values), dtype=object)
        data[:] = [_as_complex(v) if isinstance(v, np.ndarray) else v for v in values]
        return np.ma.MaskedArray(data, mask=values.mask) if isinstance(values, np.ma.MaskedArray) else data
    if values.ndim == 0 or values.shape[-1] != 2:
        return values
    pairs = np.ma.getdata(values)
    data = pairs[..., 0] + 1j * pairs[..., 1]
    if isinstance(values, np.ma.MaskedArray):
        return np.ma.MaskedArray(data, mask=np.ma.getmaskarray(values)[..., 0])
    return data


def _fits_header(meta: dict[str, Any]) -> fits.Header | None:
    """The FITS table header kept in the table's ``meta`` (``fits.header``), or None."""
    text = meta.get("fits.header")
    if not isinstance(text, str) or not text:
        return None
    try:
        return fits.Header.fromstring(text, sep="\n")
    except Exception:  # a damaged header: the columns are still worth having
        log.warning("the FITS header kept with the table could not be parsed; times stay numbers")
        return None


def _mission_times(table: Table, header: fits.Header) -> None:
    """A ``TIME`` column in days since ``BJDREFI + BJDREFF`` (Kepler, K2, TESS) as a ``Time`` in
    ``TIMESYS`` (TDB by default), when the header gives that reference."""
    name = next((n for n in table.colnames if n.upper() == "TIME"), None)
    if name is None or isinstance(table[name], Time) or "BJDREFI" not in header:
        return
    if str(header.get("TIMEUNIT", "d")).strip().lower() not in ("d", "day", "days"):
        return
    scale = str(header.get("TIMESYS", "TDB")).strip().lower()
    if scale not in TIME_SCALES:  # e.g. GPS: never read as another scale
        log.warning("TIMESYS %r is not an astropy time scale; TIME stays days", scale.upper())
        return
    column = table[name]
    days = column.filled(np.nan) if isinstance(column, MaskedColumn) else np.asarray(column)
    time = Time(
        np.full(len(days), float(header["BJDREFI"])),
        np.asarray(days, dtype=np.float64) + float(header.get("BJDREFF", 0.0)),
        format="jd",
        scale=scale,
    )
    time.format = "jd"
    table.replace_column(name, time)


def to_qtable(table: pa.Table) -> QTable:
    """``table`` (Parquet parts the converter wrote, as one ``pyarrow.Table``) as an astropy ``QTable``.

    Rows and column names are the Arrow table's. Columns with a unit are ``Quantity`` (the unit astropy
    reads from the ``table_meta_yaml`` entry; the source's original spelling is in the column's
    ``info.meta['original_unit']`` when it differs, e.g. ``e-/s`` read as ``electron / s``; a unit astropy
    cannot parse, e.g. ``DEGREES``, is an ``UnrecognizedUnit`` of its text, as astropy's readers give it);
    nulls are masked; fixed-size lists are extra dimensions; variable-length lists are object columns.
    FITS time columns become ``Time`` as the module docstring says; mixin columns astropy split into plain
    ones (an ECSV ``Time`` or ``SkyCoord``) are rebuilt. ``meta`` holds the source's metadata.

    Raises ``ValueError`` from astropy when a column cannot be represented (it names the column).
    """
    header = _yaml_header(table.schema)
    entries = {entry["name"]: entry for entry in header.get("datatype") or [] if "name" in entry}
    result = Table(meta=dict(header.get("meta") or {}))
    times = time_components(result.meta.get("__serialized_columns__") or {})
    for field, column in zip(table.schema, table.columns, strict=True):
        name = field.name
        values = _to_numpy(column)
        if _is_complex(field):
            values = _as_complex(values)
        cls = MaskedColumn if isinstance(values, np.ma.MaskedArray) else None
        result[name] = cls(values, name=name) if cls is not None else values
        for attribute in _ATTRIBUTES:
            if attribute in entries.get(name, {}):
                setattr(result[name], attribute, entries[name][attribute])
        original = (result[name].meta or {}).get("original_unit")
        if result[name].unit is None and name not in times and isinstance(original, str) and original.strip():
            # parts of converters that left a unit astropy cannot parse out of the YAML: as astropy's
            # readers give it, an UnrecognizedUnit of its text
            result[name].unit = u.UnrecognizedUnit(original.strip())  # not parsed: Gal is no galileo
    if "__serialized_columns__" in result.meta:
        result = _mixins(result)
    fits_header = _fits_header(result.meta)
    if fits_header is not None:
        _fits_times(result, fits_header)
    _mask_missing_times(result)
    return QTable(result)


#: The Julian date put under the mask of a missing time (J2000.0): any valid one would do.
_J2000 = 2451545.0


def _mask_missing_times(table: Table) -> None:
    """Mask the values of ``Time`` columns that are NaN (a Kepler / TESS cadence without a time): unmasked,
    a Time of NaN prints as year -4713 (``isot``) and fails ``datetime64`` for its whole column."""
    for name in table.colnames:
        column = table[name]
        if isinstance(column, Time):
            missing = np.isnan(column.jd1) | np.isnan(column.jd2)
            if missing.any():  # a valid time under the mask first: astropy converts masked values too
                column[missing] = Time(_J2000, format="jd", scale=column.scale)
                column[missing] = np.ma.masked


def _mixins(table: Table) -> Table:
    """``table`` with its mixin columns (``Time``, ``SkyCoord`` ...) rebuilt from the plain columns astropy
    split them into, as the meta's ``__serialized_columns__`` describes them (astropy's ECSV and Parquet
    readers do the same); the plain columns, with a warning, when they cannot be."""
    from astropy.table import serialize

    try:
        # astropy's own step for this in each of its readers (no public name for it)
        return serialize._construct_mixins_from_columns(table)
    except Exception as exc:  # a description astropy no longer reads: the columns are still worth having
        log.warning("mixin columns could not be rebuilt (%s); they stay plain columns", type(exc).__name__)
        table.meta.pop("__serialized_columns__", None)
        return table


def _fits_times(table: Table, header: fits.Header) -> None:
    """Time columns as astropy's FITS reader makes them (``fits_to_time``, with the units as the FITS
    file spells them, so ``BJD - 2454833`` is not taken for days since MJD 0), then the mission convention."""
    mapped = {}
    for name in table.colnames:
        if isinstance(table[name], Time):  # made by the part's own description (a Kepler/TESS TIME)
            continue
        original = (table[name].info.meta or {}).get("original_unit")
        if original is not None:
            mapped[name] = table[name].unit
            table[name].unit = u.Unit(original, format="fits", parse_strict="silent")
    try:
        fits_to_time(header, table)
    except Exception:  # astropy raises several error types for time keywords it cannot use
        log.warning("the FITS time keywords could not be applied; times stay numbers", exc_info=True)
    for name, unit in mapped.items():
        if not isinstance(table[name], Time):
            table[name].unit = unit
    _mission_times(table, header)
