"""How staging jobs run: a bounded pool of worker threads, swappable through ``StagingApp.executor_class``.

Blocking work (file I/O, HTTP, boto3, pyarrow, SQLite) never runs on the server's event loop; it runs on an
executor's threads, at most ``max_workers`` jobs at a time (``StagingApp.max_concurrent_jobs``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


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
