"""A SQLite job database opened by another process while the server uses it (``jupyter staging doctor``, an
admin's ``sqlite3``, a kernel's in-process engine): the server's connections keep their locks, so the other
process closing its connection does not take the server for gone and delete the write-ahead log under it
(the server then answered ``disk I/O error``, a 500)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from jupyter_staging.engine.database import make_private
from jupyter_staging.engine.store import Store


def open_and_close_elsewhere(path: str) -> None:
    """Another process opens the database, reads and closes it (as the doctor or ``sqlite3`` would)."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('SELECT count(*) FROM staging_jobs').fetchall()\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, path], check=True, timeout=60)


def test_another_process_closing_the_database_leaves_the_servers_write_ahead_log(tmp_path):
    path = str(tmp_path / "jobs.sqlite")
    store = Store(f"sqlite:///{path}")
    try:
        with store.engine.connect() as first:
            first.exec_driver_sql("SELECT count(*) FROM staging_jobs").fetchall()
            # A second pooled connection, made while the first is open (a request beside a job's write).
            with store.engine.connect() as second:
                second.exec_driver_sql("SELECT count(*) FROM staging_jobs").fetchall()
            assert os.path.exists(f"{path}-wal")

            open_and_close_elsewhere(path)

            assert os.path.exists(f"{path}-wal"), "the other process deleted the server's write-ahead log"
            assert first.exec_driver_sql("SELECT count(*) FROM staging_jobs").scalar() == 0
    finally:
        store.close()


def test_the_database_file_is_still_created_private_and_tightened(tmp_path):
    path = tmp_path / "jobs.sqlite"
    make_private(str(path))
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    make_private(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
