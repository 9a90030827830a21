"""Secrets stay secret (issue 6, acceptance 4): no signature (``X-Amz-Signature`` value) of a presigned
URL appears in any API response, event, log line, database row or file the job writes — except, by design,
the presigned URLs of a job's own chunks in ``GET .../chunks`` and ``.../refresh``, which exist to hand
them to the job's owner.

Real parts only: moto's S3 endpoint and its presigned URLs, a real Jupyter server (pytest-jupyter), the
SQLite database file as it is on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from tornado.httpclient import HTTPClientError

from jupyter_staging.clouds.s3 import presign_get
from jupyter_staging.engine.executors import Executor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.kernel import api
from jupyter_staging.kernel.job import JobFailed
from tests.helpers.api import API, wait_for
from tests.helpers.data import KEPLER, SPITZER
from tests.helpers.leaks import assert_nowhere, database_texts


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def secrets_of(url: str, *, credential: bool = True) -> list[str]:
    """The signature of a presigned URL and (unless ``credential`` is False) its credential scope
    (access key id / date / region), as they would show raw or percent-encoded."""
    q = query(url)
    assert len(q["X-Amz-Signature"]) == 64
    if not credential:
        return [q["X-Amz-Signature"]]
    return [q["X-Amz-Signature"], q["X-Amz-Credential"], quote(q["X-Amz-Credential"], safe="")]


@pytest.mark.slow
async def test_no_signature_in_responses_events_logs_database_or_files(
    jp_fetch,
    jp_root_dir,
    tmp_path,
    s3_env,
    s3_server,
    caplog,
    http_server_client,
    jp_base_url,
    jp_auth_header,
):
    caplog.set_level(logging.DEBUG)  # every logger, third-party DEBUG lines included
    s3, bucket = s3_env
    s3.put_object(Bucket=bucket, Key="lc/kepler.fits", Body=KEPLER.read_bytes())
    s3.put_object(Bucket=bucket, Key="cat/spitzer.xml", Body=SPITZER.read_bytes())
    s3.create_bucket(Bucket="secret-results")
    good = presign_get(f"s3://{bucket}/lc/kepler.fits", 600)
    other = presign_get(f"s3://{bucket}/cat/spitzer.xml", 600)
    missing = presign_get(f"s3://{bucket}/lc/no-such.fits", 600)
    secrets = secrets_of(good) + secrets_of(other) + secrets_of(missing)

    bodies: list[str] = []
    events = bytearray()

    async def fetch(*path, **kwargs) -> dict:
        response = await jp_fetch(*API, *path, **kwargs)
        bodies.append(response.body.decode())
        return json.loads(response.body) if response.body else {}

    stream = asyncio.ensure_future(
        http_server_client.fetch(
            f"{jp_base_url}api/v1/staging/events",
            headers=jp_auth_header,
            streaming_callback=events.extend,
            request_timeout=25,
        )
    )
    await asyncio.sleep(0.3)
    s3_server.start_recording()
    jobs = [
        # a presigned URL as a source, converted to Parquet
        {"source": good, "destination": "staging/single", "convert": {"chunk_rows": 5000}},
        # presigned URLs as manifest entries (one of them dead), into object storage
        {"manifest": {"lc": good, "cat": other, "dead": missing}, "destination": "s3://secret-results/out/"},
        # a presigned URL that fails: its error message names the URL
        {"source": missing, "destination": "staging/failing"},
    ]
    ids = []
    for body in jobs:
        ids.append((await fetch("jobs", method="POST", body=json.dumps(body)))["id"])
    finals = [await wait_for(jp_fetch, job_id, timeout=90) for job_id in ids]
    s3_server.stop_recording()
    assert [j["state"] for j in finals] == ["succeeded", "failed", "failed"], finals
    assert [j["error"] and j["error"]["code"] for j in finals] == [None, "partial", "source_not_found"]
    # The jobs really used the signed URLs (moto does not check signatures; the requests it got show them).
    recorded = " ".join(r["url"] for r in s3_server.recorded())
    assert query(good)["X-Amz-Signature"] in recorded and query(other)["X-Amz-Signature"] in recorded

    chunk_urls = []
    for job_id in ids:
        job = await fetch("jobs", job_id)
        assert "REDACTED" in job["source"] or job["source"].startswith("manifest:")
        await fetch("jobs", job_id, "log")
        chunks = (await fetch("jobs", job_id, "chunks"))["chunks"]
        chunk_urls += [c["url"] for c in chunks if c["url"]]
        if job["state"] == "succeeded" or job["error"]["code"] == "partial":
            await fetch("jobs", job_id, "manifest")
    await fetch("jobs")
    await fetch("jobs", params={"state": "failed"})
    for action in ("pause", "resume"):  # errors (409) are responses too
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch(*API, "jobs", ids[0], action, method="POST", body="")
        bodies.append(info.value.response.body.decode())
    with pytest.raises(HTTPClientError):
        await stream
    assert events.count(b"data: ") >= 6

    # The object-store job's chunks have URLs, signed; they are the only signatures handed out, and only
    # in the chunks (and refresh) answers.
    assert len(chunk_urls) == 2
    refreshed = await fetch("jobs", ids[1], "chunks", "0", "refresh")
    chunk_secrets = [query(u)["X-Amz-Signature"] for u in [*chunk_urls, refreshed["url"]]]
    handed_out = [b for b in bodies if '"url": "http' in b]
    assert len(handed_out) == 2
    assert_nowhere(chunk_secrets, [b for b in bodies if b not in handed_out], "an API response")

    logged = [caplog.text] + [r.getMessage() for r in caplog.records]
    assert any("REDACTED" in t for t in logged)  # the source URLs were logged, redacted
    ours = [r.getMessage() for r in caplog.records if r.name.startswith(("jupyter_staging", "StagingApp"))]
    assert ours
    log_lines = [json.dumps(b) for b in bodies if '"lines"' in b]
    db = tmp_path / "staging-jobs.sqlite"
    files = [
        p.read_text(errors="replace")
        for p in jp_root_dir.rglob("*")
        if p.is_file() and p.suffix != ".parquet"
    ]
    stored_manifest = (
        s3.get_object(Bucket="secret-results", Key=f"out/{ids[1]}/manifest.json")["Body"].read().decode()
    )

    everything_but_handout = {
        "an API response": [b for b in bodies if b not in handed_out],
        "the event stream": [events.decode()],
        "a log line of ours": ours,
        "the job log": log_lines,
        "the database": database_texts(db),
        "a staged file or manifest": [*files, stored_manifest],
    }
    for where, texts in everything_but_handout.items():
        assert_nowhere(secrets + chunk_secrets, texts, where)
    # Any log line at all, botocore's and urllib3's DEBUG lines included (requests with their query
    # strings, computed signatures). Their credential scope is the server's own access key id, which
    # here is the one the test signed with, so only signatures are looked for.
    signatures = [s for url in (good, other, missing) for s in secrets_of(url, credential=False)]
    assert_nowhere(signatures + chunk_secrets, logged, "a log line")
    assert_nowhere(signatures, handed_out, "a chunks answer")  # (the chunk URLs carry the server's key id)
    assert oct(stat.S_IMODE(Path(f"{db}.key").stat().st_mode)) == "0o600"


class ParkedExecutor(Executor):
    """Accepts jobs and never runs them: a process that stops before its queued jobs ran."""

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        return Future()

    def shutdown(self, wait: bool = True) -> None:
        pass


@pytest.mark.slow
def test_a_job_reading_a_presigned_url_resumes_after_a_restart_from_its_sealed_source(
    tmp_path, s3_env, s3_server
):
    s3, bucket = s3_env
    s3.put_object(Bucket=bucket, Key="k.fits", Body=KEPLER.read_bytes())
    url = presign_get(f"s3://{bucket}/k.fits", 600)
    db = tmp_path / "jobs.sqlite"
    root = tmp_path / "root"
    root.mkdir()

    first = StagingManager(root, db_url=f"sqlite:///{db}", executor_class=ParkedExecutor, sweep_interval=0)
    job, _ = first.create(CreateJob(source=url, destination="k"))
    rec = first.store.get_job(job.id)
    assert rec.source == job.source and "X-Amz-Signature=REDACTED" in rec.source
    assert rec.sealed and query(url)["X-Amz-Signature"] not in rec.sealed
    first.stop()

    s3_server.start_recording()
    second = StagingManager(root, db_url=f"sqlite:///{db}", sweep_interval=0)
    try:
        assert second.start() == [job.id]
        done = second.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", done
    finally:
        second.stop()
    s3_server.stop_recording()
    gets = [r["url"] for r in s3_server.recorded() if r["method"] == "GET" and "/k.fits" in r["url"]]
    assert gets and all(query(g)["X-Amz-Signature"] == query(url)["X-Amz-Signature"] for g in gets)
    assert (root / "k" / "k.fits").read_bytes() == KEPLER.read_bytes()
    # Once the job has ended its sealed source is dropped too.
    assert_nowhere(secrets_of(url), database_texts(db), "the database")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sealed FROM staging_jobs").fetchall() == [(None,)]
        assert "sealed" not in conn.execute("SELECT resume FROM staging_job_resume").fetchone()[0]


def test_without_its_key_a_sealed_job_fails_clearly(tmp_path, s3_env):
    s3, bucket = s3_env
    url = presign_get(f"s3://{bucket}/k.fits", 600)
    db = tmp_path / "jobs.sqlite"
    (tmp_path / "root").mkdir()
    first = StagingManager(
        tmp_path / "root", db_url=f"sqlite:///{db}", executor_class=ParkedExecutor, sweep_interval=0
    )
    job, _ = first.create(CreateJob(source=url))
    first.stop()
    os.unlink(f"{db}.key")  # lost (or the database was copied elsewhere)

    second = StagingManager(tmp_path / "root", db_url=f"sqlite:///{db}", sweep_interval=0)
    try:
        second.start()
        done = second.wait(job.id, timeout=30)
    finally:
        second.stop()
    assert done.state.value == "failed" and done.error.code == "secret_unavailable", done
    assert query(url)["X-Amz-Signature"] not in done.error.message


@pytest.mark.slow
def test_the_kernel_side_shows_no_signature(tmp_path, monkeypatch, s3_env):
    from jupyter_staging.kernel.widgets import JobWidget

    s3, bucket = s3_env
    s3.put_object(Bucket=bucket, Key="k.fits", Body=KEPLER.read_bytes())
    url = presign_get(f"s3://{bucket}/k.fits", 600)
    missing = presign_get(f"s3://{bucket}/none.fits", 600)
    monkeypatch.chdir(tmp_path)
    api.use_local(tmp_path, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        job = api.stage(url, "k", wait=True, show=False)
        failed = api.stage({"ok": url, "dead": missing}, "m", show=False)
        with pytest.raises(JobFailed) as info:
            failed.wait(timeout=60)
        texts = [str(info.value), repr(info.value.job)]
        for j in (job, failed):
            widget = JobWidget(j, follow=False)
            texts += [w.value for w in widget.children if hasattr(w, "value") and isinstance(w.value, str)]
            texts += [repr(j), j._repr_html_(), j.source, json.dumps(j.as_dict()), json.dumps(j.log())]
            texts += [json.dumps(j.chunks), json.dumps(j.manifest())]
        texts.append(repr(api.list_jobs()))
        assert any("X-Amz-Signature=REDACTED" in t for t in texts)
        assert_nowhere(secrets_of(url) + secrets_of(missing), texts, "the kernel side")
    finally:
        api.reset_backend()
