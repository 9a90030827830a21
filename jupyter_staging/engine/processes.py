"""Who runs a job: this process's runner id (``host:pid:start``), whether another runner of this host is
alive, the default owner of a job (the user running the process) and the key file of a SQLite job database.
A runner of another host is judged by its lease instead (:mod:`~jupyter_staging.engine.leases`)."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

from sqlalchemy.engine import make_url


def _started(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``,
    proc(5)), as text; None where there is no such file (another system, the process gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def host_name() -> str:
    """The name of this host, as runner ids give it (its own function so tests can play two hosts)."""
    return socket.gethostname()


def this_runner() -> str:
    """The runner id of this process (a job's ``runner`` column): ``<host name>:<pid>:<start>``, where
    ``<start>`` is when the process started (:func:`_started`), so that another process given the same
    pid later (a restarted container's PID 1) is not taken for it; ``<host name>:<pid>`` where the start
    cannot be read."""
    pid = os.getpid()
    started = _started(pid)
    return f"{host_name()}:{pid}" + (f":{started}" if started else "")


def parse_runner(runner: str) -> tuple[str, str, str | None]:
    """``(host, pid, start)`` of a runner id (:func:`this_runner`); ``start`` is None for an id of an earlier
    release (``host:pid``). The host name may hold colons (an IPv6 literal); the pid is digits."""
    head, _, last = runner.rpartition(":")
    host, _, pid = head.rpartition(":")
    if not (host and pid.isdigit()):  # host:pid
        return head, last, None
    return host, pid, last


def runner_alive(runner: str, host: str | None = None) -> bool:
    """True when ``runner`` (:func:`this_runner`) is a live process on ``host`` (default: this host, by
    :func:`host_name`; a manager passes the host of its own runner id), which must be this one: its pid is
    alive and, when the id gives one, started at that time. False when it is gone, its pid belongs to a
    process started since, or it cannot be checked from here (another host). An id of an earlier release
    (``host:pid``) is checked by its pid alone."""
    runner_host, pid, started = parse_runner(runner)
    if runner_host != (host or host_name()) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started is None or _started(int(pid)) in (started, None)


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
