"""Units astropy cannot parse (``TUNITn = 'DEGREES'``): kept as astropy's own readers keep them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable

from jupyter_staging.formats.astropy_meta import META_YAML_KEY, astropy_unit
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.kernel.tables import to_qtable

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")

#: TUNITn values astropy's FITS reader does not parse (``UnrecognizedUnit``), and ones it does.
UNITS = {"ra": "DEGREES", "dist": "MPC", "age": "MYR", "nu": "MHZ", "flux": "mJy", "v": "km s-1"}


def _units_file(path: Path) -> Path:
    columns = [fits.Column(name=n, format="D", unit=t, array=np.array([1.5, 2.5])) for n, t in UNITS.items()]
    fits.BinTableHDU.from_columns(columns).writeto(path)
    return path


def _astropy_units(table: QTable) -> dict[str, u.UnitBase | None]:
    return {name: getattr(table[name], "unit", None) for name in table.colnames}


def test_units_astropy_cannot_parse_are_the_units_astropy_gives(tmp_path: Path) -> None:
    src = _units_file(tmp_path / "units.fits")
    parts = convert_to_parquet(src, tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _astropy_units(QTable.read(src))
    assert isinstance(reference["ra"], u.UnrecognizedUnit) and reference["flux"] == u.mJy

    ours = to_qtable(pq.read_table(tmp_path / "out"))
    assert _astropy_units(ours) == reference  # DEGREES, and MPC not read as milliparsec
    assert ours["ra"].info.meta["original_unit"] == "DEGREES"
    assert isinstance(ours["ra"], u.Quantity) and ours["ra"].value.tolist() == [1.5, 2.5]
    part = QTable.read(tmp_path / "out" / parts[0].name, format="parquet")
    assert _astropy_units(part) == reference
    assert pq.read_schema(tmp_path / "out" / parts[0].name).field("ra").metadata[b"unit"] == b"DEGREES"


@pytest.mark.parametrize("text", ["MPC", "MYR", "MHZ", "DEGREES"])
def test_the_case_of_a_unit_is_never_guessed(text: str) -> None:
    assert astropy_unit(text) is None  # not "mpc" (milliparsec) for a megaparsec


def test_parts_without_the_unit_in_their_yaml_still_read_with_the_original_unit(tmp_path: Path) -> None:
    """Parts an earlier converter wrote left such a unit out of ``table_meta_yaml`` (only
    ``original_unit`` in the column's meta): ``to_table()`` still gives astropy's ``UnrecognizedUnit``."""
    convert_to_parquet(_units_file(tmp_path / "units.fits"), tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    header = yaml.safe_load(table.schema.metadata[META_YAML_KEY.encode()])
    for entry in header["datatype"]:
        if entry["name"] == "ra":
            entry.pop("unit", None)
    old = table.replace_schema_metadata(
        table.schema.metadata | {META_YAML_KEY.encode(): yaml.safe_dump(header).encode()}
    )
    assert isinstance(old, pa.Table)
    ours = to_qtable(old)
    assert ours["ra"].unit == u.Unit("DEGREES", parse_strict="silent")
    assert isinstance(ours["ra"].unit, u.UnrecognizedUnit)
