"""HTTP handlers of the hub service, under ``$JUPYTERHUB_SERVICE_PREFIX``.

Authentication is JupyterHub's: browsers log in with OAuth (:class:`HubOAuthenticated` handlers and the
callback at ``<prefix>oauth_callback``), API clients send a hub token (``Authorization: token ...``).
Access is by scopes (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html): the hub only lets
in identities holding ``access:services!service=<name>``; the service's admin scope (a custom scope such
as ``custom:jupyter-staging:admin``) lets its holder act for other users (``?username=``) and see
everything.

=======  ==========================  ==================================================================
verb     path                        does
=======  ==========================  ==================================================================
POST     ``api/stage``               one staging call (201 done, 200 skipped duplicate, 202 running
                                     ``jupyter_copy``; ``direct_download`` answers with the file)
GET      ``api/operations``          operations, newest first (``user``, ``method``, ``status``,
                                     ``limit``, ``before``: the ``next_cursor`` of the page before)
GET      ``api/operations/{id}``     one operation
GET      ``api/logs``                the operations log (admins; ``user``, ``level``, ``lines``)
GET      (the prefix)                the page: staging form, operations, log viewer for admins
=======  ==========================  ==================================================================

Errors are JSON ``{"message", "reason", "code"}`` (plus ``operation_id`` when the call was recorded):
400 for bad input, 403 for a missing scope, 404 for an unknown operation; never a traceback or token.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
from typing import Any
from urllib.parse import quote, urlencode

from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httputil import HTTPOutputError
from tornado.iostream import StreamClosedError
from tornado.log import access_log, app_log

from jupyter_staging.engine.database import DATABASE_DOWN
from jupyter_staging.errors import InvalidRequest, StagingError
from jupyter_staging.hub import oplog
from jupyter_staging.hub.db import STATUSES
from jupyter_staging.hub.fileops import BLOCK_SIZE
from jupyter_staging.hub.operations import Caller, Download, StagingOperations
from jupyter_staging.hub.requests import METHODS
from jupyter_staging.server.web import JSONHandlerMixin, StagingHTTPError, database_down

#: Most rows ``GET api/operations`` returns; most lines ``GET api/logs`` returns.
MAX_LIMIT = 1000
MAX_LOG_LINES = 5000


class _HubAuthFromSettings:
    """Use the service's one :class:`~jupyterhub.services.auth.HubOAuth` (``settings["hub_auth"]``)."""

    settings: dict[str, Any]
    hub_auth: Any

    def initialize(self) -> None:
        self.hub_auth = self.settings["hub_auth"]


class BaseHandler(_HubAuthFromSettings, HubOAuthenticated, JSONHandlerMixin):
    """What every handler shares: the operations, the caller, JSON errors
    (:class:`~jupyter_staging.server.web.JSONHandlerMixin`) and logs without secrets."""

    internal_error_message = "internal error; see the service log"

    @property
    def ops(self) -> StagingOperations:
        return self.settings["staging_operations"]  # type: ignore[no-any-return]

    @property
    def caller(self) -> Caller:
        """The authenticated user or service; ``is_admin`` when it holds the admin scope."""
        model = self.current_user
        admin_scope = self.settings["staging_admin_scope"]
        return Caller(
            name=model["name"],
            kind=model.get("kind", "user"),
            is_admin=bool(self.hub_auth.check_scopes({admin_scope}, model)),
        )

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)``, turning :class:`StagingError` into an HTTP error, and an operations
        database that cannot be reached now into a 503 ``database_unavailable`` naming the driver's reason
        (answered again once it is back)."""
        try:
            return await fn(*args, **kwargs)
        except StagingError as err:
            raise StagingHTTPError.from_error(err) from None
        except DATABASE_DOWN as exc:
            raise StagingHTTPError.from_error(database_down("operations database", exc)) from None

    def get_int(self, name: str, default: int, maximum: int) -> int:
        """Query argument ``name`` as an int in ``1..maximum``; 400 ``invalid_request`` otherwise."""
        raw = self.get_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise StagingHTTPError(400, f"{name} must be an integer", code="invalid_request") from None
        if not 1 <= value <= maximum:
            raise StagingHTTPError(400, f"{name} must be between 1 and {maximum}", code="invalid_request")
        return value

    def get_cursor(self) -> str | None:
        """Query argument ``before`` (None when absent or empty); one that is not UTF-8 is a 400
        ``invalid_cursor`` (no cursor of this service is)."""
        try:
            return self.get_argument("before", None) or None
        except web.HTTPError:  # tornado's "Invalid unicode in before"
            raise StagingHTTPError(
                400, "before is not a cursor of this service", code="invalid_cursor"
            ) from None

    def get_choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        """Query argument ``name``, which must be one of ``choices`` when given (400 otherwise)."""
        value = self.get_argument(name, None) or None
        if value is not None and value not in choices:
            raise StagingHTTPError(400, f"{name} must be one of {', '.join(choices)}", code="invalid_request")
        return value

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """One line per error, without traceback and without the query string (it may hold a token)."""
        summary = f"{self.request.method} {self.request.path}"
        if isinstance(value, StagingHTTPError):
            app_log.warning("%s: %d %s (%s)", summary, value.status_code, value.message, value.code)
        elif isinstance(value, web.HTTPError):
            app_log.warning("%s: %d %s", summary, value.status_code, value.log_message or "")
        else:
            app_log.error("%s: uncaught %s: %s", summary, getattr(typ, "__name__", typ), value)


class APIHandler(BaseHandler):
    """JSON API: an unauthenticated request gets 403 JSON instead of a redirect to the login page."""

    def get_login_url(self) -> str:
        raise StagingHTTPError(
            403,
            "authenticate with a JupyterHub token holding "
            f"{' or '.join(sorted(self.hub_auth.access_scopes)) or 'access to this service'}",
            code="forbidden",
        )


class StageHandler(APIHandler):
    """``POST api/stage``: ``{"method", "local_path_on_storage", "relative_path"}``; ``?username=`` for
    admins. Answers the recorded operation with ``Location`` (201, 200 skipped, 202 running), or the
    file itself for ``direct_download``."""

    @web.authenticated
    async def post(self) -> None:
        result = await self.call(self.ops.stage, self.caller, self.request.body, await self._acting_for())
        if isinstance(result, Download):
            await self._stream(result)
            return
        prefix = self.settings["staging_service_prefix"]
        self.set_header("Location", url_path_join(prefix, "api/operations", result.id))
        status = {"succeeded": 201, "skipped": 200, "running": 202}.get(result.status, 200)
        self.write_json(result.to_dict(), status=status)

    async def _acting_for(self) -> str | None:
        """``?username=`` (None when absent or empty). One that is not UTF-8 is refused 400
        ``invalid_username`` and recorded, as every refusal of a call is
        (:meth:`~jupyter_staging.hub.operations.StagingOperations.refuse`)."""
        try:
            return self.get_argument("username", None) or None
        except web.HTTPError:  # tornado's "Invalid unicode in username"
            refusal = InvalidRequest("?username= is not valid UTF-8", code="invalid_username")
            return await self.call(self.ops.refuse, self.caller, refusal)  # type: ignore[no-any-return]

    async def _stream(self, download: Download) -> None:
        """Send the file: ``Content-Length`` and an ``attachment`` filename; record bytes and sha256."""
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(download.size))
        self.set_header("Content-Disposition", content_disposition(download.filename))
        self.set_header("X-Staging-Operation", download.operation.id)
        digest = hashlib.sha256()
        sent = 0
        error: str | None = None

        def read_block(want: int) -> bytes:
            block = download.file.read(want)
            digest.update(block)
            return block

        try:
            while sent < download.size:
                block = await asyncio.to_thread(read_block, min(BLOCK_SIZE, download.size - sent))
                if not block:
                    error = "the source file shrank while it was sent"
                    break
                self.write(block)
                await self.flush()
                sent += len(block)
        except StreamClosedError:
            error = "the client went away"
        except OSError as err:
            error = f"read error: {err.strerror}"
        finally:
            download.file.close()
        await self.ops.finish_download(download.operation, sent, digest.hexdigest(), error)
        try:
            self.finish()
        except HTTPOutputError:
            pass  # a short body: the connection is closed, the client sees an incomplete download


class OperationsHandler(APIHandler):
    """``GET api/operations``: ``{"operations": [...], "next_cursor", "next"}`` newest first (``started``,
    then ``id``). Filters: ``user`` (admins; also accepted as ``username``), ``method``, ``status``;
    ``limit`` (1-1000, default 100). ``next_cursor`` (null on the last page) is passed back as ``before``
    for the next page; ``next`` is that page's path with the same filters. A ``before`` that is not such a
    cursor is a 400 ``invalid_cursor``."""

    @web.authenticated
    async def get(self) -> None:
        user = self.get_argument("user", None) or self.get_argument("username", None) or None
        filters = {
            "user": user,
            "method": self.get_choice("method", METHODS),
            "status": self.get_choice("status", STATUSES),
        }
        limit = self.get_int("limit", 100, MAX_LIMIT)
        operations, cursor = await self.call(
            self.ops.list_operations, self.caller, **filters, limit=limit, before=self.get_cursor()
        )
        path = url_path_join(self.settings["staging_service_prefix"], "api/operations")
        self.write_json(
            {
                "operations": [op.to_dict() for op in operations],
                "next_cursor": cursor,
                "next": next_page(path, {**filters, "limit": limit}, cursor),
            }
        )


class OperationHandler(APIHandler):
    """``GET api/operations/{id}``: one operation (404 when unknown or someone else's)."""

    @web.authenticated
    async def get(self, operation_id: str) -> None:
        op = await self.call(self.ops.get, self.caller, operation_id)
        self.write_json(op.to_dict())


class LogsHandler(APIHandler):
    """``GET api/logs`` (admins): ``{"lines": [{"time", "level", "message", "operation", "user", ...}]}``,
    oldest first. ``user`` keeps lines of that user (as user or actor), ``level`` lines at that level or
    above, ``lines`` how many (1-5000, default 200)."""

    @web.authenticated
    async def get(self) -> None:
        if not self.caller.is_admin:
            raise StagingHTTPError(
                403, "the operations log needs the service's admin scope", code="forbidden"
            )
        lines = await read_log(
            self.settings,
            lines=self.get_int("lines", 200, MAX_LOG_LINES),
            user=self.get_argument("user", None) or None,
            level=self.get_choice("level", tuple(oplog.LEVELS)),
        )
        self.write_json({"lines": lines})


async def read_log(settings: dict[str, Any], **filters: Any) -> list[dict[str, Any]]:
    """:func:`oplog.tail` of the service's log file, on a worker thread."""
    return await asyncio.to_thread(
        oplog.tail, settings["staging_log_file"], backup_count=settings["staging_log_backups"], **filters
    )


class PageHandler(BaseHandler):
    """The page at the service's root: the staging form, the operations table and, for admins, the log
    viewer (filters ``user``, ``method``, ``status``, ``level`` in the query string). Browsers that
    are not logged in are sent through the Hub's OAuth login."""

    @web.authenticated
    async def get(self) -> None:
        caller = self.caller
        user = self.get_argument("user", None) or None
        status = self.get_choice("status", STATUSES)
        method = self.get_choice("method", METHODS)
        operations, cursor = await self.call(
            self.ops.list_operations,
            caller,
            user=user if caller.is_admin else None,
            method=method,
            status=status,
            limit=200,
            before=self.get_cursor(),
        )
        logs = None
        level = self.get_choice("level", tuple(oplog.LEVELS))
        if caller.is_admin:
            logs = await read_log(self.settings, lines=200, user=user, level=level)
        filters = {"user": user, "method": method, "status": status, "level": level}
        older = next_page(self.settings["staging_service_prefix"], filters, cursor)
        self.finish(self.render_page(caller, operations, logs, older=older, **filters))

    def render_page(
        self, caller: Caller, operations: list[Any], logs: Any, *, older: str | None = None, **filters: Any
    ) -> str:
        settings = self.settings
        hub_prefix = settings["staging_hub_prefix"]
        template = settings["jinja_env"].get_template("staging.html")
        model = self.current_user
        return template.render(
            # what JupyterHub's page.html expects
            base_url=hub_prefix,
            prefix=settings["staging_hub_base_url"],
            static_url=lambda path, include_version=True: url_path_join(hub_prefix, "static", path),
            user=_PageUser(model["name"]),
            admin_access=False,
            no_spawner_check=True,
            parsed_scopes=set(model.get("scopes", [])),
            services=[],
            logout_url=url_path_join(hub_prefix, "logout"),
            login_url=url_path_join(hub_prefix, "login"),
            logo_url=None,
            announcement=None,
            version_hash="",
            xsrf_token=self.xsrf_token.decode("ascii"),
            # this page
            caller=caller,
            service_prefix=settings["staging_service_prefix"],
            shared_roots=settings["staging_shared_roots"],
            user_area=settings["staging_user_area_template"],
            methods=METHODS,
            statuses=STATUSES,
            levels=tuple(oplog.LEVELS),
            operations=[op.to_dict() for op in operations],
            logs=logs,
            filters=filters,
            older=older,
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A plain HTML error for browsers (no traceback)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "message", None) or getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            f"<!DOCTYPE html><title>{status_code} {self._reason}</title>"
            f"<h1>{status_code} {self._reason}</h1><p>{html.escape(str(message))}</p>"
        )


def next_page(path: str, query: dict[str, Any], cursor: str | None) -> str | None:
    """``path`` with ``query`` (its None values left out) and ``before=cursor``: the next page of a listing
    with the same filters; None without a cursor (the last page)."""
    if cursor is None:
        return None
    kept = {name: value for name, value in query.items() if value is not None}
    return f"{path}?{urlencode({**kept, 'before': cursor})}"


def content_disposition(filename: str) -> str:
    """``attachment`` header value for ``filename``, with an ASCII fallback and RFC 5987 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _PageUser:
    """The bits of a user page.html reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.json_escaped_name = json.dumps(name)[1:-1]


class OAuthCallbackHandler(_HubAuthFromSettings, HubOAuthCallbackHandler):
    """``<prefix>oauth_callback``: finishes the Hub's OAuth login and sets the service's cookie."""


def log_request(handler: web.RequestHandler) -> None:
    """Access log line without the query string (a ``?token=`` must never reach a log)."""
    status = handler.get_status()
    level = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    millis = 1000.0 * handler.request.request_time()
    level("%d %s %s %.1fms", status, handler.request.method, handler.request.path, millis)


def default_handlers(prefix: str) -> list[tuple[str, type[web.RequestHandler]]]:
    """The route table under the service ``prefix`` (which ends with ``/``)."""
    return [
        (url_path_join(prefix, "oauth_callback"), OAuthCallbackHandler),
        (url_path_join(prefix, "api/stage"), StageHandler),
        (url_path_join(prefix, "api/operations"), OperationsHandler),
        (url_path_join(prefix, r"api/operations/(?P<operation_id>[^/]{1,64})"), OperationHandler),
        (url_path_join(prefix, "api/logs"), LogsHandler),
        (prefix.rstrip("/") + "/?", PageHandler),
    ]
