"""Steering jobs through the REST API: pause / resume, cancel, chunk ack, cleanup policies, TTL, events."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from tests.helpers.api import API, EventStream, expect_error, post_job, wait_for
from tests.helpers.data import TESS
from tests.helpers.jupyter import server_config


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path, sweep_interval=0.2)


async def start_extension(serverapp):
    """Run the extension's start hook (recovery, TTL sweeper), as a real server start does."""
    (extension,) = serverapp.extension_manager.extension_apps["jupyter_staging"]
    await extension._start_jupyter_server_extension(serverapp)
    return extension.manager


@pytest.fixture
def slow_file(range_server):
    payload = os.urandom(3 * 1024 * 1024)
    (range_server.root / "slow.bin").write_bytes(payload)
    range_server.throttle_bytes_per_s = 1_000_000
    return range_server.url("slow.bin"), payload


async def job_state(jp_fetch, job_id):
    return json.loads((await jp_fetch(*API, "jobs", job_id)).body)


async def test_pause_freezes_bytes_and_resume_completes(jp_fetch, jp_root_dir, slow_file, range_server):
    url, payload = slow_file
    job = json.loads((await post_job(jp_fetch, {"source": url, "destination": "staging/slow"})).body)
    await wait_for(jp_fetch, job["id"], states=("running",))
    while (await job_state(jp_fetch, job["id"]))["progress"]["bytes_done"] < 200_000:
        await asyncio.sleep(0.05)

    paused = json.loads((await jp_fetch(*API, "jobs", job["id"], "pause", method="POST", body="")).body)
    assert paused["state"] == "paused"
    frozen = paused["progress"]["bytes_done"]
    part = jp_root_dir / "staging" / "slow" / "slow.bin.part"
    size_at_pause = part.stat().st_size
    await asyncio.sleep(2)
    again = await job_state(jp_fetch, job["id"])
    assert again["state"] == "paused" and again["progress"]["bytes_done"] == frozen
    assert part.stat().st_size == size_at_pause < len(payload)

    resumed = json.loads((await jp_fetch(*API, "jobs", job["id"], "resume", method="POST", body="")).body)
    assert resumed["state"] in ("queued", "running")
    range_server.throttle_bytes_per_s = 0
    done = await wait_for(jp_fetch, job["id"])
    assert done["state"] == "succeeded", done
    staged = jp_root_dir / "staging" / "slow" / "slow.bin"
    assert hashlib.sha256(staged.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert range_server.requests_for("slow.bin", "GET")[-1].header("Range") == f"bytes={size_at_pause}-"


async def test_pause_a_finished_job_is_409(jp_fetch, shared_data):
    job = json.loads((await post_job(jp_fetch, {"source": str(shared_data / "README.md")})).body)
    await wait_for(jp_fetch, job["id"])
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "pause", method="POST", body=""), 409, "invalid_state"
    )
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "resume", method="POST", body=""), 409, "invalid_state"
    )


async def test_cancel_a_running_download_removes_partial_output(jp_fetch, jp_root_dir, slow_file):
    url, _ = slow_file
    job = json.loads((await post_job(jp_fetch, {"source": url, "destination": "staging/cancel"})).body)
    while (await job_state(jp_fetch, job["id"]))["progress"]["bytes_done"] < 100_000:
        await asyncio.sleep(0.05)
    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    assert (await job_state(jp_fetch, job["id"]))["state"] == "cancelled"
    assert not (jp_root_dir / "staging" / "cancel").exists()


async def test_cancel_keeps_a_file_the_user_put_at_the_parts_name(jp_fetch, jp_root_dir, slow_file):
    """The user moves a file of theirs onto the ``.part`` name while the download runs, then cancels: the
    job's own bytes go, the user's file stays (untagged: not the job's), and so does the folder holding
    it. Before, the cleanup removed whatever the ``.part`` name held."""
    url, _ = slow_file
    job = json.loads((await post_job(jp_fetch, {"source": url, "destination": "staging/mine"})).body)
    while (await job_state(jp_fetch, job["id"]))["progress"]["bytes_done"] < 100_000:
        await asyncio.sleep(0.05)
    folder = jp_root_dir / "staging" / "mine"
    (parts,) = [p for p in folder.iterdir() if p.name.endswith(".part")]
    (folder / "notes.tmp").write_bytes(b"the user's notes")
    os.replace(folder / "notes.tmp", parts)
    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    assert (await job_state(jp_fetch, job["id"]))["state"] == "cancelled"
    assert [p.name for p in folder.iterdir()] == [parts.name]
    assert parts.read_bytes() == b"the user's notes"


async def test_tess_chunks_and_ack_with_delete_on_ack(jp_fetch, jp_root_dir):
    body = {
        "source": str(TESS),
        "destination": "staging/tess",
        "convert": {"chunk_rows": 2000},
        "cleanup_policy": "delete_on_ack",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert len(chunks) == 11 and sum(c["rows"] for c in chunks) == 20076
    folder = jp_root_dir / "staging" / "tess"

    acked = json.loads(
        (await jp_fetch(*API, "jobs", job["id"], "chunks", "0", "ack", method="POST", body="")).body
    )
    assert acked["state"] == "acked"
    assert not (folder / chunks[0]["path"]).exists()
    rest = pq.read_table([folder / c["path"] for c in chunks[1:]])
    assert rest.num_rows == 20076 - 2000
    states = [
        c["state"] for c in json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    ]
    assert states == ["acked"] + ["ready"] * 10
    # Acking again is harmless; unknown chunks are 404.
    await jp_fetch(*API, "jobs", job["id"], "chunks", "0", "ack", method="POST", body="")
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "99", "ack", method="POST", body=""),
        404,
        "chunk_not_found",
    )


async def test_delete_on_success_removes_output(jp_fetch, jp_root_dir, shared_data):
    body = {
        "source": str(shared_data / "README.md"),
        "destination": "staging/tmp",
        "cleanup_policy": "delete_on_success",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded"
    assert not (jp_root_dir / "staging" / "tmp").exists()
    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert [c["state"] for c in chunks] == ["expired"]


async def test_ttl_expiry_removes_the_folder(jp_fetch, jp_root_dir, shared_data, jp_serverapp):
    await start_extension(jp_serverapp)
    neighbour = jp_root_dir / "staging" / "neighbour.txt"
    neighbour.parent.mkdir(parents=True)
    neighbour.write_text("not ours")
    body = {"source": str(shared_data / "README.md"), "destination": "staging/short", "ttl_seconds": 1}
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert job["expires_at"] is not None
    await wait_for(jp_fetch, job["id"], states=("expired",), timeout=20)
    assert not (jp_root_dir / "staging" / "short").exists()
    assert neighbour.read_text() == "not ours"


async def test_events_stream_progress_with_job_ids(
    jp_fetch, http_server_client, jp_base_url, jp_auth_header, slow_file, range_server
):
    url, _ = slow_file
    range_server.throttle_bytes_per_s = 2_000_000
    stream = EventStream(http_server_client, jp_base_url, jp_auth_header, timeout=4)
    await asyncio.sleep(0.3)
    job = json.loads((await post_job(jp_fetch, {"source": url, "destination": "staging/events"})).body)
    await stream.closed()
    mine = [e for e in stream.events if e["job"]["id"] == job["id"]]
    assert mine and all(e["type"] == "job" for e in mine)
    running = [e for e in mine if e["job"]["state"] == "running"]
    assert len(running) >= 3
    progress = [e["job"]["progress"]["bytes_done"] for e in running]
    assert progress == sorted(progress) and progress[-1] > progress[0]
    assert len(running) <= 4 * 5 + 5  # throttled: a few per second over ~4 s
    assert any(e["job"]["progress"]["rate"] for e in running)
