"""A listing of a job's chunks leaves the server's event loop free (issue 12), against a real Jupyter server.

A job of 20,000 chunks, listed whole (``job.chunks``, the panel's job view, the hub's pages), held every
other request of its server for 0.2-0.5 s: the page was dumped, JSON-encoded and hashed for its ``Etag`` on
the event loop, and read and described all at once (200,000 objects, whose allocation set off the
collector's full passes). The encoding is held here in the middle of a page, deliberately: another
request is answered meanwhile, and only the slice being encoded is alive. Counts, never times.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_staging.engine.chunkpages import SLICE
from jupyter_staging.engine.models import DescribeChunk, dump
from tests.helpers.api import API, post_job, wait_for

COUNT = 5 * SLICE + 3
#: Seconds the hold waits for the test to release it: a loop it blocked frees itself then, and fails.
HOLD_SECONDS = 10.0
#: The names of this test's files (no other test's chunk models are counted).
PREFIX = "held-listing-lc-"


class EncodingHold:
    """``json.dumps`` (the real one), paused once, when it encodes chunks of the listing's third slice or
    later (a whole page at once, as before, holds at once), until :attr:`release` is set or
    :data:`HOLD_SECONDS` pass. Counts the models of this job's chunks alive at that moment."""

    def __init__(self, dumps: Callable[..., str]) -> None:
        self.dumps = dumps
        self.entered = threading.Event()
        self.release = threading.Event()
        self.timed_out: bool | None = None
        self.alive_models = -1

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> str:
        chunks = obj.get("chunks") if isinstance(obj, dict) else obj
        if (
            not self.entered.is_set()
            and isinstance(chunks, list)
            and chunks
            and isinstance(chunks[-1], dict)
            and chunks[-1].get("index", -1) >= 2 * SLICE
        ):
            objects = gc.get_objects()
            self.alive_models = sum(
                isinstance(o, DescribeChunk) and o.path.startswith(PREFIX) for o in objects
            )
            self.entered.set()
            self.timed_out = not self.release.wait(HOLD_SECONDS)
        return self.dumps(obj, *args, **kwargs)


async def status_while_held(jp_fetch, monkeypatch, hold: Any, *path: str) -> tuple[dict, bool, Any]:
    """With ``hold`` in place of ``json.dumps``, ask for ``path`` of the staging API and, once the hold has
    paused its encoding, for ``/api/status``; returns ``(status, whether the hold was still on when the status
    came, the first answer)``. A blocked event loop gets to the status request only once the hold gave up."""
    monkeypatch.setattr(json, "dumps", hold)
    request = asyncio.ensure_future(jp_fetch(*API, *path))
    try:
        while not hold.entered.is_set():
            await asyncio.sleep(0.01)
        status = json.loads((await jp_fetch("api", "status")).body)
        still_held = hold.timed_out is None
        hold.release.set()
        answer = await request
    finally:
        hold.release.set()
        monkeypatch.undo()
    return status, still_held, answer


@pytest.fixture
def many_files(tmp_path):
    folder = tmp_path / "sector"
    folder.mkdir()
    for i in range(COUNT):
        (folder / f"{PREFIX}{i:04d}.fits").write_bytes(b"SIMPLE  =  T" + bytes([i % 251]) * 50)
    return folder


async def test_a_status_request_is_answered_while_a_listing_is_held_mid_page(
    jp_fetch, jp_serverapp, many_files, monkeypatch
):
    job = json.loads((await post_job(jp_fetch, {"source": str(many_files), "destination": "sector"})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded" and job["progress"]["chunks_total"] == COUNT, job
    manager = jp_serverapp.web_app.settings["staging_manager"]
    expected = json.dumps(dump(manager.chunk_page(job["id"]))).encode()  # the answer as it always was

    hold = EncodingHold(json.dumps)
    status, still_held, answer = await status_while_held(
        jp_fetch, monkeypatch, hold, "jobs", job["id"], "chunks"
    )
    assert "started" in status
    assert still_held and hold.timed_out is False, "the status request waited for the listing's encoding"
    assert hold.alive_models <= SLICE, f"{hold.alive_models} chunk models alive at once (slices of {SLICE})"

    assert answer.body == expected
    page = json.loads(answer.body)
    assert [c["index"] for c in page["chunks"]] == list(range(COUNT)) and page["total"] == COUNT
    etag = f'"{hashlib.sha1(answer.body).hexdigest()}"'  # tornado's own Etag of the body, as before
    assert answer.headers["Etag"] == etag and answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Type"] == "application/json"
    with pytest.raises(HTTPClientError) as unchanged:
        await jp_fetch(*API, "jobs", job["id"], "chunks", headers={"If-None-Match": etag})
    assert unchanged.value.code == 304


class ManifestHold:
    """``json.dumps`` (the real one), paused once when it encodes the manifest of job ``job_id`` (whole, as
    before) or one of its objects past the second slice of files, until :attr:`release` is set or
    :data:`HOLD_SECONDS` pass. Counts the manifest's objects (dicts of one of this test's files) alive then,
    and whether the whole manifest was ever encoded at once."""

    def __init__(self, dumps: Callable[..., str], job_id: str) -> None:
        self.dumps, self.job_id = dumps, job_id
        self.entered, self.release = threading.Event(), threading.Event()
        self.timed_out: bool | None = None
        self.alive_objects = -1
        self.whole = False

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> str:
        whole = isinstance(obj, dict) and obj.get("job_id") == self.job_id
        self.whole = self.whole or whole
        if not self.entered.is_set() and (whole or _manifest_object(obj, at_least=2 * SLICE)):
            self.alive_objects = sum(_manifest_object(o) for o in gc.get_objects())
            self.entered.set()
            self.timed_out = not self.release.wait(HOLD_SECONDS)
        return self.dumps(obj, *args, **kwargs)


def _manifest_object(obj: Any, at_least: int = 0) -> bool:
    """Whether ``obj`` is a manifest's object of one of this test's files (number ``at_least`` or later)."""
    if not (isinstance(obj, dict) and "sha256" in obj and "size" in obj):
        return False
    path = obj.get("path")
    return isinstance(path, str) and path.startswith(PREFIX) and int(path[len(PREFIX) :][:4]) >= at_least


async def test_a_status_request_is_answered_while_a_manifest_is_encoded(
    jp_fetch, jp_serverapp, many_files, monkeypatch
):
    """``GET /jobs/{id}/manifest`` (6-8 MB of JSON for 20,000 files) is made on a worker thread, one of its
    objects at a time: held there, another request is answered, the manifest was never parsed nor encoded
    whole (one C call holding the GIL 40-115 ms for 20,000 files, all its objects alive at once); the answer
    and its ``Etag`` are those of before."""
    job = json.loads((await post_job(jp_fetch, {"source": str(many_files), "destination": "m"})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    manager = jp_serverapp.web_app.settings["staging_manager"]
    expected = json.dumps(manager.manifest(job["id"])).encode()
    assert sum(_manifest_object(o) for o in manager.manifest(job["id"])["objects"]) == COUNT

    hold = ManifestHold(json.dumps, job["id"])
    status, still_held, answer = await status_while_held(
        jp_fetch, monkeypatch, hold, "jobs", job["id"], "manifest"
    )
    assert "started" in status
    assert still_held and hold.timed_out is False, "the status request waited for the manifest's encoding"
    assert not hold.whole, "the whole manifest was encoded at once"
    assert hold.alive_objects <= 2, f"{hold.alive_objects} of the manifest's {COUNT} objects alive at once"
    assert answer.body == expected and answer.headers["Content-Type"] == "application/json"
    etag = f'"{hashlib.sha1(answer.body).hexdigest()}"'
    assert answer.headers["Etag"] == etag
    with pytest.raises(HTTPClientError) as unchanged:
        await jp_fetch(*API, "jobs", job["id"], "manifest", headers={"If-None-Match": etag})
    assert unchanged.value.code == 304
