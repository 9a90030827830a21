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
from tests.helpers.managers import manager_for

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
        # A job database of its own for each (nothing staged before: the same work for both).
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
            # A hard link reads no byte: its sha256 is stated only when a checksum was verified.
            assert {c.path: c.sha256 for c in chunks} == (files if method == "copy" else dict.fromkeys(files))
            assert {c.state.value for c in chunks} == {"ready"}
        finally:
            mgr.stop()
    # The job's chunks are listed a fixed number of times (start, completion), never once per file.
    assert counts["large"]["chunk_selects"] == counts["small"]["chunk_selects"] <= 6, counts
    # Chunk rows and the job row are written per batch (per progress interval), not per file.
    assert counts["large"]["chunk_writes"] < 400 / 4, counts
    assert counts["large"]["job_updates"] < 400 / 4, counts


def read_bytes_of_this_process() -> int:
    """Bytes this process has read with ``read``-like calls so far (``rchar`` of ``/proc/self/io``; page
    cache hits included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_hard_links_share_the_inode_and_read_no_byte_of_the_sources(tmp_path: Path):
    """A hard-link job does what ``cp -al`` does: every output is the source's inode, no byte of the
    sources is read, and the manifest states each file's size, with no sha256 (nothing was hashed)."""
    files = make_files(tmp_path / "root" / "sector", 100, size=256 * 1024)
    mgr = manager_for(tmp_path)
    try:
        before = read_bytes_of_this_process()
        job = staged_job(mgr, tmp_path / "root" / "sector", "linked", "hardlink")
        read = read_bytes_of_this_process() - before
        manifest = mgr.manifest(job["id"])
    finally:
        mgr.stop()
    assert job["state"] == "succeeded", job
    out = tmp_path / "root" / "linked"
    for name in files:
        assert (out / name).stat().st_ino == (tmp_path / "root" / "sector" / name).stat().st_ino
    assert {o["path"]: (o["size"], o["sha256"]) for o in manifest["objects"]} == {
        name: (256 * 1024, None) for name in files
    }
    assert job["progress"]["bytes_done"] == job["progress"]["bytes_total"] == 100 * 256 * 1024
    # 25 MiB of sources; what the job read is its database and folders (well under 1 MiB here).
    assert read < 4 * 1024 * 1024, read


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
    stated = files if method == "copy" else dict.fromkeys(files)  # a link reads no byte
    assert {c.path: c.sha256 for c in chunks} == stated
    assert {o["path"]: o["sha256"] for o in manifest["objects"]} == stated
    assert sorted(os.listdir(out)) == sorted([*files, "manifest.json"])
    for name, digest in files.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert (out / name).is_symlink() == (method == "symlink")
    assert any("stopped while this job ran" in line for line in log), json.dumps(log[-5:])
    # Files the killed run had finished: one line for all of them, not one each.
    assert sum("from the previous run" in line for line in log) <= 2, json.dumps(log[-5:])


def linked_job(mgr: StagingManager, request: CreateJob) -> dict:
    job, _ = mgr.create(request)
    return mgr.wait(job.id, timeout=120).model_dump(mode="json")


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_link_job_verifies_expected_checksums_and_links_nothing_on_a_mismatch(tmp_path: Path, method: str):
    """A link job reads a file only to verify the checksum its request (or manifest entry) expects: a
    match states that sha256 in the manifest, a mismatch (sha256 or md5) fails the job with
    ``checksum_mismatch`` and no link is made under that name. Files without a checksum are linked
    unread."""
    root = tmp_path / "root"
    files = make_files(root / "src", 3, size=65536)
    src = root / "src"
    md5 = {n: hashlib.md5((src / n).read_bytes()).hexdigest() for n in files}
    a, b, c = sorted(files)
    mgr = manager_for(tmp_path)
    try:
        good = linked_job(
            mgr,
            CreateJob(
                manifest={
                    "a": {"source": str(src / a), "checksum": f"sha256:{files[a].upper()}"},
                    "b": {"source": str(src / b), "checksum": f"md5:{md5[b]}"},
                    "c": str(src / c),
                },
                destination="good",
                method=method,
            ),
        )
        assert good["state"] == "succeeded", good
        stated = {o["path"]: o["sha256"] for o in mgr.manifest(good["id"])["objects"]}
        assert stated == {f"a/{a}": files[a], f"b/{b}": files[b], f"c/{c}": None}

        wrong_sha = linked_job(
            mgr,
            CreateJob(
                source=str(src / a), destination="bad-sha", method=method, checksum="sha256:" + "0" * 64
            ),
        )
        wrong_md5 = linked_job(
            mgr,
            CreateJob(
                manifest={"a": str(src / a), "b": {"source": str(src / b), "checksum": "md5:" + "f" * 32}},
                destination="bad-md5",
                method=method,
            ),
        )
    finally:
        mgr.stop()
    for job, out in ((wrong_sha, root / "bad-sha" / a), (wrong_md5, root / "bad-md5" / "b" / b)):
        assert job["state"] == "failed", job
        assert job["error"]["code"] in ("checksum_mismatch", "partial"), job["error"]
        assert (
            "checksum_mismatch" in job["error"]["message"]
            or "nothing was published" in job["error"]["message"]
        )
        assert not out.exists() and not out.is_symlink()
    # A manifest's other entries go on (DESIGN.md: a failed entry leaves the others staged).
    assert (root / "bad-md5" / "a" / a).exists()
    assert {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in files} == files


@pytest.mark.parametrize(
    ("method", "change", "outcome"),
    [
        ("hardlink", "rewritten", "checksum_mismatch"),  # the same inode, new bytes: linked, read, refused
        ("hardlink", "touched", "succeeded"),  # a new mtime only: read again after linking, same bytes
        ("hardlink", "renamed-after-link", "succeeded"),  # the link keeps the inode that was checked
        ("symlink", "rewritten", "checksum_mismatch"),
    ],
)
def test_a_file_changed_between_its_check_and_its_link_is_verified_as_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, change: str, outcome: str
):
    """A file with an expected checksum is read and verified before it is linked; when the file linked has
    another fingerprint than the one read (it changed in between), the bytes behind the link are read and
    verified again: new bytes fail the job (``checksum_mismatch``) and the link is removed; the same bytes
    under a new mtime pass. A file renamed over after a hard link was made does not matter: the link is the
    inode that was checked."""
    from jupyter_staging.engine import folders, links

    root = tmp_path / "root"
    files = make_files(root / "src", 3, size=65536)
    changed = root / "src" / "lc-00001.fits"
    read_source, link_into = links.LinkingWriter._read_source, folders.DestinationWriter._link_into

    def read_then_change(self, source, item, expected, *, symbolic):
        checked = read_source(self, source, item, expected, symbolic=symbolic)
        if item.locator == str(changed) and change == "rewritten":
            rewrite(changed, rename=False)
        elif item.locator == str(changed) and change == "touched":
            st = changed.stat()
            os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return checked

    def link_then_replace(self, src: Path, final: Path, *, symbolic: bool, src_at=None):
        result = link_into(self, src, final, symbolic=symbolic, src_at=src_at)
        if src == changed and change == "renamed-after-link":
            rewrite(changed, rename=True)
        return result

    monkeypatch.setattr(links.LinkingWriter, "_read_source", read_then_change)
    monkeypatch.setattr(folders.DestinationWriter, "_link_into", link_then_replace)
    mgr = manager_for(tmp_path)
    try:
        request = CreateJob(
            source=str(changed), destination="out", method=method, checksum=f"sha256:{files[changed.name]}"
        )
        job = linked_job(mgr, request)
        stated = [o["sha256"] for o in mgr.manifest(job["id"])["objects"]] if outcome == "succeeded" else []
    finally:
        mgr.stop()
    out = root / "out" / changed.name
    if outcome == "succeeded":
        assert job["state"] == "succeeded", job
        assert stated == [files[changed.name]]
        assert hashlib.sha256(out.read_bytes()).hexdigest() == files[changed.name]
    else:
        assert job["state"] == "failed" and job["error"]["code"] == outcome, job
        assert not out.exists() and not out.is_symlink()


@pytest.mark.parametrize("method", ["copy", "hardlink"])
def test_a_checksum_given_for_a_folder_is_named_as_unchecked_in_the_log(tmp_path: Path, method: str):
    """An expected checksum states the bytes of one file: given with a folder of several, no file is
    checked against it, and the job's log says so (the files are staged)."""
    root = tmp_path / "root"
    files = make_files(root / "src", 3)
    mgr = manager_for(tmp_path)
    try:
        request = CreateJob(
            source=str(root / "src"), destination="out", method=method, checksum="md5:" + "0" * 32
        )
        job = linked_job(mgr, request)
        log = [(line["level"], line["message"]) for line in mgr.job_log(job["id"])]
    finally:
        mgr.stop()
    assert job["state"] == "succeeded", job
    assert sorted(p.name for p in (root / "out").iterdir()) == sorted([*files, "manifest.json"])
    assert (
        "warning",
        "the expected checksum is of one file and this source lists 3: no file is checked against it",
    ) in log


def test_a_file_that_keeps_changing_while_its_link_is_verified_leaves_no_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file rewritten between its check and its link, then changing on every read of the link: the job
    fails with ``source_changed`` and the link, never verified, is removed from the destination."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    files = make_files(root / "src", 1, size=65536)
    [(name, digest)] = files.items()
    src = root / "src" / name
    read_source, digests_of = links.LinkingWriter._read_source, links.digests_of
    rewritten = threading.Event()

    def read_then_rewrite(self, source, item, expected, *, symbolic):
        checked = read_source(self, source, item, expected, symbolic=symbolic)
        rewrite(src, rename=False)
        rewritten.set()
        return checked

    def never_steady(fd, algorithms=("sha256",), check=None):
        sums, seen = digests_of(fd, algorithms, check)
        return sums, (None if rewritten.is_set() else seen)

    monkeypatch.setattr(links.LinkingWriter, "_read_source", read_then_rewrite)
    monkeypatch.setattr(links, "digests_of", never_steady)
    mgr = manager_for(tmp_path)
    try:
        job = linked_job(
            mgr, CreateJob(source=str(src), destination="out", method="hardlink", checksum=f"sha256:{digest}")
        )
    finally:
        mgr.stop()
    assert job["state"] == "failed" and job["error"]["code"] == "source_changed", job
    assert not (root / "out" / name).exists()


@pytest.mark.parametrize(
    ("between", "outcome"),
    [
        # Replaced by a rename after the first run linked it: the link it made (the listed inode) is kept.
        ("renamed-over", "succeeded"),
        # Rewritten in place (the linked inode itself): the expected checksum no longer holds.
        ("rewritten", "checksum_mismatch"),
    ],
)
def test_a_resumed_link_job_keeps_its_own_links_and_verifies_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, between: str, outcome: str
):
    """A run that made a link and stopped before recording it (a kill, here a pause right after the link):
    the resumed run keeps that link, even when the source path now names another inode, and verifies it
    again when a checksum is expected (the stop may have come before the check); a mismatch removes it."""
    from jupyter_staging.engine import folders

    root = tmp_path / "root"
    files = make_files(root / "src", 1, size=65536)
    [(name, digest)] = files.items()
    src = root / "src" / name
    listed_inode = src.stat().st_ino
    link_into = folders.DestinationWriter._link_into
    mgr = manager_for(tmp_path)
    first = threading.Event()

    def link_then_stop(self, src_path, final, *, symbolic, src_at=None):
        st = link_into(self, src_path, final, symbolic=symbolic, src_at=src_at)
        if not first.is_set():
            first.set()
            mgr._request(self.job_id, JobState.paused)
            self.control.check()  # raises JobInterrupted: the link is made, its chunk not recorded
        return st

    monkeypatch.setattr(folders.DestinationWriter, "_link_into", link_then_stop)
    try:
        job, _ = mgr.create(
            CreateJob(source=str(src), destination="out", method="hardlink", checksum=f"sha256:{digest}")
        )
        wait_until(lambda: mgr.get(job.id).state == JobState.paused, timeout=60)
        assert [c.state.value for c in mgr.chunks(job.id)] == ["pending"]
        assert (root / "out" / name).stat().st_ino == listed_inode
        if between == "renamed-over":
            fresh = src.with_name("fresh")
            fresh.write_bytes(src.read_bytes())
            os.replace(fresh, src)
        else:
            rewrite(src, rename=False)
        mgr.resume(job.id)
        done = mgr.wait(job.id, timeout=60).model_dump(mode="json")
        stated = [o["sha256"] for o in mgr.manifest(job.id)["objects"]] if outcome == "succeeded" else []
    finally:
        mgr.stop()
    out = root / "out" / name
    if outcome == "succeeded":
        assert done["state"] == "succeeded", done
        assert out.stat().st_ino == listed_inode and stated == [digest]
    else:
        assert done["state"] == "failed" and done["error"]["code"] == outcome, done
        assert not out.exists()


def after_each_link(monkeypatch: pytest.MonkeyPatch, then) -> None:
    """Call ``then(self, src, final)`` (the writer, the source file's and the link's paths) right after
    each hard link or symlink a job makes: a first run's plain hard links
    (:meth:`LinkingWriter._hard_link`), and the others (:meth:`DestinationWriter._link_into`)."""
    from jupyter_staging.engine import folders, links

    link_into, hard_link = folders.DestinationWriter._link_into, links.LinkingWriter._hard_link

    def link_into_then(self, src_path, final, *, symbolic, src_at=None):
        st = link_into(self, src_path, final, symbolic=symbolic, src_at=src_at)
        then(self, src_path, final)
        return st

    def hard_link_then(self, folders_, source, item, chunk):
        hard_link(self, folders_, source, item, chunk)
        then(self, Path(item.locator), self.dest.workdir / item.name)

    monkeypatch.setattr(folders.DestinationWriter, "_link_into", link_into_then)
    monkeypatch.setattr(links.LinkingWriter, "_hard_link", hard_link_then)


def pause_after_links(monkeypatch: pytest.MonkeyPatch, mgr: StagingManager, then=None) -> dict:
    """Have the first link a job makes pause the job right after it is made (its chunk not recorded: a
    kill, as far as the next run can tell); ``then(self, final)`` runs after each later link."""
    made = {"links": 0}

    def stop_after_first(self, _src, final):
        made["links"] += 1
        if made["links"] == 1:
            mgr._request(self.job_id, JobState.paused)
            self.control.check()
        elif then is not None:
            then(self, final)

    after_each_link(monkeypatch, stop_after_first)
    return made


def test_a_pause_while_a_resumed_run_verifies_a_kept_link_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The link a first run made to the listed inode is verified again by the resumed run; paused during
    that read, the link is kept (not removed: the source path now names other bytes), and the next resume
    verifies it and succeeds."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    [(name, digest)] = make_files(root / "src", 1, size=65536).items()
    src, out = root / "src" / name, root / "out" / name
    mgr = manager_for(tmp_path)
    pause_after_links(monkeypatch, mgr)
    read_steady, pause_next_read = links.read_steady, threading.Event()

    def read_then_pause(open_fd, algorithms, what, check=None):
        if pause_next_read.is_set():
            pause_next_read.clear()
            mgr._request(job.id, JobState.paused)
        return read_steady(open_fd, algorithms, what, check)

    monkeypatch.setattr(links, "read_steady", read_then_pause)
    try:
        request = CreateJob(
            source=str(src), destination="out", method="hardlink", checksum=f"sha256:{digest}"
        )
        job, _ = mgr.create(request)
        wait_until(lambda: mgr.get(job.id).state == JobState.paused, timeout=60)
        listed = out.stat().st_ino
        rewrite(src, rename=True)  # the path names other bytes; the listed inode (linked) is intact
        pause_next_read.set()
        mgr.resume(job.id)
        wait_until(lambda: mgr.get(job.id).state == JobState.paused, timeout=60)
        assert out.stat().st_ino == listed
        mgr.resume(job.id)
        done = mgr.wait(job.id, timeout=60)
    finally:
        mgr.stop()
    assert done.state == JobState.succeeded, done
    assert out.stat().st_ino == listed


def test_a_resumed_link_job_fails_when_its_output_folder_is_swapped_for_the_source_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """During a resumed run the output folder is moved away and replaced by a symlink to the source
    folder itself, where every name "is" a link to its source: the run does not take those for the links
    its previous run made (it looks by descriptor of the folder found at its path) and fails with
    ``path_not_allowed``."""
    root = tmp_path / "root"
    make_files(root / "src" / "sub", 3, size=4096)
    sub = root / "out" / "sub"
    mgr = manager_for(tmp_path)

    def swap(_self, _final):
        if not sub.is_symlink():
            os.rename(sub, root / "out" / "moved")
            os.symlink(root / "src" / "sub", sub)

    pause_after_links(monkeypatch, mgr, then=swap)
    try:
        job, _ = mgr.create(CreateJob(source=str(root / "src"), destination="out", method="hardlink"))
        wait_until(lambda: mgr.get(job.id).state == JobState.paused, timeout=60)
        os.unlink(sub / "lc-00000.fits")  # linked again by the resumed run, which then swaps the folder
        mgr.resume(job.id)
        done = mgr.wait(job.id, timeout=60)
    finally:
        mgr.stop()
    assert done.state == JobState.failed and done.error.code == "path_not_allowed", done


@pytest.mark.parametrize(
    ("change", "up_to_date"),
    # Rewritten in place before its link: the link has the new bytes, filed under the new fingerprint.
    # Renamed over just after a hard link: the link keeps the listed inode; the source has changed since.
    [("rewritten-before-link", True), ("renamed-after-link", False)],
)
def test_a_link_job_files_each_item_under_the_fingerprint_it_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, up_to_date: bool
):
    """A link job reads no byte, but it files each item under the fingerprint of what it linked (the hard
    link's inode after linking), never the listed one: the same request made again is up to date when the
    link still is the source's file, and is staged anew when the source changed after the link was made."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    files = make_files(root / "src", 6, size=65536)
    changed = root / "src" / "lc-00002.fits"
    link_all = links.LinkingWriter._link_all

    def change_then_link_all(self, source, method, work):
        if change == "rewritten-before-link":
            rewrite(changed, rename=False)
        return link_all(self, source, method, work)

    def replace_after_link(_self, src: Path, _final: Path):
        if src == changed and change == "renamed-after-link":
            rewrite(changed, rename=True)

    mgr = manager_for(tmp_path)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(links.LinkingWriter, "_link_all", change_then_link_all)
            after_each_link(patched, replace_after_link)
            job = staged_job(mgr, root / "src", "linked", "hardlink")
        assert job["state"] == "succeeded", job
        again, created = mgr.create(
            CreateJob(source=str(root / "src"), destination="linked", method="hardlink")
        )
        assert again.up_to_date == up_to_date and created != up_to_date, again
        if created:
            assert mgr.wait(again.id, timeout=120).state == JobState.succeeded
    finally:
        mgr.stop()
    behind = linked_sums(root, "linked")
    now = hashlib.sha256(changed.read_bytes()).hexdigest()
    assert now != files[changed.name]
    assert behind == {**files, changed.name: now}  # the output has the source's bytes as they are now


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
    link_all = links.LinkingWriter._link_all

    def plant_then_link_all(self, source, method, work):
        replaced.unlink()
        replaced.symlink_to(secret)
        return link_all(self, source, method, work)

    try:
        monkeypatch.setattr(links.LinkingWriter, "_link_all", plant_then_link_all)
        job = staged_job(mgr, root / "src", "linked", "hardlink")
    finally:
        mgr.stop()
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "path_not_allowed", job["error"]
    out = root / "linked"
    assert not (out / replaced.name).exists() and not (out / replaced.name).is_symlink()
    assert all(not p.is_symlink() for p in out.iterdir())


def test_a_link_job_whose_output_folder_is_moved_away_links_nothing_more_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A first run's hard links keep their folder's descriptor from file to file, and find the folder
    still at its path before each link: moved out of the root after the second link and replaced by a
    symlink, it receives nothing more, and the job fails with ``path_not_allowed``."""
    root = tmp_path / "root"
    make_files(root / "src" / "sub", 6, size=4096)
    outside = tmp_path / "outside"
    linked = root / "linked" / "sub"
    made: list[str] = []

    def move_after_second(_self, _src, final):
        made.append(final.name)
        if len(made) == 2:
            outside.mkdir()
            linked.rename(outside / "sub")
            linked.symlink_to(outside / "sub")

    after_each_link(monkeypatch, move_after_second)
    mgr = manager_for(tmp_path)
    try:
        job = staged_job(mgr, root / "src", "linked", "hardlink")
    finally:
        mgr.stop()
    assert job["state"] == "failed" and job["error"]["code"] == "path_not_allowed", job
    assert made == ["lc-00000.fits", "lc-00001.fits"]
    assert sorted(p.name for p in (outside / "sub").iterdir()) == made


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
def test_a_link_that_fails_its_check_is_removed_but_not_a_file_that_took_its_name(
    tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
):
    """A source rewritten between its read and its link has the bytes behind the new link verified; they
    fail the expected checksum, and the link is removed, unless the user put a file of their own under
    that name while the link was read: that file is kept, and the job's log says so. The two changes are
    made for real, at the moment they matter (a wrapper of the read); without a user's file, the name is
    gone."""
    from jupyter_staging.engine import links

    root = tmp_path / "root"
    files = make_files(root / "src", 1, size=65536)
    (name, digest) = next(iter(files.items()))
    src = root / "src" / name
    reads: list[int] = []
    keep_mine = {"on": True}
    real = links.read_steady

    def read_then_change(open_fd, algorithms, item_name, check):
        result = real(open_fd, algorithms, item_name, check)
        reads.append(1)
        if len(reads) % 2 == 1:  # the source, read before it is linked: rewritten before the link
            with open(src, "ab") as f:
                f.write(b"appended")
        elif keep_mine["on"]:  # the link, read to verify it: the user's own file takes its name
            mine = out.parent / "mine.tmp"
            mine.write_bytes(b"the user's notes")
            os.replace(mine, out)
        return result

    monkeypatch.setattr(links, "read_steady", read_then_change)
    mgr = manager_for(tmp_path)
    try:
        out = root / "kept" / name
        kept = linked_job(
            mgr, CreateJob(source=str(src), destination="kept", method=method, checksum=f"sha256:{digest}")
        )
        src.write_bytes(b"\x00\x00\x00\x00" * (65536 // 4))  # the original bytes again
        keep_mine["on"] = False
        out = root / "gone" / name
        gone = linked_job(
            mgr, CreateJob(source=str(src), destination="gone", method=method, checksum=f"sha256:{digest}")
        )
        log_kept = [entry["message"] for entry in mgr.job_log(kept["id"])]
    finally:
        mgr.stop()
    assert len(reads) == 4
    for job in (kept, gone):
        assert job["state"] == "failed" and job["error"]["code"] == "checksum_mismatch", job["error"]
    assert (root / "kept" / name).read_bytes() == b"the user's notes"
    assert any("replaced while it was verified" in line for line in log_kept), log_kept
    assert not (root / "gone" / name).exists() and not (root / "gone" / name).is_symlink()
