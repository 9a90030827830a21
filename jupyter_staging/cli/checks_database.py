"""The ``database`` check: ``StagingApp.db_url`` opens, and a probe row is written and deleted.

Changes nothing but the probe row (written and deleted in one transaction) and, for SQLite, the database
file and its tables when they did not exist yet, as the server would create them. A database at an older
schema revision is reported and left as it is (servers of an earlier release may still use it); one at a
revision of a later release is a failure naming it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, Numeric, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator

from jupyter_staging.cli.model import (
    FAIL,
    OK,
    WARN,
    Check,
    DoctorSettings,
    existing_ancestor,
    first_line,
)
from jupyter_staging.cli.redaction import safe_db_url
from jupyter_staging.engine.database import make_engine
from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.store import JobRecord, Store, utcnow
from jupyter_staging.errors import DatabaseTooNew

NAME = "database"

#: How to install the driver a database backend needs.
DRIVER_HINTS = {
    "postgresql": 'pip install "psycopg[binary]"',
    "mysql": "pip install pymysql",
    "mariadb": "pip install pymysql",
}


def check_database(settings: DoctorSettings) -> Check:
    """The job database opens, and a probe row can be written and deleted in one transaction."""
    url = settings.db_url
    shown = safe_db_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        return Check(
            NAME,
            FAIL,
            f"StagingApp.db_url is not a SQLAlchemy URL: {shown}",
            "set StagingApp.db_url to e.g. sqlite:////path/to/jobs.sqlite or "
            "postgresql+psycopg://user@host/db",
        )
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        problem = sqlite_location_problem(parsed.database, shown)
        if problem is not None:
            return problem
    try:
        behind = schema_check(url, shown)
        if behind is not None:
            return behind
        jobs = probe_database(url)
    except DatabaseTooNew as err:
        return Check(
            NAME,
            FAIL,
            f"{shown}: {err.message}",
            f"install the jupyter_staging release that upgraded it (pip install -U jupyter_staging), or "
            f"downgrade the database with that release to revision {JOB_MIGRATIONS.head()!r} (see the admin "
            "guide, The job database, Downgrading)",
        )
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        hint = DRIVER_HINTS.get(backend, "install the driver the URL names")
        return Check(
            NAME,
            FAIL,
            f"the database driver for {shown} is not installed ({first_line(exc)})",
            f'{hint} (or the project\'s hub extra: pip install "jupyter_staging[hub]")',
        )
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        return Check(
            NAME,
            FAIL,
            f"cannot open or write to the job database {shown}: {type(orig).__name__}: {first_line(orig)}",
            database_fix(backend, parsed.database),
        )
    except OSError as exc:
        return Check(
            NAME,
            FAIL,
            f"cannot open the job database {shown}: {exc.strerror or exc}",
            database_fix(backend, parsed.database),
        )
    return Check(NAME, OK, f"job database {shown} is reachable and writable ({jobs} job(s) recorded)")


def sqlite_location_problem(database: str | None, shown: str) -> Check | None:
    """What keeps the SQLite file ``database`` from being opened or created (None: nothing)."""
    if not database or database == ":memory:":
        return Check(
            NAME,
            WARN,
            f"StagingApp.db_url {shown} is an in-memory SQLite database: jobs are lost at every restart",
            "set StagingApp.db_url to a file, e.g. sqlite:////home/me/.local/share/jupyter/"
            "jupyter_staging/jobs.sqlite (or leave it unset for that default)",
        )
    path = Path(database).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.exists() and not path.is_file():
        return Check(
            NAME,
            FAIL,
            f"the SQLite database {path} is a folder, not a file",
            "point StagingApp.db_url at a file (sqlite:////path/to/jobs.sqlite)",
        )
    folder = path.parent
    if folder.is_dir():
        return None
    blocker = existing_ancestor(folder)
    if blocker.exists() and not blocker.is_dir():
        return Check(
            NAME,
            FAIL,
            f"the SQLite database {path} cannot be created: {blocker} is a file, not a folder",
            f"move {blocker} out of the way, or set StagingApp.db_url to a file in a folder that exists",
        )
    return Check(
        NAME,
        FAIL,
        f"the folder of the SQLite database {path} does not exist ({folder}); the server does not "
        "create it for a configured db_url",
        f"mkdir -p {folder}   (or set StagingApp.db_url to a file in a folder that exists)",
    )


def schema_check(url: str, shown: str) -> Check | None:
    """A ``warn`` for a job database at an older schema revision than this release's newest (left as it
    is: the doctor does not upgrade a database that servers of an earlier release may still use); None
    when it is new (no job table yet) or at the newest revision.

    Raises :class:`~jupyter_staging.errors.DatabaseTooNew` for a revision of a later release, and what
    SQLAlchemy and the driver raise when the database cannot be reached."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if "staging_jobs" not in tables:
                return None
            revision = current_revision(engine, JOB_MIGRATIONS)
            head = JOB_MIGRATIONS.head()
            if revision == head:
                return None
            if revision is not None and not JOB_MIGRATIONS.knows(revision):
                raise JOB_MIGRATIONS.too_new(revision)
            jobs = conn.scalar(text("SELECT COUNT(*) FROM staging_jobs"))
    finally:
        engine.dispose()
    at = f"revision {revision!r}" if revision else "the schema of release 0.1.0 (no version table)"
    return Check(
        NAME,
        WARN,
        f"the job database {shown} ({jobs} job(s) recorded) is at {at}, older than this release's "
        f"newest ({head!r}); the doctor left it as it is",
        "the first server of this release to start upgrades it in place: stop every server of an earlier "
        "release that uses it first (the admin guide's page The job database, Upgrading, says which "
        "revisions need that)",
    )


def probe_database(url: str) -> int:
    """Open ``url`` with :class:`~jupyter_staging.engine.store.Store`, insert and delete a probe job in one
    transaction; returns the number of jobs recorded.

    Raises what SQLAlchemy and the driver raise (``SQLAlchemyError``, ``OSError``, ``ModuleNotFoundError``).
    """
    store = Store(url)
    try:
        with store.session() as session:
            probe = JobRecord(**probe_values(JobRecord))
            session.add(probe)
            session.flush()
            session.delete(probe)
            session.flush()
            count = session.scalar(select(func.count()).select_from(JobRecord))
        return int(count or 0)
    finally:
        store.close()


def database_fix(backend: str, database: str | None) -> str:
    """What to do when the database of ``backend`` (``"sqlite"``, ``"postgresql"``...) cannot be used."""
    if backend == "sqlite":
        return (
            f"make sure {database} is a SQLite file (or absent) that this account can write, in a "
            "folder it can write (SQLite adds -wal and -shm files beside it); or set "
            "StagingApp.db_url to another file"
        )
    return (
        "check that the database server is running and reachable from here, and that the URL's user, "
        "password and database are right and the user may create tables and write rows"
    )


def probe_values(model: Any) -> dict[str, Any]:
    """Column values for a probe row of ``model``: a ``doctor-...`` primary key, recognisable names, and
    a value of the right type for every other column that needs one (so the probe keeps working when
    columns are added)."""
    known = {
        "owner": "jupyter-staging-doctor",
        "name": "jupyter staging doctor probe",
        "state": "succeeded",
        "method": "copy",
    }
    values: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.primary_key:
            values[column.key] = f"doctor-{uuid.uuid4().hex[:24]}"
        elif column.key in known:
            values[column.key] = known[column.key]
        elif column.nullable or column.default is not None or column.server_default is not None:
            continue
        else:
            values[column.key] = _probe_value(column.type)
    return values


def _probe_value(column_type: Any) -> Any:
    """A value of SQLAlchemy type ``column_type`` (a ``TypeDecorator`` by the type it stores): now, False,
    0, ``{}`` or ``""``."""
    if isinstance(column_type, TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, DateTime):
        return utcnow()
    if isinstance(column_type, Boolean):
        return False
    if isinstance(column_type, (Integer, Numeric)):
        return 0
    if isinstance(column_type, JSON):
        return {}
    return ""
