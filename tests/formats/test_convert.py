"""Conversion of real and generated tables to chunked Parquet (jupyter_staging.formats.convert)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.io.votable import parse as parse_votable
from astropy.io.votable.tree import Param
from astropy.table import MaskedColumn, Table

from jupyter_staging.errors import ConversionFailed, DestinationExists, JobInterrupted, SourceNotFound
from jupyter_staging.formats.base import ChunkInfo
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.detect import detect_format, is_table
from jupyter_staging.safety.control import JobControl

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
KEPLER = DATA / "kplr010666592-2009131110544_slc.fits"
TESS = DATA / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"
TAU_CETI = DATA / "wright_eastmann_2014_tau_ceti.fits"
SPITZER = DATA / "spitzer_example_catalog.xml"
HORSEHEAD = DATA / "HorseHead.fits"
ROSAT = DATA / "allsky_rosat.fits"


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def part_rows(folder: Path) -> list[int]:
    return [pq.ParquetFile(folder / name).metadata.num_rows for name in files_in(folder)]


def assert_chunks_match_files(chunks: list[ChunkInfo], folder: Path) -> None:
    for chunk in chunks:
        data = (folder / chunk.name).read_bytes()
        assert chunk.bytes == len(data)
        assert chunk.sha256 == hashlib.sha256(data).hexdigest()
        assert chunk.rows == pq.ParquetFile(folder / chunk.name).metadata.num_rows


def assert_same_values(actual: np.ndarray, expected: np.ndarray) -> None:
    expected = np.asarray(expected)
    if expected.dtype.kind == "f":
        np.testing.assert_array_equal(np.asarray(actual, dtype=expected.dtype), expected)  # NaN == NaN here
    else:
        np.testing.assert_array_equal(actual, expected)


# ------------------------------------------------------------------------------------------------
# FITS


def test_kepler_light_curve_in_three_parts_with_units_and_header(tmp_path: Path) -> None:
    out = tmp_path / "kepler"

    chunks = convert_to_parquet(KEPLER, out, chunk_rows=5000)

    assert [c.rows for c in chunks] == [5000, 5000, 4280]
    assert [c.name for c in chunks] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert files_in(out) == [c.name for c in chunks]
    assert_chunks_match_files(chunks, out)
    table = pq.read_table(out)
    assert table.num_rows == 14_280
    assert table.num_columns == 20
    assert {"TIME", "PDCSAP_FLUX"} <= set(table.column_names)
    assert table.schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"
    assert table.schema.field("TIME").metadata[b"unit"] == b"BJD - 2454833"
    assert table.schema.field("TIME").metadata[b"description"] == b"column title: data time stamps"
    meta = table.schema.metadata
    assert meta[b"jupyter_staging.source"] == KEPLER.name.encode()
    assert meta[b"jupyter_staging.format"] == b"fits"
    assert meta[b"jupyter_staging.converter_version"]
    header = fits.Header.fromstring(meta[b"fits.header"].decode(), sep="\n")
    assert header["XTENSION"] == "BINTABLE"
    assert header["EXTNAME"] == "LIGHTCURVE"
    assert header["NAXIS2"] == 14_280
    assert header["TUNIT8"] == "e-/s"
    primary = fits.Header.fromstring(meta[b"fits.primary_header"].decode(), sep="\n")
    assert primary["KEPLERID"] == 10666592
    assert json.loads(meta[b"jupyter_staging.columns"])["PDCSAP_FLUX"]["unit"] == "e-/s"
    with fits.open(KEPLER) as hdul:
        expected = hdul[1].data
        for name in expected.columns.names:
            assert_same_values(table.column(name).to_numpy(), expected[name])
    assert np.isnan(table.column("PDCSAP_FLUX").to_numpy()).any()  # the NaN-aware comparison mattered


def test_tess_light_curve_in_eleven_parts(tmp_path: Path) -> None:
    chunks = convert_to_parquet(TESS, tmp_path / "tess", chunk_rows=2000)

    assert [c.rows for c in chunks] == [2000] * 10 + [76]
    assert [c.index for c in chunks] == list(range(11))
    table = ds.dataset(tmp_path / "tess").to_table()
    assert table.num_rows == 20_076
    assert table.schema.field("SAP_FLUX").metadata[b"unit"] == b"e-/s"


def test_each_part_is_one_row_group_with_the_chosen_compression(tmp_path: Path) -> None:
    for codec, expected in [("zstd", "ZSTD"), ("snappy", "SNAPPY"), ("none", "UNCOMPRESSED")]:
        out = tmp_path / codec
        convert_to_parquet(TAU_CETI, out, chunk_rows=2000, compression=codec)

        assert part_rows(out) == [2000, 2000, 1432]
        for name in files_in(out):
            metadata = pq.ParquetFile(out / name).metadata
            assert metadata.num_row_groups == 1
            assert metadata.row_group(0).column(0).compression == expected


def test_horsehead_default_is_its_ascii_table(tmp_path: Path) -> None:
    chunks = convert_to_parquet(HORSEHEAD, tmp_path / "hh")

    assert [c.rows for c in chunks] == [1600]
    table = pq.read_table(tmp_path / "hh")
    assert table.column_names == ["XI", "ETA", "XI_CORR", "ETA_CORR"]
    assert table.schema.field("XI").metadata[b"unit"] == b"DEGREES"
    assert table.schema.metadata[b"fits.extname"] == b"er.mask"
    with fits.open(HORSEHEAD) as hdul:
        np.testing.assert_array_equal(table.column("XI_CORR").to_numpy(), hdul[1].data["XI_CORR"])


def test_horsehead_table_by_extname(tmp_path: Path) -> None:
    chunks = convert_to_parquet(HORSEHEAD, tmp_path / "hh", hdu="ER.MASK")

    assert sum(c.rows for c in chunks) == 1600


@pytest.mark.parametrize("hdu", [0, 2, -1, "NOPE"])
def test_horsehead_hdu_that_is_not_a_table_fails(tmp_path: Path, hdu: int | str) -> None:
    out = tmp_path / "hh"
    with pytest.raises(ConversionFailed) as raised:
        convert_to_parquet(HORSEHEAD, out, hdu=hdu)

    assert raised.value.code == "conversion_failed"
    assert "HorseHead.fits" in raised.value.message
    assert files_in(out) == []


def test_image_only_fits_is_not_a_table(tmp_path: Path) -> None:
    out = tmp_path / "rosat"
    with pytest.raises(ConversionFailed, match="no table"):
        convert_to_parquet(ROSAT, out)

    assert files_in(out) == []


@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
def test_corrupt_fits_fails_cleanly(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.fits"
    damaged.write_bytes(KEPLER.read_bytes()[:10_000])  # the table's data cut off

    with pytest.raises(ConversionFailed, match="damaged.fits"):
        convert_to_parquet(damaged, tmp_path / "out")
    assert files_in(tmp_path / "out") == []


def make_odd_fits(path: Path, *, heap: bool) -> None:
    """A binary table with the column kinds FITS Standard 4.0 §7.3 allows (7 rows). ``heap`` adds
    variable-length arrays, which are read through astropy's memory map instead of plain reads."""
    n = 7
    columns = [
        fits.Column(name="u16", format="I", bzero=32768, array=np.arange(n, dtype=np.uint16) * 9000),
        fits.Column(name="inull", format="J", null=-999, array=np.array([1, -999, 3, 4, 5, -999, 7], "i4")),
        fits.Column(name="scaled", format="I", array=np.arange(n, dtype=np.int16)),
        fits.Column(name="flag", format="L", array=np.array([True, False] * 3 + [True])),
        fits.Column(name="name", format="8A", array=np.array(["a", "bb  ", "ccc", "", "e" * 8, "f", "g"])),
        fits.Column(
            name="arr", format="6E", dim="(3,2)", array=np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
        ),
        fits.Column(name="bits", format="11X", array=np.array([[1, 0, 1] * 3 + [0, 1]] * n, dtype=bool)),
        fits.Column(name="s8", format="B", bzero=-128, array=np.arange(n, dtype=np.int8) - 3),
        fits.Column(name="cplx", format="C", array=np.arange(n) + 1j * np.arange(n)),
        fits.Column(name="strarr", format="12A", dim="(4,3)", array=np.array([["ab", "c", "dddd"]] * n)),
        fits.Column(
            name="u64", format="K", bzero=2**63, array=np.array([0, 1, 2**63, 2**64 - 1, 5, 6, 7], np.uint64)
        ),
    ]
    if heap:
        columns += [
            fits.Column(
                name="vla",
                format="PJ()",
                array=np.array([np.arange(i, dtype="i4") for i in range(n)], object),
            ),
            fits.Column(
                name="vlc", format="PC()", array=np.array([np.arange(i) + 1j for i in range(n)], object)
            ),
            fits.Column(
                name="vlstr", format="PA()", array=np.array(["ab", "", "cde", "f", "gh", "", "i"], object)
            ),
        ]
    hdu = fits.BinTableHDU.from_columns(columns, name="ODD")
    hdu.header["TUCD1"] = "meta.id"
    hdu.header["TCOMM1"] = "an unsigned counter"
    hdu.writeto(path)
    with fits.open(path, mode="update") as hdul:  # physical = 10 + 0.5 * stored
        hdul[1].header["TSCAL3"] = 0.5
        hdul[1].header["TZERO3"] = 10.0
        hdul[1].data.view(np.ndarray)["flag"][2] = 0  # a logical null (§7.3.3.1)


@pytest.mark.parametrize("heap", [False, True])
def test_fits_column_kinds_match_astropy(tmp_path: Path, heap: bool) -> None:
    source = tmp_path / "odd.fits"
    make_odd_fits(source, heap=heap)

    convert_to_parquet(source, tmp_path / "out", chunk_rows=3)

    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 7
    with fits.open(source) as hdul:
        data = hdul[1].data
        assert table.schema.field("u16").type == pa.uint16()
        assert table.column("u16").to_pylist() == data["u16"].tolist()
        assert table.column("inull").to_pylist() == [1, None, 3, 4, 5, None, 7]
        assert table.column("scaled").to_pylist() == data["scaled"].tolist() == [10 + i / 2 for i in range(7)]
        assert table.column("flag").to_pylist() == [True, False, None, False, True, False, True]
        assert table.column("name").to_pylist() == [str(s) for s in data["name"]]
        assert table.column("arr").to_pylist() == data["arr"].tolist()
        assert table.column("bits").to_pylist() == data["bits"].tolist()
        assert table.column("s8").to_pylist() == data["s8"].tolist()
        assert table.column("cplx").to_pylist() == [[v.real, v.imag] for v in data["cplx"]]
        assert table.column("strarr").to_pylist() == data["strarr"].tolist()
        assert table.schema.field("u64").type == pa.uint64()
        assert table.column("u64").to_pylist() == [0, 1, 2**63, 2**64 - 1, 5, 6, 7]
        if heap:
            assert table.column("vla").to_pylist() == [list(v) for v in data["vla"]]
            assert table.column("vlc").to_pylist() == [[[v.real, v.imag] for v in row] for row in data["vlc"]]
            assert table.column("vlstr").to_pylist() == ["ab", "", "cde", "f", "gh", "", "i"]
    field = table.schema.field("u16")
    assert field.metadata[b"ucd"] == b"meta.id"
    assert field.metadata[b"description"] == b"an unsigned counter"
    assert table.schema.field("arr").metadata[b"fits.tdim"] == b"(3,2)"


# ------------------------------------------------------------------------------------------------
# VOTable and ECSV


def test_spitzer_votable(tmp_path: Path) -> None:
    out = tmp_path / "spitzer"

    chunks = convert_to_parquet(SPITZER, out, chunk_rows=100)

    assert [c.rows for c in chunks] == [100, 100, 24]
    table = pq.read_table(out)
    expected = parse_votable(str(SPITZER)).get_first_table()
    # The data README says "10 columns"; the file's TABLE declares 16 FIELDs, all of which are kept.
    assert table.num_rows == 224
    assert table.column_names == [f.name for f in expected.fields]
    assert table.num_columns == 16
    units = {f.name: f.metadata.get(b"unit") for f in table.schema}
    assert units["l"] == b"deg"
    assert units["f4_5"] == b"mJy"
    assert units["mag3_6"] == b"mag"
    assert units["color36_45"] is None
    assert table.schema.metadata[b"jupyter_staging.format"] == b"votable"
    np.testing.assert_array_equal(table.column("f4_5").to_numpy(), expected.array["f4_5"].data)
    frame = pd.read_parquet(out)
    assert len(frame) == 224
    assert frame["l"].iloc[0] == pytest.approx(18.384317)


def test_votable_masked_values_become_nulls_and_params_travel(tmp_path: Path) -> None:
    source_table = Table()
    source_table["id"] = np.arange(5)
    source_table["mag"] = MaskedColumn([1.0, 2.0, 3.0, 4.0, 5.0], mask=[False, True, False, False, True])
    source_table["mag"].unit = "mag"
    source_table["mag"].description = "V magnitude"
    source_table["mag"].meta["ucd"] = "phot.mag;em.opt.V"
    source = tmp_path / "masked.vot"
    source_table.write(source, format="votable")
    votable = parse_votable(str(source))
    epoch = Param(votable, name="epoch", value="2016.0", datatype="char", arraysize="*")
    votable.get_first_table().params.append(epoch)
    votable.to_xml(str(source))

    convert_to_parquet(source, tmp_path / "out")

    table = pq.read_table(tmp_path / "out")
    assert table.column("mag").to_pylist() == [1.0, None, 3.0, 4.0, None]
    field = table.schema.field("mag")
    assert field.metadata[b"unit"] == b"mag"
    assert field.metadata[b"description"] == b"V magnitude"
    assert field.metadata[b"ucd"] == b"phot.mag;em.opt.V"
    params = json.loads(table.schema.metadata[b"votable.params"])
    assert params == [
        {
            "level": "TABLE",
            "name": "epoch",
            "ID": "epoch",
            "value": "2016.0",
            "datatype": "char",
            "arraysize": "*",
        }
    ]


def test_ecsv_is_streamed_with_units_nulls_and_types(tmp_path: Path) -> None:
    source_table = Table()
    source_table["id"] = np.arange(2500, dtype=np.int32)
    source_table["flux"] = MaskedColumn(np.linspace(0, 1, 2500), mask=np.arange(2500) % 7 == 0)
    source_table["flux"].unit = "mJy"
    source_table["flux"].description = "flux density"
    source_table["flux"].meta["ucd"] = "phot.flux.density"
    source_table["name"] = [f"star {i}" for i in range(2500)]
    source_table["ok"] = np.arange(2500) % 2 == 0
    source_table.meta["origin"] = "test"
    source = tmp_path / "stars.ecsv"
    source_table.write(source, format="ascii.ecsv")

    chunks = convert_to_parquet(source, tmp_path / "out", chunk_rows=1000)

    assert [c.rows for c in chunks] == [1000, 1000, 500]
    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("id").type == pa.int32()
    assert table.schema.field("ok").type == pa.bool_()
    assert table.column("name").to_pylist() == list(source_table["name"])
    flux = source_table["flux"]
    assert table.column("flux").to_pylist() == [
        None if m else v for v, m in zip(flux.data, flux.mask, strict=True)
    ]
    assert table.column("flux").null_count == 358
    field = table.schema.field("flux")
    assert field.metadata == {b"unit": b"mJy", b"ucd": b"phot.flux.density", b"description": b"flux density"}
    assert json.loads(table.schema.metadata[b"ecsv.meta"]) == {"origin": "test"}


def test_ecsv_with_mixin_columns_is_read_by_astropy(tmp_path: Path) -> None:
    from astropy.time import Time

    source_table = Table()
    source_table["t"] = Time([59000.0 + i for i in range(30)], format="mjd")
    source_table["x"] = np.arange(30.0)
    source = tmp_path / "times.ecsv"
    source_table.write(source, format="ascii.ecsv")

    chunks = convert_to_parquet(source, tmp_path / "out", chunk_rows=7)

    assert [c.rows for c in chunks] == [7, 7, 7, 7, 2]
    table = pq.read_table(tmp_path / "out")
    assert table.column("x").to_pylist() == list(np.arange(30.0))
    assert table.schema.metadata[b"jupyter_staging.format"] == b"ecsv"


# ------------------------------------------------------------------------------------------------
# CSV, TSV, Parquet


def sample_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(42)
    ints = pa.array(np.arange(rows) * 3, mask=np.arange(rows) % 11 == 0)
    floats = pa.array(rng.normal(size=rows), mask=np.arange(rows) % 13 == 0)
    names = pa.array([f'src, "{i}" é' if i % 5 else f"src{i}" for i in range(rows)])
    flags = pa.array(np.arange(rows) % 3 == 0)
    return pa.table({"id": ints, "value": floats, "name": names, "flag": flags})


@pytest.mark.parametrize(
    ("suffix", "delimiter", "compression"),
    [(".csv", ",", "zstd"), (".csv", ",", "none"), (".csv", ",", "snappy"), (".tsv", "\t", "zstd")],
)
def test_csv_and_tsv_round_trip(tmp_path: Path, suffix: str, delimiter: str, compression: str) -> None:
    expected = sample_table(4321)
    source = tmp_path / f"sample{suffix}"
    pacsv.write_csv(expected, source, write_options=pacsv.WriteOptions(delimiter=delimiter))

    chunks = convert_to_parquet(source, tmp_path / "out", chunk_rows=1000, compression=compression)

    assert [c.rows for c in chunks] == [1000, 1000, 1000, 1000, 321]
    assert_chunks_match_files(chunks, tmp_path / "out")
    table = pq.read_table(tmp_path / "out")
    assert table.replace_schema_metadata(None).cast(expected.schema).equals(expected)
    assert table.schema == expected.schema.with_metadata(table.schema.metadata)  # types inferred exactly
    assert table.schema.metadata[b"jupyter_staging.format"] == suffix[1:].encode()
    codec = pq.ParquetFile(tmp_path / "out" / chunks[0].name).metadata.row_group(0).column(0).compression
    assert codec == {"zstd": "ZSTD", "none": "UNCOMPRESSED", "snappy": "SNAPPY"}[compression]
    assert len(pd.read_parquet(tmp_path / "out")) == 4321


def test_gzipped_csv_with_comment_header(tmp_path: Path) -> None:
    import gzip

    source = tmp_path / "catalog.csv.gz"
    lines = ["# produced by a survey pipeline", "# columns: ra, dec", "ra,dec"]
    lines += [f"{i * 0.5},{-i * 0.25}" for i in range(3000)]
    source.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    done = {"bytes": 0}
    control = JobControl(on_bytes=lambda n: done.__setitem__("bytes", done["bytes"] + n))

    convert_to_parquet(source, tmp_path / "out", chunk_rows=1000, control=control)

    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["ra", "dec"]
    assert table.column("ra").to_pylist() == [i * 0.5 for i in range(3000)]
    assert done["bytes"] == source.stat().st_size


def test_csv_type_widened_when_sample_shows_it(tmp_path: Path) -> None:
    source = tmp_path / "mixed.csv"
    values = [str(i) for i in range(200_000)]
    values[150_000] = "unknown"  # past the reader's first 1 MiB block, inside the inference sample
    source.write_text("x\n" + "\n".join(values) + "\n")

    convert_to_parquet(source, tmp_path / "out", chunk_rows=60_000)

    table = pq.read_table(tmp_path / "out")
    assert table.schema.field("x").type == pa.string()
    assert table.column("x").to_pylist() == values


def test_csv_value_not_fitting_its_column_fails_without_leftovers(tmp_path: Path) -> None:
    source = tmp_path / "late.csv"
    with source.open("w") as fh:  # ~19 MB of integers, then a word: beyond the 16 MiB inference sample
        fh.write("x\n")
        fh.write("1234567\n" * 2_400_000)
        fh.write("oops\n")

    with pytest.raises(ConversionFailed, match="late.csv"):
        convert_to_parquet(source, tmp_path / "out", chunk_rows=500_000)

    names = files_in(tmp_path / "out")
    assert not [n for n in names if n.endswith(".part")]
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]  # finished parts stay


def test_parquet_source_is_rechunked_and_keeps_metadata(tmp_path: Path) -> None:
    expected = sample_table(5000)
    expected = expected.replace_schema_metadata({"survey": "test"})
    source = tmp_path / "source.parquet"
    pq.write_table(expected, source, row_group_size=700)

    chunks = convert_to_parquet(source, tmp_path / "out", chunk_rows=1200)

    assert [c.rows for c in chunks] == [1200, 1200, 1200, 1200, 200]
    table = pq.read_table(tmp_path / "out")
    assert table.replace_schema_metadata(None).equals(expected.replace_schema_metadata(None))
    assert table.schema.metadata[b"survey"] == b"test"

    resumed = convert_to_parquet(source, tmp_path / "resumed", chunk_rows=1200, start_index=3)

    assert [c.index for c in resumed] == [3, 4]
    tail = pq.read_table(tmp_path / "resumed").replace_schema_metadata(None)
    assert tail.equals(expected.slice(3600).replace_schema_metadata(None))


def test_empty_csv_gives_one_empty_part(tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("a,b\n")

    chunks = convert_to_parquet(source, tmp_path / "out")

    assert [c.rows for c in chunks] == [0]
    assert pq.read_table(tmp_path / "out").column_names == ["a", "b"]


# ------------------------------------------------------------------------------------------------
# Progress, interruption, resumption, refusals


def test_progress_counts_every_row_and_source_byte(tmp_path: Path) -> None:
    counted = {"rows": 0, "bytes": 0}
    control = JobControl(
        on_bytes=lambda n: counted.__setitem__("bytes", counted["bytes"] + n),
        on_rows=lambda n: counted.__setitem__("rows", counted["rows"] + n),
    )
    seen: list[ChunkInfo] = []

    chunks = convert_to_parquet(
        KEPLER, tmp_path / "out", chunk_rows=4000, control=control, on_chunk=seen.append
    )

    assert seen == chunks
    assert counted == {"rows": 14_280, "bytes": KEPLER.stat().st_size}


@pytest.mark.parametrize("kind", ["fits", "csv"])
def test_interrupt_after_first_part_then_resume(tmp_path: Path, kind: str) -> None:
    if kind == "fits":
        source, chunk_rows = KEPLER, 5000
        with fits.open(KEPLER) as hdul:
            data = hdul[1].data
            expected = pa.table(
                {name: data[name].astype(data[name].dtype.newbyteorder("=")) for name in data.names}
            )
    else:
        expected = sample_table(25_000)
        source, chunk_rows = tmp_path / "sample.csv", 6000
        pacsv.write_csv(expected, source)
    out = tmp_path / "out"
    control = JobControl()

    def pause_after_first(info: ChunkInfo) -> None:
        if info.index == 0:
            control.interrupt("paused")

    with pytest.raises(JobInterrupted) as raised:
        convert_to_parquet(source, out, chunk_rows=chunk_rows, control=control, on_chunk=pause_after_first)

    assert raised.value.reason == "paused"
    assert files_in(out) == ["part-00000.parquet"]
    assert part_rows(out) == [chunk_rows]

    rest = convert_to_parquet(source, out, chunk_rows=chunk_rows, start_index=1, control=JobControl())

    assert rest[0].index == 1
    assert not [n for n in files_in(out) if n.endswith(".part")]
    table = pq.read_table(out).replace_schema_metadata(None)
    assert table.num_rows == expected.num_rows
    for name in expected.column_names:
        assert_same_values(
            table.column(name).to_numpy(zero_copy_only=False),
            expected.column(name).to_numpy(zero_copy_only=False),
        )


def test_existing_part_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00001.parquet").write_bytes(b"somebody else's file")

    with pytest.raises(DestinationExists):
        convert_to_parquet(TAU_CETI, out, chunk_rows=2000)

    assert (out / "part-00001.parquet").read_bytes() == b"somebody else's file"
    assert files_in(out) == ["part-00000.parquet", "part-00001.parquet"]  # no .part left


def test_missing_source_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound):
        convert_to_parquet(tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(ConversionFailed, match="compression"):
        convert_to_parquet(TAU_CETI, tmp_path / "out", compression="lzma")
    with pytest.raises(ConversionFailed, match="chunk_rows"):
        convert_to_parquet(TAU_CETI, tmp_path / "out", chunk_rows=0)
    readme = DATA / "README.md"
    with pytest.raises(ConversionFailed, match="not a table"):
        convert_to_parquet(readme, tmp_path / "out")
    assert files_in(tmp_path / "out") == []


# ------------------------------------------------------------------------------------------------
# Detection


def test_detect_format_by_content_and_suffix(tmp_path: Path) -> None:
    assert detect_format(KEPLER) == "fits"
    assert detect_format(SPITZER) == "votable"
    assert detect_format(DATA / "README.md") is None
    disguised = tmp_path / "light_curve.dat"
    disguised.write_bytes(TAU_CETI.read_bytes())
    assert detect_format(disguised) == "fits"
    other_xml = tmp_path / "config.xml"
    other_xml.write_text('<?xml version="1.0"?><config/>')
    assert detect_format(other_xml) is None
    for name, fmt in [
        ("a.csv", "csv"),
        ("a.csv.gz", "csv"),
        ("a.tsv", "tsv"),
        ("a.fits.gz", "fits"),
        ("a.fit", "fits"),
        ("a.fz", "fits"),
        ("a.vot", "votable"),
        ("a.parquet", "parquet"),
        ("a.ecsv", "ecsv"),
        ("a.png", None),
    ]:
        assert detect_format(tmp_path / name) == fmt, name


def test_is_table(tmp_path: Path) -> None:
    assert is_table(KEPLER)
    assert is_table(HORSEHEAD)
    assert is_table(HORSEHEAD, hdu=1)
    assert not is_table(HORSEHEAD, hdu=0)
    assert not is_table(ROSAT)
    assert is_table(SPITZER)
    assert not is_table(DATA / "README.md")
    assert not is_table(tmp_path / "missing.fits")


# ------------------------------------------------------------------------------------------------
# Memory


PEAK_RSS_SCRIPT = textwrap.dedent(
    r"""
    import json, re, sys, time
    from pathlib import Path
    from jupyter_staging.formats.convert import convert_to_parquet

    def status(key):  # bytes; VmHWM is this process's peak RSS (ru_maxrss counts the parent's too)
        text = Path("/proc/self/status").read_text()
        return int(re.search(key + r":\s+(\d+) kB", text).group(1)) * 1024

    baseline = status("VmRSS")
    started = time.perf_counter()
    chunks = convert_to_parquet(Path(sys.argv[1]), Path(sys.argv[2]), chunk_rows=int(sys.argv[3]))
    print(json.dumps({
        "seconds": time.perf_counter() - started,
        "parts": len(chunks),
        "rows": sum(c.rows for c in chunks),
        "baseline": baseline,
        "peak": status("VmHWM"),
    }))
    """
)


def write_big_csv(path: Path, min_bytes: float) -> int:
    """A catalogue-like CSV of at least ``min_bytes`` bytes (~67 bytes per row); returns its rows."""
    rng = np.random.default_rng(7)
    batch = 250_000
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("ra", pa.float64()),
            ("dec", pa.float64()),
            ("mag", pa.float32()),
            ("name", pa.string()),
        ]
    )
    rows = 0
    with pacsv.CSVWriter(path, schema) as writer:
        while path.stat().st_size < min_bytes:
            ids = np.arange(rows, rows + batch)
            columns = {
                "id": ids,
                "ra": rng.uniform(0, 360, batch),
                "dec": rng.uniform(-90, 90, batch),
                "mag": rng.normal(15, 2, batch).astype(np.float32),
                "name": np.char.add("src", ids.astype(str)),
            }
            writer.write_table(pa.table(columns, schema=schema))
            rows += batch
    return rows


def write_big_fits(path: Path, min_bytes: float) -> int:
    """The Kepler light-curve table repeated to at least ``min_bytes`` bytes (100 bytes per row)."""
    with fits.open(KEPLER) as hdul:
        source = hdul[1]
        block = source.data.view(np.ndarray)
        repeats = math.ceil(min_bytes / block.nbytes)
        big = fits.BinTableHDU.from_columns(source.columns, nrows=len(block) * repeats, header=source.header)
        big.data.view(np.ndarray)[:] = np.tile(block, repeats)
        big.writeto(path)
    return len(block) * repeats


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["csv", "fits"])
def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path: Path, kind: str) -> None:
    source = tmp_path / f"big.{kind}"
    rows = write_big_csv(source, 300e6) if kind == "csv" else write_big_fits(source, 300e6)
    size = source.stat().st_size

    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(source), str(tmp_path / "out"), "200000"],
        capture_output=True,
        text=True,
        check=True,
        timeout=150,
    )
    result = json.loads(done.stdout)

    assert result["rows"] == rows
    assert result["parts"] == math.ceil(rows / 200_000)
    # Reading the whole table first peaks at 2-3x the file size above the interpreter's baseline (or,
    # through a memory map, keeps the whole file resident besides); streaming stays at a few chunks above
    # it (a FITS table's pages stay mapped: up to the file's size). Measured above the baseline, which
    # differs between machines (a fresh clone compiles every module on its first import: +40 MiB).
    assert result["peak"] - result["baseline"] < size + 150 * 2**20, result
    print(
        f"{size / 1e6:.0f} MB {kind}, {rows} rows: {result['seconds']:.1f} s "
        f"({rows / result['seconds']:.0f} rows/s), peak RSS {result['peak'] / 2**20:.0f} MiB "
        f"(baseline {result['baseline'] / 2**20:.0f} MiB)"
    )
