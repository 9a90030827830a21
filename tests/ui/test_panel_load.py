"""A job of many chunks in the Staging panel's job view, in a real JupyterLab driven in chromium.

A copy of a folder of 8,000 files is a job of 8,000 chunks. Its view shows the first rows of the chunk
table and says how many there are (all 20,000 rows of such a table took 8 s to appear, the page frozen),
and while the job is paused it does not fetch the whole chunk list again every refresh (the panel's
refresh interval is 1 s in these tests): the list is fetched again when the job's state changes.
Screenshot: ``many-chunks.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers.data import wait_until

from .conftest import JupyterLabProcess
from .test_panel import open_panel, shot

pytestmark = pytest.mark.slow

FILES = 8000
SHOWN = 500


def test_a_job_of_many_chunks_shows_the_first_rows_and_fetches_them_on_state_changes(
    lab: JupyterLabProcess, page: Any, screenshots: Path
) -> None:
    folder = lab.root_dir / "survey"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"frame_{i:05d}.txt").write_text("x")
    open_panel(page)
    job = lab.create_job({"source": str(folder), "destination": "copies"})
    wait_until(lambda: lab.job(job["id"])["progress"]["chunks_done"] > SHOWN + 100, 60, "600 chunks")
    assert lab.request("POST", f"jobs/{job['id']}/pause").status_code == 200
    paused = lab.wait_for(job["id"], lambda j: j["state"] == "paused", timeout=30)
    assert SHOWN < paused["progress"]["chunks_done"] < FILES, paused["progress"]

    fetched: list[float] = []
    page.on(  # JupyterLab adds a cache-busting query: the path tells the call
        "request",
        lambda r: fetched.append(time.monotonic()) if urlsplit(r.url).path.endswith("/chunks") else None,
    )
    page.evaluate("(id) => { window.jupyterapp.commands.execute('staging:open-job', {id}); }", job["id"])
    detail = page.locator(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"]')
    detail.locator(".jp-Staging-chunksMore").wait_for(timeout=30_000)
    assert detail.locator(".jp-Staging-chunks tbody tr").count() == SHOWN
    rows = lab.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    note = detail.locator(".jp-Staging-chunksMore").inner_text()
    assert f"first {SHOWN} of {len(rows):,} chunks" in note, note
    page.wait_for_timeout(5000)  # five refreshes of the paused job (events reach Python meanwhile)
    assert len(fetched) == 1, f"the chunk list was fetched {len(fetched)} times in 5 s"
    assert detail.locator(".jp-Staging-logLine").count() > 0

    assert lab.request("POST", f"jobs/{job['id']}/resume").status_code == 200
    lab.wait_for(job["id"], lambda j: j["state"] == "succeeded", timeout=120)
    page.wait_for_selector(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"][data-state="succeeded"]')
    detail.locator(".jp-Staging-chunksMore", has_text=f"of {FILES:,} chunks").wait_for(timeout=15_000)
    assert detail.locator(".jp-Staging-chunks tbody tr").count() == SHOWN
    assert 2 <= len(fetched) <= 4, f"{len(fetched)} fetches of the chunk list for two state changes"
    detail.locator(".jp-Staging-chunksMore").scroll_into_view_if_needed()
    shot(page, screenshots, "many-chunks")
