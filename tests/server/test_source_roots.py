"""``StagingApp.source_roots``: local sources are confined to the configured folders."""

from __future__ import annotations

import json

import pytest

from tests.helpers.api import expect_error, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import server_config


@pytest.fixture
def source_root(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    (root / "inside.txt").write_text("ok")
    (root / "escape.txt").symlink_to(KEPLER)
    return root


@pytest.fixture
def jp_server_config(tmp_path, source_root):
    return server_config(tmp_path, source_roots=[str(source_root)])


async def test_source_roots_confine_local_sources(jp_fetch, source_root):
    job = json.loads((await post_job(jp_fetch, {"source": str(source_root / "inside.txt")})).body)
    assert (await wait_for(jp_fetch, job["id"]))["state"] == "succeeded"
    await expect_error(post_job(jp_fetch, {"source": str(KEPLER)}), 400, "path_not_allowed")
    await expect_error(
        post_job(jp_fetch, {"source": str(source_root / "escape.txt")}), 400, "path_not_allowed"
    )
    await expect_error(post_job(jp_fetch, {"source": str(source_root / ".." / "x")}), 400, "path_not_allowed")
