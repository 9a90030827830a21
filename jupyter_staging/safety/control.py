"""A running job's control token: pause / cancel requests, progress and log callbacks.

Every blocking loop (sources, destinations, converters, part-file writers) checks it between blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jupyter_staging.errors import JobInterrupted


class JobControl:
    """What a worker thread needs from the job that runs it.

    ``check()`` raises :class:`~jupyter_staging.errors.JobInterrupted` once ``interrupt(reason)`` has been
    called (reason ``"paused"`` or ``"cancelled"``); sources call it between blocks, so a pause or cancel
    takes effect within one block (well under a second). ``add_bytes(n)`` / ``add_rows(n)`` report
    progress in bytes and rows.
    """

    def __init__(
        self,
        on_bytes: Callable[[int], None] | None = None,
        on_rows: Callable[[int], None] | None = None,
        log: Callable[[str, str], None] | None = None,
    ) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self._aborts: list[Callable[[], None]] = []
        self._aborts_lock = threading.Lock()
        self._on_bytes = on_bytes
        self._on_rows = on_rows
        self._log = log

    def interrupt(self, reason: str) -> None:
        """Ask the worker to stop at its next check; ``reason`` is ``"paused"``, ``"cancelled"``,
        ``"shutdown"`` or ``"superseded"`` (another server took the job over: the run records nothing). A
        cancel asked for stands: a later pause (a click after the cancel) or shutdown does not replace it;
        nothing replaces ``"superseded"``, and it replaces a cancel (the job is no longer this run's)."""
        if self.reason != "superseded" and (self.reason != "cancelled" or reason == "superseded"):
            self.reason = reason
        self._event.set()
        with self._aborts_lock:
            aborts = list(self._aborts)
        for abort in aborts:
            _call_quietly(abort)

    @contextmanager
    def aborting(self, abort: Callable[[], None]) -> Iterator[None]:
        """While the block runs, a pause or cancel also calls ``abort()`` (on the thread that asks for
        it; at once when the job was already interrupted): a source passes what shuts down the connection
        a read may be blocked on (a server that stalls mid-body), so the worker wakes at once instead of
        after the read timeout (60 s), and its next :meth:`check` raises. ``abort`` must be quick and
        thread-safe; what it raises is ignored."""
        with self._aborts_lock:
            self._aborts.append(abort)
        try:
            if self._event.is_set():
                _call_quietly(abort)
            yield
        finally:
            with self._aborts_lock:
                self._aborts.remove(abort)

    @property
    def interrupted(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`JobInterrupted` if the job was asked to pause or cancel."""
        if self._event.is_set():
            raise JobInterrupted(self.reason or "cancelled")

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds`` (for retry back-off), waking early and raising if interrupted."""
        if self._event.wait(seconds):
            raise JobInterrupted(self.reason or "cancelled")

    def add_bytes(self, n: int) -> None:
        if self._on_bytes is not None and n:
            self._on_bytes(n)

    def add_rows(self, n: int) -> None:
        if self._on_rows is not None and n:
            self._on_rows(n)

    def log(self, level: str, message: str) -> None:
        """Add a line to the job's log (``level`` is ``info``, ``warning`` or ``error``)."""
        if self._log is not None:
            self._log(level, message)


class DelegatingControl(JobControl):
    """The control of a part of ``job``'s work that reports its progress its own way: pause and cancel
    (:meth:`interrupt`, :attr:`interrupted`, :meth:`check`, :meth:`wait`) are ``job``'s; bytes, rows and
    log lines go to ``on_bytes`` / ``on_rows`` / ``log`` as for :class:`JobControl` (pass ``job.add_rows``
    and the like to forward them, None to drop them)."""

    def __init__(
        self,
        job: JobControl,
        *,
        on_bytes: Callable[[int], None] | None = None,
        on_rows: Callable[[int], None] | None = None,
        log: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(on_bytes=on_bytes, on_rows=on_rows, log=log)
        self._job = job

    def interrupt(self, reason: str) -> None:
        self._job.interrupt(reason)

    def aborting(self, abort: Callable[[], None]) -> Any:
        """``job``'s :meth:`JobControl.aborting`."""
        return self._job.aborting(abort)

    @property
    def interrupted(self) -> bool:
        return self._job.interrupted

    def check(self) -> None:
        self._job.check()

    def wait(self, seconds: float) -> None:
        self._job.wait(seconds)


def _call_quietly(abort: Callable[[], None]) -> None:
    """``abort()``, whatever it raises ignored (a connection already closed, say)."""
    try:
        abort()
    except Exception:  # noqa: S110 - best effort: the worker still stops at its next check
        pass
