"""Jobs within the process's open-file limit (``RLIMIT_NOFILE``): the server's manager raises its soft limit
to the hard one, and each cache of descriptors a job keeps sizes itself from the limit, so four jobs of a deep
tree at once succeed under a hard limit of 512 (before, they kept up to 854 descriptors: EMFILE).

The jobs run in a child process whose limits the test sets (``preexec_fn``): a real limit, real EMFILE.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_staging.engine.entries import error_of
from jupyter_staging.errors import TransferFailed, as_staging_error
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.descriptors import (
    FILES_IN_FLIGHT_PER_MILLE,
    FOLDERS_PER_MILLE,
    SOURCE_FOLDERS_PER_MILLE,
    descriptor_share,
    open_file_limit,
    raise_open_file_limit,
)
from jupyter_staging.safety.dirfd import open_folder
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.unnamed import create_unnamed
from jupyter_staging.sources.local import LocalSource
from tests.helpers.descriptors import descriptors_to_spare

REPO = Path(__file__).resolve().parents[2]

#: Run in the child: four copy jobs at once of ``src`` (argv[1]: the root; argv[2]: "raise" to have the
#: manager raise the limit, as the server's does), the descriptors open sampled every 2 ms; prints the limits
#: before and after the manager started, the jobs' states and the peak.
CHILD = """
import json, os, resource, sys, threading, time
from pathlib import Path
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

root = Path(sys.argv[1])
before = resource.getrlimit(resource.RLIMIT_NOFILE)
raise_open_files = sys.argv[2] == "raise"
mgr = StagingManager(
    root, db_url=f"sqlite:///{root / 'jobs.sqlite'}", sweep_interval=0, raise_open_files=raise_open_files
)
mgr.start()
after = resource.getrlimit(resource.RLIMIT_NOFILE)
peak, done = [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], len(os.listdir("/proc/self/fd")))
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
try:
    jobs = [mgr.create(CreateJob(source=str(root / "src"), destination=f"out{n}"))[0] for n in range(4)]
    ends = [mgr.wait(job.id, timeout=300) for job in jobs]
finally:
    done.set()
    sampler.join()
    mgr.stop()
errors = [end.error.message for end in ends if end.error]
print(json.dumps({"before": before, "after": after, "states": [end.state.value for end in ends],
                  "errors": errors, "peak": peak[0]}))
"""


def deep_tree(root: Path, folders: int = 100, files: int = 10) -> None:
    """``folders`` folders of ``files`` files of 4 KiB below ``root / "src"``, two levels deep."""
    for n in range(folders):
        folder = root / "src" / f"sector{n % 10}" / f"camera{n}"
        folder.mkdir(parents=True)
        for i in range(files):
            (folder / f"lc{i}.fits").write_bytes(os.urandom(4096))


def run_child(root: Path, soft: int, hard: int, *, raise_limit: bool = False) -> dict:
    """:data:`CHILD` with ``RLIMIT_NOFILE`` set to ``(soft, hard)``; its JSON line."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), "raise" if raise_limit else "keep"],
        preexec_fn=limit,  # noqa: PLW1509 - a resource limit, set before exec; no threads are started here
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_jobs_of_a_deep_tree_succeed_under_a_hard_limit_of_512_descriptors(tmp_path):
    deep_tree(tmp_path)
    seen = run_child(tmp_path, 512, 512)
    assert seen["after"] == [512, 512]  # nothing to raise it to
    assert seen["states"] == ["succeeded"] * 4, seen["errors"]
    assert seen["peak"] < 512 * 0.7, seen
    for n in range(4):
        out = tmp_path / f"out{n}"
        assert sum(1 for path in out.rglob("*.fits")) == 1000
        assert (out / "sector3" / "camera13" / "lc7.fits").read_bytes() == (
            tmp_path / "src" / "sector3" / "camera13" / "lc7.fits"
        ).read_bytes()


def test_the_servers_manager_raises_its_soft_limit_to_the_hard_one_and_a_kernels_does_not(tmp_path):
    deep_tree(tmp_path, folders=4, files=2)
    seen = run_child(tmp_path, 256, 4096, raise_limit=True)  # StagingApp.raise_open_file_limit (default)
    assert seen["before"] == [256, 4096]
    assert seen["after"] == [4096, 4096]
    assert seen["states"] == ["succeeded"] * 4, seen["errors"]
    shutil.rmtree(tmp_path / "out0")
    kept = run_child(tmp_path, 256, 4096)  # a kernel's or a script's manager: its limits are its own
    assert kept["after"] == [256, 4096]


@pytest.fixture
def nofile():
    """Restores this process's ``RLIMIT_NOFILE`` after the test; yields ``setrlimit`` for it."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)

    def set_limit(soft: int, hard: int | None = None) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, saved[1] if hard is None else hard))

    yield set_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_each_cache_takes_a_share_of_the_soft_limit_within_its_bounds(nofile):
    nofile(512)
    assert open_file_limit() == 512
    assert descriptor_share(FOLDERS_PER_MILLE, low=8, high=256) == 30
    assert descriptor_share(SOURCE_FOLDERS_PER_MILLE, low=4, high=64) == 7
    assert descriptor_share(FILES_IN_FLIGHT_PER_MILLE, low=16, high=64) == 16  # one fsync group at least
    nofile(64)
    assert descriptor_share(FOLDERS_PER_MILLE, low=8, high=256) == 8
    nofile(8192)
    assert descriptor_share(FOLDERS_PER_MILLE, low=8, high=256) == 256


def test_the_soft_limit_is_raised_never_lowered(nofile):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    target = 2048 if hard == resource.RLIM_INFINITY else min(2048, hard)
    nofile(256)
    assert raise_open_file_limit(target) == (256, target)
    assert raise_open_file_limit(300) == (target, target)  # already above what is asked: left alone


def test_a_file_met_with_no_descriptor_left_is_too_many_open_files_not_an_unreadable_source(tmp_path):
    """Out of descriptors is the server's state: the error says so and names the limit (it used to say the
    source "cannot be read", code ``source_not_readable``). Nothing is published."""
    src = tmp_path / "lc.fits"
    src.write_bytes(os.urandom(4096))
    source = LocalSource(str(src))
    [item] = source.list_items()
    out = PartFile(tmp_path / "copy.fits")
    with descriptors_to_spare(), pytest.raises(TransferFailed) as info:
        source.fetch(item, out, JobControl())
    assert info.value.code == "too_many_open_files" and info.value.status == 503
    assert "RLIMIT_NOFILE" in info.value.message and "lc.fits" in info.value.message
    out.discard()
    assert not (tmp_path / "copy.fits").exists()


def test_a_part_file_that_cannot_be_created_for_want_of_a_descriptor_fails_its_job_too_many_open_files(
    tmp_path,
):
    """The same state met writing, not reading: the part file's folder is opened from the root by
    descriptor, and the ``OSError`` that raises is what a job's runner (``JobLifecycle.fail``) and a manifest
    entry (``error_of``) turn into the code: ``too_many_open_files``, not ``internal_error``. No file is
    left under its final name or as a part."""
    with descriptors_to_spare(), pytest.raises(OSError) as info:
        PartFile(tmp_path / "lc" / "copy.fits", root=tmp_path)
    known = as_staging_error(info.value)
    assert known is not None and (known.code, known.status) == ("too_many_open_files", 503)
    assert "RLIMIT_NOFILE" in known.message and str(tmp_path) not in known.message
    assert error_of(info.value)["code"] == "too_many_open_files"
    assert as_staging_error(OSError(errno.EACCES, "Permission denied")) is None  # still internal_error
    assert [p.name for p in tmp_path.rglob("*")] in ([], ["lc"])


@pytest.mark.parametrize("unnamed", [False, True], ids=["named part", "unnamed part"])
def test_a_part_committed_with_no_descriptor_left_is_removed_and_leaves_no_descriptor_open(tmp_path, unnamed):
    """A checksum not computed while writing (an MD5 asked for at commit) is computed by re-reading the
    part through a second descriptor, and publishing re-opens the part's folder from the root. With no
    descriptor left, one of them fails (an unnamed part stays open, so its re-read fails; a named one is
    closed first, so its re-read takes that descriptor and the folder's re-open fails): the commit raises
    the ``EMFILE`` (``too_many_open_files`` for the job), removes the part and lets go of every descriptor
    it held. Both used to keep the folder's (and an unnamed part's) descriptor open."""
    (tmp_path / "lc").mkdir()
    data = os.urandom(64 * 1024)
    before = sorted(os.listdir("/proc/self/fd"))
    if unnamed:
        dir_fd = open_folder(tmp_path, "lc")
        unnamed_fd = create_unnamed(dir_fd)
        assert unnamed_fd is not None, "this file system has no O_TMPFILE"
        out = PartFile(tmp_path / "lc" / "copy.fits", root=tmp_path, dir_fd=dir_fd, unnamed_fd=unnamed_fd)
    else:
        out = PartFile(tmp_path / "lc" / "copy.fits", root=tmp_path)
    out.write(data)
    with descriptors_to_spare(), pytest.raises(OSError) as info:
        out.commit(checksums={"md5": hashlib.md5(data).hexdigest()})
    known = as_staging_error(info.value)
    assert known is not None and known.code == "too_many_open_files"
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert os.listdir(tmp_path / "lc") == []
