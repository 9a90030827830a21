"""A small client of the JupyterHub REST API and of users' own servers.

``jupyter_copy`` needs it: the Hub starts the user's server
(https://jupyterhub.readthedocs.io/en/stable/reference/rest-api.html), then the user's server runs the copy
through its staging API (``api/v1/staging``), so the write is the user's own. The Hub is called with the
service's own token; a user's server never sees it (the user runs that server and may read every header
it gets), only a short-lived token the service asks the Hub to make for that user, whose one scope is
``access:servers!user=<name>`` (:meth:`HubAPI.user_token`). Errors are
:class:`~jupyter_staging.errors.StagingError` with stable codes; messages never hold a token.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from jupyter_staging.errors import InvalidRequest, StagingError

#: The jobs of the staging API of a user's server, relative to the server's URL.
STAGING_JOBS = "api/v1/staging/jobs"

#: Chunks asked for in one request when the service reads a job's chunks (the server answers at most 10,000).
CHUNK_PAGE = 5000
#: Chunks the service reads of one job at most (:meth:`HubAPI.job_chunks`), whatever its server answers.
MOST_CHUNKS = 20000

#: Seconds a token made for calls to a user's server lives; a new one is made once half of that is gone.
USER_TOKEN_SECONDS = 3600


class HubAPI:
    """Calls to the JupyterHub REST API with the service's own token, and to a user's server with a token
    made for that user alone (:meth:`user_token`).

    Scopes the service's role needs (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html):
    ``read:users:name`` and ``read:servers`` to see a user's server, ``servers`` to start it, ``tokens``
    to have the Hub make the user's token for the staging API of the user's server. The service's own token
    is never sent to a user's server: with ``access:servers`` it would open every user's server to whoever
    runs that one.

    ``api_url`` is ``$JUPYTERHUB_API_URL`` (``.../hub/api``); ``proxy_url`` the proxy's URL as the service
    reaches it (user servers are under ``/user/<name>/`` there). Requests time out after
    ``request_timeout`` seconds.
    """

    def __init__(self, api_url: str, token: str, proxy_url: str, *, request_timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.proxy_url = proxy_url.rstrip("/")
        self._token = token
        self.request_timeout = request_timeout
        self.client = AsyncHTTPClient()
        #: Tokens made for users' servers: user name -> (token, monotonic time after which a new one is made).
        self._user_tokens: dict[str, tuple[str, float]] = {}

    async def request(
        self, method: str, url: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``; HTTP error statuses are returned, not raised. ``token`` is
        sent (default: the service's own, for the Hub only).

        Raises ``hub_unreachable`` (502) when the connection fails."""
        req = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {token or self._token}", "Content-Type": "application/json"},
            body=None if body is None and method in ("GET", "DELETE") else json.dumps(body or {}),
            request_timeout=self.request_timeout,
            follow_redirects=False,
        )
        try:
            response = await self.client.fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise StagingError(
                f"cannot reach {url.split('?')[0]}: {type(err).__name__}", code="hub_unreachable", status=502
            ) from None
        if response.code == 599:
            raise StagingError(f"cannot reach {url.split('?')[0]}", code="hub_unreachable", status=502)
        try:
            data = json.loads(response.body) if response.body else None
        except ValueError:
            data = None
        return response.code, data

    async def get_user(self, name: str) -> dict[str, Any] | None:
        """The user's model (with ``servers``), or None for an unknown user."""
        code, data = await self.request("GET", f"{self.api_url}/users/{quote(name, safe='')}")
        if code == 404:
            return None
        if code != 200 or not isinstance(data, dict):
            raise StagingError(f"the Hub answered {code} for user {name!r}", code="hub_error", status=502)
        return data

    async def ensure_server(self, name: str, *, timeout: float, interval: float = 0.5) -> str:
        """Start the user's default server unless it runs, wait until it is ready, return its URL path
        (e.g. ``/user/bob/``).

        Raises ``unknown_user`` (400), ``server_start_failed`` (502) when the spawn fails,
        ``server_start_timeout`` (504) after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        user = await self._require_user(name)
        server = user.get("servers", {}).get("")
        if not (server and (server.get("ready") or server.get("pending"))):
            code, data = await self.request("POST", f"{self.api_url}/users/{quote(name, safe='')}/server")
            if code not in (201, 202, 400):
                message = data.get("message") if isinstance(data, dict) else None
                raise StagingError(
                    f"the Hub could not start {name}'s server ({code}: {message or 'no detail'})",
                    code="server_start_failed",
                    status=502,
                )
        while True:
            server = (await self._require_user(name)).get("servers", {}).get("")
            if server and server.get("ready"):
                return str(server["url"])
            if not server:
                raise StagingError(f"{name}'s server failed to start", code="server_start_failed", status=502)
            if loop.time() > deadline:
                raise StagingError(
                    f"{name}'s server was not ready after {timeout:.0f} s",
                    code="server_start_timeout",
                    status=504,
                )
            await asyncio.sleep(interval)

    async def _require_user(self, name: str) -> dict[str, Any]:
        user = await self.get_user(name)
        if user is None:
            raise InvalidRequest(f"no JupyterHub user named {name!r}", code="unknown_user")
        return user

    async def user_token(self, name: str) -> str:
        """A token of user ``name`` whose only scope is ``access:servers!user=<name>`` (what the user has
        already), made by the Hub (``POST users/<name>/tokens``, the service's ``tokens`` scope) to live
        :data:`USER_TOKEN_SECONDS` seconds, and kept for half of that. The user's server, which the user
        runs and may spy on, gets this token, never the service's.

        A Hub whose ``token_expires_in_max_seconds`` is shorter makes it for that long instead, and it is
        kept for half of the lifetime the Hub gave it.

        Raises ``not_configured`` (500) when the Hub refuses to make it (the service's role lacks
        ``tokens``), ``hub_unreachable`` (502)."""
        loop = asyncio.get_running_loop()
        kept = self._user_tokens.get(name)
        if kept is not None and loop.time() < kept[1]:
            return kept[0]
        body = {
            "scopes": [f"access:servers!user={name}"],
            "expires_in": USER_TOKEN_SECONDS,
            "note": "jupyter-staging-hub: jupyter_copy calls to this user's server",
        }
        url = f"{self.api_url}/users/{quote(name, safe='')}/tokens"
        code, data = await self.request("POST", url, body)
        if code == 400 and "must not exceed" in str(data.get("message") if isinstance(data, dict) else ""):
            # The Hub's token_expires_in_max_seconds is shorter: without expires_in it gives its maximum.
            code, data = await self.request("POST", url, {**body, "expires_in": None})
        token = data.get("token") if isinstance(data, dict) else None
        if code not in (200, 201) or not isinstance(token, str):
            message = data.get("message") if isinstance(data, dict) else None
            raise StagingError(
                f"the Hub made no token for {name}'s server ({code}: {message or 'no detail'}); the "
                "service's role needs the 'tokens' scope (docs/hub.md)",
                code="not_configured",
                status=500,
            )
        lifetime = min(USER_TOKEN_SECONDS, token_lifetime(data, USER_TOKEN_SECONDS))
        self._user_tokens[name] = (token, loop.time() + lifetime / 2)
        return token

    async def server_api(
        self, username: str, server_path: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """Call ``<proxy_url><server_path><path>`` (``username``'s server) with :meth:`user_token`; a token
        the server refuses (403: revoked, expired early) is made again once."""
        url = f"{self.proxy_url}{server_path.rstrip('/')}/{path}"
        code, data = await self.request(method, url, body, token=await self.user_token(username))
        if code == 403:
            self._user_tokens.pop(username, None)
            code, data = await self.request(method, url, body, token=await self.user_token(username))
        return code, data

    # -- the staging API of a user's server -----------------------------------------------------------

    async def create_job(self, username: str, server_path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST api/v1/staging/jobs`` in ``username``'s server (at ``server_path``); the job model.

        Raises :func:`server_error` unless the answer is 200 or 201 with a JSON object."""
        code, job = await self.server_api(username, server_path, "POST", STAGING_JOBS, body)
        if code not in (200, 201) or not isinstance(job, dict):
            raise server_error(username, code, job)
        return job

    async def get_job(self, username: str, server_path: str, job_id: str) -> dict[str, Any]:
        """``GET api/v1/staging/jobs/{job_id}`` in ``username``'s server; the job model.

        Raises :func:`server_error` unless the answer is 200 with a JSON object."""
        code, job = await self.server_api(username, server_path, "GET", job_url(job_id))
        if code != 200 or not isinstance(job, dict):
            raise server_error(username, code, job)
        return job

    async def job_chunks(
        self, username: str, server_path: str, job_id: str, *, page: int = CHUNK_PAGE, most: int = MOST_CHUNKS
    ) -> list[dict[str, Any]]:
        """Every chunk of a job in ``username``'s server, in index order, read ``page`` at a time
        (``GET .../chunks?offset=&limit=``, until ``total`` are read): a job of 20,000 chunks is 4 answers
        of 5,000 rather than one of megabytes. A server of an earlier release, which answers every chunk
        and no ``total`` to the first page, is read in that one answer.

        At most ``most`` chunks: the user runs that server and may make it answer anything (a ``total`` of
        10**12 and full pages for ever, which the service read and kept without end); a job stating more,
        or a page holding more than asked for, raises ``chunk_list_failed``.

        The list is whole or not returned: a page the server fails to answer (no connection, 429, 5xx) is
        asked again after each of :attr:`page_retry_delays` seconds; a page still failing, or answered
        anything else than 200 with a list of chunk objects (the job deleted meanwhile: 404; a non-JSON
        answer; a later page without ``total``), or a read that ends short of ``total``, raises
        ``chunk_list_failed`` (502) naming the job and the page's offset, never the chunks read before it
        as if they were all."""
        found: list[dict[str, Any]] = []
        offset = 0
        total: int | None = None
        while True:
            read = (len(found), total)
            asked = min(page, most - len(found))
            got, total = await self._chunk_page(username, server_path, job_id, offset, asked, read)
            if len(found) + len(got) > most or (total is not None and total > most) or len(got) > asked:
                why = f"more than the {most} chunks read of one job, or more than the {asked} asked for"
                raise chunk_list_failed(username, job_id, offset, len(found), total, why)
            found += got
            if total is None:  # an earlier release answered every chunk to the first page
                return found
            after = _index(got[-1]) + 1 if got else offset
            # ``offset`` is an index and ``total`` a count: indexes may have gaps, so the count of chunks
            # read ends the list, never an index reaching ``total``.
            if len(found) >= total:
                return found
            if len(got) < asked or after <= offset:  # the server has no more, or would not move on
                raise chunk_list_failed(
                    username, job_id, offset, len(found), total, f"its last page ended at {len(found)}"
                )
            offset = after

    #: Seconds waited before each new try of a page of chunks the user's server failed to answer.
    page_retry_delays: tuple[float, ...] = (0.5, 2.0, 5.0)

    async def _chunk_page(
        self,
        username: str,
        server_path: str,
        job_id: str,
        offset: int,
        page: int,
        read: tuple[int, int | None],
    ) -> tuple[list[dict[str, Any]], int | None]:
        """One page of :meth:`job_chunks`: ``(chunks, total)``, ``total`` None only for an earlier
        release's whole list (first page). Raises ``chunk_list_failed`` (502); ``read`` is how many chunks
        the pages before gave, and of how many (for the message)."""
        path = f"{job_url(job_id)}/chunks?offset={offset}&limit={page}"
        delays = list(self.page_retry_delays)
        while True:
            try:
                code, answer = await self.server_api(username, server_path, "GET", path)
            except StagingError as err:
                if err.code != "hub_unreachable":
                    raise
                code, answer = 599, {"message": err.message}  # no connection: stopping, restarting
            if (code >= 500 or code == 429) and delays:
                await asyncio.sleep(delays.pop(0))
                continue
            break
        chunks = answer.get("chunks") if isinstance(answer, dict) else None
        total = answer.get("total") if isinstance(answer, dict) else None
        if (
            code == 200
            and isinstance(chunks, list)
            and all(isinstance(c, dict) for c in chunks)
            and (isinstance(total, int) or (total is None and offset == 0))
        ):
            return chunks, total
        message = answer.get("message") if isinstance(answer, dict) and code != 200 else None
        what = f"it answered {code}: {message or 'no detail'}" if code != 200 else "its answer was no page"
        raise chunk_list_failed(username, job_id, offset, read[0], read[1], what)

    async def ack_chunk(self, username: str, server_path: str, job_id: str, index: int) -> None:
        """``POST api/v1/staging/jobs/{job_id}/chunks/{index}/ack`` in ``username``'s server: under the job's
        ``delete_on_ack`` policy the server deletes that file, and with the last chunk the job's manifest
        and the folder it made (as the user: what a service that is neither root nor the user may not
        remove).

        Raises :func:`server_error` unless the answer is 200."""
        code, body = await self.server_api(
            username, server_path, "POST", f"{job_url(job_id)}/chunks/{int(index)}/ack", {}
        )
        if code != 200:
            raise server_error(username, code, body)


def token_lifetime(model: dict[str, Any], default: float) -> float:
    """Seconds until the token of a Hub token model (``expires_at``, ISO 8601 UTC) expires; ``default``
    when the model states no readable expiry."""
    try:
        ends = datetime.fromisoformat(str(model["expires_at"]).replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return default
    ends = ends if ends.tzinfo else ends.replace(tzinfo=timezone.utc)
    return max(0.0, (ends - datetime.now(timezone.utc)).total_seconds())


def _index(chunk: dict[str, Any]) -> int:
    """A chunk's ``index`` (-1 when it has none that is an integer)."""
    index = chunk.get("index")
    return index if isinstance(index, int) else -1


def job_url(job_id: str) -> str:
    """Path of a job in the staging API of a user's server, relative to the server."""
    return f"{STAGING_JOBS}/{quote(job_id, safe='')}"


def chunk_list_failed(
    username: str, job_id: str, offset: int, read: int, total: int | None, why: str
) -> StagingError:
    """``chunk_list_failed`` (502): the chunk list of ``job_id`` in ``username``'s server could not be read
    whole; the page at ``offset`` failed after ``read`` chunks (of ``total`` when known) and ``why``."""
    of = f" of {total}" if total is not None else ""
    return StagingError(
        f"the chunks of job {job_id} in {username}'s server could not be read whole: the page at offset "
        f"{offset} failed after {read}{of} chunks ({why})",
        code="chunk_list_failed",
        status=502,
    )


def server_error(username: str, code: int, body: Any) -> StagingError:
    """A failed call to the user's server as a :class:`StagingError` keeping the server's error code."""
    message = body.get("message") if isinstance(body, dict) else None
    server_code = body.get("code") if isinstance(body, dict) else None
    return StagingError(
        f"{username}'s server answered {code}: {message or 'no detail'}",
        code=str(server_code or "server_error"),
        status=502 if code >= 500 or code < 400 else code,
    )
