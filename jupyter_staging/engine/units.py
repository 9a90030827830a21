"""Quantities shown to people: the one byte formatter of the Python code, matching the JupyterLab panel's
``formatBytes`` (decimal SI units, three significant digits)."""

from __future__ import annotations

import math

#: Decimal (SI) byte units, 1000 apart.
BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def format_bytes(count: float | None) -> str:
    """``count`` bytes for people, in decimal (SI) units with three significant digits, the same text the
    JupyterLab panel shows: ``"0 B"``, ``"999 B"``, ``"1.46 MB"``, ``"90.8 MB"``, ``"143 GB"``;
    ``"?"`` for None, a negative or a non-finite count. The one byte formatter of the Python code
    (notebook text, widgets, ``jupyter staging doctor``)."""
    if count is None or not math.isfinite(count) or count < 0:
        return "?"
    if count < 1000:
        return f"{round(count)} B"
    value, unit = float(count), 0
    while value >= 999.5 and unit < len(BYTE_UNITS) - 1:
        value /= 1000
        unit += 1
    digits = 0 if value >= 99.95 else 1 if value >= 9.995 else 2
    return f"{value:.{digits}f} {BYTE_UNITS[unit]}"
