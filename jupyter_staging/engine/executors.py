"""How staging jobs run: a bounded pool of worker threads, swappable through ``StagingApp.executor_class``.

Blocking work (file I/O, HTTP, boto3, pyarrow, SQLite) never runs on the server's event loop; it runs on an
executor's threads, at most ``max_workers`` jobs at a time (``StagingApp.max_concurrent_jobs``). Within a job,
:func:`run_bounded` stages many small items at once, at most ``concurrent_items`` at a time.

:class:`DaskExecutor` keeps each job's runner on those threads (the manager, the job database, chunk
records and ``manifest.json`` stay in the server) and hands the job's heavy work to the workers of a Dask
cluster as tasks (:mod:`jupyter_staging.engine.spread`; DESIGN.md, "Beyond one machine").
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from jupyter_staging.errors import ClusterUnavailable, JobInterrupted

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Items (files) of one job staged at the same time by default (``StagingApp.concurrent_items``).
DEFAULT_CONCURRENT_ITEMS = 8
#: Streams of one large download by default (``StagingApp.streams_per_file``; 1: one stream).
DEFAULT_STREAMS_PER_FILE = 4
#: Most items of one job at once ``StagingApp.concurrent_items`` takes: 256 threads and, for remote items,
#: as many connections to one host (every one past the 32 kept per host opened and dropped per request).
MAX_CONCURRENT_ITEMS = 256
#: Most streams of one download ``StagingApp.streams_per_file`` takes: the connections kept per host
#: (``clouds.http_client.POOL_PER_HOST``); more would open and drop a connection per range.
MAX_STREAMS_PER_FILE = 32


class Executor(abc.ABC):
    """Runs job callables in the background, at most ``max_workers`` at once."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers

    def start(self) -> None:
        """Get ready for jobs (called once when the manager starts; returns at once). Nothing here."""
        return None

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


#: Bytes above which a local file is copied in ranges, one task each (``StagingApp.dask_range_bytes``).
DEFAULT_RANGE_BYTES = 256 * 1024**2
#: Statuses of a ``distributed.Client`` that will not connect again.
CLOSED = ("closing", "closed")


class DaskExecutor(LocalExecutor):
    """Jobs whose work runs as tasks on a Dask cluster (``distributed``; the ``dask`` extra).

    Each job's runner still runs on one of this server's ``max_workers`` threads and keeps the job's
    bookkeeping; the items of a folder / prefix / manifest, the byte ranges of a large local file and the
    part groups of a FITS or CSV conversion are submitted to the cluster
    (:mod:`jupyter_staging.engine.spread`).

    The cluster, chosen when the first job needs it: the scheduler at ``scheduler_address``
    (``tcp://host:8786``, e.g. a dask-jobqueue cluster's); else a new cluster from dask-gateway when
    ``gateway`` is given (keys ``address``, ``proxy_address``, ``auth`` (default ``"jupyterhub"``),
    ``cluster_options`` (a dict applied to ``Gateway.cluster_options()``), ``workers`` (default 2); see
    https://gateway.dask.org/); else a ``distributed.LocalCluster`` of ``local_workers`` worker processes on
    127.0.0.1. A cluster this executor made is closed by :meth:`shutdown`; a scheduler it only connected to
    is left running. ``range_bytes``: files larger than this (bytes) are copied in ranges of this size, and
    conversions give each task about this many bytes of source.

    Raises :class:`ImportError` (at the first job) when ``distributed`` is not installed.
    """

    def __init__(
        self,
        max_workers: int,
        *,
        scheduler_address: str | None = None,
        gateway: dict[str, Any] | None = None,
        local_workers: int = 2,
        range_bytes: int = DEFAULT_RANGE_BYTES,
    ) -> None:
        super().__init__(max_workers)
        if range_bytes < 1024**2:
            raise ValueError(f"range_bytes must be at least 1 MiB, not {range_bytes}")
        self.scheduler_address = scheduler_address or None
        self.gateway = dict(gateway or {})
        self.local_workers = max(1, int(local_workers))
        self.range_bytes = int(range_bytes)
        self._client: Any = None
        self._cluster: Any = None
        self._connect_lock = threading.Lock()

    def start(self) -> None:
        """Connect to (or make) the cluster in the background, so the first job does not wait for it; a
        failure is logged and tried again by the first job."""
        threading.Thread(target=self._warm_up, name="staging-dask-connect", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self.client()
        except Exception as exc:  # the first job connects again and fails with the reason
            log.warning("staging: could not reach the Dask cluster yet: %s", type(exc).__name__)

    def client(self) -> Any:
        """The ``distributed.Client`` of the cluster, connected (or the cluster made) on first use, and
        again when the last one gave up: a client that lost its scheduler for longer than its connect
        timeout (``distributed.comm.timeouts.connect``, 30 s by default) closes itself, and is replaced
        (with the cluster this executor made, closed first) by the next job that needs it.

        Raises :class:`~jupyter_staging.errors.ClusterUnavailable` when it cannot be reached or made (the
        message names the error's type, never the address: it may hold credentials); :class:`ImportError`
        without ``distributed`` (or ``dask-gateway`` for a gateway)."""
        with self._connect_lock:
            if self._client is not None and self._client.status in CLOSED:
                log.warning("staging: the Dask client lost its scheduler and closed; connecting again")
                stale = (self._client, self._cluster)
                self._client = self._cluster = None
                _close_quietly(*stale)
            if self._client is None:
                try:
                    self._client, self._cluster = self._connect()
                except ImportError:
                    raise
                except Exception as exc:  # OSError, TimeoutError, aiohttp / gateway errors
                    status = getattr(exc, "status", None)
                    detail = f", HTTP {status}" if status else ""
                    raise ClusterUnavailable(
                        f"the Dask cluster could not be reached or made ({type(exc).__name__}{detail})"
                    ) from exc
            return self._client

    def _connect(self) -> tuple[Any, Any]:
        # Deferred: distributed is an optional extra and slow to import.
        from distributed import Client, LocalCluster

        if self.scheduler_address:
            log.info("staging: tasks on the Dask scheduler at %s", self.scheduler_address)
            return Client(self.scheduler_address, set_as_default=False), None
        if self.gateway:
            return self._gateway_cluster()
        cluster = LocalCluster(
            n_workers=self.local_workers,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        log.info("staging: tasks on a local Dask cluster of %d worker processes", self.local_workers)
        return Client(cluster, set_as_default=False), cluster

    def _gateway_cluster(self) -> tuple[Any, Any]:
        # Deferred: dask-gateway is installed only where a site uses it.
        from dask_gateway import Gateway

        options = dict(self.gateway)
        gateway = Gateway(
            address=options.get("address"),
            proxy_address=options.get("proxy_address"),
            auth=options.get("auth", "jupyterhub"),
        )
        cluster_options = gateway.cluster_options()
        for key, value in (options.get("cluster_options") or {}).items():
            cluster_options[key] = value
        cluster = gateway.new_cluster(cluster_options)
        try:
            cluster.scale(int(options.get("workers", 2)))
        except BaseException:
            cluster.close()
            raise
        log.info("staging: tasks on dask-gateway cluster %s", cluster.name)
        return cluster.get_client(set_as_default=False), cluster

    def shutdown(self, wait: bool = True) -> None:
        """Stop the executor's threads, then close the Dask client and the cluster it made; a client whose
        scheduler was lost or restarted may fail to close (distributed's ``RuntimeError: ConnectionPool is
        closed`` while it reconnects): that is logged, not raised, so the server still stops."""
        super().shutdown(wait=wait)
        with self._connect_lock:
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        _close_quietly(client, cluster)


def _close_quietly(*parts: Any) -> None:
    """Close each of ``parts`` (a client, a cluster or None) that is broken already: its errors are
    logged, not raised."""
    for part in parts:
        if part is None:
            continue
        try:
            part.close()
        except Exception as exc:  # a cluster whose scheduler is gone may fail to close
            log.warning("staging: closing a lost Dask %s failed: %s", type(part).__name__, type(exc).__name__)


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
