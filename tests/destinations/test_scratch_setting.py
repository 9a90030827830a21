"""``StagingApp.scratch_dir``: a site puts the folder where object-store jobs prepare their files on a local
disk outside the user's root. A real Jupyter server, moto's S3 and Azurite, a throttled Range server.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest

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
    assert not (jp_root_dir / "staging").exists()
    await jp_fetch(*API, "jobs", job["id"], method="DELETE")
