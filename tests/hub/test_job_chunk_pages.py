"""The hub service read a job's chunk list from the user's server in one answer (``GET .../chunks``):
megabytes, all held at once, for a job of 20,000 chunks. :meth:`HubAPI.job_chunks` now reads it a page at a
time (``?offset=&limit=``, until the answer's ``total``) and still returns every chunk, in index order.

Real parts: a ``jupyter server`` with the staging extension on 127.0.0.1 copying a folder of 12 files; the
Hub's part (a token made for the user) is the server's own token here, the one thing not run for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.store import ChunkRecord
from jupyter_staging.hub.hubapi import CHUNK_PAGE, MOST_CHUNKS, HubAPI
from tests.helpers.jupyter import JupyterServerProcess


class DirectAPI(HubAPI):
    """:class:`HubAPI` calling one user's server with that server's token; it keeps the paths it asked."""

    def __init__(self, server: JupyterServerProcess) -> None:
        super().__init__("http://127.0.0.1:1/hub/api", "unused", server.url.rstrip("/"))
        self.server_token = server.token
        self.asked: list[str] = []

    async def user_token(self, name: str) -> str:
        return self.server_token

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        self.asked.append(path)
        return await super().server_api(username, server_path, method, path, body)


@pytest.fixture
def copied(tmp_path: Path) -> Iterator[tuple[JupyterServerProcess, dict[str, Any]]]:
    """A real server (job database ``tmp_path/state/jobs.sqlite``) and its succeeded ``copy`` job of a folder
    of 12 files (12 chunks, indexes 0-11); the server is stopped after the test."""
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    source = tmp_path / "root" / "incoming"
    source.mkdir(parents=True)
    for i in range(12):
        (source / f"frame-{i:02d}.dat").write_bytes(bytes([i]) * (100 + i))
    server.start()
    try:
        job = server.create_job({"source": str(source), "destination": "copied", "method": "copy"})
        server.wait_for(job["id"], lambda j: j["state"] == "succeeded", timeout=60)
        yield server, job
    finally:
        server.stop()


def test_the_chunks_of_a_job_are_read_a_page_at_a_time(copied) -> None:
    server, job = copied
    whole = server.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    assert len(whole) == 12

    api = DirectAPI(server)
    paged = asyncio.run(api.job_chunks("alice", "/", job["id"], page=5))
    assert paged == whole
    assert [path.rsplit("?", 1)[1] for path in api.asked] == [
        "offset=0&limit=5",
        "offset=5&limit=5",
        "offset=10&limit=5",
    ]
    api.asked.clear()
    assert asyncio.run(api.job_chunks("alice", "/", job["id"])) == whole
    assert api.asked == [f"api/v1/staging/jobs/{job['id']}/chunks?offset=0&limit={CHUNK_PAGE}"]
    # A page size dividing the count: the last full page ends the read (total), no empty page after it.
    api.asked.clear()
    assert asyncio.run(api.job_chunks("alice", "/", job["id"], page=4)) == whole
    assert len(api.asked) == 3
    assert asyncio.run(api.job_chunks("alice", "/", "no-such-job")) == []


def test_chunks_whose_indexes_have_gaps_are_all_read(copied, tmp_path: Path) -> None:
    """``offset`` is an index and ``total`` a count: with gaps in the indexes (12 chunks at 0-4 and 20-26)
    the read stopped once the next index passed the count (at 21 >= 12, after 0-4, 20) and lost 21-26."""
    server, job = copied
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}")
    with engine.begin() as c:  # chunks 5-11 become 20-26 (ids stay: they are not indexes)
        c.execute(
            sa.update(ChunkRecord)
            .where(ChunkRecord.job_id == job["id"], ChunkRecord.index >= 5)
            .values(index=ChunkRecord.index + 15)
        )
    engine.dispose()
    whole = server.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    assert [c["index"] for c in whole] == [*range(5), *range(20, 27)]

    api = DirectAPI(server)
    assert asyncio.run(api.job_chunks("alice", "/", job["id"], page=6)) == whole
    assert asyncio.run(api.job_chunks("alice", "/", job["id"], page=5)) == whole


class FailingAPI(DirectAPI):
    """:class:`DirectAPI` whose user's server answers 503 (restarting) from the ``fail_from``-th request."""

    def __init__(self, server: JupyterServerProcess, fail_from: int) -> None:
        super().__init__(server)
        self.fail_from = fail_from

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        if len(self.asked) + 1 >= self.fail_from:
            self.asked.append(path)
            return 503, {"message": "the server is restarting", "code": "service_unavailable"}
        return await super().server_api(username, server_path, method, path, body)


def test_a_page_answered_with_an_error_keeps_the_pages_read_before(copied) -> None:
    """A later page answered with an error (no ``total``) was taken for an earlier release's whole list:
    the chunks of the pages read before were dropped and ``[]`` returned (a job with none)."""
    server, job = copied
    whole = server.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    assert asyncio.run(FailingAPI(server, 3).job_chunks("alice", "/", job["id"], page=5)) == whole[:10]
    assert asyncio.run(FailingAPI(server, 1).job_chunks("alice", "/", job["id"], page=5)) == []


class EndlessServer(HubAPI):
    """A user's server made to answer a ``total`` of 10**12 and full pages (``pages`` of them, then an empty
    one, so that a reader without a bound ends too): the user runs it and may make it answer anything."""

    def __init__(self, pages: int) -> None:
        super().__init__("http://127.0.0.1:1/hub/api", "unused", "http://127.0.0.1:1")
        self.pages = pages
        self.asked: list[str] = []

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        self.asked.append(path)
        query = dict(part.split("=") for part in path.rsplit("?", 1)[1].split("&"))
        offset, limit = int(query["offset"]), int(query["limit"])
        count = limit if len(self.asked) <= self.pages else 0
        chunks = [{"index": offset + i, "path": f"f{offset + i}", "state": "ready"} for i in range(count)]
        return 200, {"chunks": chunks, "total": 10**12}


def test_a_server_answering_pages_without_end_is_read_up_to_a_bound() -> None:
    """Before, the service read (and kept) every page such a server answered: without end, for a server
    that never stops answering, its memory growing by a page at every answer."""
    api = EndlessServer(pages=3 * MOST_CHUNKS // CHUNK_PAGE)
    chunks = asyncio.run(api.job_chunks("mallory", "/", "job"))
    assert len(chunks) == MOST_CHUNKS
    assert len(api.asked) == MOST_CHUNKS // CHUNK_PAGE
    small = EndlessServer(pages=100)
    assert len(asyncio.run(small.job_chunks("mallory", "/", "job", page=7, most=10))) == 10
    assert [path.rsplit("?", 1)[1] for path in small.asked] == ["offset=0&limit=7", "offset=7&limit=3"]
