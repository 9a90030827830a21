"""How a store reaches its database: the engine for a URL, writers taking turns, SQLite's log checkpointed.

:func:`make_engine` sets SQLite up (WAL journal, foreign keys, a private 0600 file); :class:`SQLStore` gives
thread-safe sessions, writers in arrival order (:class:`FairLock`; a request's write first) and, on SQLite,
checkpoints of the write-ahead log on a thread of their own (:func:`checkpoints`), never inside a commit.
Shared by the job store (:mod:`jupyter_staging.engine.store`) and the hub service's operations store.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from jupyter_staging.engine.migrate import Migrations, upgrade_database

log = logging.getLogger(__name__)

#: Database errors that say the database cannot be reached now (its server stopped or restarting, the
#: connection lost, a SQLite file locked past the busy timeout): the same call may succeed once it is back.
DATABASE_DOWN = (OperationalError, InterfaceError)


def database_reason(exc: BaseException) -> str:
    """The driver's reason for a database error ``exc`` (a SQLAlchemy error wrapping it, or the driver's
    own): its class and first line, at most 300 characters (the drivers name host and port, never the
    password)."""
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {(str(orig).strip().splitlines() or [''])[0]}"[:300]


#: Mode of a SQLite job database and its ``-wal`` / ``-shm`` files: read and write by the owner only.
PRIVATE_FILE_MODE = 0o600
#: Seconds after a write before a SQLite database's write-ahead log is checkpointed (background thread).
CHECKPOINT_DELAY = 1.0


def sqlite_file(db_url: str) -> str | None:
    """The file of a SQLite ``db_url`` (None for other databases and in-memory SQLite)."""
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):  # a SQLite URI (``?uri=true``): leave its file alone
        return None
    return url.database


def make_private(path: str) -> None:
    """Create the SQLite file ``path`` with mode 0600 when missing, and tighten it and its ``-wal`` and
    ``-shm`` files to 0600 when they allow more (the database holds every job's details). Files of
    another user are logged and left as they are.

    An existing database is never opened here: closing any descriptor of the file drops every POSIX lock
    this process's SQLite connections hold on it (SQLite's "How To Corrupt" page, 2.2), and another process
    closing its last connection (``jupyter staging doctor``, an admin's ``sqlite3``) would then take this
    server for gone and delete the write-ahead log under it (``disk I/O error`` on the server's next
    read)."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError as err:
        log.warning("cannot create the job database %s: %s", path, err.strerror)
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & ~PRIVATE_FILE_MODE:
                os.chmod(name, mode & PRIVATE_FILE_MODE)
        except FileNotFoundError:
            continue
        except OSError as err:
            log.warning("cannot make %s private (mode 0600): %s", name, err.strerror)


#: Seconds a SQLite writer waits for another connection's write lock before ``database is locked``. A lease
#: (:mod:`~jupyter_staging.engine.leases`) must outlast such a wait, or a renewal stuck behind a long write
#: would let another host take over a job its runner still runs.
SQLITE_BUSY_TIMEOUT = 30.0


def make_engine(db_url: str) -> Engine:
    """Create an engine for ``db_url``; SQLite gets WAL, foreign keys and thread sharing, and its file
    (with ``-wal`` and ``-shm``, which SQLite creates with the database's mode) is 0600."""
    if db_url.startswith("sqlite"):
        path = sqlite_file(db_url)
        if path is not None:
            make_private(path)
        engine = create_engine(
            db_url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
            json_serializer=json.dumps,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            if path is not None:  # checkpoints are SQLStore's background thread's (off the writers' path)
                cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()
            if path is not None:
                make_private(path)

        return engine
    return create_engine(db_url, pool_pre_ping=True)


class FairLock:
    """A reentrant lock granted in the order it was asked for; ``acquire(first=True)`` (a request's write)
    goes before the others, after earlier ``first`` ones.

    A :class:`threading.RLock` lets the thread that releases it take it again at once, before a waiting
    thread has woken (it still holds the GIL): a request could wait tens of milliseconds behind a job
    writing its bookkeeping in short transactions. Here a release hands the lock to the next waiter. A wait
    interrupted by an exception (``KeyboardInterrupt`` in a kernel) leaves the queue as it was."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[tuple[int, threading.Lock]] = deque()
        #: Waiters at the head of the queue that asked with ``first``.
        self._firsts = 0
        self._owner: int | None = None
        self._depth = 0

    def acquire(self, first: bool = False) -> None:
        """Take the lock (again, when this thread holds it), waiting for the earlier waiters."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner is None or self._owner == me:  # free: nobody waits (a release hands it on)
                self._owner = me
                self._depth += 1
                return
            gate = threading.Lock()
            gate.acquire()
            if first:
                self._waiters.insert(self._firsts, (me, gate))
                self._firsts += 1
            else:
                self._waiters.append((me, gate))
        try:
            gate.acquire()  # released by the previous owner once it has made this thread the owner
        except BaseException:
            with self._mutex:
                if self._owner == me:  # handed over meanwhile: hand it on
                    self._depth = 1
                    self._release_locked()
                else:
                    self._forget(me, gate)
            raise

    def release(self) -> None:
        """Give up one level; the last hands the lock to the first waiter."""
        with self._mutex:
            self._release_locked()

    def _release_locked(self) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
            if self._waiters:
                self._owner, gate = self._waiters.popleft()
                self._firsts = max(0, self._firsts - 1)
                self._depth = 1
                gate.release()

    def _forget(self, me: int, gate: threading.Lock) -> None:
        index = self._waiters.index((me, gate))
        del self._waiters[index]
        if index < self._firsts:
            self._firsts -= 1


def checkpoints(ref: weakref.ref[SQLStore], written: threading.Event, closing: threading.Event) -> None:
    """Checkpoint a SQLite store's write-ahead log :data:`CHECKPOINT_DELAY` seconds after writes, on this
    thread, until ``closing`` is set or the store is gone: the automatic checkpoint (copying the log into
    the database, with an fsync) would run inside whichever commit crossed 1,000 pages, a request's as
    likely as a job's."""
    while not closing.is_set():
        if not written.wait(CHECKPOINT_DELAY * 10) or closing.wait(CHECKPOINT_DELAY):
            continue
        written.clear()
        store = ref()
        if store is None:
            return
        try:
            with store.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # the next write tries again
            log.warning("job database checkpoint failed: %s", exc)
        del store


class SQLStore:
    """Thread-safe sessions on the tables of ``base`` at ``db_url`` (any SQLAlchemy URL). The database is
    brought to the newest revision of ``migrations`` first (:func:`~jupyter_staging.engine.migrate.
    upgrade_database`: tables created when missing, an existing database upgraded in place). Shared by
    the job store and the hub service's operations store."""

    def __init__(self, db_url: str, base: type[DeclarativeBase], migrations: Migrations) -> None:
        self.db_url = db_url
        self.engine = make_engine(db_url)
        upgrade_database(self.engine, migrations)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer; serialising our own writers (first come, first served) avoids
        # "database is locked" retries.
        self._write_lock = FairLock()
        self._written, self._closing = threading.Event(), threading.Event()
        if sqlite_file(db_url) is not None:
            # The thread holds the store weakly: a store dropped without close() ends it too.
            weakref.finalize(self, self._closing.set)
            args = (weakref.ref(self), self._written, self._closing)
            threading.Thread(target=checkpoints, args=args, name="staging-db-checkpoint", daemon=True).start()

    @contextmanager
    def session(self, *, first: bool = False) -> Iterator[Session]:
        """A session that commits on success and rolls back on error; ``first``: one a request waits for,
        served before the queued transactions of running jobs."""
        self._write_lock.acquire(first)
        try:
            with self._sessions() as session, session.begin():
                yield session
        finally:
            self._write_lock.release()
            self._written.set()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only, not queued behind this process's writers: SQLite in WAL mode (like any
        server database) lets readers run beside its one writer, so showing a job never waits for a big
        job's batch of chunk records. Nothing read is changed, so its transaction writes nothing."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        """Stop the checkpoints and dispose of the engine's connections (SQLite checkpoints the log as
        the last one closes)."""
        self._closing.set()
        self._written.set()
        self.engine.dispose()
