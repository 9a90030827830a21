"""Where a new job's output goes, and whether it needs to run at all.

DESIGN.md, "Re-running a notebook": without a destination the folder is stable (``staging/<name>``; a
different request that maps to the same name gets ``staging/<name>-<key8>``), so a re-run finds its own
output. A folder that holds the output of an earlier job of the same request is reused when every source
fingerprint still matches; otherwise (a source changed, or ``if_exists="refresh"``) the new job stages into
a scratch folder beside it (:func:`swap_folder`) and swaps it in when complete
(:func:`~jupyter_staging.engine.swap.swap_in`), so the old output stays readable until then. The output of
a job that failed or was cancelled (the files a folder copy published before it stopped, the entries of a
manifest job that were staged; a failed conversion leaves no parts) is never reused: a request into its
folder stages afresh beside it and swaps in, as a changed source would (unless ``if_exists="error"``), when
files of that job are still there; else it writes into the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest
from jupyter_staging.engine.freshness import Freshness, check_sources, manifest_as_recorded, outputs_present
from jupyter_staging.engine.models import DONE_STATES, JobState
from jupyter_staging.engine.store import JobRecord, Store
from jupyter_staging.engine.swap import is_mount_point
from jupyter_staging.errors import DestinationExists, PathNotAllowed
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.dirfd import name_with
from jupyter_staging.safety.paths import resolve_destination

#: States of a job that still owns its destination folder.
ACTIVE_STATES = (JobState.queued.value, JobState.running.value, JobState.paused.value)
#: Final states of a job whose output is not whole: a new request into its folder replaces what it left.
UNFINISHED_STATES = (JobState.failed.value, JobState.cancelled.value)


@dataclass
class Placement:
    """The decision for one request.

    ``rel``: the destination folder, relative to the root. ``reuse``: an earlier job whose output answers
    the request as it is (up to date; nothing to run). ``active``: an earlier job of the same request still
    queued, running or paused (answered instead of a second job). ``replaces``: the earlier job whose
    folder the new job replaces by a swap (or ``""`` for output of no known job); None when the new job
    writes straight into ``rel``. ``fresh``: the fingerprint comparison, when one was made. ``inside``: the
    folder is a mount point, which cannot be renamed, so a replacing job stages into a hidden folder inside
    it and its files are moved in one by one (:func:`swap_folder`, :func:`swap_in`).
    """

    rel: str
    reuse: JobRecord | None = None
    active: JobRecord | None = None
    replaces: str | None = None
    fresh: Freshness | None = None
    notes: list[str] = field(default_factory=list)
    inside: bool = False


def request_key_of(rec: JobRecord | None) -> str | None:
    """The request key a job was admitted with (None for jobs of older versions)."""
    if rec is None:
        return None
    return ((rec.resume or {}).get("request") or {}).get("key")


def swap_folder(rel: str, job_id: str, *, inside: bool = False) -> str:
    """The scratch folder where a replacing job stages: beside ``rel`` (``parent/.<leaf>.staging-<id8>``,
    ``.<leaf>`` cut to keep the name within 255 bytes), or with ``inside`` (``rel`` is a mount point) in it
    (``rel/.staging-<id8>``), on the same file system."""
    if inside:
        return f"{rel}/.staging-{job_id[:8]}"
    parent, _, leaf = rel.rpartition("/")
    name = name_with(f".{leaf}", f".staging-{job_id[:8]}")  # a leaf of 238 bytes or more is cut short
    return f"{parent}/{name}" if parent else name


class Placer:
    """Decides :class:`Placement` s for the jobs of one root (see the module)."""

    def __init__(self, store: Store, *, root_dir: Path, staging_dir: str, source_roots: list[str] | None):
        self.store = store
        self.root_dir = root_dir
        self.staging_dir = staging_dir
        self.source_roots = source_roots

    def default_folder(self, name: str, key: str) -> str:
        """``staging/<name>``, unless it holds another request's output: then ``staging/<name>-<key8>``."""
        base = f"{self.staging_dir.strip('/')}/{name}".lstrip("/")
        for candidate in (base, f"{base}-{key[:8]}"):
            path, rel = resolve_destination(self.root_dir, candidate)
            owner = self.active_job(rel) or self.output_job(path)
            if owner is not None and request_key_of(owner) == key:
                return rel
            if owner is None and not (path / MANIFEST_NAME).exists():
                return rel
        return resolve_destination(self.root_dir, f"{base}-{key[:8]}")[1]

    def active_job(self, rel: str) -> JobRecord | None:
        """The newest queued, running or paused job of this root writing to ``rel`` (with its resume data).

        Found by one narrow ``SELECT`` of ids (:meth:`Store.active_job_id`): reading the active jobs' rows
        would read their resume data, which lists every item of a job (megabytes for a running folder of
        20,000 files) on every request; only the job found is read whole, for its request key."""
        job_id = self.store.active_job_id(str(self.root_dir), rel, list(ACTIVE_STATES))
        return None if job_id is None else self.store.get_job(job_id)

    def published_job(self, rel: str, states: tuple[str, ...] = UNFINISHED_STATES) -> str | None:
        """The id of the newest job in ``states`` (default: failed or cancelled; :meth:`_without_manifest`
        asks for succeeded ones) of this root that wrote to ``rel``, when files it published (for a failed
        job, the first files of a folder it did not finish) are still in the folder, which has no
        ``manifest.json``: a new job writing straight into the folder would meet them. None otherwise, so a
        folder holding only the user's own files is written into, never swapped (it keeps its identity: its
        mode, a mount point)."""
        job_id = self.store.active_job_id(str(self.root_dir), rel, list(states))
        if job_id is None:
            return None
        rec = self.store.get_job(job_id)
        swap = ((rec.resume if rec is not None else None) or {}).get("swap")
        if swap and not swap.get("done"):  # it staged into its scratch folder, never into ``rel``
            return None
        fs, folder = Confined(self.root_dir), self.root_dir / rel
        published = (c.path for c in self.store.list_chunks(job_id) if c.state in DONE_STATES)
        try:
            return job_id if any(fs.exists(folder / path) for path in published) else None
        except PathNotAllowed:  # a folder on the way is now a symlink: swapped, by descriptor, never followed
            return job_id

    def output_job(self, folder: Path) -> JobRecord | None:
        """The job whose ``manifest.json`` is in ``folder`` (None when there is none, or no such job)."""
        manifest = read_manifest(folder, root=self.root_dir)
        if manifest is None:
            return None
        rec = self.store.get_job(str(manifest.get("job_id")))
        if rec is None or rec.root != str(self.root_dir):
            return None
        return rec

    def place(
        self,
        rel: str,
        key: str,
        if_exists: str,
        sources: dict[str | None, str],
        prefix: Callable[[str | None, str], str],
    ) -> Placement:
        """Decide what a request with ``key`` into folder ``rel`` does (see the module and
        :class:`Placement`). Raises :class:`DestinationExists` (409) when the folder holds another
        request's output and ``if_exists`` is not ``refresh``, when it holds any output and ``if_exists``
        is ``error``, or when another request's job is still writing there."""
        path = self.root_dir / rel
        active = self.active_job(rel)
        if active is not None:
            if request_key_of(active) == key and if_exists != "error":
                return Placement(rel, active=active)
            raise DestinationExists(f"destination {rel!r} is used by another active job")
        if not (path / MANIFEST_NAME).is_file():
            failed = self.published_job(rel) if if_exists != "error" and path.is_dir() else None
            placement = Placement(rel, replaces=failed) if failed is not None else Placement(rel)
            if failed is None and if_exists != "error" and path.is_dir():
                placement = self._without_manifest(rel, key, sources, prefix) or placement
        elif if_exists == "error":
            raise DestinationExists(f"destination {rel!r} already holds a staged job's output")
        else:
            placement = self._over_output(rel, key, if_exists, sources, prefix)
        placement.inside = placement.replaces is not None and is_mount_point(path)
        return placement

    def _over_output(
        self,
        rel: str,
        key: str,
        if_exists: str,
        sources: dict[str | None, str],
        prefix: Callable[[str | None, str], str],
    ) -> Placement:
        """:meth:`place` for a folder that holds a ``manifest.json`` and ``if_exists`` is not ``error``."""
        path = self.root_dir / rel
        prev = self.output_job(path)
        if prev is not None and prev.state in UNFINISHED_STATES:  # a failed job's output: staged again
            return Placement(rel, replaces=prev.id)
        same = prev is not None and request_key_of(prev) == key
        if not same and if_exists != "refresh":
            raise DestinationExists(
                f"destination {rel!r} already holds the output of a different request; choose another "
                "folder, or pass if_exists='refresh' to replace it"
            )
        if not same or if_exists == "refresh":
            return Placement(rel, replaces=prev.id if prev is not None else "")
        assert prev is not None
        fresh = check_sources(prev, sources, source_roots=self.source_roots, prefix=prefix)
        manifest = read_manifest(path, root=self.root_dir) or {}
        if (
            fresh.up_to_date
            and manifest_as_recorded(manifest, self.store.chunk_summaries(prev.id))
            and outputs_present(path, manifest, prev.method)
        ):
            return Placement(rel, reuse=prev, fresh=fresh)
        return Placement(rel, replaces=prev.id, fresh=fresh)

    def _without_manifest(
        self, rel: str, key: str, sources: dict[str | None, str], prefix: Callable[[str | None, str], str]
    ) -> Placement | None:
        """:meth:`place` for a folder whose ``manifest.json`` is gone (the user deleted it) while files the
        newest succeeded job of the same request published there still are: that job's output, staged again
        beside it and swapped in, its unchanged files linked from it (a new job writing straight into the
        folder failed ``destination_exists`` on them). None when there is no such job."""
        job_id = self.published_job(rel, (JobState.succeeded.value,))
        prev = self.store.get_job(job_id) if job_id is not None else None
        if prev is None or request_key_of(prev) != key:
            return None
        fresh = check_sources(prev, sources, source_roots=self.source_roots, prefix=prefix)
        return Placement(rel, replaces=prev.id, fresh=fresh)


def describe_changes(fresh: Freshness | None) -> str:
    """One log line saying which sources changed (``None`` stands for the job's single source)."""
    if fresh is None:
        return "staging again (if_exists=refresh, or the folder held other output)"
    changed = ", ".join("source" if e is None else e for e in fresh.changed) or "output files"
    reused = len(fresh.unchanged)
    files = len(fresh.fingerprints)
    return (
        f"changed since the last run: {changed}; unchanged and reused from the local copy: {reused} "
        f"({files} unchanged file(s) taken from the old output where still as staged)"
    )
