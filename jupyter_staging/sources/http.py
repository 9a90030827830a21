"""HTTP(S) and presigned URLs: one file per URL, downloaded resumably.

A download streams the body in blocks of about 1 MiB into the
:class:`~jupyter_staging.safety.partfile.PartFile`. It continues an interrupted attempt with
``Range: bytes=<offset>-`` guarded by ``If-Range`` (the ETag or Last-Modified seen when the item was
listed), so bytes of two versions of a file are never spliced: a server that answers ``200`` instead of
``206`` sent the whole (changed) file, and the part file restarts; a ``206`` naming another ETag or
Last-Modified (a server that ignores ``If-Range``) restarts it too. A body shorter or longer than announced
(``Content-Length``, ``Content-Range``, the listed size) is retried and, when it keeps happening, fails
with :class:`~jupyter_staging.errors.SizeMismatch`; nothing is published.

One byte range of a file (:meth:`HTTPSource.fetch_range`, for parallel streams and distributed tasks
writing one pre-sized file) is ``Range: bytes=a-b`` + ``If-Range``; there a new version cannot restart
anything, so a ``200``, another total size or another ETag fails with
:class:`~jupyter_staging.errors.SourceChanged` before a byte is written.

Session setup and header parsing are in :mod:`jupyter_staging.clouds.http_client`.

Checksums the server states (``Repr-Digest``, ``Digest``, ``Content-MD5``: see
:mod:`jupyter_staging.clouds.digests`) fill ``SourceItem.checksums`` from the HEAD and from every answer
that starts the file again.

Every message this module produces names the URL through :func:`~jupyter_staging.safety.redact.redact_url`,
so a presigned signature never reaches a log, a response or the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, NoReturn

import requests
from urllib3.exceptions import HTTPError as URLLib3Error

from jupyter_staging.clouds.digests import http_checksums
from jupyter_staging.clouds.http import describe_error
from jupyter_staging.clouds.http_client import (
    CONTENT_RANGE_RE,
    accepts_ranges,
    changed_keys,
    filename_from_disposition,
    filename_from_url,
    int_header,
    presigned_expiry,
    retry_note,
    retrying_session,
    total_from_content_range,
    validator_of,
)
from jupyter_staging.errors import SizeMismatch, SourceChanged, SourceNotFound, StagingError, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.redact import redact_url
from jupyter_staging.sources.base import (
    RangeOut,
    ResumeBudget,
    ShortRange,
    Source,
    SourceItem,
    check_range,
    pump_range,
    resume_range,
    safe_filename,
    shutdown_of,
)
from jupyter_staging.sources.pumping import pump

#: Bytes handed to the part file at a time. Large enough that per-block overhead vanishes at
#: 1 GB/s, small enough that a pause is noticed quickly on a slow link.
HTTP_BLOCK = 1 << 20
#: Longest time (seconds) one block waits to fill before it is written anyway, so progress and
#: pause/cancel stay responsive on a slow link.
BLOCK_MAX_WAIT = 0.25
#: (connect, read) timeouts in seconds.
TIMEOUT = (10.0, 60.0)
#: Times one fetch may start its file again (the server sent another version) before it fails with
#: ``source_changed``.
MAX_RESTARTS = 3

#: Errors meaning "the connection broke"; the download continues from the bytes it has.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    URLLib3Error,
    ConnectionError,
    TimeoutError,
)


class _Restart(Exception):  # noqa: N818 - internal control flow
    """The server's answer cannot continue the part file: start it again from byte 0."""


class _Incomplete(Exception):  # noqa: N818 - internal control flow
    """The body ended before its announced length (or before the item's size): continue after it."""


class _WrongLength(Exception):  # noqa: N818 - internal control flow
    """An answer of the same version announced or sent a length other than the item's size."""


#: Body lengths other than announced: retried, then :class:`SizeMismatch`.
SIZE_ERRORS: tuple[type[BaseException], ...] = (_Incomplete, _WrongLength)
#: What :meth:`HTTPSource.fetch` continues after, from the bytes already written.
RESUMABLE_ERRORS: tuple[type[BaseException], ...] = (*SIZE_ERRORS, *TRANSIENT_ERRORS)
#: What :meth:`HTTPSource.fetch_range` continues after, from the last byte written.
RANGE_RESUMABLE: tuple[type[BaseException], ...] = (ShortRange, *TRANSIENT_ERRORS)


def give_up_error(exc: BaseException) -> type[StagingError]:
    """The error a download fails with when ``exc`` kept happening: :class:`SizeMismatch` for a body
    shorter or longer than announced (urllib3's ``IncompleteRead`` included), else
    :class:`TransferFailed`."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, SIZE_ERRORS) or type(seen).__name__ == "IncompleteRead":
            return SizeMismatch
        seen = next((arg for arg in seen.args if isinstance(arg, BaseException)), seen.__context__)
    return TransferFailed


class HTTPSource(Source):
    """One file behind an ``http://`` or ``https://`` URL (presigned URLs included).

    Retries 429/5xx answers and connection errors, follows redirects, and resumes interrupted
    downloads with ``Range`` + ``If-Range``.
    """

    default_method = "download"
    methods = ("download",)

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url
        self.safe_url = redact_url(url)

    # -- listing -----------------------------------------------------------------------------------

    def list_items(self) -> list[SourceItem]:
        """One :class:`SourceItem` for the URL, from a HEAD request (or a 1-byte ranged GET).

        Raises :class:`SourceNotFound` (code ``source_not_found`` for 404/410, ``source_forbidden``
        for 401/403, ``source_expired`` for a 401/403 to a presigned URL whose stated expiry has passed)
        and :class:`TransferFailed` for other errors.
        """
        with retrying_session() as session:
            headers, size, checksums = self._probe(session)
        name = filename_from_disposition(headers.get("Content-Disposition")) or filename_from_url(self.url)
        content_type = headers.get("Content-Type")
        return [
            SourceItem(
                name=safe_filename(name),
                size=size,
                locator=self.url,
                validator=validator_of(headers, size),
                content_type=content_type.split(";", 1)[0].strip() if content_type else None,
                checksums=checksums,
                accept_ranges=accepts_ranges(headers),
            )
        ]

    def _probe(self, session: requests.Session) -> tuple[Any, int | None, dict[str, str]]:
        """Headers, size (bytes) and stated checksums of the resource: HEAD, or ``GET`` of byte 0 when
        HEAD is refused."""
        try:
            resp = session.head(self.url, allow_redirects=True, timeout=TIMEOUT)
            resp.close()
            if resp.ok:
                size = int_header(resp.headers, "Content-Length")
                return resp.headers, size, http_checksums(resp.headers, whole_body=True)
            if resp.status_code in (404, 410):
                self._raise_for_status(resp.status_code)
            # HEAD refused (405/501, or 403 from a URL presigned for GET only): ask with GET.
            with session.get(
                self.url, headers={"Range": "bytes=0-0"}, stream=True, allow_redirects=True, timeout=TIMEOUT
            ) as resp:
                whole = resp.status_code == 200
                if resp.status_code == 206:
                    size = total_from_content_range(resp.headers.get("Content-Range"))
                    return resp.headers, size, http_checksums(resp.headers, whole_body=whole)
                if whole:
                    size = int_header(resp.headers, "Content-Length")
                    return resp.headers, size, http_checksums(resp.headers, whole_body=whole)
                self._raise_for_status(resp.status_code)
        except TRANSIENT_ERRORS as exc:
            raise TransferFailed(f"cannot reach {self.safe_url}: {describe_error(exc)}") from exc
        except requests.RequestException as exc:
            raise TransferFailed(f"request to {self.safe_url} failed: {describe_error(exc)}") from exc

    def _raise_for_status(self, status: int) -> NoReturn:
        if status in (404, 410):
            raise SourceNotFound(f"{self.safe_url} was not found (HTTP {status})")
        if status in (401, 403):
            expiry = presigned_expiry(self.url)
            if expiry is not None and expiry <= datetime.now(timezone.utc):
                raise SourceNotFound(
                    f"the presigned URL {self.safe_url} expired at {expiry:%Y-%m-%d %H:%M:%S} UTC (HTTP "
                    f"{status}): presign it again and stage the new URL",
                    code="source_expired",
                )
            raise SourceNotFound(
                f"access to {self.safe_url} was refused (HTTP {status})", code="source_forbidden"
            )
        raise TransferFailed(f"{self.safe_url} answered HTTP {status}")

    # -- byte ranges -------------------------------------------------------------------------------

    def supports_ranges(self, item: SourceItem) -> bool:
        """True when the listing said ``Accept-Ranges: bytes``, the size is known and the version has a
        strong validator for ``If-Range`` (RFC 9110 §13.1.5): a strong ETag, or, without any ETag,
        Last-Modified. A weak ETag (``W/``) says the bytes may differ between answers: no ranges."""
        etag = item.validator.get("etag")
        strong = not etag.startswith("W/") if etag else bool(item.validator.get("last_modified"))
        return item.accept_ranges and item.size is not None and strong

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Write bytes ``[start, start + length)`` of ``item`` at the same offsets of ``fd`` (see
        :meth:`Source.fetch_range`) with ``GET`` + ``Range: bytes=a-b`` + ``If-Range`` (RFC 9110 §14.2,
        §13.1.5). Only a ``206`` whose ``Content-Range`` is ``bytes a-b/<item.size>`` and whose ETag /
        Last-Modified are the listed ones is written. A body that ends early or a dropped connection
        continues after its last byte, up to :data:`MAX_RESUMES` fruitless attempts in a row.

        Raises :class:`SourceChanged` (a ``200``: the file changed or the server ignored the range; a
        ``416`` or another total size; another ETag or Last-Modified), :class:`TransferFailed` (no range
        support, another range sent, lasting errors), :class:`SourceNotFound`,
        :class:`~jupyter_staging.errors.JobInterrupted`, :class:`ValueError` (a range outside ``item``).
        """
        check_range(item, start, length)
        if not self.supports_ranges(item):
            raise TransferFailed(f"{item.name}: {self.safe_url} serves no byte ranges of a known version")

        def attempt(out: RangeOut) -> None:
            try:
                self._get_range(session, item, out)
            except RANGE_RESUMABLE:
                raise  # continued by resume_range
            except requests.RequestException as exc:
                raise TransferFailed(
                    f"{item.name}: request to {self.safe_url} failed: {describe_error(exc)}"
                ) from None

        with retrying_session(control.wait, retry_note(control, item.name)) as session:
            out = RangeOut(fd, start, length, control)
            return resume_range(item, self.safe_url, out, attempt, RANGE_RESUMABLE, describe_error)

    def _get_range(self, session: requests.Session, item: SourceItem, out: RangeOut) -> None:
        """One GET of the rest of ``out``'s range, checked (:meth:`_check_range`) and written."""
        first, last = out.position, out.start + out.length - 1
        headers = {"Range": f"bytes={first}-{last}", "If-Range": str(self._if_range(item))}
        with session.get(item.locator, headers=headers, stream=True, timeout=TIMEOUT) as resp:
            self._check_range(resp, item, first, last)
            with out.control.aborting(shutdown_of(resp.raw)):
                pump_range(self._block_reader(resp.raw), out)

    def _check_range(self, resp: requests.Response, item: SourceItem, first: int, last: int) -> None:
        """Raise unless ``resp`` is a ``206`` of bytes ``first``-``last`` of the listed version."""
        status = resp.status_code
        where = f"{item.name}: {self.safe_url}"
        if status == 200:
            raise SourceChanged(f"{where} sent the whole file for a range (it changed or ignored If-Range)")
        if status == 416:
            raise SourceChanged(f"{where} no longer has bytes {first}-{last} (the file changed)")
        if status != 206:
            self._raise_for_status(status)
        found = CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
        total = total_from_content_range(resp.headers.get("Content-Range"))
        if total is not None and total != item.size:
            raise SourceChanged(f"{where} now has {total} bytes, {item.size} were listed")
        changed = changed_keys(item.validator, validator_of(resp.headers, None), ("etag", "last_modified"))
        if changed:
            raise SourceChanged(f"{where} sent part of another version ({', '.join(changed)} changed)")
        if found is None or (int(found.group(1)), int(found.group(2))) != (first, last):
            raise TransferFailed(f"{where} sent another range than bytes {first}-{last}")

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Download ``item`` into ``out``, continuing from ``out.offset``.

        Before continuing a partial file, a fresh HEAD is compared with ``item.validator`` (ETag,
        Last-Modified, size); any difference restarts the file. When the server sends a new version
        (a ``200`` to a ranged request, or a ``206`` of another ETag / Last-Modified), the file restarts
        and ``item.size`` / ``item.validator`` / ``item.checksums`` are updated to the version written,
        so ``out.commit(item.size, checksums=item.checksums)`` verifies the right bytes.
        A dropped connection or a short body resumes from the bytes received, up to :data:`MAX_RESUMES`
        times in a row with back-off. Raises :class:`SizeMismatch` (the body kept being shorter or longer
        than announced), :class:`TransferFailed`, :class:`SourceChanged` (a new version more than
        :data:`MAX_RESTARTS` times), :class:`SourceNotFound`, or
        :class:`~jupyter_staging.errors.JobInterrupted` when paused or cancelled.
        """
        with retrying_session(control.wait, retry_note(control, item.name)) as session:
            if out.offset and self._complete_or_restart(session, item, out, control):
                return
            budget = ResumeBudget(item, self.safe_url, control)
            restarts = 0
            while True:
                control.check()
                before = out.offset
                try:
                    self._download(session, item, out, control)
                    self._check_length(item, out)
                    return
                except _Restart:
                    restarts += 1
                    if restarts > MAX_RESTARTS:
                        raise SourceChanged(f"{self.safe_url} kept changing during the download") from None
                    out.restart()
                except RESUMABLE_ERRORS as exc:
                    budget.broken(out, before, describe_error(exc), give_up=give_up_error(exc))
                except requests.RequestException as exc:
                    raise TransferFailed(
                        f"{item.name}: request to {self.safe_url} failed: {describe_error(exc)}"
                    ) from None

    def _complete_or_restart(
        self, session: requests.Session, item: SourceItem, out: PartFile, control: JobControl
    ) -> bool:
        """Before resuming: restart ``out`` if the source changed; True if ``out`` is already complete."""
        try:
            headers, size, checksums = self._probe(session)
        except TransferFailed:
            fresh = None  # cannot ask now; If-Range still protects the resumed request
        else:
            fresh = validator_of(headers, size)
        if fresh is not None:
            changed = changed_keys(item.validator, fresh, ("etag", "last_modified", "size"))
            if changed:
                control.log(
                    "warning",
                    f"{item.name}: source changed since the partial download ({', '.join(changed)}); "
                    "restarting it",
                )
                out.restart()
                item.validator = fresh
                item.size = size
                item.checksums = checksums
                return False
            item.checksums = {**item.checksums, **checksums}  # the same version
        if item.size is not None and out.offset > item.size:
            control.log("warning", f"{item.name}: partial file is longer than the source; restarting it")
            out.restart()
            return False
        return fresh is not None and item.size is not None and out.offset == item.size

    def _download(
        self, session: requests.Session, item: SourceItem, out: PartFile, control: JobControl
    ) -> None:
        """One GET from ``out.offset`` to the end. Raises :class:`_Restart` / :class:`_Incomplete`."""
        start = out.offset
        headers: dict[str, str] = {}
        if start:
            headers["Range"] = f"bytes={start}-"
            if_range = self._if_range(item)
            if if_range:
                headers["If-Range"] = if_range
        resp = session.get(item.locator, headers=headers, stream=True, timeout=TIMEOUT)
        with resp:
            status = resp.status_code
            if status == 206 and start:
                self._check_resumed(resp, item, control, start)
            elif status in (200, 206):
                self._take_whole(resp, item, out, control)
            elif status == 416 and start:
                total = total_from_content_range(resp.headers.get("Content-Range"))
                if total is not None and total == start == item.size:
                    return
                control.log("warning", f"{item.name}: partial file does not fit the source; restarting")
                raise _Restart
            else:
                self._raise_for_status(status)
            expected = int_header(resp.headers, "Content-Length")
            with control.aborting(shutdown_of(resp.raw)):
                got = pump(self._block_reader(resp.raw), out, control)
            if expected is not None and got < expected:
                raise _Incomplete(f"body ended after {got} of {expected} bytes")

    @staticmethod
    def _check_resumed(resp: requests.Response, item: SourceItem, control: JobControl, start: int) -> None:
        """A ``206`` continuing the part file must hold the range asked for (from ``start``) of the
        version the part file holds: else :class:`_Restart` (another version: the server ignored
        ``If-Range``) or :class:`_WrongLength` (the same version, another total length)."""
        first = CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
        if first is None or int(first.group(1)) != start:
            control.log("warning", f"{item.name}: server sent an unexpected range; restarting")
            raise _Restart
        changed = changed_keys(item.validator, validator_of(resp.headers, None), ("etag", "last_modified"))
        if changed:
            control.log(
                "warning",
                f"{item.name}: the server sent part of another version ({', '.join(changed)} changed; it "
                "ignored If-Range); restarting from byte 0",
            )
            raise _Restart
        total = total_from_content_range(resp.headers.get("Content-Range"))
        if total is not None and item.size is not None and total != item.size:
            raise _WrongLength(f"the server announced {total} bytes, {item.size} were listed")
        item.checksums = {**item.checksums, **http_checksums(resp.headers, whole_body=False)}

    @staticmethod
    def _check_length(item: SourceItem, out: PartFile) -> None:
        """After a body ended cleanly: the part file must hold ``item.size`` bytes. Shorter raises
        :class:`_Incomplete` (continue after it); longer restarts ``out`` and raises :class:`_WrongLength`."""
        if item.size is None or out.offset == item.size:
            return
        if out.offset < item.size:
            raise _Incomplete(f"body ended after byte {out.offset} of {item.size}")
        got = out.offset
        out.restart()
        raise _WrongLength(f"received {got} bytes, {item.size} were announced")

    @staticmethod
    def _take_whole(resp: requests.Response, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """The server sends the file from byte 0 (``200``, or ``206`` to a request from 0): restart a
        partial ``out``, and update ``item.size`` / ``item.validator`` / ``item.checksums`` to the version
        sent. An answer of the listed version (same ETag / Last-Modified) keeps the listed size, which
        the body must then match (:meth:`_check_length`)."""
        status = resp.status_code
        if out.offset:
            control.log(
                "warning",
                f"{item.name}: the server sent the whole file instead of the rest (the source "
                "changed or does not support ranges); restarting it",
            )
            out.restart()
        size = (
            int_header(resp.headers, "Content-Length")
            if status == 200
            else total_from_content_range(resp.headers.get("Content-Range"))
        )
        fresh = validator_of(resp.headers, size)
        same_version = all(
            fresh[k] == item.validator.get(k) for k in ("etag", "last_modified") if fresh[k]
        ) and bool(fresh["etag"] or fresh["last_modified"])
        stated = http_checksums(resp.headers, whole_body=status == 200)
        if same_version and item.size is not None:
            # The version listed: its size stands (an answer without a length, or with another one,
            # must still deliver exactly that many bytes) and its checksums add up.
            fresh["size"] = size = item.size
            stated = {**item.checksums, **stated}
        item.validator = fresh
        item.size = size
        item.checksums = stated

    @staticmethod
    def _if_range(item: SourceItem) -> str | None:
        """A strong ETag, else Last-Modified, identifying the version the part file holds."""
        etag = item.validator.get("etag")
        if etag and not etag.startswith("W/"):
            return str(etag)
        last_modified = item.validator.get("last_modified")
        return str(last_modified) if last_modified else None

    @staticmethod
    def _block_reader(raw: Any) -> Callable[[], bytes]:
        """``read()`` returning up to :data:`HTTP_BLOCK` bytes: what arrives within
        :data:`BLOCK_MAX_WAIT` seconds, and ``b""`` at the end of the body.

        When the connection breaks, the bytes received before the break are returned first and the
        error is raised by the next call, so none of them is lost for the resume.
        """
        failed: list[BaseException] = []

        def read() -> bytes:
            if failed:
                raise failed[0]
            pieces: list[bytes] = []
            have = 0
            started = time.monotonic()
            while have < HTTP_BLOCK:
                try:
                    piece = raw.read1(HTTP_BLOCK - have, decode_content=False)
                except Exception as exc:
                    if not pieces:
                        raise
                    failed.append(exc)
                    break
                if not piece:
                    break
                pieces.append(piece)
                have += len(piece)
                if time.monotonic() - started >= BLOCK_MAX_WAIT:
                    break
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)

        return read
