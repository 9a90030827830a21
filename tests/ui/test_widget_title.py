"""The notebook job widget's header says how a job ended (issue 14): ``✓`` once it succeeded, ``✗`` once it
failed, and no mark while it runs. Checked in-process on real jobs; ``test_notebook_widget.py`` shows the
same widget in the browser."""

from __future__ import annotations

import os

from jupyter_staging.kernel import api, widgets
from tests.helpers.data import KEPLER, wait_until


def test_the_header_gains_a_check_mark_when_the_job_succeeds(local_backend, range_server) -> None:
    (range_server.root / "slow-title.bin").write_bytes(os.urandom(1_000_000))
    range_server.throttle_bytes_per_s = 500_000
    job = api.stage(range_server.url("slow-title.bin"), "slow-title", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "running" in widget.title.value, 15, "the job to run")
        assert not widget.title.value.startswith(("✓", "✗"))
        wait_until(lambda: "succeeded" in widget.title.value, 30, "the job to succeed")
        assert widget.title.value.startswith("✓ <b>slow-title</b>")
    finally:
        widget.stop()


def test_the_header_gains_a_cross_when_the_job_fails(local_backend, range_server) -> None:
    job = api.stage(range_server.url("missing-title.fits"), "missing-title", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "failed" in widget.title.value, 30, "the job to fail")
        assert widget.title.value.startswith("✗ <b>missing-title</b>")
    finally:
        widget.stop()


def test_a_job_answered_up_to_date_shows_the_check_mark_at_once(local_backend) -> None:
    api.stage(KEPLER, "kepler-title", wait=True, show=False)
    again = api.stage(KEPLER, "kepler-title", wait=True, show=False)
    widget = widgets.JobWidget(again, follow=False)
    assert widget.title.value.startswith("✓ ")
