"""How staging jobs run: a bounded pool of worker threads, swappable through ``StagingApp.executor_class``.

Blocking work (file I/O, HTTP, boto3, pyarrow, SQLite) never runs on the server's event loop; it runs on an
executor's threads, at most ``max_workers`` jobs at a time (``StagingApp.max_concurrent_jobs``). Within a job,
:func:`run_bounded` stages many small items at once, at most ``concurrent_items`` at a time.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from jupyter_staging.errors import JobInterrupted

T = TypeVar("T")

#: Items (files) of one job staged at the same time by default (``StagingApp.concurrent_items``).
DEFAULT_CONCURRENT_ITEMS = 8


class Executor(abc.ABC):
    """Runs job callables in the background, at most ``max_workers`` at once."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers

    @abc.abstractmethod
    def submit(self, fn: Callable[[], None]) -> Future[None]:
        """Queue ``fn``; it runs when a slot is free."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Stop accepting work; with ``wait``, return once running work has ended."""


class LocalExecutor(Executor):
    """Worker threads in this process (the default): jobs survive kernel restarts because they run in the
    Jupyter server, and a copy into the user's area is a local write by the user's own process."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="staging-job")

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        return self._pool.submit(fn)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)


def run_bounded(
    work: Callable[[T], None],
    items: Sequence[T],
    workers: int,
    *,
    slots: threading.Semaphore | None = None,
    name: str = "staging-item",
) -> None:
    """Call ``work(item)`` for every item, in order of start, at most ``workers`` at once (and, with
    ``slots``, only while holding one of them: a bound shared by several calls). One worker or one item:
    in the calling thread.

    Once a call raises, no further item starts; every started call ends before this returns. Then the
    first :class:`~jupyter_staging.errors.JobInterrupted` (pause, cancel, shutdown) is raised, else the
    first other error."""
    pending = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            with lock:
                item = next(pending, _END)
            if item is _END:
                return
            try:
                if slots is None:
                    work(item)  # type: ignore[arg-type]
                else:
                    with slots:
                        work(item)  # type: ignore[arg-type]
            except BaseException as exc:  # raised below, once every worker has stopped
                errors.append(exc)
                stop.set()
                return

    count = min(workers, len(items))
    if count <= 1:
        loop()
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix=name) as pool:
            for future in [pool.submit(loop) for _ in range(count)]:
                future.result()
    for error in errors:
        if isinstance(error, JobInterrupted):
            raise error
    if errors:
        raise errors[0]


_END = object()
