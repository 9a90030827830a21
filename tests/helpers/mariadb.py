"""A throwaway MariaDB server from Debian's ``mariadb-server`` package, on 127.0.0.1, for tests.

``mariadb-install-db`` makes a data folder (in :func:`tempfile.mkdtemp`), ``mariadbd`` serves it with
``--skip-grant-tables`` (any user connects, no password: a test server only) and ``--skip-networking``
off, bound to 127.0.0.1 on a free port. As root, ``--user=root`` is passed (mariadbd refuses root
otherwise); the server never depends on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers.net import free_port
from tests.helpers.servers import stop_process


def find_mariadbd() -> str | None:
    """The ``mariadbd`` binary (Debian puts it in /usr/sbin), or None."""
    return shutil.which("mariadbd") or next(
        (p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if os.access(p, os.X_OK)), None
    )


class MariaDBServer:
    """``start()`` / ``stop()`` a MariaDB server; :meth:`create_database` gives SQLAlchemy URLs
    (PyMySQL driver)."""

    def __init__(self, mariadbd: str) -> None:
        self.mariadbd = mariadbd
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="staging-mariadb-"))
        self.datadir = self.workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def _user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self, timeout: float = 60.0) -> None:
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise RuntimeError("mariadb-install-db is missing (Debian's mariadb-server provides it)")
        subprocess.run(
            [install, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db", *self._user_args()],
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--socket={self.workdir / 'mysqld.sock'}",
                f"--pid-file={self.workdir / 'mysqld.pid'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--innodb-flush-log-at-trx-commit=0",
                *self._user_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait(timeout)

    def _wait(self, timeout: float) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited: {(self.workdir / 'server.log').read_text()[-2000:]}")
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root").close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (utf8mb4); returns its SQLAlchemy URL."""
        import pymysql

        with pymysql.connect(host="127.0.0.1", port=self.port, user="root") as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # test-chosen name
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{name}?charset=utf8mb4"

    def stop(self) -> None:
        try:
            stop_process(self.proc)
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)
