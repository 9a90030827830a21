"""The body of ``GET /jobs/{id}/chunks`` made a slice at a time on the worker thread
(:func:`jupyter_staging.server.chunkbody.chunk_page_body`) is byte for byte ``json.dumps`` of the page's
dump, as the handler wrote it before, with tornado's ``Etag`` of those bytes: also for fields holding
non-ASCII text and characters JSON escapes, for pages cut at and across slice boundaries, past the end,
and for a job without chunks."""

from __future__ import annotations

import hashlib
import json

import pytest

from jupyter_staging.engine.chunkpages import SLICE
from jupyter_staging.engine.models import dump
from jupyter_staging.server.chunkbody import chunk_page_body
from tests.engine.test_chunk_page_index import job

NAMES = [
    "é.fits",
    "日本/ü.parquet",
    'q"uote\\back.csv',
    "tab\tnl\n.x",
    "</script>",
    "\u2028ls",
    "😀.fits",
    "c\x01",
]
COUNT = 3 * SLICE + 5


@pytest.fixture
def listed(manager):
    for job_id in ("odd", "none"):
        record = job(job_id)
        record.root = str(manager.root_dir)  # a job of this server's root
        manager.store.add_job(record)
    rows = []
    for i in range(COUNT):
        path = f"{NAMES[i % len(NAMES)]}-{i}"
        state = "ready" if i % 3 else "pending"
        row = {
            "id": f"odd-{i}", "job_id": "odd", "index": i, "path": path, "state": state, "bytes": 10 * i,
            "sha256": "ab" * 32, "content_type": "application/fits", "entry": path[:4],
        }  # fmt: skip
        if i % 5 == 0:
            row.update(error_code="checksum_mismatch", error_message=f'bad "{path}"\n é')
        rows.append(row)
    manager.store.write_chunks("odd", rows, {})
    return manager


@pytest.mark.parametrize(
    ("offset", "limit"),
    [
        (0, None),
        (0, 1),
        (10, SLICE),
        (SLICE - 1, SLICE + 2),
        (COUNT - 1, None),
        (COUNT, None),
        (COUNT + 9, 3),
    ],
)
def test_the_body_is_the_pages_json_dump_byte_for_byte_with_its_etag(listed, offset, limit):
    body, etag = chunk_page_body(listed, "odd", "alice", offset=offset, limit=limit)
    before = json.dumps(dump(listed.chunk_page("odd", "alice", offset=offset, limit=limit))).encode()
    assert body == before
    assert etag == f'"{hashlib.sha1(before).hexdigest()}"'
    page = json.loads(body)
    assert page["total"] == COUNT
    assert [c["path"] for c in page["chunks"]] == [
        f"{NAMES[i % len(NAMES)]}-{i}"
        for i in range(offset, COUNT if limit is None else min(COUNT, offset + limit))
    ]


def test_a_job_without_chunks_lists_an_empty_page(listed):
    assert chunk_page_body(listed, "none", "alice")[0] == json.dumps({"chunks": [], "total": 0}).encode()
