"""Live job widgets for notebooks (ipywidgets 8), with a text fallback for plain IPython.

A :class:`JobWidget` shows one job — overall progress bar, per-chunk grid, bytes / total, rate, ETA, where its
tasks run on a distributed executor (tasks per worker), state, the error when it failed, a notice when a
requested conversion did not apply — and, while the job can still change, Pause / Resume / Cancel buttons that
call the staging API. A finished job shows its outcome instead: one line with the chunks, bytes and rows
staged and a link to the folder they are in. A :class:`JobsTable` shows every job the same way. Both follow
their jobs from a daemon thread that polls the job's status, so the kernel stays free: the user keeps running
cells while jobs move. Widget state moves only through synced traits (``value``, ``description``...), set from
that thread.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
from IPython.display import display

from jupyter_staging.kernel.backends import FINAL_STATES
from jupyter_staging.kernel.formatting import (
    format_bytes,
    progress_summary,
    progress_text,
    task_worker_lines,
    tasks_summary,
)
from jupyter_staging.kernel.job import Job

__all__ = [
    "POLL_INTERVAL",
    "JobWidget",
    "JobsTable",
    "chunk_grid_html",
    "display_job",
    "job_notices",
    "outcome_html",
    "progress_text",
    "tasks_html",
]

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
#: The mark the header of a job that ended starts with, so a glance at the notebook tells how it ended.
_ENDING_MARKS = {"succeeded": "✓ ", "failed": "✗ "}
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


def job_notices(data: dict[str, Any]) -> list[str]:
    """What the user should know about a job that is not an error, from its JSON: the ``notices`` list
    (e.g. ``["not a table: staged as it is"]`` when ``--to-parquet`` met an image), or a single
    ``notice`` string. Empty when the job has none."""
    notices = [str(n) for n in data.get("notices") or [] if n]
    single = data.get("notice")
    if single and str(single) not in notices:
        notices.append(str(single))
    return notices


def tasks_html(state: str, progress: dict[str, Any]) -> str:
    """The line under a running job's progress bar saying where its tasks are, for the job JSON's
    ``state`` and ``progress``: ``4 tasks on 2 workers · 3 queued``, its tooltip one line per worker
    (``127.0.0.1:40123: 2 tasks``). Empty for a job on the server's own threads (``tasks`` null) or one
    that is not running."""
    text = tasks_summary(state, progress)
    if not text:
        return ""
    title = html.escape("\n".join([text, *task_worker_lines(progress.get("tasks"))]))
    return f'<code title="{title}">{html.escape(text)}</code>'


def _percent(progress: dict[str, Any], state: str) -> float | None:
    """Source bytes done as a percentage in [0, 100] (100 once succeeded); None when the total is unknown."""
    if state == "succeeded":
        return 100.0
    total = progress.get("bytes_total")
    if not total:
        return None
    return max(0.0, min(100.0, 100.0 * (progress.get("bytes_done") or 0) / total))


def _folder_link(destination: Path | str, shown: str) -> str:
    """An ``<a>`` to a job's folder, relative to the kernel's working folder (the notebook's), which
    JupyterLab opens in its file browser; plain text for an object store prefix or a folder elsewhere."""
    label = html.escape(shown.rstrip("/") + "/")
    if isinstance(destination, str):
        return f"<code>{label}</code>"
    relative = os.path.relpath(destination, os.getcwd())
    if relative.startswith(".."):
        return f"<code>{label}</code>"
    return f'<a href="{html.escape(Path(relative).as_posix())}" style="text-decoration:underline">{label}</a>'


def outcome_html(data: dict[str, Any], destination: Path | str) -> str:
    """One line saying how a finished job ended, for its JSON ``data``: for a success the chunks, source
    bytes and rows staged and a link to the folder (``destination``: the job's absolute folder or its
    object store prefix); for a failed or cancelled job how far it got. Empty while the job runs."""
    state = str(data.get("state") or "")
    p = data.get("progress") or {}
    chunks = int(p.get("chunks_done") or 0)
    parts = [f"{chunks} chunk{'' if chunks == 1 else 's'}"]
    total, done = p.get("bytes_total"), p.get("bytes_done") or 0
    parts.append(format_bytes(min(done, total) if total is not None else done))
    if p.get("output_bytes"):
        parts.append(f"{format_bytes(p['output_bytes'])} Parquet")
    if p.get("rows_done"):
        parts.append(f"{int(p['rows_done']):,} rows")
    folder = _folder_link(destination, str(data.get("destination") or ""))
    figures = html.escape(" · ".join(parts))
    if state == "succeeded":
        verb = "Up to date" if data.get("up_to_date") else "Staged"
        return f"<span>✓ {verb}: {figures} in {folder}</span>"
    if state in ("failed", "cancelled", "expired"):
        return f"<span>✗ {state.capitalize()} after {figures}; folder {folder}</span>"
    return ""


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
    """Live view of one job: state, progress bar, figures, where its tasks run (distributed executors),
    chunk grid, error and control buttons."""

    def __init__(self, job: Job, *, follow: bool = True) -> None:
        self.job = job
        self.title = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.figures = w.HTML()
        self.tasks = w.HTML()
        self.chunk_grid = w.HTML()
        self.error = w.HTML()
        self.notice = w.HTML()
        self.outcome = w.HTML()
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="auto"))
        self.resume_button = w.Button(description="Resume", icon="play", layout=w.Layout(width="auto"))
        self.cancel_button = w.Button(
            description="Cancel", icon="stop", button_style="danger", layout=w.Layout(width="auto")
        )
        self.pause_button.on_click(lambda _b: self._act(self.job.pause))
        self.resume_button.on_click(lambda _b: self._act(self.job.resume))
        self.cancel_button.on_click(lambda _b: self._act(self.job.cancel))
        self.buttons = w.HBox([self.pause_button, self.resume_button, self.cancel_button])
        super().__init__(
            [
                self.title,
                self.bar,
                self.figures,
                self.tasks,
                self.chunk_grid,
                self.error,
                self.notice,
                self.outcome,
                self.buttons,
            ]
        )
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
        whose title says ``failed`` already shows that state's error, figures, chunks and bar. A finished
        job's buttons are hidden (nothing is left to pause, resume or cancel) and its outcome shows."""
        with self._lock:
            job = self.job
            data = job.as_dict()
            state = data.get("state", "?")
            try:
                chunks = job.chunks
            except Exception:
                chunks = []
            self.error.value = self._error_html(data.get("error"))
            self.notice.value = "".join(
                f"<div>ⓘ <i>{html.escape(notice)}</i></div>" for notice in job_notices(data)
            )
            p = data.get("progress") or {}
            percent = _percent(p, state)
            shown = f"{percent:.1f}%" if percent is not None else "?%"
            self.figures.value = f"<code>{html.escape(f'{shown} · {progress_summary(p)}')}</code>"
            self.tasks.value = tasks_html(state, p)
            self.chunk_grid.value = chunk_grid_html(chunks)
            final = state in FINAL_STATES
            self.outcome.value = outcome_html(data, job.destination) if final else ""
            self.buttons.layout.display = "none" if final else ""
            self.pause_button.disabled = state not in ("queued", "running")
            self.resume_button.disabled = state != "paused"
            self.cancel_button.disabled = final
            # The bar and the title, which both show the state, are set one right after the other.
            if percent is not None:
                self.bar.value = percent / 100
            styles = {"succeeded": "success", "failed": "danger", "paused": "warning"}
            self.bar.bar_style = styles.get(state, "")
            self.title.value = self._title_html(data, state)

    @staticmethod
    def _error_html(error: dict[str, str] | None) -> str:
        if not error:
            return ""
        return (
            f'<span style="color:#c62828">error [{html.escape(error.get("code", ""))}]: '
            f"{html.escape(error.get('message', ''))}</span>"
        )

    @staticmethod
    def _title_html(data: dict[str, Any], state: str) -> str:
        """The header line: an outcome mark once the job ended (``✓`` succeeded, ``✗`` failed), the name,
        the state as a coloured badge, then source → destination."""
        colour = _STATE_COLOURS.get(state, "#000")
        mark = _ENDING_MARKS.get(state, "")
        return (
            f"{mark}<b>{html.escape(str(data.get('name')))}</b> "
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
