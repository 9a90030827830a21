"""The HTTP client HTTP(S) sources use, and how they read its answers' headers.

:func:`retrying_session` is the one ``requests`` session setup (urllib3 ``Retry`` of connection errors and
429/5xx, on connection pools shared by the process: :class:`SharedPoolAdapter`); the other functions read
what an answer says about the resource: its version (ETag, Last-Modified, size), its length
(``Content-Length``, ``Content-Range``), whether it serves byte ranges (``Accept-Ranges``), and its file
name (``Content-Disposition`` or the URL). RFC 9110 throughout.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager
from urllib3.util.retry import Retry

from jupyter_staging.clouds.http import describe_error

log = logging.getLogger(__name__)

USER_AGENT = "jupyter-staging"
#: Longest back-off (seconds) between two retries of one request.
RETRY_BACKOFF_MAX = 8.0
#: Longest ``Retry-After`` (seconds) honoured before one retry; a longer one is waited this long (urllib3's
#: own limit is six hours, five retries: a job, or a request listing its source, held for a day).
RETRY_AFTER_MAX = 60

#: How the retries of a session made in this context wait (:func:`waiting_with`); None: ``time.sleep``.
_RETRY_WAIT: ContextVar[Callable[[float], None] | None] = ContextVar("staging_retry_wait", default=None)
#: What a session made in this context is told of each retry (:func:`waiting_with`); None: nothing.
_RETRY_NOTE: ContextVar[Callable[[str], None] | None] = ContextVar("staging_retry_note", default=None)


@contextmanager
def waiting_with(wait: Callable[[float], None], note: Callable[[str], None] | None = None) -> Iterator[None]:
    """Sessions made by :func:`retrying_session` in this block (this thread) wait between retries with
    ``wait(seconds)``: a job's :meth:`~jupyter_staging.safety.control.JobControl.wait`, which ends early and
    raises :class:`~jupyter_staging.errors.JobInterrupted` at a pause or cancel; ``note(line)`` is told each
    retry and why (a line for the job's log)."""
    token, note_token = _RETRY_WAIT.set(wait), _RETRY_NOTE.set(note)
    try:
        yield
    finally:
        _RETRY_NOTE.reset(note_token)
        _RETRY_WAIT.reset(token)


class WaitTooLong(Exception):  # noqa: N818 - a request's own limit, not an error of the source
    """A source asked a listing made inside a request to wait longer than the request may
    (:func:`bounded_wait`): the request goes on without it, and the job lists it when it runs."""


def bounded_wait(budget: float) -> Callable[[float], None]:
    """A ``wait(seconds)`` for :func:`waiting_with`: sleeps while the waits so far stay within ``budget``
    seconds in all, and raises :class:`WaitTooLong` at once, sleeping nothing, for a wait beyond."""
    left = budget

    def wait(seconds: float) -> None:
        nonlocal left
        if seconds > left:
            raise WaitTooLong
        left -= seconds
        time.sleep(seconds)

    return wait


class _Retry(Retry):
    """urllib3's ``Retry`` waiting with ``wait(seconds)`` (kept by :meth:`new`, which makes the ``Retry`` of
    every next attempt) instead of an uninterruptible ``time.sleep``."""

    def __init__(
        self,
        *args: Any,
        wait: Callable[[float], None] | None = None,
        note: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wait = wait or time.sleep
        self.note = note

    def new(self, **kw: Any) -> _Retry:
        kw.setdefault("wait", self.wait)
        kw.setdefault("note", self.note)
        return super().new(**kw)  # type: ignore[return-value]

    def sleep(self, response: Any = None) -> None:
        """Wait what ``response``'s ``Retry-After`` asks (at most :data:`RETRY_AFTER_MAX` s), else the
        back-off; raises what ``wait`` raises (:class:`~jupyter_staging.errors.JobInterrupted`)."""
        seconds = self.get_retry_after(response) if self.respect_retry_after_header and response else None
        if not seconds:
            seconds = self.get_backoff_time()
        if self.note is not None:
            try:
                self.note(self._retry_line(seconds))
            except Exception as exc:  # a log line not written (its database locked) ends no request
                log.warning("a retry's line for the job's log was not written (%s)", type(exc).__name__)
        if seconds > 0:
            self.wait(seconds)

    def _retry_line(self, seconds: float) -> str:
        """``"no answer from the server (connection refused): trying again in 2 s (retry 3 of 5)"``: the
        last attempt's error (secret-free, :func:`~jupyter_staging.clouds.http.describe_error`) or status."""
        last = self.history[-1] if self.history else None
        if last is not None and last.error is not None:
            what = f"no answer from the server ({describe_error(last.error)})"
        else:
            what = f"the server answered HTTP {last.status if last is not None else '?'}"
        done = len(self.history)
        total = done + (self.total if isinstance(self.total, int) else 0)
        when = f"in {seconds:g} s" if seconds > 0 else "now"
        return f"{what}: trying again {when} (retry {done} of {total})"


#: ``Content-Range: bytes <first>-<last>/<complete length or *>``.
CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


#: Hosts whose connections are kept, and connections kept per host (``concurrent_items`` 8 x
#: ``streams_per_file`` 4 = 32 requests at once to one host from one job).
POOL_HOSTS = 32
POOL_PER_HOST = 32


@dataclass
class SharedPools:
    """The connections of the process: one urllib3 pool manager (thread-safe) and the proxy managers made
    for the proxies the environment names, shared by every :class:`SharedPoolAdapter`."""

    manager: PoolManager = field(
        default_factory=lambda: PoolManager(num_pools=POOL_HOSTS, maxsize=POOL_PER_HOST)
    )
    proxies: dict[str, Any] = field(default_factory=dict)


_shared: SharedPools | None = None
_shared_lock = threading.Lock()


def shared_pools() -> SharedPools:
    """The process's :class:`SharedPools` (:data:`POOL_HOSTS` hosts of :data:`POOL_PER_HOST` connections
    each), made at first use; a forked child makes its own."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = SharedPools()
        return _shared


def _forget_shared_pools() -> None:
    """In a forked child: pools of its own at first use, never the parent's open connections."""
    global _shared
    _shared = None


os.register_at_fork(after_in_child=_forget_shared_pools)


class SharedPoolAdapter(HTTPAdapter):
    """The transport adapter of one :func:`retrying_session`: its own retries (a job's wait between them),
    the process's connections (:func:`shared_pools`), so the requests of all items (the HEAD that lists a
    file, its GET, the next file's) reuse open connections to a host instead of opening one each, TLS
    handshake included. A session's cookies stay its own. :meth:`close` (what closing a session does)
    keeps the shared connections open for the next session."""

    def __init__(self, max_retries: Retry) -> None:
        super().__init__(pool_connections=POOL_HOSTS, pool_maxsize=POOL_PER_HOST, max_retries=max_retries)
        self.proxy_manager = shared_pools().proxies

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Use the process's pool manager instead of making one."""
        self._pool_connections, self._pool_maxsize, self._pool_block = connections, maxsize, block
        self.poolmanager = shared_pools().manager

    def close(self) -> None:
        """Keep the shared connections: they live as long as the process."""


def retry_note(control: Any, name: str) -> Callable[[str], None]:
    """A ``note`` for :func:`retrying_session`: each retry of file ``name`` a warning in the job's log of
    ``control`` (a :class:`~jupyter_staging.safety.control.JobControl`)."""
    return lambda line: control.log("warning", f"{name}: {line}")


def retrying_session(
    wait: Callable[[float], None] | None = None, note: Callable[[str], None] | None = None
) -> requests.Session:
    """A :class:`requests.Session` that retries connection errors and 429/5xx answers to GET/HEAD, on the
    process's shared connections (:class:`SharedPoolAdapter`).

    Five retries with exponential back-off (factor 0.5 s, at most :data:`RETRY_BACKOFF_MAX` s), honouring
    ``Retry-After`` up to :data:`RETRY_AFTER_MAX` seconds. After the last retry the final response is
    returned (not raised), so callers map its status themselves. Waits between retries are
    ``wait(seconds)`` (a job's ``control.wait``: a pause or cancel ends them, raising
    :class:`~jupyter_staging.errors.JobInterrupted` from the request), else the one of the enclosing
    :func:`waiting_with`, else ``time.sleep``; each retry is told to ``note(line)`` (else the enclosing
    :func:`waiting_with`'s), a line for the job's log. A new session per listing or fetch keeps cookies and
    redirects to that request's chain; closing it closes no connection.
    """
    retry = _Retry(
        total=5,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False,
        backoff_max=RETRY_BACKOFF_MAX,
        retry_after_max=RETRY_AFTER_MAX,
        wait=wait or _RETRY_WAIT.get(),
        note=note or _RETRY_NOTE.get(),
    )
    session = requests.Session()
    adapter = SharedPoolAdapter(retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    # The stored bytes are the file's bytes: never let a server compress them on the way.
    session.headers["Accept-Encoding"] = "identity"
    return session


def filename_from_disposition(value: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives (``filename*=`` preferred), or None."""
    if not value:
        return None
    msg = Message()
    msg["content-disposition"] = value
    try:
        name = msg.get_filename()
    except (ValueError, LookupError):
        return None
    return name or None


def filename_from_url(url: str) -> str:
    """The URL's last path segment, percent-decoded (may be empty)."""
    path = urlsplit(url).path
    return unquote(path.rstrip("/").rsplit("/", 1)[-1]) if path else ""


def validator_of(headers: Any, size: int | None) -> dict[str, Any]:
    """The version an answer names: ``{"etag", "last_modified", "size"}`` (the item's fingerprint;
    ``size`` in bytes, or None)."""
    return {
        "etag": headers.get("ETag"),
        "last_modified": headers.get("Last-Modified"),
        "size": size,
    }


def accepts_ranges(headers: Any) -> bool:
    """True when an answer says the server serves byte ranges: ``Accept-Ranges: bytes`` (RFC 9110
    §14.3), or a ``Content-Range`` (a ``206`` to the probe's ranged GET)."""
    units = {unit.strip().lower() for unit in (headers.get("Accept-Ranges") or "").split(",")}
    return "bytes" in units or bool(headers.get("Content-Range"))


def changed_keys(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` both validators know whose values differ (the two name different versions)."""
    return [
        key for key in keys if old.get(key) is not None and new.get(key) is not None and old[key] != new[key]
    ]


def total_from_content_range(value: str | None) -> int | None:
    """The complete length (bytes) a ``Content-Range`` header states (RFC 9110 §14.4), or None."""
    if not value:
        return None
    m = CONTENT_RANGE_RE.match(value.strip())
    if m and m.group(3) != "*":
        return int(m.group(3))
    tail = value.rsplit("/", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


def int_header(headers: Any, name: str) -> int | None:
    """Header ``name`` as an integer, or None when absent or not a number."""
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def presigned_expiry(url: str) -> datetime | None:
    """When the signature of a presigned ``url`` stops being valid (UTC), from what its query states:
    ``X-Amz-Date`` + ``X-Amz-Expires`` (S3 SigV4), ``X-Goog-Date`` + ``X-Goog-Expires`` (Google Cloud
    Storage), ``Expires`` (seconds since the epoch) beside a ``Signature`` (S3 SigV2, Google V2,
    CloudFront), ``se`` beside a ``sig`` (an Azure SAS's signed expiry). None for a URL that states none,
    or states it unreadably, or is not signed by the scheme whose parameter it holds."""
    query = {name.lower(): value for name, value in parse_qsl(urlsplit(url).query)}
    try:
        for vendor in ("amz", "goog"):
            signed, seconds = query.get(f"x-{vendor}-date"), query.get(f"x-{vendor}-expires")
            if signed and seconds:
                start = datetime.strptime(signed, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                return start + timedelta(seconds=int(seconds))
        # ``Expires`` and ``se`` only beside their scheme's signature: in another URL they are any
        # service's own parameters, and a 401/403 there is no expiry.
        if "signature" in query and query.get("expires", "").isdigit():
            return datetime.fromtimestamp(int(query["expires"]), tz=timezone.utc)
        if "sig" in query and query.get("se"):
            ends = datetime.fromisoformat(query["se"].replace("Z", "+00:00"))
            return ends if ends.tzinfo else ends.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return None
