"""Notebook widgets follow a job live and their buttons steer it through the staging API."""

from __future__ import annotations

import os
import time

from jupyter_staging.kernel import api, widgets
from tests.helpers.data import TESS, wait_until


def test_widget_follows_a_download_and_its_buttons_work(local_backend, range_server, tmp_path):
    payload = os.urandom(2 * 1024 * 1024)
    (range_server.root / "slow.bin").write_bytes(payload)
    range_server.throttle_bytes_per_s = 700_000
    job = api.stage(range_server.url("slow.bin"), "slow", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: 0.05 < widget.bar.value < 1.0)
        assert "running" in widget.title.value
        assert widget.pause_button.disabled is False and widget.resume_button.disabled is True
        assert "MB" in widget.figures.value or "kB" in widget.figures.value

        widget.pause_button.click()
        wait_until(lambda: "paused" in widget.title.value)
        assert job.refresh().state == "paused"
        frozen = widget.bar.value
        time.sleep(1.0)
        assert widget.bar.value == frozen and widget.bar.bar_style == "warning"
        assert widget.resume_button.disabled is False and widget.pause_button.disabled is True

        range_server.throttle_bytes_per_s = 0
        widget.resume_button.click()
        wait_until(lambda: "succeeded" in widget.title.value)
        assert widget.bar.value == 1.0 and widget.bar.bar_style == "success"
        assert widget.cancel_button.disabled is True
        assert "#43a047" in widget.chunk_grid.value  # the one chunk is ready
    finally:
        widget.stop()
    assert (tmp_path / "slow" / "slow.bin").read_bytes() == payload


def test_cancel_button_cancels(local_backend, range_server, tmp_path):
    (range_server.root / "slow.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    range_server.throttle_bytes_per_s = 300_000
    job = api.stage(range_server.url("slow.bin"), "cancelled", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: widget.bar.value > 0)
        widget.cancel_button.click()
        wait_until(lambda: "cancelled" in widget.title.value)
    finally:
        widget.stop()
    assert not (tmp_path / "cancelled").exists()


def test_chunk_grid_shows_each_part(local_backend):
    job = api.stage(TESS, "tess", to_parquet=True, chunk_rows=2000, wait=True, show=False)
    widget = widgets.JobWidget(job, follow=False)
    assert widget.chunk_grid.value.count("<span") == 11
    job.ack(0)
    widget.refresh()
    assert widget.chunk_grid.value.count("#1e88e5") == 1  # acked
    assert "20,076 rows" in widget.figures.value


def test_failed_job_shows_its_error(local_backend, range_server):
    job = api.stage(range_server.url("missing.fits"), "missing", show=False)
    widget = widgets.JobWidget(job)
    try:
        wait_until(lambda: "failed" in widget.title.value)
        assert "source_not_found" in widget.error.value
        assert widget.bar.bar_style == "danger"
    finally:
        widget.stop()


def test_jobs_table_lists_every_job(local_backend, shared_data):
    api.stage(shared_data / "README.md", "one", wait=True, show=False)
    api.stage(shared_data / "SHA256SUMS", "two", wait=True, show=False)
    table = widgets.JobsTable(api.list_jobs, follow=False)
    rows = [c for c in table.children if isinstance(c, widgets.JobWidget)]
    assert len(rows) == 2
    assert all("succeeded" in r.title.value for r in rows)


def test_text_progress_line():
    line = widgets.progress_text(
        {
            "state": "running",
            "progress": {
                "bytes_done": 50,
                "bytes_total": 200,
                "chunks_done": 1,
                "chunks_total": 4,
                "rows_done": 0,
                "rate": 1000.0,
                "eta_seconds": 3.0,
            },
        }
    )
    assert line.startswith("running 25.0%") and "1/4 chunks" in line and "ETA 3 s" in line
