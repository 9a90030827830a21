"""``GET /jobs/{id}/chunks?offset=N&limit=M``: a page of a job's chunks in index order with the job's
``total``, against a real Jupyter server; no parameters still answer every chunk; bad values are a 400
``invalid_request``, never a 500."""

from __future__ import annotations

import json

from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER


async def chunk_page(jp_fetch, job_id: str, **params: str) -> dict:
    return json.loads((await jp_fetch(*API, "jobs", job_id, "chunks", params=params)).body)


async def three_chunk_job(jp_fetch) -> str:
    """A succeeded conversion of the Kepler light curve into three Parquet chunks; its id."""
    body = {"source": str(KEPLER), "destination": "staging/pages", "convert": {"chunk_rows": 5000}}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"])
    assert job["state"] == "succeeded", job
    return str(job["id"])


async def test_pages_of_chunks_and_the_total(jp_fetch):
    three_chunks = await three_chunk_job(jp_fetch)
    everything = await chunk_page(jp_fetch, three_chunks)
    assert [c["index"] for c in everything["chunks"]] == [0, 1, 2] and everything["total"] == 3
    assert [c["rows"] for c in everything["chunks"]] == [5000, 5000, 4280]

    page = await chunk_page(jp_fetch, three_chunks, offset="1", limit="1")
    assert page == {"chunks": [everything["chunks"][1]], "total": 3}
    assert (await chunk_page(jp_fetch, three_chunks, offset="1"))["chunks"] == everything["chunks"][1:]
    assert (await chunk_page(jp_fetch, three_chunks, limit="2"))["chunks"] == everything["chunks"][:2]
    assert await chunk_page(jp_fetch, three_chunks, offset="3") == {"chunks": [], "total": 3}
    assert await chunk_page(jp_fetch, three_chunks, limit="0") == {"chunks": [], "total": 3}
    assert (await chunk_page(jp_fetch, three_chunks, limit="10000"))["chunks"] == everything["chunks"]
    # another parameter (JupyterLab's cache-busting one on every GET) is ignored
    assert await chunk_page(jp_fetch, three_chunks, limit="1", **{"1733494400000": ""}) == {
        "chunks": everything["chunks"][:1],
        "total": 3,
    }


BAD_PARAMS = [
    {"offset": "-1"},
    {"limit": "-1"},
    {"limit": "10001"},
    {"limit": "abc"},
    {"offset": "1.5"},
    {"offset": "9" * 40},
    {"offset": "9" * 5000},
    {"limit": ""},
    {"offset": "0x10"},
]


async def test_bad_page_parameters_are_400_invalid_request(jp_fetch):
    job_id = await three_chunk_job(jp_fetch)
    for params in BAD_PARAMS:
        body = await expect_error(
            jp_fetch(*API, "jobs", job_id, "chunks", params=params), 400, "invalid_request"
        )
        assert all(value not in body["message"] for value in params.values() if len(value) > 2), params


async def test_a_page_of_an_unknown_job_is_404(jp_fetch):
    await expect_error(
        jp_fetch(*API, "jobs", "no-such-job", "chunks", params={"offset": "0", "limit": "5"}),
        404,
        "job_not_found",
    )
