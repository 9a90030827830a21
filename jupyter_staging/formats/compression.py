"""Compressed source files: which codec a suffix names, opening a file through it, reading its head.

Text and FITS sources may carry one compression suffix (``.gz``, ``.bz2``, ``.zst``) after their format
suffix (``x.csv.gz``). gzip and bz2 are decompressed with the standard library, zstd with Arrow.
"""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path
from typing import IO

import pyarrow as pa

__all__ = [
    "COMPRESSED_SUFFIXES",
    "SNIFF_BYTES",
    "comment_prefix_bytes",
    "compression_of",
    "head",
    "open_binary",
]

#: Compression suffixes a text or FITS source may carry, with their Arrow codec names.
COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
#: Bytes read from the start of a file to recognise its format.
SNIFF_BYTES = 64 * 1024


def compression_of(path: Path) -> str | None:
    """The Arrow codec name (``'gzip' | 'bz2' | 'zstd'``) of ``path``'s suffix, or None if uncompressed."""
    return COMPRESSED_SUFFIXES.get(path.suffix.lower())


def open_binary(path: Path) -> gzip.GzipFile | bz2.BZ2File | IO[bytes]:
    """Open ``path`` for reading, decompressing gzip/bz2 by suffix (zstd files are opened raw).

    Raises :class:`OSError` when the file cannot be opened.
    """
    codec = compression_of(path)
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - returned to a with-statement


def head(path: Path, size: int = SNIFF_BYTES) -> bytes:
    """The first ``size`` bytes of ``path`` (decompressed, zstd included), or ``b""`` if unreadable."""
    if compression_of(path) == "zstd":
        try:
            with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as stream:
                return stream.read(size)
        except (OSError, pa.ArrowException):
            return b""
    try:
        with open_binary(path) as fh:
            return fh.read(size)
    except (OSError, EOFError, ValueError):
        return b""


def comment_prefix_bytes(path: Path) -> int:
    """Bytes taken by the leading lines that start with ``#`` (comment header) in a text file.

    Looks at most at the first 4 MiB (decompressed); 0 when the first byte is not ``#``. Never raises.
    """
    if not head(path, 1).startswith(b"#"):
        return 0
    text = head(path, 4 * 1024 * 1024)
    offset = 0
    while text.startswith(b"#", offset):
        end = text.find(b"\n", offset)
        if end < 0:
            return len(text)
        offset = end + 1
    return offset
