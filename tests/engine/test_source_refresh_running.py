"""A presigned source URL signed again while its job runs: the submit answered ``source_refreshed`` and the
job's log said the run keeps the URL it started with, yet once that URL expired (the next range of a
download on parallel streams, the next entry of a manifest) the job failed ``source_expired`` and dropped
the new URL with its other secrets: the user had to submit a third time. Now the run that meets the expiry
queues the job again and the next run continues with the new URL, from the ranges and entries finished.
A new URL that expires too still ends the job ``source_expired``, once.

Real parts: a Range HTTP server on 127.0.0.1 refusing expired SigV4 URLs with S3's 403, the SQLite job
database.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from jupyter_staging.engine import ranges
from jupyter_staging.engine.models import CreateJob
from tests.engine.test_source_refresh import NEW, OLD, ranged_gets, sha256, signed, wait_until
from tests.helpers.leaks import assert_nowhere, database_texts
from tests.helpers.managers import manager_for

CONTINUED = "the presigned URL this run started with expired: continuing with the new one"


def log_of(manager, job_id: str) -> list[str]:
    return [line["message"] for line in manager.job_log(job_id)]


def test_a_download_on_parallel_streams_continues_with_the_url_submitted_while_it_ran(
    range_server, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(ranges, "STREAM_MIN_BYTES", 1024**2)
    monkeypatch.setattr(ranges, "STREAM_RANGE_BYTES", 512 * 1024)
    data = os.urandom(6 * 1024**2)  # 12 ranges on 2 streams, a new request every few tenths of a second
    (range_server.root / "big.bin").write_bytes(data)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 1_000_000
    manager = manager_for(tmp_path, streams_per_file=2)
    try:
        job, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), OLD, lifetime=2), destination="o")
        )
        wait_until(lambda: manager.get(job.id).progress.bytes_done > 256 * 1024)
        again, created = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), NEW, lifetime=600), destination="o")
        )
        assert (again.id, created, again.source_refreshed) == (job.id, False, True)
        assert again.state.value == "running"

        done = manager.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", done.error
        assert sha256(root / "o" / "big.bin") == hashlib.sha256(data).hexdigest()
        assert not list((root / "o").glob("*.part"))
        fetched = ranged_gets(range_server, NEW)
        assert fetched, "the new URL was read"
        assert len(fetched) < 12, "the ranges finished under the old URL are not fetched again"
        log = log_of(manager, job.id)
        assert log.count(CONTINUED) == 1, log
        assert not any(line.startswith("failed") for line in log), log
        assert_nowhere([OLD, NEW], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")
    finally:
        manager.stop()


def test_a_manifest_job_stages_the_entries_left_with_the_urls_submitted_while_it_ran(
    range_server, root: Path, tmp_path: Path
):
    first, second = os.urandom(900_000), os.urandom(300_000)
    (range_server.root / "one.bin").write_bytes(first)
    (range_server.root / "two.bin").write_bytes(second)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 300_000  # entry one takes 3 s; entry two is asked for after that

    def manifest(signature: str, lifetime: int) -> dict[str, str]:
        return {
            "one": signed(range_server.url("one.bin"), signature, lifetime=lifetime),
            "two": signed(range_server.url("two.bin"), signature, lifetime=lifetime),
        }

    manager = manager_for(tmp_path, concurrent_items=1)
    try:
        job, _ = manager.create(CreateJob(manifest=manifest(OLD, 2), destination="m"))
        wait_until(lambda: manager.get(job.id).progress.bytes_done > 100_000)
        again, _ = manager.create(CreateJob(manifest=manifest(NEW, 600), destination="m"))
        assert (again.id, again.source_refreshed) == (job.id, True)

        done = manager.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", "\n".join(log_of(manager, job.id))
        assert sha256(root / "m" / "one" / "one.bin") == hashlib.sha256(first).hexdigest()
        assert sha256(root / "m" / "two" / "two.bin") == hashlib.sha256(second).hexdigest()
        one_again = [r for r in range_server.requests if NEW in r.path and "one.bin" in r.path]
        assert not one_again, "the entry staged under the old URL is not fetched again"
        log = log_of(manager, job.id)
        assert log.count(CONTINUED) == 1, log
        assert_nowhere([OLD, NEW], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")
    finally:
        manager.stop()


def test_a_new_url_that_expires_too_ends_the_job_source_expired_once(
    range_server, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(ranges, "STREAM_MIN_BYTES", 1024**2)
    monkeypatch.setattr(ranges, "STREAM_RANGE_BYTES", 512 * 1024)
    data = os.urandom(6 * 1024**2)
    (range_server.root / "big.bin").write_bytes(data)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 500_000
    manager = manager_for(tmp_path, streams_per_file=2)
    try:
        job, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), OLD, lifetime=2), destination="o")
        )
        wait_until(lambda: manager.get(job.id).progress.bytes_done > 256 * 1024)
        again, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), NEW, lifetime=3), destination="o")
        )
        assert again.source_refreshed
        done = manager.wait(job.id, timeout=60)
        assert (done.state.value, done.error and done.error.code) == ("failed", "source_expired")
        log = log_of(manager, job.id)
        assert log.count(CONTINUED) == 1, log
        time.sleep(1.0)
        assert manager.get(job.id).state.value == "failed", "not queued again for the same URL"
        assert (root / "o" / "big.bin.part").exists(), "the bytes received are kept for a submit"
    finally:
        manager.stop()


def test_a_url_submitted_as_the_run_records_its_expiry_is_not_lost(
    range_server, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A submit of the URL presigned again landing after the run found its URL expired and no new one, but
    before it recorded the failure (a race: injected there), was answered ``source_refreshed`` ("this run
    continues with them if the ones it started with expire"), yet the job then ended ``source_expired`` and
    dropped the new URL with its secrets: a third submit was needed. The failure is now recorded only while
    the job holds the URL the run started with; else the job is queued again and continues with the new
    one."""
    from jupyter_staging.engine.runner import JobRunner

    monkeypatch.setattr(ranges, "STREAM_MIN_BYTES", 1024**2)
    monkeypatch.setattr(ranges, "STREAM_RANGE_BYTES", 512 * 1024)
    data = os.urandom(6 * 1024**2)  # 12 ranges on 2 streams: the URL expires mid-way
    (range_server.root / "big.bin").write_bytes(data)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 500_000
    manager = manager_for(tmp_path, streams_per_file=2)
    answers = []
    checked = JobRunner._requeued

    def refreshed_meanwhile(runner: JobRunner, failed: dict[str, str]) -> bool:
        requeued = checked(runner, failed)
        if not requeued and not answers:  # the submit lands right after the run's check
            again, _ = manager.create(
                CreateJob(source=signed(range_server.url("big.bin"), NEW, lifetime=600), destination="o")
            )
            answers.append(again)
        return requeued

    monkeypatch.setattr(JobRunner, "_requeued", refreshed_meanwhile)
    try:
        job, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), OLD, lifetime=2), destination="o")
        )
        done = manager.wait(job.id, timeout=60)
        assert len(answers) == 1, (done.state, done.error, log_of(manager, job.id))
        assert answers[0].source_refreshed and answers[0].id == job.id
        assert done.state.value == "succeeded", (done.error, log_of(manager, job.id))
        assert sha256(root / "o" / "big.bin") == hashlib.sha256(data).hexdigest()
        log = log_of(manager, job.id)
        assert log.count(CONTINUED) == 1, log
        assert not any(line.startswith("failed") for line in log), log
    finally:
        manager.stop()
