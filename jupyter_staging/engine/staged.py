"""What this server already staged and verified: earlier outputs found by sha256 or source fingerprint.

DESIGN.md, "Re-running a notebook": when a source's checksum (stated by the source or given by the user)
or its fingerprint matches an item this server already staged and verified, the bytes come from the local
copy, not the network. The index is built once per run from the newest :data:`RECENT_JOBS` succeeded jobs
of the same root (local destinations only) and never trusted blindly: every copy is verified against the
recorded sha256 before it is published. What the jobs this process finished or read last contribute is kept
in memory (:data:`RECENT`), so that a re-run does not read its predecessor's listing back from the job
database.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from jupyter_staging.engine.freshness import listed_items, names_a_version
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import DONE_STATES, JobState
from jupyter_staging.engine.store import ChunkSummary

#: Succeeded jobs of the root whose outputs are looked at (newest first).
RECENT_JOBS = 200

#: ``(path, size in bytes, sha256 hex)`` of a staged file.
Staged = tuple[Path, int, str]

#: How the index keeps one: the path as text (a ``Path`` is two more objects for the collector to walk,
#: 40,000 of them for a folder of 20,000 files).
_Kept = tuple[str, int, str]


#: Keys sorted, anything else as ``str``: built once (``json.dumps`` with options builds one per call).
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, default=str)


def fingerprint_key(locator_id: str, fingerprint: dict[str, Any]) -> Hashable:
    """The lookup key of a source item: the identity of the object it names, and its fingerprint. A tuple
    when every value of the fingerprint is a number or text (a local file's, an HTTP or S3 validator), else
    the same text as ``json.dumps([locator_id, fingerprint], sort_keys=True, default=str)``; the two
    kinds never equal each other."""
    if all(type(value) in _PLAIN for value in fingerprint.values()):
        return (locator_id, *sorted(fingerprint.items()))
    return _KEY_ENCODER.encode([locator_id, fingerprint])


#: Fingerprint values a tuple key holds as they are (hashable, and equal only to their own kind's).
_PLAIN = frozenset({int, str})


class JobEntries(NamedTuple):
    """What one finished job adds to a :class:`StagedIndex`: ``(sha256, staged)`` and ``(fingerprint key,
    staged)`` pairs, in chunk order (the first of a key wins, as in the index)."""

    by_sha: list[tuple[str, _Kept]]
    by_fingerprint: list[tuple[Hashable, _Kept]]


def job_entries(
    workdir: str, relative: Any, resume: dict[str, Any], chunks: Sequence[ChunkSummary]
) -> JobEntries:
    """The :class:`JobEntries` of a finished job with local output folder ``workdir``, its resume data
    (the items it listed) and its chunks; ``relative`` maps a chunk's path to the item name it came from
    (``Destination.relative``). Only ready or acknowledged chunks with a sha256 and a size count."""
    items = {i["name"]: i for entry in listed_items(resume).values() for i in entry}
    by_sha: list[tuple[str, _Kept]] = []
    by_fingerprint: list[tuple[Hashable, _Kept]] = []
    for chunk in chunks:
        if chunk.state not in DONE_STATES or not chunk.sha256:
            continue
        if chunk.bytes is None:
            continue
        rel = relative(chunk.path)
        staged = (os.path.join(workdir, rel), int(chunk.bytes), chunk.sha256)
        by_sha.append((chunk.sha256, staged))
        item = items.get(rel)
        if item is not None and item.get("validator") and item.get("locator_id"):
            by_fingerprint.append((fingerprint_key(str(item["locator_id"]), item["validator"]), staged))
    return JobEntries(by_sha, by_fingerprint)


class _RecentJobs:
    """The :class:`JobEntries` of the jobs this process finished or read last, by job id, up to
    :data:`RECENT_FILES` files in all (the oldest dropped first): a re-run of a source in the same server
    takes its predecessor's digests from memory instead of reading its listing back from the job
    database (megabytes of JSON for 20,000 files). What an entry states stays true: the bytes a job
    staged from a file with a given fingerprint had the recorded sha256 (a later job's own outputs are
    checked where they are used, as before). Thread-safe."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, JobEntries] = OrderedDict()
        self._files = 0

    def get(self, job_id: str) -> JobEntries | None:
        """The entries kept for job ``job_id``, or None."""
        with self._lock:
            found = self._jobs.get(job_id)
            if found is not None:
                self._jobs.move_to_end(job_id)
            return found

    def put(self, job_id: str, entries: JobEntries) -> None:
        """Keep ``entries`` of job ``job_id`` (a job of more than the limit's files is not kept)."""
        size = len(entries.by_sha)
        if size > self._limit:
            return
        with self._lock:
            old = self._jobs.pop(job_id, None)
            self._files -= len(old.by_sha) if old is not None else 0
            self._jobs[job_id] = entries
            self._files += size
            while self._files > self._limit:
                _, dropped = self._jobs.popitem(last=False)
                self._files -= len(dropped.by_sha)

    def clear(self) -> None:
        """Forget every job (as a restarted server has)."""
        with self._lock:
            self._jobs.clear()
            self._files = 0


#: Files whose entries :data:`RECENT` keeps, over all jobs (a TESS sector): about 0.5 kB of memory each.
RECENT_FILES = 25_000

#: The entries of the jobs this process finished or looked at last (see :class:`_RecentJobs`).
RECENT = _RecentJobs(RECENT_FILES)


class StagedIndex:
    """Outputs of ``host``'s newest :data:`RECENT_JOBS` earlier succeeded jobs of the same root (not job
    ``job_id``), built on first use."""

    def __init__(self, host: JobHost, job_id: str) -> None:
        self.host = host
        self.job_id = job_id
        self._lock = threading.Lock()
        self._by_sha: dict[str, _Kept] | None = None
        self._by_fingerprint: dict[Hashable, _Kept] = {}

    def empty(self) -> bool:
        """True when the earlier jobs hold no staged file at all (built on first use): a job staging
        something for the first time then looks nothing up."""
        self._build()
        return not self._by_sha and not self._by_fingerprint

    def find(self, sha256: str | None, locator_id: str, fingerprint: dict[str, Any]) -> Staged | None:
        """A staged file with ``sha256``, else one staged from the object ``locator_id`` names
        (:func:`~jupyter_staging.engine.freshness.locator_identity`) with ``fingerprint``, that is
        still a regular file of its recorded size; None when there is none."""
        self._build()
        assert self._by_sha is not None
        candidates = [self._by_sha.get(sha256 or "")]
        if fingerprint and names_a_version(fingerprint):  # a size alone names no version of the bytes
            candidates.append(self._by_fingerprint.get(fingerprint_key(locator_id, fingerprint)))
        for found in candidates:
            if found is None:
                continue
            try:
                st = os.lstat(found[0])
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == found[1]:
                return Path(found[0]), found[1], found[2]
        return None

    def _build(self) -> None:
        with self._lock:
            if self._by_sha is not None:
                return
            self._by_sha = {}
            rec = self.host.store.get_job(self.job_id, resume=False)
            if rec is None:
                return
            jobs = self.host.store.list_jobs(
                root=rec.root, states=[JobState.succeeded.value], limit=RECENT_JOBS
            )
            for job in jobs:
                if job.id != self.job_id:
                    self._add_job(job)

    def _add_job(self, job: Any) -> None:
        entries = RECENT.get(job.id) or self._entries_of(job)
        if entries is not None:
            self._merge(entries)

    def _entries_of(self, job: Any) -> JobEntries | None:
        """The entries of job record ``job`` (read with its resume data); None for remote output."""
        destination = self.host.destination_of(job)
        if destination.remote:
            return None
        chunks = self.host.store.chunk_summaries(job.id)  # tuples: thousands of rows
        return job_entries(str(destination.workdir), destination.relative, job.resume or {}, chunks)

    def _merge(self, entries: JobEntries) -> None:
        assert self._by_sha is not None
        for sha, staged in entries.by_sha:
            self._by_sha.setdefault(sha, staged)
        for key, staged in entries.by_fingerprint:
            self._by_fingerprint.setdefault(key, staged)
