"""Where jobs live: a Jupyter server's REST API (:class:`ServerBackend`) or this process
(:class:`LocalBackend`, which runs a :class:`~jupyter_staging.engine.manager.StagingManager`).

Both take and return the wire format's JSON dicts (``DESIGN.md``), so :class:`~jupyter_staging.kernel.job.Job`
reads the same whichever runs its jobs. Nothing here imports tornado or jupyter_server.
"""

from __future__ import annotations

import atexit
import logging
import os
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

import requests
import requests.adapters
from jupyter_core.paths import jupyter_data_dir
from pydantic import ValidationError

from jupyter_staging.engine.models import ChunksQuery, CreateJob, ListJobsQuery, dump
from jupyter_staging.errors import InvalidRequest, InvalidState, JobNotFound, StagingError, error_classes
from jupyter_staging.kernel.outages import through_outage

if TYPE_CHECKING:
    from jupyter_staging.engine.manager import StagingManager

__all__ = [
    "API_PREFIX",
    "FINAL_STATES",
    "PROBE_TIMEOUT",
    "REQUEST_TIMEOUT",
    "Backend",
    "LocalBackend",
    "ServerBackend",
    "error_from_response",
    "server_base_url",
]

API_PREFIX = "api/v1/staging"

#: Seconds a discovery probe waits for a candidate server.
PROBE_TIMEOUT = 3.0
#: Seconds any other API request waits for the server.
REQUEST_TIMEOUT = 60.0

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})


# -- errors from the wire -------------------------------------------------------------------------------

#: Every error class of :mod:`jupyter_staging.errors` by its code: a job run by a server raises in the
#: kernel what the same job run in-process raises (``DestinationNotWritable``, ``InsufficientSpace``, ...).
_ERRORS_BY_CODE: dict[str, type[StagingError]] = {cls.code: cls for cls in error_classes()}
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


# -- the interface -----------------------------------------------------------------------------------------


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

    def chunk_page(self, job_id: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        """``{"chunks": [...], "total": n}``: the job's chunks of index ``>= offset`` in index order, at
        most ``limit`` (None: all), and how many chunks the job has (``GET /jobs/{id}/chunks?offset&limit``).
        Raises :class:`InvalidRequest` for a negative ``offset`` or ``limit``, or a ``limit`` over 10,000.
        This default filters :meth:`chunks` (a backend that can ask for a page only does so)."""
        query = _chunks_query(offset, limit)
        chunks = self.chunks(job_id)
        return _page_of(chunks, query.offset, query.limit, len(chunks))

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
        """Block up to ``timeout`` seconds for the job to reach a final state; returns the job as it is. A
        server that stops answering meanwhile (restarted) is waited for, up to the same deadline
        (:func:`~jupyter_staging.kernel.outages.through_outage`, which raises its error after)."""
        deadline = time.monotonic() + timeout
        while True:
            job = through_outage(lambda: self.get(job_id), deadline=deadline, poll=poll)
            remaining = deadline - time.monotonic()
            if job["state"] in FINAL_STATES or remaining <= 0:
                return job
            time.sleep(min(poll, remaining))

    def close(self) -> None:
        """Release what the backend holds (connections, worker threads)."""


# -- a Jupyter server --------------------------------------------------------------------------------------


class _PinnedCertificate(requests.adapters.HTTPAdapter):
    """TLS to a server that must present the certificate of ``cafile`` (or one it signed): the server's
    own certificate file, read by OpenSSL as the only trust anchors (``VERIFY_X509_PARTIAL_CHAIN``: a leaf
    is one; no system or certifi CA), without a host-name check. Raises ``OSError`` / ``ssl.SSLError``
    when the file is unreadable."""

    def __init__(self, cafile: str) -> None:
        self._context = ssl.create_default_context(cafile=cafile)
        self._context.check_hostname = False
        self._context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        kwargs["assert_hostname"] = False  # urllib3 checks the name itself unless told not to
        super().init_poolmanager(*args, **kwargs)

    # requests adds its CA bundle (certifi's, or REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE) to the context of
    # each connection: with no host-name check, any certificate such a CA signed would pass. The pinned
    # certificate is the only trust anchor, whatever ``verify`` the session or the environment gives.
    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, True, cert)
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        super().cert_verify(conn, url, True, cert)
        conn.ca_certs = conn.ca_cert_dir = None


#: First path segments of a Jupyter server's pages (JupyterLab, the file browser, Notebook 7, the editor):
#: a URL copied from the address bar ends the server's base URL where one of them begins.
_PAGES = frozenset({"lab", "tree", "notebooks", "edit", "doc", "view"})


def server_base_url(url: str) -> tuple[str, str | None]:
    """The base URL of a Jupyter server from a URL a user pastes, and the token it carries (or None).

    The URL Jupyter prints (``http://127.0.0.1:8888/lab?token=abc``) becomes ``http://127.0.0.1:8888/``
    and ``"abc"``; so does one copied from the address bar (``.../lab/tree/analysis/run.ipynb``,
    ``.../tree/data``): the path ends where the first page segment (``lab``, ``tree``, ``notebooks``,
    ``edit``, ``doc``, ``view``) begins, after a JupyterHub ``/user/<name>/`` (a user may be called
    ``lab``). The query, the fragment and a ``user:password@`` are dropped: the URL is shown in messages
    and logs (:class:`ServerBackend` sends a user and password as basic auth). Always ends with ``/``.
    """
    parts = urlsplit(url)
    token = parse_qs(parts.query).get("token", [None])[0]
    segments = parts.path.split("/")
    first = 3 if len(segments) > 3 and segments[1] == "user" else 1
    page = next((i for i in range(first, len(segments)) if segments[i] in _PAGES), None)
    path = "/".join(segments[:page]) if page is not None else parts.path
    host = parts.netloc.rpartition("@")[2]
    base = urlunsplit((parts.scheme, host, path if path.endswith("/") else path + "/", "", ""))
    return base, token


class ServerBackend(Backend):
    """Jobs in a Jupyter server running the ``jupyter_staging`` extension, through its REST API.

    Parameters
    ----------
    url:
        The server's URL including its base_url, e.g. ``http://127.0.0.1:8888/`` or
        ``https://hub.example.org/user/ada/``; the URL Jupyter prints (``.../lab?token=...``) is taken
        too (:func:`server_base_url`).
    token:
        An API token of that server (sent as ``Authorization: token ...``), or None: then the URL's
        ``token`` if it has one.
    root_dir:
        The server's root directory as this process sees it (destinations are relative to it).
    server_cert:
        For an ``https`` URL, the PEM file of the server's own certificate (its ``ServerApp.certfile``),
        trusted as the only certificate of that URL whatever names it holds (a self-signed certificate,
        or one naming the host when the URL is ``127.0.0.1``); None: the system's CAs and a host-name
        check, as requests does.

    Errors the server answers with become :class:`StagingError` subclasses carrying the server's ``code``,
    ``message`` and HTTP ``status``; an unreachable server is ``StagingError(code="server_unreachable")``, and
    an answer that is not JSON (an HTML page) ``StagingError(code="bad_response")``.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        root_dir: str | os.PathLike[str],
        *,
        server_cert: str | None = None,
    ) -> None:
        self.url, url_token = server_base_url(url)
        token = token or url_token
        self.api = f"{self.url}{API_PREFIX}/"
        self.root_dir = Path(root_dir).expanduser().resolve()
        self._session = requests.Session()
        given = urlsplit(url)
        if given.username is not None:  # user:password@ in the URL: basic auth, never shown
            self._session.auth = (unquote(given.username), unquote(given.password or ""))
        if server_cert and self.url.startswith("https:"):
            self._session.mount(self.url, _PinnedCertificate(server_cert))
        self._session.headers["Accept"] = "application/json"
        if token:
            self._session.headers["Authorization"] = f"token {token}"

    def __repr__(self) -> str:
        return f"ServerBackend({self.url!r}, root_dir={str(self.root_dir)!r})"

    def probe(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """True when the server answers ``GET jobs?limit=1`` with 200 (it runs the extension and accepts
        the token)."""
        try:
            response = self._session.get(self.api + "jobs", params={"limit": 1}, timeout=timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
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
        try:
            return response.json()
        except ValueError:  # a page, not the API: a URL that is not the server's base URL, or a proxy
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise StagingError(
                f"the Jupyter server at {self.url} answered {path} with {kind}, not JSON: is that the "
                "server's base URL (as JUPYTERHUB_SERVICE_PREFIX or `jupyter server list` gives it)?",
                code="bad_response",
                status=502,
            ) from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "jobs", json=body)  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", _job_path(job_id))  # type: ignore[no-any-return]

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._call("GET", "jobs", params=params)["jobs"]  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        self._call("DELETE", _job_path(job_id))
        return self.get(job_id)

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", _job_path(job_id, "pause"))  # type: ignore[no-any-return]

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", _job_path(job_id, "resume"))  # type: ignore[no-any-return]

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", _job_path(job_id, "chunks"))["chunks"]  # type: ignore[no-any-return]

    def chunk_page(self, job_id: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        query = _chunks_query(offset, limit)
        params = {"offset": query.offset, **({} if query.limit is None else {"limit": query.limit})}
        answer = self._call("GET", _job_path(job_id, "chunks"), params=params)
        if "total" in answer:
            return answer  # type: ignore[no-any-return]
        # a server of an earlier release answers every chunk, without a total
        chunks = answer["chunks"]
        return _page_of(chunks, query.offset, query.limit, len(chunks))

    def ack(self, job_id: str, index: int) -> dict[str, Any]:
        return self._call("POST", _job_path(job_id, f"chunks/{int(index)}/ack"))  # type: ignore[no-any-return]

    def refresh_chunk(self, job_id: str, index: int) -> dict[str, Any]:
        path = _job_path(job_id, f"chunks/{int(index)}/refresh")
        return self._call("GET", path)  # type: ignore[no-any-return]

    def manifest(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", _job_path(job_id, "manifest"))  # type: ignore[no-any-return]

    def log(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", _job_path(job_id, "log"))["lines"]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._session.close()


def _job_path(job_id: str, rest: str = "") -> str:
    """``jobs/<job_id>[/rest]`` with the id quoted as one path segment."""
    path = f"jobs/{quote(job_id, safe='')}"
    return f"{path}/{rest}" if rest else path


# -- this process ------------------------------------------------------------------------------------------


class LocalBackend(Backend):
    """Jobs run by a :class:`~jupyter_staging.engine.manager.StagingManager` in this process.

    Parameters
    ----------
    root_dir:
        Folder destinations are relative to and confined in (default: the current working directory).
    db_url:
        SQLAlchemy URL of the job database (default: ``local-jobs.sqlite`` in
        ``<jupyter data dir>/jupyter_staging``).

    The manager is started at once (jobs a kernel's engine left running in ``root_dir`` in this database are
    resumed) and stopped at interpreter exit; a job still running then stays ``running`` in the database and
    resumes the next time a local backend starts on the same root. Jobs of a Jupyter server sharing the
    database are never run here, even when that server is gone: the server resumes them at its next start
    (the manager's ``runner_kind`` is ``"kernel"``).

    The engine's log lines are the jobs' own logs (:meth:`Job.log`); unless the program configured a
    handler for the ``jupyter_staging`` logger, they are not also printed on stderr (Python's last-resort
    handler would repeat every job error there, beside the error the caller gets).
    """

    def __init__(self, root_dir: str | os.PathLike[str] | None = None, db_url: str | None = None) -> None:
        # Deferred: the engine (SQLAlchemy, sources, formats) is loaded only when jobs run in this process.
        from jupyter_staging.engine.manager import StagingManager

        self.root_dir = Path(root_dir if root_dir is not None else os.getcwd()).expanduser().resolve()
        if db_url is None:
            folder = Path(jupyter_data_dir()) / "jupyter_staging"
            folder.mkdir(parents=True, exist_ok=True)
            db_url = f"sqlite:///{folder / 'local-jobs.sqlite'}"
        engine_log = logging.getLogger("jupyter_staging")
        if not engine_log.handlers:
            engine_log.addHandler(logging.NullHandler())
        self.manager: StagingManager = StagingManager(self.root_dir, db_url=db_url, runner_kind="kernel")
        self.manager.start()
        self._closed = False
        atexit.register(self.close)

    def __repr__(self) -> str:
        return f"LocalBackend(root_dir={str(self.root_dir)!r})"

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            request = CreateJob.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid request: {_problems(exc)}") from None
        job, _ = self.manager.create(request)
        return dump(job)

    def get(self, job_id: str) -> dict[str, Any]:
        return dump(self.manager.get(job_id))

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        try:
            query = ListJobsQuery.model_validate({"state": state, "limit": limit})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid query: {_problems(exc)}") from None
        return [dump(j) for j in self.manager.list_jobs(query=query).jobs]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dump(self.manager.cancel(job_id))

    def pause(self, job_id: str) -> dict[str, Any]:
        return dump(self.manager.pause(job_id))

    def resume(self, job_id: str) -> dict[str, Any]:
        return dump(self.manager.resume(job_id))

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        # ``StagingManager.list`` shadows ``list`` in the manager's annotations, so mypy misreads this type.
        chunks: Iterable[Any] = self.manager.chunks(job_id)  # type: ignore[assignment]
        return [dump(c) for c in chunks]

    def chunk_page(self, job_id: str, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        query = _chunks_query(offset, limit)
        return dump(self.manager.chunk_page(job_id, offset=query.offset, limit=query.limit))

    def ack(self, job_id: str, index: int) -> dict[str, Any]:
        return dump(self.manager.ack(job_id, str(index)))

    def refresh_chunk(self, job_id: str, index: int) -> dict[str, Any]:
        return dump(self.manager.refresh_chunk(job_id, str(index)))

    def manifest(self, job_id: str) -> dict[str, Any]:
        return self.manager.manifest(job_id)

    def log(self, job_id: str) -> list[dict[str, Any]]:
        return self.manager.job_log(job_id)

    def wait(self, job_id: str, timeout: float, poll: float) -> dict[str, Any]:
        return dump(self.manager.wait(job_id, timeout=timeout))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.manager.stop(wait=True)


def _chunks_query(offset: int, limit: int | None) -> ChunksQuery:
    """``offset`` / ``limit`` checked as the server checks them. Raises :class:`InvalidRequest`."""
    try:
        return ChunksQuery.model_validate({"offset": offset, "limit": limit}, strict=True)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid query: {_problems(exc)}") from None


def _page_of(chunks: list[dict[str, Any]], offset: int, limit: int | None, total: int) -> dict[str, Any]:
    """The page ``offset`` / ``limit`` of ``chunks`` (every chunk of a job, in index order)."""
    page = [c for c in chunks if int(c["index"]) >= offset]
    return {"chunks": page if limit is None else page[:limit], "total": total}


def _problems(err: ValidationError) -> str:
    """A validation error as ``field: problem; ...`` without echoing the values (as the server does)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
        for e in err.errors(include_input=False, include_url=False)
    )
