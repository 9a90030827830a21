"""Where a job's tasks run (``progress.tasks``, jobs on a distributed executor) in the notebook's text and
widget: ``4 tasks on 2 workers · 3 queued`` under the bar while running, one line per worker in its tooltip,
nothing for a job on the server's own threads (``tasks`` null).

The Dask executor is not in the tree yet, so no engine run reports tasks: the widget test follows a real
running download through the real local backend, and a backend wrapper adds ``tasks`` to each real status
answer, the way the executor's jobs will carry it (issue 15).
"""

from __future__ import annotations

import html
import os
from typing import Any

import pytest

from jupyter_staging.kernel import api, widgets
from jupyter_staging.kernel.backends import Backend
from jupyter_staging.kernel.formatting import (
    jobs_table_html,
    progress_text,
    short_worker,
    task_worker_lines,
    tasks_summary,
)
from jupyter_staging.kernel.job import Job
from tests.helpers.data import wait_until

#: The issue's example: 3 queued, 4 running (2 on each of two workers), 12 done.
TASKS = {
    "queued": 3,
    "running": 4,
    "done": 12,
    "workers": {"tcp://127.0.0.1:40777": 2, "tcp://127.0.0.1:40123": 2},
}
PROGRESS = {"bytes_done": 50, "bytes_total": 200, "chunks_done": 1, "chunks_total": 4, "rows_done": 0}


@pytest.mark.parametrize(
    ("worker", "shown"),
    [
        ("tcp://127.0.0.1:40123", "127.0.0.1:40123"),
        ("tls://[::1]:8786", "[::1]:8786"),
        ("ucx://node-7.cluster:1234", "node-7.cluster:1234"),
        ("worker-0", "worker-0"),
    ],
)
def test_worker_addresses_are_shortened_to_host_and_port(worker, shown):
    assert short_worker(worker) == shown


def test_tasks_line_of_a_running_job_on_workers():
    progress = {**PROGRESS, "tasks": TASKS}
    assert tasks_summary("running", progress) == "4 tasks on 2 workers · 3 queued"
    assert tasks_summary("running", progress, done=True) == "4 tasks on 2 workers · 3 queued · 12 done"
    # Sorted by address, so the list does not reorder between two polls.
    assert task_worker_lines(TASKS) == ["127.0.0.1:40123: 2 tasks", "127.0.0.1:40777: 2 tasks"]
    assert progress_text({"state": "running", "progress": progress}) == (
        "running 25.0% - 1/4 chunks, 50 B of 200 B - 4 tasks on 2 workers · 3 queued"
    )


@pytest.mark.parametrize(
    ("tasks", "line"),
    [
        ({"queued": 0, "running": 1, "done": 0, "workers": {"worker-0": 1}}, "1 task on 1 worker"),
        ({"queued": 5, "running": 0, "done": 2, "workers": {}}, "5 tasks queued"),
        # A worker that runs nothing of this job is not counted; none named: the count alone.
        ({"queued": 0, "running": 3, "done": 0, "workers": {"a": 3, "b": 0}}, "3 tasks on 1 worker"),
        ({"queued": 1_200, "running": 2, "done": 0, "workers": {}}, "2 tasks running · 1,200 queued"),
        ({"queued": 0, "running": 0, "done": 9, "workers": {}}, ""),
    ],
)
def test_tasks_line_counts(tasks, line):
    assert tasks_summary("running", {**PROGRESS, "tasks": tasks}) == line


def test_no_tasks_line_on_threads_or_when_not_running():
    threads = {**PROGRESS, "tasks": None}
    assert tasks_summary("running", threads) == ""
    assert tasks_summary("running", PROGRESS) == ""  # a server from before the field
    assert tasks_summary("paused", {**PROGRESS, "tasks": TASKS}) == ""
    assert progress_text({"state": "running", "progress": threads}) == (
        "running 25.0% - 1/4 chunks, 50 B of 200 B"
    )
    assert widgets.tasks_html("running", threads) == ""


def test_widget_tasks_line_has_the_workers_in_its_tooltip():
    text = widgets.tasks_html("running", {**PROGRESS, "tasks": TASKS})
    assert ">4 tasks on 2 workers · 3 queued</code>" in text
    assert html.escape("127.0.0.1:40123: 2 tasks\n127.0.0.1:40777: 2 tasks") in text
    assert "tcp://" not in text


class _WithTasks:
    """The real backend, whose status answers carry ``TASKS`` while the job runs (see the module)."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def get(self, job_id: str) -> dict[str, Any]:
        data = self._backend.get(job_id)
        if data["state"] == "running":
            data["progress"] = {**data["progress"], "tasks": TASKS}
        return data


def _slow_job(range_server, name: str) -> Job:
    (range_server.root / f"{name}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    range_server.throttle_bytes_per_s = 400_000
    return api.stage(range_server.url(f"{name}.bin"), name, show=False)


def test_widget_shows_where_a_running_jobs_tasks_are(local_backend, range_server):
    real = _slow_job(range_server, "dask")
    job = Job(local_backend.get(real.id), _WithTasks(local_backend))  # type: ignore[arg-type]
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "4 tasks on 2 workers · 3 queued" in widget.tasks.value)
        assert "running" in widget.title.value
        assert "127.0.0.1:40123: 2 tasks" in widget.tasks.value
        # The line sits right under the bar and its figures.
        children = list(widget.children)
        assert children.index(widget.tasks) == children.index(widget.bar) + 2
        assert "(4 tasks on 2 workers · 3 queued)" in repr(job)
        assert "4 tasks on 2 workers · 3 queued" in jobs_table_html([job])
        widget.pause_button.click()
        wait_until(lambda: "paused" in widget.title.value)
        assert widget.tasks.value == ""
        assert "tasks on" not in repr(job)
    finally:
        widget.stop()
        real.cancel()


def test_widget_of_a_job_on_threads_shows_no_tasks_line(local_backend, range_server):
    job = _slow_job(range_server, "threads")
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "running" in widget.title.value and widget.bar.value > 0)
        assert job.progress["tasks"] is None  # the engine's own threads report none
        assert widget.tasks.value == ""
        assert "tasks on" not in repr(job) and "tasks on" not in progress_text(job.as_dict())
    finally:
        widget.stop()
        job.cancel()
