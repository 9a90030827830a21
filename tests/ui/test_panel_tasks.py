"""The Staging panel says where a job's tasks run (issue 15): a running job on a distributed executor shows
``4 tasks on 2 workers · 3 queued`` under its figures, its tooltip and the job's view list each worker as
host:port; a job on the server's own threads (``progress.tasks`` null) shows nothing more. Pictures in both
themes: ``panel-tasks-light.png`` and ``panel-tasks-dark.png`` in ``tests/ui/screenshots/``.

The Dask executor is not in the tree yet, so no job of the real server carries ``progress.tasks``. The jobs
are real (a real lab stages throttled downloads); Playwright adds ``tasks`` to the real server's answers to
``GET /jobs`` and ``GET /jobs/{id}`` for one of them, by route interception. The event stream is refused for
this page, so the panel follows the jobs by polling: an intercepted ``text/event-stream`` never ends (a
fetched response cannot be rewritten), and its real events (``tasks`` null) would overwrite the injected
field.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer

from .conftest import JupyterLabProcess
from .test_panel import PANEL, job_item, open_panel
from .test_panel_rows import CONTRAST_JS, MIN_CONTRAST, set_theme

pytestmark = pytest.mark.slow

#: The issue's example: 3 queued, 4 running (2 on each of two workers), 12 done.
TASKS = {
    "queued": 3,
    "running": 4,
    "done": 12,
    "workers": {"tcp://127.0.0.1:40777": 2, "tcp://127.0.0.1:40123": 2},
}
SHORT = "4 tasks on 2 workers · 3 queued"
#: ``GET /jobs?...`` and ``GET /jobs/{id}`` of the staging API (not chunks, log, pause...).
JOBS_API = re.compile(r"/api/v1/staging/jobs(/[^/?]+)?(\?.*)?$")
EVENTS_API = re.compile(r"/api/v1/staging/events")


class TasksInjector:
    """Adds :data:`TASKS` to the running jobs in ``on_workers`` in the real server's job answers."""

    def __init__(self) -> None:
        self.on_workers: set[str] = set()
        self.rewritten = 0

    def _add(self, job: dict[str, Any]) -> None:
        if job.get("id") in self.on_workers and job.get("state") == "running":
            job["progress"] = {**job["progress"], "tasks": TASKS}
            self.rewritten += 1

    def handle(self, route: Any) -> None:
        if route.request.method != "GET":
            route.continue_()
            return
        response = route.fetch()
        body = response.json() if response.ok else None
        if isinstance(body, dict):
            for job in body.get("jobs", [body]):
                self._add(job)
        route.fulfill(response=response, body=json.dumps(body) if body is not None else response.body())


@pytest.fixture(scope="module")
def tasks_http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Throttled downloads of 6 MB each: about 40 s of running jobs to look at."""
    folder = tmp_path_factory.mktemp("http-tasks")
    for name in ("survey_on_workers.bin", "survey_on_threads.bin"):
        (folder / name).write_bytes(os.urandom(6_000_000))
    with RangeHTTPServer(folder, throttle_bytes_per_s=150_000) as server:
        yield server


@pytest.fixture(scope="module")
def injector(page: Any) -> TasksInjector:
    """The page reloaded with the job answers rewritten and the event stream refused (see the module)."""
    injector = TasksInjector()
    page.route(EVENTS_API, lambda route: route.abort())
    page.route(JOBS_API, injector.handle)
    page.reload()
    page.wait_for_selector("#jp-main-dock-panel", timeout=90_000)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('staging:open-panel')"
    )
    return injector


def running_row(lab: JupyterLabProcess, page: Any, source: str, name: str) -> str:
    job = lab.create_job({"source": source, "name": name, "destination": f"tasks/{name}"})
    page.wait_for_selector(f'{PANEL} li[data-job-id="{job["id"]}"][data-state="running"]', timeout=20_000)
    return str(job["id"])


def test_running_job_on_workers_shows_its_tasks(
    lab: JupyterLabProcess, page: Any, injector: TasksInjector, tasks_http: RangeHTTPServer, screenshots: Path
) -> None:
    open_panel(page)
    on_threads = running_row(lab, page, tasks_http.url("survey_on_threads.bin"), "survey_on_threads")
    job = lab.create_job({"source": tasks_http.url("survey_on_workers.bin"), "name": "survey_on_workers"})
    injector.on_workers.add(job["id"])
    item = job_item(page, job["id"])
    line = item.locator(".jp-Staging-tasksLine")
    line.wait_for(timeout=20_000)
    assert injector.rewritten > 0
    assert page.inner_text(f"{PANEL} .jp-Staging-status") == "polling"

    # The short line, whole at the sidebar's default width; each worker as host:port in its tooltip.
    assert line.inner_text() == SHORT
    tooltip = line.get_attribute("title") or ""
    assert tooltip.splitlines() == [SHORT, "127.0.0.1:40123: 2 tasks", "127.0.0.1:40777: 2 tasks"]
    text = item.locator(".jp-Staging-tasks")
    assert text.evaluate("(e) => e.scrollWidth <= e.clientWidth"), "the tasks line is cut"
    row, box = item.bounding_box(), text.bounding_box()
    assert row is not None and box is not None
    assert box["x"] + box["width"] <= row["x"] + row["width"]
    panel_width = page.locator(PANEL).bounding_box()["width"]
    print("panel width", panel_width, "tasks text width", box["width"])  # noqa: T201 - the figures, with -s
    # A job on the server's own threads (tasks null): no such line.
    assert job_item(page, on_threads).locator(".jp-Staging-tasksLine").count() == 0

    for theme, light, picture in (
        ("JupyterLab Light", True, "panel-tasks-light"),
        ("JupyterLab Dark", False, "panel-tasks-dark"),
    ):
        set_theme(page, theme, light)
        page.mouse.move(700, 880)  # off the list: rows as they rest
        contrast = page.evaluate(CONTRAST_JS, f'{PANEL} li[data-job-id="{job["id"]}"] .jp-Staging-tasks')
        assert contrast and all(c["ratio"] >= MIN_CONTRAST for c in contrast), (theme, contrast)
        page.locator(PANEL).screenshot(path=str(screenshots / f"{picture}.png"))
    set_theme(page, "JupyterLab Light", True)

    # The job's view: the line with the tasks done, and every worker.
    item.get_by_role("button", name="Log").click()
    view = page.locator(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"]')
    view.locator(".jp-Staging-tasksLine").wait_for()
    assert view.locator(".jp-Staging-tasksLine").inner_text() == f"{SHORT} · 12 done"
    assert view.locator("dd.jp-Staging-workers").inner_text().splitlines() == [
        "127.0.0.1:40123: 2 tasks",
        "127.0.0.1:40777: 2 tasks",
    ]
    page.screenshot(path=str(screenshots / "panel-tasks-job-page.png"))

    # Paused, nothing runs: the line goes.
    assert lab.request("POST", f"jobs/{job['id']}/pause").status_code == 200
    page.wait_for_selector(f'{PANEL} li[data-job-id="{job["id"]}"][data-state="paused"]', timeout=15_000)
    wait_until(lambda: line.count() == 0, 10, "the tasks line to go")
    assert view.locator(".jp-Staging-tasksLine").count() == 0
    for job_id in (job["id"], on_threads):
        lab.request("DELETE", f"jobs/{job_id}")
    page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
