"""The cyclic garbage collector held off while a link job runs (engine/collector.py): off during the run,
back on after it (also when it fails), shared by runs on several threads, never turned on where the process
had turned it off."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest

from jupyter_staging.engine.collector import collector_holders, collector_paused
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    assert collector_holders() == 0
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_the_block_and_restored_after_it_also_on_an_error():
    with collector_paused():
        assert not gc.isenabled() and collector_holders() == 1
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("a failed run")
    assert gc.isenabled() and collector_holders() == 0


def test_runs_on_several_threads_share_one_pause_and_the_last_restores_it():
    first_in, second_done, release = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def long_run():
        with collector_paused():
            first_in.set()
            release.wait(10)

    def short_run():
        with collector_paused():
            pass
        seen.append(gc.isenabled())  # the long run still holds it
        second_done.set()

    long = threading.Thread(target=long_run)
    long.start()
    assert first_in.wait(10)
    short = threading.Thread(target=short_run)
    short.start()
    assert second_done.wait(10)
    assert seen == [False] and not gc.isenabled()
    release.set()
    long.join(10)
    short.join(10)
    assert gc.isenabled()


def test_a_pause_gives_collection_back_after_its_limit_and_the_last_run_leaves_it_on():
    from jupyter_staging.engine.collector import _CollectorPause

    pause = _CollectorPause(limit=0.2)
    pause.begin()
    assert not gc.isenabled()
    deadline = time.monotonic() + 10
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gc.isenabled()  # a run stuck on a hung mount no longer keeps the server from collecting
    pause.begin()  # a run that begins after the limit does not turn it off again
    assert gc.isenabled()
    pause.end()
    pause.end()
    assert gc.isenabled() and pause.holders == 0


def test_a_process_that_turned_the_collector_off_keeps_it_off():
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


@pytest.mark.parametrize(("method", "paused"), [("hardlink", True), ("symlink", True), ("copy", False)])
def test_a_link_job_runs_with_the_collector_held_off_and_it_is_on_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, paused: bool
):
    from jupyter_staging.engine import items

    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    for i in range(5):
        (root / "src" / f"lc-{i}.fits").write_bytes(bytes([i]) * 4096)
    seen: list[bool] = []
    transfer_all = items.ItemStager._transfer_all

    def noting(self, source, method_, work):
        seen.append(gc.isenabled())
        return transfer_all(self, source, method_, work)

    monkeypatch.setattr(items.ItemStager, "_transfer_all", noting)
    mgr = StagingManager(root, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0)
    mgr.start()
    try:
        job, _ = mgr.create(CreateJob(source=str(root / "src"), destination="out", method=method))
        done = mgr.wait(job.id, timeout=60)
    finally:
        mgr.stop()
    assert done.state == JobState.succeeded, done.error
    assert seen == [not paused]
    assert gc.isenabled()


def test_a_link_job_that_fails_gives_the_collector_back(tmp_path: Path):
    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "kplr.fits").write_bytes(b"\0" * 4096)
    mgr = StagingManager(root, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0)
    mgr.start()
    try:
        request = CreateJob(
            source=str(root / "src" / "kplr.fits"),
            destination="out",
            method="hardlink",
            checksum="sha256:" + "0" * 64,
        )
        job, _ = mgr.create(request)
        done = mgr.wait(job.id, timeout=60)
    finally:
        mgr.stop()
    assert done.state == JobState.failed and done.error.code == "checksum_mismatch", done
    assert gc.isenabled() and collector_holders() == 0
