"""Text for people: byte sizes, one-line job progress, where a job's tasks run, the HTML table of jobs and
the line a live widget shows about an error (:func:`error_text`, :func:`trouble_html`).

Shared by :class:`~jupyter_staging.kernel.job.Job` (its ``repr``), the terminal progress bar
(:mod:`jupyter_staging.kernel.progressbar`) and the notebook widgets. :func:`format_bytes` is the engine's
one byte formatter (:func:`jupyter_staging.engine.describe.format_bytes`), re-exported here. Pure
functions of the wire format's JSON (``DESIGN.md``); nothing here fetches.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import StagingError
from jupyter_staging.safety.redact import redact_text

__all__ = [
    "JobSummary",
    "error_text",
    "format_bytes",
    "jobs_table_html",
    "progress_summary",
    "progress_text",
    "short_worker",
    "task_worker_lines",
    "task_workers",
    "tasks_summary",
    "trouble_html",
]

#: A worker address's scheme and host:port (``tcp://127.0.0.1:40123``, ``tls://[::1]:8786``).
_WORKER_ADDRESS = re.compile(r"^[a-z][a-z0-9+.-]*://([^/?#]+)", re.IGNORECASE)


class JobSummary(Protocol):
    """What :func:`jobs_table_html` reads of a job (a :class:`~jupyter_staging.kernel.job.Job` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def up_to_date(self) -> bool: ...

    @property
    def error(self) -> dict[str, str] | None: ...

    @property
    def progress(self) -> dict[str, Any]: ...

    @property
    def destination(self) -> Path | str: ...


def progress_summary(progress: dict[str, Any]) -> str:
    """A job's ``progress`` dict as ``"3/10 chunks, 1.20 MB of 4.00 MB, 5,000 rows, 310 kB Parquet,
    2.00 MB/s, ETA 2 s"`` (rows, Parquet bytes, rate and ETA only when known; ``?`` for an unknown total).
    Source bytes done never show above their total."""
    total = progress.get("bytes_total")
    done = progress.get("bytes_done") or 0
    parts = [f"{progress.get('chunks_done') or 0}/{_or_q(progress.get('chunks_total'))} chunks"]
    parts.append(f"{format_bytes(min(done, total) if total is not None else done)} of {format_bytes(total)}")
    if progress.get("rows_done"):
        parts.append(f"{progress['rows_done']:,} rows")
    if progress.get("output_bytes"):
        parts.append(f"{format_bytes(progress['output_bytes'])} Parquet")
    if progress.get("rate"):
        parts.append(f"{format_bytes(progress['rate'])}/s")
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {progress['eta_seconds']:.0f} s")
    return ", ".join(parts)


def short_worker(worker: str) -> str:
    """A Dask worker as people read it: its address without the scheme (``tcp://127.0.0.1:40123`` ->
    ``127.0.0.1:40123``, ``tls://[::1]:8786`` -> ``[::1]:8786``); a plain name (``worker-0``) as it is."""
    match = _WORKER_ADDRESS.match(worker)
    return match.group(1) if match else worker


def task_workers(tasks: dict[str, Any] | None) -> list[tuple[str, int]]:
    """The workers running a job's tasks (``progress["tasks"]``, the ``TaskCounts`` JSON), as
    ``(host:port or name, running tasks)``: busy workers only, sorted by name. Empty for None."""
    workers = (tasks or {}).get("workers") or {}
    busy = [(short_worker(str(name)), int(n)) for name, n in workers.items() if isinstance(n, int) and n > 0]
    return sorted(busy)


def tasks_summary(state: str, progress: dict[str, Any], *, done: bool = False) -> str:
    """Where a running job's tasks are, in one short line: ``"4 tasks on 2 workers · 3 queued"`` (``"4
    tasks running"`` when no worker is named, ``"3 tasks queued"`` before any runs; ``" · 12 done"`` added
    when ``done``). ``progress``: the job JSON's ``progress``, whose ``tasks`` is null on the server's own
    threads. Empty unless ``state`` is ``running`` and ``tasks`` is there (the panel's ``tasksSummary``)."""
    tasks = progress.get("tasks")
    if state != "running" or not tasks:
        return ""
    running, queued = int(tasks.get("running") or 0), int(tasks.get("queued") or 0)
    parts = []
    if running > 0:
        workers = len(task_workers(tasks))
        parts.append(
            f"{_count_of(running, 'task')} "
            + (f"on {_count_of(workers, 'worker')}" if workers else "running")
        )
    if queued > 0:
        parts.append(f"{queued:,} queued" if running > 0 else f"{_count_of(queued, 'task')} queued")
    if done and parts and tasks.get("done"):
        parts.append(f"{int(tasks['done']):,} done")
    return " · ".join(parts)


def task_worker_lines(tasks: dict[str, Any] | None) -> list[str]:
    """One line per busy worker of a job's ``tasks``: ``"127.0.0.1:40123: 2 tasks"``."""
    return [f"{worker}: {_count_of(n, 'task')}" for worker, n in task_workers(tasks)]


def progress_text(job: dict[str, Any]) -> str:
    """One line for a job's JSON: state, percent of bytes, then chunks, bytes, rows, rate and ETA, where
    its tasks run (distributed executors, while running), and the error code and message of a failed job."""
    p = job.get("progress") or {}
    total, done = p.get("bytes_total"), p.get("bytes_done") or 0
    percent = f"{100 * min(done, total) / total:.1f}%" if total else "?%"
    state = str(job.get("state", "?"))
    text = f"{state} {percent} - {progress_summary(p)}"
    tasks = tasks_summary(state, p)
    if tasks:
        text += f" - {tasks}"
    error = job.get("error")
    if error:
        text += f" - error [{error.get('code')}]: {error.get('message')}"
    return text


def jobs_table_html(jobs: Iterable[JobSummary], *, with_id: bool = False) -> str:
    """An HTML ``<table class="jupyter-staging-jobs">``: one row per job (id, name, state with the error
    of a failed job or "up to date" of a request answered by earlier output, progress with where a running
    job's tasks are, destination), every value escaped."""
    head = "".join(
        f"<th>{h}</th>" for h in (["id"] if with_id else []) + ["name", "state", "progress", "destination"]
    )
    rows = []
    for job in jobs:
        state = html.escape(f"{job.state}, up to date" if job.up_to_date else job.state)
        if job.error:
            code, message = job.error.get("code", ""), job.error.get("message", "")
            state += f"<br><small>{html.escape(code)}: {html.escape(message)}</small>"
        progress = html.escape(progress_summary(job.progress))
        tasks = tasks_summary(job.state, job.progress)
        if tasks:
            progress += f"<br><small>{html.escape(tasks)}</small>"
        cells = ([f"<code>{html.escape(job.id)}</code>"] if with_id else []) + [
            html.escape(job.name),
            state,
            progress,
            f"<code>{html.escape(str(job.destination))}</code>",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows)
    return f'<table class="jupyter-staging-jobs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _count_of(n: int, noun: str) -> str:
    """``n`` and a noun, plural unless ``n`` is 1: ``"1 task"``, ``"1,024 tasks"``."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _or_q(value: Any) -> str:
    return "?" if value is None else str(value)


def error_text(exc: Exception) -> str:
    """What a widget says about ``exc``, on one line and without a traceback: a :class:`StagingError`'s
    message (the server's), another exception's class and message; URLs and credentials in it redacted
    (:func:`~jupyter_staging.safety.redact.redact_text`)."""
    text = exc.message if isinstance(exc, StagingError) else f"{type(exc).__name__}: {exc}"
    return redact_text(text)


def trouble_html(exc: Exception, since: float, wait: float) -> str:
    """The line a live widget shows while it cannot refresh: ``⚠ cannot reach the server since 14:03:07;
    retrying (next try in 8 s)``. ``since``: when the failures began (``time.time()``, seconds);
    ``wait``: seconds until the next try. Another error than an unreachable server is named by its
    code and :func:`error_text`."""
    when = time.strftime("%H:%M:%S", time.localtime(since))
    if getattr(exc, "code", None) == "server_unreachable":
        what = f"cannot reach the server since {when}"
    else:
        code = getattr(exc, "code", type(exc).__name__)
        what = f"cannot refresh since {when} [{code}]: {error_text(exc)}"
    return f'<span style="color:#e65100">⚠ {html.escape(what)}; retrying (next try in {wait:.3g} s)</span>'
