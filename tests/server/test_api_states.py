"""Each verb of the REST API in the job states where it cannot do what it says: the answer is a 4xx with a
stable ``code``, never a 200 that reports a change the job will not make."""

from __future__ import annotations

import json

import pytest

from tests.engine.test_swap_recovery import staged_and_edited
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.crashes import killed_part_way
from tests.helpers.jupyter import server_config


@pytest.fixture
def jp_root_dir(tmp_path):
    """The root ``killed_part_way`` stages into (``tmp_path / "root"``)."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def jp_server_config(tmp_path):
    """The job database ``killed_part_way`` writes (``tmp_path / "jobs.sqlite"``)."""
    config = server_config(tmp_path)
    config["StagingApp"]["db_url"] = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return config


async def start_extension(serverapp):
    """Run the extension's start hook (recovery), as a real server start does."""
    (extension,) = serverapp.extension_manager.extension_apps["jupyter_staging"]
    await extension._start_jupyter_server_extension(serverapp)
    return extension.manager


async def test_an_expired_chunk_cannot_be_acknowledged(jp_fetch, shared_data):
    """Before, an ack of a chunk whose file clean-up removed answered 200 as if the consumer's read of it
    were recorded; it is a 409 ``chunk_expired`` now, and the chunk stays ``expired``."""
    body = {
        "source": str(shared_data / "README.md"),
        "destination": "staging/gone",
        "cleanup_policy": "delete_on_success",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert (await wait_for(jp_fetch, job["id"]))["state"] == "succeeded"
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "0", "ack", method="POST", body=""), 409, "chunk_expired"
    )
    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert [c["state"] for c in chunks] == ["expired"]


async def test_a_pause_once_the_swap_started_is_refused(jp_fetch, jp_serverapp, tmp_path):
    """A re-run whose server died once its complete output was being swapped in: the job is ``running``
    and its swap is finished by the next run, which no pause stops. Before, the pause answered 200 with the
    job running, and the job then succeeded; it is a 409 ``swap_in_progress`` now, and the job succeeds."""
    request, _ = staged_and_edited(tmp_path)
    job_id = killed_part_way(tmp_path, request, exit_at="Confined.rename:2")
    assert json.loads((await jp_fetch(*API, "jobs", job_id)).body)["state"] == "running"
    await expect_error(
        jp_fetch(*API, "jobs", job_id, "pause", method="POST", body=""), 409, "swap_in_progress"
    )
    await start_extension(jp_serverapp)  # the swap is finished: the job succeeds, never paused
    done = await wait_for(jp_fetch, job_id, timeout=120)
    assert done["state"] == "succeeded", done
