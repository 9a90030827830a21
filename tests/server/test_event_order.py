"""``GET /events`` never goes back in time for a job: an event of a record older than one already sent
(two threads announcing at nearly the same time, in the other order) is not sent, and no ``running`` event
follows the job's end.

A real Jupyter server streams a real job's events from a throttled Range server. Which of two racing threads
calls the listeners first cannot be caused at will, so the test announces a record it read earlier itself,
through the manager's own ``announce``, as the slower thread would.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime

from jupyter_staging.engine.models import JobState
from jupyter_staging.server.handlers import StreamOrder
from tests.helpers.api import EventStream, post_job, wait_for


async def test_a_stale_announcement_is_not_streamed(
    jp_fetch, jp_serverapp, http_server_client, jp_base_url, jp_auth_header, range_server
):
    (range_server.root / "slow.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    range_server.throttle_bytes_per_s = 1_000_000
    manager = jp_serverapp.web_app.settings["staging_manager"]
    stream = EventStream(http_server_client, jp_base_url, jp_auth_header, timeout=8)
    await asyncio.sleep(0.3)
    body = {"source": range_server.url("slow.bin"), "destination": "staging/order"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    for _ in range(200):
        early = manager.store.get_job(job["id"], resume=False)
        if early.state == JobState.running.value and early.bytes_done > 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # later records are announced meanwhile
    await asyncio.to_thread(manager.announce, early)  # the slower thread's record, announced last

    range_server.throttle_bytes_per_s = 0
    done = await wait_for(jp_fetch, job["id"])
    assert done["state"] == "succeeded", done
    await asyncio.sleep(0.2)
    await asyncio.to_thread(manager.announce, early)  # a running record after the job's end
    await stream.closed()

    mine = [e["job"] for e in stream.events if e["job"]["id"] == job["id"]]
    assert mine[-1]["state"] == "succeeded", [j["state"] for j in mine]
    times = [datetime.fromisoformat(j["updated_at"]) for j in mine]
    assert times == sorted(times)
    sent = [j["progress"]["bytes_done"] for j in mine]
    assert sent == sorted(sent)
    stale = early.updated_at
    assert not [t for t in times[times.index(max(times)) :] if t < stale]
    assert sum(1 for t in times if t == stale) <= 1  # the early record went out once, when it was new


def test_stream_order_drops_whatever_is_older_than_what_was_sent():
    order = StreamOrder()

    def job(when: str, state: str = "running", job_id: str = "a") -> dict:
        return {"id": job_id, "updated_at": when, "state": state}

    assert order.admit(job("2026-12-05T10:00:01Z"))
    assert not order.admit(job("2026-12-05T10:00:00.500000Z"))  # older, same state
    assert order.admit(job("2026-12-05T10:00:01Z"))  # same time: a chunk acknowledged
    assert order.admit(job("2026-12-05T10:00:00Z", job_id="b"))  # another job's
    assert order.admit(job("2026-12-05T10:00:11Z", state="paused"))
    assert not order.admit(job("2026-12-05T10:00:10.500000Z"))  # a progress report read before the pause
    assert not order.admit(job("2026-12-05T10:00:10.900000Z"))  # the mark is never lowered
    assert order.admit(job("2026-12-05T10:00:12Z", state="succeeded"))
    assert not order.admit(job("2026-12-05T10:00:11.500000Z"))  # running after the end
    assert order.admit(job("2026-12-05T10:00:13Z", state="expired"))
