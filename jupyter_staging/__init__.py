"""jupyter_staging: stage data into Jupyter as tracked, resumable jobs, optionally as chunked Parquet.

In a notebook::

    %load_ext jupyter_staging
    job = %stage /archive/kepler/kplr010666592-2009131110544_slc.fits --to-parquet --wait
    df = job.to_pandas()

or ``jupyter_staging.stage(source, destination=None, *, method=None, to_parquet=False, ...)``.
Nothing heavy is imported until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_staging._version import __version__

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from jupyter_staging.kernel.client import Job

__all__ = ["Job", "__version__", "list_jobs", "load_ipython_extension", "resolve", "stage"]


def stage(
    source: str | os.PathLike[str] | Mapping[str, str],
    destination: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Job:
    """Stage ``source`` (or a manifest ``{name: source}``) into ``destination``; see
    :func:`jupyter_staging.kernel.client.stage`."""
    from jupyter_staging.kernel.client import stage as _stage

    return _stage(source, destination, **kwargs)


def resolve(params: Any, job: Any) -> Any:
    """A copy of ``params`` with every string equal to an entry name of the manifest ``job`` replaced by
    that entry's local path; see :func:`jupyter_staging.kernel.client.resolve`."""
    from jupyter_staging.kernel.client import resolve as _resolve

    return _resolve(params, job)


def list_jobs(**kwargs: Any) -> list[Job]:
    """The staging jobs, newest first; see :func:`jupyter_staging.kernel.client.list_jobs`."""
    from jupyter_staging.kernel.client import list_jobs as _list_jobs

    return _list_jobs(**kwargs)


def __getattr__(name: str) -> Any:
    if name == "Job":
        from jupyter_staging.kernel.client import Job

        return Job
    raise AttributeError(name)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_staging``: registers the ``%stage`` line magic and ``%%stage`` cell magic."""
    from jupyter_staging.kernel.magics import StagingMagics

    ipython.register_magics(StagingMagics)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_staging.server.app import StagingApp

    return [{"module": "jupyter_staging", "app": StagingApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-staging"}]
