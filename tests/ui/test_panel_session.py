"""The Staging panel when its server goes away, comes back, or stops accepting the browser's session.

One real ``jupyter lab`` stopped and started again under the page: while it is down the panel says so and
the form says why a submission failed (no button stuck on "Submitting…"); once it is back the panel
follows it again and the form shows the server's own refusal; after a restart with a new token and a new
cookie secret (the user's session expired) the panel and the form say the session is no longer accepted
and how to get back, not that the server cannot be reached. Screenshot: ``session-expired.png``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from .conftest import JupyterLabProcess
from .test_panel import PANEL, open_panel, shot

pytestmark = pytest.mark.slow

NOTICE = f"{PANEL} .jp-Staging-notice"
FORM = f"{PANEL} form.jp-Staging-form"


def close_lab_dialogs(page: Any) -> None:
    """Close JupyterLab's own "Server Connection Error" dialogs, which cover the page."""
    for _ in range(10):
        if not page.locator(".jp-Dialog").count():
            return
        page.locator(".jp-Dialog .jp-Dialog-button").last.click()
        page.wait_for_timeout(300)


def submit(page: Any, source: str) -> str:
    """Submit the form with ``source``; returns the error it shows once the answer came."""
    close_lab_dialogs(page)
    form = page.locator(FORM)
    if not form.count():
        page.click(f"{PANEL} .jp-Staging-newButton")
    form.locator('input[name="source"]').fill(source)
    form.get_by_role("button", name="Stage").click()
    error = form.locator(".jp-Staging-formError")
    error.wait_for(timeout=30_000)
    assert form.locator('button[type="submit"]').inner_text() == "Stage"  # not stuck on Submitting…
    return str(error.inner_text())


def test_the_panel_through_a_restart_and_an_expired_session(
    lab: JupyterLabProcess, page: Any, screenshots: Path
) -> None:
    open_panel(page)
    page.wait_for_selector(f"{PANEL} .jp-Staging-status-live", timeout=30_000)

    lab.stop()
    page.wait_for_selector(f"{NOTICE}:has-text('cannot reach the Jupyter server')", timeout=30_000)
    assert "cannot reach the Jupyter server" in submit(page, "/archive/nothing-here.fits")

    lab.start()
    page.wait_for_selector(f"{NOTICE}:has-text('cannot reach')", state="detached", timeout=30_000)
    close_lab_dialogs(page)
    page.wait_for_selector(f"{PANEL} .jp-Staging-status-live", timeout=60_000)
    refusal = submit(page, "/archive/nothing-here.fits")
    assert "cannot reach" not in refusal and "sign in" not in refusal, refusal

    lab.stop()
    for secret in (Path(lab.env["JUPYTER_RUNTIME_DIR"])).glob("*cookie_secret*"):
        secret.unlink()
    lab.token = secrets.token_hex(16)
    lab.start()
    expired = f"{NOTICE}:has-text('Reload JupyterLab to sign in again')"
    page.wait_for_selector(expired, timeout=30_000)
    assert "HTTP 403" in page.locator(expired).inner_text()
    assert "not reachable" not in page.locator(expired).inner_text()
    assert "Reload JupyterLab to sign in again" in submit(page, "/archive/other.fits")
    close_lab_dialogs(page)
    shot(page, screenshots, "session-expired")
