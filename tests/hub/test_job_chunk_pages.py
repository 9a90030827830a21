"""The hub service read a job's chunk list from the user's server in one answer (``GET .../chunks``):
megabytes, all held at once, for a job of 20,000 chunks. :meth:`HubAPI.job_chunks` now reads it a page at a
time (``?offset=&limit=``, until the answer's ``total``) and still returns every chunk, in index order.

Real parts: a ``jupyter server`` with the staging extension on 127.0.0.1 copying a folder of 12 files; the
Hub's part (a token made for the user) is the server's own token here, the one thing not run for real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jupyter_staging.hub.hubapi import CHUNK_PAGE, HubAPI
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


def test_the_chunks_of_a_job_are_read_a_page_at_a_time(tmp_path: Path) -> None:
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    source = tmp_path / "root" / "incoming"
    source.mkdir(parents=True)
    for i in range(12):
        (source / f"frame-{i:02d}.dat").write_bytes(bytes([i]) * (100 + i))
    server.start()
    try:
        job = server.create_job({"source": str(source), "destination": "copied", "method": "copy"})
        server.wait_for(job["id"], lambda j: j["state"] == "succeeded", timeout=60)
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
    finally:
        server.stop()
