"""The hub service read a job's chunk list from the user's server in one answer (``GET .../chunks``):
megabytes, all held at once, for a job of 20,000 chunks. :meth:`HubAPI.job_chunks` now reads it a page at a
time (``?offset=&limit=``, until the answer's ``total``) and still returns every chunk, in index order.

Real parts: a ``jupyter server`` with the staging extension on 127.0.0.1 copying a folder of 12 files; the
Hub's part (a token made for the user) is the server's own token here, the one thing not run for real.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.store import ChunkRecord, Store
from jupyter_staging.errors import StagingError
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.db import Operation, OperationStore
from jupyter_staging.hub.hubapi import CHUNK_PAGE, MOST_CHUNKS, HubAPI
from jupyter_staging.hub.operations import Caller, StagingOperations
from tests.helpers.data import KEPLER_NAME
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
    """:class:`DirectAPI` whose user's server answers 503 (restarting) from the ``fail_from``-th request: a
    stand-in only for a 5xx answer, which a real server gives only in a race."""

    def __init__(self, server: JupyterServerProcess, fail_from: int) -> None:
        super().__init__(server)
        self.fail_from = fail_from
        self.page_retry_delays = (0.01, 0.01)

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        if len(self.asked) + 1 >= self.fail_from:
            self.asked.append(path)
            return 503, {"message": "the server is restarting", "code": "service_unavailable"}
        return await super().server_api(username, server_path, method, path, body)


def chunk_list_error(api: HubAPI, job_id: str, page: int = 5) -> StagingError:
    """The error :meth:`HubAPI.job_chunks` raises for ``job_id`` (the test fails when it returns)."""
    with pytest.raises(StagingError) as caught:
        asyncio.run(api.job_chunks("alice", "/", job_id, page=page))
    return caught.value


def test_a_page_answered_with_an_error_after_its_retries_fails_the_whole_list(copied) -> None:
    """A later page answered 503 returned the pages read before as if they were every chunk (10 of 12):
    a caller could not tell it from a job of 10. It is asked again, then the list fails, naming the page."""
    server, job = copied
    api = FailingAPI(server, 3)
    err = chunk_list_error(api, job["id"])
    assert (err.code, err.status) == ("chunk_list_failed", 502)
    assert job["id"] in err.message and "offset 10" in err.message and "10 of 12" in err.message
    assert "503" in err.message
    assert [path.rsplit("?", 1)[1] for path in api.asked] == ["offset=0&limit=5", "offset=5&limit=5"] + [
        "offset=10&limit=5"
    ] * 3  # the failing page, then its two retries
    first = chunk_list_error(FailingAPI(server, 1), job["id"])
    assert first.code == "chunk_list_failed" and "offset 0" in first.message


class BetweenPages(DirectAPI):
    """:class:`DirectAPI` calling ``between()`` once, after the server answered the first page."""

    def __init__(self, server: JupyterServerProcess, between: Any) -> None:
        super().__init__(server)
        self.between = between

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        answer = await super().server_api(username, server_path, method, path, body)
        if len(self.asked) == 1:
            self.between()
        return answer


def test_a_job_deleted_between_pages_fails_the_list(copied, tmp_path: Path) -> None:
    """The job's rows deleted from the server's database after the first page: the server answers the
    second 404 ``job_not_found`` (for real), which ended the list at the 5 chunks read."""
    server, job = copied

    def delete_job() -> None:
        store = Store(f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}")
        store.delete_job(job["id"])
        store.engine.dispose()

    api = BetweenPages(server, delete_job)
    err = chunk_list_error(api, job["id"])
    assert err.code == "chunk_list_failed"
    assert "offset 5" in err.message and "5 of 12" in err.message and "404" in err.message
    assert len(api.asked) == 2  # a 404 is not asked again
    assert chunk_list_error(DirectAPI(server), job["id"]).code == "chunk_list_failed"  # now the first page


def test_a_server_stopped_between_pages_fails_the_list_after_its_retries(copied) -> None:
    server, job = copied
    api = BetweenPages(server, server.stop)
    api.page_retry_delays = (0.05, 0.05)
    err = chunk_list_error(api, job["id"])
    assert err.code == "chunk_list_failed" and "offset 5" in err.message and "599" in err.message
    assert len(api.asked) == 4  # the first page, the second and its two retries
    assert "token" not in err.message.lower() and server.token not in err.message


def test_a_server_restarting_between_pages_is_waited_for(copied) -> None:
    """The server stopped after the first page and started again while the second is asked again: the
    list is whole, as if nothing happened."""
    server, job = copied
    whole = server.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    restarting: list[threading.Thread] = []

    def restart() -> None:
        server.stop()
        restarting.append(threading.Thread(target=server.start))
        restarting[0].start()

    api = BetweenPages(server, restart)
    api.page_retry_delays = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    try:
        assert asyncio.run(api.job_chunks("alice", "/", job["id"], page=5)) == whole
    finally:
        restarting[0].join()
    assert len(api.asked) > 3  # the second page was asked again while the server was down


class AliceServer(DirectAPI):
    """:class:`DirectAPI` whose ``ensure_server`` answers the running server (``/``); ``before_chunks`` runs
    before the first chunk read."""

    def __init__(self, server: JupyterServerProcess, before_chunks: Any) -> None:
        super().__init__(server)
        self.before_chunks = before_chunks

    async def ensure_server(self, name: str, *, timeout: float, interval: float = 0.5) -> str:
        return "/"

    async def job_chunks(
        self, username: str, server_path: str, job_id: str, *, page: int = CHUNK_PAGE
    ) -> list[dict[str, Any]]:
        before, self.before_chunks = self.before_chunks, lambda: None
        before(job_id)
        return await super().job_chunks(username, server_path, job_id, page=page)


def test_a_jupyter_copy_whose_chunks_cannot_be_read_fails_chunk_list_failed(tmp_path: Path, kepler) -> None:
    """A ``jupyter_copy`` whose job succeeded in alice's real server, then was deleted from that server's
    database before the service read its chunks: the read answered ``[]`` and the operation failed
    ``unexpected_output`` ("the job wrote no single file"), blaming the job. It fails ``chunk_list_failed``
    naming the job, and no file is at the target."""
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(kepler, archive / KEPLER_NAME)
    home = tmp_path / "homes" / "alice"
    server = JupyterServerProcess(home, tmp_path / "state")
    server.start()

    def delete_job(job_id: str) -> None:
        store = Store(f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}")
        store.delete_job(job_id)
        store.engine.dispose()

    async def go() -> Operation:
        api = AliceServer(server, delete_job)
        ops = StagingOperations(
            OperationStore(f"sqlite:///{tmp_path / 'ops.sqlite'}"),
            UserAreas(str(tmp_path / "homes" / "{username}" / "staging")),
            [str(archive)],
            api,
            server_root_template=str(tmp_path / "homes" / "{username}"),
            job_poll_interval=0.05,
        )
        body = {"method": "jupyter_copy", "local_path_on_storage": str(archive / KEPLER_NAME)}
        op = await ops.stage(Caller("alice", "user", False), json.dumps(body).encode(), None)
        assert isinstance(op, Operation)
        try:
            for _ in range(1200):
                final = ops.store.get(op.id)
                if final is not None and final.status != "running":
                    return final
                await asyncio.sleep(0.05)
            raise AssertionError("the operation did not end")
        finally:
            await ops.stop()

    try:
        final = asyncio.run(go())
    finally:
        server.stop()
    assert (final.status, final.error_code) == ("failed", "chunk_list_failed"), final.error_reason
    assert str(final.job_id) in str(final.error_reason) and "404" in str(final.error_reason)
    assert not (home / "staging" / KEPLER_NAME).exists()


class EndlessServer(HubAPI):
    """A user's server made to answer a ``total`` of ``total`` and full pages (``pages`` of them, then an
    empty one, so that a reader without a bound ends too): the user runs it and may make it answer
    anything."""

    def __init__(self, pages: int, total: int = 10**12, extra: int = 0) -> None:
        super().__init__("http://127.0.0.1:1/hub/api", "unused", "http://127.0.0.1:1")
        self.pages, self.total, self.extra = pages, total, extra
        self.asked: list[str] = []

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        self.asked.append(path)
        query = dict(part.split("=") for part in path.rsplit("?", 1)[1].split("&"))
        offset, limit = int(query["offset"]), int(query["limit"])
        count = limit + self.extra if len(self.asked) <= self.pages else 0
        chunks = [{"index": offset + i, "path": f"f{offset + i}", "state": "ready"} for i in range(count)]
        return 200, {"chunks": chunks, "total": self.total}


def test_a_server_answering_pages_without_end_is_read_up_to_a_bound() -> None:
    """Before, the service read (and kept) every page such a server answered: without end, for a server
    that never stops answering, its memory growing by a page at every answer. A job stating more chunks
    than :data:`MOST_CHUNKS`, or pages past that bound or longer than asked, fail ``chunk_list_failed``
    after one page."""
    endless = EndlessServer(pages=3 * MOST_CHUNKS // CHUNK_PAGE)
    with pytest.raises(StagingError) as caught:
        asyncio.run(endless.job_chunks("mallory", "/", "job"))
    assert caught.value.code == "chunk_list_failed" and len(endless.asked) == 1
    lying = EndlessServer(pages=100, total=10)  # says 10, keeps sending full pages: ends at 10
    assert len(asyncio.run(lying.job_chunks("mallory", "/", "job", page=7, most=10))) == 10
    assert [path.rsplit("?", 1)[1] for path in lying.asked] == ["offset=0&limit=7", "offset=7&limit=3"]
    longer = EndlessServer(pages=100, total=10, extra=5)  # more than asked for in one answer
    with pytest.raises(StagingError) as caught:
        asyncio.run(longer.job_chunks("mallory", "/", "job", page=7, most=10))
    assert caught.value.code == "chunk_list_failed" and len(longer.asked) == 1
