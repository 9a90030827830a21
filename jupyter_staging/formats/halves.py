"""A large CSV/TSV file's first part read from two offsets at once, on two cores.

Converting a table overlaps reading and encoding (:mod:`jupyter_staging.formats.prefetch`): while part
*n* is encoded, part *n + 1* is read. The first part has nothing to overlap with, and pyarrow's streaming
CSV reader parses on about one core, so the second core idles for the whole first read (0.6 s of a 2 s
conversion of 500 MB on a 2-core machine). Here the first part's first half (the *head*, from the first
data line to a line start near the middle) is parsed on the caller's thread while a thread of its own
reads on from that line start (the *tail*); the pieces come out in the file's order, head first, and the
tail then goes on to the end of the file as one stream.

The split is at a byte after a line feed, which is a row's end only when no quoted value holds a line
break across it: the head is read through :class:`BoundedFile`, which refuses any quote character, and
once it meets one the rows after those given out come from the file read as one stream
(:class:`SplitRefused`). The tail starts at a row, then. A quoted line break after the middle keeps the
caveat it has in one stream (it is read only when it falls inside one block of
:data:`~jupyter_staging.formats.csv.CSV_BLOCK_SIZE`), but the tail's blocks start at the middle, not at
the first line: whether such a file converts can differ from one stream's reading (an error either way,
never rows changed; pyarrow reports a quote left open). Files without such values give the same parts,
byte for byte.
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


class BoundedFile:
    """Bytes ``[start, end)`` of the file at ``path`` as a read-only stream for :class:`pyarrow.PythonFile`
    (``read``, ``tell``, ``close``), refusing ``refused`` (one byte, a quote character) with
    :class:`SplitRefused`. ``tell`` gives the offset in the whole file."""

    def __init__(self, path: Path, start: int, end: int, refused: bytes) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close(), as pyarrow's PythonFile does)
        self._fh.seek(start)
        self._position = start
        self._end = end
        self._refused = refused
        self.closed = False

    def read(self, nbytes: int = -1) -> bytes:
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


class _Tail(threading.Thread):
    """Reads ``pieces`` (the tail's) on a thread, holding up to ``rows`` rows; checks ``stop`` between
    pieces (one block: a few milliseconds)."""

    def __init__(self, pieces: Iterator[Piece], rows: int) -> None:
        super().__init__(name="staging-convert-tail", daemon=True)
        self.stop = threading.Event()
        self._source = pieces
        self._rows = rows
        self.pieces: list[Piece] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        held = 0
        try:
            for piece in self._source:
                self.pieces.append(piece)
                held += piece.batch.num_rows
                if held >= self._rows or self.stop.is_set():
                    return
        except BaseException as exc:  # raised in the caller after the pieces before it
            self.error = exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` is a ``kind`` or was raised from one (pyarrow may wrap errors of a Python file)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def read_in_halves(
    head: Iterator[Piece],
    tail: Iterator[Piece],
    tail_rows: int,
    whole: Callable[[int], Iterator[Piece]],
) -> Iterator[Piece]:
    """The pieces of a file read as ``head`` and then ``tail``, in order. The head is read here, its
    pieces given out as they come (a pause or a cancel between them acts at once); meanwhile the tail is
    read on a thread, up to ``tail_rows`` rows held, and then goes on here. When the head refuses its
    split (:class:`SplitRefused`), the rest comes from ``whole(rows given so far)``: the file as one
    stream, those rows skipped. An error of the head or of the tail is raised after the pieces before
    it, as one stream would raise it there. Closing the generator stops the tail's thread (after its
    current piece).

    Memory: the tail's ``tail_rows`` rows beside the head's pieces, which the part writer holds anyway
    until the first part is complete.
    """
    reader = _Tail(tail, tail_rows)
    reader.start()
    given = 0
    try:
        try:
            for piece in head:
                given += piece.batch.num_rows
                yield piece
        except Exception as exc:
            if not _caused_by(exc, SplitRefused):
                raise
            reader.stop.set()
            reader.join()
            reader.pieces.clear()
            _close(tail)
            yield from whole(given)
            return
        reader.join()
        while reader.pieces:
            yield reader.pieces.pop(0)
        if reader.error is not None:
            raise reader.error
        yield from tail
    finally:
        reader.stop.set()
        reader.join()
        _close(head)
        _close(tail)


def _close(pieces: Iterator[Piece]) -> None:
    close = getattr(pieces, "close", None)
    if close is not None:
        close()
