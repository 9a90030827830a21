"""FITS table columns astropy scales or reads specially, converted as astropy reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.kernel.tables import to_qtable

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")


def _with_keywords(path: Path, hdu: fits.hdu.base.ExtensionHDU, keywords: dict[str, float]) -> Path:
    """``hdu`` written after a primary HDU with ``keywords`` (``TSCALn``, ``TZEROn``) set in its header
    as they are, without astropy scaling the stored values."""
    for i, value in enumerate(keywords.values()):
        hdu.header[f"XPLACE{i}"] = value  # same card length, renamed below: astropy would rescale
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    data = path.read_bytes()
    for i, key in enumerate(keywords):
        data = data.replace(f"XPLACE{i}".encode(), key.ljust(7).encode()[:7], 1)
    path.write_bytes(data)
    return path


def test_a_scaled_integer_column_of_an_ascii_table_is_read_as_astropy_scales_it(tmp_path: Path) -> None:
    table = fits.TableHDU.from_columns(
        [
            fits.Column(name="flux", format="I5", array=np.array([1, 2, 3])),
            fits.Column(name="n", format="I5", array=np.array([4, 5, 6])),
        ]
    )
    src = _with_keywords(tmp_path / "ascii.fits", table, {"TSCAL1": 0.1, "TZERO1": 5.0})
    reference = fits.getdata(src, 1)
    assert reference["flux"].tolist() == pytest.approx([5.1, 5.2, 5.3])

    convert_to_parquet(src, tmp_path / "out", chunk_rows=2)

    arrow = pq.read_table(tmp_path / "out")
    assert arrow.schema.field("flux").type == pa.float64() and arrow.schema.field("n").type == pa.int32()
    assert arrow.column("flux").to_pylist() == reference["flux"].tolist()
    assert to_qtable(arrow)["n"].tolist() == [4, 5, 6]


def test_scaled_and_null_variable_length_arrays_are_scaled_element_by_element(tmp_path: Path) -> None:
    """FITS Standard 4.0 §7.3.5: TSCALn/TZEROn and TNULLn apply to each element of a ``P``/``Q`` array
    (astropy scales the first row only, keeping it int16, and ignores TNULLn there)."""
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="adu", format="PI()", array=[np.array([1, 2, 3], "i2"), np.array([4], "i2")]),
            fits.Column(name="counts", format="QJ()", array=[np.array([1, -1], "i4"), np.array([], "i4")]),
            fits.Column(name="plain", format="PJ()", array=[np.array([7], "i4"), np.array([8, 9], "i4")]),
        ]
    )
    src = _with_keywords(tmp_path / "vla.fits", table, {"TSCAL1": 0.5, "TZERO1": 100.0, "TNULL2": -1})

    convert_to_parquet(src, tmp_path / "out", chunk_rows=1)

    arrow = pq.read_table(tmp_path / "out")
    assert arrow.column("adu").to_pylist() == [[100.5, 101.0, 101.5], [102.0]]
    assert arrow.column("counts").to_pylist() == [[1, None], []]
    assert arrow.column("plain").to_pylist() == [[7], [8, 9]]
    assert arrow.schema.field("adu").type == pa.list_(pa.float64())
    assert [list(row) for row in to_qtable(arrow)["adu"]] == [[100.5, 101.0, 101.5], [102.0]]
