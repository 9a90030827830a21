"""A large CSV/TSV file's first part read from two offsets at once, on two cores.

Converting a table overlaps reading and encoding (:mod:`jupyter_staging.formats.prefetch`): while part
*n* is encoded, part *n + 1* is read. The first part has nothing to overlap with, and pyarrow's streaming
CSV reader parses on about one core, so the second core idles for the whole first read (0.6 s of a 2 s
conversion of 500 MB on a 2-core machine). Here the first part's first half (the *head*, from the first
data line to a line start near the middle) is parsed on a thread of its own while the caller's thread
reads on from that line start (the *tail*); the pieces come out in the file's order, head first, and the
tail then goes on to the end of the file as one stream.

The split is at a byte after a line feed, which is a row's end only when no quoted value holds a line
break across it: the head is read through :class:`BoundedFile`, which refuses any quote character, and a
head that holds one is dropped and the file read whole as one stream (:class:`SplitRefused`), before any
piece is given out. The tail starts at a row, then, and parses as the one stream would from there, with
the same caveat a quoted line break already has (it is read only when it falls inside one block of
:data:`~jupyter_staging.formats.csv.CSV_BLOCK_SIZE`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from jupyter_staging.formats.base import Piece

__all__ = ["BoundedFile", "SplitRefused", "read_in_halves"]

#: Bytes read at a time by :class:`BoundedFile` (pyarrow asks for its block size, this caps it).
_READ_BYTES = 1024 * 1024


class SplitRefused(Exception):
    """The head holds a byte (a quote character) that may put the split point inside a quoted value."""


class _Stopped(Exception):
    """The head's reader was stopped (the conversion ended early: a pause, a cancel, an error)."""


class BoundedFile:
    """Bytes ``[start, end)`` of the file at ``path`` as a read-only stream for :class:`pyarrow.PythonFile`
    (``read``, ``tell``, ``close``), refusing ``refused`` (one byte, a quote character) with
    :class:`SplitRefused`. ``tell`` gives the offset in the whole file. Raises :class:`_Stopped` from
    ``read`` once ``stop`` is set."""

    def __init__(self, path: Path, start: int, end: int, refused: bytes, stop: threading.Event) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close(), as pyarrow's PythonFile does)
        self._fh.seek(start)
        self._position = start
        self._end = end
        self._refused = refused
        self._stop = stop
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
        if self._stop.is_set():
            raise _Stopped
        left = self._end - self._position
        data = self._fh.read(min(left, _READ_BYTES) if nbytes < 0 else min(left, nbytes, _READ_BYTES))
        if self._refused in data:
            raise SplitRefused
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def close(self) -> None:
        self._fh.close()
        self.closed = True


class _Head(threading.Thread):
    """Runs ``pieces`` (the head's, given the stop event) to its end on a thread, keeping them."""

    def __init__(self, pieces: Callable[[threading.Event], Iterator[Piece]]) -> None:
        super().__init__(name="staging-convert-head", daemon=True)
        self.stop = threading.Event()
        self._source = pieces(self.stop)
        self.pieces: list[Piece] = []
        self.error: BaseException | None = None
        self.refused = False

    def run(self) -> None:
        try:
            for piece in self._source:
                self.pieces.append(piece)
        except BaseException as exc:  # raised again in the caller, in the file's order
            if _caused_by(exc, SplitRefused):
                self.refused = True
            elif not _caused_by(exc, _Stopped):
                self.error = exc
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is a ``kind`` or was raised from one (pyarrow wraps errors of a Python file)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def read_in_halves(
    head: Callable[[threading.Event], Iterator[Piece]],
    tail: Iterator[Piece],
    first_rows: int,
    whole: Callable[[], Iterator[Piece]],
) -> Iterator[Piece]:
    """The pieces of a file read as ``head`` (on a thread, stopped when the event it is given is set)
    and then ``tail`` (read here meanwhile, up to ``first_rows`` rows held), in order; ``whole()`` (the
    file as one stream) instead when the head refused its split (:class:`SplitRefused`). An error of the
    head or of the tail is raised after the pieces before it, as one stream would raise it there.

    Memory: the head's pieces and up to ``first_rows`` rows of the tail, about one part: the part writer
    holds the first part's rows whole anyway.
    """
    reader = _Head(head)
    reader.start()
    held: list[Piece] = []
    failed: BaseException | None = None  # the tail's error, raised after the pieces before it
    try:
        rows = 0
        try:
            for piece in tail:
                held.append(piece)
                rows += piece.batch.num_rows
                if rows >= first_rows or not reader.is_alive():
                    break
        except Exception as exc:
            failed = exc
        reader.join()
        if reader.refused:
            held.clear()
            _close(tail)
            yield from whole()
            return
        yield from reader.pieces
        reader.pieces.clear()
        if reader.error is not None:
            raise reader.error
        yield from held
        held.clear()
        if failed is not None:
            raise failed
        yield from tail
    finally:
        reader.stop.set()
        reader.join()
        _close(tail)


def _close(pieces: Iterator[Piece]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()
