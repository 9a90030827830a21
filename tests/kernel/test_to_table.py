"""``Job.to_table()``: the staged Parquet as an astropy ``QTable`` with units and times (issue 13)."""

from __future__ import annotations

import shutil

import astropy.units as u
import pytest
from astropy.time import Time

from jupyter_staging.errors import StagingError
from jupyter_staging.kernel import api
from tests.helpers.data import KEPLER, TESS


def test_to_table_gives_units_and_times_for_the_kepler_light_curve(local_backend, tmp_path):
    shutil.copyfile(KEPLER, tmp_path / KEPLER.name)
    job = api.stage(str(tmp_path / KEPLER.name), "kepler", to_parquet=True, chunk_rows=5000, wait=True)

    table = job.to_table()

    assert len(table) == 14280
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s
    assert isinstance(table["TIME"], Time) and table["TIME"].scale == "tdb"
    assert table["TIME"][0].jd > 2454833


def test_the_tess_cadences_without_a_time_are_masked_times(local_backend, tmp_path):
    """The TESS light curve has 815 cadences whose TIME is NaN (no time: the spacecraft pointing lost).
    Before, they became Time values of NaN, unmasked: ``.isot`` gave '-4713-11-24T-2147483648:...' for
    them and ``.datetime64`` raised ValueError for the whole column. Now they are masked, the others
    exact."""
    import numpy as np
    from astropy.io import fits

    shutil.copyfile(TESS, tmp_path / TESS.name)
    job = api.stage(str(tmp_path / TESS.name), "tess", to_parquet=True, chunk_rows=5000, wait=True)

    times = job.to_table()["TIME"]

    with fits.open(TESS) as hdul:
        days = np.asarray(hdul[1].data["TIME"], dtype=np.float64)
        reference = hdul[1].header["BJDREFI"] + hdul[1].header["BJDREFF"]
    gaps = np.isnan(days)
    assert isinstance(times, Time) and gaps.sum() == 815
    assert times.masked and np.array_equal(times.mask, gaps)
    assert np.allclose(times[~gaps].jd, reference + days[~gaps], rtol=0, atol=1e-9)
    assert not any("-2147483648" in text for text in times.isot[~gaps])
    assert times.datetime64[~gaps].min() > np.datetime64("2018-07-01")


def test_a_folder_of_tables_in_other_units_is_read_one_table_at_a_time(local_backend, tmp_path):
    from astropy.table import Table

    folder = tmp_path / "fluxes"
    folder.mkdir()
    Table({"id": [1, 2], "flux": [1500.0, 2500.0] * u.mJy}).write(folder / "a.ecsv")
    Table({"id": [3, 4], "flux": [3.0, 4.0] * u.Jy}).write(folder / "b.ecsv")
    job = api.stage(str(folder), "fluxes-pq", to_parquet=True, wait=True)

    assert job.tables == ["a.parquet", "b.parquet"]
    for read in (job.to_arrow, job.to_pandas, job.to_table, job.dataset):
        with pytest.raises(StagingError) as refused:
            read()
        assert refused.value.code == "several_tables"
        assert "'a.parquet' and 'b.parquet'" in str(refused.value)
    b = job.to_table("b.parquet")
    assert list(b["id"]) == [3, 4] and b["flux"][0] == 3 * u.Jy
    assert b.meta["jupyter_staging.source"] == "b.ecsv"
    assert job.dataset(table="a.parquet").to_table().column("flux").to_pylist() == [1500.0, 2500.0]
    with pytest.raises(StagingError) as unknown:
        job.to_arrow("c.parquet")
    assert unknown.value.code == "unknown_table" and "'a.parquet', 'b.parquet'" in str(unknown.value)


def test_a_folder_of_light_curves_with_the_same_columns_is_read_as_one_table(local_backend, tmp_path):
    from astropy.io import fits

    folder = tmp_path / "curves"
    folder.mkdir()
    for name in ("first.fits", "second.fits"):
        shutil.copyfile(KEPLER, folder / name)
    with fits.open(folder / "second.fits", mode="update") as hdul:  # another star: the headers differ
        hdul[1].header["OBJECT"] = "KIC 00000001"
    job = api.stage(str(folder), "curves-pq", to_parquet=True, chunk_rows=5000, wait=True)

    table = job.to_table()

    assert len(table) == 2 * 14280 and len(job.to_pandas()) == 2 * 14280
    assert job.dataset().count_rows() == 2 * 14280
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s
    assert isinstance(table["TIME"], Time)  # the cards both headers share are kept: the time keywords
    assert "KIC 00000001" not in table.meta["fits.header"] and "BJDREFI" in table.meta["fits.header"]
    assert "jupyter_staging.source" not in table.meta  # the file names differ: neither is claimed
    assert job.to_table("second.parquet").meta["jupyter_staging.source"] == "second.fits"


def test_a_manifest_entrys_name_reads_its_table(local_backend, tmp_path):
    from astropy.table import Table

    for name, flux in (("a", 1.0), ("b", 2.0)):
        Table({"flux": [flux] * u.Jy}).write(tmp_path / f"{name}.ecsv")
    job = api.stage(
        {"second": str(tmp_path / "b.ecsv"), "first": str(tmp_path / "a.ecsv")},
        "m",
        to_parquet=True,
        wait=True,
    )

    assert job.tables == ["first/a.parquet", "second/b.parquet"]  # by name: entries finish in any order
    assert job.to_table("second")["flux"][0] == 2 * u.Jy
    assert list(job.to_pandas()["flux"]) == [1.0, 2.0]


def test_a_unit_astropy_cannot_parse_is_the_unit_astropy_gives(local_backend, tmp_path):
    import warnings

    import numpy as np
    from astropy.io import fits
    from astropy.table import QTable

    src = tmp_path / "positions.fits"
    columns = [
        fits.Column(name="RA", format="D", unit="DEGREES", array=np.array([10.5, 11.0])),
        fits.Column(name="DIST", format="E", unit="MPC", array=np.array([3.0, 4.0])),
        fits.Column(name="FLUX", format="E", unit="mJy", array=np.array([1.0, 2.0])),
    ]
    fits.BinTableHDU.from_columns(columns).writeto(src)
    job = api.stage(str(src), "positions", to_parquet=True, wait=True)

    table = job.to_table()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = QTable.read(src)
    assert [table[n].unit for n in table.colnames] == [reference[n].unit for n in reference.colnames]
    assert isinstance(table["RA"].unit, u.UnrecognizedUnit) and table["RA"].unit.name == "DEGREES"
    assert table["FLUX"].unit == u.mJy and list(job.to_pandas()["RA"]) == [10.5, 11.0]


def test_a_folder_of_many_tables_is_read_one_open_per_part(local_backend, tmp_path, monkeypatch):
    """Issue 12: a folder of many small tables (a sector of light curves) read as one. Each part was read
    by ``pyarrow.parquet.read_table``, which builds a dataset per file: twice the time of opening the part
    and reading it (2,000 parts: 2.2 s for ``to_arrow()``, now 1.1 s). Each part is now opened once,
    rows and metadata as before; a chunk reads its part the same way."""
    import pyarrow.parquet as pq

    folder = tmp_path / "curves"
    folder.mkdir()
    for i in range(12):
        rows = "\n".join(f"{i}.{r},{1000 + r}" for r in range(3))
        (folder / f"lc{i:02d}.csv").write_text(f"time,flux\n{rows}\n")
    job = api.stage(str(folder), "curves-pq", to_parquet=True, wait=True)
    parts = sorted(str(p) for p in job.paths)
    opened: list[str] = []
    real = pq.ParquetFile

    def counted(source, *args, **kwargs):
        opened.append(str(source))
        return real(source, *args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("read_table builds a dataset for each part")

    monkeypatch.setattr(pq, "ParquetFile", counted)
    monkeypatch.setattr(pq, "read_table", refused)

    frame = job.to_pandas()

    assert sorted(opened) == parts and len(parts) == 12  # each part once
    assert len(frame) == 36 and list(frame["flux"][:3]) == [1000, 1001, 1002]
    assert list(frame["time"][::3]) == [float(f"{i}.0") for i in range(12)]
    opened.clear()
    chunk = next(job.iter_chunks())
    assert chunk.to_pandas()["flux"].tolist() == [1000, 1001, 1002] and opened == [str(chunk.path)]


def light_curve_tables(folder, count: int):
    """``count`` small CSV tables of the same columns in ``folder``: lc00.csv ... (3 rows each)."""
    folder.mkdir()
    for i in range(count):
        (folder / f"lc{i:02d}.csv").write_text("time,flux\n" + "".join(f"{i}.{r},{r}\n" for r in range(3)))
    return folder


def counted_requests(monkeypatch, backend) -> dict[str, int]:
    """Count the backend's chunk listings and status reads."""
    calls = {"chunks": 0, "get": 0}
    for name in calls:
        real = getattr(backend, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, counted)
    return calls


def test_reading_the_tables_one_at_a_time_lists_the_chunks_once(local_backend, tmp_path, monkeypatch):
    """Issue 12: ``for name in job.tables: job.to_pandas(table=name)`` (what ``several_tables`` tells a
    user to do) asked for the job's whole chunk list at every read: 2,000 tables took 86 ms each, 20,000
    would take 0.7 s each (hours in all). The list of a succeeded job is now kept between reads: each read
    after the first asks for the job's status only."""
    job = api.stage(str(light_curve_tables(tmp_path / "curves", 12)), "pq", to_parquet=True, wait=True)
    calls = counted_requests(monkeypatch, local_backend)

    frames = [job.to_pandas(table=name) for name in job.tables]

    assert [list(frame["time"]) for frame in frames] == [[i, i + 0.1, i + 0.2] for i in range(12)]
    assert calls == {"chunks": 1, "get": 12}
    assert len(job.to_pandas()) == 36 and calls == {"chunks": 1, "get": 13}


def test_a_part_acknowledged_since_the_list_was_kept_is_chunks_missing(local_backend, tmp_path):
    """The kept list is checked: a part deleted on ack after an earlier read is ``chunks_missing`` as
    before, the tables still there read."""
    folder = light_curve_tables(tmp_path / "curves", 3)
    job = api.stage(str(folder), "pq", to_parquet=True, cleanup_policy="delete_on_ack", wait=True)
    assert list(job.to_pandas(table="lc00.parquet")["flux"]) == [0, 1, 2]

    (last,) = [c for c in job.chunks if c["path"].startswith("lc02.parquet/")]
    job.ack(last["index"])

    with pytest.raises(StagingError) as missing:
        job.to_pandas(table="lc02.parquet")
    assert missing.value.code == "chunks_missing"
    assert list(job.to_pandas(table="lc01.parquet")["flux"]) == [0, 1, 2]


def test_an_output_replaced_since_the_list_was_kept_is_chunks_missing(local_backend, tmp_path):
    """A re-run that replaced the output expires the old job: its reader does not read the new files
    through the kept list."""
    folder = light_curve_tables(tmp_path / "curves", 2)
    old = api.stage(str(folder), "pq", to_parquet=True, wait=True)
    assert len(old.to_pandas()) == 6
    (folder / "lc00.csv").write_text("time,flux\n9.0,9\n")
    new = api.stage(str(folder), "pq", to_parquet=True, wait=True)
    assert new.id != old.id and len(new.to_pandas()) == 4

    with pytest.raises(StagingError) as missing:
        old.to_pandas()
    assert missing.value.code == "chunks_missing" and old.refresh().state == "expired"


def test_a_part_that_is_not_parquet_is_named_in_the_error(local_backend, tmp_path):
    """A part that no longer reads as Parquet (overwritten since) fails the read with pyarrow's error, which
    names the part, as ``pyarrow.parquet.read_table`` did: since parts are opened one at a time
    (``readback.read_part``) the error said only "Parquet magic bytes not found in footer", for one of
    thousands of parts. A chunk read alone says so too."""
    import pyarrow as pa

    job = api.stage(str(light_curve_tables(tmp_path / "curves", 3)), "pq", to_parquet=True, wait=True)
    (part,) = [p for p in job.paths if "lc01.parquet" in str(p)]
    part.unlink()
    part.write_bytes(b"time,flux\n0.0,0\n")

    with pytest.raises(pa.ArrowInvalid) as broken:
        job.to_pandas()
    assert str(part) in str(broken.value) and "magic bytes" in str(broken.value)
    (chunk,) = [c for c in job.iter_chunks() if c.path == part]
    with pytest.raises(pa.ArrowInvalid) as alone:
        chunk.to_arrow()
    assert str(part) in str(alone.value)
