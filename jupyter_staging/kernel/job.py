"""A staging job as the notebook sees it: :class:`Job` (status, output, control, reading as a table), its
chunks as a stream (:class:`Chunk`, :func:`iter_chunks`), :class:`JobList` and :class:`JobFailed`.

    for chunk in job.iter_chunks():
        df = chunk.to_pandas()
        chunk.ack()          # with cleanup_policy="delete_on_ack", the part file is deleted now

With ``delete_on_ack``, the ack of a finished job's last chunk also removes its ``manifest.json`` and the
folder it made (when left empty), and the job is ``expired``. A chunk is ``ready`` once its file is
complete under its final name, so it can be read while the job is still running. Sizes are bytes, rates
bytes per second, times seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_staging.errors import StagingError
from jupyter_staging.kernel import progressbar
from jupyter_staging.kernel.backends import FINAL_STATES, Backend
from jupyter_staging.kernel.chunks import Chunk
from jupyter_staging.kernel.formatting import jobs_table_html, progress_summary, tasks_summary
from jupyter_staging.kernel.outages import through_outage
from jupyter_staging.kernel.paths import chunk_paths, entry_paths, is_url
from jupyter_staging.kernel.readback import (
    PARQUET_CONTENT_TYPE,
    common_schema,
    concat_tables,
    on_disk,
    parquet_tables,
    part_files,
    pick_tables,
    read_part,
)

if TYPE_CHECKING:
    import astropy.table
    import pandas
    import pyarrow
    import pyarrow.dataset

__all__ = ["PARQUET_CONTENT_TYPE", "Chunk", "Job", "JobFailed", "JobList", "iter_chunks"]

_PROGRESS_KEYS = (
    "bytes_done",
    "bytes_total",
    "chunks_done",
    "chunks_total",
    "rows_done",
    "output_bytes",
    "rate",
    "eta_seconds",
)


class JobFailed(StagingError):
    """A job the caller waited for ended ``failed`` or ``cancelled``.

    ``code`` and ``message`` are the job's own error (``cancelled`` for a cancelled job); ``job`` is the
    :class:`Job` as it ended, so its :meth:`Job.log` can be read.
    """

    code = "job_failed"
    status = 500

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        if job.state == "cancelled":
            code, message = "cancelled", f"job {job.name!r} was cancelled"
        else:
            code = error.get("code") or "job_failed"
            message = error.get("message") or f"job {job.name!r} ended {job.state}"
        super().__init__(message, code=code)
        self.job = job


class Job:
    """One staging job, seen through a backend.

    Attributes are read from the last status fetched; :meth:`refresh` fetches a new one. Sizes are bytes,
    ``rate`` is bytes per second and ``eta_seconds`` seconds.
    """

    def __init__(self, data: dict[str, Any], backend: Backend) -> None:
        self._data = data
        self._backend = backend
        self._up_to_date = bool(data.get("up_to_date"))
        self._source_refreshed = bool(data.get("source_refreshed"))
        self._read_tables: dict[str, list[dict[str, Any]]] | None = None  # kept by _tables_to_read

    # -- status ------------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self._data["id"])

    @property
    def name(self) -> str:
        return str(self._data.get("name") or "")

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``paused``, ``succeeded``, ``failed``, ``cancelled`` or ``expired``."""
        return str(self._data["state"])

    @property
    def done(self) -> bool:
        """True once the job is in a final state."""
        return self.state in FINAL_STATES

    @property
    def up_to_date(self) -> bool:
        """True when the request that gave this job answered with unchanged earlier output: every source
        fingerprint still matched, no byte moved (the job JSON's ``up_to_date``; kept across
        :meth:`refresh`, since later status reads describe the job, not that request)."""
        return self._up_to_date or bool(self._data.get("up_to_date"))

    @property
    def source_refreshed(self) -> bool:
        """True when the request that gave this job handed it presigned URL(s) signed again for the same
        objects (the job JSON's ``source_refreshed``; kept across :meth:`refresh`): a paused job reads them
        once resumed, a job that had failed ``source_expired`` was queued again and continues from the bytes
        it kept."""
        return self._source_refreshed

    @property
    def progress(self) -> dict[str, Any]:
        """``{"bytes_done", "bytes_total", "chunks_done", "chunks_total", "rows_done", "output_bytes",
        "rate", "eta_seconds"}``: source bytes (``bytes_done <= bytes_total``), chunks, rows converted,
        bytes of Parquet written, source bytes per second and seconds; totals and rates may be None. A
        job on a distributed executor adds ``"tasks"``: ``{"queued", "running", "done", "workers"}``
        (tasks, and running tasks by worker address or name), None on the server's own threads."""
        progress = dict(self._data.get("progress") or {})
        for key in _PROGRESS_KEYS:
            progress.setdefault(key, None)
        return progress

    @property
    def error(self) -> dict[str, str] | None:
        """``{"code", "message"}`` of a failed job, else None."""
        return self._data.get("error")

    @property
    def notices(self) -> list[str]:
        """What to know that is not an error, one line each: a requested conversion that did not apply
        (``"m31.fits: not a table: staged as it is"``). Empty when there is nothing to say."""
        return [str(notice) for notice in self._data.get("notices") or []]

    @property
    def source(self) -> str:
        return str(self._data.get("source") or "")

    @property
    def destination(self) -> Path | str:
        """The absolute local folder the job writes to; for an object store destination, the job's own
        prefix URI (``s3://bucket/prefix/<job_id>/``), as text."""
        destination = str(self._data["destination"])
        if is_url(destination):
            return destination
        return self._backend.root_dir / destination

    @property
    def entries(self) -> list[str] | None:
        """The entry names of a manifest job (``stage({"name": source, ...})``), else None."""
        entries = self._data.get("entries")
        return list(entries) if entries is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The job as the API last returned it (the REST API's wire format, ``GET /jobs/{id}``; a copy)."""
        return dict(self._data)

    def refresh(self) -> Job:
        """Fetch the job's status again; returns ``self``."""
        self._data = self._backend.get(self.id)
        return self

    # -- output ------------------------------------------------------------------------------------------

    @property
    def chunks(self) -> list[dict[str, Any]]:
        """The job's chunks in index order: ``{"id", "index", "path", "state", "rows", "bytes", "sha256",
        "content_type"}``; ``path`` is relative to :attr:`destination` (or an object URI)."""
        return self._backend.chunks(self.id)

    def chunk_page(self, offset: int = 0, limit: int | None = None) -> dict[str, Any]:
        """``{"chunks", "total"}``: its chunks of index >= ``offset`` (at most ``limit``, <= 10,000) and how
        many it has. Raises :class:`InvalidRequest` for a negative value or a larger ``limit``."""
        return self._backend.chunk_page(self.id, offset, limit)

    @property
    def paths(self) -> Any:
        """Where the staged output is.

        A job of one source: a ``list[Path]``, the absolute paths of the chunk files that are ready to
        read, in chunk order (acknowledged chunks are included while their file exists).

        A manifest job: a ``dict`` mapping each entry name that was staged to its local path — the file
        for an entry of one file, else the folder holding the entry's files (a source folder or prefix,
        or the ``<name>.parquet`` folder of a converted table). Entries that failed or are still pending
        are left out (see :attr:`error` and :attr:`chunks`). For an object store destination, the values
        are object URIs (``str``) rather than local paths. Feed it to
        :func:`~jupyter_staging.kernel.api.resolve`.
        """
        if self._data.get("entries") is None:
            destination = self.destination
            return [] if isinstance(destination, str) else chunk_paths(destination, self.chunks)
        return entry_paths(self.destination, self.entries or [], self.chunks)

    def iter_chunks(self, *, poll: float = 0.25, timeout: float | None = None) -> Iterator[Chunk]:
        """Each chunk once, in index order, as soon as it is ready — also while the job still runs::

            for chunk in job.iter_chunks():
                df = chunk.to_pandas()
                chunk.ack()

        See :func:`iter_chunks` for the errors raised.
        """
        return iter_chunks(self, poll=poll, timeout=timeout)

    def refresh_url(self, index: int) -> dict[str, Any]:
        """Chunk ``index`` of a job writing to object storage, with a new presigned ``url`` (valid the
        server's ``presign_expiry_seconds``) and ``url_expires_at``. Raises :class:`InvalidRequest` (code
        ``chunk_not_in_object_storage``) for a local chunk, :class:`InvalidState` (``chunk_not_ready``, or
        ``chunk_expired`` once its object was removed).
        The URL is a credential: do not print or share it."""
        return self._backend.refresh_chunk(self.id, index)

    def ack(self, index: int) -> dict[str, Any]:
        """Acknowledge that chunk ``index`` has been read (with ``cleanup_policy="delete_on_ack"`` its file
        is deleted, and the ack of a finished job's last chunk also removes its manifest and the folder it
        made, the job becoming ``expired``; acking again is harmless). Raises :class:`InvalidState` (code
        ``chunk_not_ready``) for a chunk not ready yet, and (code ``chunk_expired``) for one whose file
        clean-up removed."""
        return self._backend.ack(self.id, index)

    def manifest(self) -> dict[str, Any]:
        """The manifest of the succeeded job (every object's path, size, sha256, rows, content type).

        Raises :class:`InvalidState` (code ``manifest_not_ready``) until the job has succeeded."""
        return self._backend.manifest(self.id)

    def log(self) -> list[dict[str, Any]]:
        """The job's log lines, oldest first: ``{"time", "level", "message"}``."""
        return self._backend.log(self.id)

    # -- control -----------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None, poll: float = 0.25, *, progress: bool | None = None) -> Job:
        """Block until the job ends; returns ``self`` once it has succeeded (or expired).

        ``timeout`` seconds at most (None: no limit; a paused job waits for :meth:`resume`), polling every
        ``poll`` seconds. ``progress``: draw a progress bar (tqdm) on stderr while waiting; None (the
        default) draws it when stderr is a terminal and no notebook widget shows the job
        (:func:`~jupyter_staging.kernel.progressbar.shows_by_default`).
        A job last seen in a final state (an up-to-date one, say) returns at once, without a request.
        Raises :class:`JobFailed` (with the job's error ``code`` and ``message``; code ``cancelled`` for a
        cancelled job) and :class:`TimeoutError` when ``timeout`` passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.done and (progressbar.shows_by_default() if progress is None else progress):
            progressbar.follow(self, poll=poll, deadline=deadline, timeout=timeout)
        while not self.done:
            remaining = 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())
            self._data = self._backend.wait(self.id, timeout=min(remaining, 3600.0), poll=poll)
            if not self.done and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.name!r} ({self.id}) is still {self.state} after {timeout} s")
        if self.state in ("failed", "cancelled"):
            raise JobFailed(self)
        return self

    def pause(self) -> Job:
        """Pause the job at its next block, keeping partial files. Raises :class:`InvalidState` for a
        finished job (code ``invalid_state``) and for one whose complete output is being swapped in (code
        ``swap_in_progress``: it ends by itself). Returns ``self``."""
        self._data = self._backend.pause(self.id)
        return self

    def resume(self) -> Job:
        """Continue a paused job from its partial files. Raises :class:`InvalidState` unless paused."""
        self._data = self._backend.resume(self.id)
        return self

    def cancel(self) -> Job:
        """Cancel the job and remove its partial output (a finished job is left as it is)."""
        self._data = self._backend.cancel(self.id)
        return self

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def tables(self) -> list[str]:
        """The Parquet tables of the job's output, relative to its destination: ``<name>.parquet`` folders
        of the tables it converted (one per source table), and Parquet files it copied. Readers take one
        of them as ``table=``. Chunks not ready yet are listed too."""
        return list(self._tables_to_read()[0])

    def _uri_prefix(self) -> str:
        destination = self.destination
        return destination if isinstance(destination, str) else ""

    def _parquet_paths(self, table: str | None) -> dict[str, list[Path] | list[str]]:
        """``{table name: its parts}``: local part files, or for an object store destination their
        presigned URLs; the tables asked for (:func:`~jupyter_staging.kernel.readback.pick_tables`)."""
        if self.state != "succeeded":
            self.wait()
        tables, reused = self._tables_to_read()
        if not tables:
            kept = [notice for notice in self.notices if notice.endswith("staged as it is")]
            hint = (
                f": {'; '.join(kept[:3])}"  # asked for, and not converted: why
                if kept
                else "; stage with to_parquet=True (or %stage --to-parquet) to read it as a table"
            )
            raise StagingError(
                f"job {self.name!r} has no Parquet output{hint}", code="no_parquet_output", status=400
            )
        found = part_files(tables, pick_tables(tables, table, self.name), self.destination, self.name)
        if reused and not on_disk(found):  # a part removed since the list was read (delete_on_ack)
            self._read_tables = None
            return self._parquet_paths(table)  # with the list as it is now
        return found

    def _tables_to_read(self) -> tuple[dict[str, list[dict[str, Any]]], bool]:
        """The Parquet chunks by table the readers look at (:func:`parquet_tables`), and whether they were
        kept from an earlier read. Those of a succeeded job with a local destination are kept, and read
        again only once the job is no longer succeeded (one status request a call; parts gone since are
        checked on disk): reading its tables one at a time (``table=NAME``) lists its chunks once, not once
        per table (20,000 tables: 5 MB and 0.7 s each time)."""
        if self._read_tables is not None and self.refresh().state == "succeeded":
            return self._read_tables, True
        tables = parquet_tables(self.chunks, self._uri_prefix())
        self._read_tables = tables if self.state == "succeeded" and not self._uri_prefix() else None
        return tables, False

    def to_arrow(self, table: str | None = None) -> pyarrow.Table:
        """The job's Parquet output as one ``pyarrow.Table``, rows in chunk order, with the schema's column
        units and descriptions. Waits for the job to succeed first.

        ``table``: one of :attr:`tables` (a folder job writes a table per source table). Without it, all of
        them, read as one only when they have the same columns (names, types, units); the table metadata
        they do not share (source file, FITS header) is then left out. Parts in object storage are fetched
        through their presigned URLs (each part is read into memory). A local job's chunk list is read once
        and kept while the job stays succeeded: a later read asks for its status only.

        Raises :class:`JobFailed` if the job does not succeed, and :class:`StagingError` with code
        ``no_parquet_output`` when it wrote no Parquet file, ``unknown_table`` for a ``table`` it did not
        write, ``several_tables`` when its tables' columns differ and no ``table`` was given.
        """
        parts = {name: [read_part(p) for p in paths] for name, paths in self._parquet_paths(table).items()}
        return concat_tables(parts, self.name)

    def to_pandas(self, table: str | None = None, **kwargs: Any) -> pandas.DataFrame:
        """:meth:`to_arrow` as a ``pandas.DataFrame`` (``kwargs`` go to ``pyarrow.Table.to_pandas``)."""
        return self.to_arrow(table).to_pandas(**kwargs)

    def to_table(self, table: str | None = None) -> astropy.table.QTable:
        """:meth:`to_arrow` as an astropy ``QTable``: columns with units are ``Quantity`` (e.g.
        ``PDCSAP_FLUX`` in ``electron / s``), nulls masked, FITS time columns as ``Time`` where the header
        says how; ``meta`` holds the source's metadata. Same ``table``, waiting and errors as
        :meth:`to_arrow`."""
        # Deferred: astropy is heavy (about a second to import) and only needed here.
        from jupyter_staging.kernel.tables import to_qtable

        return to_qtable(self.to_arrow(table))

    def dataset(self, table: str | None = None) -> pyarrow.dataset.Dataset:
        """A ``pyarrow.dataset.Dataset`` over the job's Parquet chunk files, for filtered or lazy reads
        larger than memory. Same ``table``, waiting and errors as :meth:`to_arrow` (without ``table``, the
        tables' schemas are compared from each one's first part); for a job writing to object storage use
        :meth:`to_arrow` (code ``not_local``)."""
        # Deferred: pyarrow is heavy and only needed when a job is read as a table.
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        if isinstance(self.destination, str):
            raise StagingError(
                f"job {self.name!r} wrote to {self.destination}; read it with to_arrow() or to_pandas()",
                code="not_local",
                status=400,
            )
        found = self._parquet_paths(table)
        names = list(found)
        schema = common_schema([pq.read_schema(found[name][0]) for name in names], names, self.name)
        return ds.dataset([str(p) for name in names for p in found[name]], schema=schema, format="parquet")

    # -- display -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        state = f"{self.state}, up to date" if self.up_to_date else self.state
        tasks = tasks_summary(self.state, self.progress)
        where = f" ({tasks})" if tasks else ""
        return (
            f"<Job {self.name!r} {state}: {progress_summary(self.progress)}{where} -> {self.destination}"
            f" (id {self.id})>"
        )

    def _repr_html_(self) -> str:
        return jobs_table_html([self])


class JobList(list):  # type: ignore[type-arg]
    """A list of :class:`Job` that shows as a table in notebooks."""

    def __repr__(self) -> str:
        if not self:
            return "(no staging jobs)"
        lines = [f"{'id':36}  {'state':9}  name / progress / destination"]
        for job in self:
            progress = progress_summary(job.progress)
            lines.append(f"{job.id:36}  {job.state:9}  {job.name}  {progress}  -> {job.destination}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self:
            return "<p>(no staging jobs)</p>"
        return jobs_table_html(self, with_id=True)


# -- chunks as a stream --------------------------------------------------------------------------------------


#: Chunk states whose file can be read.
_READABLE = ("ready", "acked")
#: Chunks :func:`iter_chunks` asks at first / at most: twice what it read from the last page it asked.
_FIRST_PAGE = 16
_LARGEST_PAGE = 4096


def iter_chunks(job: Job, *, poll: float = 0.25, timeout: float | None = None) -> Iterator[Chunk]:
    """Yield each chunk of ``job`` once, in index order, as soon as it is ready — while the job runs.

    Ends when the job has ended and every ready chunk was yielded. A chunk that failed (a manifest entry
    that could not be staged: it has an ``error``) or was withdrawn (``expired``: the parts a failed
    conversion had written, or removed by its TTL, a cancel or a re-run) is skipped, and chunks after it
    still come. ``poll`` seconds between status reads; ``timeout`` seconds at most in all. Raises
    :class:`JobFailed` when the job fails (a manifest job with failed entries: code ``partial``) or is
    cancelled, after yielding every chunk that was ready, and :class:`TimeoutError` when ``timeout`` passes.
    A server that does not answer for a while (restarted) is waited for
    (:func:`~jupyter_staging.kernel.outages.through_outage`).
    Under ``delete_on_ack``, acking every chunk as it comes leaves the job ``expired`` (its manifest and
    folder removed with the last ack).
    Each poll asks only for the chunks from the next one awaited (``GET /jobs/{id}/chunks?offset&limit``),
    never the job's whole list again.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    next_index, size = 0, _FIRST_PAGE
    while True:
        # the state first: chunks listed after it are complete; through a server's restart
        done = through_outage(lambda: job.refresh().done, deadline=deadline, poll=poll)
        while True:
            page = _page(job, next_index, size, deadline, poll)
            start = next_index
            while next_index in page:
                chunk = page[next_index]
                if chunk["state"] in _READABLE:
                    yield Chunk(job, chunk)
                elif chunk["state"] == "pending" and not chunk.get("error"):
                    break  # still being written: the chunks after it wait, to come in index order
                next_index += 1
            full = len(page) == size
            size = min(_LARGEST_PAGE, max(_FIRST_PAGE, 2 * (next_index - start)))
            if not (full and next_index > max(page)):
                break  # the page was not read to its end: nothing more to read now
        if done:
            yield from _after_gap(job, next_index, deadline, poll)
            if job.state in ("failed", "cancelled"):
                raise JobFailed(job)
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job.name!r} still {job.state} after {timeout} s")
        time.sleep(poll)


def _page(
    job: Job, offset: int, limit: int, deadline: float | None, poll: float
) -> dict[int, dict[str, Any]]:
    """The chunks of ``job`` of index ``>= offset``, at most ``limit``, by index (through an outage)."""
    answer = through_outage(
        lambda: job._backend.chunk_page(job.id, offset, limit), deadline=deadline, poll=poll
    )
    return {int(c["index"]): c for c in answer["chunks"]}


def _after_gap(job: Job, index: int, deadline: float | None, poll: float) -> Iterator[Chunk]:
    """The readable chunks of an ended ``job`` after chunk ``index`` (the one it ended before writing, or
    past its last), a page at a time."""
    offset = index + 1
    while True:
        page = _page(job, offset, _LARGEST_PAGE, deadline, poll)
        for i in sorted(page):
            if page[i]["state"] in _READABLE:
                yield Chunk(job, page[i])
        if len(page) < _LARGEST_PAGE:
            return
        offset = max(page) + 1
