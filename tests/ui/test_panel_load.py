"""A job of many chunks in the Staging panel's job view, in a real JupyterLab driven in chromium.

A copy of a folder of 8,000 files is a job of 8,000 chunks. Its view asks only for the first rows of the
chunk table (``?offset=0&limit=500``) and says how many there are (the answer's ``total``; all 20,000 rows
of such a table took 8 s to appear, the page frozen), and while the job is paused it does not fetch them
again every refresh (the panel's refresh interval is 1 s in these tests): they are fetched again when the
job's state changes.
With more jobs on the server than the panel lists (the newest 200), the panel says so, and once the user
cleared the finished ones it says they were cleared, not "No staging jobs yet". Screenshots:
``many-chunks.png``, ``cleared-list.png``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers.data import wait_until

from .conftest import JupyterLabProcess
from .test_panel import PANEL, open_panel, shot

pytestmark = pytest.mark.slow

FILES = 8000
SHOWN = 500
#: The jobs the panel lists: the newest ones.
LISTED = 200


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
    queries: list[dict[str, list[str]]] = []

    def on_request(request: Any) -> None:  # JupyterLab adds a cache-busting query: the path tells the call
        if urlsplit(request.url).path.endswith("/chunks"):
            fetched.append(time.monotonic())
            queries.append(parse_qs(urlsplit(request.url).query))

    page.on("request", on_request)
    page.evaluate("(id) => { window.jupyterapp.commands.execute('staging:open-job', {id}); }", job["id"])
    detail = page.locator(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"]')
    detail.locator(".jp-Staging-chunksMore").wait_for(timeout=30_000)
    assert detail.locator(".jp-Staging-chunks tbody tr").count() == SHOWN
    total = lab.request("GET", f"jobs/{job['id']}/chunks", params={"limit": "0"}).json()["total"]
    note = detail.locator(".jp-Staging-chunksMore").inner_text()
    assert f"first {SHOWN} of {total:,} chunks" in note, note
    assert detail.locator("h3", has_text=f"Chunks ({total:,})").count() == 1
    page.wait_for_timeout(5000)  # five refreshes of the paused job (events reach Python meanwhile)
    assert len(fetched) == 1, f"the chunk list was fetched {len(fetched)} times in 5 s"
    assert detail.locator(".jp-Staging-logLine").count() > 0

    assert lab.request("POST", f"jobs/{job['id']}/resume").status_code == 200
    lab.wait_for(job["id"], lambda j: j["state"] == "succeeded", timeout=120)
    page.wait_for_selector(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"][data-state="succeeded"]')
    detail.locator(".jp-Staging-chunksMore", has_text=f"of {FILES:,} chunks").wait_for(timeout=15_000)
    assert detail.locator(".jp-Staging-chunks tbody tr").count() == SHOWN
    assert 2 <= len(fetched) <= 4, f"{len(fetched)} fetches of the chunk list for two state changes"
    # only the rows shown are asked for, never the job's whole list
    assert all(q.get("offset") == ["0"] and q.get("limit") == [str(SHOWN)] for q in queries), queries
    detail.locator(".jp-Staging-chunksMore").scroll_into_view_if_needed()
    shot(page, screenshots, "many-chunks")


def test_a_list_of_more_jobs_than_shown_says_so_and_clearing_it_does_not_claim_there_are_none(
    lab: JupyterLabProcess, page: Any, screenshots: Path
) -> None:
    (lab.root_dir / "tiny.txt").write_text("tiny")

    def create(i: int) -> str:
        body = {"source": str(lab.root_dir / "tiny.txt"), "destination": f"tiny/{i}", "name": f"tiny-{i}"}
        return str(lab.create_job(body)["id"])

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(create, range(LISTED + 50)))
    for job_id in ids:
        lab.wait_for(job_id, lambda j: j["state"] == "succeeded", timeout=120)
    page.reload()  # a fresh list: the newest jobs only (the open page had them all from the event stream)
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('staging:open-panel')",
        timeout=90_000,
    )
    # Once the layout is restored (the panel may come back open), show it: a click on its tab could hide it.
    page.evaluate("async () => { await window.jupyterapp.restored; }")
    page.evaluate("() => { window.jupyterapp.commands.execute('staging:open-panel'); }")
    page.wait_for_selector(PANEL, state="visible")
    more = page.locator(f"{PANEL} .jp-Staging-moreJobs")
    more.wait_for(timeout=30_000)
    assert f"Only the {LISTED} newest jobs" in more.inner_text()
    assert page.locator(f"{PANEL} li.jp-Staging-job").count() == LISTED

    page.locator(f"{PANEL} .jp-Staging-clearFinished").click()
    empty = page.locator(f"{PANEL} .jp-Staging-empty", has_text="cleared from this list")
    empty.wait_for(timeout=15_000)
    assert f"{LISTED} cleared" in empty.inner_text()
    assert "No staging jobs yet" not in page.inner_text(PANEL)
    assert more.is_visible()
    shot(page, screenshots, "cleared-list", panel_only=True)
