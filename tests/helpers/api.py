"""Calls on the staging REST API through pytest-jupyter's ``jp_fetch``."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

API = ("api", "v1", "staging")


async def post_job(jp_fetch, body, **kwargs):
    return await jp_fetch(*API, "jobs", method="POST", body=json.dumps(body), **kwargs)


async def wait_for(jp_fetch, job_id, states=("succeeded", "failed", "cancelled"), timeout=60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = json.loads((await jp_fetch(*API, "jobs", job_id)).body)
        if job["state"] in states:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job still {job['state']} after {timeout}s: {job}")
        await asyncio.sleep(0.1)


async def expect_error(coro, status, code):
    with pytest.raises(HTTPClientError) as info:
        await coro
    assert info.value.code == status
    body = json.loads(info.value.response.body)
    assert body["code"] == code, body
    assert "Traceback" not in info.value.response.body.decode()
    assert body["message"]
    return body


class EventStream:
    """``GET /events`` of a real server, read in the background: :attr:`events` collects each
    ``data:`` frame's JSON as it arrives. The stream never ends by itself: ``await stream.closed()``
    waits until the request's ``timeout`` (seconds) closes it."""

    def __init__(self, http_server_client, jp_base_url: str, jp_auth_header: dict, timeout: float) -> None:
        self.events: list[dict] = []
        self._buffer = b""
        self._fetch = asyncio.ensure_future(
            http_server_client.fetch(
                f"{jp_base_url}api/v1/staging/events",
                headers=jp_auth_header,
                streaming_callback=self._on_chunk,
                request_timeout=timeout,
            )
        )

    def _on_chunk(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            if frame.startswith(b"data: "):
                self.events.append(json.loads(frame[6:]))

    async def closed(self) -> None:
        """Wait for the timeout to close the stream (the request then fails, as expected)."""
        with pytest.raises(HTTPClientError):
            await self._fetch
