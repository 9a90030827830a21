"""Conformance over real tables no one here wrote: the FITS, VOTable, ECSV and CSV files astropy ships.

Every table of every file is converted with :func:`convert_to_parquet` and compared with astropy's own
reading of it: rows, column names, values (NaN-aware; complex as ``[re, im]``), masks and units. A file
the converter does not take as a table (``is_table`` false: images, headers, VOTables astropy rejects) is
staged as it is, and astropy must not read a table from it either. A refusal must be a ``StagingError``
with a stable code and a message without the server's folders. Anything else is a crash.
"""

from __future__ import annotations

import datetime
import math
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import astropy
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.io.votable import parse
from astropy.table import Table
from astropy.table.serialize import represent_mixins_as_columns
from astropy.utils.data_info import serialize_context_as

from jupyter_staging.errors import StagingError
from jupyter_staging.formats.astropy_meta import astropy_unit
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.detect import detect_format, is_table
from jupyter_staging.formats.fits import is_table_hdu

ASTROPY = Path(astropy.__file__).parent
FORMATS = ("fits", "votable", "ecsv", "csv")
#: Codes a refusal may carry.
REFUSAL_CODES = {"conversion_failed"}


def corpus() -> list[tuple[Path, str]]:
    """Files under astropy's test data folders (and its shipped ECSV tables) that sniff as a table format."""
    found = []
    for path in sorted(ASTROPY.rglob("*")):
        rel = path.relative_to(ASTROPY).as_posix()
        if not path.is_file() or "__pycache__" in rel:
            continue
        if "/data/" not in f"/{rel}" and not rel.endswith(".ecsv"):
            continue
        fmt = detect_format(path)
        if fmt in FORMATS:
            found.append((path, fmt))
    return found


def tables_of(path: Path, fmt: str) -> list[int | None]:
    """The tables to convert: FITS table HDU indexes, VOTable positions, or ``[None]`` (the only one)."""
    if fmt == "fits":
        with fits.open(path) as hdul:
            return [i for i, hdu in enumerate(hdul) if is_table_hdu(hdu)]
    if fmt == "votable":
        return list(range(len(list(parse(str(path), verify="ignore").iter_tables()))))
    return [None]


def fits_reading(path: Path, index: int | None) -> Table:
    """astropy's ``Table.read`` of a FITS table, with the nulls it does not mask masked as the FITS
    Standard 4.0 says: a logical 0 byte (§7.3.3.1) and, in ASCII tables, the ``TNULLn`` text (§7.2.5)."""
    with fits.open(path) as hdul:
        hdu = hdul[index]
        raw = np.array(hdu.data.view(np.ndarray)) if hdu.data is not None else None
        try:
            table = Table.read(path, format="fits", hdu=index)
        except TypeError:  # astropy's Table cannot take a TNULLn text on a float column: read its data
            table = Table(hdu.data, masked=True, copy=True)
            for column in hdu.columns:
                if column.unit:
                    table[column.name].unit = u.Unit(column.unit, format="fits", parse_strict="silent")
        if raw is None:
            return table
        table = Table(table, masked=True, copy=False)
        for i, column in enumerate(hdu.columns):
            field = raw[(raw.dtype.names or ())[i]]
            if isinstance(hdu, fits.TableHDU) and column.null not in (None, ""):
                table[column.name].mask |= np.char.strip(field) == str(column.null).strip().encode()
            elif column.format.format == "L":
                table[column.name].mask |= field.view(np.uint8) == 0
    return table


def astropy_reading(path: Path, fmt: str, table: int | None) -> Table:
    """astropy's own reading of the table, mixin columns split as the converter splits them."""
    if fmt == "fits":
        return fits_reading(path, table)
    if fmt == "votable":
        return Table.read(path, format="votable", table_id=table, use_names_over_ids=True)
    if fmt == "ecsv":  # in ECSV's context: a Time column as the text the file holds
        with serialize_context_as("ecsv"):
            return represent_mixins_as_columns(Table.read(path, format="ascii.ecsv"))
    return Table.read(path, format="ascii.csv", comment="#")


def astropy_reads_a_table(path: Path, fmt: str) -> bool:
    try:
        return len(tables_of(path, fmt)) > 0 and len(astropy_reading(path, fmt, None).colnames) > 0
    except Exception:  # astropy refuses it: as the converter did
        return False


def plain(value: Any) -> Any:
    """A cell of astropy's reading as Python values: masked -> None, complex -> [re, im], bytes -> str."""
    if value is np.ma.masked:
        return None
    if isinstance(value, np.ma.MaskedArray):
        return masked_plain(np.ma.getdata(value), np.ma.getmaskarray(value))
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, complex | np.complexfloating):
        return [float(value.real), float(value.imag)]
    if isinstance(value, bytes | np.bytes_):
        return value.decode("latin-1").rstrip()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return value.rstrip()
    return value


def masked_plain(value: Any, mask: np.ndarray) -> Any:
    """:func:`plain` of ``value`` where ``mask`` (of the same leading shape) marks missing entries."""
    mask = np.asarray(mask)
    if mask.ndim == 0:
        return None if mask else plain(value)
    return [masked_plain(v, m) for v, m in zip(value, mask, strict=True)]


def cells(column: Any) -> list[Any]:
    """Every cell of an astropy column, with its row and element masks applied."""
    data, mask = np.ma.getdata(column), np.ma.getmaskarray(column)
    return [masked_plain(data[i], mask[i]) for i in range(len(column))]


def same(ours: Any, theirs: Any) -> bool:
    """NaN-aware equality of a converted cell and astropy's; a NaN and a masked float count as equal."""
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs, strict=True))
    missing_ours = ours in (None, "") or (isinstance(ours, float) and math.isnan(ours))
    missing_theirs = theirs in (None, "") or (isinstance(theirs, float) and math.isnan(theirs))
    if missing_ours or missing_theirs:
        return missing_ours and missing_theirs
    if isinstance(ours, datetime.date):  # pyarrow infers dates and timestamps in CSV, astropy reads text
        return bool(np.datetime64(ours) == np.datetime64(theirs))
    if isinstance(ours, float) or isinstance(theirs, float):
        return math.isclose(float(ours), float(theirs), rel_tol=1e-6, abs_tol=1e-300)
    if isinstance(ours, str) or isinstance(theirs, str):
        return str(ours).rstrip() == str(theirs).rstrip()
    return bool(ours == theirs)


def same_unit(field: pa.Field, theirs: Any) -> bool:
    """The Arrow field's unit (original text, and as astropy reads it) is astropy's unit of the column."""
    original = (field.metadata or {}).get(b"unit", b"").decode() or None
    if theirs is None:
        return original is None or astropy_unit(original) in (None, "")
    if isinstance(theirs, u.UnrecognizedUnit):
        return original is not None and original.strip() == theirs.name.strip()
    ours = astropy_unit(original)
    return ours is not None and u.Unit(ours) == theirs


def mismatches(parts: pa.Table, reference: Table) -> list[str]:
    """What differs between the converted table and astropy's reading (empty when they agree)."""
    if parts.num_rows != len(reference):
        return [f"rows {parts.num_rows} != {len(reference)}"]
    if parts.column_names != reference.colnames:
        return [f"columns {parts.column_names} != {reference.colnames}"]
    problems = []
    for field, name in zip(parts.schema, reference.colnames, strict=True):
        column = reference[name]
        ours = parts.column(name).to_pylist()
        theirs = cells(column)
        bad = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if not same(a, b)]
        if bad:
            problems.append(f"{name}: row {bad[0]}: {ours[bad[0]]!r} != {theirs[bad[0]]!r}")
        if not same_unit(field, column.unit):
            problems.append(f"{name}: unit {field.metadata} != {column.unit!r}")
    return problems


def convert_one(path: Path, fmt: str, table: int | None, out: Path) -> tuple[str, str]:
    """``(outcome, detail)`` for one table: ``ok``, ``refused``, ``mismatch`` or ``crash``."""
    try:
        convert_to_parquet(path, out, chunk_rows=1000, hdu=table)
    except StagingError as exc:
        if exc.code not in REFUSAL_CODES or str(path.parent) in exc.message:
            return "crash", f"{exc.code}: {exc.message}"
        return "refused", f"{exc.code}: {exc.message}"
    except Exception as exc:  # what the test is for: none may happen
        return "crash", f"{type(exc).__name__}: {exc}"
    problems = mismatches(pq.read_table(out), astropy_reading(path, fmt, table))
    return ("mismatch", "; ".join(problems)) if problems else ("ok", "")


def test_astropy_corpus_converts_as_astropy_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    files = corpus()
    totals: Counter[str] = Counter()
    failures = []
    warnings.simplefilter("ignore")  # astropy warns at length about the odd files it is tested with
    for number, (path, fmt) in enumerate(files):
        rel = path.relative_to(ASTROPY).as_posix()
        if not is_table(path):
            assert not astropy_reads_a_table(path, fmt), f"{rel}: staged as it is, but astropy reads a table"
            totals["staged-as-is"] += 1
            continue
        for table in tables_of(path, fmt):
            totals["tables"] += 1
            outcome, detail = convert_one(path, fmt, table, tmp_path / f"{number}-{table}")
            totals[outcome] += 1
            if outcome in ("crash", "mismatch"):
                failures.append(f"{outcome} {rel} table {table}: {detail}")
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(
            f"\nastropy corpus: {len(files)} files, {totals['tables']} tables: {totals['ok']} OK, "
            f"{totals['staged-as-is']} files staged as they are, {totals['refused']} refused, "
            f"{totals['mismatch']} mismatches, {totals['crash']} crashes; {elapsed:.1f} s"
        )
    assert not failures, "\n".join(failures)
    assert totals["ok"] >= 70 and len(files) >= 140  # the corpus really was found and read
