"""How long and how often the live widgets poll, and what they show when polling or a button fails.

A ``%stage jobs`` table stops following once every job it lists has ended, and a row or job widget reads a
job's chunks again only when its state or ``chunks_done`` changed: counted in the request log of a real
Jupyter server. A closed widget stops its thread and is freed. A widget whose server died says so, tries
less and less often, and clears the message once the server is back. A button's action the server refuses
stays on show after the widget re-reads the job.
"""

from __future__ import annotations

import gc
import os
import re
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import comm
import ipywidgets as w
import pytest

from jupyter_staging.kernel import api, widgets
from jupyter_staging.kernel.follower import Follower
from tests.helpers.data import wait_until
from tests.helpers.jupyter import JupyterServerProcess

#: Short intervals so the tests see many polls quickly.
FAST = 0.05
CAP = 0.4


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widgets, "POLL_INTERVAL", FAST)
    monkeypatch.setattr(widgets, "MAX_POLL_INTERVAL", CAP, raising=False)  # raising: also before the fix
    monkeypatch.setattr(widgets, "IDLE_POLL_INTERVAL", FAST, raising=False)


def shown(widget: w.Widget) -> str:
    """Every text the widget shows, its boxes' children included."""
    if isinstance(widget, w.Box):
        return "\n".join(shown(child) for child in widget.children)
    return str(getattr(widget, "value", ""))


def parts(widget: w.Widget) -> list[w.Widget]:
    """The widget and every widget in it."""
    if isinstance(widget, w.Box):
        return [widget, *(part for child in widget.children for part in parts(child))]
    return [widget]


def staging_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "staging-widget"}


def following(threads: set[threading.Thread]) -> bool:
    return any(thread.is_alive() for thread in threads)


# -- a real Jupyter server and its request log ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Jupyter server that logs every request (DEBUG), used by this process's ``api`` from its root."""
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state", extra_args=["--log-level=DEBUG"])
    server.start()
    monkeypatch.chdir(server.root_dir)
    api.use_server(server.url, server.token, server.root_dir)
    yield server
    api.reset_backend()
    server.stop()


def gets(server: JupyterServerProcess, path: str) -> int:
    """How many ``GET api/v1/staging/<path>`` the server has logged, every request answered before this
    call included (a marker request is logged after them)."""
    marker = f"jobs/log-mark-{uuid.uuid4().hex}"
    server.request("GET", marker)
    wait_until(lambda: marker in server.log_path.read_text(), 10, "the marker in the server log")
    pattern = rf" GET /api/v1/staging/{re.escape(path)}[ ?]"
    return len(re.findall(pattern, server.log_path.read_text()))


def paused_download(server: JupyterServerProcess, range_server: Any, name: str) -> api.Job:
    """A download of a slow file, paused once it runs."""
    (range_server.root / f"{name}.bin").write_bytes(os.urandom(3_000_000))
    range_server.throttle_bytes_per_s = 200_000
    job = api.stage(range_server.url(f"{name}.bin"), name, show=False)
    server.wait_for(job.id, lambda j: j["state"] == "running")
    job.pause()
    server.wait_for(job.id, lambda j: j["state"] == "paused")
    return job.refresh()


@pytest.mark.slow
def test_a_table_reads_each_jobs_chunks_once_and_stops_when_every_job_has_ended(
    server, range_server, fast_polls
):
    (server.root_dir / "small.txt").write_text("a small file\n")
    done = api.stage("small.txt", "small", wait=True, show=False)
    paused = paused_download(server, range_server, "paused")

    before = staging_threads()
    table = widgets.JobsTable(api.list_jobs)
    threads = staging_threads() - before
    try:
        lists = gets(server, "jobs")
        wait_until(lambda: gets(server, "jobs") >= lists + 10, 30, "ten polls of the job list")
        # Neither job's state nor chunks_done changed: the chunks read to draw each row were the last.
        assert gets(server, f"jobs/{done.id}/chunks") == 1
        assert gets(server, f"jobs/{paused.id}/chunks") == 1

        paused.cancel()
        wait_until(lambda: not following(threads), 10, "the table to stop following")
        assert "cancelled" in shown(table) and table.following is False
        assert "every job listed has ended" in table.header.value
        assert gets(server, f"jobs/{done.id}/chunks") == 1
        assert gets(server, f"jobs/{paused.id}/chunks") == 2  # once more for its new state
    finally:
        table.close()


def test_a_table_row_reads_and_shows_its_jobs_first_40_chunks(server, tmp_path):
    """Issue 12: ``%stage jobs`` lists up to 100 jobs, and each row read the first 400 chunks of its job:
    with 100 jobs of 1,000 files that was 40,000 chunks read (2 s) and 7 MB of squares sent to the browser.
    A row now reads and shows the first 40 (and how many more); a job's own widget still shows 400."""
    from urllib.parse import parse_qs, urlsplit

    source = server.root_dir / "many"
    source.mkdir()
    for i in range(60):
        (source / f"f{i:02d}.txt").write_text(f"{i}\n")
    job = api.stage("many", "out", wait=True, show=False)
    limits: list[str] = []

    def record(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.url.split("?")[0].endswith("/chunks"):
            limits.append(parse_qs(urlsplit(response.url).query)["limit"][0])

    api.default_backend()._session.hooks["response"].append(record)  # type: ignore[attr-defined]
    table = widgets.JobsTable(api.list_jobs, follow=False)
    try:
        (row,) = [part for part in table.children if isinstance(part, widgets.JobWidget)]
        assert limits == ["40"]
        assert row.chunk_grid.value.count("<span") == 40 and "+20" in row.chunk_grid.value
    finally:
        table.close()
    widget = widgets.JobWidget(job, follow=False)
    try:
        assert limits == ["40", "400"]
        assert widget.chunk_grid.value.count("<span") == 60 and "+" not in widget.chunk_grid.value
    finally:
        widget.close()


@pytest.mark.slow
def test_a_job_widget_reads_the_chunks_again_only_when_chunks_done_changes(server, range_server, fast_polls):
    job = paused_download(server, range_server, "watched")
    widget = widgets.JobWidget(job)
    try:
        polls = gets(server, f"jobs/{job.id}")
        wait_until(lambda: gets(server, f"jobs/{job.id}") >= polls + 10, 30, "ten polls of the job")
        assert gets(server, f"jobs/{job.id}/chunks") == 1
    finally:
        widget.close()


@pytest.mark.slow
def test_a_widget_says_when_the_server_cannot_be_reached_and_recovers(server, range_server, fast_polls):
    (range_server.root / "long.bin").write_bytes(os.urandom(3_000_000))
    range_server.throttle_bytes_per_s = 200_000
    job = api.stage(range_server.url("long.bin"), "long", show=False)
    widget = widgets.JobWidget(job)
    statuses: list[str] = []
    for part in parts(widget):
        if isinstance(part, w.HTML):
            part.observe(lambda change: statuses.append(change["new"]), names="value")
    try:
        wait_until(lambda: "running" in widget.title.value, 30, "the job to run")
        server.kill()
        wait_until(lambda: "cannot reach the server since" in shown(widget), 10, "the widget to say so")
        wait_until(lambda: f"next try in {CAP:g} s" in shown(widget), 10, "the tries to slow down")
        waits = [float(m) for s in statuses for m in re.findall(r"next try in ([\d.]+) s", s)]
        assert waits[:3] == [2 * FAST, 4 * FAST, 8 * FAST] and max(waits) == CAP
        widget.pause_button.click()  # a button of a widget whose server is gone says why it did nothing
        assert "cannot reach the Jupyter server" in shown(widget)
        text = shown(widget)
        assert server.token not in text and "Traceback" not in text

        range_server.throttle_bytes_per_s = 0
        server.start()
        wait_until(lambda: "succeeded" in widget.title.value, 60, "the job to end after the restart")
        assert "cannot reach the server" not in shown(widget)
        wait_until(lambda: not widget.following, 10, "the widget to stop following")
    finally:
        widget.close()


def test_a_widget_whose_job_is_gone_from_the_server_stops_and_says_so(server, range_server, fast_polls):
    """The server came back with a new job database: the job it followed is no longer there
    (``job_not_found``). Before, the widget said "cannot refresh ... retrying" and polled every
    ``MAX_POLL_INTERVAL`` seconds for as long as the kernel lived; now it stops at the first answer and
    says the job is gone, its buttons hidden."""
    job = paused_download(server, range_server, "gone")
    widget = widgets.JobWidget(job)
    try:
        assert widget.following
        server.stop()
        for database in server.state_dir.glob("jobs.sqlite*"):
            database.unlink()  # the server's job database, as a new one would be
        server.start()
        wait_until(lambda: not widget.following, 10, "the widget to stop following")
        text = shown(widget)
        assert "no longer on the server" in text and "job_not_found" in text, text
        assert "retrying" not in text
        assert widget.buttons.layout.display == "none"
        polls = gets(server, f"jobs/{job.id}")
        time.sleep(10 * CAP)
        assert gets(server, f"jobs/{job.id}") == polls  # no more tries
    finally:
        widget.close()


# -- in this process ----------------------------------------------------------------------------------------


def slow_download(range_server: Any, name: str) -> api.Job:
    (range_server.root / f"{name}.bin").write_bytes(os.urandom(3_000_000))
    range_server.throttle_bytes_per_s = 200_000
    job = api.stage(range_server.url(f"{name}.bin"), name, show=False)
    wait_until(lambda: job.refresh().state == "running", 30, "the job to run")
    return job


def test_a_closed_table_stops_its_thread_and_is_freed(local_backend, range_server, fast_polls):
    job = slow_download(range_server, "closed")
    before = staging_threads()
    table = widgets.JobsTable(api.list_jobs)
    threads = staging_threads() - before
    assert len(threads) == 1 and following(threads)

    table.close()
    freed = weakref.ref(table)
    del table
    wait_until(lambda: not following(threads), 10, "the thread to end")
    gc.collect()
    assert freed() is None
    job.cancel()


def test_a_table_whose_comm_the_frontend_closes_stops_following(local_backend, range_server, fast_polls):
    job = slow_download(range_server, "frontend")
    before = staging_threads()
    table = widgets.JobsTable(api.list_jobs)
    threads = staging_threads() - before
    assert following(threads)
    # What the kernel does when the frontend closes the widget's model (a comm_close message).
    comm.get_comm_manager().comm_close(None, None, {"content": {"comm_id": table.model_id, "data": {}}})
    wait_until(lambda: not following(threads), 10, "the table to stop following")
    assert table.comm is None  # closed, so ipywidgets no longer holds it either
    job.cancel()


def test_a_filtered_table_keeps_the_row_of_a_job_that_left_its_listing(
    local_backend, range_server, fast_polls
):
    """``%stage jobs --state running``: once the job ends it is no longer listed; its row stays, showing
    how it ended, and the table stops. (The row vanished, and the table said "no staging jobs yet".)"""
    job = slow_download(range_server, "filtered")
    wait_until(lambda: job.refresh().state == "running", 30, "the job to run")
    table = widgets.JobsTable(lambda: api.list_jobs(state="running"))
    assert [row.job.id for row in table.children[2:]] == [job.id]
    range_server.throttle_bytes_per_s = 0
    job.wait(timeout=60)
    wait_until(lambda: not table.following, 30, "the table to stop")
    assert [row.job.state for row in table.children[2:]] == ["succeeded"]
    assert "no staging jobs yet" not in shown(table) and "every job listed has ended" in shown(table)
    table.close()


def test_a_refused_action_stays_on_show(local_backend, range_server):
    job = slow_download(range_server, "refused")
    widget = widgets.JobWidget(job, follow=False)
    job.pause()
    widget.refresh()
    assert widget.resume_button.disabled is False
    api.get_job(job.id).cancel()  # elsewhere: another cell, the Lab panel

    widget.resume_button.click()
    assert "a cancelled job cannot be resumed" in shown(widget)
    assert "cancelled" in widget.title.value  # and the widget re-read the job
    widget.cancel_button.click()  # the next action clears it (cancelling a cancelled job is no error)
    assert "cannot be resumed" not in shown(widget)


def test_a_follower_ends_once_what_it_follows_is_gone():
    class Watched:
        def poll(self) -> bool:
            return False  # never done

        def failed(self, exc: Exception, since: float, wait: float) -> None:
            raise AssertionError("poll did not fail")

    watched = Watched()
    follower = Follower(watched.poll, watched.failed, interval=FAST, max_interval=CAP)
    follower.start()
    assert follower.running
    del watched
    gc.collect()
    wait_until(lambda: not follower.running, 10, "the thread to end")


def test_a_follower_polls_slower_while_nothing_moves():
    """A poll answering None (the jobs shown are paused) waits ``idle_interval`` before the next, not
    ``interval``: a paused job's widget read it twice a second for as long as it stayed paused."""
    polls: list[float] = []

    class Paused:
        def poll(self) -> bool | None:
            polls.append(time.monotonic())
            return None if len(polls) < 3 else True  # paused twice, then ended

        def failed(self, exc: Exception, since: float, wait: float) -> None:
            raise AssertionError("poll did not fail")

    paused = Paused()
    follower = Follower(paused.poll, paused.failed, interval=0.01, max_interval=1.0, idle_interval=0.3)
    follower.start()
    wait_until(lambda: not follower.running, 10, "the thread to end")
    assert len(polls) == 3
    assert min(b - a for a, b in zip(polls, polls[1:], strict=False)) >= 0.3
