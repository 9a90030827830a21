"""Synthetic Kepler-like light-curve tables for the benchmarks, written in chunks (bounded memory).

Columns follow a Kepler long-cadence light-curve file (``kplr*_llc.fits``, HDU ``LIGHTCURVE``): TIME
(float64, BJD - 2454833), TIMECORR (float32), CADENCENO (int32), SAP_FLUX/…_ERR, SAP_BKG/…_ERR,
PDCSAP_FLUX/…_ERR (float32), SAP_QUALITY (int32, mostly 0), PSF/MOM centroids (float64, errors float32)
and POS_CORR1/2 (float32). Gaps are NaN, as in the archive files (~1 % of the fluxes, ~30 % of PSF
centroids). Values carry noise, so they compress like real measurements rather than like constants.

``python bench/datagen.py csv OUT.csv --size-mb 500`` / ``... fits OUT.fits --size-mb 1000`` write one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

#: (name, numpy dtype, FITS TFORM, unit)
COLUMNS: list[tuple[str, str, str, str]] = [
    ("TIME", "f8", "D", "BJD - 2454833"),
    ("TIMECORR", "f4", "E", "d"),
    ("CADENCENO", "i4", "J", ""),
    ("SAP_FLUX", "f4", "E", "e-/s"),
    ("SAP_FLUX_ERR", "f4", "E", "e-/s"),
    ("SAP_BKG", "f4", "E", "e-/s"),
    ("SAP_BKG_ERR", "f4", "E", "e-/s"),
    ("PDCSAP_FLUX", "f4", "E", "e-/s"),
    ("PDCSAP_FLUX_ERR", "f4", "E", "e-/s"),
    ("SAP_QUALITY", "i4", "J", ""),
    ("PSF_CENTR1", "f8", "D", "pixel"),
    ("PSF_CENTR1_ERR", "f4", "E", "pixel"),
    ("PSF_CENTR2", "f8", "D", "pixel"),
    ("PSF_CENTR2_ERR", "f4", "E", "pixel"),
    ("MOM_CENTR1", "f8", "D", "pixel"),
    ("MOM_CENTR1_ERR", "f4", "E", "pixel"),
    ("MOM_CENTR2", "f8", "D", "pixel"),
    ("MOM_CENTR2_ERR", "f4", "E", "pixel"),
    ("POS_CORR1", "f4", "E", "pixel"),
    ("POS_CORR2", "f4", "E", "pixel"),
]
CHUNK_ROWS = 250_000
CADENCE_DAYS = 0.0204335


def chunk(rng: np.random.Generator, start: int, rows: int) -> dict[str, np.ndarray]:
    """Columns for cadences ``start .. start+rows-1`` (one star per ~70k cadences: a Kepler quarter)."""
    cad = np.arange(start, start + rows, dtype=np.int64)
    star = cad // 70_000
    base = 5e3 + (star * 7919 % 200_000).astype(np.float64)  # each "star" its own brightness
    phase = 2 * np.pi * cad / 1234.5
    sap = base * (1 + 1e-3 * np.sin(phase)) + rng.normal(0, 1, rows) * np.sqrt(base)
    pdc = sap * (1 + 1e-4 * rng.standard_normal(rows))
    bkg = 400 + 50 * np.sin(cad / 3000.0) + rng.normal(0, 5, rows)
    col = {
        "TIME": 120.5 + cad * CADENCE_DAYS + rng.normal(0, 1e-7, rows),
        "TIMECORR": (1.5e-3 + 1e-3 * np.sin(cad / 5e4)).astype(np.float32),
        "CADENCENO": (1105 + cad).astype(np.int32),
        "SAP_FLUX": sap.astype(np.float32),
        "SAP_FLUX_ERR": np.sqrt(np.abs(sap)).astype(np.float32),
        "SAP_BKG": bkg.astype(np.float32),
        "SAP_BKG_ERR": (1.5 + 0.1 * rng.random(rows)).astype(np.float32),
        "PDCSAP_FLUX": pdc.astype(np.float32),
        "PDCSAP_FLUX_ERR": (np.sqrt(np.abs(pdc)) * 1.01).astype(np.float32),
        "SAP_QUALITY": np.where(rng.random(rows) < 0.03, 1 << rng.integers(0, 20, rows), 0).astype(np.int32),
    }
    for axis, centre in ((1, 650.0), (2, 410.0)):
        col[f"PSF_CENTR{axis}"] = centre + rng.normal(0, 0.02, rows)
        col[f"PSF_CENTR{axis}_ERR"] = (2e-4 + 1e-5 * rng.random(rows)).astype(np.float32)
        col[f"MOM_CENTR{axis}"] = centre + 0.3 + rng.normal(0, 0.02, rows)
        col[f"MOM_CENTR{axis}_ERR"] = (1.5e-4 + 1e-5 * rng.random(rows)).astype(np.float32)
        col[f"POS_CORR{axis}"] = rng.normal(0, 0.05, rows).astype(np.float32)
    gaps = rng.random(rows) < 0.01  # data gaps: fluxes NaN (time stays, as in Kepler files)
    for name in ("SAP_FLUX", "SAP_FLUX_ERR", "PDCSAP_FLUX", "PDCSAP_FLUX_ERR", "SAP_BKG", "SAP_BKG_ERR"):
        col[name][gaps] = np.nan
    psf_gap = rng.random(rows) < 0.3
    for name in ("PSF_CENTR1", "PSF_CENTR1_ERR", "PSF_CENTR2", "PSF_CENTR2_ERR"):
        col[name][psf_gap] = np.nan
    return {name: col[name] for name, *_ in COLUMNS}


def _cached(path: Path, params: dict) -> bool:
    stamp = path.with_name(path.name + ".json")
    if path.is_file() and stamp.is_file():
        try:
            return json.loads(stamp.read_text()).get("params") == params
        except ValueError:
            return False
    return False


def _stamp(path: Path, params: dict, rows: int) -> dict:
    info = {"params": params, "rows": rows, "bytes": path.stat().st_size}
    path.with_name(path.name + ".json").write_text(json.dumps(info))
    return info


def info(path: Path) -> dict:
    """``{"rows", "bytes", "params"}`` of a file written by this module."""
    return json.loads(path.with_name(path.name + ".json").read_text())


def write_csv(path: Path, size_mb: float, seed: int = 7) -> dict:
    """A Kepler-like CSV of about ``size_mb`` × 10⁶ bytes (header line + rows). Reused when present."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    params = {"kind": "csv", "size_mb": size_mb, "seed": seed, "version": 1}
    if _cached(path, params):
        return info(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = int(size_mb * 1e6)
    rng = np.random.default_rng(seed)
    rows = 0
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as fh:
        fh.write((",".join(name for name, *_ in COLUMNS) + "\n").encode())
        with pa.PythonFile(fh, mode="w") as sink:
            n = min(CHUNK_ROWS, max(1000, target // 200))
            while True:
                table = pa.table(chunk(rng, rows, n))
                pacsv.write_csv(table, sink, options)
                rows += n
                left = target - fh.tell()
                if left <= 0:
                    break
                n = min(CHUNK_ROWS, max(1000, int(left / (fh.tell() / rows)) + 1))
    return _stamp(path, params, rows)


def write_fits(path: Path, size_mb: float, seed: int = 11) -> dict:
    """A Kepler-like FITS file (empty primary HDU + a ``LIGHTCURVE`` binary table) of about ``size_mb`` MB.

    The table header is made by astropy; the rows are streamed as big-endian records in chunks and the
    data unit is padded to a multiple of 2880 bytes (FITS Standard 4.0 §3.3.2, §7.3).
    """
    from astropy.io import fits

    params = {"kind": "fits", "size_mb": size_mb, "seed": seed, "version": 1}
    if _cached(path, params):
        return info(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype([(name, ">" + code) for name, code, *_ in COLUMNS])
    rows_total = max(1, int(size_mb * 1e6) // dtype.itemsize)
    rows_total = -(-rows_total // CHUNK_ROWS) * CHUNK_ROWS
    cols = [fits.Column(name=n, format=f, unit=u or None) for n, _c, f, u in COLUMNS]
    table = fits.BinTableHDU.from_columns(cols, nrows=0, name="LIGHTCURVE")
    header = table.header
    header["NAXIS2"] = rows_total
    header["TELESCOP"] = "Kepler"
    header["OBJECT"] = "synthetic benchmark target"
    primary = fits.PrimaryHDU()
    primary.header["ORIGIN"] = "jupyter_staging bench/datagen.py"
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        fh.write(primary.header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        written = 0
        while written < rows_total:
            n = min(CHUNK_ROWS, rows_total - written)
            data = chunk(rng, written, n)
            rec = np.empty(n, dtype=dtype)
            for name in dtype.names or ():
                rec[name] = data[name]
            fh.write(rec.tobytes())
            written += n
        pad = -fh.tell() % 2880
        fh.write(b"\0" * pad)
    return _stamp(path, params, rows_total)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write a synthetic Kepler-like table")
    ap.add_argument("kind", choices=("csv", "fits"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--size-mb", type=float, default=100.0)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    result = (write_csv if args.kind == "csv" else write_fits)(args.out, args.size_mb)
    print(json.dumps(result), f"{time.perf_counter() - t:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
