"""Databases made by release 0.1.0 (tables from ``create_all``, no version table) are upgraded in place
and their jobs and operations read back, on SQLite, PostgreSQL and MariaDB; fresh databases are created
at the newest revision; two processes upgrading one database at once both succeed; the job store reads and
writes its jobs and chunks on each of them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, Migrations, current_revision
from jupyter_staging.engine.store import ChunkRecord, JobRecord, ResumeNotRead, Store
from jupyter_staging.hub.db import HUB_MIGRATIONS, OperationStore

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def baseline(migrations: Migrations) -> ModuleType:
    """The baseline revision module of ``migrations`` (its tables are the 0.1.0 schema)."""
    [path] = sorted(Path(migrations.versions).glob("v0001_*.py"))
    spec = importlib.util.spec_from_file_location(f"baseline_{path.parent.name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_release_0_1_jobs(url: str) -> None:
    """A job database as 0.1.0 left it: its three tables and one finished job with a chunk and an event."""
    engine = sa.create_engine(url)
    jobs, chunks, events = baseline(JOB_MIGRATIONS)._tables()
    jobs.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            jobs.insert().values(
                id="job-0.1", owner="alice", root="/home/alice", name="kepler", source="/archive/k.fits",
                destination="staging/kepler", method="copy", state="succeeded", bytes_done=1457280,
                bytes_total=1457280, chunks_done=1, chunks_total=1, rows_done=0, cleanup_policy="retain",
                created_at=NOW, updated_at=NOW, finished_at=NOW,
                resume={"items": [{"name": "k.fits"}], "part_bytes": {"part-000000.parquet": 1234}},
            )
        )  # fmt: skip
        conn.execute(
            chunks.insert().values(
                id="job-0.1-0", job_id="job-0.1", index=0, path="k.fits", state="ready", bytes=1457280
            )
        )
        conn.execute(events.insert().values(job_id="job-0.1", time=NOW, level="info", message="succeeded"))
    engine.dispose()


def downgrade_jobs(engine: sa.Engine, revision: str) -> None:
    """Downgrade the job database of ``engine`` to ``revision`` (Alembic, as an admin would)."""
    from alembic import command

    cfg = JOB_MIGRATIONS.config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = JOB_MIGRATIONS.version_table
        command.downgrade(cfg, revision)


def running_job(job_id: str, resume: dict) -> JobRecord:
    """A running copy job of alice's with ``resume`` as its resume data."""
    return JobRecord(
        id=job_id, owner="alice", root="/home/alice", name="k", source="/archive", destination="out",
        method="copy", state="running", cleanup_policy="retain", resume=resume,
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def test_a_release_0_1_job_database_is_upgraded_in_place_and_its_jobs_read_back(db_url):
    make_release_0_1_jobs(db_url)
    engine = sa.create_engine(db_url)
    assert current_revision(engine, JOB_MIGRATIONS) is None

    store = Store(db_url)  # what the server does on start

    assert current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    job = store.get_job("job-0.1")
    assert job is not None and job.state == "succeeded" and job.owner == "alice"
    assert job.finished_at == NOW
    # Migration 0003 copied what a job's description shows of its resume data into columns of its own.
    shown = store.get_job("job-0.1", resume=False)
    assert (
        shown is not None
        and shown.part_bytes == {"part-000000.parquet": 1234}
        and shown.not_converted is None
    )
    # Migration 0004 moved the resume data into a table of its own and dropped the column.
    assert job.resume == {"items": [{"name": "k.fits"}], "part_bytes": {"part-000000.parquet": 1234}}
    assert "resume" not in {c["name"] for c in sa.inspect(engine).get_columns("staging_jobs")}
    [chunk] = store.list_chunks("job-0.1")
    assert chunk.path == "k.fits" and chunk.bytes == 1457280
    assert [e.message for e in store.list_events("job-0.1")] == ["succeeded"]
    store.close()
    engine.dispose()


def test_a_release_0_1_operations_database_is_upgraded_and_read_back(db_url):
    engine = sa.create_engine(db_url)
    operations = baseline(HUB_MIGRATIONS)._operations()
    operations.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            operations.insert().values(
                id="op-0.1", user="bob", actor="bob", method="local_copy", source="/archive/k.fits",
                target="/home/bob/staging/k.fits", status="succeeded", bytes=1457280, started=NOW,
                finished=NOW,
            )
        )  # fmt: skip

    store = OperationStore(db_url)  # what the hub service does on start

    assert current_revision(engine, HUB_MIGRATIONS) == HUB_MIGRATIONS.head()
    [op] = store.list_operations(user="bob")
    assert op.to_dict()["status"] == "succeeded" and op.to_dict()["started"].startswith("2026-11-21T12:00")
    store.close()
    engine.dispose()


def test_a_fresh_database_is_made_at_the_newest_revision_with_both_version_tables(db_url):
    Store(db_url).close()
    OperationStore(db_url).close()
    engine = sa.create_engine(db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"staging_jobs", "staging_chunks", "staging_events", "staging_job_resume", "operations"} <= tables
    assert {"staging_alembic_version", "staging_hub_alembic_version"} <= tables
    assert current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    assert current_revision(engine, HUB_MIGRATIONS) == HUB_MIGRATIONS.head()
    engine.dispose()


def test_two_processes_upgrading_at_once_both_succeed(db_url):
    # Separate processes, as two users' servers (or two hub-service replicas) starting together are.
    script = (
        "import sqlalchemy as sa, sys\n"
        "from jupyter_staging.engine.migrate import JOB_MIGRATIONS, upgrade_database\n"
        "upgrade_database(sa.create_engine(sys.argv[1]), JOB_MIGRATIONS)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, db_url], stderr=subprocess.PIPE) for _ in range(6)
    ]
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in procs]
    assert all(code == 0 for code, _ in results), results
    engine = sa.create_engine(db_url)
    assert current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    engine.dispose()


def test_jobs_are_shown_without_reading_their_resume_data_on_every_database(db_url):
    """A job's resume data lists every item (megabytes for 20,000 files): showing a job reads only what it
    shows of it (Parquet part bytes, notices) by the database's JSON path operator; chunk updates are one
    executemany. Same results on SQLite, PostgreSQL and MariaDB."""
    store = Store(db_url)
    items = [{"name": f"lc-{i}.fits", "size": i} for i in range(500)]
    resume = {
        "items": items,
        "part_bytes": {"p-0.parquet": 10, "p-1.parquet": 5},
        "not_converted": {"x": "why"},
    }
    store.add_job(running_job("job-1", resume))
    light = store.get_job("job-1", resume=False)
    assert light is not None and light.part_bytes == resume["part_bytes"]
    assert light.not_converted == {"x": "why"}
    with pytest.raises(ResumeNotRead):
        _ = light.resume  # never read behind the caller's back
    [listed] = store.list_jobs("alice", resume=False)
    assert listed.part_bytes == resume["part_bytes"]
    full = store.get_job("job-1")
    assert full is not None and full.resume == resume
    new = [dict(id=f"c-{i}", job_id="job-1", index=i, path=f"lc-{i}.fits", state="pending") for i in range(3)]
    store.write_chunks("job-1", new, {})
    ready = {"c-0": {"state": "ready", "sha256": "a" * 64}, "c-2": {"state": "ready", "sha256": "b" * 64}}
    store.write_chunks("job-1", [], ready, chunks_done=2)
    chunks: list[ChunkRecord] = store.list_chunks("job-1")
    assert [(c.state, c.sha256) for c in chunks] == [
        ("ready", "a" * 64),
        ("pending", None),
        ("ready", "b" * 64),
    ]
    updated = store.update_job(
        "job-1", load_resume=False, resume={**resume, "part_bytes": {"p-0.parquet": 7}}
    )
    assert updated is not None and updated.part_bytes == {"p-0.parquet": 7}
    again = store.get_job("job-1", resume=False)
    assert again is not None and again.part_bytes == {"p-0.parquet": 7} and again.chunks_done == 2
    store.write_chunks("job-1", [], {}, resume={"items": items[:2]}, bytes_done=9)
    [listed] = store.list_jobs("alice")
    assert listed.resume == {"items": items[:2]} and listed.bytes_done == 9 and listed.part_bytes is None
    # The job's row is updated by a statement built once per list of columns: JSON and times bound as the
    # columns' types on every database.
    started = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=timezone.utc)
    store.set_job_fields("job-1", not_converted={"y.csv": "not a table"}, started_at=started)
    store.write_chunks("job-1", [], {}, bytes_columns={"z.csv": ["name"]}, chunks_done=3)
    shown = store.get_job("job-1", resume=False)
    assert shown is not None and shown.not_converted == {"y.csv": "not a table"}
    assert shown.bytes_columns == {"z.csv": ["name"]} and shown.chunks_done == 3
    assert shown.started_at is not None
    assert shown.started_at.replace(tzinfo=None) == started.replace(tzinfo=None)
    store.delete_job("job-1")
    assert store.get_job("job-1") is None
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM staging_job_resume")).scalar() == 0
    engine.dispose()
    store.close()


def test_the_resume_table_is_moved_back_by_a_downgrade_and_forth_again(db_url):
    """Migration 0004 both ways: a downgrade to 0003 puts each job's resume data back in its row, an upgrade
    moves it out again, nothing lost."""

    from jupyter_staging.engine.migrate import upgrade_database

    store = Store(db_url)
    resume = {"items": [{"name": "lc.fits", "size": 5}], "attempts": 2}
    store.add_job(running_job("job-r", resume))
    store.close()
    engine = sa.create_engine(db_url)
    downgrade_jobs(engine, "0003")
    with engine.connect() as conn:
        jobs = sa.table("staging_jobs", sa.column("id"), sa.column("resume", sa.JSON))
        assert conn.execute(sa.select(jobs.c.resume).where(jobs.c.id == "job-r")).scalar() == resume
        assert "staging_job_resume" not in sa.inspect(conn).get_table_names()
    upgrade_database(engine, JOB_MIGRATIONS)
    store = Store(db_url)
    job = store.get_job("job-r")
    assert job is not None and job.resume == resume
    store.close()
    engine.dispose()


def test_resume_changes_are_read_back_and_folded_in_by_a_downgrade(db_url):
    """Migration 0006 on each database: rows of changes are read back on top of the resume data, in the
    order written; a downgrade to 0005 folds them into the resume data (a paused job loses nothing), an
    upgrade makes the table again."""

    from jupyter_staging.engine.migrate import upgrade_database
    from jupyter_staging.engine.resumechanges import add, drop, put

    store = Store(db_url)
    store.add_job(running_job("job-c", {"items": [{"name": "a.csv"}, {"name": "b.csv"}], "attempts": 1}))
    parts = {"a.parquet/part-00000.parquet": 1698, "b.parquet/part-00000.parquet": 1701}
    for rel, size in parts.items():
        store.write_chunks("job-c", [], {}, resume_changes=[put("part_bytes", rel, size)])
    store.write_chunks("job-c", [], {}, resume_changes=[add("converted", "a.csv"), add("converted", "b.csv")])
    store.write_chunks("job-c", [], {}, resume_changes=[drop("part_bytes", "b.parquet/part-00000.parquet")])
    expected = {
        "items": [{"name": "a.csv"}, {"name": "b.csv"}],
        "attempts": 1,
        "part_bytes": {"a.parquet/part-00000.parquet": 1698},
        "converted": ["a.csv", "b.csv"],
    }
    job = store.get_job("job-c")
    assert job is not None and job.resume == expected
    store.close()
    engine = sa.create_engine(db_url)
    downgrade_jobs(engine, "0005")
    with engine.connect() as conn:
        resume = sa.table("staging_job_resume", sa.column("job_id"), sa.column("resume", sa.JSON))
        assert conn.execute(sa.select(resume.c.resume).where(resume.c.job_id == "job-c")).scalar() == expected
        assert "staging_resume_changes" not in sa.inspect(conn).get_table_names()
        # The release before shows a job's Parquet bytes from this column: as of every change.
        jobs = sa.table("staging_jobs", sa.column("id"), sa.column("part_bytes", sa.JSON))
        shown = conn.execute(sa.select(jobs.c.part_bytes).where(jobs.c.id == "job-c")).scalar()
        assert shown == {"a.parquet/part-00000.parquet": 1698}
    upgrade_database(engine, JOB_MIGRATIONS)
    store = Store(db_url)
    job = store.get_job("job-c")
    assert job is not None and job.resume == expected
    store.write_chunks("job-c", [], {}, resume_changes=[add("converted", "c.csv")])
    job = store.get_job("job-c")
    assert job is not None and job.resume["converted"] == ["a.csv", "b.csv", "c.csv"]
    store.close()
    engine.dispose()


# The job store's chunk writes: one driver-level executemany per set of columns, the statement compiled for
# the database (positional or named parameters), read back as written.
def test_chunk_rows_are_inserted_and_updated_in_batches_on_each_database(db_url: str):
    store = Store(db_url)
    try:
        now = datetime.now(timezone.utc)
        rec = JobRecord(
            **dict(id="j-1", owner="me", root="/r", name="n", source="/s", destination="d", method="copy"),
            **dict(state="running", cleanup_policy="retain", created_at=now, updated_at=now, resume={}),
        )
        store.add_job(rec)
        pending = [
            {
                "id": f"c-{i}",
                "job_id": "j-1",
                "index": i,
                "path": f"lc-{i:05d}.fits",
                "state": "pending",
                "bytes": 65536 + i,
                "content_type": None,
            }
            for i in range(300)
        ]
        # Two sets of columns: one executemany each.
        pending += [
            {"id": "c-300", "job_id": "j-1", "index": 300, "path": "100% done's.fits", "state": "pending"}
        ]
        store.write_chunks("j-1", new=pending, updates={}, chunks_done=0)
        updates = {
            f"c-{i}": {"state": "ready", "sha256": f"{i:064x}", "bytes": 65536 + i} for i in range(0, 300, 2)
        }
        updates["c-1"] = {"state": "ready", "sha256": None, "bytes": 1}  # another set of values, same columns
        updates["c-300"] = {"state": "ready", "path": "100% done's.fits", "rows": 7}
        store.write_chunks("j-1", new=[], updates=updates, chunks_done=len(updates))
        chunks = {c.id: c for c in store.list_chunks("j-1")}
    finally:
        store.close()
    assert len(chunks) == 301
    assert [c.index for c in sorted(chunks.values(), key=lambda c: c.index)] == list(range(301))
    for i in range(300):
        c = chunks[f"c-{i}"]
        if i % 2 == 0:
            assert (c.state, c.sha256, c.bytes, c.path) == (
                "ready",
                f"{i:064x}",
                65536 + i,
                f"lc-{i:05d}.fits",
            )
        elif i == 1:
            assert (c.state, c.sha256, c.bytes) == ("ready", None, 1)
        else:
            assert (c.state, c.sha256, c.bytes) == ("pending", None, 65536 + i)
    last = chunks["c-300"]
    assert (last.state, last.path, last.rows, last.bytes) == ("ready", "100% done's.fits", 7, None)


def test_chunks_keep_their_publication_time_and_a_downgrade_drops_it(db_url: str):
    """Migration 0007 on each database: a chunk's ``mtime_ns`` (ns since the epoch, past 2**32) is written
    with its ready mark and read back, in full and in the summaries a manifest is made from; a downgrade to
    0006 drops the column (the release before reads and writes the chunks as ever) and an upgrade adds it
    again, empty: those chunks' times are read from their job's manifest then."""
    from jupyter_staging.engine.migrate import upgrade_database

    published = 1_796_000_000_123_456_789
    store = Store(db_url)
    store.add_job(running_job("job-t", {"items": [{"name": "k.fits"}]}))
    pending = {"id": "job-t-0", "job_id": "job-t", "index": 0, "path": "k.fits", "state": "pending"}
    store.write_chunks("job-t", [pending], {})
    store.write_chunks("job-t", [], {"job-t-0": {"state": "ready", "bytes": 1457280, "mtime_ns": published}})
    [chunk] = store.list_chunks("job-t")
    assert (chunk.state, chunk.mtime_ns) == ("ready", published)
    assert [c.mtime_ns for c in store.chunk_summaries("job-t")] == [published]
    store.close()
    engine = sa.create_engine(db_url)
    downgrade_jobs(engine, "0006")
    with engine.connect() as conn:
        assert "mtime_ns" not in {c["name"] for c in sa.inspect(conn).get_columns("staging_chunks")}
        chunks = sa.table("staging_chunks", sa.column("id"), sa.column("bytes"))
        assert conn.execute(sa.select(chunks.c.bytes).where(chunks.c.id == "job-t-0")).scalar() == 1457280
    upgrade_database(engine, JOB_MIGRATIONS)
    engine.dispose()
    store = Store(db_url)
    [chunk] = store.list_chunks("job-t")
    assert (chunk.state, chunk.bytes, chunk.mtime_ns) == ("ready", 1457280, None)
    store.close()


def test_job_leases_are_kept_to_the_microsecond_and_a_downgrade_drops_them(db_url: str):
    """Migration 0008 on each database: a job's ``lease_expires_at`` (UTC, microseconds on MariaDB too) is
    written with its runner and renewed by a conditional ``UPDATE``, and read back; a downgrade to 0007
    drops the column (the release before reads and writes the jobs as ever) and an upgrade adds it again,
    empty: such a job's runner is judged as before leases."""
    from jupyter_staging.engine.leases import claim, renew
    from jupyter_staging.engine.migrate import upgrade_database

    lease = datetime(2026, 11, 21, 12, 0, 30, 123456, tzinfo=timezone.utc)
    store = Store(db_url)
    job = running_job("job-l", {"items": []})
    job.runner, job.lease_expires_at = "podA:7:1", lease
    store.add_job(job)
    assert store.get_job("job-l", resume=False).lease_expires_at == lease
    assert renew(store, "podA:7:1", "/home/alice", lease + timedelta(microseconds=1)) == 1
    assert renew(store, "podB:7:1", "/home/alice", lease + timedelta(seconds=9)) == 0  # not podB's
    as_read = store.get_job("job-l", resume=False)
    assert as_read.lease_expires_at == lease + timedelta(microseconds=1)
    assert not claim(store, job, "podB:7:1", lease)  # renewed since it was read
    assert claim(store, as_read, "podB:7:1", lease + timedelta(seconds=30))
    assert (store.get_job("job-l", resume=False).runner, store.get_job("job-l").lease_expires_at) == (
        "podB:7:1",
        lease + timedelta(seconds=30),
    )
    store.close()
    engine = sa.create_engine(db_url)
    downgrade_jobs(engine, "0007")
    with engine.connect() as conn:
        assert "lease_expires_at" not in {c["name"] for c in sa.inspect(conn).get_columns("staging_jobs")}
    upgrade_database(engine, JOB_MIGRATIONS)
    engine.dispose()
    store = Store(db_url)
    job = store.get_job("job-l", resume=False)
    assert job is not None and (job.runner, job.lease_expires_at) == ("podB:7:1", None)
    store.close()


def test_an_older_sqlite_keeps_output_bytes_on_a_downgrade_and_upgrades_again(tmp_path, monkeypatch):
    """Before 3.35.5, SQLite cannot drop a column without rebuilding the table: the downgrade from 0006
    keeps ``output_bytes``, emptied, and the next upgrade takes the column as it finds it, still empty (the
    release before never kept it up), so the job's Parquet bytes are summed from ``part_bytes``. The
    downgrade from 0007 keeps the chunks' ``mtime_ns`` the same way."""
    import sqlite3

    from jupyter_staging.engine.migrate import upgrade_database

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = Store(url)
    store.add_job(running_job("job-o", {"items": [], "part_bytes": {"a.parquet/part-00000.parquet": 7}}))
    store.close()
    engine = sa.create_engine(url)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    downgrade_jobs(engine, "0005")
    with engine.connect() as conn:
        assert "output_bytes" in {c["name"] for c in sa.inspect(conn).get_columns("staging_jobs")}
        assert "mtime_ns" in {c["name"] for c in sa.inspect(conn).get_columns("staging_chunks")}  # 0007's
        assert "lease_expires_at" in {c["name"] for c in sa.inspect(conn).get_columns("staging_jobs")}  # 0008
    upgrade_database(engine, JOB_MIGRATIONS)
    engine.dispose()
    store = Store(url)
    job = store.get_job("job-o", resume=False)
    assert (
        job is not None and job.output_bytes is None and job.part_bytes == {"a.parquet/part-00000.parquet": 7}
    )
    store.close()
