"""What a job's cleanup removes of its chunks' files (``engine.cleanup.remove_job_output``): only files
it published and still has. A file at the name of a chunk still pending (the job staged into a folder
holding the user's files and failed, or was cancelled, before that name) and one at the name of a chunk
whose file went already (deleted on ack) are the user's, kept by a ``delete_always`` policy, a cancel and
the TTL sweep alike.

A real :class:`StagingManager` in this process (SQLite in ``tmp_path``), local folders as sources.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_staging.engine.lifecycle import utcnow
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from tests.helpers.data import KEPLER, TESS, wait_until
from tests.helpers.servers import RangeHTTPServer


def folder_with_users_file(root: Path) -> Path:
    """``src/`` with ``a.bin`` and ``b.bin``; ``mydata/`` holding the user's own ``b.bin`` already."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    (root / "mydata").mkdir()
    (root / "mydata" / "b.bin").write_bytes(b"the user's own data")
    return root / "mydata"


@contextmanager
def kepler_and_a_slow_download(tmp_path: Path, bytes_per_s: int) -> Iterator[dict[str, str]]:
    """Manifest entries for the block: ``k``, a local copy of the Kepler light curve (staged at once), and
    ``big``, 3 MB over HTTP at ``bytes_per_s`` (bytes/s) from a Range server on 127.0.0.1."""
    (tmp_path / "local").mkdir()
    shutil.copyfile(KEPLER, tmp_path / "local" / KEPLER.name)
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "big.bin").write_bytes(os.urandom(3_000_000))
    with RangeHTTPServer(tmp_path / "web", throttle_bytes_per_s=bytes_per_s) as http:
        yield {"k": str(tmp_path / "local" / KEPLER.name), "big": http.url("big.bin")}


@pytest.mark.parametrize("policy", ["delete_always", "retain"])
def test_a_file_of_the_users_at_a_pending_chunks_name_outlives_the_cleanup(
    manager: StagingManager, root: Path, policy: str
):
    """The copy fails ``destination_exists`` at the user's ``b.bin`` (its chunk stays pending); then its
    output is removed, at once (``delete_always``) or by the TTL sweep (``retain``): the job's ``a.bin``
    goes, the user's ``b.bin`` stays. Before, both went."""
    mydata = folder_with_users_file(root)
    request = CreateJob(source=str(root / "src"), destination="mydata", cleanup_policy=policy, ttl_seconds=60)
    job, _ = manager.create(request)
    done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "destination_exists"
    if policy == "retain":
        assert sorted(p.name for p in mydata.iterdir()) == ["a.bin", "b.bin"]
        assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert [p.name for p in mydata.iterdir()] == ["b.bin"]
    assert (mydata / "b.bin").read_bytes() == b"the user's own data"


def test_a_file_put_where_a_chunk_was_deleted_on_ack_outlives_the_ttl(manager: StagingManager, root: Path):
    """``delete_on_ack`` removes ``a.bin`` at its ack; the user then saves a file of theirs as ``a.bin``;
    the TTL sweep removes the job's ``b.bin`` and keeps the user's ``a.bin``. Before, it removed it."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    request = CreateJob(
        source=str(root / "src"), destination="out", cleanup_policy="delete_on_ack", ttl_seconds=60
    )
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    out = root / "out"
    (chunk_a,) = [c for c in manager.chunks(job.id) if c.path.endswith("a.bin")]
    manager.ack(job.id, str(chunk_a.index))
    assert not (out / "a.bin").exists()
    (out / "a.bin").write_bytes(b"the user's new a.bin")
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert [p.name for p in out.iterdir()] == ["a.bin"]
    assert (out / "a.bin").read_bytes() == b"the user's new a.bin"


def test_at_a_pending_chunks_name_only_a_file_the_job_published_unrecorded_is_removed(tmp_path: Path):
    """``LocalDestination.remove(unrecorded=)``: a file the job published just before its run stopped and
    never recorded (its chunk still pending: a Dask task finished as the cancel came) carries the job's
    tag for its bytes and goes; the same file edited since, and the user's file, stay."""
    from jupyter_staging.destinations.local import LocalDestination
    from jupyter_staging.safety.ownership import tag_published
    from tests.helpers.data import sha256

    job = "7c1d2e3f-0000-4000-8000-000000000003"
    out = tmp_path / "out"
    out.mkdir()
    for name, content in (("ours.bin", b"published"), ("edited.bin", b"published too")):
        (out / name).write_bytes(content)
        with open(out / name, "rb") as fh:
            assert tag_published(fh.fileno(), job, f"out/{name}", sha256(out / name))
    with open(out / "edited.bin", "ab") as fh:
        fh.write(b", then edited by the user")
    (out / "users.bin").write_bytes(b"the user's")
    destination = LocalDestination(job, tmp_path, "out")
    removed = destination.remove(
        [], [], [], keep_ready=False, keep_folder=True, unrecorded=["ours.bin", "edited.bin", "users.bin"]
    )
    assert removed == 1
    assert sorted(p.name for p in out.iterdir()) == ["edited.bin", "users.bin"]


def test_a_folder_the_job_made_goes_with_its_last_file_deleted_on_ack(manager: StagingManager, root: Path):
    """An archive unpacked into folders of its own, every chunk acked under ``delete_on_ack`` (files gone),
    then the TTL: the folders the job made, now empty, are removed too (their names are the chunks', not
    the listed item's)."""
    import io
    import tarfile

    (root / "src").mkdir()
    with tarfile.open(root / "src" / "data.tar", "w") as tar:
        info = tarfile.TarInfo("d/e/f.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    request = CreateJob(
        source=str(root / "src" / "data.tar"),
        destination="out",
        unpack=True,
        cleanup_policy="delete_on_ack",
        ttl_seconds=60,
    )
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    assert (root / "out" / "data" / "d" / "e" / "f.txt").read_bytes() == b"hello"
    for chunk in manager.chunks(job.id):
        manager.ack(job.id, str(chunk.index))
    # The last ack expires the job: nothing is left for the TTL sweep.
    assert manager.get(job.id).state == JobState.expired
    assert not (root / "out").exists()
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == []


def test_the_last_ack_under_delete_on_ack_removes_the_manifest_and_the_folder(
    manager: StagingManager, root: Path
):
    """A succeeded ``delete_on_ack`` job whose every chunk is acknowledged (files deleted) has its
    ``manifest.json`` and the folder it made removed, and is ``expired``; before, the folder stayed for
    good with the manifest of files that were gone. A folder that was there before the job stays."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    (root / "kept").mkdir()
    made, _ = manager.create(
        CreateJob(source=str(root / "src"), destination="made", cleanup_policy="delete_on_ack")
    )
    kept, _ = manager.create(
        CreateJob(source=str(root / "src"), destination="kept", cleanup_policy="delete_on_ack")
    )
    for job in (made, kept):
        assert manager.wait(job.id, timeout=60).state == JobState.succeeded
        first, second = manager.chunks(job.id)
        manager.ack(job.id, str(first.index))
        assert manager.get(job.id).state == JobState.succeeded  # one chunk still ready
        manager.ack(job.id, str(second.index))
        assert manager.get(job.id).state == JobState.expired
    assert not (root / "made").exists()
    assert list((root / "kept").iterdir()) == []


def test_acking_again_after_the_last_ack_expired_the_job_is_harmless(manager: StagingManager, root: Path):
    """The last ack of a ``delete_on_ack`` job expires it; an ack sent again (a retried request, a cell
    run twice) still answers the chunk ``acked``, as a second ack of any other chunk does. Before, the
    last ack had turned every acked chunk ``expired`` and a repeated ack was a 409 ``chunk_expired``
    saying clean-up had removed a file the consumer had read and acknowledged."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    job, _ = manager.create(
        CreateJob(source=str(root / "src"), destination="out", cleanup_policy="delete_on_ack")
    )
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    indexes = [str(c.index) for c in manager.chunks(job.id)]
    for index in indexes:
        assert manager.ack(job.id, index).state == "acked"
    assert manager.get(job.id).state == JobState.expired
    for index in indexes:  # each again: the read was recorded, nothing left to delete
        assert manager.ack(job.id, index).state == "acked"
    assert [c.state for c in manager.chunks(job.id)] == ["acked", "acked"]
    assert not (root / "out").exists()


def test_a_file_the_user_saved_over_a_ready_chunk_outlives_the_cleanup(manager: StagingManager, root: Path):
    """The job's ``a.bin`` (1,000 bytes) is ready; the user saves a file of theirs over it (``mv``, an
    editor's save): the TTL sweep removes the job's ``b.bin`` and its manifest, and keeps the user's
    ``a.bin``, whose size is not the chunk's. Before, it was removed by its name."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    request = CreateJob(source=str(root / "src"), destination="out", ttl_seconds=60)
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    out = root / "out"
    (out / "notes.tmp").write_bytes(b"the user's edited a.bin")
    (out / "notes.tmp").rename(out / "a.bin")
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert [p.name for p in out.iterdir()] == ["a.bin"]
    assert (out / "a.bin").read_bytes() == b"the user's edited a.bin"


def test_a_staged_fits_file_edited_in_place_outlives_the_ttl(manager: StagingManager, root: Path):
    """A staged FITS file whose header the user updated in place (astropy ``mode="update"``: the same
    size, a new modification time) is no longer the job's file: the TTL sweep keeps it, and removes the
    untouched one and the manifest. Before, a file of the chunk's size was removed by its name."""
    from astropy.io import fits

    (root / "src").mkdir()
    for src in (KEPLER, TESS):
        shutil.copyfile(src, root / "src" / src.name)
    request = CreateJob(source=str(root / "src"), destination="out", ttl_seconds=60)
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    edited = root / "out" / KEPLER.name
    with fits.open(edited, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    assert edited.stat().st_size == KEPLER.stat().st_size
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert [p.name for p in (root / "out").iterdir()] == [KEPLER.name]
    assert fits.getheader(edited)["OBSERVER"] == "someone"


@pytest.mark.parametrize("policy", ["retain", "delete_on_success"])
def test_a_ready_file_edited_while_the_job_still_runs_outlives_the_cleanup(
    manager: StagingManager, root: Path, tmp_path: Path, policy: str
):
    """The user updates a FITS header of an entry already ready while another entry still downloads
    (throttled): the manifest records the time the file had when it was published, not the edited one,
    so the TTL sweep, or the ``delete_on_success`` policy at the job's end, keeps the edit (and a re-run
    would see it changed)."""
    from astropy.io import fits

    with kepler_and_a_slow_download(tmp_path, 1_500_000) as entries:
        request = CreateJob(manifest=entries, destination="out", ttl_seconds=60, cleanup_policy=policy)
        job, _ = manager.create(request)
        edited = root / "out" / "k" / KEPLER.name
        wait_until(
            lambda: any(c.state == "ready" and c.entry == "k" for c in manager.chunks(job.id)), timeout=30
        )
        assert manager.get(job.id).state == JobState.running
        with fits.open(edited, mode="update") as hdul:
            hdul[0].header["OBSERVER"] = "someone"
        assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    if policy == "retain":
        assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert [p.relative_to(root / "out").as_posix() for p in (root / "out").rglob("*") if p.is_file()] == [
        f"k/{KEPLER.name}"
    ]
    assert fits.getheader(edited)["OBSERVER"] == "someone"


def test_delete_on_ack_keeps_a_file_the_user_saved_over_the_chunk(manager: StagingManager, root: Path):
    """Under ``delete_on_ack`` the ack removes the chunk's file, not a file of another size the user put at
    its name; the job's own ``b.bin`` still goes at its ack."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    request = CreateJob(source=str(root / "src"), destination="out", cleanup_policy="delete_on_ack")
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    out = root / "out"
    (out / "a.bin").write_bytes(b"the user's a.bin")
    for chunk in manager.chunks(job.id):
        manager.ack(job.id, str(chunk.index))
    assert (out / "a.bin").read_bytes() == b"the user's a.bin" and not (out / "b.bin").exists()


def test_a_hard_linked_output_goes_even_when_its_source_grew(manager: StagingManager, root: Path):
    """A hard link's size is its source's: appended to after the job, the link is still the job's and is
    removed by the sweep (sizes are not compared for link jobs); the source stays."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    request = CreateJob(source=str(root / "src"), destination="out", method="hardlink", ttl_seconds=60)
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    with open(root / "src" / "a.bin", "ab") as grown:
        grown.write(b"more rows")
    assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
    assert not (root / "out" / "a.bin").exists()
    assert (root / "src" / "a.bin").stat().st_size == 1009


def test_a_reruns_reused_output_goes_with_its_cancel_even_when_the_live_file_grew(
    manager: StagingManager, root: Path, tmp_path: Path
):
    """A re-run (its HTTP entry changed) stages beside the live output and hard-links the unchanged
    ``notes.csv`` into it; the user appends to the live ``notes.csv`` (the same file, so the re-run's link
    grows too); the re-run is cancelled: its link goes with its hidden folder, though its size is no
    longer the chunk's (a file of more than one name is the job's link). The live output stays whole."""
    web = tmp_path / "web"
    web.mkdir()
    (web / "lc.fits").write_bytes(os.urandom(300_000))
    local = tmp_path / "local"
    local.mkdir()
    (local / "notes.csv").write_bytes(b"x" * 1000)
    with RangeHTTPServer(web) as http:
        body = {"manifest": {"sp": str(local), "lc": http.url("lc.fits")}, "destination": "swap"}
        first, _ = manager.create(CreateJob(**body))
        assert manager.wait(first.id, timeout=60).state == JobState.succeeded
        (web / "lc.fits").write_bytes(os.urandom(400_000))
        http.throttle_bytes_per_s = 100_000
        rerun, created = manager.create(CreateJob(**body))
        assert created
        wait_until(lambda: any(c.state == "ready" for c in manager.chunks(rerun.id)), what="a reused chunk")
        with open(root / "swap" / "sp" / "notes.csv", "ab") as notes:
            notes.write(b"my row\n")
        manager.cancel(rerun.id)
        assert manager.wait(rerun.id, timeout=60).state == JobState.cancelled
    assert not [p for p in root.rglob("*") if ".staging-" in str(p)]
    assert (root / "swap" / "sp" / "notes.csv").read_bytes() == b"x" * 1000 + b"my row\n"


def _edit_fits_header(path: Path) -> None:
    """Update a FITS header in place (astropy ``mode="update"``): the same size, a new modification time."""
    from astropy.io import fits

    size = path.stat().st_size
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    assert path.stat().st_size == size


def _observer(path: Path) -> str | None:
    from astropy.io import fits

    return fits.getheader(path).get("OBSERVER")


@pytest.mark.parametrize("finish", ["resume", "cancel"])
def test_a_file_edited_while_its_job_was_paused_outlives_the_cleanup(
    manager: StagingManager, root: Path, tmp_path: Path, finish: str
):
    """The user updates the header of an entry published before the job was paused. Resumed, the job
    records the time the file had when it was published (kept with its chunk, migration 0007), not the
    edited one, so the TTL sweep keeps the edit; cancelled instead under ``delete_always`` (a cancelled
    job's files go), the edited file stays too. Before, the manifest took the
    time of a file published by an earlier run at the job's end, and a job without a manifest compared
    sizes only: the edit was removed."""
    with kepler_and_a_slow_download(tmp_path, 1_000_000) as entries:
        policy = "retain" if finish == "resume" else "delete_always"
        request = CreateJob(manifest=entries, destination="out", ttl_seconds=60, cleanup_policy=policy)
        job, _ = manager.create(request)
        edited = root / "out" / "k" / KEPLER.name
        wait_until(
            lambda: any(c.state == "ready" and c.entry == "k" for c in manager.chunks(job.id)), timeout=30
        )
        manager.pause(job.id)
        wait_until(lambda: manager.get(job.id).state == JobState.paused, timeout=30)
        _edit_fits_header(edited)
        if finish == "resume":
            manager.resume(job.id)
            assert manager.wait(job.id, timeout=60).state == JobState.succeeded
            manifest = manager.manifest(job.id)
            [recorded] = [o for o in manifest["objects"] if o["path"] == f"k/{KEPLER.name}"]
            assert recorded["mtime_ns"] != edited.stat().st_mtime_ns
            assert manager.sweep(utcnow() + timedelta(seconds=120)) == [job.id]
        else:
            assert manager.cancel(job.id).state == JobState.cancelled
    assert [p.relative_to(root / "out").as_posix() for p in (root / "out").rglob("*") if p.is_file()] == [
        f"k/{KEPLER.name}"
    ]
    assert _observer(edited) == "someone"


def test_delete_on_ack_keeps_a_file_edited_in_place_and_removes_an_untouched_one(
    manager: StagingManager, root: Path
):
    """Under ``delete_on_ack`` the ack of a chunk whose FITS header the user updated in place (same size)
    keeps the file: its modification time is not the one its chunk recorded. The untouched file goes at
    its ack. Before, the ack compared the size only."""
    (root / "src").mkdir()
    for src in (KEPLER, TESS):
        shutil.copyfile(src, root / "src" / src.name)
    request = CreateJob(source=str(root / "src"), destination="out", cleanup_policy="delete_on_ack")
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=60).state == JobState.succeeded
    out = root / "out"
    _edit_fits_header(out / KEPLER.name)
    for chunk in manager.chunks(job.id):
        assert manager.ack(job.id, str(chunk.index)).state == "acked"
    # The last ack expired the job: its manifest went too; the user's edited file stays.
    assert sorted(p.name for p in out.iterdir()) == [KEPLER.name]
    assert _observer(out / KEPLER.name) == "someone"
    log = [line["message"] for line in manager.job_log(job.id)]
    assert any(m.startswith("chunk") and "deleted on ack" in m and TESS.name in m for m in log)
    assert not any("deleted on ack" in m and KEPLER.name in m for m in log)


def test_a_job_whose_every_chunk_was_acknowledged_before_its_end_expires_at_its_end(
    manager: StagingManager, root: Path, monkeypatch: pytest.MonkeyPatch
):
    """A consumer that acknowledges every chunk while the job still runs (``iter_chunks`` reading each
    part as it is ready, the last ack before the manifest is written) leaves nothing for a later ack to
    expire: the job expires at its end, its manifest and folder removed. Before, it stayed ``succeeded``
    with a manifest of files that were gone."""
    from jupyter_staging.engine.runner import JobRunner

    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    (root / "src" / "b.bin").write_bytes(b"B" * 1000)
    write_manifest = JobRunner._write_manifest

    def consumed_first(self: JobRunner, *args, **kwargs):
        for chunk in manager.chunks(self.job_id):
            manager.ack(self.job_id, str(chunk.index))  # the job is still running
        assert manager.get(self.job_id).state == JobState.running
        return write_manifest(self, *args, **kwargs)

    monkeypatch.setattr(JobRunner, "_write_manifest", consumed_first)
    job, _ = manager.create(
        CreateJob(source=str(root / "src"), destination="made", cleanup_policy="delete_on_ack")
    )
    assert manager.wait(job.id, timeout=60).state in (JobState.succeeded, JobState.expired)
    wait_until(lambda: manager.get(job.id).state == JobState.expired, 10, "the job expired at its end")
    assert not (root / "made").exists()
    assert {c.state for c in manager.chunks(job.id)} == {"acked"}


def test_a_partial_manifest_job_whose_published_chunks_were_all_acknowledged_expires(
    manager: StagingManager, root: Path
):
    """A manifest job that ends ``partial`` (an entry failed: its chunk stays ``pending``, never published)
    and whose published chunks are all acknowledged expires, its manifest and folder removed. Before, the
    failed entry's pending chunk kept it ``failed`` for good with a manifest (GET .../manifest) listing
    files that were gone. One that failed with nothing acknowledged stays ``failed``."""
    (root / "src").mkdir()
    (root / "src" / "a.bin").write_bytes(b"A" * 1000)
    entries = {"a": str(root / "src" / "a.bin"), "b": str(root / "src" / "missing.bin")}
    job, _ = manager.create(CreateJob(manifest=entries, destination="made", cleanup_policy="delete_on_ack"))
    done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.failed and done.error is not None and done.error.code == "partial"
    assert [c.state for c in manager.chunks(job.id)] == ["ready", "pending"]
    assert manager.get(job.id).state == JobState.failed  # nothing read yet
    manager.ack(job.id, "0")
    assert manager.get(job.id).state == JobState.expired
    assert not (root / "made").exists()
    assert [c.state for c in manager.chunks(job.id)] == ["acked", "expired"]
