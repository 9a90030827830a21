"""``StagingApp.source_roots``: local sources are confined to the configured folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jupyter_staging.server.app import StagingApp, parse_source_roots
from tests.helpers.api import expect_error, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import JupyterServerProcess, server_config


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


async def test_a_source_outside_the_roots_is_told_where_sources_may_be(jp_fetch, source_root):
    # A new user who types the README's /archive/... path in the demo learns where its sources are.
    refused = post_job(jp_fetch, {"source": "/archive/kepler/x.fits"})
    body = await expect_error(refused, 400, "path_not_allowed")
    expected = f"source '/archive/kepler/x.fits' is outside the allowed source roots: {source_root}"
    assert body["message"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/a", ["/a"]),
        (["/a", "/b"], ["/a", "/b"]),
        ("['/a', '/b']", ["/a", "/b"]),
        ('["/a", "/b"]', ["/a", "/b"]),
        ("/a:/b:", ["/a", "/b"]),
        (["['/a']", "/b:/a"], ["/a", "/b"]),
        ("", []),
        ([], []),
    ],
)
def test_parse_source_roots_reads_what_people_type(value, expected):
    assert parse_source_roots(value) == expected


@pytest.mark.parametrize("bad", ["[1, 2]", "['/a'", "[{'a': 1}]"])
def test_parse_source_roots_refuses_lists_of_other_things(bad):
    with pytest.raises(ValueError, match="folders"):
        parse_source_roots(bad)


def test_the_trait_validates_through_parse_source_roots():
    app = StagingApp(source_roots=["['/a', '/b']", "/c:/d"])
    assert app.source_roots == ["/a", "/b", "/c", "/d"]


def _flags(form: str, roots: list[str]) -> list[str]:
    """``roots`` as a command line writes them in ``form``."""
    if form == "repeated":
        return [f"--StagingApp.source_roots={root}" for root in roots]
    if form == "list":
        return ["--StagingApp.source_roots=" + repr(roots)]
    return ["--StagingApp.source_roots=" + os.pathsep.join(roots)]


def _doctor(tmp_path, flags: list[str]) -> dict:
    """``jupyter staging doctor --json`` with ``flags``, in a private Jupyter config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "AWS_", "AZURE_"))}
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "doctor-config"), JUPYTER_DATA_DIR=str(tmp_path / "dd"))
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_staging.cli", "doctor", "--json", f"--root-dir={tmp_path}", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["repeated", "list", "pathsep"])
def test_server_and_doctor_read_command_line_source_roots_alike(tmp_path, form):
    """The forms people type (``scripts/demo.sh`` once passed a list) confine the server to exactly
    those folders, and the doctor checks exactly those folders."""
    first, second = tmp_path / "archive-a", tmp_path / "archive-b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "inside.txt").write_text(folder.name)
    flags = _flags(form, [str(first), str(second)])

    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state", extra_args=flags)
    server.start()
    try:
        for folder in (first, second):
            job = server.create_job({"source": str(folder / "inside.txt")})
            assert server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"))["state"] == (
                "succeeded"
            )
        refused = server.request("POST", "jobs", json={"source": str(KEPLER)})
        assert refused.status_code == 400 and refused.json()["code"] == "path_not_allowed"
    finally:
        server.stop()

    report = _doctor(tmp_path, flags)
    roots = [c for c in report["checks"] if c["name"] == "source root"]
    assert [c["status"] for c in roots] == ["ok", "ok"]
    assert str(first) in roots[0]["message"] and str(second) in roots[1]["message"]
