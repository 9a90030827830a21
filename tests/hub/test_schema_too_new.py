"""A database upgraded by a later release, then opened by this one (the package downgraded): the job store
and the operations store refuse it naming the revision and change nothing, on SQLite, PostgreSQL and
MariaDB; a Jupyter server answers every staging request 503 ``database_newer_than_code`` (not a 404 of a
missing extension, not a traceback) and the hub service exits with one line naming the revision. A database
that cannot be reached at the server's start is answered 503 ``database_unavailable`` the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, Migrations, current_revision
from jupyter_staging.engine.store import Store
from jupyter_staging.errors import DatabaseTooNew
from jupyter_staging.hub.db import HUB_MIGRATIONS, OperationStore
from tests.helpers.jupyter import JupyterServerProcess, ServerOn
from tests.helpers.net import free_port

#: A revision no release of this code has.
LATER = "0999_of_a_later_release"


def mark_as_later(url: str, migrations: Migrations) -> None:
    """Record :data:`LATER` as the revision of ``url`` (what a later release's upgrade leaves)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {migrations.version_table} SET version_num = :v"), {"v": LATER})
    engine.dispose()


def test_a_database_of_a_later_release_is_refused_naming_its_revision_and_left_as_it_is(db_url):
    Store(db_url).close()
    OperationStore(db_url).close()
    mark_as_later(db_url, JOB_MIGRATIONS)
    mark_as_later(db_url, HUB_MIGRATIONS)
    engine = sa.create_engine(db_url)
    tables = sorted(sa.inspect(engine).get_table_names())

    for store_class, what in ((Store, "job database"), (OperationStore, "operations database")):
        with pytest.raises(DatabaseTooNew) as raised:
            store_class(db_url)
        err = raised.value
        assert err.code == "database_newer_than_code" and err.status == 503
        assert what in err.message and repr(LATER) in err.message and "Downgrading" in err.message

    engine.dispose()
    engine = sa.create_engine(db_url)
    assert sorted(sa.inspect(engine).get_table_names()) == tables
    assert current_revision(engine, JOB_MIGRATIONS) == LATER
    assert current_revision(engine, HUB_MIGRATIONS) == LATER
    engine.dispose()


def test_a_server_on_a_later_releases_database_answers_503_naming_the_revision(tmp_path):
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    url = f"sqlite:///{tmp_path / 'state' / 'jobs.sqlite'}"
    (tmp_path / "state").mkdir()
    Store(url).close()
    mark_as_later(url, JOB_MIGRATIONS)
    server.start()
    try:
        answers = [
            server.request("GET", "jobs"),
            server.request("POST", "jobs", json={"source": "/nowhere/x.fits", "destination": "x"}),
            server.request("GET", "jobs/some-job"),
        ]
        for answer in answers:
            assert answer.status_code == 503, answer.text
            body = answer.json()
            assert body["code"] == "database_newer_than_code" and repr(LATER) in body["message"]
            assert "Traceback" not in answer.text
        assert requests_ok(server)  # the rest of the server still works
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "jupyter_staging: staging is off (sqlite:///" in log
    assert f"the job database is at schema revision {LATER!r}" in log
    assert "Traceback" not in log and "CommandError" not in log and "AttributeError" not in log
    engine = sa.create_engine(url)
    assert current_revision(engine, JOB_MIGRATIONS) == LATER
    engine.dispose()


def requests_ok(server: JupyterServerProcess) -> bool:
    """The server's own API answers (``/api/status``)."""
    import requests

    return requests.get(f"{server.url}api/status", headers=server.headers, timeout=10).ok


def run_hub_service(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    """``python -m jupyter_staging.hub.app`` on the operations database ``url``, run to its exit."""
    archive, homes = tmp_path / "archive", tmp_path / "homes"
    archive.mkdir()
    homes.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_STAGING_"))}
    env.update(
        JUPYTERHUB_API_TOKEN="service-token-0123456789",
        JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api",
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{free_port()}",
        JUPYTERHUB_SERVICE_PREFIX="/services/staging/",
        JUPYTERHUB_CLIENT_ID="service-staging",
        JUPYTER_STAGING_HUB_DB_URL=url,
    )
    args = [
        f"--shared-roots={archive}",
        f"--user-area-template={homes}/{{username}}/staging",
        f"--server-root-template={homes}/{{username}}",
    ]
    return subprocess.run(
        [sys.executable, "-m", "jupyter_staging.hub.app", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_hub_service_on_a_later_releases_database_exits_with_one_line_naming_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'operations.sqlite'}"
    OperationStore(url).close()
    mark_as_later(url, HUB_MIGRATIONS)
    proc = run_hub_service(tmp_path, url)
    assert proc.returncode == 1, proc.stderr
    assert f"operations database is at schema revision {LATER!r}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert Path(tmp_path / "operations.sqlite").exists()


def test_a_server_whose_database_is_unreachable_at_start_answers_503_without_the_password(tmp_path):
    password = "Sekrit-db-password-0123"
    url = f"postgresql+psycopg://alice:{password}@127.0.0.1:{free_port()}/jobs"  # nothing listens there
    server = ServerOn(tmp_path / "root", tmp_path / "state", url)
    server.start()
    try:
        answer = server.request("GET", "jobs")
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["code"] == "database_unavailable" and "could not be opened" in body["message"]
        assert "Connection refused" in body["message"] and password not in answer.text
        assert requests_ok(server)
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "staging is off (postgresql+psycopg://alice:***@127.0.0.1" in log
    assert password not in log and "AttributeError" not in log


def test_the_hub_service_on_an_unreachable_database_exits_with_one_line_without_the_password(tmp_path):
    password = "Sekrit-db-password-0123"
    proc = run_hub_service(tmp_path, f"postgresql+psycopg://hub:{password}@127.0.0.1:{free_port()}/ops")
    assert proc.returncode == 1, proc.stderr
    assert "cannot open the operations database postgresql+psycopg://hub:***@127.0.0.1" in proc.stderr
    assert "Connection refused" in proc.stderr
    assert "Traceback" not in proc.stderr and password not in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the check runs only when the service runs as root")
def test_the_hub_service_as_root_without_a_working_find_does_not_start(tmp_path, monkeypatch, capsys):
    """Running as root, the service asks ``find`` (run as each user) what the user may read and write; a
    machine without GNU find answered every call 503 ``access_check_unavailable``. The service now asks
    once at start and refuses to start, saying what to install."""
    from jupyter_staging.hub import access
    from jupyter_staging.hub.app import StagingHub

    (tmp_path / "archive").mkdir()
    (tmp_path / "homes").mkdir()
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "service-token-0123456789")
    args = [
        f"--shared-roots={tmp_path / 'archive'}",
        f"--user-area-template={tmp_path / 'homes'}/{{username}}/staging",
        f"--server-root-template={tmp_path / 'homes'}/{{username}}",
    ]
    StagingHub().initialize(args)  # find works here: the service starts
    monkeypatch.setattr(access, "FIND", str(tmp_path / "no-such-find"))
    with pytest.raises(SystemExit) as stopped:
        StagingHub().initialize(args)
    assert stopped.value.code == 1
    said = capsys.readouterr().err
    assert "install GNU findutils" in said and "no-such-find" in said and "Traceback" not in said


def test_the_event_stream_of_a_server_without_its_database_answers_503_not_an_empty_stream(tmp_path):
    url = f"postgresql+psycopg://alice:pw@127.0.0.1:{free_port()}/jobs"  # nothing listens there
    server = ServerOn(tmp_path / "root", tmp_path / "state", url)
    server.start()
    try:
        answer = server.request("GET", "events", stream=True, timeout=10)
        try:
            assert answer.status_code == 503, answer.status_code
            assert answer.headers["Content-Type"].startswith("application/json")
            assert answer.json()["code"] == "database_unavailable"
        finally:
            answer.close()
    finally:
        server.stop()
    assert "Cannot send error response after headers written" not in server.log_path.read_text()
