"""Truthful progress: ``bytes_done`` counts source bytes once (never above ``bytes_total``), rows and Parquet
bytes are reported on their own (``rows_done``, ``output_bytes``), chunks are counted as they are written,
and a conversion that did not apply says so (``notices``). Polled through the REST API of a real server
while jobs run against a throttled real HTTP server (issue 13: a converted download ended at 200 %)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from tests.helpers.api import API, post_job
from tests.helpers.data import KEPLER, SHARED_DATA

ROSAT = SHARED_DATA / "allsky_rosat.fits"  # an image, no table
FINAL = ("succeeded", "failed", "cancelled")


def stored_bytes(database: Path, job_id: str) -> dict:
    """``bytes_done`` / ``bytes_total`` as the engine persisted them (not as the API shows them)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT bytes_done, bytes_total FROM staging_jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return {"bytes_done": row[0], "bytes_total": row[1]}


async def poll_until_done(
    jp_fetch, job_id: str, database: Path | None = None, timeout: float = 120.0
) -> tuple[list[dict], dict]:
    """Every progress read while the job runs (every 20 ms; with ``database``, also the counters the
    engine stored), and the job as it ended."""
    seen: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = json.loads((await jp_fetch(*API, "jobs", job_id)).body)
        seen.append(job["progress"])
        if database is not None:
            seen.append(stored_bytes(database, job_id))
        if job["state"] in FINAL:
            return seen, job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.02)


async def chunks_of(jp_fetch, job_id: str) -> list[dict]:
    body = json.loads((await jp_fetch(*API, "jobs", job_id, "chunks")).body)
    return body["chunks"] if isinstance(body, dict) else body


def assert_source_bytes_truthful(seen: list[dict]) -> None:
    for progress in seen:  # the total is unknown only until the source is listed
        assert 0 <= progress["bytes_done"] <= (progress["bytes_total"] or 0), progress
    assert seen[-1]["bytes_total"] is not None
    done = [p["bytes_done"] for p in seen if "chunks_done" in p]  # as the API showed it (stored ones lag)
    assert done == sorted(done), "bytes_done went backwards"


async def test_converted_download_never_passes_100_percent(jp_fetch, range_server, tmp_path):
    database = tmp_path / "staging-jobs.sqlite"  # tests.helpers.jupyter.server_config
    # A CSV of 200,000 rows (about 6 MB) downloaded at about 3 MB/s, converted into 40 parts of 5,000 rows.
    rows = 200_000
    table = pa.table({"t": pa.array(range(rows)), "flux": pa.array([i * 0.5 for i in range(rows)])})
    pacsv.write_csv(table, range_server.root / "survey.csv")
    size = (range_server.root / "survey.csv").stat().st_size
    range_server.throttle_bytes_per_s = 3_000_000

    body = {"source": range_server.url("survey.csv"), "convert": {"format": "parquet", "chunk_rows": 5000}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    seen, final = await poll_until_done(jp_fetch, job["id"], database)

    assert final["state"] == "succeeded", final
    assert_source_bytes_truthful(seen)
    assert any(0 < p["bytes_done"] < size for p in seen), "no progress seen during the download"
    progress = final["progress"]
    assert progress["bytes_done"] == progress["bytes_total"] == size
    assert progress["rows_done"] == rows
    chunks = await chunks_of(jp_fetch, job["id"])
    assert progress["chunks_done"] == len(chunks) == rows // 5000
    assert progress["output_bytes"] == sum(c["bytes"] for c in chunks) > 0
    counts = [p["chunks_done"] for p in seen if "chunks_done" in p]
    assert counts == sorted(counts)
    assert any(0 < n < len(chunks) for n in counts), f"chunks were not counted as written: {set(counts)}"
    assert all(p.get("output_bytes", 0) <= progress["output_bytes"] for p in seen)
    assert final["notices"] == []


async def test_converted_fits_download_counts_its_bytes_once(jp_fetch, range_server, tmp_path):
    shutil.copy(KEPLER, range_server.root / KEPLER.name)
    range_server.throttle_bytes_per_s = 2_000_000
    body = {"source": range_server.url(KEPLER.name), "convert": {"format": "parquet", "chunk_rows": 2000}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    seen, final = await poll_until_done(jp_fetch, job["id"], tmp_path / "staging-jobs.sqlite")

    assert final["state"] == "succeeded", final
    assert_source_bytes_truthful(seen)
    progress = final["progress"]
    assert progress["bytes_done"] == progress["bytes_total"] == KEPLER.stat().st_size
    chunks = await chunks_of(jp_fetch, job["id"])
    assert progress["rows_done"] == sum(c["rows"] for c in chunks) > 0
    assert progress["chunks_done"] == progress["chunks_total"] == len(chunks)
    assert progress["output_bytes"] == sum(c["bytes"] for c in chunks)


async def test_an_image_asked_to_convert_is_staged_as_it_is_with_a_notice(jp_fetch, range_server):
    shutil.copy(ROSAT, range_server.root / ROSAT.name)
    body = {"source": range_server.url(ROSAT.name), "convert": {"format": "parquet"}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    seen, final = await poll_until_done(jp_fetch, job["id"])

    assert final["state"] == "succeeded", final
    assert_source_bytes_truthful(seen)
    assert final["notices"] == [f"{ROSAT.name}: not a table: staged as it is"]
    assert final["progress"]["output_bytes"] == 0 and final["progress"]["rows_done"] == 0
    [chunk] = await chunks_of(jp_fetch, job["id"])
    assert chunk["path"] == ROSAT.name and chunk["bytes"] == ROSAT.stat().st_size


async def test_a_local_conversion_reports_rows_and_parquet_bytes_apart(jp_fetch):
    body = {"source": str(KEPLER), "convert": {"format": "parquet", "chunk_rows": 4000}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    seen, final = await poll_until_done(jp_fetch, job["id"])

    assert final["state"] == "succeeded", final
    assert_source_bytes_truthful(seen)
    chunks = await chunks_of(jp_fetch, job["id"])
    assert final["progress"]["bytes_done"] == KEPLER.stat().st_size
    assert final["progress"]["output_bytes"] == sum(c["bytes"] for c in chunks) > 0
    assert final["notices"] == []
