"""A Dask ``LocalCluster`` for the tests of the Dask executor: worker processes on 127.0.0.1, no dashboard."""

from __future__ import annotations

from distributed import LocalCluster


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
