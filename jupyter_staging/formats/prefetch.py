"""Reading ahead: a source's pieces produced in a reader thread while the caller encodes Parquet."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from jupyter_staging.formats.base import Piece

__all__ = ["PREFETCH_BATCHES", "Prefetch"]

#: Batches the reader thread may hold ahead of the writer.
PREFETCH_BATCHES = 4


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
