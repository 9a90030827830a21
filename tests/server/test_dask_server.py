"""The server extension on a Dask cluster (issue 15): ``StagingApp.executor_class = DaskExecutor`` with
``dask_scheduler_address``; a job's ``progress.tasks`` says how many tasks run on which worker while it
runs, through the REST API, and is null once it has ended.

A real Jupyter server (pytest-jupyter), a real ``distributed.LocalCluster`` of two worker processes on
127.0.0.1 and a throttled Range HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator

import pytest
from distributed import LocalCluster

from tests.helpers.api import API, post_job, wait_for
from tests.helpers.dask import local_cluster
from tests.helpers.jupyter import server_config
from tests.helpers.servers import RangeHTTPServer


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[LocalCluster]:
    with local_cluster() as cluster:
        yield cluster


@pytest.fixture
def jp_server_config(tmp_path, dask_cluster):
    return server_config(
        tmp_path,
        executor_class="jupyter_staging.engine.executors.DaskExecutor",
        dask_scheduler_address=dask_cluster.scheduler_address,
    )


async def test_a_job_on_dask_shows_its_tasks_per_worker_while_it_runs(jp_fetch, jp_root_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    sums = {}
    for i in range(4):
        data = os.urandom(800_000)
        (served / f"lc-{i}.fits").write_bytes(data)
        sums[f"lc-{i}"] = hashlib.sha256(data).hexdigest()
    with RangeHTTPServer(served, throttle_bytes_per_s=400_000) as http:
        manifest = {name: http.url(f"{name}.fits") for name in sums}
        response = await post_job(jp_fetch, {"manifest": manifest, "destination": "lcs"})
        assert response.code == 201
        job_id = json.loads(response.body)["id"]
        seen: list[dict] = []
        for _ in range(300):
            job = json.loads((await jp_fetch(*API, "jobs", job_id)).body)
            if job["progress"]["tasks"] and job["progress"]["tasks"]["running"]:
                seen.append(job["progress"]["tasks"])
            if job["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        done = await wait_for(jp_fetch, job_id, timeout=120)
    assert done["state"] == "succeeded", done["error"]
    assert done["progress"]["tasks"] is None
    assert seen, "no task counts while the job ran"
    assert max(len(t["workers"]) for t in seen) == 2
    assert all(w.startswith("tcp://127.0.0.1:") for t in seen for w in t["workers"])
    assert all(sum(t["workers"].values()) == t["running"] for t in seen)
    for name, digest in sums.items():
        assert (
            hashlib.sha256((jp_root_dir / "lcs" / name / f"{name}.fits").read_bytes()).hexdigest() == digest
        )
    listed = json.loads((await jp_fetch(*API, "jobs")).body)["jobs"]
    assert [j["progress"]["tasks"] for j in listed if j["id"] == job_id] == [None]
