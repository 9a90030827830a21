"""``jupyter staging doctor`` on a job database of another release: one a later release upgraded is a failure
naming its revision with a fix that is not "report a bug"; an older one (release 0.1.0's, servers of which
may still run on it) is a warning and is left as it is, not upgraded by the doctor."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.store import Store
from tests.cli.test_doctor import Setup, only
from tests.hub.test_migrations import make_release_0_1_jobs

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(tmp_path) -> Setup:
    return Setup(tmp_path)


def revision_of(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        return current_revision(engine, JOB_MIGRATIONS)
    finally:
        engine.dispose()


def test_a_database_a_later_release_upgraded_fails_naming_its_revision(setup):
    url = setup.server_config["StagingApp"]["db_url"]
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE staging_alembic_version SET version_num = '0999'"))
    engine.dispose()

    status, report = setup.run_json()

    db = only(report, "database")
    assert status == 1 and db["status"] == "fail", db
    assert "schema revision '0999'" in db["message"] and "a later release upgraded it" in db["message"]
    assert "the check itself failed" not in db["message"] and "maintainers" not in db["fix"]
    assert "Downgrading" in db["fix"]
    assert revision_of(url) == "0999"


def test_an_older_database_is_a_warning_and_is_not_upgraded_by_the_doctor(setup):
    url = setup.server_config["StagingApp"]["db_url"]
    make_release_0_1_jobs(url)

    status, report = setup.run_json()

    db = only(report, "database")
    assert status == 0 and db["status"] == "warn", db
    assert "release 0.1.0" in db["message"] and "1 job(s)" in db["message"]
    assert "left it as it is" in db["message"] and "stop every server of an earlier release" in db["fix"]
    assert revision_of(url) is None  # still 0.1.0's: no version table, no migration run
    engine = sa.create_engine(url)
    assert "resume" in {c["name"] for c in sa.inspect(engine).get_columns("staging_jobs")}
    engine.dispose()

    Store(url).close()  # a server of this release upgrades it; then the doctor is content
    status, report = setup.run_json()
    assert status == 0 and only(report, "database")["status"] == "ok"
