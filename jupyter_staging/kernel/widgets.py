"""Live job widgets for notebooks (ipywidgets 8), with a text fallback for plain IPython.

A :class:`JobWidget` shows one job — overall progress bar, per-chunk grid, bytes / total, rate, ETA,
state, the error when it failed — and Pause / Resume / Cancel buttons that call the staging API. A
:class:`JobsTable` shows every job with the same controls. Both follow their jobs from a daemon thread
that polls the job's status, so the kernel stays free: the user keeps running cells while jobs move.
Widget state moves only through synced traits (``value``, ``description``...), set from that thread.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w
from IPython.display import display

from jupyter_staging.kernel.backends import FINAL_STATES
from jupyter_staging.kernel.formatting import format_bytes, progress_text
from jupyter_staging.kernel.job import Job

__all__ = ["POLL_INTERVAL", "JobWidget", "JobsTable", "chunk_grid_html", "display_job", "progress_text"]

#: Seconds between two status polls of a job shown in a widget.
POLL_INTERVAL = 0.5

_STATE_COLOURS = {
    "queued": "#9e9e9e",
    "running": "#1976d2",
    "paused": "#f9a825",
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#6d4c41",
    "expired": "#757575",
}
_CHUNK_COLOURS = {"pending": "#e0e0e0", "ready": "#43a047", "acked": "#1e88e5", "expired": "#bdbdbd"}
#: A chunk of a manifest entry that failed (it stays pending, with an ``error``).
_FAILED_CHUNK_COLOUR = "#c62828"


def chunk_grid_html(chunks: Sequence[dict[str, Any]], limit: int = 400) -> str:
    """A compact grid: one small square per chunk, coloured by its state, red for a failed manifest entry
    (titles give rows / bytes / the error)."""
    cells = []
    for chunk in list(chunks)[:limit]:
        colour = _CHUNK_COLOURS.get(chunk.get("state", ""), "#e0e0e0")
        error = chunk.get("error")
        if error:
            colour = _FAILED_CHUNK_COLOUR
        # Never the chunk's presigned ``url``: the grid shows what a chunk is, not how to fetch it.
        title = html.escape(
            f"chunk {chunk.get('index')}: {chunk.get('state')}, {chunk.get('rows') or '-'} rows, "
            f"{format_bytes(chunk.get('bytes'))} - {chunk.get('path')}"
            + (f" - failed [{error.get('code')}]: {error.get('message')}" if error else "")
        )
        cells.append(
            f'<span title="{title}" style="display:inline-block;width:10px;height:10px;margin:1px;'
            f'background:{colour};border-radius:2px"></span>'
        )
    more = f" … +{len(chunks) - limit}" if len(chunks) > limit else ""
    return f'<div style="line-height:10px">{"".join(cells)}{more}</div>'


class _Follower:
    """Polls ``refresh`` every :data:`POLL_INTERVAL` seconds on a daemon thread until ``done()``."""

    def __init__(self, refresh: Callable[[], None], done: Callable[[], bool]) -> None:
        self._refresh = refresh
        self._done = done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-widget", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh()
            except Exception:  # noqa: S110 - a transient API error must not kill the display
                pass
            if self._done():
                return
            self._stop.wait(POLL_INTERVAL)


class JobWidget(w.VBox):
    """Live view of one job: state, progress bar, chunk grid, figures, error and control buttons."""

    def __init__(self, job: Job, *, follow: bool = True) -> None:
        self.job = job
        self.title = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.figures = w.HTML()
        self.chunk_grid = w.HTML()
        self.error = w.HTML()
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="auto"))
        self.resume_button = w.Button(description="Resume", icon="play", layout=w.Layout(width="auto"))
        self.cancel_button = w.Button(
            description="Cancel", icon="stop", button_style="danger", layout=w.Layout(width="auto")
        )
        self.pause_button.on_click(lambda _b: self._act(self.job.pause))
        self.resume_button.on_click(lambda _b: self._act(self.job.resume))
        self.cancel_button.on_click(lambda _b: self._act(self.job.cancel))
        buttons = w.HBox([self.pause_button, self.resume_button, self.cancel_button])
        super().__init__([self.title, self.bar, self.figures, self.chunk_grid, self.error, buttons])
        self._lock = threading.Lock()
        self.update()
        self._follower = _Follower(self.refresh, lambda: self.job.state in FINAL_STATES)
        if follow:
            self._follower.start()

    def _act(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:  # show the server's message, never a traceback
            self.error.value = f'<span style="color:#c62828">{html.escape(str(exc))}</span>'
        self.refresh()

    def refresh(self) -> None:
        """Re-read the job from the API and update every trait."""
        self.job.refresh()
        self.update()

    def update(self) -> None:
        """Set the widgets' traits from ``self.job`` as last read.

        The chunks are fetched first and the title (which shows the state) is set last, so a display
        whose title says ``failed`` already shows that state's error, figures, chunks and bar."""
        with self._lock:
            job = self.job
            data = job.as_dict()
            state = data.get("state", "?")
            colour = _STATE_COLOURS.get(state, "#000")
            try:
                chunks = job.chunks
            except Exception:
                chunks = []
            error = data.get("error")
            self.error.value = (
                f'<span style="color:#c62828">error [{html.escape(error.get("code", ""))}]: '
                f"{html.escape(error.get('message', ''))}</span>"
                if error
                else ""
            )
            self.figures.value = f"<code>{html.escape(progress_text(data))}</code>"
            self.chunk_grid.value = chunk_grid_html(chunks)
            self.pause_button.disabled = state not in ("queued", "running")
            self.resume_button.disabled = state != "paused"
            self.cancel_button.disabled = state in FINAL_STATES
            # The bar and the title, which both show the state, are set one right after the other.
            p = data.get("progress") or {}
            total = p.get("bytes_total")
            if total:
                self.bar.value = min(1.0, (p.get("bytes_done") or 0) / total)
            elif state == "succeeded":
                self.bar.value = 1.0
            styles = {"succeeded": "success", "failed": "danger", "paused": "warning"}
            self.bar.bar_style = styles.get(state, "")
            self.title.value = (
                f"<b>{html.escape(str(data.get('name')))}</b> "
                f'<span style="color:#fff;background:{colour};padding:0 6px;border-radius:8px">'
                f"{state}</span> <code>{html.escape(str(data.get('source')))}</code> → "
                f"<code>{html.escape(str(data.get('destination')))}</code>"
            )

    def stop(self) -> None:
        """Stop following the job."""
        self._follower.stop()


class JobsTable(w.VBox):
    """Every job as a row: name, state, progress and the same Pause / Resume / Cancel controls."""

    def __init__(self, list_jobs: Callable[[], list[Job]], *, follow: bool = True) -> None:
        self._list_jobs = list_jobs
        self._rows: dict[str, JobWidget] = {}
        self.header = w.HTML("<b>Staging jobs</b>")
        super().__init__([self.header])
        self.refresh()
        self._follower = _Follower(self.refresh, lambda: False)
        if follow:
            self._follower.start()

    def refresh(self) -> None:
        """Re-list the jobs; add rows for new ones, update the rest."""
        jobs = self._list_jobs()
        children: list[w.Widget] = [self.header]
        for job in jobs:
            row = self._rows.get(job.id)
            if row is None:
                row = self._rows[job.id] = JobWidget(job, follow=False)
            else:
                row.job = job
                row.update()
            children.append(row)
        if not jobs:
            children.append(w.HTML("<i>no staging jobs yet</i>"))
        self.children = tuple(children)

    def stop(self) -> None:
        self._follower.stop()


def display_job(job: Job) -> JobWidget:
    """Display a live :class:`JobWidget` for ``job`` in the current notebook output; returns it."""
    widget = JobWidget(job)
    display(widget)
    return widget
