"""The notebook's staging API: :func:`stage`, :func:`list_jobs`, :func:`get_job`, :func:`resolve`, and the
backend of this process (:func:`default_backend`, :func:`use_server`, :func:`use_local`).

In a kernel started by a Jupyter server that runs the ``jupyter_staging`` extension, every call goes through
that server's REST API (``<base_url>api/v1/staging``), so jobs run in the server and survive kernel restarts.
Anywhere else (a plain IPython, a script) the same engine runs in this process
(:class:`~jupyter_staging.kernel.backends.LocalBackend`). :func:`default_backend` chooses once per process
(:mod:`jupyter_staging.kernel.discovery`); :func:`use_server` and :func:`use_local` override the choice.

Paths are as the caller sees them: a relative local source or destination is relative to the current working
directory. Destinations are sent to the engine relative to its root directory and must lie inside it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any, get_args

from jupyter_staging.engine.models import IfExists
from jupyter_staging.errors import InvalidRequest
from jupyter_staging.kernel.backends import Backend, LocalBackend, ServerBackend, server_base_url
from jupyter_staging.kernel.discovery import ENV_CERT, ENV_URL, discover
from jupyter_staging.kernel.frontend import has_widget_frontend, in_ipython, shown_live
from jupyter_staging.kernel.job import Job, JobList
from jupyter_staging.kernel.paths import is_url, local_source, to_root_relative

__all__ = [
    "IF_EXISTS_CHOICES",
    "EntrySource",
    "default_backend",
    "get_job",
    "list_jobs",
    "reset_backend",
    "resolve",
    "stage",
    "use_local",
    "use_server",
]

#: What ``if_exists`` may be: reuse unchanged output (the default), stage again, or refuse.
IF_EXISTS_CHOICES: tuple[str, ...] = get_args(IfExists)

#: A manifest value: a source, or ``{"source": ..., "checksum": "sha256:<hex>" | "md5:<hex>"}``.
EntrySource = str | os.PathLike[str] | Mapping[str, str]

_backend: Backend | None = None
_backend_lock = threading.Lock()


# -- the backend of this process ---------------------------------------------------------------------------


def default_backend() -> Backend:
    """The backend of this process, chosen on first use by
    :func:`~jupyter_staging.kernel.discovery.discover` and kept: the Jupyter server that started this
    kernel (or the one the environment names), else a :class:`LocalBackend` on the current working
    directory."""
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = discover()
        return _backend


def use_server(
    url: str,
    token: str | None = None,
    root_dir: str | os.PathLike[str] | None = None,
    *,
    server_cert: str | os.PathLike[str] | None = None,
) -> Backend:
    """Send every later call of this process to the Jupyter server at ``url`` (with its base_url; the URL
    Jupyter prints, ``.../lab?token=...``, is taken as it is).

    ``root_dir`` is the server's root directory as this process sees it (default: the current working
    directory). ``server_cert``: for an https server with a certificate of its own (self-signed, or naming
    another host), its PEM file, trusted as the only certificate of that URL; by default the one the
    server gave its kernels (``JUPYTER_STAGING_SERVER_CERT``) when ``url`` is that server. Nothing is
    checked until the first call; a wrong URL or token then raises :class:`StagingError`. Raises
    ``OSError`` when ``server_cert`` cannot be read. Returns the backend.
    """
    base = server_base_url(url)[0]
    if server_cert is None and base == server_base_url(os.environ.get(ENV_URL) or "")[0]:
        server_cert = os.environ.get(ENV_CERT) or None
    cert = os.fspath(server_cert) if server_cert is not None else None
    backend = ServerBackend(url, token, root_dir if root_dir is not None else os.getcwd(), server_cert=cert)
    _set_backend(backend)
    return backend


def use_local(root_dir: str | os.PathLike[str] | None = None, *, db_url: str | None = None) -> Backend:
    """Run every later job of this process in this process, confined to ``root_dir`` (default: the
    current working directory); see :class:`LocalBackend`. Returns the backend."""
    backend = LocalBackend(root_dir, db_url=db_url)
    _set_backend(backend)
    return backend


def reset_backend() -> None:
    """Forget (and close) the backend of this process; the next call discovers one again."""
    _set_backend(None)


def _set_backend(backend: Backend | None) -> Backend | None:
    global _backend
    with _backend_lock:
        previous, _backend = _backend, backend
    if previous is not None and previous is not backend:
        previous.close()
    return backend


# -- jobs --------------------------------------------------------------------------------------------------


def stage(
    source: str | os.PathLike[str] | Mapping[str, EntrySource],
    destination: str | os.PathLike[str] | None = None,
    *,
    method: str | None = None,
    to_parquet: bool = False,
    chunk_rows: int | None = None,
    compression: str = "zstd",
    hdu: int | str | None = None,
    encoding: str | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    cleanup_policy: str = "retain",
    ttl_seconds: int | None = None,
    if_exists: str = "reuse",
    refresh: bool = False,
    checksum: str | None = None,
    unpack: bool = False,
    decompress: bool = False,
    wait: bool = False,
    timeout: float | None = None,
    show: bool | None = None,
) -> Job:
    """Stage ``source`` into ``destination`` as a tracked job.

    Parameters
    ----------
    source:
        A local file or folder (relative paths are relative to the current working directory), an ``http(s)://``
        URL (presigned URLs included) or an ``s3://bucket/key`` / ``s3://bucket/prefix/`` URI. Or a manifest:
        a mapping of entry names to such sources (``{"reference": "https://...", "reads": "s3://..."}``),
        staged in parallel into ``<destination>/<name>/``; :attr:`Job.paths` then maps each staged name to its
        local path and :func:`resolve` puts those paths into a parameter dict. A value may also be
        ``{"source": ..., "checksum": "sha256:<hex>"}`` to state the bytes that entry must have. A failed
        entry does not stop the others; the job then ends ``failed`` with code ``partial``, keeping what
        was staged.
    destination:
        Folder to stage into, relative to the current working directory (or absolute); it must lie inside
        the staging root (the Jupyter server's root_dir). Default: ``<staging_dir>/<name>`` on the server,
        the same folder on every re-run of the same source. Or an object store prefix
        ``s3://bucket/prefix/``: the job writes below ``prefix/<job_id>/`` and its chunks carry presigned
        URLs.
    method:
        ``copy``, ``hardlink``, ``symlink`` or ``download``; default chosen from the source.
    to_parquet, chunk_rows, compression, hdu, encoding:
        Convert tables (FITS, VOTable, CSV/TSV, ECSV) to Parquet part files of ``chunk_rows`` rows
        (default 100,000) with ``compression``; ``hdu`` picks the FITS table HDU (index or name);
        ``encoding`` is the text encoding of a CSV/TSV file that is not UTF-8 (``"latin-1"``,
        ``"cp1252"``), so its text columns are read as strings, not bytes.
    name, idempotency_key, cleanup_policy, ttl_seconds:
        As in the REST API (``POST /jobs``): the job's name (default: from the source), a key that returns
        the same job when given again, ``"retain"`` (default), ``"delete_on_success"``, ``"delete_always"``
        or ``"delete_on_ack"``, and the seconds (1 to ten years) after which the job expires and its output
        is removed.
    if_exists, refresh:
        When ``destination`` already holds the output of an earlier job of the same source(s) and options:
        ``"reuse"`` (default) answers at once with that job when every source is unchanged
        (:attr:`Job.up_to_date`; no bytes move, the same :attr:`Job.paths`), ``"refresh"`` stages again
        whatever the fingerprints say, ``"error"`` refuses (:class:`DestinationExists`).
        ``refresh=True`` is short for ``if_exists="refresh"``.
    checksum:
        The bytes the source must have, ``"sha256:<hex>"`` or ``"md5:<hex>"``; a mismatch fails the job
        with code ``checksum_mismatch`` and publishes nothing.
    unpack, decompress:
        Extract ``.zip`` / ``.tar[.gz|.bz2|.xz]`` / ``.tgz`` archives after download; turn ``x.gz`` /
        ``x.bz2`` / ``x.xz`` into ``x``.
    wait, timeout:
        Block until the job ends (at most ``timeout`` seconds), as :meth:`Job.wait`: with a progress bar on
        stderr when it is a terminal and no widget shows the job.
    show:
        Display a live :class:`~jupyter_staging.kernel.widgets.JobWidget` (progress, chunks, Pause / Resume /
        Cancel). Default: when running in a Jupyter kernel; in a terminal, waiting draws a progress bar on
        stderr instead. An up-to-date job shows one line instead, ``up to date: <destination> (no
        bytes moved)`` (by default in IPython and Jupyter, not in scripts).

    Returns
    -------
    Job
        The staged job.

    Raises
    ------
    StagingError
        Subclasses with a stable ``code``: ``source_not_found``, ``path_not_allowed``,
        ``destination_exists``, ``invalid_request``...
    JobFailed, TimeoutError
        With ``wait``.
    """
    backend = default_backend()
    body = _request_body(source, destination, backend, method=method, cleanup_policy=cleanup_policy)
    convert = _convert_options(to_parquet, chunk_rows, compression, hdu, encoding)
    extra = {"convert": convert, "name": name, "idempotency_key": idempotency_key, "ttl_seconds": ttl_seconds}
    body.update({key: value for key, value in extra.items() if value is not None})
    body.update(_reuse_options(if_exists, refresh, checksum, unpack=unpack, decompress=decompress))
    job = Job(backend.create(body), backend)
    displayed = False
    if job.up_to_date:  # nothing will move: one line, no widget, and wait() returns at once
        if in_ipython() if show is None else show:
            print(f"up to date: {job.destination} (no bytes moved)")
    elif has_widget_frontend() if show is None else show:
        _display(job)
        displayed = True
    if job.source_refreshed and (in_ipython() if show is None else show):
        then = "resume it to continue" if job.state == "paused" else "it continues"
        print(f"presigned URL refreshed for job {job.id} ({job.state}): {then} from the bytes kept")
    if wait:  # a displayed widget shows progress; else a bar when stderr is a terminal
        job.wait(timeout=timeout, progress=False if displayed else None)
    return job


def _request_body(
    source: str | os.PathLike[str] | Mapping[str, EntrySource],
    destination: str | os.PathLike[str] | None,
    backend: Backend,
    *,
    method: str | None,
    cleanup_policy: str,
) -> dict[str, Any]:
    """The ``POST /jobs`` body's source (or manifest), destination, method and cleanup policy: local
    sources absolute, a local destination relative to ``backend.root_dir`` (:class:`PathNotAllowed`
    outside it)."""
    body: dict[str, Any] = {"cleanup_policy": cleanup_policy}
    if isinstance(source, Mapping):
        body["manifest"] = {str(k): _manifest_entry(str(k), v) for k, v in source.items()}
    else:
        body["source"] = local_source(os.fspath(source))
    if destination is not None:
        text = os.fspath(destination)
        body["destination"] = text if is_url(text) else to_root_relative(text, backend.root_dir)
    if method is not None:
        body["method"] = method
    return body


def _manifest_entry(name: str, value: EntrySource) -> str | dict[str, str]:
    """A manifest value for the body: a source (local paths made absolute), or ``{"source", "checksum"}``
    for an entry given as a mapping. Raises :class:`InvalidRequest` for a mapping without a ``source`` or
    with other keys."""
    if not isinstance(value, Mapping):
        return local_source(os.fspath(value))
    unknown = sorted(set(value) - {"source", "checksum"})
    if unknown or not value.get("source"):
        raise InvalidRequest(
            f"manifest entry {name!r}: give a source, or {{'source': ..., 'checksum': 'sha256:...'}}"
            + (f" (unknown keys: {', '.join(map(str, unknown))})" if unknown else "")
        )
    entry = {"source": local_source(os.fspath(value["source"]))}
    if value.get("checksum") is not None:
        entry["checksum"] = str(value["checksum"])
    return entry


def _reuse_options(
    if_exists: str, refresh: bool, checksum: str | None, *, unpack: bool, decompress: bool
) -> dict[str, Any]:
    """The body's ``if_exists``, ``checksum``, ``unpack`` and ``decompress``, each only when it differs from
    the server's default (so a body without them means what it always meant). Raises
    :class:`InvalidRequest` for an unknown ``if_exists`` or ``refresh`` with ``if_exists="error"``."""
    if if_exists not in IF_EXISTS_CHOICES:
        raise InvalidRequest(f"if_exists must be one of {', '.join(IF_EXISTS_CHOICES)}, not {if_exists!r}")
    if refresh:
        if if_exists == "error":
            raise InvalidRequest("refresh=True contradicts if_exists='error'; pass one of them")
        if_exists = "refresh"
    options: dict[str, Any] = {"if_exists": if_exists} if if_exists != "reuse" else {}
    if checksum is not None:
        options["checksum"] = checksum
    options.update({key: True for key, on in (("unpack", unpack), ("decompress", decompress)) if on})
    return options


def _convert_options(
    to_parquet: bool,
    chunk_rows: int | None,
    compression: str,
    hdu: int | str | None,
    encoding: str | None = None,
) -> dict[str, Any] | None:
    """The body's ``convert`` object, or None without ``to_parquet``. Raises :class:`InvalidRequest` for
    ``chunk_rows``, ``hdu`` or ``encoding`` without ``to_parquet``."""
    if not to_parquet:
        if chunk_rows is not None or hdu is not None or encoding is not None:
            raise InvalidRequest(
                "chunk_rows, hdu and encoding apply to conversions; pass to_parquet=True as well"
            )
        return None
    convert: dict[str, Any] = {"format": "parquet", "compression": compression}
    if chunk_rows is not None:
        convert["chunk_rows"] = int(chunk_rows)
    if hdu is not None:
        convert["hdu"] = hdu
    if encoding is not None:
        convert["encoding"] = encoding
    return convert


def _display(job: Job) -> None:
    """Show a live job widget in the current notebook output."""
    # Deferred: ipywidgets (and its comm machinery) is loaded only when a job is displayed, not by scripts.
    from jupyter_staging.kernel.widgets import display_job

    display_job(job)
    shown_live(job)  # so the cell's result does not show the job again, as it was when submitted


def list_jobs(state: str | None = None, limit: int = 100) -> JobList:
    """Up to ``limit`` jobs, newest first, optionally only those in ``state`` (e.g. ``"running"``)."""
    backend = default_backend()
    return JobList(Job(data, backend) for data in backend.list_jobs(state=state, limit=limit))


def get_job(job_id: str) -> Job:
    """The job ``job_id``. Raises :class:`JobNotFound` (code ``job_not_found``)."""
    backend = default_backend()
    return Job(backend.get(job_id), backend)


def resolve(params: Any, job: Job | Mapping[str, Any]) -> Any:
    """A copy of ``params`` in which every string equal to an entry name of ``job`` is replaced by that
    entry's local path (as ``str``).

    ``params`` may nest dicts, lists and tuples to any depth; dict keys, other strings and every other
    value are left as they are (an entry that failed, having no path, stays its name). ``job`` is a
    manifest :class:`Job` (its :attr:`Job.paths` as they are now: call it once the job has ended, e.g.
    after ``job.wait()``) or a mapping of names to paths.

    >>> resolve({"genome": "ref", "k": 31, "reads": ["r1", "r2"]}, {"ref": "/data/ref.fa", "r1": "/d/1.fq"})
    {'genome': '/data/ref.fa', 'k': 31, 'reads': ['/d/1.fq', 'r2']}

    Raises :class:`InvalidRequest` when ``job`` is a job of a single source (it has no entry names).
    """
    mapping = job.paths if isinstance(job, Job) else job
    if not isinstance(mapping, Mapping):
        raise InvalidRequest("resolve() needs a manifest job (staged from {name: source, ...}) or a mapping")
    return _swap_names(params, {str(name): str(path) for name, path in mapping.items()})


def _swap_names(value: Any, paths: dict[str, str]) -> Any:
    """``value`` with every string that is a key of ``paths`` replaced, through dicts, lists and tuples."""
    if isinstance(value, str):
        return paths.get(value, value)
    if isinstance(value, Mapping):
        return {k: _swap_names(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap_names(v, paths) for v in value]
    if isinstance(value, tuple):
        return tuple(_swap_names(v, paths) for v in value)
    return value
