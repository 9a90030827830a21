"""``StagingApp.scratch_dir``: a site puts the folder where object-store jobs prepare their files on a local
disk outside the user's root. A real Jupyter server, moto's S3 and Azurite, a throttled Range server.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from jupyter_staging.destinations.base import scratch_root_of
from tests.helpers.api import API, post_job, wait_for
from tests.helpers.jupyter import server_config


@pytest.fixture
def scratch(tmp_path):
    """The configured scratch folder: absolute, outside the server's root."""
    return tmp_path / "node-local" / "scratch"


@pytest.fixture
def jp_server_config(tmp_path, scratch):
    return server_config(tmp_path, scratch_dir=str(scratch))


async def test_object_store_jobs_prepare_their_files_in_the_configured_scratch_folder(
    jp_fetch, jp_root_dir, scratch, store, range_server
):
    payload = os.urandom(3 * 1024 * 1024)
    (range_server.root / "survey.bin").write_bytes(payload)
    range_server.throttle_bytes_per_s = 1_000_000
    body = {"source": range_server.url("survey.bin"), "destination": f"{store.root}survey/"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    for _ in range(300):
        running = json.loads((await jp_fetch(*API, "jobs", job["id"])).body)
        if running["progress"]["bytes_done"] > 500_000 or running["state"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    assert running["state"] == "running", running

    [part] = list(scratch.rglob("survey.bin.part"))
    assert part.parent == scratch / job["id"]
    assert stat.S_IMODE(part.parent.stat().st_mode) == 0o700
    assert 0 < part.stat().st_size < len(payload)
    assert not (jp_root_dir / "staging").exists()  # nothing below the user's root

    range_server.throttle_bytes_per_s = 0
    done = await wait_for(jp_fetch, job["id"], timeout=60)
    assert done["state"] == "succeeded", done
    assert store.read(f"{store.job_prefix(done)}survey.bin") == payload
    assert not (scratch / job["id"]).exists()  # the job's folder goes with the job
    assert scratch.is_dir()  # the scratch folder stays: another account could make one at its name
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700  # made private when it was missing
    assert not (jp_root_dir / "staging").exists()
    await jp_fetch(*API, "jobs", job["id"], method="DELETE")


async def test_a_scratch_folder_others_may_write_into_fails_the_job_path_not_allowed(
    jp_fetch, jp_root_dir, scratch, store, range_server
):
    (range_server.root / "survey.bin").write_bytes(os.urandom(100_000))
    scratch.mkdir(parents=True)
    scratch.chmod(0o777)  # anyone could swap a job's folder in it for their own, or a link
    body = {"source": range_server.url("survey.bin"), "destination": f"{store.root}survey/"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    done = await wait_for(jp_fetch, job["id"])
    assert done["state"] == "failed" and done["error"]["code"] == "path_not_allowed", done
    message = done["error"]["message"]
    assert "no sticky bit" in message and "StagingApp.scratch_dir" in message
    assert list(scratch.iterdir()) == []  # nothing was prepared there
    assert store.keys_below(store.job_prefix(done)) == set()

    scratch.chmod(0o1777)  # a /tmp-like folder: what this account makes in it stays its own
    job = json.loads((await post_job(jp_fetch, body)).body)
    done = await wait_for(jp_fetch, job["id"])
    assert done["state"] == "succeeded", done


def test_the_setting_is_read_as_the_doctor_reads_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = Path("/srv/users/ada")
    assert scratch_root_of(root, "staging") == root / "staging" / ".staging-scratch"
    assert scratch_root_of(root, "staging", "") == root / "staging" / ".staging-scratch"
    assert scratch_root_of(root, "staging", "fast") == root / "fast"
    assert scratch_root_of(root, "staging", "../node/scratch") == Path("/srv/users/node/scratch")  # outside
    assert scratch_root_of(root, "staging", "/mnt/ssd/./scratch/") == Path("/mnt/ssd/scratch")
    assert scratch_root_of(root, "staging", "~/scratch") == tmp_path / "home" / "scratch"
