"""A large CSV/TSV file's first part read from two offsets at once (jupyter_staging.formats.halves): the
parts are byte for byte those of one stream; a quote in the head, an error in either half, and a
conversion stopped during the first part behave as with one stream."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from jupyter_staging.errors import ConversionFailed, JobInterrupted
from jupyter_staging.formats import csv as csv_module
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.csv import CsvSource
from jupyter_staging.kernel import api
from jupyter_staging.safety.control import JobControl
from tests.helpers.data import KEPLER


@pytest.fixture(scope="module")
def kepler_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Kepler short-cadence light curve (14,280 rows, 20 columns, NaN gaps) as CSV, by astropy."""
    path = tmp_path_factory.mktemp("kepler") / "kepler.csv"
    Table.read(KEPLER, hdu=1).write(path, format="ascii.csv")
    return path


@pytest.fixture
def halves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every first part read in halves, however small; the split offsets used, in a list."""
    monkeypatch.setattr(csv_module, "HALVES_MIN_BYTES", 0)
    used: list[int] = []
    middle_of = CsvSource._middle_of_first_part

    def recorded(self: CsvSource) -> int | None:
        middle = middle_of(self)
        if middle is not None:
            used.append(middle)
        return middle

    monkeypatch.setattr(CsvSource, "_middle_of_first_part", recorded)
    return used


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def one_stream(src: Path, out: Path, **options) -> dict[str, str]:
    """The parts of ``src`` converted with the first part read as one stream."""
    original = CsvSource._middle_of_first_part
    CsvSource._middle_of_first_part = lambda self: None  # type: ignore[method-assign]
    try:
        convert_to_parquet(src, out, **options)
    finally:
        CsvSource._middle_of_first_part = original  # type: ignore[method-assign]
    return digests(out)


def no_head_thread_left() -> bool:
    """No thread reading a tail is left running."""
    return not any(t.name == "staging-convert-tail" for t in threading.enumerate())


@pytest.mark.parametrize("chunk_rows", [4000, 14280, 100_000])
def test_parts_read_in_halves_are_those_of_one_stream(
    tmp_path: Path, kepler_csv: Path, halves: list[int], chunk_rows: int
) -> None:
    chunks = convert_to_parquet(kepler_csv, tmp_path / "halves", chunk_rows=chunk_rows)
    assert len(halves) == 1 and 0 < halves[0] < kepler_csv.stat().st_size
    assert kepler_csv.read_bytes()[halves[0] - 1 : halves[0]] == b"\n"
    assert digests(tmp_path / "halves") == one_stream(kepler_csv, tmp_path / "one", chunk_rows=chunk_rows)
    assert sum(c.rows for c in chunks) == 14280
    table = pq.read_table(tmp_path / "halves")
    assert table.column("CADENCENO").to_pylist() == Table.read(KEPLER, hdu=1)["CADENCENO"].tolist()
    assert no_head_thread_left()


def test_a_tsv_and_a_file_resumed_part_way(tmp_path: Path, halves: list[int]) -> None:
    src = tmp_path / "kepler.tsv"
    Table.read(KEPLER, hdu=1).write(src, format="ascii.tab")
    convert_to_parquet(src, tmp_path / "halves", chunk_rows=5000)
    assert digests(tmp_path / "halves") == one_stream(src, tmp_path / "one", chunk_rows=5000)
    used = len(halves)
    convert_to_parquet(src, tmp_path / "resumed", chunk_rows=5000, start_index=1)  # rows skipped: one stream
    assert len(halves) == used
    one = digests(tmp_path / "one")
    assert digests(tmp_path / "resumed") == {k: v for k, v in one.items() if k != "part-00000.parquet"}


def test_a_quote_in_the_head_reads_the_file_as_one_stream(tmp_path: Path, halves: list[int]) -> None:
    """A quoted value may hold a line break, and the split point could fall inside it: a head holding a
    quote character is dropped, the file read as one stream (the same parts, every row once)."""
    src = tmp_path / "names.csv"
    lines = ["id,flux,name"] + [f"{i},{i * 0.5},star {i}" for i in range(30_000)]
    lines[5] = '4,2.0,"HD 4, a quoted name"'
    src.write_text("\n".join(lines) + "\n")
    chunks = convert_to_parquet(src, tmp_path / "halves", chunk_rows=20_000)
    assert halves and [c.rows for c in chunks] == [20_000, 10_000]
    assert digests(tmp_path / "halves") == one_stream(src, tmp_path / "one", chunk_rows=20_000)
    names = pq.read_table(tmp_path / "halves").column("name").to_pylist()
    assert names[4] == "HD 4, a quoted name" and names[29_999] == "star 29999"
    assert no_head_thread_left()


@pytest.mark.parametrize("bad_row", [1000, 25_000])
def test_a_value_that_does_not_fit_fails_in_either_half(
    tmp_path: Path, halves: list[int], bad_row: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value that does not fit its column's type (inferred from the first 4 KiB here) fails the
    conversion naming the value, as one stream does, in the head (row 1,000) or the tail (row 25,000); no
    part file and no ``.part`` is left."""
    monkeypatch.setattr(csv_module, "CSV_INFER_BYTES", 4096)
    src = tmp_path / "bad.csv"
    lines = ["id,flux"] + [f"{i},{i * 0.5}" for i in range(40_000)]
    lines[1 + bad_row] = f"{bad_row},not-a-number"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionFailed) as in_halves:
        convert_to_parquet(src, tmp_path / "halves", chunk_rows=30_000)
    assert halves
    with pytest.raises(ConversionFailed) as in_one:
        one_stream(src, tmp_path / "one", chunk_rows=30_000)
    assert "invalid value 'not-a-number'" in str(in_halves.value)
    assert "invalid value 'not-a-number'" in str(in_one.value)  # (one stream may say so when it opens)
    assert list((tmp_path / "halves").iterdir()) == []
    assert no_head_thread_left()


def test_a_conversion_stopped_during_the_first_part_stops_the_head(
    tmp_path: Path, kepler_csv: Path, halves
) -> None:
    """A pause during the first part: nothing published, the head's thread gone, the job resumable."""
    control = JobControl()
    control.interrupt("paused")
    with pytest.raises(JobInterrupted):
        convert_to_parquet(kepler_csv, tmp_path / "out", chunk_rows=14280, control=control)
    assert halves and list((tmp_path / "out").iterdir()) == []
    assert no_head_thread_left()
    convert_to_parquet(kepler_csv, tmp_path / "out", chunk_rows=14280)
    assert digests(tmp_path / "out") == one_stream(kepler_csv, tmp_path / "one", chunk_rows=14280)


def test_the_head_is_used_only_for_a_first_part_worth_a_thread(kepler_csv: Path) -> None:
    """Without the test's override a part under ``HALVES_MIN_BYTES`` of text is one stream, as is a file
    read with no part size given."""
    assert CsvSource(kepler_csv, "csv", first_rows=14280)._middle_of_first_part() is None
    assert CsvSource(kepler_csv, "csv")._middle_of_first_part() is None


@pytest.mark.parametrize("bad", ["not-a-number", "1.0,extra"])
def test_a_bad_line_where_the_tail_begins_is_named(
    tmp_path: Path, halves: list[int], monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """The tail's reader parses its first block when it opens: a bad value, a row with a field too many
    right at the split gives the message of rows read past the first block
    (one stream's, which may also come when it opens: pyarrow reads ahead), not a generic one."""
    monkeypatch.setattr(csv_module, "CSV_INFER_BYTES", 4096)
    src = tmp_path / "bad.csv"
    lines = ["id,flux"] + [f"{i},{i * 0.5}" for i in range(1_500_000)]
    src.write_text("\n".join(lines) + "\n")
    middle = CsvSource(src, "csv", first_rows=2_000_000)._middle_of_first_part()
    assert middle is not None
    data = src.read_bytes()
    end = data.index(b"\n", middle)
    src.write_bytes(data[:middle] + f"7,{bad}".encode("latin-1") + data[end:])
    with pytest.raises(ConversionFailed) as in_halves:
        convert_to_parquet(src, tmp_path / "halves", chunk_rows=2_000_000)
    assert halves
    expected = {"not-a-number": "invalid value 'not-a-number'", "1.0,extra": "a row has 3 fields"}
    assert expected[bad] in str(in_halves.value) and "not a readable" not in str(in_halves.value)
    assert list((tmp_path / "halves").iterdir()) == []
    assert no_head_thread_left()


def test_closing_the_pieces_during_the_head_stops_the_tail_at_once(
    tmp_path: Path, kepler_csv: Path, halves
) -> None:
    """A conversion stopped while the head is read (a pause, a cancel) closes the pieces: the tail's
    thread stops after its current piece, and no file is left open."""
    source = CsvSource(kepler_csv, "csv", first_rows=14280)
    pieces = source.pieces(0)
    first = next(pieces)
    assert first.start > 0 and first.batch.num_rows > 0
    pieces.close()
    assert halves and no_head_thread_left()


@pytest.mark.parametrize("rows", [400_000, 600_000])  # inside the inferred sample (16 MiB), and beyond it
def test_quoted_line_breaks_across_pyarrows_blocks_convert_as_pandas_reads_them(
    local_backend, tmp_path: Path, rows: int
) -> None:
    src = tmp_path / "notes.csv"
    with open(src, "w") as fh:  # an archive export: every tenth row's note holds a line break
        fh.write("id,comment,mag\n")  # with this header, such a value spans a block boundary of pyarrow
        for i in range(rows):
            note = f'"first line of note {i}\nsecond line"' if i % 10 == 0 else f"plain note {i}"
            fh.write(f"{i},{note},12.5\n")

    job = api.stage(str(src), "notes", to_parquet=True, chunk_rows=100_000, wait=True)

    assert job.to_pandas().equals(pd.read_csv(src))
