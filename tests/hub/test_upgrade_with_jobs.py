"""A site's job database with real jobs in every state, taken back to revision 0001 (the schema of release
0.1.0, the first released) and upgraded by a server starting on it, on SQLite, PostgreSQL and MariaDB: every
job is listed with its true state, the paused and the interrupted downloads resume where they stopped, and
re-runs of the succeeded jobs are answered by them, up to date. A peek at the database from another process
meanwhile (the doctor, an admin) leaves the server working."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import ServerOn
from tests.helpers.servers import RangeHTTPServer
from tests.hub.test_migrations import downgrade_jobs

pytestmark = pytest.mark.slow

SIZE = 6 * 1024 * 1024


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    name = f"up_{abs(hash(request.node.name)) % 10**8}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create_database(name)
    return request.getfixturevalue("mariadb").create_database(name)


def ended(job: dict) -> bool:
    return job["state"] in ("succeeded", "failed", "cancelled")


def revision(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        return current_revision(engine, JOB_MIGRATIONS)
    finally:
        engine.dispose()


def test_jobs_in_every_state_survive_an_upgrade_from_the_first_release(db_url, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    payload = os.urandom(SIZE)
    for name in ("running.bin", "paused.bin", "cancelled.bin"):
        (www / name).write_bytes(payload)
    server = ServerOn(tmp_path / "root", tmp_path / "state", db_url)
    server.start()
    try:
        with RangeHTTPServer(www, throttle_bytes_per_s=1_000_000) as http:
            copied = server.create_job({"source": str(KEPLER), "destination": "staging/kepler"})
            assert server.wait_for(copied["id"], ended)["state"] == "succeeded"
            convert = {"format": "parquet"}
            converted = server.create_job(
                {"source": str(KEPLER), "destination": "staging/kc", "convert": convert}
            )
            assert server.wait_for(converted["id"], ended)["state"] == "succeeded"
            cancelled = server.create_job({"source": http.url("cancelled.bin"), "destination": "staging/c"})
            server.wait_for(cancelled["id"], lambda j: j["progress"]["bytes_done"] > 100_000)
            assert server.request("DELETE", f"jobs/{cancelled['id']}").status_code == 204
            server.wait_for(cancelled["id"], ended)
            paused = server.create_job({"source": http.url("paused.bin"), "destination": "staging/p"})
            server.wait_for(paused["id"], lambda j: j["progress"]["bytes_done"] > 100_000)
            assert server.request("POST", f"jobs/{paused['id']}/pause").json()["state"] == "paused"
            running = server.create_job({"source": http.url("running.bin"), "destination": "staging/r"})
            server.wait_for(running["id"], lambda j: j["progress"]["bytes_done"] > 300_000)
            before = {j["id"]: j["state"] for j in server.request("GET", "jobs").json()["jobs"]}
            server.kill()  # mid-download: the job stays running in the database

            engine = sa.create_engine(db_url)
            downgrade_jobs(engine, "0001")
            engine.dispose()
            assert revision(db_url) == "0001"

            server.start()
            assert revision(db_url) == JOB_MIGRATIONS.head()  # also a peek from another process
            after = {j["id"]: j["state"] for j in server.request("GET", "jobs").json()["jobs"]}
            assert set(after) == set(before)
            assert {k: v for k, v in after.items() if k != running["id"]} == {
                k: v for k, v in before.items() if k != running["id"]
            }
            assert before[running["id"]] == "running" and after[running["id"]] in ("queued", "running")

            assert server.wait_for(running["id"], ended, timeout=90)["state"] == "succeeded"
            assert server.request("POST", f"jobs/{paused['id']}/resume").status_code == 200
            assert server.wait_for(paused["id"], ended, timeout=90)["state"] == "succeeded"
            for name in ("running.bin", "paused.bin"):  # resumed where they stopped, not from byte 0
                ranges = [g.header("Range") for g in http.requests_for(name, "GET")]
                assert ranges[-1] not in (None, "bytes=0-"), ranges

            for job, dest, body in (
                (copied, "staging/kepler", {}),
                (converted, "staging/kc", {"convert": convert}),
            ):
                rerun = server.request(
                    "POST", "jobs", json={"source": str(KEPLER), "destination": dest, **body}
                )
                assert rerun.status_code == 200 and rerun.json()["id"] == job["id"], rerun.text
                assert rerun.json()["state"] == "succeeded"
    finally:
        server.stop()
    digest = hashlib.sha256(payload).digest()
    for folder, name in (("r", "running.bin"), ("p", "paused.bin")):
        assert hashlib.sha256((tmp_path / "root" / "staging" / folder / name).read_bytes()).digest() == digest
    assert not list(Path(tmp_path / "root").rglob("*.part"))
