"""Waiting through a Jupyter server that does not answer for a while (restarted, or its pod moved).

The jobs run in the server and resume there after a restart: a kernel waiting for one (``job.wait()``,
``%stage --wait``, its progress bar, ``job.iter_chunks()``) reads it again once the server answers, rather
than failing with ``server_unreachable`` in the middle of the wait. It says so once on the
``jupyter_staging.kernel`` logger (shown on stderr unless the program configured logging), and gives up after
:data:`OUTAGE_LIMIT` seconds without an answer, or at the caller's deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from jupyter_staging.errors import StagingError

log = logging.getLogger("jupyter_staging.kernel")

#: Seconds a wait rides out a server that does not answer before it raises the error (``server_unreachable``).
OUTAGE_LIMIT = 600.0
#: Longest pause between two tries while the server does not answer, seconds.
MAX_RETRY_PAUSE = 5.0
#: HTTP statuses of a proxy while the server behind it restarts: an ingress's 502, 503, 504, and JupyterHub's
#: 424 ("JupyterHub server no longer running", its answer to an API request while the user's server is
#: stopped or still starting; 503 under ``use_legacy_stopped_server_status_code``).
_PROXY_STATUSES = frozenset({424, 502, 503, 504})

_T = TypeVar("_T")


def is_outage(exc: StagingError) -> bool:
    """Whether ``exc`` says the server did not answer (code ``server_unreachable``), or a proxy in front of
    it answered for it (HTTP 424, 502, 503 or 504 without an error code of the staging API)."""
    return exc.code == "server_unreachable" or (exc.code == "http_error" and exc.status in _PROXY_STATUSES)


def through_outage(read: Callable[[], _T], *, deadline: float | None, poll: float) -> _T:
    """``read()``, tried again while the server does not answer (:func:`is_outage`), every ``poll`` seconds
    at first, then up to :data:`MAX_RETRY_PAUSE`. Raises the last error once ``deadline`` (a
    ``time.monotonic()`` value; None: none) or :data:`OUTAGE_LIMIT` seconds of outage have passed, and any
    other :class:`StagingError` at once."""
    began: float | None = None
    pause = max(poll, 0.05)
    while True:
        try:
            result = read()
        except StagingError as exc:
            now = time.monotonic()
            if not is_outage(exc):
                raise
            if began is None:
                began = now
                log.warning("%s; still waiting (the server resumes the job once it is back)", exc.message)
            left = OUTAGE_LIMIT - (now - began)
            if deadline is not None:
                left = min(left, deadline - now)
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_RETRY_PAUSE)
            continue
        if began is not None:
            log.warning("the Jupyter server answers again after %.0f s", time.monotonic() - began)
        return result
