"""Manifest jobs: many sources, each an entry staged into ``<entry name>/`` of the job's output.

Entries are listed in parallel, ``concurrent_items`` at a time (a request each to a remote source), and
staged as many at a time when they are plain transfers (a manifest of URLs, one file each, fetches
``concurrent_items`` files at once, as a folder does), at most :data:`MANIFEST_CONCURRENCY` at a time when
they are converted or expanded (CPU and memory per entry); on a Dask executor the entries of one small file
each go in groups across entries (:mod:`~jupyter_staging.engine.spreadentries`). An entry that
fails is recorded (its chunks keep ``pending`` with an ``error``) and the others go on; the job then ends
``failed`` with code ``partial`` after writing a manifest of what was staged. A Dask cluster lost under the
job (:class:`~jupyter_staging.errors.ClusterUnavailable`) is no entry's failure: it fails the job, with that
code and no manifest, as a pause or cancel stops it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from jupyter_staging.clouds.http_client import waiting_with
from jupyter_staging.engine.expansion import ExpandingStager
from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import (
    ClusterUnavailable,
    JobInterrupted,
    PartiallyStaged,
    StagingError,
    as_staging_error,
)
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.safety.redact import redact_text
from jupyter_staging.sources.base import Source, SourceItem, skipped_notice
from jupyter_staging.sources.registry import open_source

log = logging.getLogger("jupyter_staging.engine.runner")

T = TypeVar("T")

#: Entries of a manifest job converted to Parquet or expanded (archives) at the same time, at most.
MANIFEST_CONCURRENCY = 4


def error_of(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` of an entry's failure, secrets redacted: a :class:`StagingError`'s own code,
    ``no_space`` for a full disk (``ENOSPC`` / ``EDQUOT``: this entry fails alone), else
    ``internal_error``."""
    known = as_staging_error(exc)
    if known is not None:
        return {"code": known.code, "message": redact_text(known.message)}
    return {"code": "internal_error", "message": f"unexpected error: {type(exc).__name__}"}


class ManifestStager(ExpandingStager):
    """Adds manifest jobs (many sources) to :class:`~jupyter_staging.engine.expansion.ExpandingStager`."""

    def _run_manifest(
        self, rec: JobRecord, entries: dict[str, str]
    ) -> tuple[list[str], dict[str, dict[str, str]]]:
        """List every entry, then stage them, as many at a time as the module says. Returns the entry names
        and the errors of those that failed."""
        names = list(entries)
        listed = self._list_entries(names, entries)
        items = {n: [self._load_item(d, entries[n]) for d in listed[n].get("items", [])] for n in names}
        self._ensure_entry_chunks(rec, names, listed, items)
        sizes = [i.size for n in names for i in items[n]]
        fields: dict[str, Any] = {
            "bytes_total": None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        }
        chunks = self.store.list_chunks(self.job_id)
        plain = rec.convert is None and not self._expands()
        if plain:
            fields["chunks_total"] = len(chunks)
        self.store.update_job(self.job_id, load_resume=False, **fields)
        by_item: dict[tuple[str | None, str], JobChunk] = {
            (c.entry, self.dest.relative(c.path)): c for c in chunks
        }
        failures = {n: listed[n]["error"] for n in names if "error" in listed[n]}
        staged = self._stage_entries(
            rec, [n for n in names if n not in failures], entries, items, by_item, plain=plain
        )
        failures.update({n: error for n, error in staged.items() if error is not None})
        self.control.check()
        return names, failures

    def _stage_entries(
        self,
        rec: JobRecord,
        names: list[str],
        entries: dict[str, str],
        items: dict[str, list[SourceItem]],
        chunks: dict[tuple[str | None, str], JobChunk],
        *,
        plain: bool,
    ) -> dict[str, dict[str, str] | None]:
        """Stage the listed entries ``names`` (``entries``: name -> source), as many at a time as the module
        says (``plain``: no conversion or expansion); ``{name: None, or the entry's error (recorded)}``.
        Raises :class:`JobInterrupted` and :class:`ClusterUnavailable` (the whole job's)."""
        return self._parallel(
            names,
            lambda name: self._stage_entry(rec, name, entries[name], items[name], chunks),
            self._items_at_once() if plain else min(MANIFEST_CONCURRENCY, self._items_at_once()),
        )

    def _list_entries(self, names: list[str], entries: dict[str, str]) -> dict[str, dict[str, Any]]:
        """List the entries not listed by an earlier run, in parallel; ``{name: {"items"} | {"error"}}``."""
        with self._lock:
            listed: dict[str, dict[str, Any]] = self.resume.setdefault("entries", {})
            todo = [n for n in names if n not in listed]
        if not todo:
            return listed
        results = self._parallel(
            todo, lambda name: self._list_entry(name, entries[name]), self._items_at_once()
        )
        with self._lock:
            listed.update(results)
            self._save_resume()
        failed = [n for n in todo if "error" in listed[n]]
        files = sum(len(listed[n].get("items", [])) for n in todo)
        self._log(
            "info",
            f"{len(names)} entries: {files} file(s) to stage"
            + (f"; {len(failed)} could not be listed ({', '.join(failed)})" if failed else ""),
        )
        return listed

    def _items_at_once(self) -> int:
        """The host's ``concurrent_items`` (at least 1)."""
        return max(1, int(self.host.concurrent_items))

    def _parallel(self, names: list[str], work: Callable[[str], T], limit: int) -> dict[str, T]:
        """``{name: work(name)}``, at most ``limit`` at once. Every call ends before this returns; then a
        :class:`JobInterrupted` (pause, cancel, shutdown) or another error of any call is raised."""
        if not names:
            return {}
        results: dict[str, T] = {}
        errors: list[BaseException] = []
        workers = min(limit, len(names))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="staging-entry") as pool:
            futures = {name: pool.submit(work, name) for name in names}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except BaseException as exc:  # re-raised below, once every entry has stopped
                    errors.append(exc)
        for error in errors:
            if isinstance(error, JobInterrupted):
                raise error
        if errors:
            raise errors[0]
        return results

    def _list_source(self, source: Source, entry: str | None = None) -> list[SourceItem]:
        """``source.list_items()``, a pause or cancel ending a wait between retries (:func:`waiting_with`);
        objects below a prefix it left out are a warning in the job's log (:func:`skipped_notice`; the
        manifest ``entry`` named)."""
        with waiting_with(self.control.wait, lambda line: self._log("warning", line)):
            items = source.list_items()
        for level, text in skipped_notice(source):
            self._log(level, text if entry is None else f"entry {entry}: {text}")
        return items

    def _list_entry(self, name: str, uri: str) -> dict[str, Any]:
        """``{"items": [...]}`` for entry ``name`` (item names below ``name/``), or ``{"error": {...}}``."""
        self.control.check()
        try:
            items = self._list_source(open_source(uri, source_roots=self.host.source_roots), name)
            for item in items:
                item.name = check_output_name(f"{name}/{item.name}")
            return {"items": [self._dump_item(i) for i in items]}
        except JobInterrupted:
            raise
        except Exception as exc:
            error = error_of(exc)
            if error["code"] == "internal_error":
                log.error(
                    "staging job %s: listing entry %s failed: %s", self.job_id, name, redact_text(repr(exc))
                )
            self._log("warning", f"entry {name}: {error['message']} ({error['code']})")
            return {"error": error}

    def _ensure_entry_chunks(
        self,
        rec: JobRecord,
        names: list[str],
        listed: dict[str, dict[str, Any]],
        items: dict[str, list[SourceItem]],
    ) -> None:
        """Chunks in entry order: one per file (plain transfers; conversions add theirs as parts are
        written), and one marked with the error for an entry that could not be listed, written in one
        transaction. Idempotent."""
        existing = {(c.entry, self.dest.relative(c.path)) for c in self.store.list_chunks(self.job_id)}
        for name in names:
            error = listed[name].get("error")
            if error is not None:
                if not any(entry == name for entry, _ in existing):
                    self._error_chunk(name, error)
                continue
            if rec.convert is not None or self._expands():
                continue
            for item in items[name]:
                if (name, item.name) not in existing:
                    self._new_chunk(
                        path=item.name,
                        state=ChunkState.pending.value,
                        bytes=item.size,
                        content_type=item.content_type,
                        entry=name,
                    )
        self._flush_chunks(force=True)

    def _stage_entry(
        self,
        rec: JobRecord,
        name: str,
        uri: str,
        items: list[SourceItem],
        chunks: dict[tuple[str | None, str], JobChunk],
    ) -> dict[str, str] | None:
        """Stage every item of entry ``name`` (plain transfers up to ``concurrent_items`` at once; their
        chunks are looked up in ``chunks``, by entry and relative path); returns None, or the entry's
        error (recorded)."""
        try:
            source = open_source(uri, source_roots=self.host.source_roots)
            method = rec.method if rec.method in source.methods else source.default_method
            if rec.convert is None and not self._expands():
                self._transfer_all(source, method, [(item, chunks[(name, item.name)]) for item in items])
                return None
            for item in items:
                self.control.check()
                if self._expands():
                    self._stage_item(source, rec, method, item, entry=name)
                else:
                    self._convert(source, rec, method, item, entry=name)
                self.host.report_progress(self.job_id)  # at most every progress interval
        except (JobInterrupted, ClusterUnavailable):  # the whole job's: not this entry's failure
            raise
        except Exception as exc:
            return self._entry_error(name, exc)
        return None

    def _entry_error(self, name: str, exc: Exception) -> dict[str, str]:
        """Record ``exc`` as the failure of entry ``name`` (:meth:`_entry_failed`; an unexpected error is
        logged in the server's log too); returns the entry's error (:func:`error_of`)."""
        error = error_of(exc)
        if error["code"] == "internal_error":
            log.error("staging job %s: entry %s failed: %s", self.job_id, name, redact_text(repr(exc)))
        self._entry_failed(name, error)
        return error

    def _error_chunk(self, name: str, error: dict[str, str]) -> None:
        """A pending chunk standing for manifest entry ``name``, carrying why it could not be staged."""
        self._new_chunk(
            path=name,
            state=ChunkState.pending.value,
            entry=name,
            error_code=error["code"],
            error_message=error["message"],
        )

    def _entry_failed(self, name: str, error: dict[str, str]) -> None:
        """Record the failure of entry ``name`` in the resume data and on its pending chunks."""
        with self._lock:
            self.resume["entries"][name]["error"] = error
            self._save_resume()
            pending = [
                c
                for c in self.store.list_chunks(self.job_id)
                if c.entry == name and c.state == ChunkState.pending.value
            ]
            for chunk in pending:
                self.store.update_chunk(chunk.id, error_code=error["code"], error_message=error["message"])
            if not pending:
                self._error_chunk(name, error)
        self._log("warning", f"entry {name} failed: {error['message']} ({error['code']}); the others go on")

    def _reopenable(self, rec: JobRecord, failures: dict[str, dict[str, str]]) -> dict[str, str]:
        """The entries of ``failures`` (name -> error) that a next run of the job can stage again: those
        listed by this run whose files are plain transfers, each with its pending chunks (not an entry
        whose listing failed, nor a conversion's, whose failure is an error chunk of its own). Name ->
        error code."""
        if rec.convert is not None or self._expands():
            return {}
        listed = self.resume.get("entries", {})
        return {n: f["code"] for n, f in failures.items() if listed.get(n, {}).get("items")}

    def _reopen_entries(self, names: list[str]) -> None:
        """Forget the failures of entries ``names`` (see :meth:`_reopenable`) in the resume data and on
        their pending chunks: the next run stages them again."""
        with self._lock:
            for name in names:
                self.resume["entries"][name].pop("error", None)
            self._save_resume()
            for chunk in self.store.list_chunks(self.job_id):
                if chunk.entry in names and chunk.state == ChunkState.pending.value and chunk.error_code:
                    self.store.update_chunk(chunk.id, error_code=None, error_message=None)


def raise_partial(entries: list[str], failures: dict[str, dict[str, str]], staged: str) -> None:
    """Raise :class:`PartiallyStaged` for a manifest job whose ``failures`` (entry name -> error) are some
    of its ``entries`` (``staged``: what the others staged, shown), or the one shared error when no entry
    was staged."""
    failed = ", ".join(f"{n} ({failures[n]['code']})" for n in entries if n in failures)
    message = (
        f"{len(entries) - len(failures)} of {len(entries)} entries staged "
        f"({staged}; manifest written); failed: {failed}"
    )
    codes = {f["code"] for f in failures.values()}
    if len(failures) == len(entries) and len(codes) == 1:
        # Nothing staged, for one reason (a missing bucket, no network): that reason is the code.
        raise StagingError(message, code=codes.pop())
    raise PartiallyStaged(message)
