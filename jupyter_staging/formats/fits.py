"""FITS binary and ASCII tables (astropy.io.fits), read in slices of whole rows.

References: FITS Standard 4.0 (IAU FITS Working Group, 2018), §7.2 (ASCII tables) and §7.3 (binary
tables): ``TTYPEn``, ``TUNITn``, ``TSCALn``/``TZEROn`` (physical = TZERO + TSCAL × stored), ``TNULLn``,
``TDIMn``, logical ``L`` fields (``T``/``F``, 0 for null) and the "unsigned integer" ``TZEROn``
convention (§7.3.2, Table 19).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import conform, native, ndarray_to_arrow, object_array
from jupyter_staging.formats.astropy_meta import SERIALIZED_COLUMNS_KEY
from jupyter_staging.formats.base import Piece, Source, without_paths
from jupyter_staging.formats.compression import compression_of
from jupyter_staging.formats.fits_time import mission_time_yaml
from jupyter_staging.formats.metadata import base_meta, fits_column_meta, fits_header_text, with_metadata

__all__ = ["FITS_SLICE_BYTES", "FitsSource", "images_left_out", "is_table_hdu", "select_fits_hdu"]

#: Raw FITS table bytes read per batch (a slice of whole rows, at most ``chunk_rows`` of them).
FITS_SLICE_BYTES = 16 * 1024 * 1024

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


def _describe_hdu(index: int, hdu: Any) -> str:
    name = hdu.name or ""
    return f"{index} {name} ({type(hdu).__name__})".replace("  ", " ")


def is_table_hdu(hdu: Any) -> bool:
    """Whether an astropy HDU is a binary or ASCII table (a tile-compressed image is not)."""
    # astropy is heavy (about a second to import): loaded only when a FITS file is read
    from astropy.io import fits

    return isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)) and not isinstance(hdu, fits.CompImageHDU)


def _first_table(hdul: Any, count: int, name: str) -> int:
    for index in range(count):
        if is_table_hdu(hdul[index]):
            return index
    listing = ", ".join(_describe_hdu(i, hdul[i]) for i in range(count))
    raise ConversionFailed(
        f"{name} holds no table HDU (HDUs: {listing}); only FITS binary and ASCII tables are "
        "converted to Parquet"
    )


def _named_hdu(hdul: Any, count: int, hdu: int | str, name: str) -> int:
    """Index of HDU ``hdu`` (an index or an EXTNAME, case-insensitive), whatever its kind."""
    if isinstance(hdu, int):
        if not 0 <= hdu < count:
            raise ConversionFailed(f"{name}: HDU {hdu} does not exist; the file has HDUs 0 to {count - 1}")
        return hdu
    matches = [i for i in range(count) if (hdul[i].name or "").upper() == hdu.strip().upper()]
    if not matches:
        names = ", ".join(repr(hdul[i].name) for i in range(count))
        raise ConversionFailed(f"{name}: no HDU named {hdu!r} (names: {names})")
    return matches[0]


#: numpy names of the FITS ``BITPIX`` values (FITS Standard 4.0 §4.4.1.1, Table 8).
_BITPIX_TYPES = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}


def images_left_out(path: Path, hdu: int | str | None) -> tuple[str, list[str]] | None:
    """What converting table ``hdu`` (as :func:`select_fits_hdu` takes it) of FITS file ``path`` leaves out:
    ``("HDU 1 er.mask", ["HDU 0 PRIMARY, 891 x 893 int16"])``, the table converted and each image HDU holding
    data (sizes in pixels, NAXIS1 first); None when the file holds no image data or cannot be read. Reads
    the headers only."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            index = select_fits_hdu(hdul, hdu, path.name)
            images = []
            for i, item in enumerate(hdul):
                header = item.header
                sizes = [int(header.get(f"NAXIS{n}", 0)) for n in range(1, int(header.get("NAXIS", 0)) + 1)]
                if is_table_hdu(item) or not isinstance(item, fits.PrimaryHDU | fits.ImageHDU) or 0 in sizes:
                    continue
                if sizes:
                    kind = _BITPIX_TYPES.get(int(header.get("BITPIX", 0)), f"BITPIX {header.get('BITPIX')}")
                    images.append(f"HDU {i} {item.name}, {' x '.join(map(str, sizes))} {kind}")
            table = f"HDU {index} {hdul[index].name}"
    except Exception:  # a damaged file converted all the same: nothing to say about its images
        return None
    return (table, images) if images else None


def select_fits_hdu(hdul: Any, hdu: int | str | None, name: str) -> int:
    """Index of the table HDU to convert in ``hdul`` (an open ``HDUList``; ``name`` is the file's name
    for messages): ``hdu`` (index, a string of digits, or EXTNAME) or else the first table HDU.

    Raises :class:`ConversionFailed` when the file cannot be read, or there is no such HDU or it is not
    a table.
    """
    try:
        count = len(hdul)
    except Exception as exc:  # astropy raises OSError/ValueError/VerifyError for damaged files
        raise ConversionFailed(f"{name}: not a readable FITS file: {exc}") from None
    if isinstance(hdu, str) and hdu.strip().lstrip("-").isdigit():
        hdu = int(hdu)
    if hdu is None:
        return _first_table(hdul, count, name)
    index = _named_hdu(hdul, count, hdu, name)
    if not is_table_hdu(hdul[index]):
        tables = [_describe_hdu(i, hdul[i]) for i in range(count) if is_table_hdu(hdul[i])]
        hint = f"; table HDUs: {', '.join(tables)}" if tables else "; the file holds no table HDU"
        raise ConversionFailed(
            f"{name}: HDU {_describe_hdu(index, hdul[index])} is not a table{hint}",
        )
    return index


class FitsSource(Source):
    """A FITS binary (``BINTABLE``) or ASCII (``TABLE``) table HDU, read in slices of whole rows.

    Each slice of at most ``FITS_SLICE_BYTES`` of rows is read as raw records and converted column by
    column: big-endian to native, ``TZEROn``/``TSCALn`` applied (offset unsigned integers kept as
    integers, other scaled columns as float64), integer ``TNULLn`` values and logical 0 bytes as nulls,
    trailing blanks of character fields removed, bits (``X``) as booleans, ``TDIMn``/repeat counts as
    nested fixed-size lists, variable-length arrays (``P``/``Q``) as lists (scaled and ``TNULLn`` nulled
    element by element). Float NaNs stay NaN.

    Binary tables without variable-length arrays are read with plain file reads at the data offset, so
    memory (resident set included) stays at a few slices. ASCII tables and tables with a heap are read
    through astropy's memory map (the pages read stay mapped: resident memory grows with the table, as
    reclaimable page cache). Compressed files (``.gz``) are decompressed into memory by astropy.

    ``hdu`` is as for :func:`select_fits_hdu`. Raises :class:`ConversionFailed` when the file is not a
    readable FITS file or the HDU is not a table.
    """

    def __init__(self, path: Path, hdu: int | str | None, chunk_rows: int) -> None:
        # astropy is heavy (about a second to import): loaded only when a FITS file is read
        from astropy.io import fits

        self.path = path
        self.size = path.stat().st_size
        self._file: Any = None
        self._data: Any = None
        try:
            self._hdul = fits.open(path, memmap=True, lazy_load_hdus=True, mode="readonly")
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError for non-FITS bytes
            raise ConversionFailed(
                f"{path.name}: not a readable FITS file: {without_paths(str(exc), path)}"
            ) from None
        try:
            self._open_table(hdu, chunk_rows)
        except ConversionFailed:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise ConversionFailed(
                f"{path.name}: cannot read FITS table: {without_paths(str(exc), path)}"
            ) from None

    def _open_table(self, hdu: int | str | None, chunk_rows: int) -> None:
        """Select the HDU, choose how its rows are read, and build the schema with its metadata."""
        # astropy is heavy (about a second to import): loaded only when a FITS file is read
        from astropy.io import fits

        self.index = select_fits_hdu(self._hdul, hdu, self.path.name)
        self._hdu = self._hdul[self.index]
        self._ascii = isinstance(self._hdu, fits.TableHDU)
        self._columns = list(self._hdu.columns)
        header = self._hdu.header
        row_bytes = max(1, int(header.get("NAXIS1", 1)))
        self._raw_dtype = self._direct_dtype(row_bytes)
        if self._raw_dtype is not None:
            self._data_offset = int(self._hdul.fileinfo(self.index)["datLoc"])
            self.rows = int(header.get("NAXIS2", 0))
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        else:
            self._data = self._hdu.data
            self.rows = 0 if self._data is None else len(self._data)
        self._slice_rows = max(1, min(chunk_rows, FITS_SLICE_BYTES // row_bytes))
        fields_meta = [fits_column_meta(i, c, header) for i, c in enumerate(self._columns)]
        schema = pa.schema([pa.field(c.name, t) for c, t in zip(self._columns, self._types(), strict=True)])
        meta = base_meta(self.path, "fits") | {
            "fits.hdu": str(self.index),
            **({"fits.extname": self._hdu.name} if self._hdu.name else {}),
            "fits.header": fits_header_text(header),
            "fits.primary_header": fits_header_text(self._hdul[0].header),
        }
        time = mission_time_yaml(header, self._columns)
        if time is not None:  # QTable.read(part) gives TIME as a Time, as lightkurve reads it
            meta[SERIALIZED_COLUMNS_KEY] = time
        self.schema = with_metadata(schema, fields_meta, meta)

    def _direct_dtype(self, row_bytes: int) -> np.dtype | None:
        """The raw (big-endian) record dtype when rows can be read with plain file reads, else None."""
        if self._ascii or compression_of(self.path) is not None:
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
        rows of them; a column with ``TSCALn``/``TZEROn`` is float64, as astropy scales it), binary tables
        by converting zero rows."""
        if not self._ascii:
            return [array.type for array in self._convert(0, 0)]
        types = []
        for column in self._columns:
            dtype = np.dtype(column.format.recformat)
            if dtype.kind in "SUa":
                types.append(pa.string())
            elif _scaled(column):
                types.append(pa.float64())
            else:
                types.append(pa.from_numpy_dtype(dtype))
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
        column_to_arrow = _ascii_column if self._ascii else _binary_column
        return [column_to_arrow(records, raw[names[i]], i, column) for i, column in enumerate(self._columns)]

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        start = min(skip_rows, self.rows)
        total = max(1, self.rows)
        while start < self.rows:
            stop = min(self.rows, start + self._slice_rows)
            try:
                arrays = self._convert(start, stop)
            except (OSError, ValueError, TypeError) as exc:
                raise ConversionFailed(
                    f"{self.path.name}: cannot read rows {start}-{stop}: {without_paths(str(exc), self.path)}"
                ) from None
            batch = conform(pa.RecordBatch.from_arrays(arrays, names=self.schema.names), self.schema)
            yield Piece(batch, self.size * start // total, self.size * stop // total)
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


def _scaled(column: Any) -> bool:
    """Whether an ``astropy.io.fits.Column`` has a ``TSCALn`` other than 1 or a ``TZEROn`` other than 0."""
    return column.bscale not in (None, "", 1) or column.bzero not in (None, "", 0)


def _has_null(column: Any) -> bool:
    """Whether an ``astropy.io.fits.Column`` has a ``TNULLn``."""
    return column.null not in (None, "")


def _ascii_column(records: Any, raw: np.ndarray, i: int, column: Any) -> pa.Array:
    """Column ``i`` of an ASCII table slice: astropy's parsed values, ``TNULLn`` text as nulls."""
    values = np.asarray(records.field(i))
    mask = None
    if column.null not in (None, ""):
        mask = np.char.strip(raw) == str(column.null).strip().encode()
    return ndarray_to_arrow(values, mask, rstrip=True)


def _binary_column(records: Any, raw: np.ndarray, i: int, column: Any) -> pa.Array:
    """Column ``i`` of a binary table slice; ``raw`` is its stored (big-endian) values."""
    code = column.format.format
    if code in ("P", "Q") and column.format.p_format in "BIJKED" and (_scaled(column) or _has_null(column)):
        return _scaled_vla(records, raw, column)
    if code in ("P", "Q"):
        return _fits_vla(records.field(i), column.format.p_format)
    if code == "X":  # bits, most significant first (FITS Standard 4.0 §7.3.3.1)
        packed = raw.reshape(raw.shape[0], int(np.prod(raw.shape[1:])))
        bits = np.unpackbits(packed, axis=1)[:, : column.format.repeat]
        return ndarray_to_arrow(bits.astype(np.bool_))
    if code not in _FITS_CODES and code != "A":
        return ndarray_to_arrow(np.asarray(records.field(i)))
    if code == "A":
        return ndarray_to_arrow(raw, rstrip=True)
    if code == "L":
        return ndarray_to_arrow(raw.view(np.uint8) == ord("T"), raw == 0)
    return _scaled_column(native(raw), code, column)


def _scaled_column(values: np.ndarray, code: str, column: Any) -> pa.Array:
    """A numeric column (code ``B I J K E D C M``) with ``TNULLn`` as nulls and ``TZEROn``/``TSCALn``
    applied: offset integers (§7.3.2, Table 19) stay integers, other scaled columns become float64."""
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
    return ndarray_to_arrow(values, mask)


def _scaled_vla(records: Any, descriptors: np.ndarray, column: Any) -> pa.Array:
    """A numeric variable-length array column with ``TSCALn``/``TZEROn`` or ``TNULLn`` (FITS Standard 4.0
    §7.3.5: they apply to each element) -> Arrow list array, read from the heap as stored and scaled as
    :func:`_scaled_column` scales a fixed-length column (astropy scales only some rows of such a column,
    to the stored integer type, and ignores ``TNULLn``). ``descriptors`` are the rows' (count, offset)."""
    code = column.format.p_format
    element = _FITS_CODES[code]
    table_bytes = records._get_raw_data()  # astropy's own access to the table's bytes, heap included
    if table_bytes is None:
        raise ValueError(f"the heap of column {column.name!r} cannot be found")
    heap = table_bytes.view(np.uint8)[records._heapoffset :]
    counts = np.asarray(descriptors[:, 0], dtype=np.int64)
    starts = np.asarray(descriptors[:, 1], dtype=np.int64)
    if counts.sum() >= 2**31:
        raise ValueError("a variable-length array column holds 2**31 or more elements in one slice")
    size = element.itemsize
    pieces = [heap[start : start + count * size] for start, count in zip(starts, counts, strict=True)]
    flat = np.concatenate(pieces).view(element) if pieces else np.empty(0, element)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), _scaled_column(native(flat), code, column))


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
        return object_array(np.asarray(values, dtype=object), None)
    dtype = np.dtype(np.bool_) if p_format == "L" else element.newbyteorder("=")
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    if lengths.sum() >= 2**31:
        raise ValueError("a variable-length array column holds 2**31 or more elements in one slice")
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = native(np.concatenate([np.asarray(v) for v in values])) if len(values) else np.empty(0, dtype)
    if p_format == "L" and flat.dtype != np.bool_:
        flat = flat.view(np.uint8) == ord("T")
    child = ndarray_to_arrow(flat.astype(dtype, copy=False))  # complex -> [re, im] lists
    return pa.ListArray.from_arrays(pa.array(offsets), child)
