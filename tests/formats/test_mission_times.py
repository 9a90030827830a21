"""Kepler and TESS light curves: ``TIME`` read back from a part as lightkurve reads the original file.

Each file gives ``TIME`` in days since ``BJDREFI`` + ``BJDREFF`` in scale ``TIMESYS``; its ``TUNITn`` is
``BJD - 2454833`` (Kepler) or ``BJD - 2457000, days`` (TESS). astropy's FITS reader gives both as numbers
with an ``UnrecognizedUnit``; lightkurve as ``Time(TIME + BJDREFI + BJDREFF, scale=TIMESYS)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable
from astropy.time import Time

from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.kernel.tables import to_qtable
from tests.helpers.data import KEPLER, TESS

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")


def _reference(src: Path) -> tuple[Time, np.ndarray]:
    """The original file's times as lightkurve makes them, and its raw ``TIME`` values."""
    header = fits.getheader(src, 1)
    raw = np.asarray(fits.getdata(src, 1)["TIME"], dtype=np.float64)
    time = Time(
        float(header["BJDREFI"]),
        raw + float(header["BJDREFF"]),
        format="jd",
        scale=header["TIMESYS"].strip().lower(),
    )
    return time, raw


def _same_instants(ours: Time, expected: Time) -> None:
    assert ours.scale == expected.scale and len(ours) == len(expected)
    np.testing.assert_array_equal(ours.jd1, expected.jd1)  # to the bit, NaN (no time) where NaN
    np.testing.assert_array_equal(ours.jd2, expected.jd2)


@pytest.mark.parametrize("src", [KEPLER, TESS], ids=["kepler", "tess"])
def test_a_part_reads_back_time_as_a_time_at_the_files_reference(src: Path, tmp_path: Path) -> None:
    expected, raw = _reference(src)
    parts = convert_to_parquet(src, tmp_path / "out", chunk_rows=5000)

    start = 0
    for part in parts:
        table = QTable.read(tmp_path / "out" / part.name, format="parquet")
        assert isinstance(table["TIME"], Time), type(table["TIME"])
        _same_instants(table["TIME"], expected[start : start + len(table)])
        assert table["TIME"].info.meta["original_unit"] == fits.getheader(src, 1)["TUNIT1"]
        start += len(table)
    assert start == len(raw)
    # pyarrow and pandas see the file's own numbers
    arrow = pq.read_table(tmp_path / "out").column("TIME").to_numpy()
    np.testing.assert_array_equal(arrow, raw)


@pytest.mark.parametrize("src", [KEPLER, TESS], ids=["kepler", "tess"])
def test_to_table_gives_the_same_times(src: Path, tmp_path: Path) -> None:
    expected, _ = _reference(src)
    convert_to_parquet(src, tmp_path / "out", chunk_rows=5000)
    table = to_qtable(pq.read_table(tmp_path / "out"))
    _same_instants(table["TIME"], expected)
    assert table["TIME"].info.description == "column title: data time stamps"


def test_tess_time_unit_is_days(tmp_path: Path) -> None:
    """``BJD - 2457000, days`` is days since a reference date, as Kepler's ``BJD - 2454833``."""
    src = tmp_path / "tess_like.fits"
    columns = [fits.Column(name="T", format="D", unit="BJD - 2457000, days", array=np.array([1.5, 2.5]))]
    fits.BinTableHDU.from_columns(columns).writeto(src)
    parts = convert_to_parquet(src, tmp_path / "out")
    table = QTable.read(tmp_path / "out" / parts[0].name, format="parquet")
    assert table["T"].unit == u.day and table["T"].value.tolist() == [1.5, 2.5]


def _light_curve(path: Path, unit: str, **cards: object) -> Path:
    hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name="TIME", format="D", unit=unit, array=np.array([1.25, 2.5]))]
    )
    for key, value in cards.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


@pytest.mark.parametrize(
    ("unit", "cards"),
    [
        ("BJD - 2454833", {"BJDREFI": 2457000, "BJDREFF": 0.0, "TIMESYS": "TDB"}),  # which reference?
        ("BJD - 2454833", {"BJDREFI": 2454833, "BJDREFF": 0.0, "TIMESYS": "GPS"}),  # no such astropy scale
        ("BJD - 2454833", {"BJDREFI": 2454833, "BJDREFF": 0.5, "TIMESYS": "TDB"}),  # a fraction: to_table
        ("s", {"BJDREFI": 2454833, "BJDREFF": 0.0, "TIMESYS": "TDB"}),  # not days
    ],
)
def test_no_time_is_claimed_where_the_header_does_not_say_which(
    unit: str, cards: dict, tmp_path: Path
) -> None:
    src = _light_curve(tmp_path / "lc.fits", unit, **cards)
    parts = convert_to_parquet(src, tmp_path / "out")
    table = QTable.read(tmp_path / "out" / parts[0].name, format="parquet")
    assert not isinstance(table["TIME"], Time)
    assert table["TIME"].value.tolist() == [1.25, 2.5]


def test_a_reference_fraction_is_applied_by_to_table(tmp_path: Path) -> None:
    src = _light_curve(tmp_path / "lc.fits", "BJD - 2454833", BJDREFI=2454833, BJDREFF=0.5, TIMESYS="TDB")
    convert_to_parquet(src, tmp_path / "out")
    table = to_qtable(pq.read_table(tmp_path / "out"))
    assert isinstance(table["TIME"], Time)
    np.testing.assert_array_equal(table["TIME"].jd, [2454834.75, 2454836.0])


def test_a_time_system_astropy_lacks_is_not_read_as_tdb(tmp_path: Path) -> None:
    """``TIMESYS = 'GPS'`` (no astropy scale): TIME stays days (it was a TDB ``Time``, about 51 s off)."""
    src = _light_curve(tmp_path / "lc.fits", "BJD - 2454833", BJDREFI=2454833, BJDREFF=0.0, TIMESYS="GPS")
    convert_to_parquet(src, tmp_path / "out")
    table = to_qtable(pq.read_table(tmp_path / "out"))
    assert not isinstance(table["TIME"], Time)
    assert table["TIME"].unit == u.day and table["TIME"].value.tolist() == [1.25, 2.5]
