"""Where staged data comes from: local paths, HTTP(S) URLs, S3 objects and prefixes, Azure blobs.

A :class:`Source` lists the files it will produce as :class:`SourceItem` s (one output file, hence one
chunk, each) and fetches one item into a :class:`~jupyter_staging.safety.partfile.PartFile`, continuing from
``out.offset`` when a previous attempt left a partial file.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import mimetypes
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jupyter_staging.errors import InvalidRequest, SourceNotFound, StagingError, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.paths import hidden_part
from jupyter_staging.safety.redact import redact_url

#: Broken attempts in a row (none gaining a byte) after which a transfer gives up.
MAX_RESUMES = 5
#: First back-off (seconds) between resumes; doubles each time up to :data:`MAX_BACKOFF`.
BACKOFF = 0.5
MAX_BACKOFF = 8.0


@dataclass
class SourceItem:
    """One file a source will produce.

    ``name``: output path relative to the job's destination (POSIX). ``size``: bytes, or None when the
    source does not say. ``locator``: what :meth:`Source.fetch` needs (path, URL, ``s3://`` URI).
    ``validator``: what identifies this version of the bytes (``etag``, ``last_modified``, ``mtime``,
    ``size``), compared before resuming so two versions are never spliced.
    ``content_type``: MIME type when known.
    ``checksums``: digests the source states for these bytes, lower-case hex by algorithm
    (``{"sha256": ...}`` from S3 ``ChecksumSHA256`` or HTTP ``Repr-Digest``; ``{"md5": ...}`` from a
    single-part S3 ETag, Azure ``Content-MD5`` or HTTP ``Content-MD5``); verified after the transfer.
    The ``validator`` is the item's fingerprint (DESIGN.md, "Re-running a notebook").
    ``accept_ranges``: the listing said the source serves byte ranges of it (HTTP ``Accept-Ranges:
    bytes``); see :meth:`Source.supports_ranges`. Not part of the fingerprint.
    """

    name: str
    size: int | None
    locator: str
    validator: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    accept_ranges: bool = False


class Written(Protocol):
    """What :class:`ResumeBudget` reads of an output: the bytes written so far (``offset``)."""

    @property
    def offset(self) -> int: ...


class ResumeBudget:
    """How a source keeps resuming one item after broken connections.

    Call :meth:`broken` after each failed attempt: an attempt that gained bytes resets the count; after
    :data:`MAX_RESUMES` fruitless attempts in a row it raises :class:`TransferFailed` (or the error class
    the last call names), otherwise it logs and waits ``BACKOFF * 2**(n-1)`` seconds (at most
    :data:`MAX_BACKOFF`), waking early on pause/cancel.
    """

    def __init__(self, item: SourceItem, where: str, control: JobControl) -> None:
        self.item = item
        self.where = where
        self.control = control
        self.failures = 0

    def broken(
        self, out: Written, before: int, reason: str, *, give_up: type[StagingError] = TransferFailed
    ) -> None:
        """Account for an attempt that started at byte ``before`` of ``out`` (a :class:`PartFile` or a
        :class:`RangeOut`) and broke for ``reason`` (no secrets);
        ``give_up``: the error raised when this was the last attempt allowed (``SizeMismatch`` for a body
        shorter or longer than announced). Raises :class:`~jupyter_staging.errors.JobInterrupted` first when
        the job was paused or cancelled (whose abort may be what broke the attempt: no warning is logged)."""
        self.control.check()
        self.failures = 0 if out.offset > before else self.failures + 1
        if self.failures >= MAX_RESUMES:
            raise give_up(
                f"{self.item.name}: download of {self.where} kept failing after {out.offset} bytes: {reason}"
            )
        delay = min(MAX_BACKOFF, BACKOFF * 2 ** max(self.failures - 1, 0))
        self.control.log(
            "warning",
            f"{self.item.name}: connection lost after {out.offset} bytes ({reason}); resuming in {delay:g} s",
        )
        self.control.wait(delay)


def object_or_prefix(
    uri: str,
    key: str,
    head: Callable[[], SourceItem | None],
    list_prefix: Callable[[str], list[SourceItem]],
    noun: str,
) -> list[SourceItem]:
    """The items of an object-store source: the object ``key`` itself when ``head()`` finds it (None:
    no such object), else every object below ``key + "/"``; a ``key`` that is empty or ends in ``/`` is
    listed as a prefix directly. ``noun`` names the objects in messages ("object", "blob").

    Raises :class:`~jupyter_staging.errors.SourceNotFound` when there is neither object nor prefix.
    """
    if key and not key.endswith("/"):
        item = head()
        if item is not None:
            return [item]
        items = list_prefix(key + "/")
        if not items:
            raise SourceNotFound(f"{uri} was not found (no such {noun} or prefix)")
        return distinct_names(items, uri, noun)
    items = list_prefix(key)
    if not items:
        raise SourceNotFound(f"no {noun}s under {uri}")
    return distinct_names(items, uri, noun)


def distinct_names(items: list[SourceItem], uri: str, noun: str) -> list[SourceItem]:
    """``items`` (listed below the prefix ``uri``) when no two of them would be staged to one path: two
    names alike, or one name a folder of another (keys ``d`` and ``d/x.fits``).

    Raises :class:`~jupyter_staging.errors.InvalidRequest` naming both keys otherwise, before any byte moves
    (a file overwritten by another object or a job failing half-way are the alternatives)."""
    by_name: dict[str, SourceItem] = {}
    for item in items:
        seen = by_name.setdefault(item.name, item)
        if seen is not item:
            _clash(uri, noun, seen, item, "the same file")
    for item in items:
        parts = item.name.split("/")
        for depth in range(1, len(parts)):
            folder = by_name.get("/".join(parts[:depth]))
            if folder is not None:
                _clash(uri, noun, folder, item, "a file and a folder of that name")
    return items


def _clash(uri: str, noun: str, first: SourceItem, second: SourceItem, what: str) -> None:
    """Raise :class:`InvalidRequest`: the {noun}s ``first`` and ``second`` under ``uri`` would be ``what``."""
    raise InvalidRequest(
        f"the {noun}s {first.locator!r} and {second.locator!r} under {uri} would both be staged as {what} "
        f"({first.name!r}); stage them separately or rename one"
    )


#: Longest file name produced, bytes of UTF-8 (room for a ``.part`` suffix below the 255 of Linux).
SAFE_NAME_BYTES = 240
#: Names a job folder already uses for itself (any case): a remote file so named gets a prefix.
RESERVED_FILE_NAMES = frozenset({"manifest.json"})
#: Suffix of the part files a job writes before publishing (any case): a remote name ending so is changed.
PART_SUFFIX = ".part"


def content_type_of(name: str) -> str | None:
    """The MIME type ``mimetypes.guess_type`` gives for the file name ``name`` (a relative POSIX path),
    or None. Only the suffixes of its last component count (``.csv``, ``.fits.gz``), so the answer is
    looked up once per chain of suffixes: a folder of 20,000 light curves asks ``mimetypes`` once, not
    20,000 times (about 8 µs each)."""
    base = name.rpartition("/")[2].lstrip(".")
    dot = base.find(".")
    return _suffix_type(base[dot:]) if dot >= 0 else None


@functools.lru_cache(maxsize=1024)
def _suffix_type(suffixes: str) -> str | None:
    """The MIME type of a file whose name ends in ``suffixes`` (``".llc.fits"``)."""
    return mimetypes.guess_type("file" + suffixes)[0]


def safe_filename(name: str, fallback: str = "download") -> str:
    """``name`` as one safe file name: no folder part, no NUL or control characters, no leading dot.

    Returns ``fallback`` when nothing usable is left. Length is capped at 200 characters and
    :data:`SAFE_NAME_BYTES` bytes of UTF-8 (the extension is kept). Names the job folder reserves are
    renamed: ``manifest.json`` (any case) becomes ``<fallback>-manifest.json``
    (``download-manifest.json``), and a trailing ``.part`` becomes ``_part`` (``a.fits.part`` ->
    ``a.fits_part``), so a remote file never takes the place of the staging manifest or of a part file.
    """
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = name.strip().lstrip(".").strip()
    if not name:
        return fallback
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = stem[: 200 - len(ext) - 1] + dot + ext if dot and len(ext) <= 20 else name[:200]
    while len(name.encode("utf-8", "surrogatepass")) > SAFE_NAME_BYTES:  # 200 wide characters may not fit
        stem, dot, ext = name.rpartition(".")
        name = stem[:-1] + dot + ext if dot and len(stem) > 1 and len(ext) <= 20 else name[:-1]
    if name.lower() in RESERVED_FILE_NAMES:
        name = f"{fallback}-{name}"
    if name.lower().endswith(PART_SUFFIX):
        name = f"{name[: -len(PART_SUFFIX)]}_{name[-len(PART_SUFFIX) + 1 :]}"
    return name


def plain_relative_name(rel: str) -> bool:
    """True when every ``/``-separated part of ``rel`` is a plain, visible name: not empty, ``.``,
    ``..``, hidden (a leading dot; a Zarr store's metadata files excepted,
    :data:`~jupyter_staging.safety.paths.DATA_DOT_NAMES`) or holding NUL. Listings skip other names."""
    parts = rel.split("/")
    last = len(parts) - 1
    return not any(
        p in ("", ".", "..") or hidden_part(p, last=i == last) or "\x00" in p for i, p in enumerate(parts)
    )


#: Hex digits of the key's sha256 added to a listed name that had to be changed (:func:`listed_name`).
NAME_TAG_HEX = 8
#: What a changed name ends with (``~`` and the tag, then an extension, if any): a key part that looks
#: so already is changed too, so no key is ever staged under the name another key was changed to.
_TAGGED = re.compile(rf"~[0-9a-f]{{{NAME_TAG_HEX}}}(\.[^.]*)?$")


#: Keys a :func:`skipped_notice` shows, at most.
SKIPPED_SHOWN = 3


def skipped_notice(source: Source) -> list[tuple[str, str]]:
    """The job's log line (``[("warning", text)]``) saying which objects below the prefix ``source`` listed
    were not staged (:attr:`Source.skipped`, the first :data:`SKIPPED_SHOWN` named), or ``[]``: a job never
    ends ``succeeded`` on a part of a prefix without saying so."""
    skipped = source.skipped
    if not skipped:
        return []
    shown = ", ".join(repr(key[:100]) for key in skipped[:SKIPPED_SHOWN])
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    return [
        (
            "warning",
            f"{len(skipped)} object(s) below the prefix not staged: their keys are not plain paths (a part "
            f"empty, '.', '..' or hidden): {shown}{more}",
        )
    ]


def listed_name(rel: str) -> str | None:
    """The output path (relative, POSIX) of an object listed at ``rel`` below a prefix (S3, Azure), or
    None when listings skip it (:func:`plain_relative_name`).

    A key is not a file name: a part may be longer than a file name can be (S3 keys hold 1,024 bytes),
    hold control characters, end in the ``.part`` suffix of the files being written, or be the job
    folder's ``manifest.json`` at the top. Such a part becomes a safe name (:func:`safe_filename`) followed
    by ``~`` and :data:`NAME_TAG_HEX` hex digits of the part's sha256 before its extension
    (``a.fits.part`` -> ``a~1b2c3d4e.fits_part``), at most :data:`SAFE_NAME_BYTES` bytes; a part that
    already ends so (``a~00701940.fits_part``) is tagged again. The same key always gets the same name and
    every other part is kept as it is; two keys given one name all the same (digests alike) are refused by
    :func:`distinct_names`."""
    if not plain_relative_name(rel):
        return None
    parts = rel.split("/")
    return "/".join(_listed_part(part, top=len(parts) == 1) for part in parts)


def _listed_part(part: str, *, top: bool) -> str:
    """One part of :func:`listed_name`: ``part`` itself when it is a safe file name there, else its safe
    name tagged with its digest."""
    lowered = part.lower()
    unsafe = (
        len(part.encode("utf-8", "surrogatepass")) > SAFE_NAME_BYTES
        or lowered.endswith(PART_SUFFIX)
        or (top and lowered in RESERVED_FILE_NAMES)
        or any(unicodedata.category(ch)[0] == "C" for ch in part)
        or _TAGGED.search(part) is not None
    )
    if not unsafe:
        return part
    tag = "~" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_TAG_HEX]
    safe = safe_filename(part, fallback="object")
    stem, dot, ext = safe.rpartition(".")
    if not dot or not stem or len(ext) > 20:
        stem, dot, ext = safe, "", ""
    while stem and len((stem + tag + dot + ext).encode("utf-8", "surrogatepass")) > SAFE_NAME_BYTES:
        stem = stem[:-1]
    return stem + tag + dot + ext


def shutdown_of(stream: Any) -> Callable[[], None]:
    """What shuts down the connection a response body ``stream`` reads from, from another thread, so a read
    blocked on a stalled server returns at once (for :meth:`JobControl.aborting`): urllib3's
    ``HTTPResponse.shutdown`` (urllib3 2.3 and later; a botocore ``StreamingBody`` is unwrapped to it), or
    a no-op where there is none (the read then ends at its timeout)."""
    raw = getattr(stream, "_raw_stream", stream)
    shutdown = getattr(raw, "shutdown", None)
    return shutdown if callable(shutdown) else _no_op


def _no_op() -> None:
    return None


class ShortRange(Exception):  # noqa: N818 - control flow of a ranged fetch, never shown to a user
    """A ranged answer ended before the end of the range asked for: continue after its last byte."""


def check_range(item: SourceItem, start: int, length: int) -> None:
    """Raise :class:`ValueError` (a caller's mistake) unless ``[start, start + length)`` is a byte range
    of ``item`` (``start >= 0``, ``length >= 0``, the end at most ``item.size`` when known)."""
    if start < 0 or length < 0 or (item.size is not None and start + length > item.size):
        raise ValueError(f"{item.name}: bytes {start}+{length} are not a range of {item.size} bytes")


class RangeOut:
    """The output of one ranged fetch: bytes ``[start, start + length)`` of an item written at the same
    offsets of the open file descriptor ``fd`` with ``os.pwrite`` (so several ranges, on threads or
    processes, fill one pre-sized file). ``offset``: bytes of the range written so far (what
    :class:`ResumeBudget` counts). :meth:`write` never writes past the range's end; every write is
    reported with ``control.add_bytes``. Raises :class:`OSError` when the file system does.
    """

    def __init__(self, fd: int, start: int, length: int, control: JobControl) -> None:
        self.fd = fd
        self.start = start
        self.length = length
        self.control = control
        self.offset = 0

    @property
    def remaining(self) -> int:
        """Bytes of the range still to write."""
        return self.length - self.offset

    @property
    def position(self) -> int:
        """The next byte of the item (and of the file) to write."""
        return self.start + self.offset

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data`` at :attr:`position`, cut at the range's end; returns the bytes written."""
        view = memoryview(data)[: self.remaining]
        written = 0
        while view:
            n = os.pwrite(self.fd, view, self.position)
            self.offset += n
            written += n
            view = view[n:]
            self.control.add_bytes(n)
        return written


def pump_range(read: Callable[[], bytes], out: RangeOut) -> None:
    """Copy blocks from ``read()`` (``b""`` at the end) into ``out`` until the range is full or the body
    ends (then :class:`ShortRange`); ``out.control.check()`` runs before every read. Bytes after the
    range's end are never read."""
    while out.remaining:
        out.control.check()
        block = read()
        if not block:
            out.control.check()  # a pause or cancel that shut the connection down
            raise ShortRange(f"the answer ended {out.remaining} bytes before the end of the range")
        out.write(block)


def resume_range(
    item: SourceItem,
    shown: str,
    out: RangeOut,
    attempt: Callable[[RangeOut], None],
    resumable: tuple[type[BaseException], ...],
    describe: Callable[[BaseException], str] = str,
) -> int:
    """Fill ``out`` (a range of ``item``) by calling ``attempt(out)`` until the range is complete: an attempt
    that raises one of ``resumable`` is continued after its last byte, within a :class:`ResumeBudget`
    (``shown``: the source as a message may name it; ``describe(exc)``: the reason logged). Returns the
    bytes written. Raises :class:`TransferFailed` once the budget is spent, what ``attempt`` raises
    otherwise, and :class:`~jupyter_staging.errors.JobInterrupted` (checked before every attempt)."""
    budget = ResumeBudget(item, shown, out.control)
    while out.remaining:
        out.control.check()
        before = out.offset
        try:
            attempt(out)
        except resumable as exc:
            budget.broken(out, before, describe(exc), give_up=TransferFailed)
    return out.offset


class Source(abc.ABC):
    """A staging source. Subclasses implement :meth:`list_items` and :meth:`fetch`."""

    #: Method used when the request names none.
    default_method: str = "download"
    #: Methods this source supports.
    methods: tuple[str, ...] = ("download",)
    #: Keys below a prefix its last listing left out, not being plain paths (:func:`plain_relative_name`:
    #: ``a//b``, ``a/../b``, ``.git/x``), relative to the prefix; the job says so (:func:`skipped_notice`).
    skipped: list[str]

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.skipped = []

    @abc.abstractmethod
    def list_items(self) -> list[SourceItem]:
        """The files to stage. Raises :class:`~jupyter_staging.errors.SourceNotFound` when absent."""

    @abc.abstractmethod
    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Write ``item``'s bytes to ``out``, starting at ``out.offset`` (bytes already there).

        Implementations call ``control.check()`` between blocks and ``control.add_bytes(n)`` as they
        write. If the source no longer matches ``item.validator`` they call ``out.restart()`` and fetch
        from byte 0. Raises :class:`~jupyter_staging.errors.TransferFailed` on lasting errors.
        """

    def revalidate(self, item: SourceItem) -> bool:
        """Bring ``item.size`` and ``item.validator`` up to date with the object as it is now, before any of
        its bytes are staged; True when they changed since the listing (the caller then relists the item,
        so that its fingerprint is that of the bytes it stages). A source that checks the version as it
        reads (HTTP's ``If-Range``, say) keeps this default: False, nothing looked at."""
        return False

    def ask_checksums(self, item: SourceItem) -> None:
        """Add to ``item.checksums`` what the source states for the version ``item.validator`` names, when
        its listing stated nothing: called before the item is fetched in byte ranges, whose answers state no
        checksum of the whole file. This default asks nothing (a source whose listing states its checksums,
        or one that states none). Raises :class:`~jupyter_staging.errors.SourceChanged` when the item is
        no longer that version, and what listing raises."""
        return None

    def supports_ranges(self, item: SourceItem) -> bool:
        """Whether :meth:`fetch_range` can read byte ranges of ``item`` (the version listed, checked by
        every read). False unless a source says otherwise."""
        return False

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Write bytes ``[start, start + length)`` of ``item`` at the same offsets of the open file
        descriptor ``fd`` (``os.pwrite``; the file is pre-sized by the caller, other ranges may be written
        at the same time by other threads or processes). Returns the bytes written (``length``).

        Calls ``control.check()`` between blocks and ``control.add_bytes(n)`` as it writes. Never writes
        outside the range. Sources that :meth:`supports_ranges` raise
        :class:`~jupyter_staging.errors.SourceChanged` when the source no longer is the version
        ``item.validator`` names, :class:`TransferFailed` on lasting errors, :class:`SourceNotFound`,
        and :class:`~jupyter_staging.errors.JobInterrupted` on pause or cancel (the bytes written stay;
        the range is written again in full next time). This default raises :class:`TransferFailed`: the
        source cannot read ranges (callers ask :meth:`supports_ranges` first). :class:`ValueError` when
        the range is not one of ``item`` (:func:`check_range`).
        """
        check_range(item, start, length)
        raise TransferFailed(f"{item.name}: {self.describe()} cannot be read by byte range")

    def local_path(self, item: SourceItem) -> Path | None:
        """The item as a readable local file, when it is one (lets conversion skip a download)."""
        return None

    @contextmanager
    def reading_path(self, item: SourceItem) -> Iterator[Path | None]:
        """A path that reads the item for the duration of the block, for readers that open paths (astropy,
        pyarrow): :meth:`local_path` here; a local source gives one that cannot be redirected by a folder
        swapped for a symlink since the listing. None when the item is not a local file."""
        yield self.local_path(item)

    def describe(self) -> str:
        """The source as safe to show in a log (no secrets)."""
        return redact_url(self.uri)
