"""Is a destination's output still up to date? Request identity and source fingerprints.

DESIGN.md, "Re-running a notebook": a request whose destination holds the output of an earlier job of the
same source(s) and options is *up to date* when every source fingerprint still matches — local size +
mtime_ns + inode; HTTP ETag, else Last-Modified + Content-Length; S3 / Azure ETag (+ VersionId), as each
:class:`~jupyter_staging.sources.base.Source` records them in :attr:`SourceItem.validator`. Checking costs
one ``stat`` / ``HEAD`` / listing per source, run concurrently for manifests, plus one ``stat`` per output
file (a deleted output, or one edited since the job wrote it, is not up to date).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jupyter_staging.clouds.http_client import bounded_wait, waiting_with
from jupyter_staging.engine.models import DONE_STATES
from jupyter_staging.engine.store import ChunkSummary, JobRecord
from jupyter_staging.sources.base import SourceItem
from jupyter_staging.sources.registry import open_source

#: Sources (manifest entries) whose fingerprints are read at the same time.
CHECK_CONCURRENCY = 16
#: Longest time (seconds) the space check's listing of a source inside ``POST /jobs`` waits between its
#: retries in all (an HTTP 429 / 503 and its ``Retry-After``, the back-off): a source asking for more is
#: left to the job's runner, which waits as long as the server asks (up to a minute a retry), and the
#: request is answered at once. Nothing is lost: the job is admitted with its size unknown.
LISTING_WAIT_MAX = 3.0
#: The same bound for a re-run's freshness check (:func:`check_sources`), seconds. Longer, since giving up
#: costs more there: a source not checked counts as changed and every file of it is staged again, so a
#: short busy spell (``Retry-After: 5``) is waited for, and only a longer one answers with a new job.
FRESHNESS_WAIT_MAX = 30.0

#: Query parameters of presigned URLs that change with every signing but do not name another object, by
#: signing scheme: AWS SigV4 and Google V4 (``X-Amz-*``, ``X-Goog-*``: their names say so), Azure SAS
#: (``sig``, ``se``, ...), and AWS SigV2 / Google V2 / CloudFront (``Signature``, ``Expires``, ...). The
#: short names of a scheme are signing parameters only in a URL signed by it (its ``sig`` / ``Signature``
#: is there): in another URL, ``SR`` is a cone search's radius and ``expires`` any service's parameter.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SCHEME_PARAMS = {
    "sig": frozenset(
        {"sig", "se", "st", "sp", "sv", "sr", "spr", "ss", "srt", "si"}
        | {"skoid", "sktid", "skt", "ske", "sks", "skv"}
    ),
    "signature": frozenset(
        {"signature", "expires", "awsaccesskeyid", "key-pair-id", "policy", "googleaccessid"}
    ),
}


def _signing_params(names: set[str]) -> frozenset[str]:
    """The lower-case query parameter names among ``names`` (lower-case) that only sign the URL: those of
    each scheme whose signature parameter ``names`` holds (see :data:`_SCHEME_PARAMS`)."""
    found: frozenset[str] = frozenset()
    for signature, params in _SCHEME_PARAMS.items():
        if signature in names:
            found |= params
    return found


def locator_identity(uri: str) -> str:
    """A hex digest naming the object ``uri`` points at: the raw URI (secrets included: only its digest is
    kept) without the query parameters that change with every presigning, so a freshly presigned URL of
    the same object has the same identity, while ``?id=1`` and ``?id=2`` do not, nor (unsigned) a cone
    search's ``?SR=0.1`` and ``?SR=1.0``."""
    if "://" in uri and "?" in uri:
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        signing = _signing_params({name.lower() for name, _ in query})
        kept = [
            (name, value)
            for name, value in query
            if not name.lower().startswith(_SIGNING_PREFIXES) and name.lower() not in signing
        ]
        uri = urlunsplit(parts._replace(query=urlencode(sorted(kept)), fragment=""))
    return hashlib.sha256(uri.encode()).hexdigest()


def request_key(identity: dict[str, Any]) -> str:
    """A stable hex digest of what makes two requests the same: the (redacted) source or manifest
    entries, the method, the conversion options, ``unpack`` / ``decompress`` and expected checksums."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def listed_items(resume: dict[str, Any]) -> dict[str | None, list[dict[str, Any]]]:
    """The items a job listed, by manifest entry (key None for a single source), from its resume data."""
    if "entries" in resume:
        return {name: list(entry.get("items", [])) for name, entry in resume["entries"].items()}
    return {None: list(resume.get("items", []))}


def every_listed_item(resume: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every item the resume data lists, as stored: the single source's (``items``), then each manifest
    entry's (``entries.<name>.items``)."""
    yield from resume.get("items") or []
    for entry in (resume.get("entries") or {}).values():
        yield from entry.get("items") or []


def fingerprints_of(resume: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{item name: fingerprint}`` (its validator: size, mtime, inode, ETag...) of every item a job
    listed, from its resume data."""
    return {i["name"]: i.get("validator") or {} for i in every_listed_item(resume)}


@dataclass
class Freshness:
    """The outcome of comparing an earlier job's sources with what they are now.

    ``changed``: entry names (``None`` for a single source) whose items differ (added, removed, or a
    fingerprint changed); ``unchanged`` the others. ``fingerprints``: the current fingerprint,
    ``{item name: validator}``, of every item whose bytes may be reused: all those of an unchanged entry,
    and those of a changed one listed under the same name with the same fingerprint as before.
    """

    changed: list[str | None] = field(default_factory=list)
    unchanged: list[str | None] = field(default_factory=list)
    fingerprints: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        """True when no source changed."""
        return not self.changed


def _same_items(before: list[dict[str, Any]], now: list[SourceItem]) -> bool:
    """True when ``now`` lists the same item names with the same fingerprints (validators) as ``before``."""
    old = {i["name"]: i.get("validator") or {} for i in before}
    new = {i.name: i.validator for i in now}
    return old == new and all(names_a_version(v) for v in old.values())


def names_a_version(validator: Mapping[str, Any]) -> bool:
    """Whether a fingerprint says which version of the bytes an item is: something besides its size (an
    ETag, a Last-Modified, a local file's mtime and inode). An HTTP server that states neither ETag nor
    Last-Modified leaves only the size, which a file rewritten at the same size keeps: never up to date."""
    return any(value is not None for key, value in validator.items() if key != "size")


def check_sources(
    prev: JobRecord,
    sources: dict[str | None, str],
    *,
    source_roots: list[str] | None,
    prefix: Callable[[str | None, str], str],
) -> Freshness:
    """Compare the items job ``prev`` staged with what ``sources`` (``{entry or None: raw URI}``) list now.

    ``prefix(entry, name)`` maps a source's item name to the job's item name (manifest entries stage into
    ``<entry>/``). A source that cannot be listed now (gone, network down, or asking to be retried later
    than :data:`FRESHNESS_WAIT_MAX` seconds in all) counts as changed, with no fingerprints: the new job then
    lists it and stages all of its files again (none taken from the old output), or reports why. Runs at most
    :data:`CHECK_CONCURRENCY` listings at once; returns a :class:`Freshness`.
    """
    before = listed_items(prev.resume or {})
    result = Freshness()

    def look(entry: str | None) -> tuple[str | None, list[SourceItem] | None]:
        try:
            source = open_source(sources[entry], source_roots=source_roots)
            with waiting_with(bounded_wait(FRESHNESS_WAIT_MAX)):  # POST /jobs is not held for minutes
                items = source.list_items()
        except Exception:  # the new job stages it again and reports the error
            return entry, None
        for item in items:
            item.name = prefix(entry, item.name)
        return entry, items

    workers = max(1, min(CHECK_CONCURRENCY, len(sources)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="staging-fresh") as pool:
        for entry, items in pool.map(look, list(sources)):
            if items is None or entry not in before:
                result.changed.append(entry)
                continue
            if not _same_items(before[entry], items):
                result.changed.append(entry)
                result.fingerprints.update(_unchanged_items(before[entry], items))
                continue
            result.unchanged.append(entry)
            result.fingerprints.update({i.name: i.validator for i in items})
    return result


def _unchanged_items(before: list[dict[str, Any]], now: list[SourceItem]) -> dict[str, dict[str, Any]]:
    """``{item name: fingerprint}`` of the items of a changed source (a folder that gained, lost or changed
    a file) listed ``now`` under a name ``before`` had, with the same fingerprint: their staged files are
    reused, so that one file changed in a folder of 20,000 does not stage the other 19,999 again."""
    old = {i["name"]: i.get("validator") for i in before}
    return {
        i.name: i.validator for i in now if names_a_version(i.validator) and old.get(i.name) == i.validator
    }


def output_as_staged(st: os.stat_result, obj: Mapping[str, Any]) -> bool:
    """True when ``st`` (an ``lstat`` of a staged output) still shows the manifest object ``obj`` as the job
    left it: its ``size`` (bytes; not compared for a symlink, whose own size is its target's length) and its
    ``mtime_ns`` (a file edited in place keeps its size, not its modification time; a manifest written
    before jobs recorded it has none, and only the size counts)."""
    if obj.get("size") is not None and not stat.S_ISLNK(st.st_mode) and st.st_size != obj["size"]:
        return False
    return obj.get("mtime_ns") is None or st.st_mtime_ns == obj["mtime_ns"]


def objects_as_recorded(
    manifest: Mapping[str, Any], chunks: Iterable[ChunkSummary]
) -> dict[str, dict[str, Any]]:
    """``{relative path: manifest object}`` of the objects of ``manifest`` that say of their file what the
    job recorded in its database (``chunks``: its chunks, ready or acked ones counted): the same ``size``
    (bytes), ``sha256`` and, when the chunk recorded one, ``mtime_ns``. ``manifest.json`` is a file in the
    user's folder: an object edited since (to match an edited output) is left out, so its file is neither
    reused nor taken as up to date; an object of no chunk of the job is left out too."""
    recorded = {c.path: c for c in chunks if c.state in DONE_STATES}
    kept: dict[str, dict[str, Any]] = {}
    for obj in manifest.get("objects", []):
        path = str(obj.get("path", ""))
        chunk = recorded.get(path)
        if chunk is None or obj.get("size") != chunk.bytes or obj.get("sha256") != chunk.sha256:
            continue
        if chunk.mtime_ns is not None and obj.get("mtime_ns") != chunk.mtime_ns:
            continue
        kept[path] = obj
    return kept


def manifest_as_recorded(manifest: Mapping[str, Any], chunks: Iterable[ChunkSummary]) -> bool:
    """True when ``manifest`` lists exactly the files the job recorded (``chunks``, ready or acked), each as
    recorded (:func:`objects_as_recorded`): a manifest emptied or edited by hand is not up to date."""
    done = [c for c in chunks if c.state in DONE_STATES]
    objects = manifest.get("objects", [])
    return len(objects) == len(done) and len(objects_as_recorded(manifest, done)) == len(done)


def outputs_present(folder: Path, manifest: dict[str, Any], method: str | None = None) -> bool:
    """True when every object the manifest lists is still a regular file (or a link to one) as the job left
    it (:func:`output_as_staged`): a deleted output, or one edited since, is not up to date. The output of a
    ``symlink`` job must still be a symbolic link; that of any other ``method`` (when given) a regular file,
    never a symlink put in its place."""
    for obj in manifest.get("objects", []):
        path = folder / str(obj.get("path", ""))
        try:
            st = path.lstat()
        except OSError:
            return False
        if not path.is_file():  # a symlink (method symlink) must still lead to a file
            return False
        if method is not None and stat.S_ISLNK(st.st_mode) != (method == "symlink"):
            return False
        if not output_as_staged(st, obj):
            return False
    return True
