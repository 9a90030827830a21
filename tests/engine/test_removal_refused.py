"""A job's output in a folder this server's user may no longer write into (a site's read-only remount, a
folder the user made read-only): an ack under ``delete_on_ack`` answers ``destination_not_writable`` (409)
with its chunk still ``ready``, never ``internal_error``; the TTL sweep logs such a job and goes on with the
other jobs due. Before, the ack answered 500 and the sweep stopped at that job every time, so no job after
it was ever expired.

Real managers, files and read-only bind mounts (skipped where this process may not mount).
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunkState, CreateJob, JobState
from jupyter_staging.engine.store import utcnow
from jupyter_staging.errors import DestinationNotWritable
from tests.helpers.data import KEPLER
from tests.helpers.space import read_only_folder


def staged(manager: StagingManager, archive: Path, destination: str, policy: str) -> str:
    """The id of a succeeded job that copied the Kepler light curve into ``destination``."""
    shutil.copyfile(KEPLER, archive / "lc.fits")
    request = CreateJob(
        source=str(archive / "lc.fits"), destination=destination, cleanup_policy=policy, ttl_seconds=60
    )
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    return job.id


def test_an_ack_in_a_read_only_folder_answers_destination_not_writable(
    manager: StagingManager, archive: Path
) -> None:
    job_id = staged(manager, archive, "d", "delete_on_ack")
    (chunk,) = manager.chunks(job_id)
    with read_only_folder(manager.root_dir / "d"), pytest.raises(DestinationNotWritable) as info:
        manager.ack(job_id, str(chunk.index))
    assert info.value.code == "destination_not_writable" and info.value.status == 409
    assert str(manager.root_dir) not in info.value.message
    (after,) = manager.chunks(job_id)
    assert after.state == ChunkState.ready  # given back: a retried ack deletes it
    assert (manager.root_dir / "d" / "lc.fits").is_file()
    manager.ack(job_id, str(chunk.index))  # writable again
    assert not (manager.root_dir / "d" / "lc.fits").exists()


def test_the_sweep_goes_on_past_an_output_it_cannot_remove(manager: StagingManager, archive: Path) -> None:
    stuck = staged(manager, archive, "ro", "retain")
    other = staged(manager, archive, "ok", "retain")
    with read_only_folder(manager.root_dir / "ro"):
        due = manager.sweep(utcnow() + timedelta(seconds=120))
    assert set(due) == {stuck, other}
    assert manager.get(other).state == JobState.expired
    assert not (manager.root_dir / "ok").exists()
    assert manager.get(stuck).state == JobState.succeeded  # left for the next sweep
    assert (manager.root_dir / "ro" / "lc.fits").is_file()
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == [stuck]
    assert manager.get(stuck).state == JobState.expired
