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
