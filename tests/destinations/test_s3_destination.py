"""S3 as a destination, what only S3 does or only S3 checks, against moto's real endpoint on 127.0.0.1 and a
real Jupyter server. What S3 and Azure share is checked for both in test_objectstore.py.

A local chunk has no URL to refresh; ``delete_on_ack`` deletes exactly the acknowledged object; pause and
resume keep the uploaded chunks; a killed server resumes its download after a restart and uploads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.objectstore import RESULTS, get_json, wait_chunks

BUCKET = RESULTS


@pytest.fixture
def results(s3_results):
    """moto's S3 with AWS_* set for this process and the bucket ``results`` (an S3Store; ``.client``)."""
    return s3_results


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
    prefix = results.job_prefix(job)
    before = results.keys_below(prefix)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    await jp_fetch(*API, "jobs", job["id"], "chunks", "1", "ack", method="POST", body="")
    assert results.keys_below(prefix) == before - {chunks[1]["path"][len(f"s3://{BUCKET}/{prefix}") :]}
    after = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["state"] for c in after] == ["ready", "acked", "ready"]
    assert after[1]["url"] is None and after[0]["url"] and after[2]["url"]
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "1", "refresh"), 409, "chunk_expired")


# -- steering: pause, resume, recovery ---------------------------------------------------------------


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

    prefix = results.job_prefix(job)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    for chunk in chunks:
        url, data = three_files[chunk["entry"]]
        assert requests.get(chunk["url"], timeout=30).content == data
    # The chunk uploaded before the pause was not uploaded again.
    puts = [r for r in s3_server.recorded() if r["method"] == "PUT" and f"/{prefix}small/" in r["url"]]
    assert len(puts) == 1, [r["url"] for r in puts]
    assert results.keys_below(prefix) == {
        "small/small.bin",
        "medium/medium.bin",
        "large/large.bin",
        "manifest.json",
    }


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
        assert results.keys_below(results.job_prefix(job)) == set()

        server.start()
        done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded", done
        gets = range_server.requests_for("survey.bin", "GET")
        assert gets[-1].header("Range") not in (None, "bytes=0-")  # resumed, not restarted
        key = f"{results.job_prefix(job)}survey.bin"
        assert results.read(key) == payload
        assert not [p for p in Path(tmp_path / "root").rglob("*") if p.is_file()]
    finally:
        server.stop()
