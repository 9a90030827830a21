"""A local source is read, and hard-linked, through descriptors of its folders (DESIGN.md, "Security
rules": sources are confined to the roots): what is swapped onto a listed path after the listing is never
followed, and bytes that changed since the listing are filed under the fingerprint they were read with.

The engine runs in this process (a real :class:`StagingManager` on threads, SQLite in ``tmp_path``); the
swap happens between the listing and the transfer, by wrapping :meth:`LocalSource.list_items`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.sources.local import LocalSource


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
