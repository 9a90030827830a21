"""The notebook job widget tells the truth once a job ends (issue 13), checked in-process on real jobs.

A finished job shows its outcome — chunks, bytes and rows staged, a link to its folder relative to the
notebook — and no Pause / Resume / Cancel buttons, which could do nothing; a running job keeps them. The
percentage shown never exceeds 100 %. A conversion that did not apply (an image asked for as Parquet) shows
the server's notice. The browser side of the same widget is ``test_notebook_widget.py``.
"""

from __future__ import annotations

import os

import pytest

from jupyter_staging.kernel import api, widgets
from tests.helpers.data import SHARED_DATA, TESS, wait_until

IMAGE = SHARED_DATA / "allsky_rosat.fits"  # an image and no table


def test_a_finished_job_shows_its_outcome_and_no_buttons(
    local_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = api.stage(TESS, "tess", to_parquet=True, chunk_rows=2000, wait=True, show=False)
    monkeypatch.chdir(local_backend.root_dir)
    widget = widgets.JobWidget(job, follow=False)
    assert widget.buttons.layout.display == "none"
    assert "✓ Staged: 11 chunks" in widget.outcome.value
    assert "20,076 rows" in widget.outcome.value
    assert '<a href="tess"' in widget.outcome.value
    assert widget.figures.value.startswith("<code>100.0%")
    assert widget.bar.value == 1.0


def test_a_running_job_keeps_its_buttons_until_it_ends(local_backend, range_server) -> None:
    (range_server.root / "slow-outcome.bin").write_bytes(os.urandom(1_500_000))
    range_server.throttle_bytes_per_s = 500_000
    job = api.stage(range_server.url("slow-outcome.bin"), "slow-outcome", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "running" in widget.title.value, 15, "the job to run")
        assert widget.buttons.layout.display == ""
        assert widget.outcome.value == ""
        wait_until(lambda: "succeeded" in widget.title.value, 30, "the job to succeed")
        assert widget.buttons.layout.display == "none"
        assert "1 chunk " in widget.outcome.value
    finally:
        widget.stop()


def test_a_failed_job_says_how_far_it_got(local_backend, range_server) -> None:
    job = api.stage(range_server.url("missing-outcome.fits"), "missing-outcome", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "failed" in widget.title.value, 30, "the job to fail")
        assert widget.outcome.value.startswith("<span>✗ Failed after 0 chunks")
        assert "source_not_found" in widget.error.value
        assert widget.buttons.layout.display == "none"
    finally:
        widget.stop()


def test_a_cancelled_jobs_removed_folder_is_not_linked(local_backend, range_server) -> None:
    """Cancel removes the partial output: before, the outcome still linked ``folder slow-cancel/``, which
    JupyterLab could not open. Now it says the folder was removed, and links nothing."""
    (range_server.root / "slow-cancel.bin").write_bytes(os.urandom(1_500_000))
    range_server.throttle_bytes_per_s = 300_000
    job = api.stage(range_server.url("slow-cancel.bin"), "slow-cancel", show=False)
    wait_until(lambda: job.refresh().progress["bytes_done"] > 0, 15, "bytes to move")
    job.cancel()
    wait_until(lambda: job.refresh().state == "cancelled", 15, "the cancel")
    assert not (local_backend.root_dir / "slow-cancel").exists()
    widget = widgets.JobWidget(job, follow=False)
    assert widget.outcome.value.startswith("<span>✗ Cancelled after 0 chunks")
    assert "<code>slow-cancel/</code> (removed)" in widget.outcome.value
    assert "<a " not in widget.outcome.value


def test_an_image_asked_for_as_parquet_shows_the_notice(local_backend) -> None:
    job = api.stage(IMAGE, "rosat", to_parquet=True, wait=True, show=False)
    widget = widgets.JobWidget(job, follow=False)
    assert job.state == "succeeded"
    notices = widgets.job_notices(job.as_dict())
    assert notices, job.as_dict()
    assert "not a table" in widget.notice.value
