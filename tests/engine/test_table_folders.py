"""Each converted table has an output folder of its own and rows of one version (``engine/tablefolders.py``).

Two tables whose names give one folder (``lc.csv`` and ``lc.fits`` both ``lc.parquet``), or a table whose
folder a file staged as it is would be or lie in, used to make one dataset of two tables: the job succeeded
and ``pd.read_parquet("lc.parquet")`` read the second table's parts after the first's. Now the second is
refused (``destination_exists``) before it writes anything, whichever item the job reached first.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from tests.helpers.data import KEPLER, sha256, wait_until

CSV_ROWS = 500


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """A folder holding the Kepler light curve as ``lc.fits`` and its first 500 rows (two columns) as
    ``lc.csv``: the same target in two formats, as archives often give it."""
    folder = tmp_path / "tables"
    folder.mkdir()
    shutil.copyfile(KEPLER, folder / "lc.fits")
    Table.read(KEPLER, hdu=1)[["TIME", "SAP_FLUX"]][:CSV_ROWS].write(folder / "lc.csv", format="ascii.csv")
    return folder


def run(manager: StagingManager, **body) -> tuple[dict, list]:
    """Create a job from ``body``, wait for it; returns (job JSON, its chunk records)."""
    job, _ = manager.create(CreateJob(**body))
    done = manager.wait(job.id, timeout=120)
    return done.model_dump(mode="json"), manager.chunks(job.id)


def test_two_tables_that_give_one_folder_fail_the_job_and_the_folder_holds_one_table(manager, root, tables):
    job, chunks = run(manager, source=str(tables), destination="out", convert={"chunk_rows": 1000})
    assert job["state"] == JobState.failed.value
    assert job["error"]["code"] == "destination_exists"
    message = job["error"]["message"]
    assert "lc.csv" in message and "lc.fits" in message and "lc.parquet" in message
    assert "manifest" in message  # what to do instead
    folder = root / "out" / "lc.parquet"
    parts = sorted(folder.glob("*.parquet"))
    assert [root / "out" / c.path for c in chunks] == parts  # only the first table's parts are recorded
    dataset = pq.read_table(folder)  # one table: one schema across its parts
    if "lc.csv" in message.split(" and ")[0]:  # lc.csv was refused: the folder is the FITS table's
        assert dataset.num_rows == len(Table.read(KEPLER, hdu=1)) and "PDCSAP_FLUX" in dataset.column_names
    else:
        assert dataset.num_rows == CSV_ROWS and dataset.column_names == ["TIME", "SAP_FLUX"]
    assert not list(folder.glob("*.part"))


def test_a_parquet_file_named_like_a_tables_folder_is_never_mixed_with_the_table(manager, root, tables):
    (tables / "lc.fits").unlink()
    pq.write_table(pacsv.read_csv(tables / "lc.csv"), tables / "lc.parquet")
    job, _ = run(manager, source=str(tables), destination="out", convert={})
    assert job["state"] == JobState.failed.value
    assert job["error"]["code"] == "destination_exists"
    assert "where this job also stages lc.parquet" in job["error"]["message"]
    staged = root / "out" / "lc.parquet"
    # Staged as it is before the table was reached, or not at all: never a folder of the table's parts.
    assert not staged.exists() or (staged.is_file() and sha256(staged) == sha256(tables / "lc.parquet"))


def test_a_part_file_of_the_source_in_a_tables_folder_is_never_taken_for_the_tables(manager, root, tables):
    (tables / "lc.fits").unlink()
    (tables / "lc.parquet").mkdir()
    theirs = tables / "lc.parquet" / "part-00000.parquet"
    pq.write_table(pacsv.read_csv(tables / "lc.csv").slice(0, 7), theirs)
    job, chunks = run(manager, source=str(tables), destination="out", convert={})
    assert job["state"] == JobState.failed.value
    assert "also stages lc.parquet/part-00000.parquet" in job["error"]["message"]
    staged = root / "out" / "lc.parquet" / "part-00000.parquet"
    # Before, the CSV's part took its name and the job succeeded with the source's file left out.
    assert not staged.exists() or sha256(staged) == sha256(theirs)
    assert all(c.rows in (None, 7) for c in chunks)


def test_the_same_tables_as_entries_of_a_manifest_are_each_converted_into_a_folder_of_their_own(
    manager, root, tables
):
    job, chunks = run(
        manager,
        manifest={"csv": str(tables / "lc.csv"), "fits": str(tables / "lc.fits")},
        destination="both",
        convert={"chunk_rows": 1000},
    )
    assert job["state"] == JobState.succeeded.value, job["error"]
    assert pq.read_table(root / "both" / "csv" / "lc.parquet").num_rows == CSV_ROWS
    assert pq.read_table(root / "both" / "fits" / "lc.parquet").num_rows == len(Table.read(KEPLER, hdu=1))
    assert {c.path.split("/")[0] for c in chunks} == {"csv", "fits"}


def write_version(path: Path, version: int, rows: int = 1_000_000) -> None:
    """A CSV table of ``rows`` rows whose column ``version`` holds ``version`` on every row."""
    pacsv.write_csv(pa.table({"row": pa.array(range(rows)), "version": pa.array([version] * rows)}), path)


def rewritten_while_paused(manager: StagingManager, request: CreateJob, rewrite: Callable[[], None]) -> Any:
    """Start ``request``, pause it once its first part is ready, ``rewrite()`` its source, resume it;
    returns the job as it ended."""
    job, _ = manager.create(request)
    wait_until(lambda: any(c.state == "ready" for c in manager.chunks(job.id)), what="a first part")
    manager.pause(job.id)
    paused = manager.wait(job.id, timeout=60, until=lambda s: s in (JobState.paused, JobState.succeeded))
    assert paused.state == JobState.paused  # tens of parts: paused long before the last
    time.sleep(0.02)  # a new modification time on any file system clock
    rewrite()
    manager.resume(job.id)
    return manager.wait(job.id, timeout=120)


def test_a_table_rewritten_while_its_job_is_paused_is_never_mixed_with_the_version_before(
    manager, root, tmp_path
):
    """Before, the resumed run went on converting the new version after the old version's parts: the job
    succeeded with 150,000 rows of one version and 1,850,000 of the other in one table."""
    table = tmp_path / "t.csv"
    write_version(table, 1)
    request = CreateJob(source=str(table), destination="out", convert={"chunk_rows": 25_000})
    done = rewritten_while_paused(manager, request, lambda: write_version(table, 2))
    assert done.state == JobState.failed
    assert done.error.code == "source_changed"
    assert "t.csv changed while the job was paused" in done.error.message
    folder = root / "out" / "t.parquet"
    assert not folder.exists() or not list(folder.iterdir())  # no rows of the version before are left
    assert all(c.state == "expired" for c in manager.chunks(done.id))
    # Staged again, the table is converted as it is now, whole.
    again, created = manager.create(request)
    assert created
    assert manager.wait(again.id, timeout=120).state == JobState.succeeded
    staged = pq.read_table(folder)
    assert staged.num_rows == 1_000_000
    assert set(staged.column("version").to_pylist()) == {2}


def test_a_file_of_an_archive_in_a_tables_folder_is_never_read_as_part_of_the_table(manager, root, tmp_path):
    """``unpack``: the archive holds ``lc.parquet/part-00000.parquet`` (7 rows of something else), then
    ``lc.csv``. Before, the job succeeded with the 7 rows and the CSV's rows from 1,000 on in one table (the
    CSV's first part was taken to be the file's)."""
    theirs = tmp_path / "theirs.parquet"
    pq.write_table(pa.table({"row": pa.array([-1] * 7)}), theirs)
    write_version(tmp_path / "lc.csv", 1, rows=5000)
    bundle = tmp_path / "bulk.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(theirs, arcname="lc.parquet/part-00000.parquet")
        tar.add(tmp_path / "lc.csv", arcname="lc.csv")
    job, chunks = run(
        manager, source=str(bundle), destination="out", unpack=True, convert={"chunk_rows": 1000}
    )
    assert job["state"] == JobState.failed.value
    assert job["error"]["code"] == "destination_exists"
    assert "bulk/lc.csv would be converted into bulk/lc.parquet" in job["error"]["message"]
    assert [(c.path, c.rows) for c in chunks] == [("bulk/lc.parquet/part-00000.parquet", None)]
    assert sha256(root / "out" / "bulk" / "lc.parquet" / "part-00000.parquet") == sha256(theirs)
    assert [p.name for p in (root / "out" / "bulk" / "lc.parquet").iterdir()] == ["part-00000.parquet"]


def test_a_compressed_table_rewritten_while_its_job_is_paused_is_never_mixed(manager, root, tmp_path):
    """``decompress``: ``t.csv.gz`` is rewritten while the job converting what it holds is paused. Before,
    the resumed run decompressed the new version and converted on after the old version's parts."""
    (tmp_path / "src").mkdir()
    packed = tmp_path / "src" / "t.csv.gz"

    def pack(version: int) -> None:
        plain = tmp_path / "t.csv"
        write_version(plain, version, rows=400_000)
        with gzip.open(packed, "wb", compresslevel=1) as fh:
            fh.write(plain.read_bytes())

    pack(1)
    request = CreateJob(
        source=str(tmp_path / "src"), destination="out", decompress=True, convert={"chunk_rows": 10_000}
    )
    done = rewritten_while_paused(manager, request, lambda: pack(2))
    assert done.state == JobState.failed
    assert done.error.code == "source_changed"
    assert "t.csv.gz changed while the job was paused" in done.error.message
    folder = root / "out" / "t.parquet"
    assert not folder.exists() or not list(folder.iterdir())
    again, created = manager.create(request)
    assert created
    assert manager.wait(again.id, timeout=120).state == JobState.succeeded
    assert set(pq.read_table(folder).column("version").to_pylist()) == {2}


def test_a_compressed_table_beside_its_plain_twin_is_refused_not_converted_on_after_it(
    manager, root, tmp_path
):
    """``t.csv`` and ``t.csv.gz`` (``decompress``): both would be ``t.csv``, one table. Before, the job
    succeeded with the plain file's 3,000 rows and the compressed one's from row 3,000 on in ``t.parquet``
    (or the second table dropped, when it had fewer rows)."""
    (tmp_path / "src").mkdir()
    write_version(tmp_path / "src" / "t.csv", 1, rows=3000)
    write_version(tmp_path / "t.csv", 2, rows=5000)
    with gzip.open(tmp_path / "src" / "t.csv.gz", "wb") as fh:
        fh.write((tmp_path / "t.csv").read_bytes())
    job, _ = run(manager, source=str(tmp_path / "src"), destination="out", decompress=True, convert={})
    assert job["state"] == JobState.failed.value
    assert job["error"]["code"] == "destination_exists"
    assert (
        "t.csv.gz would be decompressed into t.csv, where this job also stages t.csv"
        in job["error"]["message"]
    )
    folder = root / "out" / "t.parquet"
    if folder.exists():  # the plain table, converted before the refusal: whole and of one version
        staged = pq.read_table(folder)
        assert staged.num_rows == 3000 and set(staged.column("version").to_pylist()) == {1}


def test_two_archives_unpacked_into_one_folder_are_refused(manager, root, tmp_path):
    """``bulk.tar`` and ``bulk.zip`` both unpack into ``bulk/``: a file of the second was skipped as
    "staged already" where the first had one of that name, and its tables converted on after the first's."""
    (tmp_path / "src").mkdir()
    write_version(tmp_path / "lc.csv", 1, rows=2000)
    with tarfile.open(tmp_path / "src" / "bulk.tar", "w") as tar:
        tar.add(tmp_path / "lc.csv", arcname="lc.csv")
    with zipfile.ZipFile(tmp_path / "src" / "bulk.zip", "w") as archive:
        archive.write(tmp_path / "lc.csv", arcname="lc.csv")
    job, chunks = run(manager, source=str(tmp_path / "src"), destination="out", unpack=True, convert={})
    assert job["state"] == JobState.failed.value
    assert job["error"]["code"] == "destination_exists"
    message = job["error"]["message"]
    assert "would be unpacked into bulk, where this job also stages bulk." in message
    assert pq.read_table(root / "out" / "bulk" / "lc.parquet").num_rows == 2000  # the first's, once
    assert sum(c.rows or 0 for c in chunks if c.state == "ready") == 2000


def test_archives_of_several_manifest_entries_are_unpacked_at_once_each_in_a_scratch_folder_of_its_own(
    manager, root, tmp_path
):
    """Entries run in parallel; each archive's scratch folder was named by how many items had been
    expanded (``expand-0`` for all of them at first), so one entry removed another's files while it
    unpacked them and the job ended ``partial`` with a different error each time."""
    entries = {}
    for name in ("a", "b", "c", "d"):
        folder = tmp_path / name
        folder.mkdir()
        write_version(tmp_path / f"{name}.csv", 1, rows=20_000)
        with tarfile.open(folder / "bulk.tar", "w") as tar:
            for i in range(20):
                tar.add(tmp_path / f"{name}.csv", arcname=f"t{i}.csv")
        entries[name] = str(folder / "bulk.tar")
    job, chunks = run(manager, manifest=entries, destination="many", unpack=True)
    assert job["state"] == JobState.succeeded.value, job["error"]
    assert len(chunks) == 80
    for name in entries:
        assert sorted(p.name for p in (root / "many" / name / "bulk").iterdir()) == sorted(
            f"t{i}.csv" for i in range(20)
        )
