"""Python's cyclic garbage collector held off while a link job builds its per-file records in bulk.

A job of N files keeps a few container objects per file alive for its whole run (the listed items, their
records in the resume data, the chunk rows, the manifest's objects). CPython runs a full collection, which
walks every tracked object of the process, whenever the objects that survived two younger collections since
the last full one outnumber a quarter of those it kept. A link job creates such objects faster than anything
else the engine does, since it reads no byte: a 20,000-file link job in the benchmark process (about 220,000
tracked objects) ran 4-6 full collections of 0.15-0.2 s each, 0.7-0.8 s of its 2.4-2.6 s, and a Jupyter
server holds more objects than that process.

:func:`collector_paused` holds automatic collection off for the length of such a run; the pending
collection then runs once, at the next allocation after it, instead of several times during it. Nothing is
left uncollected: reference counting frees everything that is not in a cycle, and the cycles are collected
at the next collection. This is the remedy Mercurial applies to its bulk loads (``util.nogc``), and the
``gc`` module's documentation names: "Automatic collection can be disabled by calling ``gc.disable()``".

The collector is process-wide. Runs on several threads share one pause (counted): the last to end
restores automatic collection, and only when it was enabled when the first began, so a process that
disabled it itself keeps it disabled. A pause lasts :data:`MAX_PAUSE_SECONDS` at most: a link job that
reads every byte to verify checksums, or one stuck on a hung mount, gives collection back to the server
after that. Code elsewhere in the process that turns the collector off *during* a pause finds it turned
on again when the pause ends (the ``gc`` module keeps no owner to ask).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Longest the collector is held off at a stretch (seconds): past it, automatic collection is back on until
#: the last run holding it ends. A 20,000-file link job takes about 2 s; a link job that reads every byte to
#: verify checksums, or one stuck on a hung mount, must not keep the whole server from collecting.
MAX_PAUSE_SECONDS = 60.0


class _CollectorPause:
    """How many runs hold the collector off, whether it was enabled before the first (and is to be
    restored), and the timer that restores it after ``limit`` seconds."""

    def __init__(self, limit: float = MAX_PAUSE_SECONDS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._holders = 0
        self._was_enabled = False
        self._timer: threading.Timer | None = None

    def begin(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._was_enabled = gc.isenabled()
                if self._was_enabled:
                    gc.disable()
                    self._timer = threading.Timer(self.limit, self._expire)
                    self._timer.daemon = True
                    self._timer.name = "staging-collector-limit"
                    self._timer.start()
            self._holders += 1

    def _expire(self) -> None:
        """The pause lasted ``limit`` seconds: collection is back on, for the rest of it too."""
        with self._lock:
            if self._holders and self._was_enabled:
                gc.enable()
                self._was_enabled = False  # nothing left to restore

    def end(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if self._was_enabled:
                    gc.enable()
                    self._was_enabled = False

    @property
    def holders(self) -> int:
        """Runs holding the collector off now."""
        with self._lock:
            return self._holders


_PAUSE = _CollectorPause()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold Python's automatic cyclic garbage collection off inside the block (see the module), on any
    thread; restored when the last block still open ends (also when it raises), or after
    :data:`MAX_PAUSE_SECONDS`, whichever comes first."""
    _PAUSE.begin()
    try:
        yield
    finally:
        _PAUSE.end()


def collector_holders() -> int:
    """How many blocks of :func:`collector_paused` are open now (0: the collector is as the process set
    it)."""
    return _PAUSE.holders
