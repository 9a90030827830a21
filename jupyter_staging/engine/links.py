"""Hard links and symlinks of local source files: one thread links, a pool reads ahead for the sha256.

A link moves no byte, so its cost is Python's per-file bookkeeping (which holds the GIL: more threads do
not make it faster) plus the sha256 of the source that the manifest records (DESIGN.md, "Job model"),
whose reads release the GIL and gain from running several at once (a cold cache, a network file system).
So a link job links on one thread, leaving the GIL to the server's event loop as much as it can, while
:class:`SourceDigests` reads and hashes the sources ahead on a pool. On a folder of 2,000 files of 64 KiB
(``bench/bench_scale.py``, page cache dropped) this measured the same as eight threads each linking and
hashing (1.62-1.72 s against 1.75-1.84 s, 1.5 CPU-s both).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from jupyter_staging.sources.base import SourceItem


class SourceDigests:
    """The sha256 of the items of one link job: ``recorded(item)`` (a sha256 known already, or None; run
    on the caller's thread: it is Python work), else ``hash_file(item)`` computed ahead on ``workers``
    threads in the order the items will be linked. Use as a context manager: leaving it cancels what has
    not started (a pause or a failure does not hash the rest of a folder)."""

    def __init__(
        self,
        hash_file: Callable[[SourceItem], str],
        recorded: Callable[[SourceItem], str | None],
        workers: int,
    ) -> None:
        self._hash_file = hash_file
        self._recorded = recorded
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="staging-hash")
        self._known: dict[str, str] = {}
        self._futures: dict[str, Future[str]] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> SourceDigests:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def start(self, items: Iterable[SourceItem]) -> None:
        """Look up the recorded sha256 of ``items`` and queue the others for hashing (by name: a name
        given twice is looked up once)."""
        for item in items:
            if item.name in self._known or item.name in self._futures:
                continue
            digest = self._recorded(item)
            with self._lock:
                if digest is not None:
                    self._known[item.name] = digest
                else:
                    self._futures[item.name] = self._pool.submit(self._hash_file, item)

    def result(self, item: SourceItem, *, current: bool = True) -> str:
        """The sha256 (hex) of ``item``: recorded, read ahead (waited for), or hashed here when it was not
        given to :meth:`start`. ``current``: the file still has the fingerprint it was listed with (seen
        after it was linked); when not, what was recorded or read ahead may be of other bytes, so it is
        hashed again here. Raises what ``hash_file`` raised (``OSError`` for an unreadable file)."""
        with self._lock:
            known = self._known.pop(item.name, None)
            future = self._futures.pop(item.name, None)
        if not current:
            if future is not None:
                future.cancel()
            return self._hash_file(item)
        if known is not None:
            return known
        return self._hash_file(item) if future is None else future.result()


def links_to(final: Path, src: Path, *, symbolic: bool) -> bool:
    """True when ``final`` is the link to ``src`` a previous run made: a symlink whose target is
    ``src``, or a hard link to ``src``'s inode. Never follows ``final``."""
    try:
        if symbolic:
            return os.readlink(final) == str(src)
        here, there = os.lstat(final), os.stat(src)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
