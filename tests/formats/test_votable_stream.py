"""VOTables of one TABLE converted a slice of rows at a time (``formats.votable_stream``): memory follows
the part size, and the parts are those of the whole-file reader (``hdu=0`` reads the file whole)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from astropy.io.votable import from_table, parse
from astropy.table import MaskedColumn, Table

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.convert import convert_to_parquet

SPITZER = Path("/work/shared/data/spitzer_example_catalog.xml")

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")


def write_binary_votable(path: Path, rows: int, columns: int = 12) -> np.ndarray:
    """A BINARY VOTable of ``rows`` rows of ``columns`` doubles (in mas/yr), written as a TAP service
    would: the header, then the base64 stream. Returns the rows (big-endian records)."""
    fields = "".join(f'<FIELD name="c{i}" datatype="double" unit="mas/yr"/>' for i in range(columns))
    dtype = np.dtype([(f"c{i}", ">f8") for i in range(columns)])
    data = np.zeros(rows, dtype)
    rng = np.random.default_rng(7)
    for i in range(columns):
        data[f"c{i}"] = rng.random(rows)
    with open(path, "wb") as fh:
        fh.write(
            b'<?xml version="1.0" encoding="utf-8"?>\n<VOTABLE version="1.4" '
            b'xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE type="results"><TABLE name="big">'
            + fields.encode()
            + b'<DATA><BINARY><STREAM encoding="base64">\n'
        )
        fh.write(base64.encodebytes(data.tobytes()))
        fh.write(
            b'</STREAM></BINARY></DATA></TABLE><INFO name="QUERY_STATUS" value="OK"/></RESOURCE></VOTABLE>\n'
        )
    return data


def test_a_big_votable_is_checked_and_converted_in_memory_that_follows_the_part_size(tmp_path: Path) -> None:
    src = tmp_path / "big.vot"
    data = write_binary_votable(src, 400_000)  # 38 MB of doubles, 51 MB of base64
    script = textwrap.dedent(
        f"""
        import resource, warnings
        from pathlib import Path
        warnings.simplefilter("ignore")
        import astropy.io.votable, pyarrow.parquet
        from jupyter_staging.formats.convert import convert_to_parquet
        from jupyter_staging.formats.detect import table_problem
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert table_problem(Path({str(src)!r})) is None
        chunks = convert_to_parquet(Path({str(src)!r}), Path({str(tmp_path / "out")!r}), chunk_rows=50_000)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(sum(c.rows for c in chunks), (after - before) // 1024)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=os.environ.copy()
    )
    rows, grown_mib = map(int, done.stdout.split())
    assert rows == 400_000
    # astropy's whole parse of this file grows the process by about 400 MiB (ten times the data); read
    # a slice at a time, by about 130 MiB, whatever the file size
    assert grown_mib < 200, f"the conversion grew the process by {grown_mib} MiB"
    table = ds.dataset(tmp_path / "out").to_table()
    assert np.array_equal(table["c3"].to_numpy(), data["c3"].astype(float))
    assert table.schema.field("c0").metadata[b"unit"] == b"mas.yr-1"


def mixed_table() -> Table:
    """Every kind of column a VOTable FIELD can be, with nulls (masked values) among them."""
    table = Table()
    table["id"] = np.arange(7, dtype=np.int64)
    table["i"] = MaskedColumn([10, 20, 30, 40, 50, 60, 70], mask=[0, 1, 0, 0, 1, 0, 0], dtype=np.int32)
    table["pm"] = MaskedColumn([1.5, 2, 3, 4, 5, 6, 7], mask=[0, 0, 1, 0, 0, 0, 1], unit="mas/yr")
    table["rate"] = np.linspace(0, 1, 7).astype(np.float32)
    table["rate"].unit = "ct/s"
    table["s8"] = ["ab", "cd", "ef", "gh", "ij", "kl", "mn"]
    table["flag"] = [True, False, True, False, True, True, False]
    table["arr"] = np.arange(21, dtype=np.float32).reshape(7, 3)
    table["m2"] = np.arange(28, dtype=np.int16).reshape(7, 2, 2)
    table["sh"] = MaskedColumn([1, 2, 3, 4, 5, 6, 7], mask=[1, 0, 0, 0, 0, 0, 0], dtype=np.int16)
    table["ub"] = np.array([0, 1, 2, 3, 4, 5, 255], dtype=np.uint8)
    table["c"] = np.full(7, 1 + 2j, dtype=np.complex64)
    table["pm"].description = "proper motion"
    return table


def _variable_fields(path: Path) -> None:
    """A TABLEDATA VOTable with ``char``/``unicodeChar`` ``arraysize="*"`` and a variable-length array,
    all null in the first two rows (so in the first slice of two rows)."""
    table = Table()
    table["id"] = np.arange(5)
    table["name"] = MaskedColumn(["", "", "c", "dd", "eee"], mask=[1, 1, 0, 0, 1])
    table["uname"] = MaskedColumn(["", "", "γ", "δδ", "ε"], mask=[1, 1, 0, 0, 0])
    votable = from_table(table)
    votable.get_first_table().fields[2].datatype = "unicodeChar"
    votable.to_xml(str(path))
    votable = parse(str(path))
    table_element = votable.get_first_table()
    for field in table_element.fields[1:]:
        field.arraysize = "*"
    votable.to_xml(str(path))
    for serialization in ("binary", "binary2"):  # each value preceded by its length
        votable = parse(str(path))
        votable.set_all_tables_format(serialization)
        votable.to_xml(str(path.with_name(f"{path.stem}-{serialization}.xml")))


def _packed_fields(path: Path) -> None:
    """A TABLEDATA VOTable of the FIELDs whose binary size is not one byte per character: unicodeChar
    (two), bits (packed eight to a byte), doubleComplex arrays, a boolean and a long with nulls."""
    from astropy.io.votable.tree import Field, Resource, TableElement, VOTableFile

    votable = VOTableFile()
    votable.resources.append(Resource())
    table = TableElement(votable, name="packed")
    votable.resources[0].tables.append(table)
    kinds = [
        ("u4", "unicodeChar", "4"),
        ("bits", "bit", "10"),
        ("bit1", "bit", None),
        ("dc", "doubleComplex", "2"),
        ("b", "boolean", None),
        ("l", "long", None),
    ]
    table.fields.extend(Field(votable, name=n, datatype=d, arraysize=a) for n, d, a in kinds)
    table.fields[5].values.null = -1
    table.create_arrays(9)
    rows = table.array
    rows["u4"] = ["αβγδ", "x", "", "yy", "z", "w", "v", "u", "t"]
    rows["bits"] = [[True, False] * 5] * 9
    rows["bit1"] = [True, False, True] * 3
    rows["dc"] = [[1 + 1j, 2 - 2j]] * 9
    rows["b"] = [True, False, True] * 3
    rows.mask["b"][4] = True
    rows["l"] = np.arange(9)
    rows.mask["l"][3] = True
    votable.to_xml(str(path))


def _files(tmp_path: Path) -> list[Path]:
    files = [SPITZER]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for serialization in ("tabledata", "binary", "binary2"):
            votable = from_table(mixed_table())
            for field in votable.get_first_table().fields:
                if field.datatype in ("short", "int"):  # a null value: BINARY has no null flags
                    field.values.null = -1
            votable.set_all_tables_format(serialization)
            path = tmp_path / f"mixed-{serialization}.xml"
            votable.to_xml(str(path))
            files.append(path)
        _variable_fields(tmp_path / "variable.xml")
        _packed_fields(tmp_path / "packed-tabledata.xml")
        for serialization in ("binary", "binary2"):
            votable = parse(str(tmp_path / "packed-tabledata.xml"))
            votable.set_all_tables_format(serialization)
            votable.to_xml(str(tmp_path / f"packed-{serialization}.xml"))
    packed = [
        tmp_path / f"packed-{serialization}.xml" for serialization in ("tabledata", "binary", "binary2")
    ]
    variable = [tmp_path / name for name in ("variable.xml", "variable-binary.xml", "variable-binary2.xml")]
    return files + variable + packed


@pytest.mark.parametrize(
    ("chunk_rows", "start_index", "slice_rows"), [(3, 0, 20_000), (2, 1, 20_000), (3, 1, 2)]
)
def test_slices_give_the_parts_of_the_whole_file_reader(
    tmp_path: Path, monkeypatch, chunk_rows: int, start_index: int, slice_rows: int
) -> None:
    from jupyter_staging.formats import votable_stream

    monkeypatch.setattr(votable_stream, "SLICE_ROWS", slice_rows)
    for src in _files(tmp_path):
        assert votable_stream.streamed_layout(src) is not None, src.name
        assert isinstance(
            votable_stream.votable_source(src, None, chunk_rows), votable_stream.StreamedVOTable
        )
        sliced, whole = tmp_path / f"{src.stem}-sliced", tmp_path / f"{src.stem}-whole"
        parts = convert_to_parquet(src, sliced, chunk_rows=chunk_rows, start_index=start_index)
        expected = convert_to_parquet(src, whole, chunk_rows=chunk_rows, start_index=start_index, hdu=0)
        assert [(p.name, p.rows) for p in parts] == [(p.name, p.rows) for p in expected], src.name
        got, want = ds.dataset(sliced).to_table(), ds.dataset(whole).to_table()
        assert got.equals(want, check_metadata=True), src.name


def test_a_damaged_binary_stream_fails_naming_the_rows_and_leaves_no_part(tmp_path: Path) -> None:
    src = tmp_path / "damaged.vot"
    write_binary_votable(src, 1000, columns=2)
    text = src.read_bytes()
    start = text.index(b"<STREAM")
    src.write_bytes(text[: start + 2000] + b"abc" + text[start + 2000 :])  # 3 characters too many
    with pytest.raises(ConversionFailed) as caught:
        convert_to_parquet(src, tmp_path / "out", chunk_rows=100)
    assert caught.value.code == "conversion_failed"
    assert caught.value.message.startswith("damaged.vot: not a readable VOTable")
    assert "base64" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert not list((tmp_path / "out").glob("*.part"))


def test_a_votable_malformed_after_its_first_slice_fails_the_job_and_leaves_no_part(
    local_backend, tmp_path: Path
) -> None:
    from jupyter_staging.errors import StagingError
    from jupyter_staging.kernel import api

    table = Table({"id": np.arange(50_000), "flux": np.linspace(0, 1, 50_000)})
    src = tmp_path / "cat.xml"
    from_table(table).to_xml(str(src))
    text = src.read_bytes()
    row = text.index(b"<TD>45000</TD>")
    src.write_bytes(text[:row] + b"<TD>45000</TX>" + text[row + 14 :])  # malformed XML in row 45001

    with pytest.raises(StagingError) as failed:
        api.stage(str(src), "cat", to_parquet=True, chunk_rows=10_000, wait=True)

    assert failed.value.code == "conversion_failed"
    message = str(failed.value)
    assert "cat.xml: not a readable VOTable (rows 40001 to 50000)" in message, message
    assert str(tmp_path) not in message and "Traceback" not in message
    assert not [p for p in (tmp_path / "cat").rglob("*") if p.is_file()]


def _markup_votable(rows: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """A TABLEDATA VOTable of an int and a char column, with ``before`` ahead of its FIELDs and ``after``
    its TABLE."""
    return (
        b'<?xml version="1.0"?>\n<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
        b"<RESOURCE><TABLE>" + before + b'<FIELD name="id" datatype="int"/>'
        b'<FIELD name="s" datatype="char" arraysize="*"/><DATA><TABLEDATA>\n'
        + rows
        + b"</TABLEDATA></DATA></TABLE>"
        + after
        + b"</RESOURCE></VOTABLE>\n"
    )


def _markup_row(i: int, text: bytes = b"x", then: bytes = b"") -> bytes:
    return b"<TR><TD>%d</TD><TD>%s</TD></TR>\n%s" % (i, text, then)


MARKUP = {
    "a comment between rows": _markup_votable(
        b"".join(_markup_row(i, then=b"<!-- </TR> <TR><TD>9</TD></TR> -->" * (i == 0)) for i in range(6))
    ),
    "CDATA in a TD": _markup_votable(
        b"".join(_markup_row(i, b"<![CDATA[a</TR>b]]>" if i in (1, 3) else b"x") for i in range(6))
    ),
    "a processing instruction": _markup_votable(
        b"".join(_markup_row(i, then=b"<?x </TR> ?>" * (i == 2)) for i in range(6))
    ),
    "a comment in the header": _markup_votable(
        b"".join(_markup_row(i) for i in range(6)), before=b"<!-- the rows: <TABLEDATA> below -->"
    ),
    "CDATA in a DESCRIPTION": _markup_votable(
        b"".join(_markup_row(i) for i in range(6)),
        before=b"<DESCRIPTION><![CDATA[rows in <TABLEDATA>]]></DESCRIPTION>",
    ),
    "a comment in the trailer": _markup_votable(
        b"".join(_markup_row(i) for i in range(6)), after=b"<!-- was </TABLEDATA> -->"
    ),
}


@pytest.mark.parametrize("name", list(MARKUP))
@pytest.mark.parametrize("block", [1 << 20, 7])
def test_tags_inside_comments_cdata_or_instructions_are_not_tags(
    tmp_path: Path, monkeypatch, name: str, block: int
) -> None:
    """A ``</TR>`` or ``<TABLEDATA>`` written in a comment, CDATA section or processing instruction cut the
    file there: a valid VOTable failed to convert ('unclosed token'), or its rows were miscounted."""
    from jupyter_staging.formats import votable_stream

    monkeypatch.setattr(votable_stream, "SLICE_ROWS", 2)
    monkeypatch.setattr(votable_stream, "_BLOCK", block)  # comments and tags cut by a block's end
    src = tmp_path / "markup.xml"
    src.write_bytes(MARKUP[name])
    assert isinstance(votable_stream.votable_source(src, None, 2), votable_stream.StreamedVOTable)
    for start_index in (0, 1):
        sliced, whole = tmp_path / f"sliced{start_index}", tmp_path / f"whole{start_index}"
        parts = convert_to_parquet(src, sliced, chunk_rows=2, start_index=start_index)
        expected = convert_to_parquet(src, whole, chunk_rows=2, start_index=start_index, hdu=0)
        assert [(p.name, p.rows) for p in parts] == [(p.name, p.rows) for p in expected]
        got, want = ds.dataset(sliced).to_table(), ds.dataset(whole).to_table()
        assert got.equals(want, check_metadata=True)
        assert got["id"].to_pylist() == list(range(2 * start_index, 6))
