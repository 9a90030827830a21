"""The Staging panel given hostile text, in a real JupyterLab driven in chromium.

A file whose name holds HTML, quotes and a Unicode RIGHT-TO-LEFT OVERRIDE (U+202E), a job named with a
``<script>`` element and a download from a URL holding an ``<img onerror>``: everything the server echoes
(name, source, error, chunk path, log line) shows as the characters it holds, never as HTML,
and an override never turns the text after it around (``q'.csv`` would read ``vsc.'q``: a file may pass
for another type); a failed job's row is no alert region. A job view opened on an id the server does not
have says so and stops asking for it. Screenshots: ``hostile-panel.png``, ``hostile-job.png``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.servers import RangeHTTPServer

from .conftest import JupyterLabProcess
from .test_panel import PANEL, job_item, open_panel, shot

pytestmark = pytest.mark.slow

#: A real file name on the server: HTML, both quotes, and an override before ``q'.csv``.
EVIL_FILE = '<img src=x onerror="window.__xss=1">\u202e"q\'.csv'
EVIL_NAME = '<script>window.__xss=2</script>"quoted" & <b>bold</b>'
#: What the panel must show for the override: visible, in place.
SHOWN_OVERRIDE = "[U+202E]"
#: The elements a hostile text would have created had it been parsed as HTML.
INJECTED_JS = """() => [...document.querySelectorAll(
  '#jupyter-staging-panel img, #jupyter-staging-panel script, #jupyter-staging-panel b,'
  + ' .jp-Staging-detail img, .jp-Staging-detail script, .jp-Staging-detail b'
)].length"""


@pytest.fixture(scope="module")
def missing_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeHTTPServer]:
    """An HTTP server with nothing on it: every download fails with the URL in its error."""
    with RangeHTTPServer(tmp_path_factory.mktemp("empty-http")) as server:
        yield server


def test_hostile_names_sources_errors_and_logs_show_as_text(
    lab: JupyterLabProcess, page: Any, missing_http: RangeHTTPServer, screenshots: Path
) -> None:
    (lab.root_dir / EVIL_FILE).write_text("a,b\n1,2\n")
    open_panel(page)
    source = str(lab.root_dir / EVIL_FILE)
    copied = lab.create_job({"source": source, "name": EVIL_NAME, "destination": "out"})
    done = lab.wait_for(copied["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
    assert done["state"] == "succeeded", done["error"]
    url = missing_http.url('<img src=x onerror="window.__xss=3">/f.fits')
    failing = lab.create_job({"source": url, "name": "missing", "destination": "miss"})
    failed = lab.wait_for(failing["id"], lambda j: j["state"] == "failed", timeout=60)
    page.wait_for_selector(f'{PANEL} li[data-job-id="{failing["id"]}"][data-state="failed"]', timeout=15_000)
    page.wait_for_selector(f'{PANEL} li[data-job-id="{copied["id"]}"][data-state="succeeded"]')

    row = job_item(page, copied["id"])
    assert row.locator(".jp-Staging-jobName").inner_text().replace("\n", "") == EVIL_NAME
    assert SHOWN_OVERRIDE in (row.get_attribute("title") or "")
    assert "\u202e" not in (row.get_attribute("title") or "")
    error = job_item(page, failing["id"]).locator(".jp-Staging-errorMessage").inner_text()
    # A row's error is no alert region: a list of many failed jobs would be read out alert after alert.
    assert job_item(page, failing["id"]).locator('[role="alert"]').count() == 0
    assert error == failed["error"]["message"].splitlines()[0].strip()
    shot(page, screenshots, "hostile-panel")

    page.evaluate("(id) => { window.jupyterapp.commands.execute('staging:open-job', {id}); }", copied["id"])
    detail = page.locator(f'.jp-Staging-detailBody[data-job-id="{copied["id"]}"]')
    detail.locator(".jp-Staging-logLine", has_text="succeeded").wait_for(timeout=15_000)
    assert detail.locator("h2").inner_text() == EVIL_NAME
    shown = detail.locator(".jp-Staging-facts dd").first.inner_text()
    assert shown == source.replace("\u202e", SHOWN_OVERRIDE)
    chunk = detail.locator(".jp-Staging-chunkPath").first.inner_text()
    assert chunk == EVIL_FILE.replace("\u202e", SHOWN_OVERRIDE)
    created = detail.locator(".jp-Staging-logMessage", has_text="job created").inner_text()
    # The override shown in place, and the rest of the line in its own order: "-> out/ (copy)".
    assert created.endswith(f"{SHOWN_OVERRIDE}\"q'.csv -> out (copy)"), created
    ours = page.evaluate(
        "() => [...document.querySelectorAll('#jupyter-staging-panel, .jp-Staging-detail')]"
        ".map(e => e.innerText).join()"
    )
    assert "\u202e" not in ours
    shot(page, screenshots, "hostile-job")
    assert page.evaluate(INJECTED_JS) == 0
    assert page.evaluate("() => window.__xss") is None
    assert not page.errors  # type: ignore[attr-defined]


def test_a_job_view_of_an_unknown_job_says_so_and_stops_asking(lab: JupyterLabProcess, page: Any) -> None:
    job_id = str(uuid.uuid4())  # a stale link, or a job of another server
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if f"/jobs/{job_id}" in r.url else None)
    page.evaluate("(id) => { window.jupyterapp.commands.execute('staging:open-job', {id}); }", job_id)
    view = page.locator(f"#jupyter-staging-job-{job_id} .jp-Staging-empty")
    view.wait_for(timeout=15_000)
    page.wait_for_function(
        "(id) => !document.querySelector(`#jupyter-staging-job-${id} .jp-Staging-empty`)"
        "?.innerText.includes('Loading')",
        arg=job_id,
    )
    assert view.inner_text() == f"no staging job '{job_id}'"
    first = len(asked)
    page.wait_for_timeout(4000)  # four refresh intervals of these tests
    assert len(asked) == first, f"{len(asked) - first} more requests for a job the server does not have"
