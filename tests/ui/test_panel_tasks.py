"""The Staging panel says where a job's tasks run (issue 15), on a real Dask cluster.

A real ``jupyter lab`` runs with ``StagingApp.executor_class = DaskExecutor`` on a
``distributed.LocalCluster`` of two worker processes started here (127.0.0.1, no dashboard); the panel
follows the server's event stream. A manifest of throttled HTTP downloads (a real Range HTTP server on
127.0.0.1) runs as one task per file on the workers: while it runs its row shows ``N tasks on M workers``
under its figures (``· Q queued`` when tasks wait: the manifest's eight single-file entries are submitted
at once, four running), the line's tooltip and the job's view list each busy worker as
host:port, and the line goes once the job succeeds. A hard-link job of a folder under the server's source
root runs on the server's own threads (``progress.tasks`` null) and shows no such line. Pictures in both
themes: ``panel-tasks-light.png`` and ``panel-tasks-dark.png`` in ``tests/ui/screenshots/`` (copied by hand
to ``docs/_static/screens/``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

from tests.helpers.dask import local_cluster
from tests.helpers.data import wait_until
from tests.helpers.groups import skip_group
from tests.helpers.servers import RangeHTTPServer

from .conftest import BUILT_EXTENSION, INSTALLED_EXTENSION, JupyterLabProcess
from .test_panel import PANEL, job_item, open_panel
from .test_panel_rows import CONTRAST_JS, MIN_CONTRAST, set_theme

pytestmark = pytest.mark.slow

#: The row's line: ``4 tasks on 2 workers · 3 queued`` (``1 task on 1 worker`` when one is left).
TASKS_LINE = re.compile(r"^(\d+) tasks? on ([12]) workers?( · \d+ queued)?$")
#: One worker of the tooltip and of the job view: ``127.0.0.1:40123: 2 tasks``.
WORKER_LINE = re.compile(r"^(127\.0\.0\.1:\d+): (\d+) tasks?$")
#: Files of the manifest, their size (bytes) and the server's rate per download (bytes per second):
#: 8 tasks of about 12 s, four at a time (two on each worker), so about 25 s of a running job.
FILES, FILE_BYTES, RATE = 8, 2_400_000, 200_000
#: Files of the hard-link job (a folder: one link each, on the server's threads): a few seconds of running.
LINKED_FILES = 4_000
#: Counts, for each job id, every change of the panel while the job's row says running, and how many of
#: those showed a tasks line: ``window.stagingRowsSeen[id] = {running, withTasks}`` (installed once).
WATCH_ROWS_JS = """(panel) => {
  if (window.stagingRowsSeen) return;
  window.stagingRowsSeen = {};
  const record = () => {
    for (const li of document.querySelectorAll(`${panel} li.jp-Staging-job[data-state="running"]`)) {
      const seen = (window.stagingRowsSeen[li.dataset.jobId] ??= { running: 0, withTasks: 0 });
      seen.running += 1;
      if (li.querySelector('.jp-Staging-tasksLine')) seen.withTasks += 1;
    }
  };
  const options = { subtree: true, childList: true, attributes: true, characterData: true };
  new MutationObserver(record).observe(document.querySelector(panel), options);
}"""


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    """Two worker processes of two threads each on 127.0.0.1, without the dashboard."""
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's only source root, holding a folder of small files for the hard-link job."""
    root = tmp_path_factory.mktemp("ui-dask") / "archive"
    folder = root / "spectra"
    folder.mkdir(parents=True)
    for i in range(LINKED_FILES):
        (folder / f"spec-{i:04d}.txt").write_bytes(os.urandom(512))
    return root


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory, browser: Any, dask_cluster: LocalCluster, source_root: Path
) -> Iterator[JupyterLabProcess]:
    """``jupyter lab`` with the staging extension, its jobs' work on ``dask_cluster`` (overrides the
    conftest's ``lab``; ``browser`` first, so a missing chromium or Playwright skips as there)."""
    extension = next(
        (e for e in (BUILT_EXTENSION, INSTALLED_EXTENSION) if (e / "static" / "style.js").is_file()), None
    )
    if extension is None:
        skip_group(
            "ui", "the labextension is not built (pip install -e ., or jlpm build:prod in labextension/)"
        )
    base = source_root.parent
    server = JupyterLabProcess(base / "root", base / "state", extension)
    server.extra_args = [
        "--StagingApp.executor_class=jupyter_staging.engine.executors.DaskExecutor",
        f"--StagingApp.dask_scheduler_address={dask_cluster.scheduler_address}",
        f"--StagingApp.source_roots={source_root}",
    ]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tasks_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeHTTPServer]:
    """A throttled HTTP server holding the manifest's files (see :data:`FILES`)."""
    folder = tmp_path_factory.mktemp("http-tasks")
    for i in range(FILES):
        (folder / f"lc-{i}.fits").write_bytes(os.urandom(FILE_BYTES))
    with RangeHTTPServer(folder, throttle_bytes_per_s=RATE) as server:
        yield server


def rows_seen(page: Any, job_id: str) -> dict[str, int]:
    """What :data:`WATCH_ROWS_JS` saw of a job's row while it ran (zeros when never running)."""
    seen = page.evaluate("(id) => window.stagingRowsSeen[id] ?? { running: 0, withTasks: 0 }", job_id)
    return dict(seen)


def workers_of(cluster: LocalCluster) -> set[str]:
    """The cluster's workers as the panel names them: ``127.0.0.1:port``."""
    return {address.removeprefix("tcp://") for address in cluster.scheduler_info["workers"]}


def two_worker_tooltip(line: Any) -> list[str] | None:
    """The tooltip's lines once the row says its tasks run on both workers, else None."""
    tooltip = (line.get_attribute("title") or "") if line.count() else ""
    lines = tooltip.splitlines()
    match = TASKS_LINE.match(lines[0]) if lines else None
    return lines if match and match.group(2) == "2" else None


def check_tooltip(lines: list[str], cluster: LocalCluster) -> None:
    """The summary first, then one ``host:port: n tasks`` per busy worker, adding up to the running tasks."""
    match = TASKS_LINE.match(lines[0])
    assert match, lines
    workers = [WORKER_LINE.match(entry) for entry in lines[1:]]
    assert all(workers), lines
    assert len(workers) == int(match.group(2)), lines
    assert {w.group(1) for w in workers if w} <= workers_of(cluster), (lines, workers_of(cluster))
    assert sum(int(w.group(2)) for w in workers if w) == int(match.group(1)), lines


VIEW_JS = """(view) => {
  const body = document.querySelector(view);
  const line = body && body.querySelector('.jp-Staging-tasksLine');
  const workers = body && body.querySelector('dd.jp-Staging-workers');
  return line && workers && line.innerText.includes(' done') ? [line.innerText, workers.innerText] : null;
}"""


def check_row_line(lab: JupyterLabProcess, item: Any, job_id: str, cluster: LocalCluster) -> None:
    """The row's line names both workers soon (four tasks at a time on two workers of two threads), its
    tooltip lists them, the server's JSON agrees, and the line is whole within the row."""
    line = item.locator(".jp-Staging-tasksLine")
    lines = wait_until(lambda: two_worker_tooltip(line), 40, "the tasks line to name both workers")
    check_tooltip(lines, cluster)
    assert TASKS_LINE.match(line.inner_text()), line.inner_text()
    served = lab.job(job_id)["progress"]["tasks"]
    assert served is not None and set(served["workers"]) <= {f"tcp://{w}" for w in workers_of(cluster)}
    text = item.locator(".jp-Staging-tasks")
    assert text.evaluate("(e) => e.scrollWidth <= e.clientWidth"), "the tasks line is cut"
    row, box = item.bounding_box(), text.bounding_box()
    assert row is not None and box is not None
    assert box["x"] + box["width"] <= row["x"] + row["width"]


def take_pictures(page: Any, job_id: str, screenshots: Path) -> None:
    """The panel in both themes, live, the job's tasks line readable (contrast >= 4.5:1)."""
    for theme, light, picture in (
        ("JupyterLab Light", True, "panel-tasks-light"),
        ("JupyterLab Dark", False, "panel-tasks-dark"),
    ):
        set_theme(page, theme, light)
        page.mouse.move(700, 880)  # off the list: rows as they rest
        page.wait_for_selector(f'{PANEL} li[data-job-id="{job_id}"] .jp-Staging-tasksLine')
        contrast = page.evaluate(CONTRAST_JS, f'{PANEL} li[data-job-id="{job_id}"] .jp-Staging-tasks')
        assert contrast and all(c["ratio"] >= MIN_CONTRAST for c in contrast), (theme, contrast)
        assert page.inner_text(f"{PANEL} .jp-Staging-status") == "live"
        page.locator(PANEL).screenshot(path=str(screenshots / f"{picture}.png"))
    set_theme(page, "JupyterLab Light", True)


def check_job_view(page: Any, job_id: str, cluster: LocalCluster, screenshots: Path) -> Any:
    """The job's view: the line with the tasks done, and every busy worker as host:port. Returns the
    view's tasks line (a locator)."""
    view = f'.jp-Staging-detailBody[data-job-id="{job_id}"]'
    view_line, worker_list = wait_until(
        lambda: page.evaluate(VIEW_JS, view), 60, "the job view's tasks line and workers"
    )
    summary, done = view_line.rsplit(" · ", 1)
    assert TASKS_LINE.match(summary) and re.fullmatch(r"\d+ done", done), view_line
    entries = [WORKER_LINE.match(entry) for entry in worker_list.splitlines()]
    assert entries and all(entries), worker_list
    assert {e.group(1) for e in entries if e} <= workers_of(cluster), worker_list
    page.screenshot(path=str(screenshots / "panel-tasks-job-page.png"))
    return page.locator(f"{view} .jp-Staging-tasksLine")


def test_a_job_on_dask_workers_shows_its_tasks_while_it_runs(
    lab: JupyterLabProcess,
    page: Any,
    dask_cluster: LocalCluster,
    tasks_http: RangeHTTPServer,
    screenshots: Path,
) -> None:
    open_panel(page)
    page.evaluate(WATCH_ROWS_JS, PANEL)
    manifest = {f"lc-{i}": tasks_http.url(f"lc-{i}.fits") for i in range(FILES)}
    job = lab.create_job({"manifest": manifest, "name": "light_curves", "destination": "tasks/lcs"})
    item = job_item(page, job["id"])
    line = item.locator(".jp-Staging-tasksLine")
    line.wait_for(timeout=60_000)
    # Live: the figures come from the server's event stream, not from polling.
    assert page.inner_text(f"{PANEL} .jp-Staging-status") == "live"
    check_row_line(lab, item, job["id"], dask_cluster)
    take_pictures(page, job["id"], screenshots)
    item.get_by_role("button", name="Log").click()
    view_line = check_job_view(page, job["id"], dask_cluster, screenshots)

    # Succeeded: the line goes from the row and the view, and the server says no tasks.
    page.wait_for_selector(
        f'{PANEL} li[data-job-id="{job["id"]}"][data-state="succeeded"]', state="attached", timeout=120_000
    )
    wait_until(lambda: line.count() == 0 and view_line.count() == 0, 10, "the tasks line to go")
    finished = lab.job(job["id"])
    assert finished["state"] == "succeeded" and finished["progress"]["tasks"] is None, finished
    seen = rows_seen(page, job["id"])
    assert seen["withTasks"] > 0, seen
    staged = sorted(p.name for p in (lab.root_dir / "tasks" / "lcs").rglob("*.fits"))
    assert staged == sorted(f"lc-{i}.fits" for i in range(FILES))
    page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_a_hard_link_job_runs_on_the_server_threads_and_shows_no_tasks(
    lab: JupyterLabProcess, page: Any, source_root: Path
) -> None:
    open_panel(page)
    page.evaluate(WATCH_ROWS_JS, PANEL)
    job = lab.create_job(
        {"source": str(source_root / "spectra"), "destination": "tasks/spectra", "method": "hardlink"}
    )
    served: list[dict[str, Any]] = []
    while (current := lab.job(job["id"]))["state"] in ("queued", "running"):
        served.append(current)
        time.sleep(0.05)
    assert current["state"] == "succeeded", current["error"]
    running = [j["progress"]["tasks"] for j in served if j["state"] == "running"]
    assert running and all(tasks is None for tasks in running), running
    item = job_item(page, job["id"])
    page.wait_for_selector(
        f'{PANEL} li[data-job-id="{job["id"]}"][data-state="succeeded"]', state="attached", timeout=30_000
    )
    assert item.locator(".jp-Staging-tasksLine").count() == 0
    # The panel showed the row running, never with a tasks line.
    seen = rows_seen(page, job["id"])
    assert seen["running"] > 0 and seen["withTasks"] == 0, seen
    linked = source_root / "spectra" / "spec-0000.txt"
    staged = list((lab.root_dir / "tasks" / "spectra").rglob("spec-0000.txt"))
    assert [p.stat().st_ino for p in staged] == [linked.stat().st_ino], staged
    print("hard-link job: panel changes while running", seen)  # noqa: T201 - the figures, with -s
    assert not page.errors, page.errors  # type: ignore[attr-defined]
