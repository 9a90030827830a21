"""Waiting on a Dask cluster within a time limit: for futures (:func:`wait_for`), and for the blocking
calls of a ``distributed.Client`` that a hung scheduler (a frozen node, its connections open) would never
answer (:func:`within`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["MAX_ABANDONED", "POLL_SECONDS", "abandoned", "wait_for", "within"]

T = TypeVar("T")

#: Seconds between two looks at the futures waited for.
POLL_SECONDS = 0.02
#: Calls of this process to one scheduler that :func:`within` stopped waiting for and that are still blocked
#: (a hung scheduler answers none): past this many, a call to that scheduler fails at once instead of
#: leaving one more thread. Calls to another scheduler (another cluster) are not held back by them.
MAX_ABANDONED = 4

#: Scheduler address -> the calls to it left blocked.
_abandoned: dict[str, int] = {}
_abandoned_lock = threading.Lock()


def abandoned(scheduler: str | None = None) -> int:
    """The number of calls :func:`within` stopped waiting for that have not returned yet (their threads):
    to ``scheduler`` (its address), or to any when None."""
    with _abandoned_lock:
        return sum(_abandoned.values()) if scheduler is None else _abandoned.get(scheduler, 0)


def within(seconds: float, call: Callable[..., T], *args: Any, scheduler: str = "") -> T:
    """``call(*args)`` (a blocking call of the Dask client, which a hung scheduler never answers: a
    ``Variable.set``, a cancel) on a thread of its own, waited for ``seconds`` at most. Raises what the
    call raises, or ``TimeoutError`` past ``seconds`` (the call is left to end on its own, or with the
    client); ``TimeoutError`` at once, calling nothing, while :data:`MAX_ABANDONED` calls to the same
    ``scheduler`` (its address) left so are still blocked (it hangs: a thread per call would pile up as long
    as it does). Calls left blocked on one scheduler never refuse calls to another."""
    outcome: list[Any] = []
    done = threading.Event()
    state = {"left": False}

    def run() -> None:
        try:
            outcome.append((True, call(*args)))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))
        finally:
            with _abandoned_lock:
                done.set()
                if state["left"]:
                    _abandoned[scheduler] -= 1
                    if not _abandoned[scheduler]:
                        del _abandoned[scheduler]

    with _abandoned_lock:
        if (left := _abandoned.get(scheduler, 0)) >= MAX_ABANDONED:
            raise TimeoutError(f"the Dask scheduler has not answered {left} calls of this process")
    threading.Thread(target=run, name="staging-dask-call", daemon=True).start()
    if not done.wait(seconds):
        with _abandoned_lock:
            if not done.is_set():
                state["left"] = True
                _abandoned[scheduler] = _abandoned.get(scheduler, 0) + 1
        if state["left"]:
            raise TimeoutError(f"the Dask scheduler did not answer within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast(T, value)


def wait_for(futures: list[Any], seconds: float, *, every: bool) -> None:
    """Wait up to ``seconds`` until one (``every``: all) of ``futures`` is done. (``distributed.wait``
    needs a default client; the executor's client is not made the default of the server's process.)"""
    deadline = time.monotonic() + seconds
    while futures and time.monotonic() < deadline:
        done = [f.done() for f in futures]
        if all(done) if every else any(done):
            return
        time.sleep(POLL_SECONDS)
