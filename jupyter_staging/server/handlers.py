"""REST handlers of the staging API, under ``<base_url>api/v1/staging`` (``DESIGN.md``).

Each handler parses the request into a model, makes one call into the
:class:`~jupyter_staging.engine.manager.StagingManager` on a worker thread (the manager does blocking
database and file work) and writes JSON. Errors are ``{"message", "reason", "code"}`` with a stable
``code`` (:mod:`jupyter_staging.server.web`); bad input is 400, never 500; no traceback or secret is ever
written.

Presigned chunk URLs are the one exception by design: ``GET /jobs/{id}/chunks`` and
``GET /jobs/{id}/chunks/{chunk_id}/refresh`` exist to hand the authenticated owner of a job the URLs of its
chunks in object storage, so their bodies carry them (with their signatures, or they would not work).
No other answer, no event, log line, database row or manifest ever holds one.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from jupyter_staging.engine.database import DATABASE_DOWN, database_reason
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunksQuery, CreateJob, ListJobsQuery, dump
from jupyter_staging.engine.snapshot import unfinished_jobs
from jupyter_staging.errors import StagingError, too_many_open_files_error
from jupyter_staging.server.chunkbody import chunk_page_body, manifest_body
from jupyter_staging.server.openapi import OpenAPIHandler
from jupyter_staging.server.web import JSONHandlerMixin, StagingHTTPError, database_down

T = TypeVar("T")

API_PREFIX = "api/v1/staging"
# Any length: an id no job has is answered with a JSON ``job_not_found`` / ``chunk_not_found``, not an
# HTML 404.
_JOB_ID = r"(?P<job_id>[^/]+)"
_CHUNK_ID = r"(?P<chunk_id>[^/]+)"

#: Seconds between keep-alive comments on an idle event stream.
EVENTS_KEEPALIVE = 15.0


class StagingAPIHandler(JSONHandlerMixin, APIHandler):
    """Shared plumbing. Subclasses define their own decorated verbs (the ``@authorized`` decorator caches
    the resource of the class it is first used on, so no verb is inherited). Bodies, answers and errors are
    JSON (:class:`~jupyter_staging.server.web.JSONHandlerMixin`)."""

    @property
    def manager(self) -> StagingManager:
        """The server's manager. Raises :class:`StagingHTTPError` (503 ``database_newer_than_code``,
        ``database_unavailable`` or ``staging_misconfigured``) when the server started without one: its job
        database was upgraded by a later release or could not be opened, or a setting was refused."""
        unavailable = self.settings.get("staging_unavailable")
        if unavailable is not None:
            raise StagingHTTPError.from_error(unavailable)
        return self.settings["staging_manager"]  # type: ignore[no-any-return]

    @property
    def owner(self) -> str:
        """Everyone allowed on this single-user server acts as its owner."""
        return self.settings["staging_owner"]  # type: ignore[no-any-return]

    _etag: str | None = None

    def finish_encoded(self, encoded: tuple[bytes, str]) -> None:
        """Finish with a JSON body and its ``Etag`` made on a worker thread (``(body, etag)``:
        :mod:`jupyter_staging.server.chunkbody`), so a body of megabytes is neither encoded nor hashed on the
        event loop; tornado still answers ``If-None-Match`` with 304."""
        body, self._etag = encoded
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    def compute_etag(self) -> str | None:
        """The ``Etag`` :meth:`finish_encoded` was given, else tornado's own (hashed on the loop)."""
        return self._etag if self._etag is not None else super().compute_etag()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking manager call on a worker thread, turning :class:`StagingError` into HTTP errors.

        What a request's values can still provoke below the checks is answered 400 too (see
        :func:`input_error`), logged with its traceback so a bug stays visible; no file descriptor left
        (``EMFILE`` / ``ENFILE``) is a 503 ``too_many_open_files``; a job database that cannot be reached
        now (its server stopped or restarting, a SQLite file locked past the busy timeout) is a 503
        ``database_unavailable`` naming the driver's reason, answered again once it is back; any other
        exception is a 500 ``internal_error`` without details.
        """
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StagingError as err:
            raise StagingHTTPError.from_error(err) from None
        except DATABASE_DOWN as exc:
            self.log.warning("staging: the job database cannot be reached: %s", database_reason(exc))
            raise StagingHTTPError.from_error(database_down("job database", exc)) from None
        except (ValueError, OverflowError, RecursionError, OSError) as exc:
            http_error = input_error(exc)
            if http_error is None:
                no_descriptor = too_many_open_files_error(exc)  # the server's state: 503, never a 500
                if no_descriptor is None:
                    raise
                raise StagingHTTPError.from_error(no_descriptor) from None
            self.log.warning("staging: %s answered 400 %s", type(exc).__name__, http_error.code, exc_info=exc)
            raise http_error from None


class JobsHandler(StagingAPIHandler):
    """``POST /jobs`` creates a job; ``GET /jobs`` lists them."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.parse_body(CreateJob)
        job, created = await self.call(self.manager.create, request, self.owner, start=False)
        try:
            self.set_header("Location", url_path_join(self.base_url, API_PREFIX, "jobs", job.id))
            self.write_json(dump(job), status=201 if created else 200)
        finally:
            if created:  # started once the answer is written (and whatever happened to it): a queue put
                self.manager.submit(job.id, recorded=True)

    @web.authenticated
    @authorized
    async def get(self) -> None:
        args = {k: self.get_argument(k) for k in ("state", "limit", "cursor") if self.get_argument(k, None)}
        query = self.validate(ListJobsQuery, args)
        jobs = await self.call(self.manager.list_jobs, self.owner, query)
        self.write_json(dump(jobs))


class JobHandler(StagingAPIHandler):
    """``GET /jobs/{id}`` status and progress; ``DELETE /jobs/{id}`` cancels and cleans up."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = await self.call(self.manager.get, job_id, self.owner)
        self.write_json(dump(job))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        await self.call(self.manager.cancel, job_id, self.owner)
        self.set_status(204)
        self.finish()


class PauseHandler(StagingAPIHandler):
    """``POST /jobs/{id}/pause``: the job, paused. 409 ``invalid_state`` for a job that ended and
    ``swap_in_progress`` for one whose complete output is being swapped in (no pause stops it)."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        job = await self.call(self.manager.pause, job_id, self.owner)
        self.write_json(dump(job))


class ResumeHandler(StagingAPIHandler):
    """``POST /jobs/{id}/resume``."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        job = await self.call(self.manager.resume, job_id, self.owner)
        self.write_json(dump(job))


class ChunksHandler(StagingAPIHandler):
    """``GET /jobs/{id}/chunks[?offset=N&limit=M]``: ``{"chunks": [chunk, ...], "total": T}``.

    The chunks of index ``>= offset`` (default 0) in index order, at most ``limit`` (default: all of them;
    at most 10,000); ``total`` is how many chunks the job has. A negative, non-integer or too large value
    is a 400 ``invalid_request`` (other parameters are ignored); an unknown job a 404 ``job_not_found``.

    Ready chunks in object storage (of this page only) carry ``url``, a presigned GET URL valid
    ``StagingApp.presign_expiry_seconds`` from this request, and ``url_expires_at``. This body (and
    ``refresh``'s) is the only place such a URL is ever written: it is made per request, never stored,
    logged or sent as an event.
    """

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        # only these two: other parameters are ignored (JupyterLab adds a cache-busting one to every GET)
        args = {
            k: self.get_argument(k) for k in ("offset", "limit") if self.get_argument(k, None) is not None
        }
        query = self.validate(ChunksQuery, args)
        # The page is read, described, encoded and hashed on the worker thread: 20,000 chunks are 6.8 MB
        # of JSON, which held every other request of the server (jupyter_staging.server.chunkbody).
        body = await self.call(
            chunk_page_body, self.manager, job_id, self.owner, offset=query.offset, limit=query.limit
        )
        self.set_header("Cache-Control", "no-store")
        self.finish_encoded(body)


class ChunkRefreshHandler(StagingAPIHandler):
    """``GET /jobs/{id}/chunks/{chunk_id}/refresh``: the chunk with a new presigned ``url`` (valid
    ``StagingApp.presign_expiry_seconds`` from now) and its ``url_expires_at``.

    Errors: 404 ``chunk_not_found``; 400 ``chunk_not_in_object_storage`` for a chunk of a local
    destination (a file has no URL); 409 ``chunk_not_ready`` for a chunk not uploaded yet and
    ``chunk_expired`` for one whose object is gone for good (also when it was removed from the store
    behind the job's back); 503 ``destination_unavailable`` when the server's S3 endpoint setting is not a
    usable URL or the store cannot be reached. Signing is local; one HEAD asks the store whether the
    object is still there. Nothing changes, hence a GET.
    """

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self, job_id: str, chunk_id: str) -> None:
        chunk = await self.call(self.manager.refresh_chunk, job_id, chunk_id, self.owner)
        self.set_header("Cache-Control", "no-store")
        self.write_json(dump(chunk))


class ChunkAckHandler(StagingAPIHandler):
    """``POST /jobs/{id}/chunks/{chunk_id}/ack``: the acknowledged chunk.

    Errors: 404 ``chunk_not_found``; 409 ``chunk_not_ready`` for a chunk not complete yet and
    ``chunk_expired`` for one whose output clean-up removed; 503 ``destination_unavailable`` (the chunk left
    ``ready``) under ``delete_on_ack`` when the server's S3 endpoint setting is not a usable URL or the
    store cannot be reached."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def post(self, job_id: str, chunk_id: str) -> None:
        chunk = await self.call(self.manager.ack, job_id, chunk_id, self.owner)
        self.write_json(dump(chunk))


class ManifestHandler(StagingAPIHandler):
    """``GET /jobs/{id}/manifest``: the manifest of a succeeded job (409 ``manifest_not_ready`` before)."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        # Encoded and hashed on the worker thread: a manifest of 20,000 files is 6 MB of JSON.
        self.finish_encoded(await self.call(manifest_body, self.manager, job_id, self.owner))


class LogHandler(StagingAPIHandler):
    """``GET /jobs/{id}/log``: ``{"lines": [{"time", "level", "message"}, ...]}``."""

    auth_resource = "jupyter_staging:jobs"

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        lines = await self.call(self.manager.job_log, job_id, self.owner)
        self.write_json({"lines": lines})


class StreamOrder:
    """Which job events one event stream sends, so that it never goes back in time for a job.

    Threads announce a job's changes as they write them: two that write at nearly the same time (the
    progress report and a chunk of a conversion made ready, a progress report and a pause) may call the
    listeners in the other order, and the events queued while the stream's first list of jobs was read
    are older than that list. An event whose ``updated_at`` is earlier than that of an event already sent
    for the job is dropped, whatever its state; one of the same ``updated_at`` (a chunk acknowledged) or
    a later one goes out. ``updated_at`` is the server's wall clock: were it set back while a job runs,
    that job's events would wait until the clock passes the last one sent (a client's poll still reads
    the job as it is)."""

    def __init__(self) -> None:
        self._sent: dict[str, datetime] = {}

    def admit(self, job: dict[str, Any]) -> bool:
        """Whether to send the event of ``job`` (the event's ``"job"`` object); remembers it when so."""
        when = datetime.fromisoformat(job["updated_at"])
        last = self._sent.get(job["id"])
        if last is not None and when < last:
            return False
        self._sent[job["id"]] = when
        return True


class EventsHandler(StagingAPIHandler):
    """``GET /events``: server-sent events, one ``data: {"type": "job", "job": {...}}`` per job change.

    The stream opens with the current state of every unfinished job, then follows changes (progress at
    most a few times a second per job), each job's in the order they were written (:class:`StreamOrder`);
    a comment line keeps idle connections open.
    """

    auth_resource = "jupyter_staging:events"
    _track_activity = False

    @web.authenticated
    @authorized
    async def get(self) -> None:
        manager = self.manager  # a server without its database answers 503 here, before the stream opens
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

        def listener(event: dict[str, Any]) -> None:
            if event["job"].get("owner") == self.owner:
                loop.call_soon_threadsafe(_put, queue, event)

        unsubscribe = manager.subscribe(listener)
        order = StreamOrder()
        try:
            # Read before the stream opens: a database that cannot be reached is answered 503, not a stream
            # that ends at once (an error cannot be sent after the headers).
            current = await self.call(unfinished_jobs, manager, self.owner)
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            self.write(": stream open\n\n")  # send the headers now, so clients know the stream is live
            await self.flush()
            for job in current:
                snapshot = dump(job)
                order.admit(snapshot)
                await self._send({"type": "job", "job": snapshot})
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=EVENTS_KEEPALIVE)
                except asyncio.TimeoutError:
                    self.write(": keep-alive\n\n")
                    await self.flush()
                    continue
                if order.admit(event["job"]):
                    await self._send(event)
        except StreamClosedError:
            pass
        finally:
            unsubscribe()

    async def _send(self, event: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(event)}\n\n")
        await self.flush()


#: ``code`` of an :class:`OSError` a request's path provokes, by ``errno``.
INPUT_ERRNO_CODES = {errno.ENAMETOOLONG: "name_too_long", errno.ELOOP: "path_not_allowed"}


def input_error(exc: BaseException) -> StagingHTTPError | None:
    """The 400 answer for an exception a request's values provoke below the checks: a value out of range
    (``ValueError``, ``OverflowError``), nesting too deep (``RecursionError``), a path too long or
    looping (``OSError`` ``ENAMETOOLONG``, ``ELOOP``). None for anything else (a 500)."""
    if isinstance(exc, OSError):
        code = INPUT_ERRNO_CODES.get(exc.errno or 0)
        if code is None:
            return None
        return StagingHTTPError(400, f"a path of the request cannot be used: {exc.strerror}", code=code)
    if not isinstance(exc, (ValueError, OverflowError, RecursionError)):
        return None
    what = "nested too deeply" if isinstance(exc, RecursionError) else "out of range or malformed"
    return StagingHTTPError(400, f"a value of the request is {what}", code="invalid_request")


def _put(queue: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    if not queue.full():
        queue.put_nowait(event)


default_handlers = [
    (rf"/{API_PREFIX}/jobs", JobsHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}", JobHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/pause", PauseHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/resume", ResumeHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/chunks", ChunksHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/chunks/{_CHUNK_ID}/ack", ChunkAckHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/chunks/{_CHUNK_ID}/refresh", ChunkRefreshHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/manifest", ManifestHandler),
    (rf"/{API_PREFIX}/jobs/{_JOB_ID}/log", LogHandler),
    (rf"/{API_PREFIX}/events", EventsHandler),
    (rf"/{API_PREFIX}/openapi.yaml", OpenAPIHandler),
]
