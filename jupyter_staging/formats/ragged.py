"""CSV/TSV files whose rows have fewer fields than their header (a short last row, a missing trailing
field), which pyarrow's streaming reader refuses: read whole by astropy, up to a size."""

from __future__ import annotations

import codecs
from pathlib import Path

import pyarrow as pa

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import ndarray_to_arrow
from jupyter_staging.formats.base import TableSource, without_paths
from jupyter_staging.formats.csv import CSV_NULLS, shown_encoding
from jupyter_staging.formats.metadata import base_meta, with_metadata

__all__ = ["RAGGED_MAX_BYTES", "read_ragged"]

#: Largest CSV/TSV file read whole by astropy when its rows have fewer fields than its header, bytes.
RAGGED_MAX_BYTES = 256 * 1024 * 1024


def read_ragged(path: Path, fmt: str, chunk_rows: int, encoding: str = "utf-8") -> TableSource:
    """A CSV/TSV file whose rows have fewer fields than its header, read whole as astropy reads it
    (``Table.read(format="ascii.csv" | "ascii.tab")``, text in ``encoding``): missing fields and the
    streamed reader's null spellings (``CSV_NULLS``: ``""``, ``NA``, ``NULL`` ...) are masked, then
    nulls; ``nan`` stays floating-point NaN.

    Memory is the whole table. Raises :class:`ConversionFailed` when the file is larger than
    ``RAGGED_MAX_BYTES`` or astropy cannot read it either (a row longer than the header).
    """
    # astropy is heavy (about a second to import): loaded only when such a file is read
    from astropy.table import Table

    size = path.stat().st_size
    if size > RAGGED_MAX_BYTES:
        raise ConversionFailed(
            f"{path.name}: some rows have fewer fields than the header; files over "
            f"{RAGGED_MAX_BYTES // (1024 * 1024)} MiB with such rows are not converted"
        )
    try:
        # utf-8-sig: a byte-order mark (Excel's) is not part of the first column's name, as for pyarrow
        text = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
        table = Table.read(
            path,
            format="ascii.tab" if fmt == "tsv" else "ascii.csv",
            encoding=text,
            fill_values=[(null, "0") for null in CSV_NULLS],  # masked, and typed as the other values
        )
    except UnicodeDecodeError:
        raise ConversionFailed(
            f"{path.name}: not {shown_encoding(encoding)} text (a binary file, or another encoding); give "
            "the file's encoding (convert option encoding='latin-1', say) or save it as UTF-8 to convert it"
        ) from None
    except Exception as exc:  # astropy raises many error types for inconsistent text tables
        raise ConversionFailed(
            f"{path.name}: rows and header disagree: {without_paths(str(exc), path)}"
        ) from None
    arrays = [ndarray_to_arrow(table[name]) for name in table.colnames]
    arrow = pa.table(arrays, names=table.colnames)
    schema = with_metadata(arrow.schema, [{} for _ in arrays], base_meta(path, fmt))
    return TableSource(pa.Table.from_arrays(arrow.columns, schema=schema), size, chunk_rows)
