"""Watching a job from a terminal or a script: a `tqdm <https://tqdm.github.io>`_ bar on stderr.

:meth:`Job.wait <jupyter_staging.kernel.job.Job.wait>` draws it by default when stderr is a terminal and no
widget frontend shows the job (:func:`shows_by_default`); in a notebook the job's widget shows progress
instead. The bar moves with the source bytes (``bytes_done`` of ``bytes_total``); its text is
:func:`~jupyter_staging.kernel.formatting.progress_summary`, so sizes read as everywhere else.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Protocol

from tqdm.auto import tqdm

from jupyter_staging.kernel.formatting import progress_summary
from jupyter_staging.kernel.frontend import has_widget_frontend
from jupyter_staging.kernel.outages import through_outage

__all__ = ["WatchedJob", "follow", "shows_by_default"]

#: The bar when the total is known, and when it is not (yet): tqdm's own counters are replaced by our
#: summary (``{summary}``, filled in before tqdm sees the format).
BAR_FORMAT = "{{desc}}: {{percentage:3.0f}}%|{{bar}}| {summary} [{{elapsed}}]"
BAR_FORMAT_NO_TOTAL = "{{desc}}: {summary} [{{elapsed}}]"


class WatchedJob(Protocol):
    """What :func:`follow` reads of a job (a :class:`~jupyter_staging.kernel.job.Job` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def done(self) -> bool: ...

    @property
    def progress(self) -> dict[str, Any]: ...

    def refresh(self) -> Any: ...


def shows_by_default() -> bool:
    """True when waiting should draw a bar: stderr is a terminal and no widget frontend shows the job."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and not has_widget_frontend()


def follow(job: WatchedJob, *, poll: float, deadline: float | None, timeout: float | None) -> None:
    """Draw ``job``'s progress on stderr, refreshing it every ``poll`` seconds, until it ends (the bar
    stays, with the final state). Raises :class:`TimeoutError` once ``time.monotonic()`` passes
    ``deadline`` (None: no limit; ``timeout`` seconds is what the message names). A server that does not
    answer for a while is waited for (:func:`~jupyter_staging.kernel.outages.through_outage`)."""
    columns, rows = _terminal_size()
    with tqdm(
        desc=job.name or job.id,
        unit="B",
        file=sys.stderr,
        ncols=columns,
        nrows=rows,
        bar_format=BAR_FORMAT_NO_TOTAL.format(summary="waiting"),
        leave=True,
    ) as bar:
        while True:
            through_outage(job.refresh, deadline=deadline, poll=poll)  # through a server's restart
            _show(bar, job.progress, "" if not job.done else job.state)
            if job.done:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job.name!r} ({job.id}) is still {job.state} after {timeout} s")
            time.sleep(poll)


def _terminal_size() -> tuple[int, int]:
    """``(columns, lines)`` of the terminal on stderr, else of ``$COLUMNS`` / ``$LINES``, else 100 x 20 (a
    terminal that says 0 x 0, as a fresh pseudo-terminal does, would make tqdm hide its bar)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    fallback = shutil.get_terminal_size((100, 20))
    return size.columns or fallback.columns or 100, size.lines or fallback.lines or 20


def _show(bar: Any, progress: dict[str, Any], ended: str) -> None:
    """Move ``bar`` to ``progress`` (the job JSON's); ``ended`` is the final state, once there is one."""
    total = progress.get("bytes_total")
    done = progress.get("bytes_done") or 0
    summary = progress_summary(progress) + (f" - {ended}" if ended else "")
    summary = summary.replace("{", "{{").replace("}", "}}")
    if total:
        bar.total = total
        done = min(done, total)
    bar.bar_format = (BAR_FORMAT if total else BAR_FORMAT_NO_TOTAL).format(summary=summary)
    bar.n = done
    bar.refresh()
