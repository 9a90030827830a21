"""Re-running a notebook (issue 10): unchanged output is reused, a changed source is staged beside the old
output and swapped in, ``if_exists`` decides, default folders are stable, planted part files are set aside.

The engine runs in this process (a real :class:`StagingManager` on threads, SQLite in ``tmp_path``); sources
are copies of the shipped mission data and a Range HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from jupyter_staging.engine.admission import identity
from jupyter_staging.engine.deadparts import FOREIGN_PARTS, FOREIGN_PARTS_LISTED
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.parts import CTIME_SLACK_NS, owner_tag
from jupyter_staging.engine.runner import JobRunner
from jupyter_staging.errors import DestinationExists
from jupyter_staging.safety.dirfd import set_aside_name
from jupyter_staging.sources.registry import open_source
from tests.helpers.data import KEPLER, SPITZER, TESS, latin1_past_inference, sha256, wait_until
from tests.helpers.servers import RangeHTTPServer
from tests.helpers.space import small_file_system


def run(manager: StagingManager, **body) -> tuple[dict, bool]:
    """Create a job from ``body`` and wait for it; returns (job JSON, created)."""
    job, created = manager.create(CreateJob(**body))
    done = manager.wait(job.id, timeout=120)
    return done.model_dump(mode="json") | {"up_to_date": job.up_to_date}, created


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (inode, size)}`` of every file below ``folder``."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def log_text(manager: StagingManager, job_id: str) -> str:
    return "\n".join(line["message"] for line in manager.job_log(job_id))


def test_second_run_of_a_conversion_is_up_to_date_and_moves_nothing(manager, archive):
    body = {"source": str(archive / KEPLER.name), "destination": "kepler", "convert": {"chunk_rows": 5000}}
    first, created = run(manager, **body)
    assert created and first["state"] == "succeeded" and not first["up_to_date"]
    before = tree(manager.root_dir / "kepler")
    started = time.monotonic()
    again, created = run(manager, **body)
    elapsed = time.monotonic() - started
    assert not created and again["up_to_date"] and again["id"] == first["id"]
    assert elapsed < 1.0, elapsed
    assert tree(manager.root_dir / "kepler") == before  # same files, same inodes: nothing rewritten
    assert sorted(p.name for p in manager.root_dir.iterdir()) == ["kepler"]  # no new folder
    assert "up to date" in log_text(manager, first["id"])


def test_default_destination_is_stable_and_distinct_per_source(manager, archive, tmp_path):
    first, _ = run(manager, source=str(archive / SPITZER.name))
    again, created = run(manager, source=str(archive / SPITZER.name))
    assert first["destination"] == again["destination"] == "staging/spitzer_example_catalog"
    assert not created and again["up_to_date"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copyfile(TESS, other / SPITZER.name)  # a different file under the same name
    third, created = run(manager, source=str(other / SPITZER.name))
    assert created and third["destination"].startswith("staging/spitzer_example_catalog-")
    assert third["destination"] != first["destination"]
    fourth, created = run(manager, source=str(other / SPITZER.name))
    assert not created and fourth["destination"] == third["destination"]


def test_changed_source_is_restaged_and_swapped_in(manager, archive):
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    first, _ = run(manager, source=str(src), destination="lc")
    staged = manager.root_dir / "lc" / "lc.fits"
    assert sha256(staged) == sha256(KEPLER)
    (manager.root_dir / "lc" / "notes.txt").write_text("mine\n")  # a user's file beside the output
    shutil.copyfile(TESS, src)
    os.utime(src)
    second, created = run(manager, source=str(src), destination="lc")
    assert created and second["state"] == "succeeded" and second["id"] != first["id"]
    assert sha256(staged) == sha256(TESS)
    assert (manager.root_dir / "lc" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in manager.root_dir.iterdir()) == ["lc"]  # no scratch folder left
    manifest = json.loads((manager.root_dir / "lc" / "manifest.json").read_text())
    assert manifest["job_id"] == second["id"]
    (obj,) = manifest["objects"]
    assert obj["sha256"] == sha256(TESS) and obj["fingerprint"]["size"] == TESS.stat().st_size
    assert manager.get(first["id"]).state.value == "expired"
    assert "changed since the last run: source" in log_text(manager, second["id"])


def test_a_swapped_in_folder_keeps_the_permissions_and_group_the_user_gave_it(manager, archive):
    """A folder the user made private to a group (``chmod 2750``, ``chgrp 100``) and staged into: after a
    changed source is staged beside it and swapped in, the folder at that path is a new one with the
    same mode and group, never the default 0755 that would open it to every user of the machine."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    folder = manager.root_dir / "group"
    folder.mkdir()
    os.chown(folder, -1, 100)
    os.chmod(folder, 0o2750)
    run(manager, source=str(src), destination="group")
    before = folder.stat()
    shutil.copyfile(TESS, src)
    os.utime(src)
    second, created = run(manager, source=str(src), destination="group")
    assert created and second["state"] == "succeeded", second["error"]
    after = folder.stat()
    assert after.st_ino != before.st_ino  # swapped in: a new folder
    assert (stat.S_IMODE(after.st_mode), after.st_gid) == (0o2750, 100)
    assert sha256(folder / "lc.fits") == sha256(TESS)


def test_manifest_restages_only_the_changed_entry(manager, archive):
    entries = {name: str(archive / src.name) for name, src in (("k", KEPLER), ("s", SPITZER), ("t", TESS))}
    first, _ = run(manager, manifest=entries, destination="three")
    before = tree(manager.root_dir / "three")
    shutil.copyfile(KEPLER, archive / TESS.name)  # entry t gets new bytes
    os.utime(archive / TESS.name)
    second, created = run(manager, manifest=entries, destination="three")
    assert created and second["state"] == "succeeded"
    after = tree(manager.root_dir / "three")
    assert after[f"k/{KEPLER.name}"][0] == before[f"k/{KEPLER.name}"][0]  # same inode: no byte moved
    assert after[f"s/{SPITZER.name}"][0] == before[f"s/{SPITZER.name}"][0]
    assert after[f"t/{TESS.name}"][0] != before[f"t/{TESS.name}"][0]
    assert sha256(manager.root_dir / "three" / "t" / TESS.name) == sha256(KEPLER)
    assert "changed since the last run: t;" in log_text(manager, second["id"])
    third, created = run(manager, manifest=entries, destination="three")
    assert not created and third["up_to_date"] and third["id"] == second["id"]


def test_an_output_edited_in_place_is_staged_again_and_the_others_kept(manager, archive):
    """A staged FITS file updated in place (astropy's ``setval``: a header card changed, the size kept) is
    not the source's copy any more: the re-run stages it again from the source, keeps the untouched outputs
    (same inode: no byte moved) and is up to date after that. Before, only the size was compared."""
    from astropy.io import fits

    entries = {name: str(archive / src.name) for name, src in (("k", KEPLER), ("t", TESS))}
    first, _ = run(manager, manifest=entries, destination="pair")
    edited = manager.root_dir / "pair" / "k" / KEPLER.name
    before = tree(manager.root_dir / "pair")
    manifest = json.loads((manager.root_dir / "pair" / "manifest.json").read_text())
    assert all(isinstance(obj["mtime_ns"], int) for obj in manifest["objects"])

    fits.setval(edited, "OBSERVER", value="someone", ext=0)
    assert edited.stat().st_size == KEPLER.stat().st_size and sha256(edited) != sha256(KEPLER)
    second, created = run(manager, manifest=entries, destination="pair")

    assert created and second["state"] == "succeeded" and second["id"] != first["id"]
    assert sha256(edited) == sha256(KEPLER)
    after = tree(manager.root_dir / "pair")
    assert after[f"t/{TESS.name}"][0] == before[f"t/{TESS.name}"][0]  # untouched: kept, not copied
    third, created = run(manager, manifest=entries, destination="pair")
    assert not created and third["up_to_date"] and third["id"] == second["id"]


def test_if_exists_error_and_refresh(manager, archive):
    body = {"source": str(archive / SPITZER.name), "destination": "sp"}
    first, _ = run(manager, **body)
    with pytest.raises(DestinationExists):
        manager.create(CreateJob(**body, if_exists="error"))
    again, created = run(manager, **body, if_exists="refresh")
    assert created and again["id"] != first["id"] and again["state"] == "succeeded"
    other = {"source": str(archive / TESS.name), "destination": "sp"}
    with pytest.raises(DestinationExists) as info:
        manager.create(CreateJob(**other))
    assert "if_exists='refresh'" in info.value.message
    replaced, created = run(manager, **other, if_exists="refresh")
    assert created and sorted(p.name for p in (manager.root_dir / "sp").iterdir()) == [
        TESS.name,
        "manifest.json",
    ]


def test_planted_part_file_is_set_aside_never_spliced(manager, archive):
    folder = manager.root_dir / "planted"
    folder.mkdir()
    (folder / f"{KEPLER.name}.part").write_bytes(b"other bytes from another download" * 1000)
    job, _ = run(manager, source=str(archive / KEPLER.name), destination="planted")
    assert job["state"] == "succeeded"
    assert sha256(folder / KEPLER.name) == sha256(KEPLER)
    assert "set aside" in log_text(manager, job["id"])


def test_a_part_of_this_job_of_no_known_version_is_removed_not_set_aside(manager, archive):
    """``PartOwnership._clear_part_at`` on a real job's runner: a ``.part`` tagged ``<job id>:`` alone (made
    by this job, its source version never recorded: a Dask worker's fetch stopped, or a part made and the
    process died before its version was tagged) cannot be resumed and is nobody else's: it is removed, not
    left in the user's folder as ``.set-aside-...``. Another job's part is still set aside."""
    from jupyter_staging.safety.ownership import OWNER_XATTR

    done, _ = run(manager, source=str(archive / KEPLER.name), destination="kept")
    runner = JobRunner(manager, done["id"])
    runner.dest = manager.destination_of(manager.store.get_job(done["id"]))
    runner.resume = {}
    source = open_source(str(archive / KEPLER.name), source_roots=[str(archive)])
    (item,) = source.list_items()
    folder = runner.dest.workdir
    for owner, kept in ((f"{done['id']}:", False), ("0" * 32 + ":", True)):
        part = folder / "lc.fits.part"
        part.write_bytes(b"bytes of some version" * 100)
        os.setxattr(part, OWNER_XATTR, owner.encode())
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert (
                runner._clear_part_at(item, dir_fd, part.name, owner_tag(done["id"], item.validator)) is False
            )
        finally:
            os.close(dir_fd)
        assert not part.exists()
        aside = list(folder.glob("_lc.fits.part.set-aside-*"))
        assert bool(aside) is kept, (owner, aside)
    # Its full tag refused (a quota) and kept in the resume data instead: still this version's, resumed.
    tag = owner_tag(done["id"], item.validator)
    runner.resume = {"parts": {item.name: tag}}
    part = folder / "lc.fits.part"
    part.write_bytes(b"bytes of this version" * 100)
    os.setxattr(part, OWNER_XATTR, f"{done['id']}:".encode())
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert runner._clear_part_at(item, dir_fd, part.name, tag) is True
    finally:
        os.close(dir_fd)
    assert part.read_bytes() == b"bytes of this version" * 100


def test_cleaning_up_keeps_a_destination_folder_that_was_there_before(manager, archive):
    """A failed job, and an expired one, remove what they wrote; the destination folder itself only when the
    job made it. An empty folder the user made beforehand (its own permissions, a mount point) stays."""
    wrong = "sha256:" + "0" * 64
    mine = manager.root_dir / "mine"
    mine.mkdir()
    os.chmod(mine, 0o750)
    failed, _ = run(manager, source=str(archive / KEPLER.name), destination="mine", checksum=wrong)
    assert failed["error"]["code"] == "checksum_mismatch"
    assert mine.is_dir() and os.listdir(mine) == [] and (mine.stat().st_mode & 0o777) == 0o750
    made, _ = run(manager, source=str(archive / KEPLER.name), destination="made", checksum=wrong)
    assert made["error"]["code"] == "checksum_mismatch"
    assert not (manager.root_dir / "made").exists()  # the job made it: removed with what it wrote

    kept, _ = run(manager, source=str(archive / KEPLER.name), destination="mine", ttl_seconds=1)
    gone, _ = run(manager, source=str(archive / KEPLER.name), destination="made", ttl_seconds=1)
    assert kept["state"] == gone["state"] == "succeeded"
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert set(manager.sweep(now=later)) >= {kept["id"], gone["id"]}
    assert mine.is_dir() and os.listdir(mine) == []
    assert not (manager.root_dir / "made").exists()


def test_a_failed_jobs_output_is_staged_again_never_reused_nor_in_the_way(manager, archive, tmp_path):
    """A failed job's output is not an answer: the same request runs again, and a corrected one replaces it
    without ``if_exists="refresh"``. A table that failed part-way (Parquet parts published, no manifest)
    does not stop the corrected file's conversion with ``destination_exists``; the user's own file in the
    folder is kept."""
    good = sha256(TESS)
    body = {"destination": "m", "manifest": {"k": str(archive / KEPLER.name)}}
    wrong = {"t": {"source": str(archive / TESS.name), "checksum": "sha256:" + "0" * 64}}
    first, _ = run(manager, **{**body, "manifest": {**body["manifest"], **wrong}})
    again, created = run(manager, **{**body, "manifest": {**body["manifest"], **wrong}})
    assert first["error"]["code"] == again["error"]["code"] == "partial"
    assert created and again["id"] != first["id"]  # run again, not answered by the failed job
    right = {"t": {"source": str(archive / TESS.name), "checksum": f"sha256:{good}"}}
    fixed, created = run(manager, **{**body, "manifest": {**body["manifest"], **right}})
    assert created and fixed["state"] == "succeeded", fixed["error"]
    assert sha256(manager.root_dir / "m" / "t" / TESS.name) == good
    reused, created = run(manager, **{**body, "manifest": {**body["manifest"], **right}})
    assert not created and reused["id"] == fixed["id"]

    table = latin1_past_inference(tmp_path / "late.csv")
    out = manager.root_dir / "tables"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    convert = {"source": str(table), "destination": "tables", "convert": {"chunk_rows": 100_000}}
    broken, _ = run(manager, **convert)
    assert broken["error"]["code"] == "conversion_failed", broken["error"]
    # The parts written before the bad row are removed: no partial table for pd.read_parquet to take.
    assert not (out / "late.parquet").exists() and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    log = [e.message for e in manager.store.list_events(broken["id"])]
    assert any("Parquet part(s) written before it" in m and "holds no partial table" in m for m in log), log
    assert {c.state for c in manager.store.list_chunks(broken["id"])} == {"expired"}
    table.write_bytes(table.read_bytes().decode("latin-1").encode("utf-8"))  # saved again as UTF-8
    converted, created = run(manager, **convert)
    assert created and converted["state"] == "succeeded", converted["error"]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in (out / "late.parquet").glob("part-*.parquet"))
    assert rows == 1_200_001 and (out / "notes.txt").read_text() == "the user's"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # nothing set aside


def test_checksum_wrong_by_one_digit_publishes_nothing_right_one_stages(manager, archive):
    right = sha256(KEPLER)
    wrong = right[:-1] + ("0" if right[-1] != "0" else "1")
    job, _ = run(manager, source=str(archive / KEPLER.name), destination="sum", checksum=f"sha256:{wrong}")
    assert job["state"] == "failed" and job["error"]["code"] == "checksum_mismatch"
    assert not (manager.root_dir / "sum" / KEPLER.name).exists()
    assert not list(manager.root_dir.rglob("*.part"))
    ok, _ = run(manager, source=str(archive / KEPLER.name), destination="sum2", checksum=f"sha256:{right}")
    assert ok["state"] == "succeeded" and sha256(manager.root_dir / "sum2" / KEPLER.name) == right
    md5 = hashlib.md5(KEPLER.read_bytes()).hexdigest()
    entry, _ = run(manager, manifest={"k": {"source": str(archive / KEPLER.name), "checksum": f"md5:{md5}"}})
    assert entry["state"] == "succeeded"


def test_unpack_a_tarball_of_100_light_curves_gives_100_chunks(manager, tmp_path):
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        for i in range(100):
            tar.add(KEPLER if i % 2 else TESS, arcname=f"lc/lc{i:03d}.fits")
    job, _ = run(manager, source=str(bundle), destination="bulk", unpack=True)
    assert job["state"] == "succeeded", job
    chunks = manager.chunks(job["id"])
    assert len(chunks) == 100 and {c.path for c in chunks} == {
        f"bundle/lc/lc{i:03d}.fits" for i in range(100)
    }
    manifest = json.loads((manager.root_dir / "bulk" / "manifest.json").read_text())
    assert len(manifest["objects"]) == 100
    assert manifest["objects"][1]["sha256"] == sha256(KEPLER)
    assert sha256(manager.root_dir / "bulk" / "bundle" / "lc" / "lc001.fits") == sha256(KEPLER)
    assert not (manager.root_dir / "bulk" / "bundle.tar.gz").exists()
    converted, _ = run(
        manager, source=str(bundle), destination="bulkpq", unpack=True, convert={"chunk_rows": 50000}
    )
    assert converted["state"] == "succeeded"
    parts = [c.path for c in manager.chunks(converted["id"])]
    assert len(parts) == 100 and all(p.endswith(".parquet/part-00000.parquet") for p in parts)


@pytest.mark.parametrize(
    ("member", "code"),
    [("../evil", "unsafe_archive_path"), ("/abs", "unsafe_archive_path"), ("link", "unsafe_archive_link")],
)
def test_unpack_refuses_unsafe_members_and_writes_nothing(manager, tmp_path, member, code):
    bundle = tmp_path / "evil.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.add(SPITZER, arcname="ok.xml")
        if member == "link":
            info = tarfile.TarInfo("etc")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc"
            tar.addfile(info)
        else:
            data = b"nope"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    job, _ = run(manager, source=str(bundle), destination="evil", unpack=True)
    assert job["state"] == "failed" and job["error"]["code"] == code, job
    assert not (manager.root_dir / "evil" / "evil" / "ok.xml").exists()
    assert not (tmp_path / "evil").exists() and not Path("/abs").exists()


def test_unpack_refuses_a_bomb(manager, tmp_path):
    bomb = tmp_path / "zeros.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 1024**3
        tar.addfile(info, _Zeros(info.size))
    job, _ = run(manager, source=str(bomb), destination="bomb", unpack=True)
    assert job["state"] == "failed" and job["error"]["code"] in ("archive_bomb", "archive_too_large"), job
    assert not list((manager.root_dir).rglob("zeros.bin"))


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read without holding them in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_old_output_stays_readable_until_the_swap(manager, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(KEPLER, web / "lc.fits")
    http = RangeHTTPServer(web).start()
    try:
        body = {"manifest": {"lc": http.url("lc.fits"), "sp": str(SPITZER)}, "destination": "swap"}
        first, _ = run(manager, **body)
        old = manager.root_dir / "swap" / "lc" / "lc.fits"
        assert sha256(old) == sha256(KEPLER)
        shutil.copyfile(TESS, web / "lc.fits")  # new bytes, new ETag
        http.throttle_bytes_per_s = 400_000  # about 5 s for the new version
        job, created = manager.create(CreateJob(**body))
        assert created
        wait_until(lambda: manager.get(job.id).progress.bytes_done > 0, what="the new version to flow")
        assert manager.get(job.id).state.value == "running"
        assert sha256(old) == sha256(KEPLER)  # still the old output, whole, under its name
        assert json.loads((manager.root_dir / "swap" / "manifest.json").read_text())["job_id"] == first["id"]
        done = manager.wait(job.id, timeout=120)
    finally:
        http.stop()
    assert done.state.value == "succeeded"
    assert sha256(old) == sha256(TESS)
    manifest = json.loads((manager.root_dir / "swap" / "manifest.json").read_text())
    (obj,) = [o for o in manifest["objects"] if o["path"] == "lc/lc.fits"]
    assert obj["sha256"] == sha256(TESS) and obj["fingerprint"]["size"] == TESS.stat().st_size


def test_bytes_already_staged_here_are_not_downloaded_again(manager, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(KEPLER, web / "lc.fits")
    http = RangeHTTPServer(web).start()
    try:
        first, _ = run(manager, source=http.url("lc.fits"), destination="a")
        gets = len([r for r in http.requests if r.method == "GET"])
        second, created = run(manager, source=http.url("lc.fits"), destination="b")
        assert len([r for r in http.requests if r.method == "GET"]) == gets  # HEAD only
    finally:
        http.stop()
    assert created and second["state"] == "succeeded"
    assert sha256(manager.root_dir / "b" / "lc.fits") == sha256(KEPLER)
    assert "copied locally, not downloaded" in log_text(manager, second["id"])
    assert second["progress"]["bytes_done"] == KEPLER.stat().st_size


def test_a_folder_job_that_failed_part_way_is_staged_again_beside_what_it_published(manager, tmp_path):
    """A folder copy that failed after publishing its first files (the user had a file of its last
    file's name there) leaves those files and no manifest; running the request again once the user moved
    that file stages the whole folder beside them and swaps it in, instead of meeting its own files."""
    source = tmp_path / "lcs"
    (source / "zz").mkdir(parents=True)
    for i in range(10):
        (source / f"a{i}.bin").write_bytes(os.urandom(64 * 1024))
    (source / "zz" / "last.bin").write_bytes(os.urandom(64 * 1024))
    out = manager.root_dir / "out"
    request = {"source": str(source), "destination": "out"}
    (out / "zz").mkdir(parents=True)
    (out / "zz" / "last.bin").write_text("the user's")
    failed, _ = run(manager, **request)
    assert failed["error"]["code"] == "destination_exists", failed["error"]
    (out / "zz" / "last.bin").rename(out / "mine.txt")
    published = sorted(p.name for p in out.glob("a*.bin"))
    assert published and not (out / "manifest.json").exists()
    again, created = run(manager, **request)
    assert created and again["state"] == "succeeded", again["error"]
    assert tree(out).keys() == {*(f"a{i}.bin" for i in range(10)), "zz/last.bin", "manifest.json", "mine.txt"}
    assert all(sha256(out / rel) == sha256(source / rel) for rel in tree(source))
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # nothing set aside
    assert manager.store.get_job(failed["id"]).state == "expired"
    assert "output replaced by job" in log_text(manager, failed["id"])


def test_a_latin1_csv_converts_as_text_with_its_encoding_and_the_option_makes_another_request(
    manager, tmp_path
):
    """The conversion option ``encoding`` reaches the converter, past the first 16 MiB too: every row
    converts and the Latin-1 name is a string. A conversion without the option keeps the request key it
    had before the option existed (a re-run after an upgrade is the same request), and one with it is
    another request (``destination_exists`` into the same folder, unless refreshed)."""
    table = latin1_past_inference(tmp_path / "late.csv")
    convert = {"source": str(table), "destination": "t", "convert": {"chunk_rows": 500_000}}
    latin1 = {**convert, "convert": {"chunk_rows": 500_000, "encoding": "Latin-1"}}
    done, created = run(manager, **latin1)
    assert created and done["state"] == "succeeded", done["error"]
    assert done["convert"]["encoding"] == "iso8859-1"
    parts = sorted((manager.root_dir / "t" / "late.parquet").glob("part-*.parquet"))
    last = pq.read_table(parts[-1]).to_pylist()[-1]
    assert last == {"name": "Beta Ångström", "flux": 2.5}
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == 1_200_001
    again, created = run(manager, **latin1)
    assert not created and again["id"] == done["id"]
    with pytest.raises(DestinationExists):
        manager.create(CreateJob(**convert))
    plain = CreateJob(source=str(table), convert={"chunk_rows": 500_000, "encoding": "utf-8"})
    assert plain.convert is not None and plain.convert.encoding is None  # UTF-8 is the default, stored null
    assert "encoding" not in identity(plain, SimpleNamespace(method="copy"))["convert"]  # type: ignore[arg-type]


def test_a_csv_read_as_bytes_says_so_in_a_notice_and_not_with_its_encoding(manager, tmp_path):
    """A Latin-1 CSV converted without its encoding: the name column is bytes, and the job's notices say
    which column and how to read it as text (``%stage`` prints them, the panel shows them); with
    ``encoding`` there is no such notice."""
    table = tmp_path / "names.csv"
    table.write_bytes("name,flux\nAlpha Cen,1.5\nBeta \xc5ngstr\xf6m,2.5\n".encode("latin-1"))
    plain, _ = run(manager, source=str(table), destination="plain", convert={})
    assert plain["state"] == "succeeded", plain["error"]
    assert plain["notices"] == [
        "names.csv: column name kept as bytes (not UTF-8 text); stage it again with its encoding "
        "(encoding='latin-1', say) to read text"
    ]
    assert manager.get(plain["id"]).notices == plain["notices"]  # read back from the database
    latin1, _ = run(manager, source=str(table), destination="text", convert={"encoding": "latin-1"})
    assert latin1["state"] == "succeeded" and latin1["notices"] == [], latin1


def test_a_destination_that_is_a_mount_point_is_replaced_file_by_file(manager, tmp_path):
    """A destination folder that is a mount point (here a tmpfs) cannot be renamed: a re-run after a
    source changed stages into a hidden folder inside it and moves each file into place, the manifest
    last. The mount, its mode and the user's file stay; the file the source no longer has goes, nothing
    is left beside or inside the folder. Before, the swap failed ``internal_error`` (``EBUSY``) and left
    its scratch folder."""
    source = tmp_path / "catalog"
    (source / "sub").mkdir(parents=True)
    for rel in ("a.csv", "b.csv", "sub/c.csv"):
        (source / rel).write_text(f"id,flux\n1,{len(rel)}.5\n")
    mount = manager.root_dir / "mp"
    with small_file_system(mount):
        os.chmod(mount, 0o750)
        (mount / "notes.txt").write_text("the user's")
        first, _ = run(manager, source=str(source), destination="mp")
        assert first["state"] == "succeeded", first["error"]
        (source / "a.csv").write_text("id,flux\n1,99.5\n2,100.5\n")
        (source / "b.csv").unlink()
        second, created = run(manager, source=str(source), destination="mp")
        assert created and second["state"] == "succeeded", second["error"]
        assert os.path.ismount(mount) and stat.S_IMODE(mount.stat().st_mode) == 0o750
        assert sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*")) == [
            "a.csv",
            "manifest.json",
            "notes.txt",
            "sub",
            "sub/c.csv",
        ]
        assert (mount / "a.csv").read_text() == "id,flux\n1,99.5\n2,100.5\n"
        assert json.loads((mount / "manifest.json").read_text())["job_id"] == second["id"]
        assert sorted(p.name for p in manager.root_dir.iterdir()) == ["mp"]
        assert manager.store.get_job(first["id"]).state == "expired"


def test_a_failed_conversion_removes_its_own_parts_never_a_users_file_named_like_one(manager, tmp_path):
    """The user keeps a file named like a Parquet part in the table's folder; the conversion fails past
    its first parts: the job's parts are removed, the user's file stays as it was."""
    table = latin1_past_inference(tmp_path / "late.csv")
    mine = manager.root_dir / "own" / "late.parquet" / "part-00099.parquet"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's")
    broken, _ = run(manager, source=str(table), destination="own", convert={"chunk_rows": 100_000})
    assert broken["error"]["code"] == "conversion_failed", broken["error"]
    assert [p.name for p in mine.parent.iterdir()] == [mine.name] and mine.read_bytes() == b"the user's"
    assert "holds no partial table" in log_text(manager, broken["id"])


def test_the_users_part_files_are_listed_for_each_table_and_a_resumed_older_job_tells_them_by_ctime(
    manager, archive
):
    """``ConvertingStager._foreign_parts`` on a real job and store. A job started by an earlier version
    (no ``foreign_parts_listed``) and resumed: in each table's folder, the user's part files from before
    the job started are listed and the job's own later ones are not, for the second table as for the
    first (whose saved list must not make the second look like a job of this version). A job of this
    version lists every part file of a table not converted yet, and a saved list is kept as it is."""
    done, _ = run(manager, source=str(archive / KEPLER.name), destination="t", convert={"chunk_rows": 5000})
    # held as a run holds its job: chunk and resume writes are only a holding runner's
    manager.store.set_job_fields(done["id"], state="running", runner=manager.runner_id)
    runner = JobRunner(manager, done["id"])
    runner.dest = manager.destination_of(manager.store.get_job(done["id"]))
    folders = {name: runner.dest.workdir / f"{name}.parquet" for name in ("a", "b", "c")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "part-00000.parquet").write_bytes(b"the user's")
    time.sleep(CTIME_SLACK_NS / 1e9 + 0.2)
    runner.started_ns = time.time_ns()
    for folder in folders.values():
        (folder / "part-00001.parquet").write_bytes(b"the job's, published before a crash")
    runner.recovering, runner.resume = True, {}
    assert runner._foreign_parts("a.parquet", folders["a"]) == {"part-00000.parquet"}
    assert runner._foreign_parts("b.parquet", folders["b"]) == {"part-00000.parquet"}
    runner.resume = {FOREIGN_PARTS_LISTED: True, FOREIGN_PARTS: {"a.parquet": ["part-00007.parquet"]}}
    assert runner._foreign_parts("a.parquet", folders["a"]) == {"part-00007.parquet"}
    assert runner._foreign_parts("c.parquet", folders["c"]) == {"part-00000.parquet", "part-00001.parquet"}
    stored = manager.store.get_job(done["id"]).resume[FOREIGN_PARTS]
    assert stored["c.parquet"] == ["part-00000.parquet", "part-00001.parquet"]


def failed_on_the_users_file(manager: StagingManager, source: Path, **body) -> Path:
    """Copy folder ``source`` (``body``: more of the request) into ``out``, where the user has a file at
    ``zz/last.bin``, the name of ``source``'s last file (random bytes, made here): the job fails
    ``destination_exists`` there, after publishing the others. Returns ``out``."""
    (source / "zz").mkdir(parents=True, exist_ok=True)
    (source / "zz" / "last.bin").write_bytes(os.urandom(1024))
    out = manager.root_dir / "out"
    (out / "zz").mkdir(parents=True)
    (out / "zz" / "last.bin").write_text("the user's")
    failed, _ = run(manager, source=str(source), destination="out", **body)
    assert failed["error"]["code"] == "destination_exists", failed["error"]
    return out


def test_a_failed_jobs_leftovers_are_replaced_and_the_users_file_in_its_way_is_kept(manager, tmp_path):
    """A folder copy failed on the user's own file where its last file goes; the request is run again with
    that file still there: the whole folder is staged and swapped in, and the user's file, which the failed
    job never wrote, is kept beside the new one as ``_last.bin.set-aside-<id8>``, never taken for the job's
    output and dropped (before, it stayed in a hidden ``.replaced-<id8>`` folder beside the destination)."""
    source = tmp_path / "lcs"
    (source / "zz").mkdir(parents=True)
    for i in range(3):
        (source / f"a{i}.bin").write_bytes(os.urandom(1024))
    out = failed_on_the_users_file(manager, source)
    again, created = run(manager, source=str(source), destination="out")
    assert created and again["state"] == "succeeded", again["error"]
    assert sha256(out / "zz" / "last.bin") == sha256(source / "zz" / "last.bin")
    assert sorted(p.name for p in manager.root_dir.iterdir()) == ["out"]
    assert (out / "zz" / set_aside_name("last.bin", again["id"][:8])).read_text() == "the user's"


def test_a_users_file_at_a_copied_outputs_part_name_is_set_aside_and_logged(manager, tmp_path):
    """The second job copies the bytes staged by the first (no download) through a new ``lc.fits.part``;
    the user's own ``lc.fits.part`` there (a browser's unfinished download) is set aside, never removed."""
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(KEPLER, web / "lc.fits")
    http = RangeHTTPServer(web).start()
    try:
        run(manager, source=http.url("lc.fits"), destination="a")
        mine = manager.root_dir / "b" / "lc.fits.part"
        mine.parent.mkdir()
        mine.write_bytes(b"half of a browser download")
        second, _ = run(manager, source=http.url("lc.fits"), destination="b")
    finally:
        http.stop()
    assert second["state"] == "succeeded", second["error"]
    assert "copied locally, not downloaded" in log_text(manager, second["id"])
    aside = mine.with_name(f"_lc.fits.part.set-aside-{second['id'][:8]}")
    assert sorted(p.name for p in mine.parent.iterdir()) == [aside.name, "lc.fits", "manifest.json"]
    assert aside.read_bytes() == b"half of a browser download"
    assert sha256(mine.parent / "lc.fits") == sha256(KEPLER)
    assert f"was set aside as {aside.name}" in log_text(manager, second["id"])


def test_a_users_file_at_a_parquet_parts_name_is_set_aside_and_the_table_converted(manager, archive):
    """A conversion making ``part-00001.parquet.part`` finds a file of the user's at that name: it is set
    aside (logged), the table is converted whole, and the run again is up to date."""
    body = {"source": str(archive / KEPLER.name), "destination": "kepler", "convert": {"chunk_rows": 1000}}
    table = manager.root_dir / "kepler" / f"{KEPLER.stem}.parquet"
    table.mkdir(parents=True)
    mine = table / "part-00001.parquet.part"
    mine.write_bytes(b"the user's")
    first, _ = run(manager, **body)
    assert first["state"] == "succeeded", first["error"]
    aside = table / f"_part-00001.parquet.part.set-aside-{first['id'][:8]}"
    assert aside.read_bytes() == b"the user's" and not mine.exists()
    assert f"was set aside as {aside.name}" in log_text(manager, first["id"])
    parts = sorted(table.glob("part-*.parquet"))
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == first["progress"]["rows_done"] > 1000
    assert len(pq.read_table(table)) == first["progress"]["rows_done"]  # a reader of the folder skips it
    second, created = run(manager, **body)
    assert second["up_to_date"] and aside.read_bytes() == b"the user's"


def test_a_job_an_earlier_version_started_takes_an_untagged_file_at_a_parts_name_as_its_own(manager, archive):
    """``DestinationWriter.part_file`` on a real job's runner: a job started before part files were tagged
    (no ``parts_tagged`` in its resume data) made its parts untagged, so an untagged one in the way is its
    dead part, removed; a job of this version sets the same file aside."""
    done, _ = run(manager, source=str(archive / KEPLER.name), destination="legacy")
    runner = JobRunner(manager, done["id"])
    runner.dest = manager.destination_of(manager.store.get_job(done["id"]))
    final = runner.dest.workdir / "next.fits"
    for resume, kept in (({}, False), ({"parts_tagged": True}, True)):
        part_path = final.with_name("next.fits.part")
        part_path.write_bytes(b"bytes of a dead attempt, or the user's")
        runner.resume = resume
        out = runner.part_file(final)
        out.discard()
        aside = final.with_name(f"_next.fits.part.set-aside-{done['id'][:8]}")
        assert aside.exists() is kept and (out.set_aside is not None) is kept
        assert not part_path.exists()
    runner.close_folders()


def test_a_hard_link_at_a_parts_name_is_set_aside_never_written_into(manager, archive):
    """The user hard-links a file of theirs as ``<item>.part`` (tagged as the job's part for this version:
    even that passes no more). The job sets that name aside and starts from byte 0 in a file of its own:
    the user's file keeps its bytes."""
    done, _ = run(manager, source=str(archive / KEPLER.name), destination="first")
    runner = JobRunner(manager, done["id"])
    runner.dest = manager.destination_of(manager.store.get_job(done["id"]))
    runner.resume = {}
    item = open_source(str(archive / KEPLER.name)).list_items()[0]
    mine = manager.root_dir / "mine.bin"
    mine.write_bytes(b"the user's bytes, linked")
    os.setxattr(mine, "user.jupyter_staging.owner", owner_tag(done["id"], item.validator).encode())
    final = runner.dest.workdir / "again.fits"
    os.link(mine, final.with_name("again.fits.part"))
    out = runner._open_part(item, final, second=None)
    assert out.offset == 0
    out.write(b"the job's")
    out.discard()
    assert mine.read_bytes() == b"the user's bytes, linked"
    aside = final.with_name(f"_again.fits.part.set-aside-{done['id'][:8]}")
    assert os.path.samefile(aside, mine)
    runner.close_folders()
