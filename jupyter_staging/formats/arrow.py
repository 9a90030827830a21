"""numpy columns to Arrow arrays, and record batches conformed to a schema.

Used by the readers that decode into numpy first (FITS, VOTable, ECSV read by astropy): rows come first,
extra dimensions become nested fixed-size lists, masked entries become nulls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["conform", "native", "ndarray_to_arrow", "object_array"]


def native(values: np.ndarray) -> np.ndarray:
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


def object_array(values: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    """1-d object array (variable-length arrays, Python strings) -> Arrow; rows where ``mask`` is set are
    nulls; complex values become ``[re, im]`` pairs."""
    items: list[Any] = []
    for i, item in enumerate(values):
        if mask is not None and mask[i]:
            items.append(None)
        elif isinstance(item, np.ndarray):
            items.append(_pairs(item).tolist() if item.dtype.kind == "c" else item.tolist())
        elif isinstance(item, complex | np.complexfloating):
            items.append([item.real, item.imag])
        elif isinstance(item, np.generic):
            items.append(item.item())
        else:
            items.append(item)
    return pa.array(items)


def _pairs(values: np.ndarray) -> np.ndarray:
    """Complex ``values`` as real ``[re, im]`` pairs (a new last dimension of 2)."""
    return np.stack([values.real, values.imag], axis=-1)


def _flat_mask(mask: np.ndarray | None, values: np.ndarray) -> np.ndarray | None:
    """``mask`` (rows, or rows × some leading dimensions) broadcast over ``values`` and flattened."""
    if mask is None:
        return None
    full = np.broadcast_to(mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)), values.shape)
    return np.ascontiguousarray(full).reshape(-1)


def _flat_to_arrow(flat: np.ndarray, flat_mask: np.ndarray | None, *, rstrip: bool) -> pa.Array:
    """A 1-d native-order numpy array -> Arrow: strings, complex as ``[re, im]`` lists, float16 widened."""
    if flat.dtype.kind in "SU":
        arr = _strings(flat, rstrip=rstrip)
        if flat_mask is not None:
            arr = pc.if_else(pa.array(flat_mask), pa.scalar(None, pa.string()), arr)
        return arr
    if flat.dtype.kind == "c":  # a strided slice of a record array cannot be viewed in place
        parts = np.ascontiguousarray(flat).view(np.float32 if flat.dtype.itemsize == 8 else np.float64)
        arr = pa.FixedSizeListArray.from_arrays(pa.array(parts), 2)
        if flat_mask is not None:
            arr = pc.if_else(pa.array(flat_mask), pa.scalar(None, arr.type), arr)
        return arr
    if flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    return pa.array(flat, mask=flat_mask)


def _empty_lists(values: np.ndarray, mask: np.ndarray | None, *, rstrip: bool) -> pa.Array:
    """Rows of a column with a zero-length dimension as empty lists of its element type (masked rows
    null)."""
    element = _flat_to_arrow(np.empty(0, dtype=values.dtype), None, rstrip=rstrip).type
    rows: list[bool] = [False] * len(values)
    if mask is not None:
        per_row = np.any(np.asarray(mask).reshape(len(values), -1), axis=1).tolist()
        rows = [bool(masked) for masked in per_row]
    return pa.array([None if masked else [] for masked in rows], type=pa.list_(element))


def ndarray_to_arrow(values: np.ndarray, mask: np.ndarray | None = None, *, rstrip: bool = False) -> pa.Array:
    """A numpy column (rows first; extra dimensions become nested fixed-size lists) -> Arrow array.

    ``mask`` (bool, rows first) and the mask of a masked array mark nulls. Complex values become
    fixed-size lists of two floats ``[re, im]`` (Arrow has no complex type); float16 widens to float32;
    ``rstrip`` removes trailing blanks of strings. Object arrays go through :func:`object_array`. A
    column with a zero-length dimension (FITS ``TFORMn = '0D'``, VOTable ``arraysize="0"``) becomes a
    list column of empty lists (Arrow has no fixed-size list of size 0).
    """
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values) if mask is None else mask | np.ma.getmaskarray(values)
        values = values.data
    values = np.asarray(values)
    if mask is not None and not mask.any():
        mask = None
    if values.dtype.kind == "O":
        return object_array(values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values, mask)
    values = native(values)
    shape = values.shape[1:]
    if 0 in shape:
        return _empty_lists(values, mask, rstrip=rstrip)
    arr = _flat_to_arrow(values.reshape(-1), _flat_mask(mask, values), rstrip=rstrip)
    return _nest(arr, shape) if shape else arr


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema`` (types cast where they differ, metadata replaced).

    Raises :class:`pyarrow.ArrowInvalid` when a column cannot be cast.
    """
    columns = []
    for column, field in zip(batch.columns, schema, strict=True):
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
