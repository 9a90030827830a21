"""Real-world ``TUNITn`` strings: read as a usable unit where that is safe, never as a different one.

The FITS Standard 4.0 §4.3 meaning wins where it defines the string; a string it does not define is read
only when astropy's generic and CDS parsers agree on it; otherwise it stays as written (astropy's own
readers give an ``UnrecognizedUnit``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable
from astropy.units.format import CDS, FITS

from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.units import astropy_unit
from jupyter_staging.kernel.tables import to_qtable

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")

#: TUNIT strings of Kepler, TESS, Spitzer, Gaia, SDSS and other headers, and the unit each one is read as
#: (None: kept as written, an ``UnrecognizedUnit``).
REAL_WORLD = {
    "e-/s": "electron / s",  # Kepler, TESS fluxes (lightkurve's reading)
    "e-/s/pix": "electron / (pix s)",
    "pixel": "pix",
    "pixels": "pix",  # Kepler, TESS POS_CORR
    "BJD - 2454833": "d",  # Kepler TIME
    "BJD - 2457000, days": "d",  # TESS TIME
    "BTJD": "d",
    "mag": "mag",
    "deg": "deg",
    "DEGREES": None,  # no case is guessed (MPC is not mpc)
    "MPC": None,
    "Jy": "Jy",
    "mJy": "mJy",  # Spitzer
    "erg/s/cm**2/Angstrom": "erg / (Angstrom s cm2)",
    "10**-17 erg/s/cm^2/Ang": "1e-17 erg / (Angstrom s cm2)",  # SDSS spectra
    "km s-1": "km / s",
    "km.s-1": "km / s",
    "arcsec": "arcsec",
    "mas/yr": "mas / yr",  # Gaia
    "mas.yr-1": "mas / yr",
    "ct": "ct",
    "counts": "ct",
    "counts/s": "ct / s",
    "counts/sec": "ct / s",
    "ADU": "adu",
    "electrons": "electron",
    "DN/s": "DN / s",
    "sec": "s",
    "days": "d",
    "d": "d",
    "deg C": "deg_C",  # FITS: degrees Celsius; generic read it as coulomb degrees
    "G": "G",  # FITS: gauss (CDS: the gravitational constant)
    "R": "R",  # FITS: rayleigh (CDS: the gas constant)
    "erg/s/cm2/A": "erg / (A s cm2)",  # FITS: A is the ampere, as astropy's FITS reader reads it
    "e/s": None,  # CDS: elementary charges per second, not electrons
    "Gal": None,  # generic: galileo; CDS: giga light-year
    "amp": None,  # generic: ampere; CDS: atto proton mass
    "pct": None,  # generic: percent; CDS: pico count
    "mJD": None,  # CDS: a thousandth of a Julian day, not MJD
    "---": "",
}


@pytest.mark.parametrize(("text", "expected"), list(REAL_WORLD.items()))
def test_real_world_unit_strings(text: str, expected: str | None) -> None:
    assert astropy_unit(text) == expected


def _parse(text: str, fmt: str) -> u.UnitBase | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return u.Unit(text, format=fmt, parse_strict="raise")
    except (ValueError, TypeError):
        return None


def test_no_unit_name_is_read_as_another_unit_than_the_fits_standard_or_astropy_says() -> None:
    """Every unit name astropy knows (FITS, generic, CDS): where the FITS syntax reads it, ours is that
    unit; elsewhere ours is a unit every other syntax that reads it agrees on (time offsets apart)."""
    names = set(CDS._units) | set(FITS._units)  # generic's own names: FITS or generic itself reads them
    wrong = []
    for text in sorted(names):
        ours = astropy_unit(text)
        if ours is None or text == "TJD":  # TJD: truncated Julian date in days (CDS: a tera Julian day)
            continue
        unit = u.Unit(ours) if ours else u.dimensionless_unscaled
        fits_unit = _parse(text, "fits")
        others = [fits_unit] if fits_unit is not None else [_parse(text, "generic"), _parse(text, "cds")]
        wrong += [(text, ours, str(o)) for o in others if o is not None and o != unit]
    assert not wrong


def test_a_fits_file_reads_back_in_the_same_units_as_astropy_reads_it(tmp_path: Path) -> None:
    """Where astropy's FITS reader recognises a TUNIT, the part has exactly that unit; where it does not,
    the part has the unit listed above or the same UnrecognizedUnit."""
    names = [f"c{i}" for i in range(len(REAL_WORLD))]
    columns = [
        fits.Column(name=n, format="D", unit=t, array=np.array([1.5]))
        for n, t in zip(names, REAL_WORLD, strict=True)
    ]
    src = tmp_path / "units.fits"
    fits.BinTableHDU.from_columns(columns).writeto(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = QTable.read(src)
    parts = convert_to_parquet(src, tmp_path / "out")
    part = QTable.read(tmp_path / "out" / parts[0].name, format="parquet")
    for name, (text, expected) in zip(names, REAL_WORLD.items(), strict=True):
        theirs = getattr(reference[name], "unit", None)
        ours = getattr(part[name], "unit", None)
        if theirs is not None and not isinstance(theirs, u.UnrecognizedUnit):
            assert ours == theirs, text
        elif expected is None:  # as written; an ambiguous text astropy's generic parser reads: no unit
            assert ours is None or (isinstance(ours, u.UnrecognizedUnit) and ours.name == text), text
            assert ours is not None or to_qtable(pq.read_table(tmp_path / "out"))[name].unit.name == text
        else:
            assert ours == (u.Unit(expected) if expected else u.dimensionless_unscaled), text
        assert part[name].info.meta.get("original_unit", text) == text
    assert pq.read_table(tmp_path / "out").column("c0").to_pylist() == [1.5]
