"""Dask clusters for the tests of the Dask executor, on 127.0.0.1 only, no dashboard: a ``LocalCluster``
of worker processes, or scheduler and worker processes a test can kill and start again
(:class:`DaskProcesses`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster

from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.manager import StagingManager


def local_cluster(workers: int = 2, threads: int = 2) -> LocalCluster:
    """A started cluster of ``workers`` worker processes (``threads`` threads each; 0 workers: the
    scheduler alone) listening on 127.0.0.1 only; use it as a context manager."""
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )


@contextlib.contextmanager
def dask_manager(
    root: Path, scheduler_address: str, db_url: str | None = None, **kwargs: Any
) -> Iterator[StagingManager]:
    """A started :class:`StagingManager` of ``root`` (made) whose jobs run on the Dask scheduler at
    ``scheduler_address``, its SQLite database ``root/.jobs.db`` unless ``db_url``; stopped afterwards.
    ``kwargs``: more of its settings (``sweep_interval``, ``source_roots``)."""
    root.mkdir(parents=True, exist_ok=True)
    made = StagingManager(
        root,
        db_url=db_url or f"sqlite:///{root}/.jobs.db",
        executor_class=DaskExecutor,
        executor_options={"scheduler_address": scheduler_address},
        **kwargs,
    )
    made.start()
    try:
        yield made
    finally:
        made.stop(wait=True)


class DaskProcesses:
    """A ``dask scheduler`` process at ``tcp://127.0.0.1:port`` and ``dask worker`` processes (each with its
    nanny), every one in its own session, so a test can kill the scheduler (``SIGKILL``, as a crashed node)
    and start it again at the same address. ``env``: extra environment of all of them (``DASK_*``
    settings). :meth:`close` kills whatever still runs."""

    def __init__(self, port: int, *, env: dict[str, str] | None = None) -> None:
        self.address = f"tcp://127.0.0.1:{port}"
        self.port = port
        self.env = {**os.environ, **(env or {})}
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", *args, "--no-dashboard"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_scheduler(self) -> None:
        """Start the scheduler (returns once it accepts connections, at most 30 s)."""
        self.scheduler = self._spawn(
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port)
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise AssertionError(f"the Dask scheduler did not start at {self.address}")
            time.sleep(0.1)

    def start_workers(self, count: int = 1, threads: int = 2) -> None:
        """Start ``count`` workers and wait (at most 60 s) until the scheduler knows them all."""
        for _ in range(count):
            self.workers.append(
                self._spawn(
                    "distributed.cli.dask_worker",
                    self.address,
                    "--host",
                    "127.0.0.1",
                    "--nthreads",
                    str(threads),
                )
            )
        with Client(self.address, set_as_default=False, timeout=30) as client:
            client.wait_for_workers(len(self.workers), timeout=60)

    def kill_scheduler(self) -> None:
        """``SIGKILL`` the scheduler (no goodbye to its clients and workers) and reap it."""
        if self.scheduler is not None:
            _kill(self.scheduler)
            self.scheduler = None

    def kill_workers(self) -> None:
        """``SIGKILL`` every worker and its nanny."""
        for worker in self.workers:
            _kill(worker)
        self.workers = []

    def close(self) -> None:
        """Kill every process started."""
        self.kill_workers()
        self.kill_scheduler()


def _kill(process: subprocess.Popen[bytes]) -> None:
    """``SIGKILL`` ``process``'s whole session (a nanny's worker too) and reap ``process``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
