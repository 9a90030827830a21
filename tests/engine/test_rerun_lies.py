"""A re-run must never answer "up to date" over output or sources that changed, however they changed.

``manifest.json`` lies in the user's folder and may be edited like any file there: the job database, not the
manifest, says what a job staged. The engine runs in this process (a real :class:`StagingManager`, SQLite
in ``tmp_path``); sources are copies of the shipped mission data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import sqlalchemy as sa

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from tests.helpers.data import KEPLER, SPITZER, TESS, sha256


def run(manager: StagingManager, **body) -> tuple[dict, bool]:
    """Create a job from ``body`` and wait for it; returns (job JSON with ``up_to_date``, created)."""
    job, created = manager.create(CreateJob(**body))
    done = manager.wait(job.id, timeout=120)
    return done.model_dump(mode="json") | {"up_to_date": job.up_to_date}, created


def edit_manifest(folder: Path, change) -> None:
    """Rewrite ``folder/manifest.json`` with ``change(manifest)`` applied, as a user's editor would."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def overwrite_inside(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of ``path``, in place (same inode, same size)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_manifest_emptied_by_the_user_is_not_up_to_date_and_the_output_is_staged_again(manager, archive):
    """The user empties the manifest's object list and deletes the staged file: the re-run used to answer
    up to date (every object the manifest listed was there: none) with the file gone; now it stages it
    again and writes a whole manifest."""
    body = {"source": str(archive / KEPLER.name), "destination": "lc"}
    first, _ = run(manager, **body)
    folder = manager.root_dir / "lc"
    edit_manifest(folder, lambda m: m.update(objects=[]))
    (folder / KEPLER.name).unlink()

    second, created = run(manager, **body)

    assert created and not second["up_to_date"] and second["state"] == "succeeded"
    assert sha256(folder / KEPLER.name) == sha256(KEPLER)
    (obj,) = json.loads((folder / "manifest.json").read_text())["objects"]
    assert obj["path"] == KEPLER.name and obj["sha256"] == sha256(KEPLER)
    third, created = run(manager, **body)
    assert not created and third["up_to_date"] and third["id"] == second["id"]


def test_an_output_edited_with_its_manifest_entry_is_not_up_to_date_nor_reused(manager, archive):
    """The user edits a staged file in place and changes its manifest entry (``mtime_ns``) to match. The
    re-run used to answer up to date; and when another source changed, the replacing job hard-linked the
    edited file into the new output under the source's sha256. Now the file is staged again from its source
    and the other file is still reused."""
    src = archive / "folder"
    src.mkdir()
    shutil.copyfile(KEPLER, src / "a.fits")
    shutil.copyfile(TESS, src / "b.fits")
    body = {"source": str(src), "destination": "pair"}
    run(manager, **body)
    folder = manager.root_dir / "pair"
    edited = folder / "a.fits"
    overwrite_inside(edited, 100, b"EDITED!!")
    mtime = edited.stat().st_mtime_ns

    def doctor(manifest: dict) -> None:
        for obj in manifest["objects"]:
            if obj["path"] == "a.fits":
                obj["mtime_ns"] = mtime

    edit_manifest(folder, doctor)
    again, created = run(manager, **body)
    assert created and not again["up_to_date"] and again["state"] == "succeeded"
    assert sha256(edited) == sha256(KEPLER)

    overwrite_inside(edited, 100, b"EDITED!!")  # edited again, and this time another source changes too
    mtime = edited.stat().st_mtime_ns
    edit_manifest(folder, doctor)
    shutil.copyfile(SPITZER, src / "b.fits")
    third, created = run(manager, **body)
    assert created and third["state"] == "succeeded"
    assert sha256(folder / "b.fits") == sha256(SPITZER)
    assert sha256(edited) == sha256(KEPLER)  # staged from the source, not the edited file linked in
    objects = {o["path"]: o for o in json.loads((folder / "manifest.json").read_text())["objects"]}
    assert objects["a.fits"]["sha256"] == sha256(edited)


def test_an_output_replaced_by_a_symlink_with_the_old_time_is_not_up_to_date(manager, archive, tmp_path):
    """A copied output replaced by a symbolic link (to another file), the link's own time set to the one the
    manifest records: the re-run used to answer up to date (a symlink's size is not compared and its time
    matched); a copy's output must still be a regular file."""
    body = {"source": str(archive / KEPLER.name), "destination": "lc"}
    run(manager, **body)
    staged = manager.root_dir / "lc" / KEPLER.name
    st = staged.lstat()
    elsewhere = tmp_path / "elsewhere.fits"
    shutil.copyfile(TESS, elsewhere)
    staged.unlink()
    os.symlink(elsewhere, staged)
    os.utime(staged, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    again, created = run(manager, **body)

    assert created and not again["up_to_date"] and again["state"] == "succeeded"
    assert not staged.is_symlink() and sha256(staged) == sha256(KEPLER)


def test_one_file_changed_in_a_folder_restages_that_file_and_links_the_others(manager, tmp_path):
    """A folder of 40 files, one of them changed: the re-run used to copy all 40 again from the source (the
    folder, one source, counted as changed as a whole: none of its files was reused; 54 s for a folder of
    20,000 small files, four times a first run). Now the 39 unchanged files are hard-linked from the old
    output (same inode: no byte moved) and only the changed one is staged from the source."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02}.txt").write_bytes(b"row %d\n" % i * 50)
    body = {"source": str(src), "destination": "many"}
    first, _ = run(manager, **body)
    folder = manager.root_dir / "many"
    inodes = {p.name: p.stat().st_ino for p in folder.iterdir() if p.suffix == ".txt"}
    (src / "f07.txt").write_bytes(b"changed\n")

    second, created = run(manager, **body)

    assert created and second["state"] == "succeeded" and not second["up_to_date"]
    assert (folder / "f07.txt").read_bytes() == b"changed\n"
    now = {p.name: p.stat().st_ino for p in folder.iterdir() if p.suffix == ".txt"}
    assert {name for name in now if now[name] != inodes[name]} == {"f07.txt"}
    for i in range(40):
        assert (folder / f"f{i:02}.txt").read_bytes() == (src / f"f{i:02}.txt").read_bytes()
    third, created = run(manager, **body)
    assert not created and third["up_to_date"] and third["id"] == second["id"]


def test_a_url_whose_server_states_no_version_is_never_up_to_date(manager, range_server):
    """A server that sends neither ``ETag`` nor ``Last-Modified``: the file's only fingerprint was its size,
    and a re-run after the file was rewritten at the same size (a FITS file keeps its size when a header
    card changes) answered up to date over the old bytes. Without a validator nothing says the bytes are
    the same: the re-run stages again."""
    range_server.send_etag = range_server.send_last_modified = False
    served = Path(range_server.root) / "lc.fits"
    shutil.copyfile(KEPLER, served)
    body = {"source": range_server.url("lc.fits"), "destination": "web"}
    first, _ = run(manager, **body)
    assert first["state"] == "succeeded"
    overwrite_inside(served, 100, b"REWRITE!")

    again, created = run(manager, **body)

    assert created and not again["up_to_date"] and again["state"] == "succeeded"
    assert sha256(manager.root_dir / "web" / "lc.fits") == sha256(served) != sha256(KEPLER)


def test_a_url_with_last_modified_only_is_up_to_date_until_it_changes(manager, range_server):
    """``Last-Modified`` and the size without an ``ETag``: the re-run is up to date; once the file is
    rewritten (a new time) it is staged again."""
    range_server.send_etag = False
    served = Path(range_server.root) / "lc.fits"
    shutil.copyfile(KEPLER, served)
    body = {"source": range_server.url("lc.fits"), "destination": "web"}
    run(manager, **body)
    again, created = run(manager, **body)
    assert not created and again["up_to_date"]
    overwrite_inside(served, 100, b"REWRITE!")
    st = served.stat()
    os.utime(served, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # HTTP dates count seconds

    third, created = run(manager, **body)

    assert created and not third["up_to_date"]
    assert sha256(manager.root_dir / "web" / "lc.fits") == sha256(served)


def test_a_folder_whose_manifest_the_user_deleted_is_staged_again_not_refused(manager, archive):
    """The user deletes ``manifest.json`` (clutter, they thought): the re-run's new job met the staged file
    in the folder and failed ``destination_exists`` ("already exists; not overwritten"), and only
    ``if_exists="refresh"`` got the notebook going again. Now the folder's files are known as the earlier
    job's (the same request): they are staged again beside it and swapped in, the user's own file kept, the
    manifest written; the next re-run is up to date. Another request into that folder is still refused."""
    body = {"source": str(archive / KEPLER.name), "destination": "lc"}
    first, _ = run(manager, **body)
    folder = manager.root_dir / "lc"
    (folder / "notes.txt").write_text("mine\n")
    (folder / "manifest.json").unlink()

    second, created = run(manager, **body)

    assert created and second["state"] == "succeeded", second["error"]
    assert sha256(folder / KEPLER.name) == sha256(KEPLER)
    assert (folder / "notes.txt").read_text() == "mine\n"
    (obj,) = json.loads((folder / "manifest.json").read_text())["objects"]
    assert obj["path"] == KEPLER.name
    third, created = run(manager, **body)
    assert not created and third["up_to_date"] and third["id"] == second["id"]

    (folder / "manifest.json").unlink()  # another request writes into the folder, the file left alone
    other, created = run(manager, source=str(archive / TESS.name), destination="lc")
    assert created and other["state"] == "succeeded"
    assert sha256(folder / KEPLER.name) == sha256(KEPLER) and (folder / TESS.name).is_file()


def test_an_output_of_a_job_that_recorded_no_times_is_never_linked_after_an_edit(manager, archive):
    """A folder staged by release 0.1.0 (its manifest and chunks record no ``mtime_ns``); the user edits a
    staged file in place at the same size, then another file of the source folder changes. The re-run used
    to hard-link the edited file into the new output (its size matched; nothing else could be compared)
    under the source's sha256; it is now staged again from its source."""
    src = archive / "pair"
    src.mkdir()
    shutil.copyfile(KEPLER, src / "a.fits")
    (src / "b.txt").write_bytes(b"b" * 1000)
    body = {"source": str(src), "destination": "pair"}
    run(manager, **body)
    folder = manager.root_dir / "pair"
    with manager.store.engine.begin() as conn:  # as release 0.1.0 recorded its chunks
        conn.execute(sa.text("UPDATE staging_chunks SET mtime_ns = NULL"))
    edit_manifest(folder, lambda m: [obj.pop("mtime_ns", None) for obj in m["objects"]])
    overwrite_inside(folder / "a.fits", 100, b"EDITED!!")
    (src / "b.txt").write_bytes(b"B" * 10)

    again, created = run(manager, **body)

    assert created and again["state"] == "succeeded"
    assert sha256(folder / "a.fits") == sha256(KEPLER)
    (obj,) = [
        o for o in json.loads((folder / "manifest.json").read_text())["objects"] if o["path"] == "a.fits"
    ]
    assert obj["sha256"] == sha256(KEPLER)
