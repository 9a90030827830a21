"""Live job widgets for notebooks (ipywidgets 8), with a text fallback for plain IPython.

A :class:`JobWidget` shows one job — overall progress bar, per-chunk grid, bytes / total, rate, ETA, where its
tasks run on a distributed executor (tasks per worker), state, the error when it failed, a notice when a
requested conversion did not apply — and, while the job can still change, Pause / Resume / Cancel buttons that
call the staging API. A finished job shows its outcome instead: one line with the chunks, bytes and rows
staged and a link to the folder they are in. A :class:`JobsTable` shows every job the same way. Both follow
their jobs from a daemon thread that polls the job's status (:mod:`~jupyter_staging.kernel.follower`), so
the kernel stays free: the user keeps running cells while jobs move. The thread stops once the jobs shown
have ended or the widget is closed; while the server cannot be reached the widget says so and polls less
often. Widget state moves only through synced traits (``value``, ``description``...), set from that thread.
"""

from __future__ import annotations

import html
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as w
from IPython.display import display

from jupyter_staging.errors import StagingError
from jupyter_staging.kernel.backends import FINAL_STATES
from jupyter_staging.kernel.follower import Follower
from jupyter_staging.kernel.formatting import (
    error_text,
    format_bytes,
    progress_summary,
    progress_text,
    task_worker_lines,
    tasks_summary,
    trouble_html,
)
from jupyter_staging.kernel.job import Job

__all__ = [
    "IDLE_POLL_INTERVAL",
    "MAX_POLL_INTERVAL",
    "POLL_INTERVAL",
    "JobWidget",
    "JobsTable",
    "chunk_grid_html",
    "display_job",
    "error_text",
    "job_notices",
    "outcome_html",
    "progress_text",
    "tasks_html",
    "trouble_html",
]

#: Seconds between two status polls of a job shown in a widget.
POLL_INTERVAL = 0.5
#: Seconds between two polls while nothing a widget shows moves (its jobs paused): a resume from elsewhere
#: (the panel, another cell) shows within them; the widget's own Resume button shows at once.
IDLE_POLL_INTERVAL = 5.0
#: Seconds between two tries at most while a widget cannot refresh (the wait doubles from
#: :data:`POLL_INTERVAL` at each failure).
MAX_POLL_INTERVAL = 15.0

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


#: The chunks a job's widget shows as squares (the first ones).
_GRID_CHUNKS = 400
#: The chunks a row of a :class:`JobsTable` shows: a table lists up to 100 jobs, and 400 squares a row made
#: ``%stage jobs`` read 40,000 chunks and send 7 MB of squares to the browser when its jobs were large.
_ROW_GRID_CHUNKS = 40


def chunk_grid_html(chunks: Sequence[dict[str, Any]], limit: int = 400, total: int | None = None) -> str:
    """A compact grid: one small square per chunk, coloured by its state, red for a failed manifest entry
    (titles give rows / bytes / the error); the first ``limit``, then how many more of ``total`` (default:
    the chunks given) are not shown."""
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
    total = len(chunks) if total is None else total
    more = f" … +{total - limit}" if total > limit else ""
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
    JupyterLab opens in its file browser; plain text for an object store prefix or a folder elsewhere, and
    ``<folder>/ (removed)`` for a folder that is gone from a parent this kernel sees (the partial output of
    a cancelled or failed job): a link to it would open nothing."""
    label = html.escape(shown.rstrip("/") + "/")
    if isinstance(destination, str):
        return f"<code>{label}</code>"
    if not destination.exists() and destination.parent.is_dir():
        return f"<code>{label}</code> (removed)"
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


def _close_tree(widgets: Sequence[w.Widget]) -> None:
    """Close ``widgets`` and, for a box, what it holds."""
    for widget in widgets:
        if isinstance(widget, w.Box):
            _close_tree(widget.children)
        widget.close()


def _close_with_comm(widget: w.Widget) -> None:
    """Close ``widget`` (and so stop its follower) when the frontend closes its comm. The callback holds
    the widget by weak reference."""
    ref = weakref.ref(widget)

    def closed(_msg: Any) -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    if widget.comm is not None:
        widget.comm.on_close(closed)


def _follower(owner: JobWidget | JobsTable) -> Follower:
    return Follower(
        owner._poll,
        owner._poll_failed,
        interval=POLL_INTERVAL,
        max_interval=MAX_POLL_INTERVAL,
        idle_interval=IDLE_POLL_INTERVAL,
    )


class JobWidget(w.VBox):
    """Live view of one job: state, progress bar, figures, where its tasks run (distributed executors),
    chunk grid, error and control buttons.

    With ``follow`` (and a job that has not ended) a daemon thread re-reads the job every
    :data:`POLL_INTERVAL` seconds until it ends or the widget is closed (:meth:`close`, or its comm
    closed by the frontend); the chunks are read again only when the job's ``chunks_done`` or state
    changed. While the server cannot be reached, :attr:`status` says so and the tries slow down to one
    every :data:`MAX_POLL_INTERVAL` seconds. A job the server no longer has (``job_not_found``) is
    followed no more, and :attr:`status` says so. A button's action the server refuses stays in
    :attr:`action_error` until the next action.

    ``grid_chunks``: the chunks the grid shows as squares, the first ones (400 by default; a row of a
    :class:`JobsTable` shows 40), then how many more the job has; only those are read.
    """

    def __init__(self, job: Job, *, follow: bool = True, grid_chunks: int = _GRID_CHUNKS) -> None:
        self.job = job
        self.grid_chunks = grid_chunks
        self.title = w.HTML()
        self.status = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="100%"))
        self.figures = w.HTML()
        self.tasks = w.HTML()
        self.chunk_grid = w.HTML()
        self.error = w.HTML()
        self.notice = w.HTML()
        self.outcome = w.HTML()
        self.action_error = w.HTML()
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
                self.status,
                self.bar,
                self.figures,
                self.tasks,
                self.chunk_grid,
                self.error,
                self.notice,
                self.outcome,
                self.buttons,
                self.action_error,
            ]
        )
        self._lock = threading.Lock()
        self._chunks_read: tuple[str, Any] | None = None
        self._follower = _follower(self)
        self.update()
        if follow and not job.done:
            self._follower.start()
        _close_with_comm(self)

    @property
    def following(self) -> bool:
        """True while the widget's thread follows the job."""
        return self._follower.running

    def _act(self, action: Callable[[], Any]) -> None:
        """Run a button's ``action``, then re-read the job; what either raises is shown in
        :attr:`action_error` (the server's message, never a traceback) until the next action."""
        self.action_error.value = ""
        messages = []
        for step in (action, self.refresh):
            try:
                step()
            except Exception as exc:
                messages.append(error_text(exc))
        self.action_error.value = "".join(
            f'<div style="color:#c62828">{html.escape(message)}</div>' for message in dict.fromkeys(messages)
        )

    def refresh(self) -> None:
        """Re-read the job and its chunks from the API and update every trait. Raises
        :class:`StagingError` (code ``server_unreachable`` for a server that does not answer)."""
        self.job.refresh()
        self.update(reread_chunks=True)
        self.status.value = ""

    def _poll(self) -> bool | None:
        """One step of the follower: re-read the job (its chunks only when they changed); True once it
        has ended or is gone from the server (:meth:`_gone`), None while it is paused (polled every
        :data:`IDLE_POLL_INTERVAL` seconds)."""
        try:
            self.job.refresh()
        except StagingError as exc:
            if exc.code != "job_not_found":
                raise  # the follower says so and tries again
            self._gone(exc)
            return True
        self.update()
        self.status.value = ""
        return None if self.job.state == "paused" else self.job.done

    def _gone(self, exc: StagingError) -> None:
        """The job is no longer on the server (``job_not_found``: deleted, or the server's job database
        replaced): no later poll can find it. Says so in :attr:`status`, keeps what was last shown and
        hides the buttons (nothing is left to pause, resume or cancel)."""
        what = f"this job is no longer on the server [{exc.code}]: {error_text(exc)}; no longer followed"
        self.status.value = f'<span style="color:#c62828">⚠ {html.escape(what)}</span>'
        self.buttons.layout.display = "none"

    def _poll_failed(self, exc: Exception, since: float, wait: float) -> None:
        self.status.value = trouble_html(exc, since, wait)

    def update(self, *, reread_chunks: bool = False) -> None:
        """Set the widgets' traits from ``self.job`` as last read.

        The chunks are read from the API when the job's state or ``chunks_done`` changed since they were
        last read, or with ``reread_chunks`` (an acknowledged chunk changes neither); when that read
        fails, the grid keeps what it showed and the next update reads them again. The title (which
        shows the state) is set last, so a display whose title says ``failed`` already shows that state's
        error, figures, chunks and bar. A finished job's buttons are hidden (nothing is left to pause,
        resume or cancel) and its outcome shows."""
        with self._lock:
            job = self.job
            data = job.as_dict()
            state = data.get("state", "?")
            p = data.get("progress") or {}
            self._read_chunks((state, p.get("chunks_done")), reread_chunks)
            self.error.value = self._error_html(data.get("error"))
            self.notice.value = "".join(
                f"<div>ⓘ <i>{html.escape(notice)}</i></div>" for notice in job_notices(data)
            )
            percent = _percent(p, state)
            shown = f"{percent:.1f}%" if percent is not None else "?%"
            self.figures.value = f"<code>{html.escape(f'{shown} · {progress_summary(p)}')}</code>"
            self.tasks.value = tasks_html(state, p)
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

    def _read_chunks(self, key: tuple[str, Any], force: bool) -> None:
        if key == self._chunks_read and not force:
            return
        try:
            page = self.job.chunk_page(0, self.grid_chunks)  # the squares shown, not the whole list
        except Exception:  # the grid keeps its last state; the next update reads the chunks again
            return
        self._chunks_read = key
        self.chunk_grid.value = chunk_grid_html(page["chunks"], self.grid_chunks, page["total"])

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
        """Stop following the job (the widget stays as it is)."""
        self._follower.stop()

    def close(self) -> None:
        """Stop following the job and close the widget and its parts: their views leave the notebook."""
        self._follower.stop()
        _close_tree(self.children)
        super().close()


#: The header of a :class:`JobsTable`, and what it adds once it no longer follows its jobs.
_TABLE_HEADER = "<b>Staging jobs</b>"
_TABLE_ENDED = " <i>· every job listed has ended; run <code>%stage jobs</code> again for newer jobs</i>"


class JobsTable(w.VBox):
    """Every job as a row: name, state, progress and the same Pause / Resume / Cancel controls.

    ``list_jobs`` gives the jobs to show; it is called now (what it raises, a :class:`StagingError`, is
    raised) and at each poll. With ``follow`` a daemon thread re-lists them every :data:`POLL_INTERVAL`
    seconds while one of them has not ended, then stops and the header says so: a job submitted later
    shows in a new table (run ``%stage jobs`` again). The thread stops too when the table is closed
    (:meth:`close`, or its comm closed by the frontend), and never keeps the table alive. A row reads its
    job's chunks only when the job's state or ``chunks_done`` changed, so a finished row reads them once.
    While the server cannot be reached, :attr:`status` says so and the tries slow down to one every
    :data:`MAX_POLL_INTERVAL` seconds. A row's grid shows its job's first 40 chunks (then how many more),
    so a table of 100 large jobs reads 4,000 chunks, not 40,000.
    """

    def __init__(self, list_jobs: Callable[[], list[Job]], *, follow: bool = True) -> None:
        self._list_jobs = list_jobs
        self._rows: dict[str, JobWidget] = {}
        self._ended = False
        self.header = w.HTML(_TABLE_HEADER)
        self.status = w.HTML()
        self.empty = w.HTML("<i>no staging jobs yet</i>")
        super().__init__([self.header, self.status])
        self._follower = _follower(self)
        self.refresh()
        if follow and not self._ended:
            self._follower.start()
        _close_with_comm(self)

    @property
    def following(self) -> bool:
        """True while the table's thread follows its jobs."""
        return self._follower.running

    def refresh(self) -> None:
        """Re-list the jobs; add rows for new ones, update the rest. A row whose job left the listing (a
        ``--state running`` table whose job ended) stays, its job read on its own until it has ended.
        Raises what ``list_jobs`` (or reading such a job) raises."""
        jobs = self._list_jobs()
        listed = {job.id for job in jobs}
        rows: list[w.Widget] = []
        for job in jobs:
            row = self._rows.get(job.id)
            if row is None:
                row = self._rows[job.id] = JobWidget(job, follow=False, grid_chunks=_ROW_GRID_CHUNKS)
            else:
                row.job = job
                row.update()
            rows.append(row)
        for job_id, row in self._rows.items():
            if job_id not in listed:
                if not row.job.done:
                    row.job.refresh()
                    row.update()
                rows.append(row)
        self.children = (self.header, self.status, *(rows or [self.empty]))
        self._ended = all(row.job.done for row in self._rows.values())
        self.header.value = _TABLE_HEADER + (_TABLE_ENDED if self._ended else "")

    def _poll(self) -> bool | None:
        """One step of the follower: re-list the jobs; True once every job listed has ended, None while
        the others are all paused (polled every :data:`IDLE_POLL_INTERVAL` seconds)."""
        self.refresh()
        self.status.value = ""
        states = {row.job.state for row in self._rows.values() if not row.job.done}
        return None if states == {"paused"} else self._ended

    def _poll_failed(self, exc: Exception, since: float, wait: float) -> None:
        self.status.value = trouble_html(exc, since, wait)

    def stop(self) -> None:
        """Stop following the jobs (the table stays as it is)."""
        self._follower.stop()

    def close(self) -> None:
        """Stop following the jobs and close the table, its rows and their parts."""
        self._follower.stop()
        _close_tree([self.header, self.status, self.empty, *self._rows.values()])
        super().close()


def display_job(job: Job) -> JobWidget:
    """Display a live :class:`JobWidget` for ``job`` in the current notebook output; returns it."""
    widget = JobWidget(job)
    display(widget)
    return widget
