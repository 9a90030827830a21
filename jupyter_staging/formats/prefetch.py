"""Reading ahead: a source's pieces produced in a reader thread while the caller encodes Parquet."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

from jupyter_staging.formats.base import Piece

__all__ = ["OVERLAP_MIN_BYTES", "PREFETCH_BATCHES", "Inline", "Prefetch", "ahead_of", "overlaps"]

T = TypeVar("T")

#: Batches the reader thread may hold ahead of the writer.
PREFETCH_BATCHES = 4


#: Sources of at most this many bytes are read, encoded and written on the calling thread: starting and
#: stopping a reader and a writer thread cost more than the overlap gains for a table of a few rows (a
#: folder of 20,000 small light curves). ``None`` (size unknown, or a compressed file: its size says
#: little of its rows) overlaps.
OVERLAP_MIN_BYTES = 4 * 1024 * 1024


def overlaps(size: int | None) -> bool:
    """True when a source of ``size`` bytes is read on a thread of its own (:class:`Prefetch`) and its
    parts are encoded on another (``PartWriter``)."""
    return size is None or size > OVERLAP_MIN_BYTES


class Inline:
    """An executor that runs each call at once, on the calling thread (``submit`` returns a done
    :class:`~concurrent.futures.Future`): ``PartWriter``'s encoder for a small source."""

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # raised by the future's result(), as a thread's would be
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to stop."""


@contextmanager
def ahead_of(items: Iterator[Piece], threads: bool) -> Iterator[Iterator[Piece]]:
    """``items`` read ahead on a thread (:class:`Prefetch`) with ``threads`` (:func:`overlaps`), else as
    they are (closed on exit)."""
    if threads:
        with Prefetch(items) as ahead:
            yield iter(ahead)
        return
    try:
        yield items
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


class Prefetch:
    """Runs an iterator in a reader thread, holding at most ``depth`` items ahead of the consumer.

    Reading (CSV parsing, FITS decoding) then overlaps with Parquet encoding (on the part writer's thread)
    (``DESIGN.md``: overlapping reader and writer reaches DuckDB's speed). An exception in the reader is
    raised again in the consumer. Use as a context manager so the reader is stopped on any exit.
    """

    _END = object()

    def __init__(self, items: Iterator[Piece], depth: int = PREFETCH_BATCHES) -> None:
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-convert-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                self._queue.put(item)
                if self._stop.is_set():
                    return
            self._queue.put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._queue.put(exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Piece]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the reader and wait for it (it finishes the batch it is reading).

        After the queue is emptied the reader can put at most one more item (there is room for it)
        before it sees the stop flag, so this never blocks on a full queue.
        """
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
