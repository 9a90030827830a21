"""Who runs a job: this process's runner id (``host:pid:start``), whether another runner of this host is
alive, the default owner of a job (the user running the process) and the key file of a SQLite job database.
A runner of another host is judged by its lease instead (:mod:`~jupyter_staging.engine.leases`).

A runner id also says the kind of engine that runs the job (:func:`runner_kind`): a server's (a Jupyter
server, a script's own manager: ``host:pid:start``, as in every release) or a kernel's
in-process engine (``kernel/host:pid:start``, :class:`~jupyter_staging.kernel.backends.LocalBackend`). An
engine takes over only the jobs of its own kind: a kernel pointed at a server's job database never runs the
jobs of that server (dead, or late renewing its leases), which the server resumes at its next start."""

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


#: The kind of the runners of a server's engine (a Jupyter server, a script's manager).
SERVER = "server"
#: The kind of the runners of a kernel's in-process engine.
KERNEL = "kernel"
#: The runner kinds.
RUNNER_KINDS = (SERVER, KERNEL)
#: What begins the runner id of a kernel's engine (no host name holds a ``/``); a server's has no prefix.
KERNEL_PREFIX = f"{KERNEL}/"


def this_runner(kind: str = SERVER) -> str:
    """The runner id of this process (a job's ``runner`` column) for an engine of ``kind``
    (:data:`RUNNER_KINDS`): ``<host name>:<pid>:<start>``, where ``<start>`` is when the process started
    (:func:`_started`), so that another process given the same pid later (a restarted container's PID 1) is
    not taken for it; ``<host name>:<pid>`` where the start cannot be read. A kernel's id begins with
    :data:`KERNEL_PREFIX`. Raises :class:`ValueError` for another ``kind``."""
    check_kind(kind)
    pid = os.getpid()
    started = _started(pid)
    prefix = KERNEL_PREFIX if kind == KERNEL else ""
    return f"{prefix}{host_name()}:{pid}" + (f":{started}" if started else "")


def check_kind(kind: str) -> str:
    """``kind`` when it is one of :data:`RUNNER_KINDS`; raises :class:`ValueError` otherwise."""
    if kind not in RUNNER_KINDS:
        raise ValueError(f"the runner kind must be one of {', '.join(RUNNER_KINDS)}, not {kind!r}")
    return kind


def runner_kind(runner: str | None) -> str:
    """The kind of engine (:data:`RUNNER_KINDS`) runner id ``runner`` names: :data:`KERNEL` when it begins
    with :data:`KERNEL_PREFIX`, else :data:`SERVER` (the ids of every earlier release, and no runner)."""
    return KERNEL if runner and runner.startswith(KERNEL_PREFIX) else SERVER


def parse_runner(runner: str) -> tuple[str, str, str | None]:
    """``(host, pid, start)`` of a runner id (:func:`this_runner`, its kind left out); ``start`` is None for
    an id of an earlier release (``host:pid``). The host name may hold colons (an IPv6 literal); the pid is
    digits."""
    runner = runner.removeprefix(KERNEL_PREFIX)
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
