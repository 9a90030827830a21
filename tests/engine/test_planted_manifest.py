"""What a user puts at an output's ``manifest.json`` is read by descriptor, never followed nor waited on: a
FIFO there blocked a re-run that replaced the output for good (the swap and the reuse of unchanged files
opened the path and waited for a writer), and a symlink there was read where it led.

Real managers, files, FIFOs and symlinks; nothing mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.errors import DestinationExists, InvalidState, PathNotAllowed
from tests.helpers.data import KEPLER, SPITZER, TESS


def release(manager: StagingManager, job_id: str, fifo: Path) -> None:
    """Give each reader that blocks on ``fifo`` its end of file (a writer that opens and closes at once)
    until job ``job_id`` ends (at most 30 s): without the fix its run waits in ``open(2)``, once per read."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and manager.store.get_job(job_id).state == JobState.running.value:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.05)


def test_a_fifo_at_the_old_manifest_does_not_block_the_rerun_that_replaces_it(
    manager: StagingManager, archive: Path
) -> None:
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    body = CreateJob(manifest={"k": str(src), "s": str(archive / SPITZER.name)}, destination="d")
    first, _ = manager.create(body)
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    shutil.copyfile(TESS, src)  # a source changed: the request runs again, replacing the output
    fifo = manager.root_dir / "d" / MANIFEST_NAME
    fifo.unlink()
    os.mkfifo(fifo)
    again, created = manager.create(body)
    assert created
    try:
        done = manager.wait(again.id, timeout=30)
    finally:
        release(manager, again.id, fifo)  # so that the manager can stop without the fix
    assert done.state == JobState.succeeded, done
    out = manager.root_dir / "d"
    assert (out / "k" / "lc.fits").read_bytes() == TESS.read_bytes()
    assert json.loads((out / MANIFEST_NAME).read_text())["job_id"] == again.id


def test_read_manifest_follows_no_link_and_opens_no_special_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / MANIFEST_NAME).write_text(json.dumps({"job_id": "elsewhere"}))
    manifest = root / "d" / MANIFEST_NAME
    assert read_manifest(root / "d", root=root) is None  # none yet
    assert read_manifest(root / "gone", root=root) is None  # no such folder
    manifest.symlink_to(outside / MANIFEST_NAME)
    assert read_manifest(root / "d", root=root) is None  # a symlink: never followed
    manifest.unlink()
    os.mkfifo(manifest)
    assert read_manifest(root / "d", root=root) is None  # a FIFO: never waited on
    manifest.unlink()
    manifest.mkdir()
    assert read_manifest(root / "d", root=root) is None
    manifest.rmdir()
    manifest.write_text(json.dumps({"job_id": "here"}))
    assert read_manifest(root / "d", root=root) == {"job_id": "here"}
    (root / "link").symlink_to(outside)  # a folder on the way that is a symlink
    with pytest.raises(PathNotAllowed):
        read_manifest(root / "link", root=root)


def test_a_fifo_at_a_jobs_manifest_does_not_block_a_read_of_it(
    manager: StagingManager, archive: Path
) -> None:
    """``GET .../manifest`` of a succeeded job whose ``manifest.json`` the user replaced by a FIFO: before,
    the request's thread waited in ``open(2)`` for good (one thread of the server's pool per request)."""
    job, _ = manager.create(CreateJob(source=str(archive / SPITZER.name), destination="d"))
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    fifo = manager.root_dir / "d" / MANIFEST_NAME
    fifo.unlink()
    os.mkfifo(fifo)
    answers: list[BaseException | dict] = []

    def read() -> None:
        try:
            answers.append(manager.manifest(job.id))
        except Exception as exc:  # noqa: BLE001 - the answer is checked below
            answers.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(10)
    waited = reader.is_alive()
    while reader.is_alive():  # without the fix: let it go
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(0.1)
    assert not waited, "the read waited on the FIFO"
    (answer,) = answers
    assert isinstance(answer, InvalidState) and answer.code == "manifest_not_ready", answer


def test_a_rerun_reuses_no_file_through_a_folder_the_user_swapped_for_a_symlink(
    manager: StagingManager, archive: Path, tmp_path: Path
) -> None:
    """Entry ``s``'s folder of the old output replaced by a symlink to a folder outside the root, holding a
    file of the recorded name, size and time; entry ``k``'s source changes, so the request runs again and
    ``s``, unchanged, is reused from the old output. Before, the re-run followed the symlink: the outside
    file (other bytes) was hard-linked into the new output under the Spitzer file's recorded sha256, and the
    job succeeded. Now ``s`` is staged again from its source."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    body = CreateJob(manifest={"k": str(src), "s": str(archive / SPITZER.name)}, destination="d")
    first, _ = manager.create(body)
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    out = manager.root_dir / "d"
    objects = json.loads((out / MANIFEST_NAME).read_text())["objects"]
    (obj,) = [o for o in objects if o["path"].startswith("s/")]
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = outside / PurePosixPath(obj["path"]).name
    planted.write_bytes(b"X" * obj["size"])
    os.utime(planted, ns=(obj["mtime_ns"], obj["mtime_ns"]))
    shutil.rmtree(out / "s")
    (out / "s").symlink_to(outside)
    shutil.copyfile(TESS, src)
    again, _ = manager.create(body)
    assert manager.wait(again.id, timeout=60).state == JobState.succeeded
    staged = out / obj["path"]
    assert staged.read_bytes() == SPITZER.read_bytes()
    assert not os.path.samestat(staged.stat(), planted.stat())
    assert planted.read_bytes() == b"X" * obj["size"]


def test_a_manifest_past_64_mib_is_read_whole(tmp_path: Path) -> None:
    """A manifest of some 250,000 files is over 64 MiB (about 300 bytes a file): the descriptor read first
    stopped there, and the cut JSON would have made the job's output unreadable to its re-runs."""
    out = tmp_path / "out"
    out.mkdir()
    objects = [
        {"path": f"sector/lc-{i:07d}.fits", "size": 2_039_040, "sha256": "0" * 64} for i in range(600_000)
    ]
    (out / MANIFEST_NAME).write_text(json.dumps({"objects": objects}))
    assert (out / MANIFEST_NAME).stat().st_size > 64 * 1024 * 1024
    assert len(read_manifest(out, root=tmp_path)["objects"]) == 600_000


def test_a_fifo_put_at_an_earlier_output_as_it_is_copied_from_does_not_block_the_job(
    manager: StagingManager, range_server, monkeypatch
) -> None:
    """A file this server staged before is copied instead of downloaded again (the same ETag); the user
    replaced it by a FIFO between the look at it (a regular file of its size) and its opening: the job
    waited in ``open(2)`` for good. It is now opened without waiting nor following a link, and a file that
    is no longer the one looked at is downloaded instead."""
    from jupyter_staging.engine.staged import StagedIndex

    shutil.copyfile(SPITZER, range_server.root / SPITZER.name)
    url = range_server.url(SPITZER.name)
    first, _ = manager.create(CreateJob(source=url, destination="one"))
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    staged = manager.root_dir / "one" / SPITZER.name
    real_find = StagedIndex.find

    def find(self: StagedIndex, *args: object, **kwargs: object) -> object:
        found = real_find(self, *args, **kwargs)  # type: ignore[arg-type]
        if found is not None and found[0] == staged and not staged.is_fifo():
            staged.unlink()
            os.mkfifo(staged)
        return found

    monkeypatch.setattr(StagedIndex, "find", find)
    second, _ = manager.create(CreateJob(source=url, destination="two"))
    try:
        done = manager.wait(second.id, timeout=30)
    finally:
        release(manager, second.id, staged)  # so that the manager can stop without the fix
    assert done.state == JobState.succeeded, done
    assert (manager.root_dir / "two" / SPITZER.name).read_bytes() == SPITZER.read_bytes()
    assert staged.is_fifo()  # the user's, left alone


@pytest.mark.parametrize("planted", [b"not json {", b"\xff\xfe\x00", b"[1, 2]", b'"text"'], ids=repr)
def test_a_manifest_json_that_is_no_json_object_is_no_manifest(
    manager: StagingManager, archive: Path, planted: bytes
) -> None:
    """A ``manifest.json`` that is no JSON object (a user's own file of that name in a folder staged into,
    or a job's manifest the user overwrote) is no job's manifest, as a FIFO or a symlink there is. Before,
    ``read_manifest`` raised ``JSONDecodeError`` (or its caller ``AttributeError`` on a list): staging into
    that folder, and ``GET .../manifest`` of the job, failed ``internal_error`` (500)."""
    mine = manager.root_dir / "mine"
    mine.mkdir()
    (mine / MANIFEST_NAME).write_bytes(planted)
    with pytest.raises(DestinationExists):  # another request's output, as for a manifest of no job
        manager.create(CreateJob(source=str(archive / SPITZER.name), destination="mine"))
    job, _ = manager.create(
        CreateJob(source=str(archive / SPITZER.name), destination="mine", if_exists="refresh")
    )
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    assert json.loads((mine / MANIFEST_NAME).read_text())["job_id"] == job.id

    (mine / MANIFEST_NAME).unlink()
    (mine / MANIFEST_NAME).write_bytes(planted)  # the job's manifest overwritten by the user
    with pytest.raises(InvalidState) as read:
        manager.manifest(job.id)
    assert read.value.code == "manifest_not_ready"
    assert read_manifest(mine, root=manager.root_dir) is None
