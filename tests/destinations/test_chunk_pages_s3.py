"""A page of the chunks of a job writing to S3 (moto): the chunks of the page carry their presigned URL,
and the page's URLs work; the job's total is given."""

from __future__ import annotations

import json

import requests

from tests.helpers.api import API, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.objectstore import RESULTS, get_json


async def test_a_page_of_object_store_chunks_is_presigned(jp_fetch, s3_results):
    body = {"source": str(KEPLER), "destination": f"s3://{RESULTS}/pages/", "convert": {"chunk_rows": 5000}}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"], timeout=120)
    assert job["state"] == "succeeded", job
    everything = await get_json(jp_fetch, "jobs", job["id"], "chunks")
    assert everything["total"] == 3 and all(c["url"] for c in everything["chunks"])

    answer = await jp_fetch(*API, "jobs", job["id"], "chunks", params={"offset": "1", "limit": "1"})
    page = json.loads(answer.body)
    assert page["total"] == 3 and [c["index"] for c in page["chunks"]] == [1]
    chunk = page["chunks"][0]
    assert chunk["url"] and chunk["url_expires_at"] and chunk["path"] == everything["chunks"][1]["path"]
    got = requests.get(chunk["url"], timeout=30)
    assert got.status_code == 200 and len(got.content) == chunk["bytes"]
