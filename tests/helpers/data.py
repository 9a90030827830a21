"""The shipped mission data (``../shared/data``, read-only) and small helpers every test group uses."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
KEPLER = SHARED_DATA / "kplr010666592-2009131110544_slc.fits"
TESS = SHARED_DATA / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"
SPITZER = SHARED_DATA / "spitzer_example_catalog.xml"
KEPLER_NAME = "kplr010666592-2009131110544_slc.fits"
TESS_NAME = "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"
SPITZER_NAME = "spitzer_example_catalog.xml"


def sha256(data: bytes | Path) -> str:
    """Hex sha256 of ``data`` (bytes, or the bytes of a file)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    return hashlib.sha256(data).hexdigest()


def wait_until(
    predicate: Any, timeout: float = 30.0, what: str = "the condition", interval: float = 0.05
) -> Any:
    """Poll ``predicate`` every ``interval`` seconds until it returns something true (returned), at most
    ``timeout`` seconds; then fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def latin1_past_inference(path: Path, rows: int = 1_200_000) -> Path:
    """Write ``path``: a CSV of ``rows`` UTF-8 rows (about 20 bytes each: past the converter's 16 MiB of
    type inference) and then one row of Latin-1 text (``Å``, ``ö``), as a file appended to by another tool
    would be. Returns ``path``."""
    lines = ["name,flux", *(f"star{i},{i}.5" for i in range(rows)), "Beta \xc5ngstr\xf6m,2.5"]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path
