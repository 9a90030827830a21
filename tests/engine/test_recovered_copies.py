"""A copy job killed between publishing a file and recording it takes that file back as its own, and nothing
else (``safety/ownership.py``).

Files are published one by one and their chunks recorded in batches: a server killed in between leaves
files at their final names that the job never recorded. The next run must take those back (else it fails
``destination_exists`` on its own output), and must never take a file the user put there meanwhile: a
file taken as the job's is removed with the job's output later (ack with ``delete_on_ack``, a TTL, a
cancel's delete policy), and its sha256 is offered to later jobs as staged bytes. Before, any file of the
item's size was taken: a user's file of other bytes was recorded as the job's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq

from jupyter_staging.engine.folders import PUBLISHED_TAGS
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.store import Store
from jupyter_staging.safety.ownership import (
    OWNER_XATTR,
    PUBLISHED_XATTR,
    keeps_attributes,
    published_tag,
    tag_published,
    taken_back,
)
from tests.helpers.crashes import killed_part_way, resumed
from tests.helpers.managers import manager_for
from tests.helpers.servers import RangeHTTPServer
from tests.helpers.space import file_system_without_attributes

COUNT = 600


def light_curves(tmp_path: Path) -> Path:
    """``COUNT`` files ``lc-00000.dat``... of 1,000 bytes each (``f"{i:04d}\\n"`` 200 times), in
    ``tmp_path / "curves"``; and an empty ``tmp_path / "root"``."""
    (tmp_path / "root").mkdir()
    folder = tmp_path / "curves"
    folder.mkdir()
    for i in range(COUNT):
        (folder / f"lc-{i:05d}.dat").write_bytes(f"{i:04d}\n".encode() * 200)
    return folder


def staged_once(tmp_path: Path, request: dict) -> str:
    """Run ``request`` to success in a server on ``tmp_path`` (root and job database), then stop it;
    returns the job's id."""
    manager = manager_for(tmp_path)
    try:
        first, _ = manager.create(CreateJob(**request))
        assert manager.wait(first.id, timeout=120).state == JobState.succeeded
    finally:
        manager.stop()
    return first.id


def killed_copy(tmp_path: Path) -> tuple[str, list[str]]:
    """A copy job of :func:`light_curves` into ``out`` that dies (as a kill would) at its 300th file's
    ``_chunk_done``, the file published and not recorded: ``(job id, names published and not recorded)``."""
    request = {"source": str(light_curves(tmp_path)), "destination": "out", "method": "copy"}
    job_id = killed_part_way(tmp_path, request, exit_at="_chunk_done:300")
    with sqlite3.connect(tmp_path / "jobs.sqlite") as conn:
        recorded = {row[0] for row in conn.execute("SELECT path FROM staging_chunks WHERE state = 'ready'")}
    published = set(os.listdir(tmp_path / "root" / "out"))
    unrecorded = sorted(published - recorded)
    assert unrecorded, "every published file was recorded: nothing was tested"
    assert len(published) < COUNT, "the job ended before its planned death"
    return job_id, unrecorded


def test_files_published_and_not_recorded_when_the_server_died_are_taken_back(tmp_path):
    job_id, unrecorded = killed_copy(tmp_path)
    out = tmp_path / "root" / "out"
    for name in unrecorded:  # each tagged as the job's, for its path and bytes, before it took its name
        fd = os.open(out / name, os.O_RDONLY)
        try:
            data = (out / name).read_bytes()
            assert taken_back(fd, job_id, f"out/{name}") == (len(data), hashlib.sha256(data).hexdigest())
        finally:
            os.close(fd)
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(c.path for c in chunks) == [f"lc-{i:05d}.dat" for i in range(COUNT)]
    assert all(c.state == "ready" for c in chunks)
    by_path = {c.path: c for c in chunks}
    for name in unrecorded:
        i = int(name[3:8])
        assert (out / name).read_bytes() == f"{i:04d}\n".encode() * 200
        assert by_path[name].sha256 == hashlib.sha256(f"{i:04d}\n".encode() * 200).hexdigest()
    assert "already complete from the previous run" in log


def test_a_users_file_of_the_same_size_in_place_of_an_unrecorded_one_is_refused_and_kept(tmp_path):
    """The reviewer's reproduction: the user replaced a file the dead run published (not recorded) with one
    of the same size and other bytes. The resumed job fails ``destination_exists`` on it and leaves it; it
    used to record the user's bytes as the job's (and log them as complete from the previous run)."""
    job_id, unrecorded = killed_copy(tmp_path)
    mine = tmp_path / "root" / "out" / unrecorded[0]
    mine.unlink()
    mine.write_bytes(b"x" * 1000)
    done, _, log = resumed(tmp_path, job_id)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists" and unrecorded[0] in done.error.message
    assert mine.read_bytes() == b"x" * 1000


def test_the_jobs_own_file_edited_since_it_was_published_is_not_taken(tmp_path):
    """Edited in place (same size), the file keeps the job's tag, made for the bytes published: it no
    longer matches them, so the file is the user's now and is refused, not recorded with the new bytes."""
    job_id, unrecorded = killed_copy(tmp_path)
    edited = tmp_path / "root" / "out" / unrecorded[0]
    with open(edited, "r+b") as fh:
        fh.write(b"EDIT")
    assert os.getxattr(edited, PUBLISHED_XATTR)  # the tag is still there
    done, _, _ = resumed(tmp_path, job_id)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists"
    assert edited.read_bytes().startswith(b"EDIT")


def test_the_owner_tag_is_short_enough_for_the_inode_and_names_the_job_the_path_and_the_bytes(tmp_path):
    path = tmp_path / "a.dat"
    path.write_bytes(b"light curve")
    sha = hashlib.sha256(b"light curve").hexdigest()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert taken_back(fd, "job-1", "out/a.dat") is None  # untagged: a user's file
        assert taken_back(fd, "job-1", "out/a.dat", tagged=False) == (11, sha)  # no tag expected: by bytes
        assert taken_back(fd, "job-1", "out/a.dat", tagged=False, size=12) is None
        assert tag_published(fd, "job-1", "out/a.dat", sha)
        assert len(os.getxattr(path, PUBLISHED_XATTR)) == 32 == len(published_tag("job-1", "out/a.dat", sha))
        assert taken_back(fd, "job-1", "out/a.dat") == (11, sha)
        assert taken_back(fd, "job-1", "out/a.dat", size=11, sha256=sha) == (11, sha)
        assert taken_back(fd, "job-1", "out/a.dat", sha256="0" * 64) is None  # other bytes than expected
        assert taken_back(fd, "job-1", "out/a.dat", size=12) is None
        assert taken_back(fd, "job-2", "out/a.dat") is None  # another job's
        assert taken_back(fd, "job-1", "out/b.dat") is None  # published under another name
    finally:
        os.close(fd)
    other = tmp_path / "b.dat"  # a part file's tag (who may resume it) says nothing of a published file
    other.write_bytes(b"light curve")
    os.setxattr(other, OWNER_XATTR, b"job-1:0123456789abcdef")
    fd = os.open(other, os.O_RDONLY)
    try:
        assert taken_back(fd, "job-1", "out/a.dat") is None
    finally:
        os.close(fd)


def test_unchanged_files_linked_from_the_replaced_output_are_taken_back_after_a_crash(tmp_path):
    """A re-run after one manifest entry changed stages the folder beside the old output, hard-linking the
    unchanged entry's files from it (they carry the earlier job's tag, not this job's). Killed part way,
    the next run takes back the links it made and did not record: the very files of the replaced output,
    unchanged since they were staged."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.txt").write_text("first release\n")
    request = {"manifest": {"curves": str(light_curves(tmp_path)), "extra": str(extra)}, "destination": "out"}
    staged_once(tmp_path, request)
    (extra / "notes.txt").write_text("second release\n")  # staged again beside, swapped in; curves linked
    job_id = killed_part_way(tmp_path, request, exit_at="_chunk_done:300")
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert len(chunks) == COUNT + 1 and all(c.state == "ready" for c in chunks)
    out = tmp_path / "root" / "out"
    assert (out / "extra" / "notes.txt").read_text() == "second release\n"
    assert (out / "curves" / "lc-00000.dat").read_bytes() == b"0000\n" * 200
    assert "unchanged and reused from the local copy: 1" in log
    assert "already complete from the previous run" in log


def test_a_dask_task_run_again_takes_back_only_the_file_it_published(tmp_path):
    """A task runs again after publishing when its worker died before the server read the result; it takes
    the file back when it carries the job's tag for its bytes (``tasks.published_earlier``), never a file
    someone put there meanwhile (it used to take any file of the expected size)."""
    from jupyter_staging.engine.tasks import TaskContext, finish_ranges, published_earlier

    data = os.urandom(3 * 1024**2 + 5)
    (tmp_path / "out").mkdir()
    final = tmp_path / "out" / "lc.bin"
    (tmp_path / "out" / "lc.bin.part").write_bytes(data)  # as the range tasks left it
    ctx = TaskContext("job-1", str(tmp_path))
    published = finish_ranges(ctx, "out/lc.bin", len(data), {})
    assert published == (len(data), hashlib.sha256(data).hexdigest())
    assert published_earlier(ctx, "out/lc.bin", len(data)) == published  # run again: taken back
    other = TaskContext("job-2", str(tmp_path))
    assert published_earlier(other, "out/lc.bin", len(data)) is None  # not job-2's
    os.link(final, tmp_path / "out" / "lc.bin.part")  # killed between linkat and unlinkat
    assert published_earlier(ctx, "out/lc.bin", len(data)) == published
    assert sorted(os.listdir(tmp_path / "out")) == ["lc.bin"]
    final.unlink()
    final.write_bytes(os.urandom(len(data)))  # someone else's, of the same size
    assert published_earlier(ctx, "out/lc.bin", len(data)) is None


def test_a_downloaded_file_of_a_conversion_that_is_no_table_is_taken_back_after_a_crash(tmp_path):
    """A conversion downloads a remote file to its scratch folder first; one that is no table is then moved
    to its final name as it is, tagged for that name. A run that dies before recording it leaves it there,
    and the next run takes it back (it used to be refused when the tag named the scratch path)."""
    (tmp_path / "root").mkdir()
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(200_000)
    (www / "notes.bin").write_bytes(data)
    with RangeHTTPServer(www) as server:
        request = {"source": server.url("notes.bin"), "destination": "out", "convert": {}}
        job_id = killed_part_way(tmp_path, request, exit_at="_chunk_ready:1")
        assert (tmp_path / "root" / "out" / "notes.bin").read_bytes() == data  # published, not recorded
        done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert [(c.path, c.state, c.sha256) for c in chunks] == [
        ("notes.bin", "ready", hashlib.sha256(data).hexdigest())
    ]
    assert "already complete from the previous run" in log


def test_a_file_verified_and_tagged_but_not_yet_named_when_the_server_died_is_resumed_not_set_aside(tmp_path):
    """The published file's tag is an attribute of its own, set before the part's fsync; the part keeps the
    attribute that says who may resume it. A run that dies before the name leaves a complete part, which
    the next run resumes at its end (with one attribute for both, it was set aside as a stranger's, left in
    the folder, and the file fetched again from byte 0)."""
    (tmp_path / "root").mkdir()
    source = tmp_path / "archive"
    source.mkdir()
    data = os.urandom(8 * 1024**2)
    (source / "big.bin").write_bytes(data)
    request = {"source": str(source / "big.bin"), "destination": "out"}
    job_id = killed_part_way(tmp_path, request, exit_at="PartFile._publish:1")
    out = tmp_path / "root" / "out"
    assert os.listdir(out) == ["big.bin.part"]
    done, _, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(os.listdir(out)) == ["big.bin", "manifest.json"]
    assert (out / "big.bin").read_bytes() == data
    assert f"resuming at byte {len(data)}" in log and "set aside" not in log


def test_a_verified_part_of_a_source_changed_before_the_resume_is_not_published(tmp_path):
    """The part a run verified and tagged before it died is of the version read then. The source changed
    (same size) before the next run: the part is not resumed (its owner attribute names the other
    version), and the file holds the new bytes, never the old ones under the new fingerprint."""
    (tmp_path / "root").mkdir()
    source = tmp_path / "archive"
    source.mkdir()
    old, new = os.urandom(8 * 1024**2), os.urandom(8 * 1024**2)
    (source / "big.bin").write_bytes(old)
    request = {"source": str(source / "big.bin"), "destination": "out"}
    job_id = killed_part_way(tmp_path, request, exit_at="PartFile._publish:1")
    (source / "big.bin").write_bytes(new)
    done, chunks, _ = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert (tmp_path / "root" / "out" / "big.bin").read_bytes() == new
    assert chunks[0].sha256 == hashlib.sha256(new).hexdigest()


def kepler_csv(tmp_path: Path, rows: int) -> Path:
    """``tmp_path / "kepler.csv"``: ``rows`` rows of a light curve (time, flux), and an empty root."""
    (tmp_path / "root").mkdir()
    path = tmp_path / "kepler.csv"
    path.write_text(
        "TIME,SAP_FLUX\n" + "".join(f"{120.5 + i * 0.0204:.6f},{5000 + i % 97}.5\n" for i in range(rows))
    )
    return path


def test_a_parquet_part_published_and_not_recorded_is_written_again_on_resume(tmp_path):
    """The run dies after publishing the second part of a table and before recording it. The part carries
    the job's tag: the next run removes it and converts from there, every part once."""
    request = {
        "source": str(kepler_csv(tmp_path, 5000)),
        "destination": "out",
        "convert": {"chunk_rows": 1000},
    }
    job_id = killed_part_way(tmp_path, request, exit_at="_record_part:2")
    table = tmp_path / "root" / "out" / "kepler.parquet"
    assert sorted(os.listdir(table)) == ["part-00000.parquet", "part-00001.parquet"]
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert sorted(c.path for c in chunks) == [f"kepler.parquet/part-{i:05d}.parquet" for i in range(5)]
    assert pq.read_table(table).num_rows == 5000
    assert "part-00001.parquet: published but not recorded before the stop; writing it again" in log


def test_a_users_file_at_the_name_of_an_unrecorded_part_is_never_removed(tmp_path):
    """A file the user put in the table's folder, at the name of the part the dead run published and did
    not record, is the user's (it lacks the job's tag, whatever it holds): the resumed conversion fails
    ``destination_exists`` at it and leaves it. It used to be removed as the dead run's part."""
    request = {
        "source": str(kepler_csv(tmp_path, 5000)),
        "destination": "out",
        "convert": {"chunk_rows": 1000},
    }
    job_id = killed_part_way(tmp_path, request, exit_at="_record_part:2")
    mine = tmp_path / "root" / "out" / "kepler.parquet" / "part-00001.parquet"
    mine.unlink()
    mine.write_bytes(b"PAR1 my own notes PAR1")
    done, _, _ = resumed(tmp_path, job_id)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists" and "part-00001.parquet" in done.error.message
    assert mine.read_bytes() == b"PAR1 my own notes PAR1"


def test_without_extended_attributes_files_found_after_a_crash_are_taken_by_their_size(tmp_path):
    """On a file system that keeps no user attributes (a ramfs here, NFS before 4.2 at a site) no file can
    be tagged, and nothing tells the job's files from a user's: a resumed copy takes a regular file of the
    item's size as before the tag, rather than failing on every file the dead run published."""
    source = light_curves(tmp_path)
    with file_system_without_attributes(tmp_path / "root"):
        request = {"source": str(source), "destination": "out", "method": "copy"}
        job_id = killed_part_way(tmp_path, request, exit_at="_chunk_done:300")
        out = tmp_path / "root" / "out"
        fd = os.open(out / "lc-00000.dat", os.O_RDONLY)
        try:
            assert not keeps_attributes(fd)
        finally:
            os.close(fd)
        done, chunks, log = resumed(tmp_path, job_id)
        assert done.state == JobState.succeeded, done.error
        assert len(chunks) == COUNT and all(c.state == "ready" for c in chunks)
        assert (out / "lc-00299.dat").read_bytes() == b"0299\n" * 200


def test_without_extended_attributes_a_conversion_killed_part_way_resumes(tmp_path):
    """The same for a table's part published and not recorded: removed and written again by its name, as
    before the tag (a user's file there is not told apart on such a file system)."""
    src = kepler_csv(tmp_path, 5000)
    with file_system_without_attributes(tmp_path / "root"):
        request = {"source": str(src), "destination": "out", "convert": {"chunk_rows": 1000}}
        job_id = killed_part_way(tmp_path, request, exit_at="_record_part:2")
        done, chunks, _ = resumed(tmp_path, job_id)
        assert done.state == JobState.succeeded, done.error
        assert len(chunks) == 5
        assert pq.read_table(tmp_path / "root" / "out" / "kepler.parquet").num_rows == 5000


def test_a_job_an_earlier_version_started_takes_its_untagged_files_back_by_their_size(tmp_path):
    """A job started (and killed) by a version that tagged nothing, resumed by this one: its resume data
    lacks ``published_tags``, so the files its earlier run published are taken back by the rules before the
    tag (a regular file of the item's size), not refused one by one."""
    job_id, unrecorded = killed_copy(tmp_path)
    out = tmp_path / "root" / "out"
    for name in os.listdir(out):  # as the earlier version left them: no tag
        with contextlib.suppress(OSError):
            os.removexattr(out / name, PUBLISHED_XATTR)
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        job = store.get_job(job_id)
        assert job is not None and job.resume.pop(PUBLISHED_TAGS) is True
        store.write_chunks(job_id, [], {}, resume=job.resume)
    finally:
        store.close()
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert len(chunks) == COUNT and all(c.state == "ready" for c in chunks)
    assert f"{len(unrecorded)} file(s) already complete from the previous run" in log


def test_a_rerun_killed_while_it_links_an_unchanged_tables_parts_resumes(tmp_path):
    """A re-run after one table of a manifest changed stages beside the old output and hard-links the
    unchanged table's Parquet parts from it. Killed part way through those links, the next run keeps the
    parts recorded and takes back the links it made (the very files of the replaced output) instead of
    failing ``destination_exists`` at the first of them."""
    (tmp_path / "root").mkdir()
    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("a", "b"):
        (tables / f"{name}.csv").write_text(
            "TIME,SAP_FLUX\n" + "".join(f"{120.5 + i * 0.0204:.6f},{5000 + i % 97}.5\n" for i in range(5000))
        )
    request = {
        "manifest": {"a": str(tables / "a.csv"), "b": str(tables / "b.csv")},
        "destination": "out",
        "convert": {"chunk_rows": 1000},
    }
    staged_once(tmp_path, request)
    with open(tables / "b.csv", "a") as fh:
        fh.write("200.0,6000.5\n")  # b changed: staged again beside; a's parts linked from the old output
    job_id = killed_part_way(tmp_path, request, exit_at="_chunk_ready:3")
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    out = tmp_path / "root" / "out"
    assert pq.read_table(out / "a" / "a.parquet").num_rows == 5000
    assert pq.read_table(out / "b" / "b.parquet").num_rows == 5001
    assert len(chunks) == 11 and all(c.state == "ready" for c in chunks)


def test_a_refused_tag_is_logged_once_per_job(tmp_path, monkeypatch, caplog):
    """A file system that keeps attributes but refuses this one (EACCES: an SELinux denial, say; not
    caused for real as root) leaves the job's files untagged: a warning says so, once per job, naming the
    consequence; a file system without attributes (ENOTSUP) is no refusal and logs nothing."""
    path = tmp_path / "a.dat"
    path.write_bytes(b"light curve")
    fd = os.open(path, os.O_RDONLY)
    answers = {"errno": errno.EACCES}

    def refused(*args):
        raise OSError(answers["errno"], os.strerror(answers["errno"]))

    monkeypatch.setattr(os, "setxattr", refused)
    try:
        with caplog.at_level("WARNING", logger="jupyter_staging.safety.ownership"):
            assert not tag_published(fd, "job-refused-1", "out/a.dat", "0" * 64)
            assert not tag_published(fd, "job-refused-1", "out/b.dat", "0" * 64)
            assert not tag_published(fd, "job-refused-2", "out/a.dat", "0" * 64)
            answers["errno"] = errno.ENOTSUP
            assert not tag_published(fd, "job-refused-3", "out/a.dat", "0" * 64)
    finally:
        os.close(fd)
    warnings = [r.getMessage() for r in caplog.records if r.name == "jupyter_staging.safety.ownership"]
    assert len(warnings) == 2 and "job-refused-1" in warnings[0] and "job-refused-2" in warnings[1]
    assert "destination_exists" in warnings[0] and os.strerror(errno.EACCES) in warnings[0]
