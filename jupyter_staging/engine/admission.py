"""Admission: validate a :class:`~jupyter_staging.engine.models.CreateJob` and persist it as a queued job.

Everything a request can get wrong is found here, before a job exists: the method against the source, the
destination's confinement (:func:`~jupyter_staging.safety.paths.resolve_destination`), a destination that
already holds a job's output, an object-store prefix, and — when ``min_free_bytes`` or ``quota_bytes`` is
set — room for the job's known size (:mod:`~jupyter_staging.engine.space`). Sources holding secrets are
stored redacted and their raw form sealed (:mod:`jupyter_staging.safety.sealed`).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from jupyter_staging.destinations.registry import (
    check_object_destination,
    is_object_destination,
    object_destination,
)
from jupyter_staging.engine.freshness import locator_identity, request_key
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.placement import Placement, Placer, describe_changes, request_key_of, swap_folder
from jupyter_staging.engine.records import dump_item
from jupyter_staging.engine.refresh import Refresh, expired_job, kept_parts_job, refresh_of
from jupyter_staging.engine.space import Listing, SpaceLimits, list_sources, notices_of, unwritable
from jupyter_staging.engine.store import JobRecord, Store, utcnow
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import DestinationNotWritable, InvalidRequest, PathNotAllowed, SourceNotFound
from jupyter_staging.safety.paths import resolve_destination
from jupyter_staging.safety.redact import redact_text, redact_url
from jupyter_staging.safety.sealed import SecretBox
from jupyter_staging.sources.base import Source
from jupyter_staging.sources.registry import open_source


def default_name(source: str) -> str:
    """A readable job name from a source: the file or folder name without its extension."""
    if "://" in source:
        path = unquote(urlsplit(source).path)
    else:
        path = source
    base = PurePosixPath(path.rstrip("/")).name or "staging"
    for suffix in (".gz", ".bz2", ".fz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return safe[:100] or "staging"


def manifest_label(entries: int) -> str:
    """The ``source`` shown for a manifest job: ``manifest:4 entries``."""
    return f"manifest:{entries} {'entry' if entries == 1 else 'entries'}"


@dataclass
class SourcePlan:
    """What a request's source (or manifest) resolves to before a job id exists."""

    method: str
    #: The source as safe to log (secrets redacted).
    described: str
    name: str
    #: The ``source`` column: redacted URL, or ``manifest:N entries``.
    shown_source: str
    #: Manifest entries, redacted; None for a single source.
    entries: dict[str, str] | None
    #: What to seal when ``secret``: ``{"source": ...}`` or ``{"entries": {...}}``.
    raw: dict[str, Any]
    secret: bool


@dataclass
class Admitted:
    """The answer to a request: the job's ``record``; ``created`` False when an earlier job answers it
    (an idempotent repeat, the same request still running, or unchanged output); ``described`` the source
    as safe to log; ``placement`` where the output goes (None for an idempotent repeat)."""

    record: JobRecord
    created: bool
    described: str
    placement: Placement | None = None
    #: ``"3 file(s) to stage, 1.02 kB"`` when admission listed the sources for the space check and
    #: handed the listing to the runner (which then does not list again); else None.
    listed: str | None = None
    #: The submitted presigned URL(s) the earlier job takes (:mod:`~jupyter_staging.engine.refresh`).
    refresh: Refresh | None = None
    #: The id of the job that failed ``source_expired`` into the new job's folder, keeping its part files,
    #: and can no longer be revived now (:mod:`~jupyter_staging.engine.keptparts`); None when there is none.
    superseded: str | None = None
    #: Warnings of admission's listing for the job's log (:attr:`.space.Listing.notices`).
    notices: list[tuple[str, str]] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when unchanged output answered the request: no bytes move."""
        return self.placement is not None and self.placement.reuse is not None

    def creation_lines(self) -> list[tuple[str, str]]:
        """The first lines of a new job's log, ``(level, message)``, redacted: what was asked, what
        admission listed, and for a replacing job what changed."""
        rec = self.record
        where = rec.destination or "/ (server root)"
        lines = [f"job created: {self.described} -> {where} ({rec.method})"]
        if self.listed:
            lines.append(self.listed)
        swap = (rec.resume or {}).get("swap")
        if swap:
            lines.append(f"{swap['changes']}; staging beside the old output, swapped in when complete")
        return [("info", redact_text(line)) for line in lines] + [
            (level, redact_text(line)) for level, line in self.notices
        ]


def identity(request: CreateJob, plan: SourcePlan) -> dict[str, Any]:
    """What makes two requests the same (hashed by :func:`request_key`): the objects the sources name
    (:func:`~jupyter_staging.engine.freshness.locator_identity`: a freshly presigned URL of the same object
    matches, ``?id=1`` and ``?id=2`` do not), method and every option that shapes the output."""
    entries = request.entry_sources()
    return {
        "source": locator_identity(request.source) if request.source is not None else None,
        "entries": {k: locator_identity(v) for k, v in entries.items()} if entries is not None else None,
        "method": plan.method,
        "convert": _convert_identity(request),
        "checksum": request.checksum,
        "entry_checksums": request.entry_checksums(),
        "unpack": request.unpack,
        "decompress": request.decompress,
    }


def _convert_identity(request: CreateJob) -> dict[str, Any] | None:
    """The conversion options of ``request`` as they make its key: ``encoding`` only when given, so the
    key of a conversion without one is what it was before the option existed (a re-run after an upgrade
    is still the same request)."""
    if request.convert is None:
        return None
    options = request.convert.model_dump()
    if options.get("encoding") is None:
        options.pop("encoding", None)
    return options


def run_options(request: CreateJob, key: str, job_id: str, placement: Placement) -> dict[str, Any]:
    """The job's initial resume data: the request's key and options, and for a replacing job the scratch
    folder it stages into and what it may reuse of the output it replaces."""
    resume: dict[str, Any] = {
        "request": {
            "key": key,
            "checksum": request.checksum,
            "entry_checksums": request.entry_checksums(),
            "unpack": request.unpack,
            "decompress": request.decompress,
        }
    }
    if placement.replaces is not None:
        resume["swap"] = {
            "into": swap_folder(placement.rel, job_id, inside=placement.inside),
            "replaces": placement.replaces or None,
            "reuse": reuse_plan_of(placement),
            "changes": describe_changes(placement.fresh),
        }
    return resume


def reuse_plan_of(placement: Placement) -> dict[str, Any]:
    """``{"job": id, "fingerprints": {item: fingerprint}}`` of the unchanged items a replacing job may
    take from the old output (empty after ``if_exists="refresh"``)."""
    if placement.fresh is None or placement.replaces is None:
        return {}
    return {"job": placement.replaces, "fingerprints": placement.fresh.fingerprints}


class Admission:
    """Validates requests and inserts queued :class:`~jupyter_staging.engine.store.JobRecord` s.

    ``root_dir`` confines local destinations; ``staging_dir`` (relative to it) is the parent of default
    destinations; ``source_roots``, when set, are the only local folders a job may read;
    ``min_free_bytes`` / ``quota_bytes`` (0: off) are the space rules of
    :class:`~jupyter_staging.engine.space.SpaceLimits`; ``runner_id`` (``host:pid:start``) is recorded as the
    runner of every job admitted (the process that will run it), in the same transaction as the job, with
    the lease ``lease()`` gives (when it expires, aware UTC: :mod:`~jupyter_staging.engine.leases`).
    """

    def __init__(
        self,
        store: Store,
        secrets: SecretBox,
        *,
        root_dir: Path,
        staging_dir: str,
        source_roots: list[str] | None,
        min_free_bytes: int = 0,
        quota_bytes: int = 0,
        runner_id: str | None = None,
        lease: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.runner_id = runner_id
        self.lease = lease
        self.secrets = secrets
        self.root_dir = root_dir
        self.staging_dir = staging_dir
        self.source_roots = source_roots
        self.placer = Placer(store, root_dir=root_dir, staging_dir=staging_dir, source_roots=source_roots)
        self.space = SpaceLimits(store, root_dir, min_free_bytes=min_free_bytes, quota_bytes=quota_bytes)
        self._lock = threading.Lock()

    def admit(self, request: CreateJob, owner: str) -> Admitted:
        """Validate ``request`` and persist it as a queued job of ``owner`` — unless an earlier job
        answers it: the same ``idempotency_key``, the same request still running, or (``if_exists="reuse"``)
        unchanged output in the destination (:mod:`~jupyter_staging.engine.placement`).

        Raises :class:`InvalidRequest` / :class:`PathNotAllowed` (400), :class:`SourceNotFound` (400),
        :class:`DestinationExists` (409) and :class:`~jupyter_staging.errors.InsufficientSpace` (409), as
        :meth:`StagingManager.create` documents.
        """
        remote = is_object_destination(request.destination)
        self._check_remote(request, remote)
        # Listed before the lock: a HEAD or an S3 listing must not hold up other requests.
        listing = self._list_for_space(request) if self.space.enabled and not remote else None
        with self._lock:
            if request.idempotency_key:
                root, key = str(self.root_dir), request.idempotency_key
                existing = self.store.find_by_idempotency_key(owner, root, key)
                if existing is not None:
                    refresh = self._refresh_repeat(existing, request)
                    return Admitted(existing, created=False, described=existing.source, refresh=refresh)
            plan = self._plan(request)
            if request.convert is not None and plan.method in ("hardlink", "symlink"):
                raise InvalidRequest(
                    "conversion to Parquet writes new files; "
                    f"it cannot be combined with method {plan.method!r}",
                    code="invalid_method",
                )
            key = request_key(identity(request, plan))
            job_id = str(uuid.uuid4())
            superseded: str | None = None  # a job of the folder whose kept part files go (local only)
            if remote:
                assert request.destination is not None
                placement = Placement(object_destination(request.destination, job_id))
            else:
                placement = self._place(request, plan, key)
                earlier = placement.reuse or placement.active
                if earlier is not None:
                    refresh = None if placement.reuse else self._refresh(earlier, request, plan)
                    return Admitted(earlier, False, plan.described, placement=placement, refresh=refresh)
                expired = None
                if request.if_exists != "error":  # a job whose URL expired, continued with the new one
                    expired = expired_job(self.store, str(self.root_dir), placement.rel, key)
                refresh = self._refresh(expired, request, plan) if expired is not None else None
                if expired is not None and refresh is not None:
                    return Admitted(expired, False, plan.described, placement=placement, refresh=refresh)
                head = kept_parts_job(self.store, str(self.root_dir), placement.rel)
                superseded = head.id if head is not None else None
                why = unwritable(self.root_dir / placement.rel)  # up-to-date output there was answered above
                if why is not None:
                    raise DestinationNotWritable(
                        f"{placement.rel!r} {why}: nothing can be staged there; "
                        "choose a destination that can be written to"
                    )
            if listing is not None:
                self.space.check(listing, placement.rel)
            rec = self._record(request, plan, owner, job_id, placement.rel)
            rec.resume = run_options(request, key, job_id, placement)
            listed = self._hand_over(rec, request, listing) if listing is not None else None
            admitted = Admitted(
                rec,
                True,
                plan.described,
                placement=placement,
                listed=listed,
                superseded=superseded,
                notices=notices_of(listing),
            )
            # One commit for the job, its runner and its first log lines (each commit can wait behind
            # running jobs' bookkeeping).
            self.store.add_job(rec, admitted.creation_lines())
        return admitted

    def _plan(self, request: CreateJob) -> SourcePlan:
        return self._plan_manifest(request) if request.manifest is not None else self._plan_source(request)

    def _refresh_repeat(self, existing: JobRecord, request: CreateJob) -> Refresh | None:
        """:meth:`_refresh` of the job an idempotency key names; None, the job answering as it is, when the
        request cannot be planned now (a local source gone since: the key still names its job), or when
        that job failed and another job has written to its folder since (reviving it would publish its
        files into that job's output, then fail ``destination_exists`` on its manifest)."""
        try:
            plan = self._plan(request)
        except (InvalidRequest, PathNotAllowed, SourceNotFound):
            return None
        if existing.state == JobState.failed.value and not is_object_destination(existing.destination):
            key = request_key_of(existing) or ""
            newest = expired_job(self.store, str(self.root_dir), existing.destination, key)
            if newest is None or newest.id != existing.id:
                return None
        return self._refresh(existing, request, plan)

    def _refresh(self, earlier: JobRecord, request: CreateJob, plan: SourcePlan) -> Refresh | None:
        """The refresh of job ``earlier``'s presigned URL(s) by ``request`` when it is the same request
        (its key) with URLs signed again (:func:`~jupyter_staging.engine.refresh.refresh_of`), else None."""
        if request_key_of(earlier) != request_key(identity(request, plan)):
            return None  # an idempotency key reused for other objects: the job answers, unchanged
        return refresh_of(earlier, plan.raw, plan.secret, self.secrets)

    def _list_for_space(self, request: CreateJob) -> Listing:
        """The request's sources listed for the space check (never raises; see
        :func:`~jupyter_staging.engine.space.list_sources`)."""
        entries = request.entry_sources()
        sources: dict[str | None, str] = (
            dict(entries.items()) if entries is not None else {None: str(request.source)}
        )
        return list_sources(sources, source_roots=self.source_roots)

    def _hand_over(self, rec: JobRecord, request: CreateJob, listing: Listing) -> str | None:
        """Put what admission listed into the new job's resume data, as the runner would have stored it,
        so that it does not list (HEAD, S3 listing) again. Returns the log line saying so, or None."""
        rec.resume = rec.resume if rec.resume is not None else {}
        if request.manifest is not None:
            rec.resume["entries"] = {
                name: {"items": [dump_item(i, self.secrets) for i in items]}
                for name, items in listing.items.items()
                if name is not None
            }
            return None
        items = listing.items.get(None)
        if items is None:
            return None
        rec.resume["items"] = [dump_item(i, self.secrets) for i in items]
        rec.bytes_total = listing.exact_total
        if request.convert is None and not (request.unpack or request.decompress):
            rec.chunks_total = len(items)
        return f"{len(items)} file(s) to stage, {format_bytes(rec.bytes_total)}"

    def _place(self, request: CreateJob, plan: SourcePlan, key: str) -> Placement:
        """The placement of a request into a local folder (checked: see :func:`resolve_destination`)."""
        if request.destination is None:
            rel = self.placer.default_folder(default_name(plan.name), key)
        else:
            rel = resolve_destination(self.root_dir, request.destination)[1]
        if request.manifest is not None:
            sources: dict[str | None, str] = {k: v for k, v in (request.entry_sources() or {}).items()}
            return self.placer.place(rel, key, request.if_exists, sources, lambda e, n: f"{e}/{n}")
        assert request.source is not None
        return self.placer.place(rel, key, request.if_exists, {None: request.source}, lambda e, n: n)

    @staticmethod
    def _check_remote(request: CreateJob, remote: bool) -> None:
        """Object-store destinations take copies and downloads only, into a well-formed prefix."""
        if remote and request.method in ("hardlink", "symlink"):
            raise InvalidRequest(
                f"method {request.method!r} cannot write to object storage; use copy or download",
                code="invalid_method",
            )
        if remote and request.destination is not None:
            check_object_destination(object_destination(request.destination, "check"))

    def _plan_manifest(self, request: CreateJob) -> SourcePlan:
        sources = request.entry_sources()
        assert sources is not None
        entries = {k: redact_url(v) for k, v in sources.items()}
        return SourcePlan(
            method=self.check_entries(request),
            described=f"manifest of {len(sources)} entries",
            name=request.name or "manifest",
            shown_source=manifest_label(len(sources)),
            entries=entries,
            raw={"entries": sources},
            secret=entries != sources,
        )

    def _plan_source(self, request: CreateJob) -> SourcePlan:
        assert request.source is not None
        source = open_source(request.source, source_roots=self.source_roots)
        method = request.method or source.default_method
        if method not in source.methods:
            raise InvalidRequest(
                f"method {method!r} does not apply to this source; use one of {', '.join(source.methods)}",
                code="invalid_method",
            )
        shown = redact_url(request.source)
        return SourcePlan(
            method=method,
            described=source.describe(),
            name=request.name or default_name(request.source),
            shown_source=shown,
            entries=None,
            raw={"source": request.source},
            secret=shown != request.source,
        )

    def _record(self, request: CreateJob, plan: SourcePlan, owner: str, job_id: str, rel: str) -> JobRecord:
        now = utcnow()
        expires = now + timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        return JobRecord(
            id=job_id,
            owner=owner,
            root=str(self.root_dir),
            name=plan.name,
            source=plan.shown_source,
            entries=plan.entries,
            sealed=self.secrets.seal(plan.raw) if plan.secret else None,
            destination=rel,
            method=plan.method,
            convert=request.convert.model_dump() if request.convert else None,
            state=JobState.queued.value,
            runner=self.runner_id,
            lease_expires_at=self.lease() if self.lease is not None else None,
            bytes_done=0,
            chunks_done=0,
            rows_done=0,
            cleanup_policy=request.cleanup_policy,
            idempotency_key=request.idempotency_key,
            ttl_seconds=request.ttl_seconds,
            created_at=now,
            updated_at=now,
            expires_at=expires,
            resume={},
        )

    def check_entries(self, request: CreateJob) -> str:
        """Check every manifest entry as :meth:`admit` checks a source; returns the job's method.

        Bad input (an unsupported scheme, a path outside the source roots) refuses the whole job; a local
        entry that does not exist does not (it fails alone when the job runs). Without a ``method`` in the
        request each entry uses its own default (the job shows ``download`` when any entry is remote).
        """
        sources = request.entry_sources()
        assert sources is not None
        methods: list[str] = []
        for entry, uri in sources.items():
            try:
                source: Source | None = open_source(uri, source_roots=self.source_roots)
            except SourceNotFound:
                source = None  # reported when the job runs, as this entry's error
            except (InvalidRequest, PathNotAllowed) as exc:
                raise type(exc)(f"manifest entry {entry!r}: {exc.message}", code=exc.code) from None
            if source is None:
                continue
            if request.method is not None and request.method not in source.methods:
                raise InvalidRequest(
                    f"manifest entry {entry!r}: method {request.method!r} does not apply to this source; "
                    f"use one of {', '.join(source.methods)}",
                    code="invalid_method",
                )
            methods.append(source.default_method)
        if request.method is not None:
            return request.method
        return "download" if "download" in methods or not methods else "copy"
