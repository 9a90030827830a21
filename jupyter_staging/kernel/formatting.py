"""Text for people: byte sizes, one-line job progress and the HTML table of jobs.

Shared by :class:`~jupyter_staging.kernel.job.Job` (its ``repr``), the terminal progress bar
(:mod:`jupyter_staging.kernel.progressbar`) and the notebook widgets. :func:`format_bytes` is the engine's
one byte formatter (:func:`jupyter_staging.engine.describe.format_bytes`), re-exported here. Pure
functions of the wire format's JSON (``DESIGN.md``); nothing here fetches.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from jupyter_staging.engine.units import format_bytes

__all__ = ["JobSummary", "format_bytes", "jobs_table_html", "progress_summary", "progress_text"]


class JobSummary(Protocol):
    """What :func:`jobs_table_html` reads of a job (a :class:`~jupyter_staging.kernel.job.Job` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

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


def progress_text(job: dict[str, Any]) -> str:
    """One line for a job's JSON: state, percent of bytes, then chunks, bytes, rows, rate and ETA, and the
    error code and message of a failed job."""
    p = job.get("progress") or {}
    total, done = p.get("bytes_total"), p.get("bytes_done") or 0
    percent = f"{100 * min(done, total) / total:.1f}%" if total else "?%"
    text = f"{job.get('state', '?')} {percent} - {progress_summary(p)}"
    error = job.get("error")
    if error:
        text += f" - error [{error.get('code')}]: {error.get('message')}"
    return text


def jobs_table_html(jobs: Iterable[JobSummary], *, with_id: bool = False) -> str:
    """An HTML ``<table class="jupyter-staging-jobs">``: one row per job (id, name, state with the error
    of a failed job, progress, destination), every value escaped."""
    head = "".join(
        f"<th>{h}</th>" for h in (["id"] if with_id else []) + ["name", "state", "progress", "destination"]
    )
    rows = []
    for job in jobs:
        state = html.escape(job.state)
        if job.error:
            code, message = job.error.get("code", ""), job.error.get("message", "")
            state += f"<br><small>{html.escape(code)}: {html.escape(message)}</small>"
        cells = ([f"<code>{html.escape(job.id)}</code>"] if with_id else []) + [
            html.escape(job.name),
            state,
            html.escape(progress_summary(job.progress)),
            f"<code>{html.escape(str(job.destination))}</code>",
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body = "".join(rows)
    return f'<table class="jupyter-staging-jobs"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _or_q(value: Any) -> str:
    return "?" if value is None else str(value)
