"""Space: a full disk fails the item with ``no_space``; admission refuses jobs that would not fit.

Issue 11, "Space" and acceptance 4. The full disk is real: a 4 MiB tmpfs mounted at ``<root>/small``
(skipped, with the reason, where this process may not mount). Jobs run in the real engine; one test goes
through a real Jupyter server, since HTTP-facing jobs must show ``no_space`` too.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.space import Listing, SpaceLimits, figure
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import InsufficientSpace, NoSpace, as_staging_error, no_space_error
from jupyter_staging.sources.base import SourceItem
from tests.helpers.api import expect_error, post_job, wait_for
from tests.helpers.jupyter import server_config
from tests.helpers.managers import unstarted_manager
from tests.helpers.space import TMPFS_SIZE, MiB, mount_small, unmount


@pytest.fixture
def small(root):
    """``<root>/small``: a 4 MiB tmpfs inside the job's root, unmounted after the test."""
    folder = mount_small(root / "small")
    yield folder
    unmount(folder)


@pytest.fixture
def sources(tmp_path) -> Path:
    """``big.bin`` (6 MiB, more than the tmpfs holds), ``mid.bin`` (3 MiB), ``tiny.txt`` (5 bytes)."""
    folder = tmp_path / "sources"
    folder.mkdir()
    (folder / "big.bin").write_bytes(os.urandom(6 * MiB))
    (folder / "mid.bin").write_bytes(os.urandom(3 * MiB))
    (folder / "tiny.txt").write_bytes(b"hello")
    return folder


@pytest.fixture
def manager(root, tmp_path):
    mgr = unstarted_manager(root, tmp_path)
    yield mgr
    mgr.stop()


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


# -- a full disk --------------------------------------------------------------------------------------------


def test_disk_full_fails_the_job_no_space_removes_the_part_and_a_parallel_job_succeeds(
    manager, small, root, sources
):
    full, _ = manager.create(CreateJob(source=str(sources / "big.bin"), destination="small/out"))
    other, _ = manager.create(CreateJob(source=str(sources / "mid.bin"), destination="elsewhere"))

    full = manager.wait(full.id, timeout=60)
    other = manager.wait(other.id, timeout=60)

    assert full.state.value == "failed"
    assert full.error is not None
    assert full.error.code == "no_space", full.error
    assert "full" in full.error.message
    assert part_files(small) == []
    assert shutil.disk_usage(small).used < MiB  # the 4 MiB written before the disk filled are gone
    assert other.state.value == "succeeded", other.error
    assert (root / "elsewhere" / "mid.bin").read_bytes() == (sources / "mid.bin").read_bytes()
    assert any("no_space" in line["message"] for line in manager.job_log(full.id))


def test_a_manifest_entry_that_does_not_fit_fails_alone_and_the_job_is_partial(
    root, tmp_path, small, sources
):
    # One item at a time: staged beside the big entry, the tiny one could meet the disk filled by the big
    # one's part before that part is removed, and fail too (a CI run saw it: both no_space).
    manager = unstarted_manager(root, tmp_path, concurrent_items=1)
    manifest = {"big": str(sources / "big.bin"), "tiny": str(sources / "tiny.txt")}
    try:
        job, _ = manager.create(CreateJob(manifest=manifest, destination="small/inputs"))
        job = manager.wait(job.id, timeout=60)
        chunks = {c.entry: c for c in manager.chunks(job.id)}
        manifest_job = manager.manifest(job.id)["job_id"]
    finally:
        manager.stop()

    assert job.state.value == "failed"
    assert job.error is not None and job.error.code == "partial"
    assert chunks["big"].error is not None and chunks["big"].error.code == "no_space"
    assert chunks["tiny"].state.value == "ready"
    assert (small / "inputs" / "tiny" / "tiny.txt").read_bytes() == b"hello"
    assert part_files(small) == []
    assert manifest_job == job.id


async def test_a_job_created_over_http_shows_no_space(jp_fetch, jp_root_dir, sources):
    small = mount_small(Path(jp_root_dir) / "small")
    try:
        response = await post_job(jp_fetch, {"source": str(sources / "big.bin"), "destination": "small"})
        assert response.code == 201
        job = await wait_for(jp_fetch, json.loads(response.body)["id"])
        assert job["state"] == "failed"
        assert job["error"]["code"] == "no_space"
        assert "Traceback" not in job["error"]["message"]
        assert part_files(small) == []
    finally:
        unmount(small)


# -- admission --------------------------------------------------------------------------------------------


def test_admission_refuses_a_job_that_would_leave_less_than_min_free_bytes(root, tmp_path, sources):
    free = shutil.disk_usage(root).free
    mgr = unstarted_manager(root, tmp_path, min_free_bytes=free + 10 * MiB)
    try:
        with pytest.raises(InsufficientSpace) as info:
            mgr.create(CreateJob(source=str(sources / "mid.bin"), destination="out"))
    finally:
        mgr.stop()
    assert info.value.code == "insufficient_space"
    assert info.value.status == 409
    message = info.value.message
    assert f"{3 * MiB} bytes (3.15 MB)" in message  # what the job needs
    assert "bytes are free" in message or " are free" in message  # what the disk has
    assert str(free + 10 * MiB) in message  # and the reserve
    assert not (root / "out").exists()
    assert mgr.store.list_jobs(root=str(root), limit=10) == []


def test_admission_compares_with_the_file_system_of_the_destination(small, root, tmp_path, sources):
    mgr = unstarted_manager(root, tmp_path, min_free_bytes=2 * MiB)
    try:
        with pytest.raises(InsufficientSpace) as info:  # 4 MiB free - 3 MiB < 2 MiB
            mgr.create(CreateJob(source=str(sources / "mid.bin"), destination="small/out"))
        job, created = mgr.create(CreateJob(source=str(sources / "mid.bin"), destination="roomy"))
        assert created
        assert mgr.wait(job.id, timeout=60).state.value == "succeeded"
    finally:
        mgr.stop()
    assert f"only {TMPFS_SIZE} bytes (4.19 MB) are free" in info.value.message
    assert f"{3 * MiB} bytes (3.15 MB)" in info.value.message


def test_a_job_that_fits_runs_from_the_listing_made_at_admission(root, tmp_path, sources):
    mgr = unstarted_manager(root, tmp_path, min_free_bytes=1)
    try:
        job, _ = mgr.create(CreateJob(source=str(sources), destination="all"))
        assert job.progress.bytes_total == 6 * MiB + 3 * MiB + 5
        done = mgr.wait(job.id, timeout=60)
        log = [line["message"] for line in mgr.job_log(job.id)]
    finally:
        mgr.stop()
    assert done.state.value == "succeeded", done.error
    assert done.progress.chunks_total == 3
    assert "3 file(s) to stage, 9.44 MB" in log
    assert (root / "all" / "big.bin").read_bytes() == (sources / "big.bin").read_bytes()


def test_quota_bounds_what_staged_output_may_hold(root, tmp_path, sources):
    mgr = unstarted_manager(root, tmp_path, quota_bytes=8 * MiB)
    try:
        first, _ = mgr.create(CreateJob(source=str(sources / "big.bin"), destination="a"))
        assert mgr.wait(first.id, timeout=60).state.value == "succeeded"
        with pytest.raises(InsufficientSpace) as info:
            mgr.create(CreateJob(source=str(sources / "mid.bin"), destination="b"))
        small_job, created = mgr.create(CreateJob(source=str(sources / "tiny.txt"), destination="c"))
        assert created
        assert mgr.wait(small_job.id, timeout=60).state.value == "succeeded"
    finally:
        mgr.stop()
    message = info.value.message
    assert info.value.code == "insufficient_space"
    assert f"{3 * MiB} bytes (3.15 MB)" in message
    assert f"{6 * MiB} bytes (6.29 MB)" in message  # already held
    assert f"{8 * MiB} bytes (8.39 MB)" in message  # the quota
    assert "StagingApp.quota_bytes" in message


def test_without_limits_admission_lists_nothing(manager, sources):
    admitted = manager.admission.admit(CreateJob(source=str(sources / "tiny.txt"), destination="plain"), "me")
    assert admitted.created
    assert manager.admission.space.enabled is False
    assert "items" not in admitted.record.resume
    assert admitted.record.bytes_total is None
    assert admitted.listed is None


async def test_the_server_refuses_with_insufficient_space(jp_fetch, jp_root_dir, sources):
    body = await expect_error(
        post_job(jp_fetch, {"source": str(sources / "mid.bin"), "destination": "x"}),
        409,
        "insufficient_space",
    )
    assert "StagingApp.min_free_bytes" in body["message"]


@pytest.fixture
def jp_server_config(request, tmp_path):
    """A server with a reserve larger than any disk for the refusal test, the defaults otherwise."""
    if request.node.name == "test_the_server_refuses_with_insufficient_space":
        return server_config(tmp_path, min_free_bytes=2**62)
    return server_config(tmp_path)


# -- the pieces --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_oserror_becomes_no_space(number):
    error = as_staging_error(OSError(number, os.strerror(number)))
    assert isinstance(error, NoSpace)
    assert (error.code, error.status) == ("no_space", 507)


def test_no_space_is_found_in_a_chain_and_in_a_libraries_message():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("write failed") from exc
    except RuntimeError as wrapped:
        assert isinstance(no_space_error(wrapped), NoSpace)
    assert isinstance(no_space_error(OSError("IOError: No space left on device")), NoSpace)
    assert as_staging_error(OSError(errno.EACCES, "Permission denied")) is None
    assert as_staging_error(ValueError("x")) is None


def test_human_units():
    assert format_bytes(512) == "512 B"
    assert format_bytes(4 * MiB) == "4.19 MB"
    assert format_bytes(3 * 1000**5) == "3.00 PB"
    assert figure(1536) == "1536 bytes (1.54 kB)"


def test_an_unknown_size_checks_only_the_known_part(tmp_path):
    limits = SpaceLimits(store=None, root_dir=tmp_path, min_free_bytes=100)  # type: ignore[arg-type]
    listing = Listing(items={None: [SourceItem("a", 50, "/a")]}, unknown=True)
    limits.check(listing, "x", free=lambda _: 150)
    with pytest.raises(InsufficientSpace) as info:
        limits.check(listing, "x", free=lambda _: 149)
    assert "at least 50 bytes (50 B)" in info.value.message
