"""Fixtures of the hub-service tests: a real JupyterHub per module, a real PostgreSQL per session.

These tests are synchronous (``requests`` against real processes), so they need no pytest-asyncio mode
and run in the main invocation or on their own (``python -m pytest tests/hub``).
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.data import KEPLER_NAME
from tests.helpers.groups import skip_group
from tests.helpers.hub import HubProcess, find_proxy
from tests.helpers.mariadb import MariaDBServer, find_mariadbd
from tests.helpers.net import free_port

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="session")
def kepler() -> Path:
    """The real Kepler light curve in ``../shared/data`` (never modified: tests copy it)."""
    path = SHARED_DATA / KEPLER_NAME
    if not path.is_file():
        pytest.fail(f"the shared mission data is missing: {path}")
    return path


def build_archive(workdir: Path, kepler: Path) -> None:
    """``workdir/archive``: a copy of the Kepler file, a symlink leaving the archive, a folder, a file whose
    name is not UTF-8 (Latin-1 ``caf\\xe9.fits``) with a UTF-8 symlink to it; and ``workdir/outside``: what
    the hostile requests try to reach."""
    archive = workdir / "archive"
    outside = workdir / "outside"
    (archive / "kepler").mkdir(parents=True)
    outside.mkdir()
    shutil.copyfile(kepler, archive / "kepler" / KEPLER_NAME)
    (outside / "secret.txt").write_text("not for users\n")
    (archive / "escape.fits").symlink_to(outside / "secret.txt")
    (archive / "a-folder").mkdir()
    (archive / os.fsdecode(b"caf\xe9.fits")).write_bytes(b"data" * 100)
    (archive / "cafe.fits").symlink_to(os.fsdecode(b"caf\xe9.fits"))


@pytest.fixture(scope="session")
def proxy_command() -> str:
    """configurable-http-proxy (``scripts/ci-hub-deps.sh`` installs it)."""
    found = find_proxy()
    if found is None:
        skip_group("hub", "configurable-http-proxy is not installed: run scripts/ci-hub-deps.sh")
    return found


def start_hub(
    workdir: Path,
    kepler: Path,
    proxy: str,
    service_args: list[str] | None = None,
    service_env: dict[str, str] | None = None,
) -> HubProcess:
    build_archive(workdir, kepler)
    hub = HubProcess(workdir, proxy=proxy, service_args=service_args, service_env=service_env)
    hub.start()
    return hub


# -- PostgreSQL --------------------------------------------------------------------------------------


class PostgresServer:
    """A throwaway PostgreSQL cluster from Debian's binaries, on 127.0.0.1 with trust authentication.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` account and its
    commands run through ``runuser``. The data folder is made with :func:`tempfile.mkdtemp` (pytest's
    own tmp folders are private to root) and removed by :meth:`stop`.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.datadir = Path(tempfile.mkdtemp(prefix="staging-pg-"))
        self.as_postgres = os.geteuid() == 0
        self.superuser = "postgres" if self.as_postgres else getpass.getuser()
        if self.as_postgres:
            shutil.chown(self.datadir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        data = str(self.datadir / "data")
        self._run("initdb", "-D", data, "-A", "trust", "-U", self.superuser, "--no-sync", "-E", "UTF8")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.datadir} -c fsync=off"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", str(self.datadir / "server.log"), "-w", "start")

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL (psycopg 3 driver)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 - test-chosen name
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{name}"

    def url(self, database: str) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.datadir, ignore_errors=True)


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` holding initdb and pg_ctl, or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL (skipped, with the reason, when Debian's postgresql is not installed)."""
    bindir = postgres_bindir()
    if bindir is None:
        skip_group(
            "postgres",
            "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: run scripts/ci-hub-deps.sh",
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        skip_group(
            "postgres", "running as root without runuser: cannot start PostgreSQL as the postgres account"
        )
    server = PostgresServer(bindir)
    started = time.monotonic()
    server.start()
    print(f"PostgreSQL on 127.0.0.1:{server.port} started in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()


# -- MariaDB ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """A running MariaDB (skipped, group ``mariadb``, when Debian's mariadb-server is not installed)."""
    binary = find_mariadbd()
    if binary is None:
        skip_group("mariadb", "mariadbd not found: run scripts/ci-hub-deps.sh")
    server = MariaDBServer(binary)
    started = time.monotonic()
    server.start()
    print(f"MariaDB on 127.0.0.1:{server.port} started in {time.monotonic() - started:.1f} s")
    yield server
    server.stop()


# -- one empty database of each kind -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    """The SQLAlchemy URL of a new, empty database on SQLite, PostgreSQL and MariaDB (one test run per kind;
    the servers are started once per session). Named after the test's node id, so that tests of several
    modules never share one."""
    name = f"t_{abs(hash(request.node.nodeid)) % 10**10}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create_database(name)
    return request.getfixturevalue("mariadb").create_database(name)
