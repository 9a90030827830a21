"""Symlinks planted in the user's root, against a real server: nothing outside the root is ever written,
overwritten or deleted (issue 11, "Writes follow planted symlinks"), and hostile destinations are 4xx."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.jupyter import server_config

PAYLOAD = os.urandom(64 * 1024)


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path)


@pytest.fixture
def outside(jp_root_dir) -> Path:
    """A sibling folder of the server's root holding files a planted link points at."""
    folder = jp_root_dir.parent / "outside"
    folder.mkdir(exist_ok=True)
    (folder / "victim.bin").write_bytes(b"do not touch")
    (folder / "data.bin").write_bytes(b"same name as the chunk")
    return folder


@pytest.fixture
def source_file(jp_root_dir) -> Path:
    folder = jp_root_dir.parent / "sources"
    folder.mkdir(exist_ok=True)
    path = folder / "data.bin"
    path.write_bytes(PAYLOAD)
    return path


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry below ``folder``: a link's target, a file's bytes and mode, ``dir`` for folders."""
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = (path.read_bytes(), path.stat().st_mode)
        else:
            out[rel] = "dir"
    return out


def error_code(job) -> str | None:
    return (job.get("error") or {}).get("code")


async def test_planted_part_symlink_is_never_followed(jp_fetch, jp_root_dir, outside, source_file):
    folder = jp_root_dir / "staging" / "planted"
    folder.mkdir(parents=True)
    (folder / "data.bin.part").symlink_to(outside / "victim.bin")
    before = snapshot(outside)

    job = json.loads(
        (await post_job(jp_fetch, {"source": str(source_file), "destination": "staging/planted"})).body
    )
    job = await wait_for(jp_fetch, job["id"])

    assert snapshot(outside) == before
    if job["state"] == "succeeded":
        final = folder / "data.bin"
        assert not final.is_symlink() and final.read_bytes() == PAYLOAD
    else:
        assert error_code(job) == "path_not_allowed", job


async def test_planted_part_symlink_for_a_download(jp_fetch, jp_root_dir, outside, range_server):
    (range_server.root / "remote.bin").write_bytes(PAYLOAD)
    folder = jp_root_dir / "staging" / "dl"
    folder.mkdir(parents=True)
    (folder / "remote.bin.part").symlink_to(outside / "victim.bin")
    before = snapshot(outside)

    body = {"source": range_server.url("remote.bin"), "destination": "staging/dl"}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"])

    assert snapshot(outside) == before
    if job["state"] == "succeeded":
        assert not (folder / "remote.bin").is_symlink()
        assert (folder / "remote.bin").read_bytes() == PAYLOAD
    else:
        assert error_code(job) == "path_not_allowed", job


async def test_folder_swapped_while_paused_fails_the_resumed_job(
    jp_fetch, jp_root_dir, outside, range_server
):
    (range_server.root / "slow.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    range_server.throttle_bytes_per_s = 1_000_000
    body = {"source": range_server.url("slow.bin"), "destination": "staging/swap"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    await wait_for(jp_fetch, job["id"], states=("running",))
    folder = jp_root_dir / "staging" / "swap"
    while not (folder / "slow.bin.part").exists() or (folder / "slow.bin.part").stat().st_size < 100_000:
        await asyncio.sleep(0.05)
    paused = json.loads((await jp_fetch(*API, "jobs", job["id"], "pause", method="POST", body="")).body)
    assert paused["state"] == "paused"

    folder.rename(jp_root_dir / "staging" / "swap-moved")
    folder.symlink_to(outside)
    before = snapshot(outside)
    range_server.throttle_bytes_per_s = 0
    await jp_fetch(*API, "jobs", job["id"], "resume", method="POST", body="")
    job = await wait_for(jp_fetch, job["id"])

    assert job["state"] == "failed" and error_code(job) == "path_not_allowed", job
    assert snapshot(outside) == before
    assert "Traceback" not in job["error"]["message"]


async def test_ack_with_delete_on_ack_after_a_swap_deletes_nothing_outside(
    jp_fetch, jp_root_dir, outside, source_file
):
    body = {"source": str(source_file), "destination": "staging/acked", "cleanup_policy": "delete_on_ack"}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"])
    assert job["state"] == "succeeded", job
    folder = jp_root_dir / "staging" / "acked"
    assert (folder / "data.bin").read_bytes() == PAYLOAD

    folder.rename(jp_root_dir / "staging" / "acked-moved")
    folder.symlink_to(outside)
    before = snapshot(outside)
    try:
        await jp_fetch(*API, "jobs", job["id"], "chunks", "0", "ack", method="POST", body="")
    except HTTPClientError as err:
        assert 400 <= err.code < 500
        assert json.loads(err.response.body)["code"] == "path_not_allowed"
    assert snapshot(outside) == before
    assert (jp_root_dir / "staging" / "acked-moved" / "data.bin").read_bytes() == PAYLOAD


async def test_ack_refused_when_swapped_is_400(jp_fetch, jp_root_dir, outside, source_file):
    body = {"source": str(source_file), "destination": "staging/ack2", "cleanup_policy": "delete_on_ack"}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"])
    folder = jp_root_dir / "staging" / "ack2"
    folder.rename(jp_root_dir / "staging" / "ack2-moved")
    folder.symlink_to(outside)
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "0", "ack", method="POST", body=""),
        400,
        "path_not_allowed",
    )
    assert (outside / "data.bin").read_bytes() == b"same name as the chunk"


# -- hostile destinations ---------------------------------------------------------------------------

_DOTDOT = [
    "..",
    "../",
    "../x",
    "../../x",
    "a/../../x",
    "a/b/../../../x",
    "./../x",
    "..\\x",
    "a\\..\\..\\x",
    "..//..//x",
    "staging/../../outside",
    "x/..",
    "x/./../..",
    "../outside/victim.bin",
]
_NUL = ["a\x00b", "\x00", "x/\x00/y", "\x00/..", "ok\x00.txt"]
_DOTNAMES = [
    ".jupyter",
    ".ipython/profile_default/startup",
    ".bashrc",
    ".ssh",
    ".config/jupyter",
    ".local/share/jupyter/kernels",
    ".git/hooks",
    "..hidden",
    ".staging-scratch",
    ".x/y",
]
_RELATIVE = _DOTDOT + _NUL + _DOTNAMES
_PREFIXES = ["", "staging/", "a/b/c/"]
_SUFFIXES = ["", "/sub"]

#: Escapes that stay escapes whatever follows them: absolute paths, planted links, files as folders.
_ANCHORED = [
    "/",
    "/etc",
    "/tmp/staging-escape",
    "//etc/cron.d",
    "/../etc",
    "\\etc",
    "/proc/self/cwd",
    "{outside}",
    "{outside}/x",
    "{root}/../outside",
    "linked",
    "linked/x",
    "linked/a/b",
    "staging/link",
    "staging/link/deeper",
    "afile/x",
    "staging/afile/x",
]

#: JSON escapes decoded by the parser into something refused (``"\u002e\u002e"`` is ``".."``).
_ENCODED = [
    "\\u002e\\u002e",
    "\\u002e\\u002e/x",
    "a/\\u002e\\u002e/\\u002e\\u002e/x",
    "\\u002fetc",
    "\\u002e\\u002essh",
    "\\u002ejupyter",
    "x\\u0000y",
    "\\u002e\\u002e\\u005cx",
]


def _hostile() -> list[pytest.param]:
    cases = {
        prefix + core + suffix: "relative"
        for core in _RELATIVE
        for prefix in _PREFIXES
        for suffix in _SUFFIXES
        if (prefix + core + suffix).strip("/") not in ("", ".")
    }
    cases.update({core + suffix: "anchored" for core in _ANCHORED for suffix in ("", "/", "/y")})
    params = [pytest.param(dest, False, id=f"{kind}-{i}") for i, (dest, kind) in enumerate(cases.items())]
    params += [pytest.param(raw, True, id=f"encoded-{i}") for i, raw in enumerate(_ENCODED)]
    return params


HOSTILE = _hostile()


def test_there_are_at_least_200_hostile_destinations():
    assert len(HOSTILE) >= 200


@pytest.mark.parametrize(("destination", "raw"), HOSTILE)
async def test_hostile_destination_is_4xx_and_creates_nothing_outside(
    jp_fetch, jp_root_dir, outside, source_file, destination, raw
):
    (jp_root_dir / "linked").symlink_to(outside)
    (jp_root_dir / "staging").mkdir()
    (jp_root_dir / "staging" / "link").symlink_to(outside)
    (jp_root_dir / "afile").write_text("a file")
    (jp_root_dir / "staging" / "afile").write_text("a file")
    destination = destination.format(outside=outside, root=jp_root_dir)
    parent = jp_root_dir.parent
    before_outside = snapshot(outside)
    before_parent = sorted(p.name for p in parent.iterdir())
    source = json.dumps(str(source_file))
    dest_json = f'"{destination}"' if raw else json.dumps(destination)
    body = f'{{"source": {source}, "destination": {dest_json}}}'

    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*API, "jobs", method="POST", body=body)

    assert 400 <= info.value.code < 500, info.value.response.body
    answer = json.loads(info.value.response.body)
    assert answer.get("code"), answer
    assert "Traceback" not in info.value.response.body.decode()
    assert snapshot(outside) == before_outside
    assert sorted(p.name for p in parent.iterdir()) == before_parent
    assert not Path("/tmp/staging-escape").exists()
