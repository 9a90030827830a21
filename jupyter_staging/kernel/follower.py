"""The daemon thread behind a live widget: :class:`Follower` polls while the kernel stays free.

It calls the widget's ``poll`` every few seconds until ``poll`` says there is nothing left to follow, the
widget stops it (``stop()``, from its ``close()``) or the widget is gone: the thread holds the widget's
methods by weak reference only, so it never keeps a widget alive. When a poll fails (the Jupyter server
died, say) it tells the widget, then waits longer before each next try — twice as long each time, up to a
cap — and goes back to its interval after the next poll that succeeds. Nothing here imports ipywidgets.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Follower"]

#: Calls ``failed(exc, since, wait)``: the exception of the poll that failed, when the failures began
#: (``time.time()``, seconds) and the seconds until the next try.
FailureCallback = Callable[[Exception, float, float], None]


def _weak(method: Callable[..., Any]) -> Callable[[], Callable[..., Any] | None]:
    """A weak reference to a bound method (a plain function is held as it is)."""
    if hasattr(method, "__self__"):
        return weakref.WeakMethod(method)  # type: ignore[arg-type]
    return lambda: method


class Follower:
    """Calls ``poll()`` on a daemon thread named ``staging-widget`` until it returns True.

    ``interval``: seconds between two polls that succeed; ``idle_interval`` (default ``interval``) after a
    poll that returns None (nothing moves: a paused job, which a click elsewhere may resume). When
    ``poll`` raises an :class:`Exception`, ``failed(exc, since, wait)`` is called (``since``: when the
    failures began, ``time.time()``; ``wait``: the seconds until the next try, which doubles at each
    failure up to ``max_interval`` seconds); the next poll that succeeds brings the interval back. The
    thread ends when ``poll`` returns True, at :meth:`stop`, or once the object ``poll`` and ``failed``
    are bound to has been garbage collected (they are held by weak reference). Nothing is raised to the
    caller.
    """

    def __init__(
        self,
        poll: Callable[[], bool | None],
        failed: FailureCallback,
        *,
        interval: float,
        max_interval: float,
        idle_interval: float | None = None,
    ) -> None:
        self._poll = _weak(poll)
        self._failed = _weak(failed)
        self.interval = interval
        self.idle_interval = interval if idle_interval is None else idle_interval
        self.max_interval = max(interval, max_interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-widget", daemon=True)

    @property
    def running(self) -> bool:
        """True while the thread is alive (started, and neither done nor stopped yet)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start polling (once; a follower cannot be started again after it ended)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling: the thread ends at once if it is waiting, else after the poll it is running."""
        self._stop.set()

    def _run(self) -> None:
        wait = self.interval
        since: float | None = None
        while not self._stop.is_set():
            poll = self._poll()
            if poll is None:
                return
            try:
                done = poll()
            except Exception as exc:  # shown by the widget, never raised into the kernel
                since = since if since is not None else time.time()
                wait = min(wait * 2, self.max_interval)
                failed = self._failed()
                if failed is None:
                    return
                failed(exc, since, wait)
                del failed
            else:
                if done:
                    return
                since, wait = None, self.idle_interval if done is None else self.interval
            # Between two polls the thread holds no strong reference to the widget.
            del poll
            self._stop.wait(wait)
