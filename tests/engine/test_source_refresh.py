"""A presigned source URL that expired while its job was paused: submitting the same request with the URL
presigned again used to return the old job unchanged (``created=False``) and its resume read the old,
expired URL (``source_expired``); once that job had failed, a new job started from byte 0. Now the submit
gives the job the new URL (``source_refreshed``, a log line without any signature): a paused job resumes
with it from its part file, and one that failed ``source_expired`` is queued again and continues from the
bytes it kept. A URL of another object is another job, as before.

Real parts: a Range HTTP server on 127.0.0.1 refusing expired SigV4 URLs with S3's 403, moto's S3 endpoint
and its presigned URLs, the SQLite job database as it is on disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from jupyter_staging.clouds.s3 import presign_get
from jupyter_staging.engine import ranges
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import DestinationExists
from tests.helpers.leaks import assert_nowhere, database_texts
from tests.helpers.managers import manager_for

OLD, NEW = "a" * 64, "b" * 64


def signed(url: str, signature: str, *, lifetime: int) -> str:
    """``url`` as a SigV4-presigned URL signed now, valid ``lifetime`` seconds (the server checks expiry
    only; the signature is a marker to find in requests and records)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261206%2Fus-east-1%2Fs3"
        f"&X-Amz-Date={stamp}&X-Amz-Expires={lifetime}&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
    )


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def paused_part_way(manager: StagingManager, server, name: str, data: bytes, dest: str, lifetime: int):
    """A job of ``name`` (``data``) under a URL signed ``OLD`` valid ``lifetime`` s, paused part way once
    that URL expired. Returns the job and the bytes its part file holds."""
    (server.root / name).write_bytes(data)
    server.check_expiry = True
    server.throttle_bytes_per_s = 300_000
    job, created = manager.create(
        CreateJob(source=signed(server.url(name), OLD, lifetime=lifetime), destination=dest)
    )
    assert created
    wait_until(lambda: manager.get(job.id).progress.bytes_done > 150_000)
    assert manager.pause(job.id).state == "paused"
    time.sleep(lifetime + 1.5)  # the URL's lifetime is over
    return job


def ranged_gets(server, signature: str) -> list[str]:
    return [
        r.headers.get("Range", "")
        for r in server.requests
        if r.method == "GET" and signature in r.path and r.headers.get("Range", "") != "bytes=0-0"
    ]


def test_a_paused_job_takes_the_url_presigned_again_and_resumes_from_its_part_file(
    manager: StagingManager, range_server, root: Path, tmp_path: Path
):
    data = os.urandom(1_500_000)
    job = paused_part_way(manager, range_server, "k.bin", data, "out", lifetime=2)
    kept = manager.get(job.id).progress.bytes_done

    again, created = manager.create(
        CreateJob(source=signed(range_server.url("k.bin"), NEW, lifetime=600), destination="out")
    )
    assert (again.id, created, again.state.value, again.source_refreshed) == (job.id, False, "paused", True)
    assert OLD not in again.model_dump_json() and NEW not in again.model_dump_json()

    range_server.throttle_bytes_per_s = 0
    manager.resume(job.id)
    done = manager.wait(job.id, timeout=60)
    assert done.state.value == "succeeded", done.error
    assert sha256(root / "out" / "k.bin") == hashlib.sha256(data).hexdigest()
    # The resume read the new URL, from the bytes kept (a ranged GET), and never the expired one again.
    starts = [int(r.split("=")[1].split("-")[0]) for r in ranged_gets(range_server, NEW) if r]
    assert starts and min(starts) >= min(kept, 100_000) and min(starts) > 0
    log = [line["message"] for line in manager.job_log(job.id)]
    assert any("presigned URL refreshed" in line for line in log), log
    assert_nowhere([OLD, NEW], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")


def test_a_job_that_failed_source_expired_is_continued_by_a_submit_with_a_new_url(
    manager: StagingManager, range_server, root: Path, tmp_path: Path
):
    data = os.urandom(1_500_000)
    job = paused_part_way(manager, range_server, "k.bin", data, "out", lifetime=2)
    manager.resume(job.id)
    failed = manager.wait(job.id, timeout=30)
    assert (failed.state.value, failed.error and failed.error.code) == ("failed", "source_expired")
    parts = [p for p in (root / "out").rglob("*") if p.name.endswith(".part")]
    assert parts and data.startswith(parts[0].read_bytes()), "the bytes received are kept"
    kept = parts[0].stat().st_size

    range_server.throttle_bytes_per_s = 0
    again, created = manager.create(
        CreateJob(source=signed(range_server.url("k.bin"), NEW, lifetime=600), destination="out")
    )
    assert (again.id, created, again.source_refreshed) == (job.id, False, True)
    assert again.state.value in ("queued", "running", "succeeded") and again.error is None
    done = manager.wait(job.id, timeout=60)
    assert done.state.value == "succeeded", done.error
    assert done.error is None and done.finished_at is not None
    assert sha256(root / "out" / "k.bin") == hashlib.sha256(data).hexdigest()
    assert not [p for p in (root / "out").rglob("*") if p.name.endswith(".part")]
    starts = [int(r.split("=")[1].split("-")[0]) for r in ranged_gets(range_server, NEW) if r]
    assert starts and min(starts) == kept, "continued from the bytes kept, not from byte 0"
    log = [line["message"] for line in manager.job_log(job.id)]
    assert any("queued again" in line for line in log), log
    assert_nowhere([OLD, NEW], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")

    # Asked again, the job answers up to date: nothing is revived twice.
    third, created = manager.create(
        CreateJob(source=signed(range_server.url("k.bin"), "c" * 64, lifetime=600), destination="out")
    )
    assert (third.id, created, third.up_to_date, third.source_refreshed) == (job.id, False, True, False)


def test_a_url_of_another_object_or_a_job_failed_otherwise_is_a_new_job(
    manager: StagingManager, range_server, root: Path
):
    (range_server.root / "gone.bin").write_bytes(b"x" * 1000)
    (range_server.root / "other.bin").write_bytes(b"y" * 1000)
    range_server.check_expiry = True
    url = signed(range_server.url("gone.bin"), OLD, lifetime=600)
    (range_server.root / "gone.bin").unlink()
    first, _ = manager.create(CreateJob(source=url, destination="a"))
    assert manager.wait(first.id, timeout=30).error.code == "source_not_found"
    (range_server.root / "gone.bin").write_bytes(b"x" * 1000)
    second, created = manager.create(
        CreateJob(source=signed(range_server.url("gone.bin"), NEW, lifetime=600), destination="a")
    )
    assert created and second.id != first.id and not second.source_refreshed
    assert manager.wait(second.id, timeout=30).state.value == "succeeded"

    held, _ = manager.create(CreateJob(source=url.replace("gone", "other"), destination="b"), start=False)
    manager.pause(held.id)
    manager.submit(held.id, recorded=True)
    with pytest.raises(DestinationExists):  # another object into the folder a paused job holds
        manager.create(
            CreateJob(source=signed(range_server.url("gone.bin"), NEW, lifetime=600), destination="b")
        )
    assert manager.get(held.id).state.value == "paused"


def test_a_paused_manifest_job_takes_its_entries_urls_presigned_again(
    manager: StagingManager, range_server, root: Path, tmp_path: Path
):
    first, second = os.urandom(900_000), os.urandom(700_000)
    (range_server.root / "one.bin").write_bytes(first)
    (range_server.root / "two.bin").write_bytes(second)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 300_000

    def manifest(signature: str, lifetime: int) -> dict[str, str]:
        return {
            "one": signed(range_server.url("one.bin"), signature, lifetime=lifetime),
            "two": signed(range_server.url("two.bin"), signature, lifetime=lifetime),
        }

    job, _ = manager.create(CreateJob(manifest=manifest(OLD, 2), destination="m"))
    wait_until(lambda: manager.get(job.id).progress.bytes_done > 150_000)
    manager.pause(job.id)
    time.sleep(3.5)
    again, created = manager.create(CreateJob(manifest=manifest(NEW, 600), destination="m"))
    assert (again.id, created, again.source_refreshed) == (job.id, False, True)
    range_server.throttle_bytes_per_s = 0
    manager.resume(job.id)
    done = manager.wait(job.id, timeout=60)
    assert done.state.value == "succeeded", done.error
    assert sha256(root / "m" / "one" / "one.bin") == hashlib.sha256(first).hexdigest()
    assert sha256(root / "m" / "two" / "two.bin") == hashlib.sha256(second).hexdigest()
    log = [line["message"] for line in manager.job_log(job.id)]
    assert any("manifest entries' presigned URLs refreshed" in line for line in log), log
    assert_nowhere([OLD, NEW], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")


@pytest.mark.slow
def test_an_s3_presigned_url_signed_again_is_the_one_a_resumed_job_reads(
    manager: StagingManager, s3_env, s3_server, root: Path, tmp_path: Path
):
    s3, bucket = s3_env
    data = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key="lc/k.bin", Body=data)
    old = presign_get(f"s3://{bucket}/lc/k.bin", 60)
    job, _ = manager.create(CreateJob(source=old, destination="s3out"), start=False)
    manager.pause(job.id)
    manager.submit(job.id, recorded=True)
    time.sleep(1.1)  # another X-Amz-Date: another signature
    new = presign_get(f"s3://{bucket}/lc/k.bin", 600)
    old_sig, new_sig = (u.split("X-Amz-Signature=")[1].split("&")[0] for u in (old, new))
    assert old_sig != new_sig
    again, created = manager.create(CreateJob(source=new, destination="s3out"))
    assert (again.id, created, again.source_refreshed) == (job.id, False, True)
    s3_server.start_recording()
    manager.resume(job.id)
    assert manager.wait(job.id, timeout=60).state.value == "succeeded"
    assert sha256(root / "s3out" / "k.bin") == hashlib.sha256(data).hexdigest()
    urls = " ".join(str(r) for r in s3_server.recorded())
    assert new_sig in urls and old_sig not in urls
    log = [line["message"] for line in manager.job_log(job.id)]
    assert_nowhere([old_sig, new_sig], log + database_texts(tmp_path / "jobs.sqlite"), "the job's records")


def test_a_download_on_parallel_streams_keeps_its_finished_ranges_for_the_new_url(
    range_server, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(ranges, "STREAM_MIN_BYTES", 1024**2)
    monkeypatch.setattr(ranges, "STREAM_RANGE_BYTES", 1024**2)
    data = os.urandom(8 * 1024**2)  # 8 ranges of 1 MiB on 2 streams
    (range_server.root / "big.bin").write_bytes(data)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 1_500_000
    manager = manager_for(tmp_path, streams_per_file=2)
    try:
        signed_at = time.time()
        job, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), OLD, lifetime=4), destination="o")
        )
        wait_until(lambda: manager.get(job.id).progress.bytes_done > 3 * 1024**2)
        manager.pause(job.id)
        time.sleep(max(0.0, signed_at + 5.5 - time.time()))
        manager.resume(job.id)
        assert manager.wait(job.id, timeout=30).error.code == "source_expired"
        assert (root / "o" / "big.bin.part").stat().st_size == len(data)  # pre-sized, its ranges kept

        range_server.throttle_bytes_per_s = 0
        again, _ = manager.create(
            CreateJob(source=signed(range_server.url("big.bin"), NEW, lifetime=600), destination="o")
        )
        assert again.id == job.id and again.source_refreshed
        assert manager.wait(job.id, timeout=60).state.value == "succeeded"
        assert sha256(root / "o" / "big.bin") == hashlib.sha256(data).hexdigest()
        fetched = ranged_gets(range_server, NEW)
        assert 0 < len(fetched) < 8, "only the ranges not finished before are fetched again"
        log = "\n".join(line["message"] for line in manager.job_log(job.id))
        assert "ranges left" in log
    finally:
        manager.stop()
