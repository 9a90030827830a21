"""A local source is read, and hard-linked, through descriptors of its folders (DESIGN.md, "Security
rules": sources are confined to the roots): what is swapped onto a listed path after the listing is never
followed, and bytes that changed since the listing (local files, and an HTTP object that switched version)
are filed under the fingerprint they were read with.

The engine runs in this process (a real :class:`StagingManager` on threads, SQLite in ``tmp_path``); the
swap happens between the listing and the transfer, by wrapping :meth:`LocalSource.list_items`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.sources.local import LocalSource
from tests.helpers.data import wait_until


def manager_for(tmp_path: Path) -> StagingManager:
    mgr = StagingManager(tmp_path / "root", db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0)
    mgr.start()
    return mgr


def run(mgr: StagingManager, **body) -> tuple[dict, bool]:
    job, created = mgr.create(CreateJob(**body))
    done = mgr.wait(job.id, timeout=120)
    return done.model_dump(mode="json") | {"up_to_date": job.up_to_date}, created


def after_listing(monkeypatch: pytest.MonkeyPatch, change: Callable[[], None]) -> None:
    """Run ``change`` once, right after the next listing of a local source."""
    listed = LocalSource.list_items
    done: list[bool] = []

    def list_then_change(self: LocalSource):
        items = listed(self)
        if not done:
            done.append(True)
            change()
        return items

    monkeypatch.setattr(LocalSource, "list_items", list_then_change)


@pytest.mark.parametrize("method", ["copy", "hardlink"])
def test_a_source_folder_replaced_by_a_symlink_after_listing_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
):
    """A sub-folder of the source, listed, then moved aside and replaced by a symlink to a folder outside
    the source roots holding files of the same names and sizes: the job fails with ``path_not_allowed``
    and nothing of the outside folder reaches the destination (the old code copied, or linked and then
    relisted, the outside files)."""
    root = tmp_path / "root"
    sub = root / "src" / "sub"
    sub.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(3):
        (sub / f"lc-{i}.fits").write_bytes(b"\x00" * 8192)
        (outside / f"lc-{i}.fits").write_bytes(b"\x07" * 8192)

    def swap() -> None:
        sub.rename(root / "src" / "sub-aside")
        sub.symlink_to(outside, target_is_directory=True)

    after_listing(monkeypatch, swap)
    mgr = manager_for(tmp_path)
    try:
        job, _ = run(mgr, source=str(root / "src"), destination="out", method=method)
    finally:
        mgr.stop()
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "path_not_allowed", job["error"]
    staged = [p for p in (root / "out").rglob("*") if p.is_file()] if (root / "out").exists() else []
    assert all(b"\x07" not in p.read_bytes() for p in staged), staged


def test_a_file_replaced_before_it_is_copied_is_filed_under_the_fingerprint_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A listed file (inode A) is moved aside and another of the same size (inode B) put in its place
    before the copy: B's bytes are copied, and the job's listing now states B's fingerprint. When A comes
    back, a re-run of the same request stages A again instead of calling B's bytes up to date."""
    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    first = src / "lc-0.fits"
    first.write_bytes(b"\x01" * 65536)
    (src / "lc-1.fits").write_bytes(b"\x02" * 65536)
    aside = tmp_path / "aside.fits"

    def replace() -> None:
        os.rename(first, aside)
        first.write_bytes(b"\x03" * 65536)  # inode B, same size

    after_listing(monkeypatch, replace)
    mgr = manager_for(tmp_path)
    try:
        job, _ = run(mgr, source=str(src), destination="out", method="copy")
        assert job["state"] == "succeeded", job
        assert (root / "out" / "lc-0.fits").read_bytes() == b"\x03" * 65536
        sums = {o["path"]: o["sha256"] for o in mgr.manifest(job["id"])["objects"]}
        assert sums["lc-0.fits"] == hashlib.sha256(b"\x03" * 65536).hexdigest()
        monkeypatch.undo()
        os.replace(aside, first)  # inode A is back, as listed then
        again, _ = run(mgr, source=str(src), destination="out", method="copy")
    finally:
        mgr.stop()
    assert again["state"] == "succeeded", again
    assert not again["up_to_date"], again
    assert (root / "out" / "lc-0.fits").read_bytes() == b"\x01" * 65536


CHILD = """
import json, os, sys
from pathlib import Path
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
base = Path(sys.argv[1])

def run(root, db, source, roots):
    mgr = StagingManager(root, db_url=f"sqlite:///{db}", sweep_interval=0, source_roots=roots)
    mgr.start()
    states = {}
    try:
        for method in ("copy", "hardlink"):
            job, _ = mgr.create(CreateJob(source=str(source), destination=method, method=method))
            done = mgr.wait(job.id, timeout=60)
            states[method] = [done.state.value, done.error.code if done.error else None]
    finally:
        mgr.stop()
    return states

if os.geteuid() == 0:
    # Everything imported by a first run as root (the interpreter lives below /root), then nobody.
    run(base / "warm", base / "warm.sqlite", base / "warm-src", [str(base / "warm-src")])
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
print(json.dumps(run(base / "root", base / "db" / "jobs.sqlite", base / "share" / "proj" / "data",
                     [str(base / "share")])))
"""


def test_a_source_below_a_folder_that_may_only_be_searched_is_staged():
    """Shared storage often has folders of mode 0711 (searchable, not listable) above the data. Reaching a
    source's folder by descriptor must not need more than a path lookup does: the folders are opened with
    ``O_PATH``. Run as ``nobody`` when the tests run as root (root's permissions would hide the case),
    else as the user running them."""
    base = Path(tempfile.mkdtemp(prefix="jupyter-staging-0711-", dir="/tmp"))
    try:
        base.chmod(0o755)
        data = base / "share" / "proj" / "data"
        data.mkdir(parents=True)
        (base / "root").mkdir()
        for i in range(3):
            (data / f"lc-{i}.fits").write_bytes(bytes([i]) * 4096)
        (base / "db").mkdir()
        (base / "warm-src").mkdir()
        (base / "warm-src" / "a.fits").write_bytes(b"a" * 4096)
        if os.geteuid() == 0:  # the files and the staging root are nobody's (protected_hardlinks)
            for path in [base / "root", base / "db", data, *data.iterdir()]:
                os.chown(path, 65534, 65534)
        (base / "share").chmod(0o755)
        (base / "share" / "proj").chmod(0o711)
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(base)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=str(base),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        states = json.loads(result.stdout.strip().splitlines()[-1])
        assert states == {"copy": ["succeeded", None], "hardlink": ["succeeded", None]}, states
        assert sorted(p.name for p in (base / "root" / "copy").iterdir()) == [
            "lc-0.fits",
            "lc-1.fits",
            "lc-2.fits",
            "manifest.json",
        ]
    finally:
        if (base / "share" / "proj").exists():
            (base / "share" / "proj").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_a_copy_paused_after_its_source_was_replaced_resumes_without_splicing_two_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The listed file A is replaced by B (same size) before the copy; the job is paused with half of B
    in the part file; A comes back; the job resumes. B's half was tagged and listed as B, so it is set
    aside and A is copied whole: never half of B followed by half of A."""
    from jupyter_staging.sources import local

    size = 4 * 1024 * 1024
    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    big = src / "big.bin"
    big.write_bytes(b"\x01" * size)  # A, listed
    aside = tmp_path / "aside.bin"

    def replace() -> None:
        os.rename(big, aside)
        big.write_bytes(b"\x03" * size)  # B: same size, another inode

    after_listing(monkeypatch, replace)
    copy = local.copy_from_fd
    calls: list[int] = []
    mgr = manager_for(tmp_path)

    def copy_half_then_pause(fd, out, control, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            out.write(os.pread(fd, size // 2, out.offset))
            threading.Thread(target=mgr.pause, args=(job.id,)).start()  # as a user would, from elsewhere
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                control.check()  # raises JobInterrupted once the pause reaches the copy
                time.sleep(0.02)
        return copy(fd, out, control, **kwargs)

    monkeypatch.setattr(local, "copy_from_fd", copy_half_then_pause)
    try:
        job, _ = mgr.create(CreateJob(source=str(src), destination="out", method="copy"))
        wait_until(lambda: mgr.get(job.id).state.value == "paused", timeout=30, what="the job to pause")
        os.replace(aside, big)  # A is back, as listed
        mgr.resume(job.id)
        done = mgr.wait(job.id, timeout=60)
    finally:
        mgr.stop()
    assert done.state.value == "succeeded", done
    assert (root / "out" / "big.bin").read_bytes() == b"\x01" * size


def test_a_download_that_switched_version_is_listed_with_the_version_fetched(tmp_path: Path):
    """An HTTP object listed as version "A" (its ETag) and served as "B" by the GET: the job lists it with
    B's ETag (the fingerprint of the bytes it holds). When the server is back at A, a second job downloads
    A instead of reusing B's bytes as if they were A's."""
    a, b = b"A" * 200_000, b"B" * 200_000
    state = {"version": "A", "flip": True}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _head(self) -> bytes:
            body = a if state["version"] == "A" else b
            self.send_response(200)
            self.send_header("ETag", f'"{state["version"]}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body

        def do_HEAD(self) -> None:
            self._head()

        def do_GET(self) -> None:
            if state["flip"]:
                state["version"] = "B"
            self.wfile.write(self._head())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/lc.fits"
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path)
    try:
        first, _ = run(mgr, source=url, destination="a")
        assert first["state"] == "succeeded", first
        listed = json.loads((tmp_path / "root" / "a" / "manifest.json").read_text())["objects"][0]
        assert listed["fingerprint"]["etag"] == '"B"'
        assert listed["sha256"] == hashlib.sha256(b).hexdigest()
        state.update(version="A", flip=False)
        second, _ = run(mgr, source=url, destination="b")
        assert second["state"] == "succeeded", second
        assert (tmp_path / "root" / "b" / "lc.fits").read_bytes() == a
    finally:
        mgr.stop()
        server.shutdown()


def test_a_folder_whose_files_all_changed_since_listing_writes_its_listing_once_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Every file of a folder rewritten between the listing and the copy (a folder synced again while its
    job was paused): each is relisted, and the listing goes out with the chunk batches, not once per file
    (which made 2,000 files take 40 s)."""
    from sqlalchemy import event

    root = tmp_path / "root"
    src = root / "src"
    src.mkdir(parents=True)
    for i in range(300):
        (src / f"f{i:04d}.dat").write_bytes(b"x" * 100)

    def rewrite_all() -> None:
        for path in src.iterdir():
            path.write_bytes(b"y" * 120)

    after_listing(monkeypatch, rewrite_all)
    mgr = manager_for(tmp_path)
    writes: list[str] = []

    def seen(_conn, _cursor, statement: str, *_args) -> None:
        if statement.split()[0] in ("INSERT", "UPDATE") and "staging_job_resume" in statement.split("SET")[0]:
            writes.append(statement)

    event.listen(mgr.store.engine, "before_cursor_execute", seen)
    try:
        job, _ = run(mgr, source=str(src), destination="out", method="copy")
        sums = {o["path"]: o["sha256"] for o in mgr.manifest(job["id"])["objects"]}
    finally:
        mgr.stop()
    assert job["state"] == "succeeded", job
    assert set(sums.values()) == {hashlib.sha256(b"y" * 120).hexdigest()}
    assert len(writes) <= 6, len(writes)  # the listing, then a few batches: not 300


def test_an_output_the_cleanup_policy_removes_is_not_kept_among_recent_digests(tmp_path: Path):
    """A job whose output is deleted on success leaves no entries in memory: they would hide an older copy
    of the same bytes that is still there."""
    from jupyter_staging.engine.staged import RECENT

    src = tmp_path / "root" / "src"
    src.mkdir(parents=True)
    (src / "lc.fits").write_bytes(b"z" * 4096)
    mgr = manager_for(tmp_path)
    try:
        kept, _ = run(mgr, source=str(src), destination="kept", method="copy")
        gone, _ = run(
            mgr, source=str(src), destination="gone", method="copy", cleanup_policy="delete_on_success"
        )
    finally:
        mgr.stop()
    assert kept["state"] == gone["state"] == "succeeded"
    assert RECENT.get(kept["id"]) is not None
    assert RECENT.get(gone["id"]) is None


def test_a_table_converted_in_place_is_never_read_through_a_folder_swapped_for_a_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A CSV inside the source roots, converted to Parquet where it is (no copy first): its folder is
    replaced by a symlink to a folder outside the roots after the listing. The converter reads the table
    through the descriptor of the folder, so the job fails with ``path_not_allowed`` and no row of the
    outside table reaches the Parquet output (the old code converted it)."""
    roots = tmp_path / "roots"
    sub = roots / "data" / "sub"
    sub.mkdir(parents=True)
    (sub / "t.csv").write_text("a,b\n1,2\n3,4\n")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "t.csv").write_text("a,b\n999,SECRET\n")

    def swap() -> None:
        sub.rename(roots / "data" / "aside")
        sub.symlink_to(secret, target_is_directory=True)

    after_listing(monkeypatch, swap)
    (tmp_path / "root").mkdir()
    mgr = StagingManager(
        tmp_path / "root",
        db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}",
        sweep_interval=0,
        source_roots=[str(roots)],
    )
    mgr.start()
    try:
        job, _ = run(mgr, source=str(roots / "data"), destination="out", convert={"chunk_rows": 1000})
    finally:
        mgr.stop()
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "path_not_allowed", job["error"]
    out = tmp_path / "root" / "out"
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert all(b"SECRET" not in p.read_bytes() for p in written), written


def test_a_table_converted_in_place_reads_the_listed_file(tmp_path: Path):
    """The converter opens the table by a path through its folder's descriptor: the Parquet output holds
    the file's rows, and the format is still told by the name's suffix."""
    src = tmp_path / "root" / "src"
    src.mkdir(parents=True)
    (src / "t.csv").write_text("a,b\n1,2\n3,4\n")
    mgr = manager_for(tmp_path)
    try:
        job, _ = run(mgr, source=str(src), destination="out", convert={"chunk_rows": 1000})
    finally:
        mgr.stop()
    assert job["state"] == "succeeded", job
    import pyarrow.parquet as pq

    parts = sorted((tmp_path / "root" / "out").rglob("*.parquet"))
    rows = [row for part in parts if part.is_file() for row in pq.read_table(part).to_pylist()]
    assert rows == [{"a": 1, "b": 2}, {"a": 3, "b": 4}], parts
