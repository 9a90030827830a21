"""Units, UCDs and descriptions reach astropy: ``QTable.read(part, format="parquet")`` and ``to_qtable``.

Also the inputs of issue 16 that crashed or were refused unhelpfully: array PARAMs, complex columns, a
TABLE without DATA, Quantity metadata, zero-width FITS columns, a CSV with short rows, VOTables astropy
rejects.
"""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import astropy
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.table import QTable, Table
from astropy.time import Time

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.astropy_meta import astropy_unit
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.detect import is_table
from jupyter_staging.kernel.tables import to_qtable
from tests.helpers.data import latin1_past_inference

DATA = Path("/work/shared/data")
KEPLER = DATA / "kplr010666592-2009131110544_slc.fits"
TESS = DATA / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"
SPITZER = DATA / "spitzer_example_catalog.xml"
ASTROPY = Path(astropy.__file__).parent

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")


def test_kepler_units_reach_astropy_parquet_reader_and_arrow_keeps_the_original(tmp_path: Path) -> None:
    parts = convert_to_parquet(KEPLER, tmp_path / "out", chunk_rows=5000)
    assert len(parts) == 3
    first = tmp_path / "out" / parts[0].name
    table = QTable.read(first, format="parquet")
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s
    assert isinstance(table["PDCSAP_FLUX"], u.Quantity)
    assert isinstance(table["TIME"], Time) and table["TIME"].scale == "tdb"  # BJD - 2454833: days since
    assert table["PDCSAP_FLUX"].info.meta["original_unit"] == "e-/s"
    assert table["PDCSAP_FLUX"].info.description  # TTYPE comment: "aperture photometry flux"
    assert len(table) == 5000 and table.meta["jupyter_staging.format"] == "fits"
    arrow = pq.read_table(first)
    assert arrow.schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"
    raw = fits.getdata(KEPLER, 1)
    np.testing.assert_array_equal(table["PDCSAP_FLUX"].value, raw["PDCSAP_FLUX"][:5000])


def test_kepler_to_qtable_has_quantities_masks_and_bjd_times(tmp_path: Path) -> None:
    convert_to_parquet(KEPLER, tmp_path / "out", chunk_rows=5000)
    table = to_qtable(pq.read_table(tmp_path / "out"))
    raw = fits.getdata(KEPLER, 1)
    header = fits.getheader(KEPLER, 1)
    assert len(table) == len(raw) == 14280
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s
    assert isinstance(table["TIME"], Time) and table["TIME"].scale == "tdb"
    finite = np.isfinite(raw["TIME"])
    expected = header["BJDREFI"] + header["BJDREFF"] + raw["TIME"][finite]
    np.testing.assert_allclose(table["TIME"].jd[finite], expected, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(table["SAP_QUALITY"], raw["SAP_QUALITY"])


def test_tess_to_qtable_uses_its_own_reference_time(tmp_path: Path) -> None:
    convert_to_parquet(TESS, tmp_path / "out")
    table = to_qtable(pq.read_table(tmp_path / "out"))
    assert isinstance(table["TIME"], Time)
    # The cadences without a time (NaN TIME) are masked (kernel/tables.py): the column is a masked Time.
    first = table["TIME"][0]
    assert not first.mask and first.unmasked.iso.startswith("2018-07-25")  # TESS sector 1 began then
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s


VOTABLE = """<?xml version="1.0"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE><TABLE>
  <FIELD name="ra" datatype="double" unit="deg" ucd="pos.eq.ra;meta.main">
   <DESCRIPTION>Right ascension</DESCRIPTION>
  </FIELD>
  <FIELD name="flux" datatype="float" unit="mJy" ucd="phot.flux.density"/>
  <DATA><TABLEDATA><TR><TD>10.5</TD><TD>1.25</TD></TR><TR><TD>11.0</TD><TD></TD></TR></TABLEDATA></DATA>
 </TABLE></RESOURCE>
</VOTABLE>
"""


def test_votable_units_ucds_and_descriptions_reach_astropy(tmp_path: Path) -> None:
    parts = convert_to_parquet(SPITZER, tmp_path / "out")
    table = QTable.read(tmp_path / "out" / parts[0].name, format="parquet")
    reference = Table.read(SPITZER, format="votable")
    assert [table[n].unit if hasattr(table[n], "unit") else None for n in reference.colnames] == [
        reference[n].unit for n in reference.colnames
    ]
    assert to_qtable(pq.read_table(tmp_path / "out"))["l"].unit == u.deg
    src = tmp_path / "small.vot"
    src.write_text(VOTABLE)
    parts = convert_to_parquet(src, tmp_path / "small")
    small = QTable.read(tmp_path / "small" / parts[0].name, format="parquet")
    assert small["ra"].unit == u.deg and small["ra"].info.meta["ucd"] == "pos.eq.ra;meta.main"
    assert small["ra"].info.description == "Right ascension"
    assert small["flux"].unit == u.mJy and small["flux"].info.meta["ucd"] == "phot.flux.density"
    assert to_qtable(pq.read_table(tmp_path / "small"))["flux"].mask.tolist() == [False, True]


def test_string_columns_and_empty_parts_are_read_by_astropy(tmp_path: Path) -> None:
    src = tmp_path / "names.csv"
    src.write_text("name,flux\nalpha,1.5\nbeta-longer,2.5\n,3.5\n")
    parts = convert_to_parquet(src, tmp_path / "out", chunk_rows=2)
    second = QTable.read(tmp_path / "out" / parts[1].name, format="parquet")
    assert list(QTable.read(tmp_path / "out" / parts[0].name, format="parquet")["name"]) == [
        "alpha",
        "beta-longer",
    ]
    assert len(second) == 1 and second["flux"][0] == 3.5
    empty = tmp_path / "empty.ecsv"
    empty.write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: a, datatype: string}\n"
        "# - {name: b, unit: m, datatype: float64}\na b\n"
    )
    parts = convert_to_parquet(empty, tmp_path / "empty")
    read = QTable.read(tmp_path / "empty" / parts[0].name, format="parquet")
    assert len(read) == 0 and read["b"].unit == u.m


@pytest.mark.parametrize(
    ("text", "expected"),
    [("e-/s", "electron / s"), ("BJD - 2454833", "d"), ("mJy", "mJy"), ("---", ""), ("no such unit", None)],
)
def test_unit_spellings(text: str, expected: str | None) -> None:
    assert astropy_unit(text) == expected


def test_quantity_table_metadata_is_value_and_unit(tmp_path: Path) -> None:
    convert_to_parquet(ASTROPY / "cosmology" / "data" / "Planck18.ecsv", tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    meta = json.loads(table.schema.metadata[b"ecsv.meta"])
    assert table.num_rows == 1 and table.column("H0").to_pylist() == [pytest.approx(67.66)]
    quantities = [v for v in meta.values() if isinstance(v, dict) and set(v) == {"value", "unit"}]
    assert quantities, meta  # e.g. Tcmb0 serialised as {"value": 2.7255, "unit": "K"}


def test_votable_array_params_complex_columns_and_tables_without_data(tmp_path: Path) -> None:
    src = ASTROPY / "io" / "votable" / "tests" / "data" / "regression.xml"
    convert_to_parquet(src, tmp_path / "t0", hdu=0)
    table = pq.read_table(tmp_path / "t0")
    params = json.loads(table.schema.metadata[b"votable.params"])
    assert any(isinstance(p.get("value"), list) for p in params)  # array PARAMs kept as lists
    complex_column = table.column("floatComplex").to_pylist()
    assert all(v is None or len(v) == 2 for v in complex_column)  # [re, im]
    convert_to_parquet(src, tmp_path / "t2", hdu=2)  # FIELDs but no DATA
    assert pq.read_table(tmp_path / "t2").num_rows == 0


def test_zero_width_fits_column_becomes_empty_lists(tmp_path: Path) -> None:
    src = ASTROPY / "io" / "fits" / "tests" / "data" / "zerowidth.fits"
    convert_to_parquet(src, tmp_path / "out", hdu=2)
    table = pq.read_table(tmp_path / "out")
    reference = Table.read(src, hdu=2)
    zero = [n for n in reference.colnames if reference[n].shape[1:] and 0 in reference[n].shape[1:]]
    assert zero and all(v == [] for v in table.column(zero[0]).to_pylist())
    assert table.num_rows == len(reference)


def test_csv_with_short_rows_is_read_as_astropy_reads_it(tmp_path: Path) -> None:
    src = tmp_path / "short.csv"
    src.write_text("a,b,c\n1\n4,5,6\n")
    convert_to_parquet(src, tmp_path / "out")
    assert pq.read_table(tmp_path / "out").to_pydict() == {"a": [1, 4], "b": [None, 5], "c": [None, 6]}


def test_short_rows_read_nulls_as_the_streamed_reader_does(tmp_path: Path) -> None:
    """``NA``, ``NULL``, ``N/A`` and empty fields are null in a file with short rows too (they were text, and
    made the column a string column); ``nan`` stays NaN."""
    src = tmp_path / "short.csv"
    src.write_text("id,x,name,extra\n1,2.5,a,q\n2,NA,NULL\n3,nan,,z\n4,N/A,b\n")
    convert_to_parquet(src, tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("x").type == pa.float64()
    got = table.to_pydict()
    assert got["x"][0] == 2.5 and got["x"][1] is None and np.isnan(got["x"][2]) and got["x"][3] is None
    assert got["name"] == ["a", None, None, "b"]
    assert got["extra"] == ["q", None, "z", None]


def test_a_csv_that_is_not_utf8_text_says_so(tmp_path: Path) -> None:
    """Bytes that are no UTF-8 text, whose lines also disagree with the header (read the astropy way), fail
    naming the encoding, not "rows and header disagree"."""
    src = tmp_path / "dump.csv"
    src.write_bytes(b"\xff\xfe\x00header\n1,2\n")
    with pytest.raises(ConversionFailed) as caught:
        convert_to_parquet(src, tmp_path / "out")
    assert caught.value.message.startswith("dump.csv: not UTF-8 text")
    assert str(tmp_path) not in caught.value.message


def test_latin1_text_is_kept_as_bytes_and_warned_of(tmp_path: Path, caplog) -> None:
    """Latin-1 text in the first 16 MiB: the column is read as bytes, value for value, and a warning names
    it; past them (types already inferred as strings), the conversion fails saying the text is not UTF-8."""
    src = tmp_path / "names.csv"
    src.write_bytes("name,flux\nAlpha Cen,1.5\nBeta \xc5ngstr\xf6m,2.5\n".encode("latin-1"))
    with caplog.at_level("WARNING", logger="jupyter_staging.formats.csv"):
        convert_to_parquet(src, tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.column("name").to_pylist() == [b"Alpha Cen", "Beta \xc5ngstr\xf6m".encode("latin-1")]
    assert "names.csv: columns name are not UTF-8 text" in caplog.text
    late = latin1_past_inference(tmp_path / "late.csv")
    with pytest.raises(ConversionFailed) as caught:
        convert_to_parquet(late, tmp_path / "late")
    assert caught.value.message.startswith("late.csv: not UTF-8 text after the first 16 MiB (column 1, ")
    assert "save it as UTF-8" in caught.value.message and str(tmp_path) not in caught.value.message


def test_votable_astropy_rejects_is_staged_as_it_is_and_messages_hold_no_folder(tmp_path: Path) -> None:
    src = ASTROPY / "io" / "votable" / "tests" / "data" / "custom_datatype.xml"
    assert not is_table(src)
    with warnings.catch_warnings(), pytest.raises(ConversionFailed) as caught:
        warnings.simplefilter("ignore")
        convert_to_parquet(src, tmp_path / "out")
    assert "custom_datatype.xml" in caught.value.message and str(src.parent) not in caught.value.message


def test_arrow_types_round_trip_through_to_qtable() -> None:
    arrow = pa.table(
        {
            "i": pa.array([1, None, 3], pa.int32()),
            "v": pa.array([[1.0, 2.0], None, [5.0, None]], pa.list_(pa.float64(), 2)),
            "s": pa.array(["x", None, "zz"]),
            "l": pa.array([[1], [], None], pa.list_(pa.int64())),
        }
    )
    table = to_qtable(arrow)
    assert table["i"].mask.tolist() == [False, True, False] and table["i"][2] == 3
    assert table["v"].shape == (3, 2) and table["v"].mask.tolist() == [
        [False, False],
        [True, True],
        [False, True],
    ]
    assert table["s"].mask.tolist() == [False, True, False] and table["s"][2] == "zz"
    assert table["l"][0].tolist() == [1] and table["l"].mask.tolist() == [False, False, True]


def test_a_latin1_csv_with_its_encoding_given_is_read_as_text(tmp_path: Path) -> None:
    """``encoding="latin-1"``: the names and a unit (``Å``, ``µJy``) come out as strings, as the file
    means them, whether the rows are streamed or (rows shorter than the header) read whole by astropy; an
    encoding that does not write line ends as ASCII (UTF-16), or one Python does not know, is refused."""
    src = tmp_path / "names.csv"
    src.write_bytes("name,flux,unit\nAlpha Cen,1.5,\xc5\nBeta \xc5ngstr\xf6m,2.5,\xb5Jy\n".encode("latin-1"))
    convert_to_parquet(src, tmp_path / "out", encoding="latin-1")
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert rows == [
        {"name": "Alpha Cen", "flux": 1.5, "unit": "Å"},
        {"name": "Beta Ångström", "flux": 2.5, "unit": "µJy"},
    ]
    ragged = tmp_path / "ragged.csv"
    ragged.write_bytes("name,flux,unit\nAlpha Cen,1.5\nBeta \xc5ngstr\xf6m,2.5,\xb5Jy\n".encode("latin-1"))
    convert_to_parquet(ragged, tmp_path / "ragged", encoding="cp1252")
    assert pq.read_table(tmp_path / "ragged").column("name").to_pylist() == ["Alpha Cen", "Beta Ångström"]
    for bad, said in (("utf-16", "does not write line ends"), ("klingon", "unknown text encoding")):
        with pytest.raises(ConversionFailed, match=said):
            convert_to_parquet(src, tmp_path / bad, encoding=bad)
        assert not (tmp_path / bad).exists()


REPEATED_VOTABLE = """<?xml version="1.0"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"><RESOURCE><TABLE>
<FIELD name="source_id" datatype="long"/>
<FIELD name="ra" datatype="double" unit="deg"/>
<FIELD name="ra" datatype="double" unit="deg"/>
<DATA><TABLEDATA><TR><TD>1</TD><TD>10.5</TD><TD>10.6</TD></TR></TABLEDATA></DATA>
</TABLE></RESOURCE></VOTABLE>
"""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("join.vot", REPEATED_VOTABLE),  # a TAP join: SELECT a.source_id, a.ra, b.ra
        ("join.csv", "source_id,ra,ra\n1,10.5,10.6\n"),
        ("short.csv", "source_id,ra,ra\n1,10.5,10.6\n2,11.5\n"),  # a short row: read by astropy
    ],
)
def test_a_repeated_column_name_is_made_unique_and_both_columns_read_back(
    tmp_path: Path, name: str, text: str
) -> None:
    src = tmp_path / name
    src.write_text(text)
    convert_to_parquet(src, tmp_path / "out")

    arrow = pq.read_table(tmp_path / "out")
    table = to_qtable(arrow)

    assert arrow.column_names == ["source_id", "ra", "ra_1"]  # as astropy.io.ascii names them
    if name != "short.csv":  # astropy reads that one, and gives the name
        assert arrow.schema.field("ra_1").metadata[b"original_name"] == b"ra"
    assert u.Quantity(table["ra"][0]).value == 10.5 and u.Quantity(table["ra_1"][0]).value == 10.6
    assert arrow.to_pandas()["ra_1"].iloc[0] == 10.6


@pytest.mark.parametrize("rows", [b"1,10.5\n2,11.5\n", b"1,10.5\n2\n"])  # a short row: read by astropy
def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path, rows: bytes) -> None:
    src = tmp_path / "excel.csv"
    src.write_bytes(b"\xef\xbb\xbfid,ra\n" + rows)  # as Excel saves UTF-8

    convert_to_parquet(src, tmp_path / "out")

    assert pq.read_table(tmp_path / "out").column_names == ["id", "ra"]


def test_ecsv_columns_aligned_with_spaces_convert_as_astropy_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "aligned.ecsv"
    src.write_text(
        "# %ECSV 1.0\n# ---\n# datatype:\n# - {name: id, datatype: int64}\n"
        "# - {name: mag, unit: mag, datatype: float64}\n# - {name: name, datatype: string}\n"
        "id  mag    name\n1   12.50  Vega \n22  3.25   Deneb\n"
    )

    convert_to_parquet(src, tmp_path / "out")

    table = to_qtable(pq.read_table(tmp_path / "out"))
    expected = Table.read(src, format="ascii.ecsv")
    assert list(table["name"]) == list(expected["name"]) == ["Vega", "Deneb"]
    assert table["mag"].unit == u.mag and list(table["mag"].value) == [12.5, 3.25]


def test_an_ecsv_time_column_stays_the_text_the_file_holds(tmp_path: Path) -> None:
    src = tmp_path / "times.ecsv"
    Table({"t": Time(["2020-01-01T00:00:00", "2021-06-01T12:00:00"]), "flux": [1.0, 2.0]}).write(src)

    convert_to_parquet(src, tmp_path / "out")

    arrow = pq.read_table(tmp_path / "out")
    assert arrow.column_names == ["t", "flux"]  # not astropy's two doubles t.jd1, t.jd2
    assert arrow.column("t").to_pylist() == ["2020-01-01T00:00:00.000", "2021-06-01T12:00:00.000"]


def test_csv_nan_stays_nan_and_an_empty_text_field_is_null(tmp_path: Path) -> None:
    src = tmp_path / "nulls.csv"
    src.write_text("id,flux,name\n1,nan,NULL\n2,NaN,\n3,,x\n4,inf,y\n")

    convert_to_parquet(src, tmp_path / "out")

    arrow = pq.read_table(tmp_path / "out")
    flux = arrow.column("flux").to_pylist()
    assert np.isnan(flux[0]) and np.isnan(flux[1]) and flux[2] is None and flux[3] == np.inf
    assert arrow.column("name").to_pylist() == [None, None, "x", "y"]
    table = to_qtable(arrow)
    assert table["flux"].mask.tolist() == [False, False, True, False]  # as astropy masks the empty field
    assert table["name"].mask.tolist() == [True, True, False, False]


def test_complex_and_variable_length_fits_columns_keep_their_numpy_types(tmp_path: Path) -> None:
    src = tmp_path / "arrays.fits"
    rows = 4
    columns = [
        fits.Column(name="vis", format="C", array=np.arange(rows) + 1j),
        fits.Column(name="pair", format="2M", array=np.arange(2 * rows).reshape(rows, 2) - 1j),
        fits.Column(name="flags", format="PB()", array=[np.arange(n, dtype=np.uint8) for n in range(rows)]),
        fits.Column(
            name="flux", format="PE()", array=[np.arange(n, dtype=np.float32) / 3 for n in range(rows)]
        ),
        fits.Column(name="gains", format="PC()", array=[np.arange(n) + 1j for n in range(rows)]),
    ]
    fits.BinTableHDU.from_columns(columns).writeto(src)
    expected = Table.read(src)

    convert_to_parquet(src, tmp_path / "out")

    table = to_qtable(pq.read_table(tmp_path / "out"))
    for name in ("vis", "pair"):
        assert table[name].dtype.kind == "c" and table[name].shape == expected[name].shape
        assert np.array_equal(np.asarray(table[name]), np.asarray(expected[name]))
    for name in ("flags", "flux", "gains"):
        for got, want in zip(table[name], expected[name], strict=True):
            assert got.dtype == want.dtype.newbyteorder("=") and np.array_equal(got, want)


@pytest.mark.parametrize("cut", ["gzip", "header"])
def test_a_fits_table_cut_short_is_named_as_damaged_not_as_no_table(
    local_backend, tmp_path: Path, cut
) -> None:
    from jupyter_staging.errors import StagingError
    from jupyter_staging.kernel import api
    from tests.helpers.data import KEPLER

    data = KEPLER.read_bytes()
    if cut == "gzip":  # a download that stopped half-way
        src = tmp_path / "kepler.fits.gz"
        packed = gzip.compress(data)
        src.write_bytes(packed[: len(packed) // 2])
    else:  # cut inside the table extension's header
        src = tmp_path / "kepler.fits"
        src.write_bytes(data[: 2880 * 3 + 1000])

    job = api.stage(str(src), "cut", to_parquet=True, wait=True)

    assert job.notices == [
        f"{src.name}: not a readable FITS file (nothing after the primary header: the "
        "file may have been cut short): staged as it is"
    ]
    with pytest.raises(StagingError) as refused:
        job.to_table()
    assert refused.value.code == "no_parquet_output" and "cut short" in str(refused.value)


def test_an_ecsv_error_other_than_alignment_is_not_read_again_by_astropy(tmp_path: Path) -> None:
    src = tmp_path / "latin.ecsv"
    src.write_bytes(
        b"# %ECSV 1.0\n# ---\n# datatype:\n# - {name: id, datatype: int64}\n"
        b"# - {name: name, datatype: string}\nid name\n1 Caf\xe9\n"
    )
    with pytest.raises(ConversionFailed, match="not UTF-8 text"):  # its own advice, not astropy's words
        convert_to_parquet(src, tmp_path / "out")


def test_a_fits_file_of_a_primary_header_alone_is_not_a_table_not_cut_short(tmp_path: Path) -> None:
    from jupyter_staging.formats.detect import table_problem

    src = tmp_path / "header-only.fits"
    fits.PrimaryHDU(header=fits.Header([("EXTEND", False), ("OBSERVER", "me")])).writeto(src)
    assert table_problem(src) == "not a table"


def spitzer_with_mixins(path: Path) -> QTable:
    """The Spitzer catalogue's positions as a Galactic ``SkyCoord``, with a ``Time`` of each kind astropy's
    ECSV writer serializes (an ISO text, an MJD in TDB), written to ``path`` as ECSV."""
    from astropy.coordinates import SkyCoord

    source = QTable.read(SPITZER)[:40]
    table = QTable()
    table["pos"] = SkyCoord(l=source["l"], b=source["b"], frame="galactic")
    table["obs"] = Time("2008-05-01T00:00:00", scale="utc") + np.arange(40) * u.hour
    table["mid"] = Time(54587.0 + np.arange(40) / 24, format="mjd", scale="tdb")
    table["f4_5"] = source["f4_5"]
    table.write(path, format="ascii.ecsv")
    return table


def test_ecsv_time_and_skycoord_columns_come_back_as_mixins(tmp_path: Path) -> None:
    """astropy's ECSV writer splits a ``SkyCoord`` into ``pos.l`` / ``pos.b`` and describes it in
    ``__serialized_columns__``; ``to_table()`` and ``QTable.read(part)`` rebuild it, and the times."""
    from astropy.coordinates import SkyCoord

    expected = spitzer_with_mixins(tmp_path / "cat.ecsv")
    parts = convert_to_parquet(tmp_path / "cat.ecsv", tmp_path / "out", chunk_rows=16)
    assert [p.rows for p in parts] == [16, 16, 8]
    arrow = pq.read_table(tmp_path / "out")
    assert arrow.column_names == ["pos.l", "pos.b", "obs", "mid", "f4_5"]  # pandas still gets plain columns
    for table in (to_qtable(arrow), QTable.read(tmp_path / "out" / parts[0].name, format="parquet")):
        rows = len(table)
        assert table.colnames == ["pos", "obs", "mid", "f4_5"]
        assert isinstance(table["pos"], SkyCoord) and table["pos"].frame.name == "galactic"
        assert np.allclose(table["pos"].l.deg, expected["pos"].l.deg[:rows])
        assert isinstance(table["obs"], Time) and table["obs"].scale == "utc"
        assert table["obs"].isot[1] == "2008-05-01T01:00:00.000"
        assert isinstance(table["mid"], Time) and table["mid"].scale == "tdb"
        assert np.allclose(table["mid"].mjd, expected["mid"].mjd[:rows])
        assert table["f4_5"].unit == u.mJy
        assert "__serialized_columns__" not in table.meta


def test_mixins_astropy_cannot_rebuild_stay_plain_columns(tmp_path: Path) -> None:
    """A description naming a column that is not there (a part read with some columns only) leaves the
    columns as they are, with their units."""
    spitzer_with_mixins(tmp_path / "cat.ecsv")
    convert_to_parquet(tmp_path / "cat.ecsv", tmp_path / "out", chunk_rows=100)
    arrow = pq.read_table(tmp_path / "out").drop_columns(["pos.b"])
    table = to_qtable(arrow)
    assert table.colnames == ["pos.l", "obs", "mid", "f4_5"]
    assert table["pos.l"].unit == u.deg
