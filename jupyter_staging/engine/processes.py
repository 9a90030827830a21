"""Who runs a job: this process's runner id (``host:pid``), whether another runner is alive, the default
owner of a job (the user running the process) and the key file of a SQLite job database."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from sqlalchemy.engine import make_url


def this_runner() -> str:
    """The runner id of this process, ``<host name>:<pid>`` (a job's ``runner`` column)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def runner_alive(runner: str) -> bool:
    """True when ``runner`` (``host:pid``) is a live process on this host; False when it is gone or
    cannot be checked from here (another host)."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current_user() -> str:
    """The name of the user running this process (the default owner of a job), else ``"user"``."""
    try:
        return getpass.getuser()
    except Exception:
        return "user"


def default_key_file(db_url: str) -> Path | None:
    """``<database file>.key`` for a SQLite database file, else None (an in-memory key)."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    return Path(url.database + ".key")
