"""Object storage as a destination, against moto's real S3 endpoint on 127.0.0.1 and a real Jupyter server.

Issue 6, acceptance 1 and 2: the Kepler light curve converted into ``s3://results/kepler/`` in three part
objects plus a manifest under the job's prefix; presigned chunk URLs that download with plain HTTP and are
refreshed after they expire; cleanup policies, TTL and cancel deleting exactly the job's prefix.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest
import requests

from jupyter_staging.destinations.core import S3Destination
from jupyter_staging.safety.control import JobControl
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import JupyterServerProcess, server_config

BUCKET = "results"


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path, sweep_interval=0.2)


@pytest.fixture
def results(s3_env):
    """moto's S3 with AWS_* set for this process (and so for the in-process Jupyter server) and the
    bucket ``results``: yields the S3 client."""
    client, _ = s3_env
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return client


def keys_below(client, prefix: str, bucket: str = BUCKET) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def job_prefix(job: dict) -> str:
    """The key prefix of a job whose destination is ``s3://results/<prefix>/<id>/``."""
    assert job["destination"].startswith(f"s3://{BUCKET}/") and job["destination"].endswith(f"/{job['id']}/")
    return job["destination"][len(f"s3://{BUCKET}/") :]


async def get_json(jp_fetch, *path):
    return json.loads((await jp_fetch(*API, *path)).body)


async def start_extension(serverapp):
    (extension,) = serverapp.extension_manager.extension_apps["jupyter_staging"]
    await extension._start_jupyter_server_extension(serverapp)
    return extension.manager


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def expiry_of(url: str) -> datetime:
    q = query(url)
    signed = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return signed + timedelta(seconds=int(q["X-Amz-Expires"]))


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- acceptance 1: Kepler into s3://results/kepler/ ---------------------------------------------------------


@pytest.mark.slow
async def test_kepler_converted_into_s3_gives_three_parts_then_the_manifest(
    jp_fetch, jp_root_dir, results, s3_server
):
    s3_server.start_recording()
    body = {
        "source": str(KEPLER),
        "destination": f"s3://{BUCKET}/kepler/",
        "convert": {"format": "parquet", "chunk_rows": 5000},
        "name": "kepler-lc",
    }
    created = json.loads((await post_job(jp_fetch, body)).body)
    assert created["destination"] == f"s3://{BUCKET}/kepler/{created['id']}/"
    job = await wait_for(jp_fetch, created["id"], timeout=120)
    s3_server.stop_recording()
    assert job["state"] == "succeeded", job
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == 3
    assert job["progress"]["rows_done"] == 14280

    prefix = job_prefix(job)
    stem = KEPLER.name.removesuffix(".fits") + ".parquet"
    parts = [f"{stem}/part-0000{i}.parquet" for i in range(3)]
    assert keys_below(results, prefix) == {*parts, "manifest.json"}

    # The manifest is the last object written under the job's prefix.
    puts = [
        urlsplit(r["url"]).path.split(f"/{prefix}", 1)[1]
        for r in s3_server.recorded()
        if r["method"] == "PUT" and f"/{prefix}" in r["url"]
    ]
    assert puts and puts[-1] == "manifest.json" and set(puts[:-1]) == set(parts), puts

    stored = json.loads(results.get_object(Bucket=BUCKET, Key=f"{prefix}manifest.json")["Body"].read())
    assert stored == await get_json(jp_fetch, "jobs", job["id"], "manifest")
    assert [o["path"] for o in stored["objects"]] == parts
    assert [o["uri"] for o in stored["objects"]] == [f"s3://{BUCKET}/{prefix}{p}" for p in parts]
    assert sum(o["rows"] for o in stored["objects"]) == 14280

    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["path"] for c in chunks] == [f"s3://{BUCKET}/{prefix}{p}" for p in parts]
    assert [c["rows"] for c in chunks] == [5000, 5000, 4280]
    tables = []
    for chunk, part in zip(chunks, parts, strict=True):
        assert chunk["state"] == "ready" and chunk["url"].startswith("http")
        # Plain HTTP, no credentials: the presigned URL is all it takes.
        response = requests.get(chunk["url"], timeout=30)
        assert response.status_code == 200
        assert sha256(response.content) == chunk["sha256"] == stored["objects"][parts.index(part)]["sha256"]
        assert len(response.content) == chunk["bytes"]
        tables.append(pq.read_table(io.BytesIO(response.content)))
        head = results.head_object(Bucket=BUCKET, Key=f"{prefix}{part}", ChecksumMode="ENABLED")
        assert head["Metadata"]["sha256"] == chunk["sha256"]
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(chunk["sha256"])).decode()
        assert head["ContentType"] == "application/vnd.apache.parquet"
    assert sum(t.num_rows for t in tables) == 14280
    assert tables[0].schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"

    # Nothing is left in the user's folder: parts went through a private scratch folder, now gone.
    assert [p for p in jp_root_dir.rglob("*") if p.is_file()] == []


async def test_refresh_of_a_local_chunk_and_unknown_chunks_are_clear_errors(jp_fetch, shared_data, results):
    job = json.loads((await post_job(jp_fetch, {"source": str(shared_data / "README.md")})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded"
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert chunks[0]["url"] is None and chunks[0]["url_expires_at"] is None
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "0", "refresh"), 400, "chunk_not_in_object_storage"
    )
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "7", "refresh"), 404, "chunk_not_found")
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "x", "refresh"), 404, "chunk_not_found")


async def test_bad_s3_destinations_are_refused(jp_fetch, results):
    source = str(KEPLER)
    for destination, code in (
        ("s3://no-such-bucket-here/x/", "destination_not_found"),
        ("s3://results/a//b/", "invalid_destination"),
        ("s3://results/a/../b/", "invalid_destination"),
        ("gs://results/a/", "unsupported_destination"),
    ):
        await expect_error(post_job(jp_fetch, {"source": source, "destination": destination}), 400, code)
    await expect_error(
        post_job(jp_fetch, {"source": source, "destination": "s3://results/x/", "method": "hardlink"}),
        400,
        "invalid_method",
    )


class TestExpiry:
    """Presigned URLs valid 2 s (``StagingApp.presign_expiry_seconds``)."""

    @pytest.fixture
    def jp_server_config(self, tmp_path):
        return {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_staging": True},
                "allow_unauthenticated_access": False,
            },
            "StagingApp": {
                "db_url": f"sqlite:///{tmp_path / 'staging-jobs.sqlite'}",
                "presign_expiry_seconds": 2,
            },
        }

    async def test_after_the_url_expires_refresh_gives_a_working_one(self, jp_fetch, results):
        body = {"source": str(KEPLER), "destination": f"s3://{BUCKET}/expiry/"}
        job = json.loads((await post_job(jp_fetch, body)).body)
        job = await wait_for(jp_fetch, job["id"], timeout=60)
        assert job["state"] == "succeeded", job

        [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
        first = chunk["url"]
        assert query(first)["X-Amz-Expires"] == "2"
        assert parse_time(chunk["url_expires_at"]) == expiry_of(first)
        assert requests.get(first, timeout=30).content == KEPLER.read_bytes()

        # moto does not enforce the expiry of presigned URLs (it would still serve `first`), so the test
        # checks what an S3 that does enforce it (AWS, MinIO, Ceph) checks: X-Amz-Date + X-Amz-Expires.
        await asyncio.sleep(max(0.0, (expiry_of(first) - datetime.now(timezone.utc)).total_seconds()) + 1.1)
        assert datetime.now(timezone.utc) > expiry_of(first)

        refreshed = await get_json(jp_fetch, "jobs", job["id"], "chunks", "0", "refresh")
        second = refreshed["url"]
        assert second != first and query(second)["X-Amz-Signature"] != query(first)["X-Amz-Signature"]
        assert parse_time(refreshed["url_expires_at"]) == expiry_of(second)
        assert expiry_of(second) > datetime.now(timezone.utc) and expiry_of(second) > expiry_of(first)
        assert {k: refreshed[k] for k in ("id", "path", "sha256", "state")} == {
            k: chunk[k] for k in ("id", "path", "sha256", "state")
        }
        assert requests.get(second, timeout=30).content == KEPLER.read_bytes()

        # Nothing about the URLs is kept: the job, its log and its manifest never show one.
        for payload in (
            await get_json(jp_fetch, "jobs", job["id"]),
            await get_json(jp_fetch, "jobs", job["id"], "log"),
            await get_json(jp_fetch, "jobs", job["id"], "manifest"),
        ):
            text = json.dumps(payload)
            assert "X-Amz-Signature" not in text and query(second)["X-Amz-Signature"] not in text


# -- acceptance 2 and the other clean-ups: exactly the job's prefix -------------------------------------


def put_siblings(client, prefix: str) -> dict[str, bytes]:
    siblings = {
        f"{prefix}keep-top.txt": b"top",
        f"{prefix}other-run/keep.txt": b"other",
        f"{prefix}other-run/manifest.json": b"{}",
    }
    for key, data in siblings.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return siblings


def assert_siblings_intact(client, siblings: dict[str, bytes]) -> None:
    for key, data in siblings.items():
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data, key


@pytest.mark.slow
async def test_delete_on_success_removes_exactly_the_job_prefix(jp_fetch, results):
    siblings = put_siblings(results, "cleanup/")
    body = {
        "source": str(KEPLER),
        "destination": f"s3://{BUCKET}/cleanup/",
        "convert": {"chunk_rows": 5000},
        "cleanup_policy": "delete_on_success",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert keys_below(results, job_prefix(job)) == set()
    assert_siblings_intact(results, siblings)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["state"] for c in chunks] == ["expired"] * 3
    assert all(c["url"] is None for c in chunks)
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "0", "refresh"), 409, "chunk_not_ready")


def test_removing_a_job_prefix_spares_a_sibling_whose_name_starts_with_it(results, tmp_path):
    job_id = "0b7e5d6c-job"
    prefix = "nested/run/"
    mine = {f"{prefix}{job_id}/a.fits": b"a", f"{prefix}{job_id}/deep/b.parquet": b"b"}
    siblings = {
        f"{prefix}{job_id}-sibling/a.fits": b"s1",  # same leading characters, another prefix
        f"{prefix}{job_id}x": b"s2",
        f"{prefix}a.fits": b"s3",
        "nested/other.txt": b"s4",
    }
    for key, data in {**mine, **siblings}.items():
        results.put_object(Bucket=BUCKET, Key=key, Body=data)
    results.create_multipart_upload(Bucket=BUCKET, Key=f"{prefix}{job_id}/unfinished.bin")

    scratch = tmp_path / "scratch" / job_id
    scratch.mkdir(parents=True)
    (scratch / "leftover.part").write_bytes(b"x")
    destination = S3Destination(job_id, f"s3://{BUCKET}/{prefix}{job_id}/", scratch)

    assert destination.remove([], [], [], keep_ready=True) == 0  # partial work only
    assert not scratch.exists()
    assert keys_below(results, f"{prefix}{job_id}/") == {"a.fits", "deep/b.parquet"}
    uploads = results.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}{job_id}/").get("Uploads", [])
    assert uploads == []

    assert destination.remove([], [], [], keep_ready=False) == 2
    assert keys_below(results, f"{prefix}{job_id}/") == set()
    assert_siblings_intact(results, siblings)

    with pytest.raises(Exception) as info:  # a prefix that is not the job's own is never taken
        S3Destination(job_id, f"s3://{BUCKET}/{prefix}", scratch)
    assert getattr(info.value, "code", None) == "invalid_destination"


def test_a_multipart_upload_is_verified_and_lands_byte_identical(results, tmp_path):
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(12 * 1024 * 1024 + 123)
    local = tmp_path / "scratch" / "job-1" / "big.bin"
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    destination = S3Destination("job-1", f"s3://{BUCKET}/multi/job-1/", local.parent, transfer_config=config)
    path = destination.put(
        local, "big.bin", size=len(data), sha256=sha256(data), content_type=None, control=JobControl()
    )
    assert path == f"s3://{BUCKET}/multi/job-1/big.bin"
    assert not local.exists()  # uploaded, then the local copy removed
    head = results.head_object(Bucket=BUCKET, Key="multi/job-1/big.bin")
    assert head["ETag"].endswith('-3"')  # three parts
    assert results.get_object(Bucket=BUCKET, Key="multi/job-1/big.bin")["Body"].read() == data


def test_an_upload_that_does_not_match_its_checksum_is_deleted_and_fails(results, tmp_path):
    from jupyter_staging.errors import VerificationFailed

    local = tmp_path / "job-2" / "a.txt"
    local.parent.mkdir()
    local.write_bytes(b"the bytes on disk")
    destination = S3Destination("job-2", f"s3://{BUCKET}/verify/job-2/", local.parent)
    with pytest.raises(VerificationFailed):
        destination.put(
            local, "a.txt", size=17, sha256=sha256(b"other bytes"), content_type=None, control=JobControl()
        )
    assert keys_below(results, "verify/job-2/") == set()
    assert local.exists()  # kept for another attempt


@pytest.mark.slow
async def test_ttl_expiry_deletes_the_job_prefix(jp_fetch, jp_serverapp, results):
    await start_extension(jp_serverapp)
    siblings = put_siblings(results, "ttl/")
    body = {"source": str(KEPLER), "destination": f"s3://{BUCKET}/ttl/", "ttl_seconds": 1}
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], states=("expired", "failed"), timeout=60)
    assert job["state"] == "expired", job
    assert keys_below(results, job_prefix(job)) == set()
    assert_siblings_intact(results, siblings)


@pytest.mark.slow
async def test_delete_on_ack_deletes_that_object_only(jp_fetch, results):
    body = {
        "source": str(KEPLER),
        "destination": f"s3://{BUCKET}/ack/",
        "convert": {"chunk_rows": 5000},
        "cleanup_policy": "delete_on_ack",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], timeout=120)
    assert job["state"] == "succeeded", job
    prefix = job_prefix(job)
    before = keys_below(results, prefix)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    await jp_fetch(*API, "jobs", job["id"], "chunks", "1", "ack", method="POST", body="")
    assert keys_below(results, prefix) == before - {chunks[1]["path"][len(f"s3://{BUCKET}/{prefix}") :]}
    after = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["state"] for c in after] == ["ready", "acked", "ready"]
    assert after[1]["url"] is None and after[0]["url"] and after[2]["url"]
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "1", "refresh"), 409, "chunk_not_ready")


# -- steering: pause, resume, cancel, recovery -------------------------------------------------------------


@pytest.fixture
def three_files(range_server):
    """Three files over throttled HTTP: a small one done at once, two that take seconds."""
    payloads = {
        "small.bin": os.urandom(20_000),
        "medium.bin": os.urandom(1_500_000),
        "large.bin": os.urandom(2_500_000),
    }
    for name, data in payloads.items():
        (range_server.root / name).write_bytes(data)
    range_server.throttle_bytes_per_s = 500_000
    return {name.split(".")[0]: (range_server.url(name), data) for name, data in payloads.items()}


async def wait_chunks(jp_fetch, job_id, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        chunks = (await get_json(jp_fetch, "jobs", job_id, "chunks"))["chunks"]
        if predicate(chunks) or time.monotonic() > deadline:
            return chunks
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_pause_and_resume_keep_uploaded_chunks(jp_fetch, results, s3_server, three_files):
    s3_server.start_recording()
    body = {
        "manifest": {n: url for n, (url, _) in three_files.items()},
        "destination": f"s3://{BUCKET}/pause/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    chunks = await wait_chunks(jp_fetch, job["id"], lambda cs: any(c["state"] == "ready" for c in cs))
    paused = json.loads((await jp_fetch(*API, "jobs", job["id"], "pause", method="POST", body="")).body)
    assert paused["state"] == "paused", paused
    ready = {c["entry"] for c in chunks if c["state"] == "ready"}
    assert "small" in ready

    resumed = json.loads((await jp_fetch(*API, "jobs", job["id"], "resume", method="POST", body="")).body)
    assert resumed["state"] in ("queued", "running", "succeeded")
    job = await wait_for(jp_fetch, job["id"], timeout=60)
    s3_server.stop_recording()
    assert job["state"] == "succeeded", job

    prefix = job_prefix(job)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    for chunk in chunks:
        url, data = three_files[chunk["entry"]]
        assert requests.get(chunk["url"], timeout=30).content == data
    # The chunk uploaded before the pause was not uploaded again.
    puts = [r for r in s3_server.recorded() if r["method"] == "PUT" and f"/{prefix}small/" in r["url"]]
    assert len(puts) == 1, [r["url"] for r in puts]
    assert keys_below(results, prefix) == {
        "small/small.bin",
        "medium/medium.bin",
        "large/large.bin",
        "manifest.json",
    }


@pytest.mark.slow
async def test_cancel_removes_the_objects_already_uploaded(jp_fetch, jp_root_dir, results, three_files):
    siblings = put_siblings(results, "cancel/")
    body = {
        "manifest": {n: url for n, (url, _) in three_files.items()},
        "destination": f"s3://{BUCKET}/cancel/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    await wait_chunks(jp_fetch, job["id"], lambda cs: any(c["state"] == "ready" for c in cs))
    prefix = job_prefix(job)
    assert "small/small.bin" in keys_below(results, prefix)

    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    job = await wait_for(jp_fetch, job["id"], states=("cancelled",), timeout=30)
    assert keys_below(results, prefix) == set()
    assert_siblings_intact(results, siblings)
    assert not [p for p in jp_root_dir.rglob("*") if p.is_file()]  # no scratch left either


@pytest.mark.slow
def test_kill_during_a_download_to_s3_then_restart_resumes_and_uploads(tmp_path, results, range_server):
    payload = os.urandom(4 * 1024 * 1024)
    (range_server.root / "survey.bin").write_bytes(payload)
    range_server.throttle_bytes_per_s = 1_000_000
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")  # inherits the AWS_* settings
    server.start()
    try:
        job = server.create_job(
            {"source": range_server.url("survey.bin"), "destination": f"s3://{BUCKET}/kill/"}
        )
        server.wait_for(job["id"], lambda j: j["progress"]["bytes_done"] > 1_000_000, timeout=30)
        server.kill()
        [part] = list((tmp_path / "root").rglob("survey.bin.part"))
        assert ".staging-scratch" in part.parts and 0 < part.stat().st_size < len(payload)
        assert keys_below(results, job_prefix(job)) == set()

        server.start()
        done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded", done
        gets = range_server.requests_for("survey.bin", "GET")
        assert gets[-1].header("Range") not in (None, "bytes=0-")  # resumed, not restarted
        key = f"{job_prefix(job)}survey.bin"
        assert results.get_object(Bucket=BUCKET, Key=key)["Body"].read() == payload
        assert not [p for p in Path(tmp_path / "root").rglob("*") if p.is_file()]
    finally:
        server.stop()
