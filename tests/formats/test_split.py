"""One conversion as independent ranges of parts (jupyter_staging.formats.split and the ``stop_index`` /
``start_offset`` arguments of convert_to_parquet): the ranges, in any order or at once, write the same
files, byte for byte, as one whole conversion."""

from __future__ import annotations

import gzip
import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats import split
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.split import (
    NotSplittable,
    Task,
    count_csv_rows,
    csv_data_start,
    csv_part_offsets,
    csv_spans,
    fits_table_rows,
    plan,
    span_part_offsets,
    splittable,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
KEPLER = DATA / "kplr010666592-2009131110544_slc.fits"
TESS = DATA / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"
SPITZER = DATA / "spitzer_example_catalog.xml"


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` by name (a leftover ``.part`` would show up too)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def ranges(offsets: Sequence[int | None], count: int) -> list[Task]:
    """The parts (one start offset each) cut into ``count`` contiguous ranges (fewer if parts are few)."""
    parts = len(offsets)
    bounds = sorted({parts * i // count for i in range(count + 1)})
    return [Task(a, b, offsets[a]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def run_tasks(src: Path, out: Path, tasks: list[Task], chunk_rows: int, *, threads: bool) -> None:
    def one(task: Task) -> None:
        convert_to_parquet(
            src,
            out,
            chunk_rows=chunk_rows,
            start_index=task.start_index,
            stop_index=task.stop_index,
            start_offset=task.start_offset,
        )

    if threads:
        with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
            list(pool.map(one, tasks))
    else:
        for task in reversed(tasks):
            one(task)


def csv_offsets(src: Path, chunk_rows: int, span_bytes: int) -> list[int]:
    """Part offsets planned in the per-span steps a distributed planner runs as tasks."""
    spans = csv_spans(src, span_bytes)
    counts = [count_csv_rows(src, start, end) for start, end in spans]
    offsets = csv_part_offsets(src, spans, counts, chunk_rows)
    first_rows = np.concatenate(([0], np.cumsum(counts)[:-1]))
    per_span = [
        span_part_offsets(src, s, e, int(r), chunk_rows) for (s, e), r in zip(spans, first_rows, strict=True)
    ]
    assert sum(per_span, []) == offsets
    return offsets


def assert_ranges_match_whole(
    tmp_path: Path, src: Path, chunk_rows: int, offsets: Sequence[int | None], *, min_parts: int
) -> None:
    whole = tmp_path / "whole"
    chunks = convert_to_parquet(src, whole, chunk_rows=chunk_rows)
    expected = digests(whole)
    assert len(chunks) == len(offsets) == len(expected) >= min_parts
    assert {c.name: c.sha256 for c in chunks} == expected
    for count in (2, 3, 7):
        for threads in (False, True):
            out = tmp_path / f"ranges-{count}-{threads}"
            run_tasks(src, out, ranges(offsets, count), chunk_rows, threads=threads)
            assert digests(out) == expected, (count, threads)
    for name in expected:  # implied by the digests; said plainly: schema, field and file metadata
        ours, theirs = pq.read_schema(out / name), pq.read_schema(whole / name)
        assert ours.equals(theirs, check_metadata=True) and ours.metadata == theirs.metadata
        assert [f.metadata for f in ours] == [f.metadata for f in theirs]


@pytest.mark.parametrize(("src", "chunk_rows"), [(KEPLER, 1000), (TESS, 2500)])
def test_fits_ranges_are_byte_identical_to_one_conversion(tmp_path: Path, src: Path, chunk_rows: int) -> None:
    rows = fits_table_rows(src)
    with pq.ParquetFile(_one_part(tmp_path, src)) as part:
        assert b"fits.header" in part.schema_arrow.metadata
    parts = math.ceil(rows / chunk_rows)
    assert_ranges_match_whole(tmp_path, src, chunk_rows, [None] * parts, min_parts=8)
    tasks = plan(src, chunk_rows=chunk_rows, task_bytes=300_000)
    assert tasks is not None and tasks[0].start_index == 0 and tasks[-1].stop_index == parts
    assert all(t.start_offset is None for t in tasks)
    assert all(a.stop_index == b.start_index for a, b in zip(tasks, tasks[1:], strict=False))


def _one_part(tmp_path: Path, src: Path) -> Path:
    out = tmp_path / "first-part"
    convert_to_parquet(src, out, chunk_rows=10, stop_index=1)
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert pq.read_metadata(out / "part-00000.parquet").num_rows == 10
    return out / "part-00000.parquet"


def kepler_text(tmp_path: Path, name: str, fmt: str) -> Path:
    """The Kepler light curve written by astropy as CSV (``ascii.csv``) or TSV (``ascii.tab``)."""
    table = Table.read(KEPLER, hdu=1)
    path = tmp_path / name
    table.write(path, format=fmt)
    return path


@pytest.mark.parametrize(("name", "fmt"), [("kepler.csv", "ascii.csv"), ("kepler.tsv", "ascii.tab")])
def test_csv_and_tsv_ranges_are_byte_identical(tmp_path: Path, name: str, fmt: str) -> None:
    src = kepler_text(tmp_path, name, fmt)
    assert splittable(src)
    offsets = csv_offsets(src, chunk_rows=1000, span_bytes=200_000)
    assert offsets[0] == csv_data_start(src) == len(src.read_bytes().split(b"\n", 1)[0]) + 1
    assert all(src.read_bytes()[o - 1 : o] == b"\n" for o in offsets)
    assert_ranges_match_whole(tmp_path, src, 1000, offsets, min_parts=14)
    tasks = plan(src, chunk_rows=1000, task_bytes=1_000_000)
    assert tasks is not None and 2 <= len(tasks) < len(offsets)
    assert tasks[0].start_index == 0 and tasks[-1].stop_index == len(offsets)
    assert all(a.stop_index == b.start_index for a, b in zip(tasks, tasks[1:], strict=False))
    assert [t.start_offset for t in tasks] == [offsets[t.start_index] for t in tasks]
    bounds = [offsets[t.start_index] for t in tasks] + [src.stat().st_size]
    assert all(
        b - a >= 1_000_000 for a, b in zip(bounds[:-2], bounds[1:-1], strict=True)
    )  # the last may be short


def test_quoted_fields_comments_empty_lines_and_crlf(tmp_path: Path) -> None:
    table = Table.read(TESS, hdu=1)[:3000]["TIME", "PDCSAP_FLUX", "QUALITY"]
    table["NAME"] = [f'TIC 25155310, cadence "{i}"' if i % 3 else f"c{i}" for i in range(len(table))]
    text = tmp_path / "plain.csv"
    table.write(text, format="ascii.csv")
    lines = text.read_bytes().split(b"\n")
    assert b'"TIC 25155310, cadence ""1"""' in lines[2]  # astropy quotes, doubling inner quotes
    for i in range(50, len(lines), 97):
        lines[i] = lines[i] + b"\r"  # some CRLF line ends
    body = b"\n".join(lines[:1] + [b""] + lines[1:700] + [b"", b"\r", b""] + lines[700:])
    src = tmp_path / "quoted.csv"
    src.write_bytes(b"# made from the TESS light curve\n# second comment\n" + body)
    assert splittable(src)
    offsets = csv_offsets(src, chunk_rows=250, span_bytes=10_000)
    assert_ranges_match_whole(tmp_path, src, 250, offsets, min_parts=12)
    whole = pq.read_table(tmp_path / "whole")
    assert whole.num_rows == len(table)
    assert whole["NAME"].to_pylist() == list(table["NAME"])


def test_million_row_csv_in_parallel_ranges(tmp_path: Path) -> None:
    tess = Table.read(TESS, hdu=1)
    columns = {
        name: np.asarray(tess[name]).astype(tess[name].dtype.newbyteorder("="))
        for name in ("TIME", "PDCSAP_FLUX", "QUALITY")
    }
    repeats = math.ceil(1_000_000 / len(tess))
    arrow = pa.table({name: np.tile(values, repeats) for name, values in columns.items()})
    src = tmp_path / "big.csv"
    pacsv.write_csv(arrow, src)
    offsets = csv_offsets(src, chunk_rows=100_000, span_bytes=4 * 1024 * 1024)
    assert sum(1 for _ in src.open("rb")) - 1 == arrow.num_rows >= 1_000_000
    whole = tmp_path / "whole"
    convert_to_parquet(src, whole, chunk_rows=100_000)
    assert len(offsets) == math.ceil(arrow.num_rows / 100_000)
    out = tmp_path / "ranges"
    run_tasks(src, out, ranges(offsets, 7), 100_000, threads=True)
    assert digests(out) == digests(whole)


def test_parquet_source_ranges(tmp_path: Path) -> None:
    source = tmp_path / "kepler.parquet"
    pq.write_table(Table.read(KEPLER, hdu=1).to_pandas().pipe(pa.Table.from_pandas), source)
    tasks = plan(source, chunk_rows=1000, task_bytes=300_000)
    assert tasks is not None and len(tasks) > 2
    assert_ranges_match_whole(tmp_path, source, 1000, [None] * tasks[-1].stop_index, min_parts=14)


def test_quoted_line_break_is_not_splittable(tmp_path: Path) -> None:
    rows = [f'{i},"star {i}"' for i in range(5000)]
    rows[4000] = '4000,"a value over\ntwo lines"'
    src = tmp_path / "multiline.csv"
    src.write_text("id,name\n" + "\n".join(rows) + "\n")
    assert splittable(src)  # the header and the first rows are fine: only counting finds it
    spans = csv_spans(src, 8_000)
    with pytest.raises(NotSplittable, match="line break"):
        [count_csv_rows(src, start, end) for start, end in spans]
    assert plan(src, chunk_rows=100, task_bytes=8_000) is None
    # the span boundary may fall inside the quoted value: the span before it is the one refused
    inside = src.read_bytes().index(b"two lines")
    with pytest.raises(NotSplittable):
        count_csv_rows(src, spans[0][0], inside)
    # one whole conversion reads it as one row (the value falls inside one parsed block): counted by
    # lines, the parts would shift
    whole = convert_to_parquet(src, tmp_path / "whole", chunk_rows=1000)
    assert sum(c.rows for c in whole) == 5000


def test_files_that_do_not_split(tmp_path: Path) -> None:
    text = kepler_text(tmp_path, "kepler.csv", "ascii.csv")
    gz = tmp_path / "kepler.csv.gz"
    gz.write_bytes(gzip.compress(text.read_bytes()))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,c\n1,2,3\n4,5\n6,7,8\n")
    repeated = tmp_path / "repeated.csv"
    repeated.write_text("a,a\n1,2\n")
    bare_cr = tmp_path / "mac.csv"
    bare_cr.write_bytes(b"a,b\n1,2\r3,4\r")
    fits_gz = tmp_path / "kepler.fits.gz"
    fits_gz.write_bytes(gzip.compress(KEPLER.read_bytes()))
    for path in (gz, ragged, repeated, fits_gz, SPITZER):
        assert not splittable(path), path.name
        assert plan(path, chunk_rows=10, task_bytes=1000) is None, path.name
    assert splittable(bare_cr)
    assert plan(bare_cr, chunk_rows=1, task_bytes=1) is None
    with pytest.raises(NotSplittable, match="carriage return"):
        count_csv_rows(bare_cr, *csv_spans(bare_cr, 100)[0])
    with pytest.raises(NotSplittable, match="compressed"):
        fits_table_rows(fits_gz)
    with pytest.raises(NotSplittable):
        csv_data_start(ragged)
    assert fits_table_rows(KEPLER) == len(Table.read(KEPLER, hdu=1))


def test_bad_ranges_and_offsets_are_refused(tmp_path: Path) -> None:
    src = kepler_text(tmp_path, "kepler.csv", "ascii.csv")
    offsets = csv_offsets(src, chunk_rows=1000, span_bytes=1_000_000)
    out = tmp_path / "out"
    with pytest.raises(ConversionFailed, match="not at the start of a line"):
        convert_to_parquet(
            src, out, chunk_rows=1000, start_index=1, stop_index=2, start_offset=offsets[1] + 3
        )
    with pytest.raises(ConversionFailed, match="outside the data"):
        convert_to_parquet(src, out, chunk_rows=1000, start_index=1, stop_index=2, start_offset=5)
    with pytest.raises(ConversionFailed, match="stop_index"):
        convert_to_parquet(src, out, chunk_rows=1000, start_index=2, stop_index=2)
    with pytest.raises(ConversionFailed, match="start_offset"):
        convert_to_parquet(KEPLER, out, chunk_rows=1000, start_index=1, start_offset=0)
    gz = tmp_path / "kepler.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    with pytest.raises(ConversionFailed, match="plain CSV"):
        convert_to_parquet(gz, out, chunk_rows=1000, start_index=1, start_offset=offsets[1])
    assert not any(out.iterdir())
    # a range past the end of the table writes nothing; the last range stops at the table's end
    assert convert_to_parquet(src, out, chunk_rows=1000, start_index=40, stop_index=50) == []
    last = convert_to_parquet(
        src, out, chunk_rows=1000, start_index=14, stop_index=50, start_offset=offsets[14]
    )
    assert [c.rows for c in last] == [14280 - 14000]


def test_empty_csv_plans_one_empty_part(tmp_path: Path) -> None:
    src = tmp_path / "empty.csv"
    src.write_text("a,b\n")
    tasks = plan(src, chunk_rows=10, task_bytes=100)
    assert tasks == [Task(0, 1, 4)]
    whole, ranged = tmp_path / "whole", tmp_path / "ranged"
    convert_to_parquet(src, whole, chunk_rows=10)
    run_tasks(src, ranged, tasks, 10, threads=False)
    assert digests(ranged) == digests(whole)
    assert pq.read_metadata(ranged / "part-00000.parquet").num_rows == 0


def test_counting_across_small_scan_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows, empty lines, CRLF ends and lines longer than a scan block, with blocks of 64 bytes."""
    rng = np.random.default_rng(3)
    lines = [b"id,flux,name"]
    for i in range(3000):
        kind = rng.integers(0, 10)
        name = b"x" * int(rng.integers(100, 300)) if kind == 0 else f'"star, {i}"'.encode()
        lines.append(b"" if kind == 1 else f"{i},{rng.normal():.6f},".encode() + name)
        if kind == 2:
            lines[-1] += b"\r"
    src = tmp_path / "mixed.csv"
    src.write_bytes(b"\n".join(lines) + b"\n\n")
    monkeypatch.setattr(split, "SCAN_BLOCK_BYTES", 64)
    # the reference: split at line ends, rows are the lines that are not empty
    starts, position = [], 0
    for line in src.read_bytes().split(b"\n")[:-1]:
        if line not in (b"", b"\r"):
            starts.append(position)
        position += len(line) + 1
    starts = starts[1:]  # the header
    for span_bytes in (97, 5_000, 10**9):
        spans = csv_spans(src, span_bytes)
        counts = [count_csv_rows(src, s, e) for s, e in spans]
        assert sum(counts) == len(starts)
        assert counts == [sum(s <= r < e for r in starts) for s, e in spans]
        assert csv_part_offsets(src, spans, counts, 128) == starts[::128]
    assert_ranges_match_whole(tmp_path, src, 128, starts[::128], min_parts=20)
