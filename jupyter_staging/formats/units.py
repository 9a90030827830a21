"""Unit text of FITS, VOTable and ECSV files as astropy units, never as a different physical unit.

The FITS Standard 4.0 (IAU FITS Working Group, 2018) §4.3 defines unit strings (Tables 3-6: SI and
astronomy units, prefixes, ``10**k`` factors); astropy's ``fits`` format implements it. A text the standard
defines is read as the standard says, whatever the other syntaxes make of it (``deg C`` is degrees Celsius,
not coulomb degrees; ``G`` is gauss, not CDS's gravitational constant). A text it does not define is read by
astropy's generic and CDS parsers (VOTable 1.4 §4.3) only when each of them that reads it gives the same
unit (``sec`` is a second, ``DN/s`` a data number per second); when they differ (``Gal``: a galileo, or a
CDS giga light-year; ``amp``: an ampere, or CDS's atto proton mass) it is ambiguous and kept as written,
as astropy's own readers keep it (an ``UnrecognizedUnit``). The case of a text is never changed: ``MPC`` is
not read as ``mpc`` (milliparsec).

Mission spellings astropy does not parse (Kepler, K2, TESS, SDSS headers) are mapped word by word first:
``e-`` and ``electrons`` are ``electron`` (as lightkurve reads them), ``counts``/``cts`` ``ct``, ``pixels``
``pix``, ``days`` ``d``, ``sec`` ``s``, ``ADU`` ``adu``, ``Ang`` ``Angstrom`` (SDSS
``10**-17 erg/s/cm^2/Ang``). A time offset written as a unit (``BJD - 2454833``, ``BJD - 2457000, days``,
``BTJD``, ``MJD``) is days since a reference date, which the header gives (``BJDREFI`` + ``BJDREFF``).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

__all__ = ["TIME_OFFSET", "astropy_unit", "parses_as_generic"]

#: Whole unit texts of mission files mapped as they are (Kepler, K2, TESS light curves).
_MISSION_UNITS = {
    "e-/s": "electron / s",
    "e-": "electron",
    "e-/s/pix": "electron / (s pix)",
    "pixels": "pix",
}
#: Words of unit texts astropy does not parse, and the unit each one names (case as written).
_WORDS = {
    "electrons": "electron",
    "counts": "ct",
    "cts": "ct",
    "pixels": "pix",
    "days": "d",
    "hours": "h",
    "seconds": "s",
    "sec": "s",
    "ADU": "adu",
    "Ang": "Angstrom",
    "Angstroms": "Angstrom",
    "ergs": "erg",
}
_WORD = re.compile(r"(?<![A-Za-z_])(" + "|".join(_WORDS) + r")(?![A-Za-z_])")
#: ``e-`` (electrons) as a word: not the exponent of ``1e-17``.
_ELECTRON = re.compile(r"(?<![\w.])e-(?![\w.])")
#: A time offset written as a unit: ``BJD - 2454833``, ``BJD - 2457000, days``, ``BTJD``: days since a
#: reference Julian date. Upper case only: CDS reads ``mJD`` as a milli Julian day, ``hJD`` a hecto one.
TIME_OFFSET = re.compile(
    r"^\s*(?:BJD|BKJD|BTJD|JD|MJD|TJD|HJD)(?:\s*-\s*(?P<reference>\d+(?:\.\d+)?))?"
    r"(?:\s*,\s*(?i:days?|d))?\s*$"
)


def _parse(text: str, fmt: str) -> Any:
    """``text`` as an astropy unit in syntax ``fmt``, or None when that syntax does not read it."""
    # astropy is heavy (about a second to import): loaded only when a column has a unit
    from astropy import units as u

    try:
        with warnings.catch_warnings():  # FITS's deprecated spellings (``Angstrom``) still read as such
            warnings.simplefilter("ignore", u.UnitsWarning)
            return u.Unit(text, format=fmt, parse_strict="raise")
    except (ValueError, TypeError):
        return None


def _read(text: str) -> str | None:
    """``text`` as astropy's generic unit string by the rules of the module docstring, or None."""
    # astropy is heavy (about a second to import): loaded only when a column has a unit
    from astropy import units as u

    unit = _parse(text, "fits")
    if unit is None:
        readings = [r for r in (_parse(text, "generic"), _parse(text, "cds")) if r is not None]
        if not readings or any(r != readings[0] for r in readings[1:]):
            return None  # no syntax reads it, or they read different units: ambiguous
        unit = readings[0]
    if unit == u.dimensionless_unscaled:
        return ""  # CDS "---", FITS "": astropy's generic spelling is the empty string
    try:
        generic = str(unit.to_string())
        if u.Unit(generic, parse_strict="raise") != unit:  # what astropy's Parquet reader parses back
            return None
    except (ValueError, TypeError):
        return None
    return generic


def astropy_unit(text: str | None) -> str | None:
    """``text`` (a unit as a FITS, VOTable or ECSV file writes it) as astropy's generic unit string (``""``
    for dimensionless), or None when it cannot be read without guessing (see the module docstring):
    astropy's readers then make it an ``UnrecognizedUnit`` of the text as written."""
    if text is None or not text.strip():
        return None
    text = _MISSION_UNITS.get(text.strip(), text.strip())
    if TIME_OFFSET.match(text):
        return "d"
    unit = _read(text)
    if unit is None:
        words = _ELECTRON.sub("electron", _WORD.sub(lambda m: _WORDS[m.group(1)], text))
        if words != text:
            unit = _read(words)
    return unit


def parses_as_generic(text: str) -> bool:
    """Whether astropy's generic parser (its Parquet and ECSV readers') reads ``text`` as a unit."""
    return _parse(text, "generic") is not None
