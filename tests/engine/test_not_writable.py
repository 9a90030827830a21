"""A destination nothing can be written to: on a read-only file system (a dataset folder a site mounts
read-only into the user's area), or in a folder the server's user may not write into. Refused at creation
with ``destination_not_writable`` (409), over HTTP too; a job whose folder became read-only after it was
admitted fails with that code, not ``internal_error``; output already staged there is still answered up to
date on a re-run. The read-only mounts are real (``mount --bind`` then ``remount,ro``); the permission
case runs the engine as ``nobody`` (``setpriv``) when the tests run as root, who may write anywhere."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import DestinationNotWritable, as_staging_error
from tests.helpers.api import expect_error, post_job
from tests.helpers.managers import unstarted_manager
from tests.helpers.space import read_only_folder


@pytest.fixture
def sources(tmp_path) -> Path:
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "lc.bin").write_bytes(os.urandom(300 * 1024))
    return folder


def test_a_read_only_destination_is_refused_at_creation_and_no_job_is_recorded(root, tmp_path, sources):
    mgr = unstarted_manager(root, tmp_path)
    try:
        with read_only_folder(root / "shared"), pytest.raises(DestinationNotWritable) as info:
            mgr.create(CreateJob(source=str(sources / "lc.bin"), destination="shared/kepler"))
        assert mgr.store.list_jobs(root=str(root), limit=10) == []
    finally:
        mgr.stop()
    assert (info.value.code, info.value.status) == ("destination_not_writable", 409)
    assert "'shared/kepler'" in info.value.message and str(root) not in info.value.message
    assert os.listdir(root / "shared") == []


def test_output_staged_before_the_folder_became_read_only_is_still_reused(root, tmp_path, sources):
    """A re-run must never fail when nothing changed: the read-only check comes after the up-to-date one."""
    mgr = unstarted_manager(root, tmp_path)
    mgr.start()
    try:
        request = CreateJob(source=str(sources / "lc.bin"), destination="results")
        first, created = mgr.create(request)
        assert created and mgr.wait(first.id, timeout=60).state.value == "succeeded"
        with read_only_folder(root / "results"):
            again, created = mgr.create(request)
            assert not created and again.id == first.id
            changed = CreateJob(source=str(sources / "lc.bin"), destination="results/other")
            with pytest.raises(DestinationNotWritable):
                mgr.create(changed)
    finally:
        mgr.stop()


def test_a_folder_made_read_only_after_admission_fails_the_job_destination_not_writable(
    root, tmp_path, sources
):
    """The job is admitted while its folder is writable and runs once it is not (a remount under a running
    server): it ends ``failed`` with ``destination_not_writable``, never ``internal_error``."""
    mgr = unstarted_manager(root, tmp_path)
    (root / "data").mkdir()
    try:
        mgr.start()
        request = CreateJob(source=str(sources / "lc.bin"), destination="data/kepler")
        job, created = mgr.create(request, start=False)  # admitted; its runner starts below
        assert created
        with read_only_folder(root / "data"):
            mgr.submit(job.id, recorded=True)
            done = mgr.wait(job.id, timeout=60)
            log = " ".join(line["message"] for line in mgr.job_log(job.id))
    finally:
        mgr.stop()
    assert done.state.value == "failed"
    assert done.error is not None and done.error.code == "destination_not_writable", done.error
    assert "destination_not_writable" in log and "Traceback" not in log
    assert os.listdir(root / "data") == []


def test_erofs_in_a_chain_or_a_libraries_message_is_destination_not_writable():
    try:
        try:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        except OSError as exc:
            raise RuntimeError("writing a Parquet part failed") from exc
    except RuntimeError as chained:
        found = as_staging_error(chained)
    assert found is not None and found.code == "destination_not_writable"
    pyarrow_like = as_staging_error(OSError(f"error writing: {os.strerror(errno.EROFS)}"))
    assert pyarrow_like is not None and pyarrow_like.code == "destination_not_writable"
    assert as_staging_error(OSError(errno.EIO, "Input/output error")) is None


async def test_the_server_answers_409_destination_not_writable(jp_fetch, jp_root_dir, sources):
    with read_only_folder(Path(jp_root_dir) / "shared"):
        body = await expect_error(
            post_job(jp_fetch, {"source": str(sources / "lc.bin"), "destination": "shared/k"}),
            409,
            "destination_not_writable",
        )
    assert "read-only" in body["message"] and str(jp_root_dir) not in body["message"]


#: Run as a user without write permission on ``locked``: a job into it, then one into ``open``; then a job
#: admitted into ``later`` (writable) that runs once ``later`` lost its write permission.
_AS_ANOTHER_USER = """
import json, os, sys
from pathlib import Path
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import StagingError

top, source = Path(sys.argv[1]), sys.argv[2]
mgr = StagingManager(top / "root", db_url=f"sqlite:///{top / 'db' / 'jobs.sqlite'}", sweep_interval=0)
mgr.start()
seen = {}
try:
    for folder in ("locked/kepler", "open/kepler"):
        try:
            job, _ = mgr.create(CreateJob(source=source, destination=folder))
            seen[folder] = {"state": mgr.wait(job.id, timeout=60).state.value}
        except StagingError as exc:
            seen[folder] = {"code": exc.code, "status": exc.status, "message": exc.message}
    # A folder to make in ``later``, and the file itself in ``later``: both admitted while it is writable.
    jobs = {
        folder: mgr.create(CreateJob(source=source, destination=folder), start=False)[0]
        for folder in ("later/kepler", "later")
    }
    (top / "root" / "later" / "notes.txt").write_text("the user's")
    os.chmod(top / "root" / "later", 0o555)
    for folder, job in jobs.items():
        mgr.submit(job.id, recorded=True)
        done = mgr.wait(job.id, timeout=60)
        seen[folder] = {
            "state": done.state.value,
            "code": done.error.code if done.error else None,
            "message": done.error.message if done.error else None,
            "log": " ".join(line["message"] for line in mgr.job_log(job.id)),
            "left": sorted(os.listdir(top / "root" / "later")),
        }
finally:
    mgr.stop()
print(json.dumps(seen))
"""


def test_a_folder_the_server_may_not_write_into_is_refused_at_creation(sources):
    """A user's server staging into a group folder it may only read: 409 ``destination_not_writable``
    naming the permission, no job; a writable folder beside it is staged. A job admitted while its folder
    was writable, run once it is not (its permissions changed meanwhile), fails ``destination_not_writable``
    naming the file, not ``internal_error``, and leaves nothing there."""
    top = Path(tempfile.mkdtemp(prefix="staging-perm-"))
    try:
        for name in ("root", "root/locked", "root/open", "root/later", "db", "home"):
            (top / name).mkdir(exist_ok=True)
        source = top / "lc.bin"
        shutil.copyfile(sources / "lc.bin", source)
        command = [sys.executable, "-c", _AS_ANOTHER_USER, str(top), str(source)]
        if os.geteuid() == 0:  # root may write anywhere: the engine runs as nobody, as a user's server would
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot run the engine as another user")
            for name in ("root", "root/open", "root/later", "db", "home"):
                os.chown(top / name, 65534, 65534)
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        os.chmod(top, 0o755)
        os.chmod(top / "root" / "locked", 0o555)
        env = {**os.environ, "HOME": str(top / "home"), "XDG_CACHE_HOME": str(top / "home" / ".cache")}
        done = subprocess.run(  # noqa: S603 - fixed arguments
            command, capture_output=True, text=True, timeout=120, check=False, env=env
        )
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for name in ("locked", "later"):
            os.chmod(top / "root" / name, 0o755)
        shutil.rmtree(top, ignore_errors=True)
    locked = seen["locked/kepler"]
    assert (locked.get("code"), locked.get("status")) == ("destination_not_writable", 409), seen
    assert "permission denied" in locked["message"] and str(top) not in locked["message"]
    assert seen["open/kepler"] == {"state": "succeeded"}, seen
    for folder in ("later/kepler", "later"):
        later = seen[folder]
        assert (later["state"], later["code"]) == ("failed", "destination_not_writable"), later
        assert "permission denied" in later["message"].lower() and str(top) not in later["message"]
        assert "Traceback" not in later["log"] and later["left"] == ["notes.txt"], later
