"""Shareable staging links, "Copy link" and job-end notifications, in a real JupyterLab driven in chromium.

Acceptance 4 of issue 14: a link ``lab?stage=<source>&dest=<folder>&to_parquet=1`` opens the form
prefilled and the server holds no job until Stage is pressed, which creates exactly one; the staging
parameters leave the address bar. A job started in this browser raises a JupyterLab notification (a toast)
when it succeeds (with Open and DataFrame) and when it fails (with its one-line reason); the
``notifications`` setting turns them off. "Copy link" on a row puts the job's link on the clipboard.
Screenshots land in ``/work/screens/`` when that folder exists, else in ``tests/ui/screenshots/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from tests.helpers.data import KEPLER, wait_until
from tests.helpers.servers import RangeHTTPServer

from .conftest import JupyterLabProcess
from .test_panel import PANEL, job_item, open_panel

pytestmark = pytest.mark.slow

FORM = f"{PANEL} form.jp-Staging-form"
TOAST = ".Toastify__toast"
#: How long a job's absence is watched for after the link opened the form (seconds).
QUIET_SECONDS = 3


@pytest.fixture(scope="module")
def shots(screenshots: Path) -> Path:
    """Where this module's screenshots go: ``/work/screens`` on the development machine, else the default."""
    screens = Path("/work/screens")
    return screens if screens.is_dir() else screenshots


@pytest.fixture(scope="module")
def missing_http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An HTTP server with nothing in it: a download from it fails with ``source_not_found``."""
    with RangeHTTPServer(tmp_path_factory.mktemp("http-empty")) as server:
        yield server


def job_ids(lab: JupyterLabProcess) -> list[str]:
    return [j["id"] for j in lab.request("GET", "jobs").json()["jobs"]]


def staging_link(lab: JupyterLabProcess, **params: str) -> str:
    """The lab URL of a staging link, with the token that logs the browser in."""
    return f"{lab.url}lab?{urlencode({'token': lab.token, **params})}"


def open_link(page: Any, url: str) -> Any:
    page.goto(url)
    form = page.locator(FORM)
    form.wait_for(timeout=90_000)
    return form


def toast(page: Any, text: str) -> Any:
    return page.locator(TOAST, has_text=text)


def shoot_toast(page: Any, path: Path) -> None:
    """A screenshot once every toast has slid fully into the window."""
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('{TOAST}')].every(
          t => t.getBoundingClientRect().right <= window.innerWidth)"""
    )
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def set_notifications(lab: JupyterLabProcess, page: Any, on: bool) -> None:
    """Save the panel's ``notifications`` setting through the lab's settings API, then reload the page."""
    body = {"raw": f'{{"refreshInterval": 1, "notifications": {str(on).lower()}}}'}
    answer = requests.put(
        f"{lab.url}lab/api/settings/jupyter-staging:plugin", json=body, headers=lab.headers, timeout=30
    )
    assert answer.status_code == 204, answer.text
    page.goto(lab.lab_url())
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.commands.hasCommand('staging:open-panel')",
        timeout=90_000,
    )


def test_a_link_prefills_the_form_and_stages_nothing_until_stage(
    lab: JupyterLabProcess, page: Any, shots: Path
) -> None:
    assert job_ids(lab) == []
    form = open_link(page, staging_link(lab, stage=str(KEPLER), dest="linked/kepler", to_parquet="1"))
    assert form.locator('input[name="source"]').input_value() == str(KEPLER)
    assert form.locator('input[name="destination"]').input_value() == "linked/kepler"
    assert form.locator('input[name="toParquet"]').is_checked()
    # The link's parameters left the address bar (a reload does not reopen the form); the token stays.
    search = page.evaluate("() => window.location.search")
    assert "stage=" not in search and "dest=" not in search and "to_parquet" not in search, search
    page.locator(PANEL).screenshot(path=str(shots / "link-prefilled-form.png"))
    page.screenshot(path=str(shots / "link-prefilled-page.png"))

    page.wait_for_timeout(QUIET_SECONDS * 1000)
    assert job_ids(lab) == [], "a link must never start a job by itself"

    form.get_by_role("button", name="Stage").click()
    form.wait_for(state="detached", timeout=15_000)
    ids = wait_until(lambda: job_ids(lab) or None, 15, "the job of the link")
    assert len(ids) == 1
    job = lab.job(ids[0])
    assert (job["source"], job["destination"]) == (str(KEPLER), "linked/kepler")
    assert job["convert"]["format"] == "parquet"

    # Started in this browser: its success is announced with Open and DataFrame.
    lab.wait_for(ids[0], lambda j: j["state"] == "succeeded", timeout=60)
    done = toast(page, "Staged")
    done.wait_for(timeout=20_000)
    assert "into linked/kepler/" in done.inner_text()
    assert done.get_by_role("button", name="Open").is_visible()
    assert done.get_by_role("button", name="DataFrame").is_visible()
    shoot_toast(page, shots / "notification-success.png")
    done.get_by_role("button", name="Open").click()
    page.wait_for_function(
        "() => document.querySelector('#filebrowser .jp-BreadCrumbs')?.innerText.includes('kepler')",
        timeout=15_000,
    )
    assert job_ids(lab) == ids


def test_a_link_with_a_refused_source_shows_the_servers_error(lab: JupyterLabProcess, page: Any) -> None:
    before = job_ids(lab)
    form = open_link(page, staging_link(lab, stage="ftp://archive.example/kplr.fits"))
    assert form.locator('input[name="source"]').input_value() == "ftp://archive.example/kplr.fits"
    form.get_by_role("button", name="Stage").click()
    error = form.locator(".jp-Staging-formError")
    error.wait_for(timeout=15_000)
    assert error.locator(".jp-Staging-errorCode").inner_text().strip()
    assert job_ids(lab) == before


def test_copy_link_puts_the_jobs_link_on_the_clipboard(lab: JupyterLabProcess, page: Any) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.url.rstrip("/"))
    open_panel(page)
    job_id = next(j["id"] for j in lab.request("GET", "jobs").json()["jobs"] if j["source"] == str(KEPLER))
    row = job_item(page, job_id)
    row.hover()
    row.get_by_role("button", name="Copy link").click()
    page.locator(f"{PANEL} .jp-Staging-linkNotice").wait_for()
    query = {"stage": str(KEPLER), "dest": "linked/kepler", "to_parquet": "1"}
    expected = f"{lab.url}lab?{urlencode(query)}"
    assert page.evaluate("() => navigator.clipboard.readText()") == expected
    assert lab.token not in expected
    # The copied link, opened, prefills the same form.
    form = open_link(page, expected.replace("lab?", f"lab?token={lab.token}&"))
    assert form.locator('input[name="destination"]').input_value() == "linked/kepler"
    form.get_by_role("button", name="Cancel").click()


def test_a_failure_is_announced_with_its_reason(
    lab: JupyterLabProcess, page: Any, missing_http: RangeHTTPServer, shots: Path
) -> None:
    open_panel(page)
    form = open_link(page, staging_link(lab, stage=missing_http.url("gone.fits"), dest="gone"))
    form.get_by_role("button", name="Stage").click()
    form.wait_for(state="detached", timeout=15_000)
    failed = toast(page, "failed")
    failed.wait_for(timeout=30_000)
    text = failed.inner_text()
    assert "Staging gone failed: source_not_found:" in text, text
    assert failed.get_by_role("button", name="DataFrame").count() == 0
    shoot_toast(page, shots / "notification-failure.png")


def test_a_failure_before_the_answer_is_still_announced(
    lab: JupyterLabProcess, page: Any, missing_http: RangeHTTPServer
) -> None:
    """The runner starts as ``POST /jobs`` is answered, so the event stream can bring the job's failure
    before the answer reaches the browser. The answer is held here until the server says the job failed:
    the failure must still be announced (it was not: the watch began at the stale ``queued``)."""
    open_panel(page)

    def hold_until_failed(route: Any) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        answer = route.fetch()
        job_id = answer.json()["id"]
        lab.wait_for(job_id, lambda j: j["state"] == "failed", timeout=60)
        time.sleep(2)  # a poll or the event stream brings the failure to the page first
        route.fulfill(response=answer)

    jobs_url = re.compile(r"/api/v1/staging/jobs(\?.*)?$")
    page.route(jobs_url, hold_until_failed)
    try:
        form = open_link(page, staging_link(lab, stage=missing_http.url("early.fits"), dest="early"))
        # Following the event stream: no poll comes to bring the failure again after the answer.
        page.wait_for_function(
            f"() => document.querySelector('{PANEL} .jp-Staging-status')?.textContent === 'live'"
        )
        form.get_by_role("button", name="Stage").click()
        form.wait_for(state="detached", timeout=90_000)
        failed = toast(page, "Staging early failed")
        failed.wait_for(timeout=30_000)
        assert "source_not_found" in failed.inner_text()
    finally:
        page.unroute(jobs_url)


def test_the_setting_turns_notifications_off(lab: JupyterLabProcess, page: Any) -> None:
    set_notifications(lab, page, on=False)
    try:
        form = open_link(page, staging_link(lab, stage=str(KEPLER), dest="quiet", to_parquet="1"))
        form.get_by_role("button", name="Stage").click()
        form.wait_for(state="detached", timeout=15_000)
        jobs = lab.request("GET", "jobs").json()["jobs"]
        job_id = next(j["id"] for j in jobs if j["destination"] == "quiet")
        lab.wait_for(job_id, lambda j: j["state"] == "succeeded", timeout=60)
        page.wait_for_selector(f'{PANEL} li[data-job-id="{job_id}"][data-state="succeeded"]')
        page.wait_for_timeout(QUIET_SECONDS * 1000)
        assert toast(page, "into quiet/").count() == 0
    finally:
        set_notifications(lab, page, on=True)
