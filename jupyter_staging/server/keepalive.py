"""Keep a user's server "active" for JupyterHub while one of its staging jobs runs.

jupyterhub-idle-culler stops servers whose last activity, as the Hub records it, is older than its
``--timeout``. A two-hour download makes no API call and no kernel activity, so without help the culler
would stop the server mid-job (jupyter-scheduler's issue 563 asks for the same). jupyter_server counts every
``web_app.settings`` key ending in ``_last_activity`` in ``ServerWebApplication.last_activity()``, which
jupyterhub-singleuser reports to the Hub every ``$JUPYTERHUB_ACTIVITY_INTERVAL`` seconds (JupyterHub docs,
"Activity tracking"); :class:`KeepAlive` sets ``staging_last_activity`` to now while a job is queued or
running, as kernels and terminals do for their own activity.

A cap (``max_seconds``) ends the keep-alive when jobs have kept the server active that long without a
break, so a job stuck for days cannot pin a server forever; 0 means no cap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from tornado.ioloop import PeriodicCallback

#: The jupyter_server setting counted by ``ServerWebApplication.last_activity()``.
SETTING = "staging_last_activity"

log = logging.getLogger(__name__)


class KeepAlive:
    """Marks the server active every ``interval_seconds`` while ``has_active_jobs()`` is true.

    ``settings``: the server's ``web_app.settings``; ``has_active_jobs``: a cheap query (one row at most)
    for queued or running jobs of this server; ``max_seconds``: the longest uninterrupted keep-alive
    (seconds, 0 for none). :meth:`tick` is the work of one period (tests call it directly).
    """

    def __init__(
        self,
        settings: MutableMapping[str, Any],
        has_active_jobs: Callable[[], bool],
        *,
        interval_seconds: float = 30.0,
        max_seconds: float = 0.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.has_active_jobs = has_active_jobs
        self.interval_seconds = interval_seconds
        self.max_seconds = max_seconds
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._since: datetime | None = None
        self._capped = False
        self._callback: PeriodicCallback | None = None

    def tick(self) -> bool:
        """Mark the server active if a job runs and the cap allows it; True when it was marked."""
        try:
            active = self.has_active_jobs()
        except Exception:  # a database hiccup must not stop the periodic callback
            log.warning("staging keep-alive: could not read the job states", exc_info=True)
            return False
        now = self._now()
        if not active:
            self._since, self._capped = None, False
            return False
        if self._since is None:
            self._since = now
        if self.max_seconds and (now - self._since).total_seconds() > self.max_seconds:
            if not self._capped:
                log.warning(
                    "staging keep-alive: jobs kept this server active for %d s (max_keep_alive_seconds); "
                    "the idle culler may now stop it",
                    self.max_seconds,
                )
                self._capped = True
            return False
        self.settings[SETTING] = now
        return True

    def start(self) -> None:
        """Run :meth:`tick` now and then every ``interval_seconds`` on the current IOLoop."""
        self.tick()
        self._callback = PeriodicCallback(self._tick, self.interval_seconds * 1000)
        self._callback.start()

    def _tick(self) -> None:
        self.tick()

    def stop(self) -> None:
        """Stop the periodic callback."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
