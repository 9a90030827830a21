"""The kernel side of staging: :func:`stage`, :class:`Job` and the backends they talk to.

In a kernel started by a Jupyter server that runs the ``jupyter_staging`` extension, every call goes through
that server's REST API (``<base_url>api/v1/staging``), so jobs run in the server and survive kernel restarts.
Anywhere else (a plain IPython, a script) the same engine runs in this process
(:class:`LocalBackend`). :func:`default_backend` chooses once per process; :func:`use_server` and
:func:`use_local` override the choice.

Paths are as the caller sees them: a relative local source or destination is relative to the current working
directory. Destinations are sent to the engine relative to its root directory and must lie inside it.

Nothing here imports tornado or jupyter_server at module level.
"""

from __future__ import annotations

import html
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_staging.errors import (
    ConversionFailed,
    DestinationExists,
    InvalidRequest,
    InvalidState,
    JobNotFound,
    PathNotAllowed,
    SourceNotFound,
    StagingError,
    TransferFailed,
)

if TYPE_CHECKING:
    import pandas
    import pyarrow
    import pyarrow.dataset
    from pydantic import ValidationError

    from jupyter_staging.engine.manager import StagingManager
    from jupyter_staging.kernel.chunks import Chunk

__all__ = [
    "Backend",
    "Job",
    "JobFailed",
    "JobList",
    "LocalBackend",
    "ServerBackend",
    "default_backend",
    "get_job",
    "list_jobs",
    "reset_backend",
    "resolve",
    "stage",
    "to_root_relative",
    "use_local",
    "use_server",
]

#: Environment variables the server extension exports to the kernels it starts (``server/app.py``).
ENV_URL = "JUPYTER_STAGING_SERVER_URL"
ENV_TOKEN = "JUPYTER_STAGING_SERVER_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_ROOT = "JUPYTER_STAGING_ROOT_DIR"

API_PREFIX = "api/v1/staging"

#: Seconds a discovery probe waits for a candidate server.
PROBE_TIMEOUT = 3.0
#: Seconds any other API request waits for the server.
REQUEST_TIMEOUT = 60.0

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class JobFailed(StagingError):
    """A job the caller waited for ended ``failed`` or ``cancelled``.

    ``code`` and ``message`` are the job's own error (``cancelled`` for a cancelled job); ``job`` is the
    :class:`Job` as it ended, so its :meth:`Job.log` can be read.
    """

    code = "job_failed"
    status = 500

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        if job.state == "cancelled":
            code, message = "cancelled", f"job {job.name!r} was cancelled"
        else:
            code = error.get("code") or "job_failed"
            message = error.get("message") or f"job {job.name!r} ended {job.state}"
        super().__init__(message, code=code)
        self.job = job


# -- errors from the wire -------------------------------------------------------------------------------

_ERRORS_BY_CODE: dict[str, type[StagingError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        PathNotAllowed,
        DestinationExists,
        SourceNotFound,
        JobNotFound,
        InvalidState,
        TransferFailed,
        ConversionFailed,
    )
}
_ERRORS_BY_STATUS: dict[int, type[StagingError]] = {
    400: InvalidRequest,
    404: JobNotFound,
    409: InvalidState,
}


def error_from_response(status: int, body: dict[str, Any] | None) -> StagingError:
    """The :class:`StagingError` (subclass chosen by ``code``, else by HTTP ``status``) for an API error
    answer ``{"message", "reason", "code"}``."""
    body = body or {}
    code = str(body.get("code") or "http_error")
    message = str(body.get("message") or body.get("reason") or f"HTTP {status}")
    cls = _ERRORS_BY_CODE.get(code) or _ERRORS_BY_STATUS.get(status, StagingError)
    return cls(message, code=code, status=status)


# -- backends ---------------------------------------------------------------------------------------------


class Backend:
    """Where jobs live. Every method takes and returns the wire format's JSON dicts (``DESIGN.md``).

    ``root_dir`` is the absolute local folder job destinations are relative to.
    """

    root_dir: Path

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a job from a ``POST /jobs`` body; returns the job."""
        raise NotImplementedError

    def get(self, job_id: str) -> dict[str, Any]:
        """The job ``job_id``. Raises :class:`JobNotFound`."""
        raise NotImplementedError

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``state``."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job (a finished job is returned unchanged); returns the job."""
        raise NotImplementedError

    def pause(self, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def resume(self, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        """The job's chunks in index order."""
        raise NotImplementedError

    def ack(self, job_id: str, index: int) -> dict[str, Any]:
        """Acknowledge chunk ``index``; returns the chunk."""
        raise NotImplementedError

    def refresh_chunk(self, job_id: str, index: int) -> dict[str, Any]:
        """Chunk ``index`` (in object storage) with a new presigned ``url``; returns the chunk."""
        raise NotImplementedError

    def manifest(self, job_id: str) -> dict[str, Any]:
        """The manifest of a succeeded job. Raises :class:`InvalidState` before."""
        raise NotImplementedError

    def log(self, job_id: str) -> list[dict[str, Any]]:
        """The job's log lines ``{"time", "level", "message"}``, oldest first."""
        raise NotImplementedError

    def wait(self, job_id: str, timeout: float, poll: float) -> dict[str, Any]:
        """Block up to ``timeout`` seconds for the job to reach a final state; returns the job as it is."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            remaining = deadline - time.monotonic()
            if job["state"] in FINAL_STATES or remaining <= 0:
                return job
            time.sleep(min(poll, remaining))

    def close(self) -> None:
        """Release what the backend holds (connections, worker threads)."""


class ServerBackend(Backend):
    """Jobs in a Jupyter server running the ``jupyter_staging`` extension, through its REST API.

    Parameters
    ----------
    url:
        The server's URL including its base_url, e.g. ``http://127.0.0.1:8888/`` or
        ``https://hub.example.org/user/ada/``.
    token:
        An API token of that server (sent as ``Authorization: token ...``), or None.
    root_dir:
        The server's root directory as this process sees it (destinations are relative to it).

    Errors the server answers with become :class:`StagingError` subclasses carrying the server's ``code``,
    ``message`` and HTTP ``status``; an unreachable server is ``StagingError(code="server_unreachable")``.
    """

    def __init__(self, url: str, token: str | None, root_dir: str | os.PathLike[str]) -> None:
        import requests

        self.url = url if url.endswith("/") else url + "/"
        self.api = f"{self.url}{API_PREFIX}/"
        self.root_dir = Path(root_dir).expanduser().resolve()
        self._session = requests.Session()
        self._session.headers["Accept"] = "application/json"
        if token:
            self._session.headers["Authorization"] = f"token {token}"

    def __repr__(self) -> str:
        return f"ServerBackend({self.url!r}, root_dir={str(self.root_dir)!r})"

    def probe(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """True when the server answers ``GET jobs?limit=1`` with 200 (it runs the extension and accepts
        the token)."""
        import requests

        try:
            response = self._session.get(self.api + "jobs", params={"limit": 1}, timeout=timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        try:
            response = self._session.request(method, self.api + path, **kwargs)
        except requests.RequestException as exc:
            raise StagingError(
                f"cannot reach the Jupyter server at {self.url}: {type(exc).__name__}",
                code="server_unreachable",
                status=503,
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_from_response(response.status_code, body if isinstance(body, dict) else None)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "jobs", json=body)  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"jobs/{_quote(job_id)}")  # type: ignore[no-any-return]

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._call("GET", "jobs", params=params)["jobs"]  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        self._call("DELETE", f"jobs/{_quote(job_id)}")
        return self.get(job_id)

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"jobs/{_quote(job_id)}/pause")  # type: ignore[no-any-return]

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"jobs/{_quote(job_id)}/resume")  # type: ignore[no-any-return]

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"jobs/{_quote(job_id)}/chunks")["chunks"]  # type: ignore[no-any-return]

    def ack(self, job_id: str, index: int) -> dict[str, Any]:
        return self._call("POST", f"jobs/{_quote(job_id)}/chunks/{int(index)}/ack")  # type: ignore[no-any-return]

    def refresh_chunk(self, job_id: str, index: int) -> dict[str, Any]:
        return self._call("GET", f"jobs/{_quote(job_id)}/chunks/{int(index)}/refresh")  # type: ignore[no-any-return]

    def manifest(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"jobs/{_quote(job_id)}/manifest")  # type: ignore[no-any-return]

    def log(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"jobs/{_quote(job_id)}/log")["lines"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._session.close()


class LocalBackend(Backend):
    """Jobs run by a :class:`~jupyter_staging.engine.manager.StagingManager` in this process.

    Parameters
    ----------
    root_dir:
        Folder destinations are relative to and confined in (default: the current working directory).
    db_url:
        SQLAlchemy URL of the job database (default: ``local-jobs.sqlite`` in
        ``<jupyter data dir>/jupyter_staging``).

    The manager is started at once (jobs this database left running in ``root_dir`` are resumed) and
    stopped at interpreter exit; a job still running then stays ``running`` in the database and resumes
    the next time a local backend starts on the same root.
    """

    def __init__(self, root_dir: str | os.PathLike[str] | None = None, db_url: str | None = None) -> None:
        from jupyter_staging.engine.manager import StagingManager

        self.root_dir = Path(root_dir if root_dir is not None else os.getcwd()).expanduser().resolve()
        if db_url is None:
            from jupyter_core.paths import jupyter_data_dir

            folder = Path(jupyter_data_dir()) / "jupyter_staging"
            folder.mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{folder / 'local-jobs.sqlite'}"
        self.manager: StagingManager = StagingManager(self.root_dir, db_url=db_url)
        self.manager.start()
        self._closed = False
        import atexit

        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"LocalBackend(root_dir={str(self.root_dir)!r})"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from pydantic import ValidationError

        from jupyter_staging.engine.models import CreateJob, dump

        try:
            request = CreateJob.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid request: {_problems(exc)}") from None
        job, _ = self.manager.create(request)
        return dump(job)

    def get(self, job_id: str) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.get(job_id))

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        from pydantic import ValidationError

        from jupyter_staging.engine.models import ListJobsQuery, dump

        try:
            query = ListJobsQuery.model_validate({"state": state, "limit": limit})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid query: {_problems(exc)}") from None
        return [dump(j) for j in self.manager.list_jobs(query=query).jobs]

    def cancel(self, job_id: str) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.cancel(job_id))

    def pause(self, job_id: str) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.pause(job_id))

    def resume(self, job_id: str) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.resume(job_id))

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        from jupyter_staging.engine.models import dump

        # ``StagingManager.list`` shadows ``list`` in the manager's annotations, so mypy misreads this type.
        chunks: Iterable[Any] = self.manager.chunks(job_id)  # type: ignore[assignment]
        return [dump(c) for c in chunks]

    def ack(self, job_id: str, index: int) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.ack(job_id, str(index)))

    def refresh_chunk(self, job_id: str, index: int) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.refresh_chunk(job_id, str(index)))

    def manifest(self, job_id: str) -> dict[str, Any]:
        return self.manager.manifest(job_id)

    def log(self, job_id: str) -> list[dict[str, Any]]:
        return self.manager.job_log(job_id)

    def wait(self, job_id: str, timeout: float, poll: float) -> dict[str, Any]:
        from jupyter_staging.engine.models import dump

        return dump(self.manager.wait(job_id, timeout=timeout))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.manager.stop(wait=True)


def _problems(err: ValidationError) -> str:
    """A validation error as ``field: problem; ...`` without echoing the values (as the server does)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in err.errors(include_input=False, include_url=False)
    )


def _quote(job_id: str) -> str:
    from urllib.parse import quote

    return quote(job_id, safe="")


# -- discovery ---------------------------------------------------------------------------------------------

_backend: Backend | None = None
_backend_lock = threading.Lock()


def default_backend() -> Backend:
    """The backend of this process, chosen on first use and kept.

    In order, the first candidate server that answers ``GET api/v1/staging/jobs?limit=1`` with 200 within
    :data:`PROBE_TIMEOUT` seconds wins:

    1. ``JUPYTER_STAGING_SERVER_URL`` with ``JUPYTER_STAGING_SERVER_TOKEN`` (else ``JUPYTERHUB_API_TOKEN``)
       and ``JUPYTER_STAGING_ROOT_DIR`` — what the server extension exports to the kernels it starts;
    2. the JupyterHub single-user server (``JUPYTERHUB_SERVICE_URL``, or ``JUPYTERHUB_SERVICE_PREFIX``
       matched against the running servers) with ``JUPYTERHUB_API_TOKEN``;
    3. the running Jupyter server whose process is this process's parent;

    else 4. a :class:`LocalBackend` on the current working directory.
    """
    global _backend
    with _backend_lock:
        if _backend is None:
            _backend = _discover()
        return _backend


def use_server(url: str, token: str | None = None, root_dir: str | os.PathLike[str] | None = None) -> Backend:
    """Send every later call of this process to the Jupyter server at ``url`` (with its base_url).

    ``root_dir`` is the server's root directory as this process sees it (default: the current working
    directory). Nothing is checked until the first call; a wrong URL or token then raises
    :class:`StagingError`. Returns the backend.
    """
    backend = ServerBackend(url, token, root_dir if root_dir is not None else os.getcwd())
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


def _discover() -> Backend:
    for url, token, root in _candidates():
        backend = ServerBackend(url, token, root)
        if backend.probe():
            return backend
        backend.close()
    return LocalBackend()


def _candidates() -> Iterator[tuple[str, str | None, str]]:
    env = os.environ
    hub_token = env.get("JUPYTERHUB_API_TOKEN") or None
    root = env.get(ENV_ROOT) or None
    if env.get(ENV_URL):
        yield env[ENV_URL], env.get(ENV_TOKEN) or hub_token, root or os.getcwd()
    servers = None
    if hub_token and (env.get("JUPYTERHUB_SERVICE_URL") or env.get("JUPYTERHUB_SERVICE_PREFIX")):
        servers = _running_servers()
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or ""
        match = next((s for s in servers if prefix and s.get("base_url") == prefix), None)
        url = env.get("JUPYTERHUB_SERVICE_URL") or (match or {}).get("url")
        if url:
            server_root = root or (match or {}).get("root_dir") or os.path.expanduser("~")
            yield url, hub_token, server_root
    servers = _running_servers() if servers is None else servers
    parent = os.getppid()
    for server in servers:
        if server.get("pid") == parent and server.get("url"):
            yield server["url"], server.get("token") or hub_token, server.get("root_dir") or os.getcwd()


def _running_servers() -> list[dict[str, Any]]:
    try:
        from jupyter_server.serverapp import list_running_servers

        return list(list_running_servers())
    except Exception:  # no jupyter_server, or an unreadable runtime dir: no candidates
        return []


# -- paths -------------------------------------------------------------------------------------------------


def _is_url(text: str) -> bool:
    return bool(_URL_RE.match(text))


def _local_source(source: str) -> str:
    """A local source made absolute against the current working directory; URLs unchanged."""
    if _is_url(source):
        return source
    return os.path.abspath(os.path.expanduser(source))


def to_root_relative(
    destination: str | os.PathLike[str],
    root_dir: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
) -> str:
    """A destination folder as the caller sees it, made relative to the engine's ``root_dir``.

    ``destination`` relative → relative to ``cwd`` (default: the current working directory); ``~`` is
    expanded. Returns a POSIX path relative to ``root_dir`` (``"."`` for the root itself).

    Raises :class:`PathNotAllowed` (code ``path_not_allowed``) when the folder lies outside ``root_dir``.
    """
    text = os.fspath(destination)
    if "\x00" in text:
        raise PathNotAllowed("destination contains a NUL character")
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(cwd if cwd is not None else os.getcwd()) / path
    absolute = Path(os.path.normpath(path))
    root = Path(root_dir)
    for candidate, base in (
        (absolute, root),
        (absolute, root.resolve()),
        (absolute.resolve(), root.resolve()),
    ):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    shown = repr(text) if text == str(absolute) else f"{text!r} ({absolute})"
    raise PathNotAllowed(
        f"destination {shown} is outside the staging root {root}; "
        "choose a folder inside it or give a path relative to it"
    )


# -- jobs ----------------------------------------------------------------------------------------------------


class Job:
    """One staging job, seen through a backend.

    Attributes are read from the last status fetched; :meth:`refresh` fetches a new one. Sizes are bytes,
    ``rate`` is bytes per second and ``eta_seconds`` seconds.
    """

    def __init__(self, data: dict[str, Any], backend: Backend) -> None:
        self._data = data
        self._backend = backend

    # -- status ------------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self._data["id"])

    @property
    def name(self) -> str:
        return str(self._data.get("name") or "")

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``paused``, ``succeeded``, ``failed``, ``cancelled`` or ``expired``."""
        return str(self._data["state"])

    @property
    def done(self) -> bool:
        """True once the job is in a final state."""
        return self.state in FINAL_STATES

    @property
    def progress(self) -> dict[str, Any]:
        """``{"bytes_done", "bytes_total", "chunks_done", "chunks_total", "rows_done", "rate",
        "eta_seconds"}``: bytes, chunks, rows, bytes per second and seconds; totals and rates may be None."""
        progress = dict(self._data.get("progress") or {})
        for key in (
            "bytes_done",
            "bytes_total",
            "chunks_done",
            "chunks_total",
            "rows_done",
            "rate",
            "eta_seconds",
        ):
            progress.setdefault(key, None)
        return progress

    @property
    def error(self) -> dict[str, str] | None:
        """``{"code", "message"}`` of a failed job, else None."""
        return self._data.get("error")

    @property
    def source(self) -> str:
        return str(self._data.get("source") or "")

    @property
    def destination(self) -> Path | str:
        """The absolute local folder the job writes to; for an object store destination, the job's own
        prefix URI (``s3://bucket/prefix/<job_id>/``), as text."""
        destination = str(self._data["destination"])
        if _is_url(destination):
            return destination
        return self._backend.root_dir / destination

    @property
    def entries(self) -> list[str] | None:
        """The entry names of a manifest job (``stage({"name": source, ...})``), else None."""
        entries = self._data.get("entries")
        return list(entries) if entries is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The job as the API last returned it (the wire format of ``DESIGN.md``; a copy)."""
        return dict(self._data)

    def refresh(self) -> Job:
        """Fetch the job's status again; returns ``self``."""
        self._data = self._backend.get(self.id)
        return self

    # -- output ------------------------------------------------------------------------------------------

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The job's chunks in index order: ``{"id", "index", "path", "state", "rows", "bytes", "sha256",
        "content_type"}``; ``path`` is relative to :attr:`destination` (or an object URI)."""
        return self._backend.chunks(self.id)

    @property
    def paths(self) -> Any:
        """Where the staged output is.

        A job of one source: a ``list[Path]``, the absolute paths of the chunk files that are ready to
        read, in chunk order (acknowledged chunks are included while their file exists).

        A manifest job: a ``dict`` mapping each entry name that was staged to its local path — the file
        for an entry of one file, else the folder holding the entry's files (a source folder or prefix,
        or the ``<name>.parquet`` folder of a converted table). Entries that failed or are still pending
        are left out (see :attr:`error` and :attr:`chunks`). For an object store destination, the values
        are object URIs (``str``) rather than local paths. Feed it to :func:`resolve`.
        """
        if self._data.get("entries") is None:
            destination = self.destination
            return [] if isinstance(destination, str) else _chunk_paths(destination, self.chunks)
        return _entry_paths(self.destination, self.entries or [], self.chunks)

    def iter_chunks(self, *, poll: float = 0.25, timeout: float | None = None) -> Iterator[Chunk]:
        """Each chunk once, in index order, as soon as it is ready — also while the job still runs::

            for chunk in job.iter_chunks():
                df = chunk.to_pandas()
                chunk.ack()

        See :func:`jupyter_staging.kernel.chunks.iter_chunks` for the errors raised.
        """
        from jupyter_staging.kernel.chunks import iter_chunks

        return iter_chunks(self, poll=poll, timeout=timeout)

    def refresh_url(self, index: int) -> dict[str, Any]:
        """Chunk ``index`` of a job writing to object storage, with a new presigned ``url`` (valid the
        server's ``presign_expiry_seconds``) and ``url_expires_at``. Raises :class:`InvalidRequest` (code
        ``chunk_not_in_object_storage``) for a local chunk, :class:`InvalidState` (``chunk_not_ready``).
        The URL is a credential: do not print or share it."""
        return self._backend.refresh_chunk(self.id, index)

    def ack(self, index: int) -> dict[str, Any]:
        """Acknowledge that chunk ``index`` has been read (with ``cleanup_policy="delete_on_ack"`` its file
        is deleted). Raises :class:`InvalidState` (code ``chunk_not_ready``) for a chunk not ready yet."""
        return self._backend.ack(self.id, index)

    def manifest(self) -> dict[str, Any]:
        """The manifest of the succeeded job (every object's path, size, sha256, rows, content type).

        Raises :class:`InvalidState` (code ``manifest_not_ready``) until the job has succeeded."""
        return self._backend.manifest(self.id)

    def log(self) -> list[dict[str, Any]]:
        """The job's log lines, oldest first: ``{"time", "level", "message"}``."""
        return self._backend.log(self.id)

    # -- control -----------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.25, *, progress: bool = False) -> Job:
        """Block until the job ends; returns ``self`` once it has succeeded (or expired).

        ``timeout`` seconds at most (None: no limit; a paused job waits for :meth:`resume`), polling every
        ``poll`` seconds; with ``progress``, a text progress line is rewritten on stdout at each poll.
        Raises :class:`JobFailed` (with the job's error ``code`` and ``message``; code ``cancelled`` for a
        cancelled job) and :class:`TimeoutError` when ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            from jupyter_staging.kernel.widgets import progress_text

            while not self.refresh().done:
                print(f"\r{self.name}: {progress_text(self._data)}", end="", flush=True)
                if deadline is not None and time.monotonic() >= deadline:
                    print()
                    raise TimeoutError(f"job {self.name!r} ({self.id}) still {self.state} after {timeout} s")
                time.sleep(poll)
            print(f"\r{self.name}: {progress_text(self._data)}", flush=True)
        while True:
            remaining = 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._data = self._backend.wait(self.id, timeout=min(remaining, 3600.0), poll=poll)
            if self.done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.name!r} ({self.id}) is still {self.state} after {timeout} s")
        if self.state in ("failed", "cancelled"):
            raise JobFailed(self)
        return self

    def pause(self) -> Job:
        """Pause the job at its next block, keeping partial files. Raises :class:`InvalidState` for a
        finished job. Returns ``self``."""
        self._data = self._backend.pause(self.id)
        return self

    def resume(self) -> Job:
        """Continue a paused job from its partial files. Raises :class:`InvalidState` unless paused."""
        self._data = self._backend.resume(self.id)
        return self

    def cancel(self) -> Job:
        """Cancel the job and remove its partial output (a finished job is left as it is)."""
        self._data = self._backend.cancel(self.id)
        return self

    # -- reading ---------------------------------------------------------------------------------------

    def _parquet_paths(self) -> list[Path] | list[str]:
        """Local part files, or for an object store destination their presigned URLs."""
        if self.state != "succeeded":
            self.wait()
        chunks = [c for c in self.chunks if _is_parquet_chunk(c)]
        if not chunks:
            raise StagingError(
                f"job {self.name!r} has no Parquet output; stage with to_parquet=True "
                "(or %stage --to-parquet) to read it as a table",
                code="no_parquet_output",
                status=400,
            )
        destination = self.destination
        paths: list[Path] | list[str]
        if isinstance(destination, str):
            paths = [str(c["url"]) for c in sorted(chunks, key=lambda c: c["index"]) if c.get("url")]
        else:
            paths = _chunk_paths(destination, chunks)
        if len(paths) != len(chunks):
            raise StagingError(
                f"some Parquet chunks of job {self.name!r} are no longer on disk (acknowledged or expired)",
                code="chunks_missing",
                status=409,
            )
        return paths

    def to_arrow(self) -> pyarrow.Table:
        """All Parquet chunks of the job as one ``pyarrow.Table``, rows in chunk order, with the schema's
        column units and descriptions. Waits for the job to succeed first.

        Parts in object storage are fetched through their presigned URLs (each part is read into memory).

        Raises :class:`JobFailed` if it does not, and :class:`StagingError` (code ``no_parquet_output``)
        when the job wrote no Parquet file.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._parquet_paths()
        tables = [pq.read_table(_fetch_part(p) if isinstance(p, str) else p) for p in parts]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def to_pandas(self, **kwargs: Any) -> pandas.DataFrame:
        """:meth:`to_arrow` as a ``pandas.DataFrame`` (``kwargs`` go to ``pyarrow.Table.to_pandas``)."""
        return self.to_arrow().to_pandas(**kwargs)

    def dataset(self) -> pyarrow.dataset.Dataset:
        """A ``pyarrow.dataset.Dataset`` over the job's Parquet chunk files, for filtered or lazy reads
        larger than memory. Same waiting and errors as :meth:`to_arrow`; for a job writing to object
        storage use :meth:`to_arrow` (code ``not_local``)."""
        import pyarrow.dataset as ds

        if isinstance(self.destination, str):
            raise StagingError(
                f"job {self.name!r} wrote to {self.destination}; read it with to_arrow() or to_pandas()",
                code="not_local",
                status=400,
            )
        return ds.dataset([str(p) for p in self._parquet_paths()], format="parquet")

    # -- display -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<Job {self.name!r} {self.state}: {_progress_text(self.progress)} -> {self.destination}"
            f" (id {self.id})>"
        )

    def _repr_html_(self) -> str:
        return _jobs_table([self])


class JobList(list):  # type: ignore[type-arg]
    """A list of :class:`Job` that shows as a table in notebooks."""

    def __repr__(self) -> str:
        if not self:
            return "(no staging jobs)"
        lines = [f"{'id':36}  {'state':9}  name / progress / destination"]
        for job in self:
            progress = _progress_text(job.progress)
            lines.append(f"{job.id:36}  {job.state:9}  {job.name}  {progress}  -> {job.destination}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self:
            return "<p>(no staging jobs)</p>"
        return _jobs_table(self, with_id=True)


def _is_parquet_chunk(chunk: dict[str, Any]) -> bool:
    path = str(chunk.get("path") or "")
    return chunk.get("content_type") == PARQUET_CONTENT_TYPE or path.lower().endswith(".parquet")


def _fetch_part(url: str) -> Any:
    """A Parquet part behind a presigned URL, as a ``pyarrow.BufferReader`` (errors never show the URL)."""
    import pyarrow as pa
    import requests

    try:
        response = requests.get(url, timeout=REQUEST_TIMEOUT)
    except requests.RequestException as exc:
        raise StagingError(
            f"cannot read a part from object storage: {type(exc).__name__}", code="read_failed"
        ) from None
    if response.status_code != 200:
        raise StagingError(
            f"object storage answered HTTP {response.status_code} for a part (an expired URL?)",
            code="read_failed",
        )
    return pa.BufferReader(response.content)


def _entry_paths(
    destination: Path | str, entries: list[str], chunks: Iterable[dict[str, Any]]
) -> dict[str, Path | str]:
    """Entry name -> its staged file, or the folder (longest common parent) of its staged files."""
    staged: dict[str, list[str]] = {}
    for chunk in sorted(chunks, key=lambda c: c["index"]):
        if not chunk.get("entry") or chunk.get("error") or chunk["state"] not in ("ready", "acked"):
            continue
        if (
            chunk["state"] == "acked"
            and not chunk.get("url")
            and not (not isinstance(destination, str) and (destination / chunk["path"]).exists())
        ):
            continue  # acknowledged and deleted (delete_on_ack)
        staged.setdefault(chunk["entry"], []).append(str(chunk["path"]))
    paths: dict[str, Path | str] = {}
    for name in entries:
        found = staged.get(name)
        if not found:
            continue
        if isinstance(destination, str):  # object URIs below the job's prefix
            rels = [p[len(destination) :] if p.startswith(destination) else p for p in found]
            paths[name] = destination + (rels[0] if len(rels) == 1 else os.path.commonpath(rels) + "/")
            continue
        paths[name] = destination / (found[0] if len(found) == 1 else os.path.commonpath(found))
    return paths


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
    paths = {str(name): str(path) for name, path in mapping.items()}

    def swap(value: Any) -> Any:
        if isinstance(value, str):
            return paths.get(value, value)
        if isinstance(value, Mapping):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        return value

    return swap(params)


def _chunk_paths(destination: Path, chunks: Iterable[dict[str, Any]]) -> list[Path]:
    paths = []
    for chunk in sorted(chunks, key=lambda c: c["index"]):
        if _is_url(str(chunk["path"])):
            continue
        path = destination / chunk["path"]
        if chunk["state"] == "ready" or (chunk["state"] == "acked" and path.exists()):
            paths.append(path)
    return paths


def _format_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def _progress_text(progress: dict[str, Any]) -> str:
    parts = [f"{progress.get('chunks_done') or 0}/{_or_q(progress.get('chunks_total'))} chunks"]
    parts.append(
        f"{_format_bytes(progress.get('bytes_done') or 0)} of {_format_bytes(progress.get('bytes_total'))}"
    )
    if progress.get("rows_done"):
        parts.append(f"{progress['rows_done']:,} rows")
    if progress.get("rate"):
        parts.append(f"{_format_bytes(progress['rate'])}/s")
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {progress['eta_seconds']:.0f} s")
    return ", ".join(parts)


def _or_q(value: Any) -> str:
    return "?" if value is None else str(value)


def _jobs_table(jobs: Iterable[Job], *, with_id: bool = False) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in (["id"] if with_id else []) + ["name", "state", "progress", "destination"]
    )
    rows = []
    for job in jobs:
        state = html.escape(job.state)
        if job.error:
            code, message = job.error.get("code", ""), job.error.get("message", "")
            state += f"<br><small>{html.escape(code)}: {html.escape(message)}</small>"
        cells = ([f"<code>{html.escape(job.id)}</code>"] if with_id else []) + [
            html.escape(job.name),
            state,
            html.escape(_progress_text(job.progress)),
            f"<code>{html.escape(str(job.destination))}</code>",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows)
    return f'<table class="jupyter-staging-jobs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- the public functions ------------------------------------------------------------------------------------


def stage(
    source: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    destination: str | os.PathLike[str] | None = None,
    *,
    method: str | None = None,
    to_parquet: bool = False,
    chunk_rows: int | None = None,
    compression: str = "zstd",
    hdu: int | str | None = None,
    name: str | None = None,
    idempotency_key: str | None = None,
    cleanup_policy: str = "retain",
    ttl_seconds: int | None = None,
    wait: bool = False,
    timeout: float | None = None,
    show: bool | None = None,
) -> Job:
    """Stage ``source`` into ``destination`` as a tracked job.

    Parameters
    ----------
    source:
        A local file or folder (relative paths are relative to the current working directory), an
        ``http(s)://`` URL (presigned URLs included) or an ``s3://bucket/key`` / ``s3://bucket/prefix/``
        URI. Or a manifest: a mapping of entry names to such sources (``{"reference": "https://...",
        "reads": "s3://..."}``), staged in parallel into ``<destination>/<name>/``; :attr:`Job.paths`
        then maps each staged name to its local path and :func:`resolve` puts those paths into a
        parameter dict. A failed entry does not stop the others; the job then ends ``failed`` with code
        ``partial``, keeping what was staged.
    destination:
        Folder to stage into, relative to the current working directory (or absolute); it must lie inside
        the staging root (the Jupyter server's root_dir). Default: a new folder under the server's
        ``staging_dir``. Or an object store prefix ``s3://bucket/prefix/``: the job writes below
        ``prefix/<job_id>/`` and its chunks carry presigned URLs.
    method:
        ``copy``, ``hardlink``, ``symlink`` or ``download``; default chosen from the source.
    to_parquet, chunk_rows, compression, hdu:
        Convert tables (FITS, VOTable, CSV/TSV, ECSV) to Parquet part files of ``chunk_rows`` rows
        (default 100,000) with ``compression``; ``hdu`` picks the FITS table HDU (index or name).
    name, idempotency_key, cleanup_policy, ttl_seconds:
        As in the REST API (``DESIGN.md``); the same ``idempotency_key`` returns the same job.
    wait, timeout:
        Block until the job ends (at most ``timeout`` seconds), as :meth:`Job.wait`.
    show:
        Display a live :class:`~jupyter_staging.kernel.widgets.JobWidget` (progress, chunks, Pause / Resume /
        Cancel). Default: when running in a Jupyter kernel; in terminal IPython, waiting prints a text
        progress line instead.

    Returns the :class:`Job`. Raises :class:`StagingError` subclasses with a stable ``code``:
    ``source_not_found``, ``path_not_allowed``, ``destination_exists``, ``invalid_request``...; with
    ``wait``, :class:`JobFailed` or :class:`TimeoutError`.
    """
    backend = default_backend()
    body: dict[str, Any] = {"cleanup_policy": cleanup_policy}
    if isinstance(source, Mapping):
        body["manifest"] = {str(k): _local_source(os.fspath(v)) for k, v in source.items()}
    else:
        body["source"] = _local_source(os.fspath(source))
    if destination is not None:
        text = os.fspath(destination)
        body["destination"] = text if _is_url(text) else to_root_relative(text, backend.root_dir)
    if method is not None:
        body["method"] = method
    if not to_parquet and (chunk_rows is not None or hdu is not None):
        raise InvalidRequest("chunk_rows and hdu apply to conversions; pass to_parquet=True as well")
    if to_parquet:
        convert: dict[str, Any] = {"format": "parquet", "compression": compression}
        if chunk_rows is not None:
            convert["chunk_rows"] = int(chunk_rows)
        if hdu is not None:
            convert["hdu"] = hdu
        body["convert"] = convert
    for key, value in (("name", name), ("idempotency_key", idempotency_key), ("ttl_seconds", ttl_seconds)):
        if value is not None:
            body[key] = value
    job = Job(backend.create(body), backend)
    from jupyter_staging.kernel import widgets

    if show is None:
        show = widgets.has_widget_frontend()
    if show:
        widgets.display_job(job)
    if wait:
        job.wait(timeout=timeout, progress=not show and widgets.in_ipython())
    return job


def list_jobs(state: str | None = None, limit: int = 100) -> JobList:
    """Up to ``limit`` jobs, newest first, optionally only those in ``state`` (e.g. ``"running"``)."""
    backend = default_backend()
    return JobList(Job(data, backend) for data in backend.list_jobs(state=state, limit=limit))


def get_job(job_id: str) -> Job:
    """The job ``job_id``. Raises :class:`JobNotFound` (code ``job_not_found``)."""
    backend = default_backend()
    return Job(backend.get(job_id), backend)
