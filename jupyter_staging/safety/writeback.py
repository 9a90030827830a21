"""Starting the writeback of a file's bytes early: ``sync_file_range(2)`` with ``SYNC_FILE_RANGE_WRITE``.

A big local copy moves each range with ``copy_file_range(2)`` while a second core hashes the range before
(sha256 at about 1.6 GiB/s here, the pace of the copy), and the fsync before publishing then wrote all of
the file's dirty pages at once: 0.56-0.74 s of a 2.0-2.3 s copy of 2 GiB, the disk idle until then. Starting
each range's writeback as soon as it is copied lets the disk write while the hashing runs. In a loop making
the same calls as the engine, interleaved with the page cache dropped, the fsync then found nothing left to
write (0.00 s in every run) and 2 GiB took 1.47-1.64 s against 2.00-2.34 s while the host was quiet; while
it was slow (every CPU-bound step twice as long), the two were alike (bench/README.md, "Fifteenth
session").

Unlike ``posix_fadvise(POSIX_FADV_DONTNEED)`` (:meth:`~jupyter_staging.safety.partfile.PartFile.write_back`),
this neither drops the pages (the hash reads them back from the page cache) nor drains the page lists of
every CPU. It does not wait for the writes to reach the disk (it may block while the device's queue is
full) and writes no metadata: durability still comes from the fsync, this only starts the writes earlier.
Python's :mod:`os` has no binding for it, so the C library's is called through :mod:`ctypes` (which
releases the GIL during the call); where there is none (not Linux), nothing is done.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

#: ``SYNC_FILE_RANGE_WRITE`` of ``<linux/fs.h>``: start the writeback of the dirty pages of the range.
SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """The C library's ``sync_file_range``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # here: a Python built without _ctypes still copies, only without the hint
    except ImportError:
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Start writing bytes ``offset`` to ``offset + length`` of the file open as ``fd`` to its disk
    (bytes; ``length`` 0: to the end of the file), without waiting for them. A hint: returns False, and
    does nothing, where the system or the file system cannot (not Linux, a pipe, ``EINVAL``); never
    raises."""
    call = _sync_file_range()
    if call is None:
        return False
    return call(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
