"""Jobs of many small files (issue 12): per-file database work is O(1) and batched, files are staged by a
bounded pool per job, and a job killed (SIGKILL) between two batches converges when it resumes.

The engine runs in this process (a real :class:`StagingManager` on threads, SQLite in ``tmp_path``); the
killed run is a child Python process running the same engine on the same database.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from jupyter_staging.engine.executors import run_bounded
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.errors import JobInterrupted, TransferFailed
from tests.helpers.data import wait_until

REPO = Path(__file__).resolve().parents[2]


def make_files(folder: Path, count: int, size: int = 4096) -> dict[str, str]:
    """``count`` files of ``size`` distinct bytes in ``folder``; returns ``{name: sha256}``."""
    folder.mkdir(parents=True)
    sums = {}
    for i in range(count):
        data = i.to_bytes(4, "big") * (size // 4)
        (folder / f"lc-{i:05d}.fits").write_bytes(data)
        sums[f"lc-{i:05d}.fits"] = hashlib.sha256(data).hexdigest()
    return sums


def manager_for(tmp_path: Path, **kwargs) -> StagingManager:
    mgr = StagingManager(
        tmp_path / "root", db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0, **kwargs
    )
    mgr.start()
    return mgr


class StatementCounter:
    """Counts the SQL statements a store's engine runs, by their first words and table."""

    def __init__(self, mgr: StagingManager) -> None:
        self.statements: list[str] = []
        event.listen(mgr.store.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn, _cursor, statement: str, *_args) -> None:
        self.statements.append(" ".join(statement.split()))

    def count(self, prefix: str, table: str) -> int:
        return sum(1 for s in self.statements if s.startswith(prefix) and table in s.split(" WHERE")[0])


def staged_job(mgr: StagingManager, source: Path, dest: str, method: str) -> dict:
    job, _ = mgr.create(CreateJob(source=str(source), destination=dest, method=method))
    return mgr.wait(job.id, timeout=300).model_dump(mode="json")


@pytest.mark.parametrize("method", ["copy", "hardlink"])
def test_database_work_per_file_is_constant_and_batched(tmp_path: Path, method: str):
    root = tmp_path / "root"
    small, large = make_files(root / "small", 50), make_files(root / "large", 400)
    counts = {}
    for name, files in (("small", small), ("large", large)):
        # A job database of its own for each (a hard link looks up the sha256 earlier jobs recorded for
        # the same files: one listing per earlier job, whatever the number of files).
        mgr = StagingManager(root, db_url=f"sqlite:///{tmp_path / f'{name}.sqlite'}", sweep_interval=0)
        mgr.start()
        try:
            counter = StatementCounter(mgr)
            job = staged_job(mgr, root / name, f"out-{name}", method)
            assert job["state"] == "succeeded", job
            assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == len(files)
            event.remove(mgr.store.engine, "before_cursor_execute", counter._seen)
            counts[name] = {
                "chunk_selects": counter.count("SELECT", "staging_chunks"),
                "job_updates": counter.count("UPDATE staging_jobs", "staging_jobs"),
                "chunk_writes": counter.count("INSERT INTO staging_chunks", "staging_chunks")
                + counter.count("UPDATE staging_chunks", "staging_chunks"),
            }
            chunks = mgr.chunks(job["id"])
            assert {c.path: c.sha256 for c in chunks} == files
            assert {c.state.value for c in chunks} == {"ready"}
        finally:
            mgr.stop()
    # The job's chunks are listed a fixed number of times (start, completion), never once per file.
    assert counts["large"]["chunk_selects"] == counts["small"]["chunk_selects"] <= 6, counts
    # Chunk rows and the job row are written per batch (per progress interval), not per file.
    assert counts["large"]["chunk_writes"] < 400 / 4, counts
    assert counts["large"]["job_updates"] < 400 / 4, counts


def test_hard_links_share_the_inode_and_the_manifest_has_every_sha256(tmp_path: Path):
    files = make_files(tmp_path / "root" / "sector", 300)
    mgr = manager_for(tmp_path)
    try:
        job = staged_job(mgr, tmp_path / "root" / "sector", "linked", "hardlink")
        manifest = mgr.manifest(job["id"])
    finally:
        mgr.stop()
    assert job["state"] == "succeeded", job
    out = tmp_path / "root" / "linked"
    for name in files:
        assert (out / name).stat().st_ino == (tmp_path / "root" / "sector" / name).stat().st_ino
    assert {o["path"]: o["sha256"] for o in manifest["objects"]} == files


def test_concurrent_items_must_be_at_least_one(tmp_path: Path):
    with pytest.raises(ValueError, match="concurrent_items"):
        StagingManager(tmp_path, db_url=f"sqlite:///{tmp_path / 'j.sqlite'}", concurrent_items=0)


def test_run_bounded_keeps_to_its_bound_and_stops_at_the_first_error():
    running, peak, started = 0, 0, []
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            started.append(i)
        time.sleep(0.01)
        with lock:
            running -= 1
        if i == 20:
            raise TransferFailed("item 20 failed")

    with pytest.raises(TransferFailed, match="item 20"):
        run_bounded(work, list(range(200)), 4)
    assert peak == 4
    assert 20 in started and len(started) < 40  # nothing new started once item 20 failed

    slots = threading.BoundedSemaphore(2)
    peak = 0
    run_bounded(lambda i: work(i + 1000), list(range(40)), 8, slots=slots)
    assert peak == 2


def test_run_bounded_prefers_an_interruption_to_other_errors():
    together = threading.Barrier(3, timeout=10)

    def work(i: int) -> None:
        together.wait()  # the three first items run at once; each fails
        if i == 0:
            raise TransferFailed("broken")
        raise JobInterrupted("paused")

    with pytest.raises(JobInterrupted):
        run_bounded(work, list(range(10)), 3)


CHILD = """
import sys, time
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
mgr = StagingManager(sys.argv[1], db_url=sys.argv[2], sweep_interval=0)
mgr.start()
job, _ = mgr.create(CreateJob(source=sys.argv[3], destination="out", method=sys.argv[4]))
print(job.id, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("method", ["copy", "hardlink", "symlink"])
def test_killed_between_batches_then_resumed_converges(tmp_path: Path, method: str):
    root = tmp_path / "root"
    count = 3000
    files = make_files(root / "sector", count)
    db_url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), db_url, str(root / "sector"), method],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = child.stdout.readline().strip()
        out = root / "out"
        # Kill mid-job: some files are published, most are not.
        wait_until(lambda: out.is_dir() and len(os.listdir(out)) >= 200, timeout=60)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    published = len([p for p in os.listdir(out) if not p.endswith(".part")])
    assert published < count, "the job ended before the kill; nothing was tested"

    mgr = manager_for(tmp_path)
    try:
        assert job_id in [j.id for j in mgr.list_jobs().jobs]
        done = mgr.wait(job_id, timeout=300)
        chunks = mgr.chunks(job_id)
        manifest = mgr.manifest(job_id)
        log = [line["message"] for line in mgr.job_log(job_id)]  # the newest lines, as the panel shows
    finally:
        mgr.stop()
    assert done.state == JobState.succeeded, done
    assert done.progress.chunks_done == done.progress.chunks_total == count
    assert [c.index for c in chunks] == list(range(count))
    assert {c.state.value for c in chunks} == {"ready"}
    assert {c.path: c.sha256 for c in chunks} == files
    assert {o["path"]: o["sha256"] for o in manifest["objects"]} == files
    assert sorted(os.listdir(out)) == sorted([*files, "manifest.json"])
    for name, digest in files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert (out / name).is_symlink() == (method == "symlink")
    assert any("stopped while this job ran" in line for line in log), json.dumps(log[-5:])
    # Files the killed run had finished: one line for all of them, not one each.
    assert sum("from the previous run" in line for line in log) <= 2, json.dumps(log[-5:])


@pytest.mark.parametrize("memory", [True, False], ids=["same-server", "restarted-server"])
def test_linking_unchanged_files_again_reuses_the_sha256_recorded_before(tmp_path: Path, memory: bool):
    """A hard link moves no byte: hashing is most of its cost. A second hardlink job of files whose
    fingerprint (size, mtime, inode) is unchanged takes the sha256 the first job recorded instead of reading
    them, as the re-run rules judge a fingerprint; a file whose fingerprint changed is hashed again. In the
    server that ran the first job, its digests come from memory (its listing is not read back from the
    database); after a restart, from the database."""
    from jupyter_staging.engine.staged import RECENT

    root = tmp_path / "root"
    files = make_files(root / "src", 20, size=65536)
    mgr = manager_for(tmp_path)
    try:
        first = staged_job(mgr, root / "src", "first", "hardlink")
        assert first["state"] == "succeeded", first
        if not memory:
            RECENT.clear()
        read_back: list[str] = []

        def seen(_conn, _cursor, statement: str, parameters, *_args) -> None:
            if "staging_job_resume" in statement and first["id"] in str(parameters):
                read_back.append(statement)

        event.listen(mgr.store.engine, "before_cursor_execute", seen)
        # Change the bytes of one file but give it back its size and mtime: same fingerprint, so the
        # second job's manifest shows the recorded sha256 (proof that it was not read)...
        kept = root / "src" / "lc-00003.fits"
        st = kept.stat()
        with open(kept, "r+b") as fh:
            fh.write(b"\xff" * 16)
        os.utime(kept, ns=(st.st_atime_ns, st.st_mtime_ns))
        # ...and touch another: a new fingerprint, hashed again.
        touched = root / "src" / "lc-00007.fits"
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        again = staged_job(mgr, root / "src", "again", "hardlink")
        assert again["state"] == "succeeded", again
        sums = {o["path"]: o["sha256"] for o in mgr.manifest(again["id"])["objects"]}
        assert sums == files  # lc-00003 as recorded, lc-00007 re-hashed (its bytes did not change)
        assert bool(read_back) != memory, read_back
        event.remove(mgr.store.engine, "before_cursor_execute", seen)
        assert hashlib.sha256(kept.read_bytes()).hexdigest() != files["lc-00003.fits"]
        assert (tmp_path / "root" / "again" / "lc-00003.fits").stat().st_ino == st.st_ino
        # A fresh database has nothing recorded: every file is read, the changed one shows its new sha256.
        fresh = StagingManager(root, db_url=f"sqlite:///{tmp_path / 'fresh.sqlite'}", sweep_interval=0)
        fresh.start()
        try:
            third = staged_job(fresh, root / "src", "third", "hardlink")
            sums = {o["path"]: o["sha256"] for o in fresh.manifest(third["id"])["objects"]}
        finally:
            fresh.stop()
        assert sums["lc-00003.fits"] == hashlib.sha256(kept.read_bytes()).hexdigest()
    finally:
        mgr.stop()


def linked_sums(root: Path, dest: str) -> dict[str, str]:
    """``{name: sha256}`` of the bytes behind each link in ``root / dest`` (a symlink followed)."""
    files = [p for p in (root / dest).iterdir() if p.name != "manifest.json"]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def rewrite(path: Path, *, rename: bool) -> None:
    """New bytes at ``path`` (same size, mtime 1 s later): written in place, or a new file renamed over it."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[:64] = b"\xee" * 64
    target = path.with_name(path.name + ".new") if rename else path
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    if rename:
        os.replace(target, path)


@pytest.mark.parametrize("size", [65536, 2 * 1024 * 1024], ids=["small", "large"])
@pytest.mark.parametrize("earlier", [False, True], ids=["read-ahead", "recorded"])
@pytest.mark.parametrize(
    ("method", "when"),
    # A symlink's target may change at any moment after it is linked: only a change before is checked.
    [("hardlink", "before-link"), ("hardlink", "after-link"), ("symlink", "before-link")],
)
def test_the_manifest_states_the_bytes_behind_each_link_when_a_source_changes_while_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, earlier: bool, when: str, size: int
):
    """A link job takes each file's sha256 ahead of linking it: recorded by an earlier job for the listed
    fingerprint, or read ahead on a pool. A source rewritten in place before its link, or replaced by a
    rename just after a hard link is made, is seen after linking with another fingerprint (or the linked
    inode with the listed one): the manifest states the bytes behind the link (the hard-linked inode; a
    symlink's target), never the ones read or recorded of another file. Small files are read on the
    linking thread, large ones ahead on a pool (``links.INLINE_BYTES``)."""
    from jupyter_staging.engine import folders, links

    assert (size <= links.INLINE_BYTES) == (size == 65536)
    root = tmp_path / "root"
    files = make_files(root / "src", 12, size=size)
    mgr = manager_for(tmp_path)
    changed = root / "src" / "lc-00005.fits"
    started, link_into = links.SourceDigests.start, folders.DestinationWriter._link_into

    def start_then_rewrite(self: links.SourceDigests, items) -> None:
        started(self, items)
        for future in list(self._futures.values()):
            future.result()  # every read-ahead digest is taken: of the old bytes
        rewrite(changed, rename=False)  # the same inode: the link is made to the new bytes

    def link_then_replace(self, src: Path, final: Path, *, symbolic: bool, src_at=None):
        result = link_into(self, src, final, symbolic=symbolic, src_at=src_at)
        if src == changed:
            rewrite(changed, rename=True)  # another inode at the path: a hard link keeps the old one
        return result

    try:
        if earlier:
            assert staged_job(mgr, root / "src", "first", method)["state"] == "succeeded"
        if when == "before-link":
            monkeypatch.setattr(links.SourceDigests, "start", start_then_rewrite)
        else:
            monkeypatch.setattr(folders.DestinationWriter, "_link_into", link_then_replace)
        job = staged_job(mgr, root / "src", "linked", method)
        assert job["state"] == "succeeded", job
        sums = {o["path"]: o["sha256"] for o in mgr.manifest(job["id"])["objects"]}
    finally:
        mgr.stop()
    behind = linked_sums(root, "linked")
    assert sums == behind
    assert hashlib.sha256(changed.read_bytes()).hexdigest() != files[changed.name]
    # A hard link made before the rename keeps the listed inode and its bytes.
    assert (behind[changed.name] != files[changed.name]) == (when == "before-link")


def test_a_digest_taken_of_a_file_swapped_in_is_not_filed_under_the_listed_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file listed as inode A, moved aside and replaced by inode B before it is linked: B is linked and
    hashed, and its digest is recorded under B's fingerprint. When A comes back (same size and mtime), a
    later job does not take B's digest for it."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    files = make_files(root / "src", 6, size=65536)
    mgr = manager_for(tmp_path)
    changed = root / "src" / "lc-00002.fits"
    started = links.SourceDigests.start

    def start_then_swap(self: links.SourceDigests, items) -> None:
        started(self, items)
        os.rename(changed, tmp_path / "aside.fits")
        changed.write_bytes(b"\x01" * 65536)  # inode B, same size

    try:
        monkeypatch.setattr(links.SourceDigests, "start", start_then_swap)
        job = staged_job(mgr, root / "src", "swapped", "hardlink")
        assert job["state"] == "succeeded", job
        monkeypatch.undo()
        os.replace(tmp_path / "aside.fits", changed)  # inode A is back, as listed then
        again = staged_job(mgr, root / "src", "again", "hardlink")
        assert again["state"] == "succeeded", again
        sums = {o["path"]: o["sha256"] for o in mgr.manifest(again["id"])["objects"]}
    finally:
        mgr.stop()
    assert sums == files == linked_sums(root, "again")


def test_a_source_replaced_by_a_symlink_after_listing_is_never_hard_linked_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A listed file replaced by a symlink (to a file elsewhere) before it is hard-linked: the link is made
    to the symlink itself, found to be one, removed, and the item refused (``path_not_allowed``); nothing in
    the destination leads to the symlink's target."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    make_files(root / "src", 4, size=4096)
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not listed, not to be staged")
    mgr = manager_for(tmp_path)
    replaced = root / "src" / "lc-00002.fits"
    started = links.SourceDigests.start

    def start_then_plant(self: links.SourceDigests, items) -> None:
        started(self, items)
        replaced.unlink()
        replaced.symlink_to(secret)

    try:
        monkeypatch.setattr(links.SourceDigests, "start", start_then_plant)
        job = staged_job(mgr, root / "src", "linked", "hardlink")
    finally:
        mgr.stop()
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "path_not_allowed", job["error"]
    out = root / "linked"
    assert not (out / replaced.name).exists() and not (out / replaced.name).is_symlink()
    assert all(not p.is_symlink() for p in out.iterdir())
