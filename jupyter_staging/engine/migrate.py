"""Schema migrations with Alembic: the job database and the hub service's operations database are
upgraded in place when the server (or the service) starts.

Each database has its own folder of revisions and its own version table, so both may live in one
database (or share one with other applications): the job tables record their revision in
``staging_alembic_version``, the operations table in ``staging_hub_alembic_version``. The first revision
of each is a baseline that creates only what is missing: a database made by release 0.1.0 (tables from
``create_all``, no version table) is adopted as it is, and every later revision applies to it.

Two processes starting on one database at once (two users' servers, two hub-service replicas) are
serialised with PostgreSQL's ``pg_advisory_xact_lock``, MySQL / MariaDB's ``GET_LOCK`` and, on SQLite,
by taking the database's write lock first (``BEGIN IMMEDIATE``): the Python driver would otherwise begin
its transaction only at the first INSERT, after both processes had read "no revision yet". See https://alembic.sqlalchemy.org/en/latest/cookbook.html
("Sharing a Connection across one or more programmatic migration commands").
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from jupyter_staging._version import __version__
from jupyter_staging.errors import DatabaseTooNew

#: Alembic's script folder (``env.py``) shared by both databases.
SCRIPT_LOCATION = Path(__file__).with_name("migrations")
#: Seconds to wait for another process's migration (MySQL ``GET_LOCK``).
LOCK_TIMEOUT_SECONDS = 60
#: Alembic's ``context`` is one object per process: one migration at a time in this process.
_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Migrations:
    """The revisions of one database: the folder holding them and the table recording the applied one."""

    versions: Path
    version_table: str
    #: What the database is, for people ("job database", "operations database").
    what: str = "job database"

    def config(self) -> Config:
        """An Alembic :class:`~alembic.config.Config` for these revisions (no ``alembic.ini``)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
        cfg.set_main_option("version_locations", str(self.versions))
        cfg.set_main_option("path_separator", "os")
        return cfg

    def head(self) -> str:
        """The newest revision id."""
        head = ScriptDirectory.from_config(self.config()).get_current_head()
        if head is None:
            raise RuntimeError(f"no revisions in {self.versions}")
        return head

    def knows(self, revision: str) -> bool:
        """Whether ``revision`` is one of these revisions (False: one of a later release)."""
        try:
            return ScriptDirectory.from_config(self.config()).get_revision(revision) is not None
        except CommandError:
            return False

    def too_new(self, revision: str) -> DatabaseTooNew:
        """The error for a database at ``revision``, a revision these migrations do not know."""
        return DatabaseTooNew(
            f"the {self.what} is at schema revision {revision!r} (table {self.version_table}), which "
            f"jupyter_staging {__version__} does not know (its newest is {self.head()!r}): a later release "
            "upgraded it. Install that release again, or downgrade the database with it to "
            f"{self.head()!r} (docs: The job database, Downgrading); nothing was changed"
        )


#: The job database (``jupyter_staging.engine.store``).
JOB_MIGRATIONS = Migrations(SCRIPT_LOCATION / "jobs", "staging_alembic_version")


def upgrade_database(engine: sa.Engine, migrations: Migrations) -> None:
    """Bring the database of ``engine`` to the newest revision of ``migrations`` (nothing to do when it is
    there already), holding a database-wide lock meanwhile.

    Raises :class:`~jupyter_staging.errors.DatabaseTooNew` (nothing changed) when the database records a
    revision ``migrations`` do not know (a later release upgraded it), and
    :class:`sqlalchemy.exc.SQLAlchemyError` when the database refuses a statement (the transaction is
    rolled back: on PostgreSQL the whole upgrade, elsewhere the statement)."""
    cfg = migrations.config()
    name = migrations.version_table
    with _PROCESS_LOCK, engine.connect() as conn, _session_lock(conn, name):
        with conn.begin(), _migration_lock(conn, name):
            cfg.attributes["connection"] = conn
            cfg.attributes["version_table"] = name
            revision = _revision(conn, name)
            if revision is not None and not migrations.knows(revision):
                raise migrations.too_new(revision)
            command.upgrade(cfg, "head")


def current_revision(engine: sa.Engine, migrations: Migrations) -> str | None:
    """The revision recorded in the database, or None before the first upgrade."""
    with engine.connect() as conn:
        return _revision(conn, migrations.version_table)


def _revision(conn: sa.Connection, version_table: str) -> str | None:
    """The revision recorded in ``version_table`` on ``conn`` (None: no table, or no row)."""
    context = MigrationContext.configure(conn, opts={"version_table": version_table})
    return context.get_current_revision()


def create_missing(conn: sa.Connection, tables: list[sa.Table]) -> None:
    """Create the ``tables`` (with their indexes) that do not exist yet, and the missing indexes of those
    that do; used by baseline revisions to adopt databases made before migrations existed."""
    inspector = sa.inspect(conn)
    existing = set(inspector.get_table_names())
    for table in tables:
        if table.name not in existing:
            table.create(conn)
            continue
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)


def mysql_fractional_seconds(conn: sa.Connection, columns: list[tuple[str, str, bool]], *, fsp: int) -> None:
    """On MySQL / MariaDB, make each ``(table, column, nullable)`` a ``DATETIME(fsp)`` (fractional second
    digits, 0-6); nothing on other databases."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return
    kind = f"DATETIME({fsp})" if fsp else "DATETIME"
    for table, column, nullable in columns:
        null = "NULL" if nullable else "NOT NULL"
        conn.execute(sa.text(f"ALTER TABLE `{table}` MODIFY `{column}` {kind} {null}"))


@contextmanager
def _session_lock(conn: sa.Connection, name: str) -> Iterator[None]:
    """On MySQL / MariaDB, the lock named ``name`` across processes (``GET_LOCK``, held by the session),
    taken before the upgrade's transaction begins and released only after it is committed: released
    inside it, another process read the version table before the last revision's row was committed,
    and ran that revision again (its ``CREATE TABLE`` failed). Nothing elsewhere (see
    :func:`_migration_lock`)."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        yield
        return
    got = conn.execute(
        sa.text("SELECT GET_LOCK(:name, :timeout)"), {"name": name, "timeout": LOCK_TIMEOUT_SECONDS}
    ).scalar()
    conn.commit()  # end the transaction the statement began; the lock is the session's
    if got != 1:
        raise sa.exc.OperationalError("GET_LOCK", {"name": name}, Exception("migration lock timed out"))
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        conn.commit()


@contextmanager
def _migration_lock(conn: sa.Connection, name: str) -> Iterator[None]:
    """A lock named ``name`` across processes on one database server, held for the block and released
    with the transaction's end (PostgreSQL's transaction-level advisory lock, SQLite's write lock);
    MySQL / MariaDB hold :func:`_session_lock` around the transaction instead."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        key = zlib.crc32(name.encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield
    elif dialect == "sqlite":
        # pysqlite has not begun a transaction yet (it would at the first INSERT / UPDATE); begin one that
        # holds the write lock now, waiting up to the driver's busy timeout for another process's upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield
    else:
        yield
