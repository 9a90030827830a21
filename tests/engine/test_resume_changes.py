"""Changes to a job's resume data are written as rows of their own (``engine/resumechanges.py``, migration
0006), not the whole resume data each time.

The resume data lists every item of a job. A conversion records a few small entries per table, and writing
the whole resume data for each made a folder of N small tables cost O(N²): 1,000 five-row CSV files took
75 s, 2,000 about 210 s. These tests check what a user relies on: the changes read back as written, a
paused job of many tables resumes with all of them, and the whole resume data is written a bounded number
of times, not once per table.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.progress import PROGRESS_INTERVAL
from jupyter_staging.engine.resumechanges import MIN_CHANGES_BEFORE_COMPACTION, add, apply_changes, drop, put
from jupyter_staging.engine.store import JobRecord, Store
from jupyter_staging.safety.ownership import PUBLISHED_XATTR, published_tag
from tests.helpers.crashes import killed_part_way, resumed
from tests.helpers.data import wait_until

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def test_changes_apply_in_the_order_they_were_written():
    resume = {"items": [{"name": "a.csv"}], "outputs": {"a.parquet/part-00000.parquet": "a.csv"}}
    writes = [
        [put("outputs", "b.parquet/part-00000.parquet", "b.csv"), add("converted", "a.csv")],
        [
            drop("outputs", "a.parquet/part-00000.parquet"),
            add("converted", "b.csv"),
            add("converted", "a.csv"),
        ],
        [put("table_versions", "b.csv", {"size": 24}), ["a-later-release-op", "x"], drop("nothing", "here")],
    ]
    assert apply_changes(resume, writes) == {
        "items": [{"name": "a.csv"}],
        "outputs": {"b.parquet/part-00000.parquet": "b.csv"},
        "converted": ["a.csv", "b.csv"],  # once each, in the order first added
        "table_versions": {"b.csv": {"size": 24}},
    }
    assert apply_changes(None, []) is None
    assert apply_changes(None, [[add("expanded", "bulk.tar")]]) == {"expanded": ["bulk.tar"]}


@pytest.fixture
def store(tmp_path: Path):
    s = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    s.add_job(
        JobRecord(
            id="job-1", owner="alice", root=str(tmp_path), name="t", source="/archive", destination="out",
            method="copy", state="running", cleanup_policy="retain", created_at=NOW, updated_at=NOW,
            resume={"items": [{"name": "t.csv"}], "attempts": 1},
        )
    )  # fmt: skip
    yield s
    s.close()


def change_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM staging_resume_changes")).scalar_one()


def test_changes_are_read_back_on_top_of_the_last_whole_write_which_replaces_them(store):
    store.write_chunks("job-1", [], {}, resume_changes=[put("part_bytes", "t.parquet/part-00000.parquet", 9)])
    store.write_chunks("job-1", [], {}, resume_changes=[add("converted", "t.csv")])
    job = store.get_job("job-1")
    assert job is not None and job.resume == {
        "items": [{"name": "t.csv"}],
        "attempts": 1,
        "part_bytes": {"t.parquet/part-00000.parquet": 9},
        "converted": ["t.csv"],
    }
    assert change_rows(store) == 2
    # A whole write (a run's start, compaction, the job's end) replaces the rows it includes.
    store.write_chunks("job-1", [], {}, resume={**job.resume, "attempts": 2})
    assert change_rows(store) == 0
    again = store.get_job("job-1")
    assert again is not None and again.resume == {**job.resume, "attempts": 2}
    assert again.part_bytes == {"t.parquet/part-00000.parquet": 9}
    store.write_chunks("job-1", [], {}, resume_changes=[add("expanded", "t.csv.gz")])
    store.delete_job("job-1")
    assert change_rows(store) == 0


def test_a_listing_of_jobs_applies_each_jobs_changes_to_its_own_resume_data(store, tmp_path):
    store.add_job(
        JobRecord(
            id="job-2", owner="alice", root=str(tmp_path), name="u", source="/archive", destination="out2",
            method="copy", state="running", cleanup_policy="retain", created_at=NOW, updated_at=NOW,
            resume={"items": [{"name": "u.csv"}]},
        )
    )  # fmt: skip
    store.write_chunks("job-1", [], {}, resume_changes=[add("converted", "t.csv")])
    store.write_chunks("job-2", [], {}, resume_changes=[add("converted", "u.csv")])
    jobs = {j.id: j for j in store.list_jobs("alice", resume=True)}
    assert jobs["job-1"].resume["converted"] == ["t.csv"]
    assert jobs["job-2"].resume["converted"] == ["u.csv"]


def small_tables(folder: Path, count: int) -> Path:
    """``count`` five-row CSV tables, ``t00000.csv``..., in ``folder``."""
    folder.mkdir()
    for i in range(count):
        (folder / f"t{i:05d}.csv").write_text("a,b\n" + "".join(f"{j},{i}\n" for j in range(5)))
    return folder


def statements(manager: StagingManager, *starts: str) -> list[int]:
    """A list that counts (one element each) every statement run from now on that starts with one of
    ``starts`` (upper case)."""
    seen: list[int] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith(starts):
            seen.append(1)

    sa.event.listen(manager.store.engine, "before_cursor_execute", count)
    return seen


def whole_writes(manager: StagingManager) -> list[int]:
    """A list that counts (one element each) every whole write of resume data from now on."""
    return statements(manager, "UPDATE STAGING_JOB_RESUME", "INSERT INTO STAGING_JOB_RESUME")


def test_a_folder_of_many_small_tables_writes_its_resume_data_whole_a_bounded_number_of_times(
    manager, root, tmp_path
):
    """Before, each of 300 tables wrote the whole resume data (which lists all 300) three times."""
    count = 300
    source = small_tables(tmp_path / "tables", count)
    writes = whole_writes(manager)
    changes = statements(manager, "INSERT INTO STAGING_RESUME_CHANGES")
    started = time.monotonic()
    job, _ = manager.create(CreateJob(source=str(source), destination="out", convert={}))
    done = manager.wait(job.id, timeout=300)
    elapsed = time.monotonic() - started
    assert done.state == JobState.succeeded, done.error
    # The job's creation, its listing, its start and its end, then once per as many changes as the resume
    # data holds entries (seven changes per table: its folder's claim and listing, version, the user's parts
    # in it, its part's table and size, the mark that it is converted). Before: three per table, 900.
    assert 4 <= len(writes) <= 4 + 7 * count // max(MIN_CHANGES_BEFORE_COMPACTION, count)
    # Two writes per table: its claim of its folder (before its part is published), then its part's record
    # with the mark that it is converted. Before, the part's record was a write of its own: three per table.
    # (A batch falls due at most once per progress interval, and may carry a change of its own.)
    assert len(changes) <= 2 * count + 4 + elapsed / PROGRESS_INTERVAL
    rec = manager.store.get_job(job.id)
    assert rec is not None
    assert sorted(rec.resume["converted"]) == sorted(f"t{i:05d}.csv" for i in range(count))
    assert len(rec.resume["outputs"]) == count and len(rec.resume["part_bytes"]) == count
    # Beyond 256 parts the job's row holds their sum, not each part's size (read with every part).
    assert rec.part_bytes is None and rec.output_bytes == sum(rec.resume["part_bytes"].values())
    assert change_rows(manager.store) == 0  # the end wrote it whole
    assert done.progress.output_bytes == sum(p.stat().st_size for p in (root / "out").glob("*/*.parquet"))
    table = pq.read_table(root / "out" / "t00299.parquet")
    assert table.num_rows == 5 and set(table.column("b").to_pylist()) == {299}


def test_a_failed_job_of_many_tables_shows_the_bytes_of_every_part_it_kept(manager, root, tmp_path):
    """Beyond 256 parts, ``part_bytes`` is not written with each change; a run that ends (here failed: two
    tables give one folder) writes the resume data whole, so ``progress.output_bytes`` counts every part."""
    source = small_tables(tmp_path / "tables", 300)
    (source / "zz.csv").write_text("a,b\n1,2\n")
    (source / "zz.tsv").write_text("a\tb\n1\t2\n")
    job, _ = manager.create(CreateJob(source=str(source), destination="out", convert={}))
    done = manager.wait(job.id, timeout=300)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists"
    parts = list((root / "out").glob("*.parquet/part-*.parquet"))
    assert len(parts) == 301
    assert done.progress.output_bytes == sum(p.stat().st_size for p in parts)


def test_a_job_of_many_small_tables_killed_part_way_resumes_from_its_written_changes(tmp_path):
    """Killed part way (a pause or a failure writes the resume data whole; a crash does not), the job's
    resume data is the last whole write plus rows of changes; the next server reads them back, skips the
    tables converted already and converts the rest, each once."""
    count = 400
    root = tmp_path / "root"
    root.mkdir()
    source = small_tables(tmp_path / "tables", count)
    db = tmp_path / "jobs.sqlite"
    request = {"source": str(source), "destination": "out", "convert": {}}
    job_id = killed_part_way(tmp_path, request, lambda out: len(os.listdir(out)) >= 60)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM staging_resume_changes").fetchone()[0]
    assert rows > 0  # written as changes since the last whole write
    stored = Store(f"sqlite:///{db}")
    try:
        job = stored.get_job(job_id)
        assert job is not None
        converted = set(job.resume["converted"])
    finally:
        stored.close()
    assert 50 <= len(converted) < count, "the job ended before the kill; nothing was tested"
    done, chunks, log = resumed(tmp_path, job_id)  # the same database, tmp_path / "jobs.sqlite"
    assert done.state == JobState.succeeded, done.error
    expected = sorted(f"t{i:05d}.parquet/part-00000.parquet" for i in range(count))
    assert sorted(c.path for c in chunks) == expected
    assert all(c.state == "ready" for c in chunks)
    assert sum(pq.read_table(root / "out" / f"t{i:05d}.parquet").num_rows for i in range(count)) == 5 * count
    for name in sorted(converted)[:20]:  # converted before the kill: never read again
        assert log.count(f"{name}: converted to") == 1


def test_output_bytes_keeps_up_with_a_running_conversion_of_many_tables(manager, root, tmp_path):
    """Beyond 256 parts, ``part_bytes`` goes with the changes no more; ``output_bytes`` (their sum, kept by
    the running job) still grows with every part, not only at the run's end."""
    source = small_tables(tmp_path / "tables", 700)
    job, _ = manager.create(CreateJob(source=str(source), destination="out", convert={}))
    shown: list[tuple[str, int]] = []

    def past_400_parts() -> bool:
        now = manager.get(job.id)
        shown.append((now.state.value, now.progress.output_bytes or 0))
        return now.state.is_final or now.progress.output_bytes > 400 * 1500

    wait_until(past_400_parts, timeout=300, what="output_bytes past 400 parts")
    assert shown[-1][0] == "running", shown[-3:]  # seen growing while the job ran
    done = manager.wait(job.id, timeout=300)
    assert done.state == JobState.succeeded
    assert done.progress.output_bytes == sum(p.stat().st_size for p in (root / "out").glob("*/*.parquet"))


def bulk_tar(tmp_path: Path, count: int) -> Path:
    """``tmp_path / "bulk.tar"`` of ``count`` files ``lc-00000.dat``... (``f"{i}\\n"`` 200 times each), and
    an empty folder ``tmp_path / "root"``."""
    (tmp_path / "root").mkdir()
    folder = tmp_path / "files"
    folder.mkdir()
    with tarfile.open(tmp_path / "bulk.tar", "w") as tar:
        for i in range(count):
            path = folder / f"lc-{i:05d}.dat"
            path.write_bytes(f"{i}\n".encode() * 200)
            tar.add(path, arcname=path.name)
    return tmp_path / "bulk.tar"


def test_an_archive_killed_while_its_files_are_published_resumes_after_those_staged(tmp_path):
    """The next server reads what the killed run recorded below the archive's folder (not the job's every
    chunk once per archive) and publishes only the rest: each file once, none refused as already there."""
    count = 4000
    request = {"source": str(bulk_tar(tmp_path, count)), "destination": "out", "unpack": True}
    bulk = tmp_path / "root" / "out" / "bulk"
    job_id = killed_part_way(tmp_path, request, lambda out: bulk.is_dir() and len(os.listdir(bulk)) >= 200)
    with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:
        ready = conn.execute("SELECT COUNT(*) FROM staging_chunks WHERE state = 'ready'").fetchone()[0]
    assert 0 < ready < count, "killed before any file was recorded, or after the last: nothing was tested"
    done, chunks, _ = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(c.path for c in chunks) == [f"bulk/lc-{i:05d}.dat" for i in range(count)]
    assert all(c.state == "ready" for c in chunks)
    for i in (0, count // 2, count - 1):
        assert (bulk / f"lc-{i:05d}.dat").read_bytes() == f"{i}\n".encode() * 200


def test_a_file_unpacked_but_not_recorded_when_the_server_died_is_taken_as_the_jobs_not_refused(tmp_path):
    """The run dies between publishing an extracted file under its final name and recording its chunk.
    The file carries the job's owner attribute and holds the archive's very bytes: the next run takes it as
    the job's (before: ``destination_exists``, "lc-00299.dat already exists", and the job failed)."""
    count = 600
    request = {"source": str(bulk_tar(tmp_path, count)), "destination": "out", "unpack": True}
    job_id = killed_part_way(tmp_path, request, exit_at="_chunk_ready:300")
    bulk = tmp_path / "root" / "out" / "bulk"
    assert (bulk / "lc-00299.dat").is_file()  # the 300th published, its chunk not recorded
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(c.path for c in chunks) == [f"bulk/lc-{i:05d}.dat" for i in range(count)]
    assert all(c.state == "ready" for c in chunks)
    assert (bulk / "lc-00299.dat").read_bytes() == b"299\n" * 200
    assert "already complete from the previous run" in log


def test_a_file_of_the_same_bytes_not_tagged_by_the_job_is_never_taken_as_the_jobs(tmp_path):
    """Only a file carrying the job's owner attribute (set before it took its name) is taken as the job's.
    The user put their own copy of the same bytes where the unrecorded file was (or changed the mode of a
    file they had there: a ctime says nothing of who made a file): the resumed job fails
    ``destination_exists`` and leaves it as it is (acking the chunk would have removed it)."""
    count = 600
    request = {"source": str(bulk_tar(tmp_path, count)), "destination": "out", "unpack": True}
    job_id = killed_part_way(tmp_path, request, exit_at="_chunk_ready:300")
    unrecorded = tmp_path / "root" / "out" / "bulk" / "lc-00299.dat"
    tag = published_tag(job_id, "out/bulk/lc-00299.dat", hashlib.sha256(b"299\n" * 200).hexdigest())
    assert os.getxattr(unrecorded, PUBLISHED_XATTR) == tag  # the dead run's own (kept in the inode)
    unrecorded.unlink()
    unrecorded.write_bytes(b"299\n" * 200)  # the user's copy: the very bytes, published since the start
    unrecorded.chmod(0o640)
    done, _, _ = resumed(tmp_path, job_id)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists" and "lc-00299.dat" in done.error.message
    assert unrecorded.read_bytes() == b"299\n" * 200 and unrecorded.stat().st_mode & 0o777 == 0o640


def test_a_table_whose_last_part_was_published_when_the_server_died_is_finished_on_resume(tmp_path):
    """A table's last part is recorded with the mark that the table is converted, in one write. A run that
    dies after publishing the 40th table's part and before that write leaves the part published and not
    recorded; the next run writes it again (the part found there is the job's: published since the job
    started, not a file of the user's), and every table ends with one part."""
    count = 60
    (tmp_path / "root").mkdir()
    source = small_tables(tmp_path / "tables", count)
    request = {"source": str(source), "destination": "out", "convert": {}}
    job_id = killed_part_way(tmp_path, request, exit_at="_converted:40")
    out = tmp_path / "root" / "out"
    assert len(list(out.glob("*.parquet/part-00000.parquet"))) == 40
    with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:
        ready = conn.execute("SELECT COUNT(*) FROM staging_chunks WHERE state = 'ready'").fetchone()[0]
    # The 40th table's part waits for the write that never came (unless a batch fell due meanwhile: more
    # than a progress interval after the 39th table's write, on a very slow machine).
    assert ready in (39, 40)
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(c.path for c in chunks) == [f"t{i:05d}.parquet/part-00000.parquet" for i in range(count)]
    assert all(c.state == "ready" for c in chunks)
    parts = list(out.glob("*.parquet/part-*.parquet"))
    assert len(parts) == count
    assert done.progress.chunks_done == count and done.progress.rows_done == 5 * count
    assert done.progress.output_bytes == sum(p.stat().st_size for p in parts)
    if ready == 39:
        assert "part-00000.parquet: published but not recorded before the stop; writing it again" in log
    assert sum(pq.read_table(out / f"t{i:05d}.parquet").num_rows for i in range(count)) == 5 * count
