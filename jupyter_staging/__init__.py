"""jupyter_staging: stage data into Jupyter as tracked, resumable jobs, optionally as chunked Parquet.

In a notebook::

    %load_ext jupyter_staging
    job = %stage /archive/kepler/kplr010666592-2009131110544_slc.fits --to-parquet --wait
    df = job.to_pandas()

or ``jupyter_staging.stage(source, destination=None, *, method=None, to_parquet=False, ...)``, with
:func:`list_jobs`, :func:`get_job`, :func:`resolve`, :func:`use_local`, :func:`use_server` and :class:`Job`
(from :mod:`jupyter_staging.kernel.api` and :mod:`jupyter_staging.kernel.job`).

Importing this package is cheap: each public name is loaded on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jupyter_staging._version import __version__

if TYPE_CHECKING:
    from jupyter_staging.kernel.api import get_job, list_jobs, resolve, stage, use_local, use_server
    from jupyter_staging.kernel.job import Job, JobFailed

__all__ = [
    "Job",
    "JobFailed",
    "__version__",
    "get_job",
    "list_jobs",
    "load_ipython_extension",
    "resolve",
    "stage",
    "use_local",
    "use_server",
]

#: Public name -> the module that defines it, imported on first access.
_LAZY = {
    "stage": "jupyter_staging.kernel.api",
    "list_jobs": "jupyter_staging.kernel.api",
    "get_job": "jupyter_staging.kernel.api",
    "resolve": "jupyter_staging.kernel.api",
    "use_local": "jupyter_staging.kernel.api",
    "use_server": "jupyter_staging.kernel.api",
    "Job": "jupyter_staging.kernel.job",
    "JobFailed": "jupyter_staging.kernel.job",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_staging``: registers the ``%stage`` line magic and ``%%stage`` cell magic."""
    # Deferred: the magics pull in IPython and ipywidgets, which only an IPython session needs.
    from jupyter_staging.kernel.magics import StagingMagics

    ipython.register_magics(StagingMagics)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    # Deferred: the server extension (tornado, jupyter_server) is loaded only by a Jupyter server.
    from jupyter_staging.server.app import StagingApp

    return [{"module": "jupyter_staging", "app": StagingApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-staging"}]
