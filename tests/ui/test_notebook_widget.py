"""``%stage`` in a real JupyterLab notebook: the live job widget moves, its buttons steer the job.

Acceptance item 6 of issue 3, in chromium as a user would: a new notebook on the Python kernel runs
``%load_ext jupyter_staging`` and ``job = %stage <slow URL> widget-demo``; the widget shows the job
``running`` with a progress bar that grows; a second cell runs while the job moves (the kernel is not
blocked); the widget's Pause button stops it (badge ``paused``, bar frozen); Resume runs it to
``succeeded`` with a full bar, and the staged file is byte-identical to the source. Each state is saved
as a PNG in ``tests/ui/screenshots/`` (``widget-*.png``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.kernel.formatting import format_bytes
from tests.helpers.data import wait_until
from tests.helpers.servers import RangeHTTPServer

from .conftest import JupyterLabProcess

pytestmark = pytest.mark.slow

SIZE = 4 * 1024 * 1024
#: About 17 s for the whole file: time to watch it move, run a cell meanwhile and pause it well before
#: its end, on a loaded machine too (the pause comes after about 3-6 s).
SLOW_RATE = 250_000
#: After the pause the rest flows faster, so the test stays short.
FAST_RATE = 4_000_000
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


@pytest.fixture(scope="module")
def slow_http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("http-widget")
    (folder / "demo.bin").write_bytes(os.urandom(SIZE))
    with RangeHTTPServer(folder, throttle_bytes_per_s=SLOW_RATE) as server:
        yield server


def run_cell(page: Any, source: str) -> Any:
    """Put ``source`` in the notebook's active cell and run it with Shift+Enter; returns that cell."""
    index = page.evaluate(
        """(source) => {
            const notebook = window.jupyterapp.shell.currentWidget.content;
            notebook.activeCell.model.sharedModel.setSource(source);
            return notebook.activeCellIndex;
        }""",
        source,
    )
    cell = page.locator(f"{NOTEBOOK} .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    return cell


def bar_percent(widget: Any) -> float:
    """The width of the widget's progress bar, in percent, as the browser shows it."""
    width = widget.locator(".widget-hprogress .progress-bar").evaluate("(bar) => bar.style.width")
    return float(width.rstrip("%")) if width else 0.0


def badge(widget: Any) -> str:
    """The state badge in the widget's title."""
    return widget.locator(".widget-html").first.locator("span[style*='border-radius']").inner_text()


def shot(widget: Any, screenshots: Path, name: str) -> None:
    widget.screenshot(path=str(screenshots / f"{name}.png"))


def resume_to_success(
    page: Any, widget: Any, lab: JupyterLabProcess, job_id: str, slow_http: RangeHTTPServer, screenshots: Path
) -> None:
    """Resume in the widget: it runs on from where it stopped to succeeded, with a full green bar, and
    shows its outcome instead of buttons."""
    slow_http.throttle_bytes_per_s = FAST_RATE
    widget.get_by_role("button", name="Resume").click()
    wait_until(lambda: badge(widget) == "succeeded", 30, "the badge to say succeeded")
    assert bar_percent(widget) == 100
    assert "progress-bar-success" in (widget.locator(".progress-bar").get_attribute("class") or "")
    # Finished: no dead buttons, the outcome instead, with a link to the folder.
    for name in ("Pause", "Resume", "Cancel"):
        assert not widget.get_by_role("button", name=name).is_visible()
    outcome = widget.locator(".widget-html", has_text="Staged").first
    assert "1 chunk" in outcome.inner_text() and format_bytes(SIZE) in outcome.inner_text()
    assert outcome.locator("a").get_attribute("href") == "widget-demo"
    done = lab.job(job_id)
    assert done["state"] == "succeeded"
    # Resumed with a ranged request, not restarted from byte 0.
    ranged = [r for r in slow_http.requests_for("demo.bin", "GET") if r.header("Range")]
    assert ranged, [r.headers for r in slow_http.requests]
    staged = lab.root_dir / "widget-demo" / "demo.bin"
    assert staged.read_bytes() == (slow_http.root / "demo.bin").read_bytes()
    page.wait_for_timeout(300)
    shot(widget, screenshots, "widget-03-succeeded")
    page.screenshot(path=str(screenshots / "widget-04-notebook.png"))


def test_stage_magic_widget_moves_pauses_and_resumes(
    lab: JupyterLabProcess, page: Any, screenshots: Path, slow_http: RangeHTTPServer
) -> None:
    # A new notebook on the Python kernel, in the server's root folder.
    page.evaluate(
        "() => window.jupyterapp.commands.execute('notebook:create-new', {cwd: '', kernelName: 'python3'})"
    )
    page.wait_for_selector(f"{NOTEBOOK} .jp-Notebook .jp-Cell")
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'",
        timeout=60_000,
    )

    cell = run_cell(page, f"%load_ext jupyter_staging\njob = %stage {slow_http.url('demo.bin')} widget-demo")
    widget = cell.locator(".jp-OutputArea-output .widget-vbox").first
    widget.wait_for(timeout=30_000)

    # The title names the job's state; the bar grows while the bytes flow.
    wait_until(lambda: badge(widget) == "running", 15, "the badge to say running")
    assert "demo.bin" in widget.locator(".widget-html").first.inner_text()
    first = wait_until(lambda: bar_percent(widget), 15, "the bar to leave 0 %")
    wait_until(lambda: bar_percent(widget) > first, 3, "the bar to move within ~2 s")
    assert widget.get_by_role("button", name="Pause").is_enabled()
    assert widget.get_by_role("button", name="Resume").is_disabled()
    # The figures show a rate while running (found by it: the panes before them may be empty).
    assert widget.locator(".widget-html", has_text="/s").count() == 1
    shot(widget, screenshots, "widget-01-running")

    # A second cell runs while the job moves: the widget's thread does not hold the kernel.
    second = run_cell(page, "print(6 * 7)")
    output = second.locator(".jp-OutputArea-output")
    output.wait_for(timeout=10_000)
    assert output.inner_text().strip() == "42"
    job = next(j for j in lab.request("GET", "jobs").json()["jobs"] if j["destination"] == "widget-demo")
    assert lab.job(job["id"])["state"] == "running"
    assert badge(widget) == "running"
    moving = bar_percent(widget)
    wait_until(lambda: bar_percent(widget) > moving, 3, "the bar to keep moving after the second cell")

    # Pause in the widget: the server stops the job, the badge says so, the bar stops.
    widget.get_by_role("button", name="Pause").click()
    wait_until(lambda: badge(widget) == "paused", 10, "the badge to say paused")
    lab.wait_for(job["id"], lambda j: j["state"] == "paused", timeout=10)
    time.sleep(1.0)  # the bytes stop within a second; the widget polls twice a second
    frozen, paused = bar_percent(widget), lab.job(job["id"])
    assert 0 < frozen < 100 and 0 < paused["progress"]["bytes_done"] < SIZE
    time.sleep(2.0)
    assert bar_percent(widget) == frozen
    assert lab.job(job["id"])["progress"]["bytes_done"] == paused["progress"]["bytes_done"]
    assert widget.get_by_role("button", name="Resume").is_enabled()
    assert widget.get_by_role("button", name="Pause").is_disabled()
    assert "progress-bar-warning" in (widget.locator(".progress-bar").get_attribute("class") or "")
    shot(widget, screenshots, "widget-02-paused")

    resume_to_success(page, widget, lab, job["id"], slow_http, screenshots)
    assert not page.errors, page.errors  # type: ignore[attr-defined]
