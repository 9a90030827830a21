"""Shared types of the conversion: a source of record batches (:class:`Source`, :class:`Piece`) and a
published part file (:class:`ChunkInfo`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from jupyter_staging.formats.arrow import conform

__all__ = ["ChunkInfo", "Piece", "Source", "TableSource", "without_paths"]


def without_paths(text: str, path: Path) -> str:
    """``text`` (a library's error message about ``path``) with the file's folders removed: messages
    name the file, never where it sits on the server."""
    for form in {str(path.resolve()), str(path.absolute()), str(path)}:
        text = text.replace(form, path.name)
    return text


@dataclass
class ChunkInfo:
    """One published part file.

    ``index`` is the 0-based part number, ``name`` the file name relative to the output folder
    (``part-00000.parquet``), ``rows`` its row count, ``bytes`` its size in bytes and ``sha256`` the hex
    digest of those bytes. ``last``: the table's last part (the conversion read the source to its end).
    """

    index: int
    name: str
    rows: int
    bytes: int
    sha256: str
    last: bool = False


class Piece(NamedTuple):
    """A record batch and the source byte positions (approximate) it was read between."""

    batch: pa.RecordBatch
    start: int
    end: int


class Source:
    """A tabular source: ``schema`` (with metadata), ``size`` bytes, ``pieces(skip_rows)`` in order."""

    schema: pa.Schema
    size: int

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        """The rows after the first ``skip_rows``, as batches in order, each conforming to ``schema``.

        Raises :class:`jupyter_staging.errors.ConversionFailed` when the source cannot be read.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the source's files."""


class TableSource(Source):
    """A table held in memory as one Arrow table, cut into batches of at most ``chunk_rows`` rows.

    ``size`` is the source file's size in bytes; each piece's byte positions are its share of it.
    """

    def __init__(self, table: pa.Table, size: int, chunk_rows: int) -> None:
        self.table = table
        self.schema = table.schema
        self.size = size
        self._chunk_rows = chunk_rows

    def pieces(self, skip_rows: int) -> Iterator[Piece]:
        total = max(1, self.table.num_rows)
        start = min(skip_rows, self.table.num_rows)
        for batch in self.table.slice(start).to_batches(max_chunksize=self._chunk_rows):
            stop = start + batch.num_rows
            yield Piece(conform(batch, self.schema), self.size * start // total, self.size * stop // total)
            start = stop

    def close(self) -> None:
        self.table = None  # type: ignore[assignment]
