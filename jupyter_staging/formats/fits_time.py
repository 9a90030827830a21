"""The Kepler/K2/TESS time column of a FITS light curve, described as an astropy ``Time`` for Parquet parts.

Kepler, K2 and TESS light curves give ``TIME`` in days since a barycentric Julian date: ``TUNITn`` is a
time offset (``BJD - 2454833``; TESS ``BJD - 2457000, days``), the reference is ``BJDREFI`` + ``BJDREFF``,
its scale ``TIMESYS`` (``TDB``), ``TIMEREF = 'SOLARSYSTEM'`` (Kepler Archive Manual, KDMC-10008;
TESS Science Data Products Description Document). astropy's FITS reader knows none of these keywords (FITS
Standard 4.0 §9 uses ``MJDREF``/``JDREF``) and gives the column as a number with an ``UnrecognizedUnit``;
lightkurve makes it a ``Time`` of ``TIME + BJDREFI + BJDREFF`` in scale ``TIMESYS``.

A part keeps the column's values as they are (pyarrow and pandas readers see the file's numbers) and
describes it in astropy's mixin convention (``__serialized_columns__``: a ``Time`` whose ``jd1`` is the
reference and whose ``jd2`` is the column), so that ``QTable.read(part)`` gives the same ``Time`` as
lightkurve, to the bit: ``Time(BJDREFI, TIME, format='jd', scale=TIMESYS)``. Only when ``BJDREFF`` is 0
(Kepler, K2, TESS): another fraction cannot be added to the column without changing its values, and
``to_table()`` applies it itself.
"""

from __future__ import annotations

from typing import Any

from jupyter_staging.formats.units import TIME_OFFSET

__all__ = ["TIME_SCALES", "mission_time_yaml"]

#: ``TIMESYS`` values (lower case) that are astropy ``Time`` scales; another one makes no ``Time``.
TIME_SCALES = ("tai", "tcb", "tcg", "tdb", "tt", "ut1", "utc")


def _reference(header: Any) -> float | None:
    """``BJDREFI`` when the header gives days since it with no fraction (``BJDREFF`` absent or 0)."""
    try:
        whole = float(header["BJDREFI"])
        fraction = float(header.get("BJDREFF", 0.0))
    except (KeyError, TypeError, ValueError):
        return None
    if fraction != 0.0 or whole != int(whole):
        return None
    if str(header.get("TIMEUNIT", "d")).strip().lower() not in ("d", "day", "days"):
        return None
    return whole


def mission_time_yaml(header: Any, columns: list[Any]) -> str | None:
    """astropy's YAML of the ``__serialized_columns__`` that make the ``TIME`` column of a FITS table
    (``header``, its ``astropy.io.fits.Column`` list ``columns``) a ``Time``, or None when the file does
    not follow the convention of the module docstring: a scalar float ``TIME`` column (no ``TSCALn``,
    ``TZEROn``, ``TCTYPn``) whose ``TUNITn`` is a time offset in days from ``BJDREFI`` (the number it
    names, if any, is ``BJDREFI``), ``BJDREFF`` 0 and ``TIMESYS`` (``TDB`` when absent) a scale astropy has.
    """
    index = next((i for i, c in enumerate(columns) if str(c.name).upper() == "TIME"), None)
    if index is None:
        return None
    column = columns[index]
    match = TIME_OFFSET.match(str(column.unit or ""))
    reference = _reference(header)
    scale = str(header.get("TIMESYS", "TDB")).strip().lower()
    if (
        match is None
        or reference is None
        or scale not in TIME_SCALES
        or column.format.format not in ("D", "E")
        or column.format.repeat not in (None, 1)
        or column.bscale not in (None, "", 1)
        or column.bzero not in (None, "", 0)
        or f"TCTYP{index + 1}" in header
    ):
        return None
    if match.group("reference") is not None and float(match.group("reference")) != reference:
        return None  # the unit and BJDREFI name different references: which one holds is not known
    # astropy is heavy (about a second to import): loaded only when a FITS file is read
    from astropy.io.misc import yaml as astropy_yaml
    from astropy.table.serialize import SerializedColumn

    time = {
        "__class__": "astropy.time.core.Time",
        "jd1": reference,
        "jd2": SerializedColumn({"name": column.name}),
        "format": "jd",
        "scale": scale,
    }
    return str(astropy_yaml.dump({column.name: SerializedColumn(time)}))
