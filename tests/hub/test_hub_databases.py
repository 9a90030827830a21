"""The service end to end with its records in a real PostgreSQL and a real MariaDB: stage, refuse,
restart, read back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.helpers.data import KEPLER_NAME

from .conftest import start_hub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["postgres", "mariadb"])
def pg_hub(request, tmp_path_factory, kepler, proxy_command):
    db_url = request.getfixturevalue(request.param).create_database("staging_hub")
    started = time.monotonic()
    # The URL (which would hold the password) reaches the service through its environment, as
    # docs/hub.md says to do: never on its command line.
    hub = start_hub(
        tmp_path_factory.mktemp(f"hub-{request.param}"),
        kepler,
        proxy_command,
        service_env={"JUPYTER_STAGING_HUB_DB_URL": db_url},
    )
    print(f"hub ({request.param} records) up in {time.monotonic() - started:.1f} s")
    hub.db_url = db_url
    yield hub
    hub.stop()


def service_command_lines() -> list[str]:
    """The command lines of the running staging services (``python -m jupyter_staging.hub.app``)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jupyter_staging.hub.app" in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_the_database_url_is_not_on_the_service_command_line(pg_hub):
    lines = service_command_lines()
    assert lines, "no staging service process found"
    assert not any(pg_hub.db_url in line or "--db-url" in line for line in lines), lines


def test_records_live_in_the_database_and_survive_a_restart(pg_hub, kepler):
    src = str(pg_hub.archive / "kepler" / KEPLER_NAME)
    ok = pg_hub.api("POST", "api/stage", token=pg_hub.tokens["alice"],
                    json={"method": "local_copy", "local_path_on_storage": src})  # fmt: skip
    assert ok.status_code == 201, ok.text
    refused = pg_hub.api("POST", "api/stage", token=pg_hub.tokens["alice"],
                         json={"method": "local_copy", "local_path_on_storage": "/etc/passwd"})  # fmt: skip
    assert refused.status_code == 400

    engine = create_engine(pg_hub.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status, error_code, bytes FROM operations ORDER BY started")
        ).all()
    engine.dispose()
    assert [(r.id, r.status) for r in rows] == [(ok.json()["id"], "succeeded"),
                                                (refused.json()["operation_id"], "failed")]  # fmt: skip
    assert rows[0].bytes == kepler.stat().st_size and rows[1].error_code == "path_not_allowed"
    assert not (pg_hub.service_dir / "jupyter_staging_hub.sqlite").exists()

    before = pg_hub.api("GET", "api/operations", token=pg_hub.tokens["admin"]).json()
    pg_hub.restart()
    after = pg_hub.api("GET", "api/operations", token=pg_hub.tokens["admin"]).json()
    assert after == before and len(after["operations"]) == 2
