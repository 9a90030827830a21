"""CSV rows longer than pyarrow's block (a long text field): read whole, or refused with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.csv import CSV_BLOCK_SIZE, CSV_INFER_BYTES


def test_a_field_longer_than_a_block_is_converted_as_pandas_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "spectra.csv"
    long = "x" * (3 * CSV_BLOCK_SIZE)
    src.write_text(f"id,blob,flux\n1,{long},1.5\n2,short,2.5\n3,{long}y,3.5\n")

    convert_to_parquet(src, tmp_path / "out", chunk_rows=2)

    table = pq.read_table(tmp_path / "out")
    reference = pd.read_csv(src)
    assert table.column("blob").to_pylist() == reference["blob"].tolist()
    assert table.column("flux").to_pylist() == [1.5, 2.5, 3.5]


def test_a_longer_row_after_the_inferred_sample_is_refused_with_its_reason(tmp_path: Path) -> None:
    src = tmp_path / "late.csv"
    with src.open("w") as out:
        out.write("id,blob\n")
        rows = (CSV_INFER_BYTES + 2 * CSV_BLOCK_SIZE) // len("100000,abc\n")  # past the inferred sample
        out.write("".join(f"{i},abc\n" for i in range(rows)))
        out.write(f"{rows},{'y' * (2 * CSV_BLOCK_SIZE)}\n")

    with pytest.raises(ConversionFailed) as refused:
        convert_to_parquet(src, tmp_path / "out")

    assert "a row longer than 1 MiB comes after the first 16 MiB" in str(refused.value)


def test_a_quoted_value_with_line_breaks_longer_than_a_block_is_one_value(tmp_path: Path) -> None:
    """pyarrow cuts such a value at its block boundary, which looks like a short row: not a ragged file."""
    src = tmp_path / "notes.csv"
    note = ("a line of notes\n" * (3 * CSV_BLOCK_SIZE // 16)).rstrip("\n")
    src.write_text(f'id,note\n1,"{note}"\n2,short\n')

    convert_to_parquet(src, tmp_path / "out")

    table = pq.read_table(tmp_path / "out")
    assert table.column("note").to_pylist() == pd.read_csv(src)["note"].tolist() == [note, "short"]
    assert table.column("id").to_pylist() == [1, 2]
