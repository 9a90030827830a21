"""The cleanup of a failed or cancelled job in a local destination (``LocalDestination.remove``) removes a
``.part`` only when it is the job's: the part files a job makes carry its owner attribute from the first
(``safety.ownership.tag_part``), and a file the user put at such a name (with bytes, untagged), another
job's part or a symlink stays where it is. Real files and attributes on the test's own file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.destinations.local import LocalDestination
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.ownership import OWNER_XATTR, keeps_attributes, tag_part
from jupyter_staging.safety.partfile import PartFile

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def tagged(path: Path, job_id: str | None, data: bytes = b"x" * 100) -> Path:
    """A file at ``path`` holding ``data``, tagged as ``job_id``'s part (untagged with None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if job_id is not None:
        fd = os.open(path, os.O_RDONLY)
        try:
            tag_part(fd, job_id)
        finally:
            os.close(fd)
    return path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "staged"
    folder.mkdir()
    probe = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not keeps_attributes(probe):
            pytest.fail("the test's file system keeps no user attributes: nothing here can be told apart")
    finally:
        os.close(probe)
    return folder


def test_only_the_jobs_own_parts_are_removed(tmp_path: Path, out: Path):
    ours = tagged(out / "lc1.fits.part", JOB)
    users = tagged(out / "lc2.fits.part", None, b"the user's")
    empty = tagged(out / "lc3.fits.part", None, b"")  # made, the process died before its tag
    others = tagged(out / "lc4.fits.part", OTHER)
    (out / "lc5.fits.part").symlink_to(ours)
    table = out / "kplr.parquet"
    in_table = [tagged(table / "part-00001.parquet.part", JOB), tagged(table / "mine.part", None, b"kept")]
    destination = LocalDestination(JOB, tmp_path, "staged")
    removed = destination.remove(
        [],
        [f"lc{i}.fits" for i in range(1, 6)],
        ["kplr.parquet"],
        keep_ready=True,
        parts_tagged=True,
    )
    assert removed == 3
    assert not ours.exists() and not empty.exists() and not in_table[0].exists()
    assert users.read_bytes() == b"the user's" and in_table[1].read_bytes() == b"kept"
    assert others.exists() and (out / "lc5.fits.part").is_symlink()


def test_a_job_an_earlier_version_started_removes_any_part_at_its_names(tmp_path: Path, out: Path):
    """Its parts carry no tag: the rule before the tag (any ``.part`` at the job's names) holds; in a
    table's folder, only names a conversion gives its parts (a ``notes.part`` of the user's there stays)."""
    untagged = tagged(out / "lc1.fits.part", None, b"untagged, as an earlier version made them")
    table_part = tagged(out / "kplr.parquet" / "part-00000.parquet.part", None)
    notes = tagged(out / "kplr.parquet" / "notes.part", None, b"the user's")
    destination = LocalDestination(JOB, tmp_path, "staged")
    assert destination.remove([], ["lc1.fits"], ["kplr.parquet"], keep_ready=True) == 2
    assert not untagged.exists() and not table_part.exists() and notes.read_bytes() == b"the user's"


def test_a_part_file_is_tagged_as_its_jobs_before_any_byte(tmp_path: Path, out: Path):
    """A named part made with an owner carries ``<job id>:`` from its creation; without one, no tag."""
    part = PartFile(out / "lc.fits", folders=FolderCache(tmp_path), owner=JOB)
    try:
        assert os.getxattr(out / "lc.fits.part", OWNER_XATTR) == f"{JOB}:".encode()
    finally:
        part.discard()
    anonymous = PartFile(out / "lc.fits", root=tmp_path)
    try:
        with pytest.raises(OSError):
            os.getxattr(out / "lc.fits.part", OWNER_XATTR)
    finally:
        anonymous.discard()


@pytest.mark.parametrize(
    ("resume", "tagged"),
    [
        ({"attempts": 1, "parts_tagged": True}, True),
        ({"attempts": 1}, False),  # started by an earlier version: its parts are untagged
        ({"attempts": 2, "parts_tagged": True, "untagged_parts_hosts": {"worker-3": True}}, False),
    ],
)
def test_which_jobs_go_by_their_parts_tags(resume: dict, tagged: bool):
    from jupyter_staging.engine.folders import parts_tagged

    assert parts_tagged(resume) is tagged


def test_a_workers_probe_tells_whether_its_parts_carry_the_jobs_tag(tmp_path: Path, out: Path):
    """``read_probe`` on the probe file a worker wrote (``probe_folder``, run here as a worker runs it,
    without a cluster: it needs none): tagged as the job's parts are; and, as a worker whose mount keeps no
    user attributes writes it, untagged. Either way the probe is seen and then removed."""
    from jupyter_staging.engine.probe import probe_folder, read_probe
    from jupyter_staging.engine.tasks import TaskContext

    probe_folder(TaskContext(JOB, str(tmp_path)), "staged", "a" * 32)
    assert read_probe(tmp_path, "staged", "a" * 32, JOB) == (True, True)
    assert read_probe(tmp_path, "staged", "a" * 32, JOB) == (False, False)  # removed
    probe_folder(TaskContext(JOB, str(tmp_path)), "staged", "b" * 32)
    os.removexattr(out / f".staging-probe-{'b' * 32}", OWNER_XATTR)
    assert read_probe(tmp_path, "staged", "b" * 32, JOB) == (True, False)
    assert list(out.iterdir()) == []


def test_a_job_cancelled_before_it_ever_started_removes_no_part(tmp_path: Path, out: Path):
    """A queued job's resume data lists its items already (admission hands them over): cancelled before
    its first start, it made no part, and the user's ``.part`` files at those names stay, tagged or not,
    empty or not (on any file system). ``remove_job_output`` with the job's real destination; the host
    gives only that and the job's (no) chunks."""
    from types import SimpleNamespace

    from jupyter_staging.engine.cleanup import remove_job_output

    users = [tagged(out / "lc1.fits.part", None, b"the user's"), tagged(out / "lc2.fits.part", None, b"")]
    destination = LocalDestination(JOB, tmp_path, "staged")
    host = SimpleNamespace(
        destination_of=lambda rec: destination, store=SimpleNamespace(list_chunks=lambda job_id: [])
    )
    resume = {"items": [{"name": "lc1.fits"}, {"name": "lc2.fits"}], "made_destination": False}
    record = SimpleNamespace(id=JOB, resume=resume, cleanup_policy="retain", method="copy")
    assert remove_job_output(host, record, keep_ready=False) == 0  # type: ignore[arg-type]
    assert all(path.exists() for path in users)
    record.resume = {**resume, "attempts": 1, "parts_tagged": True}  # started: the empty untagged one goes
    assert remove_job_output(host, record, keep_ready=False) == 1  # type: ignore[arg-type]
    assert users[0].read_bytes() == b"the user's" and not users[1].exists()


def test_where_no_attributes_are_kept_a_tables_folder_loses_only_its_part_names(
    tmp_path: Path, out: Path, monkeypatch
):
    """A job of this version on a file system that keeps no user attributes (NFS before 4.2; caused here by
    ``getxattr`` answering ``ENOTSUP``, as no such mount can be made in a test): nothing tells whose a
    ``.part`` is, so the job's names are removed by name; in a table's folder only the names a conversion
    gives its parts, and a ``notes.part`` of the user's there stays."""
    import errno

    from jupyter_staging.safety import ownership

    table_part = tagged(out / "kplr.parquet" / "part-00003.parquet.part", None)
    notes = tagged(out / "kplr.parquet" / "notes.part", None, b"the user's")
    item_part = tagged(out / "lc1.fits.part", None)

    def no_attributes(*args: object, **kwargs: object) -> bytes:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(ownership.os, "getxattr", no_attributes)
    destination = LocalDestination(JOB, tmp_path, "staged")
    removed = destination.remove([], ["lc1.fits"], ["kplr.parquet"], keep_ready=True, parts_tagged=True)
    assert removed == 2
    assert not table_part.exists() and not item_part.exists() and notes.read_bytes() == b"the user's"
