"""S3 objects and prefixes (AWS or any S3-compatible store), downloaded resumably.

Clients, URIs and error translation are shared with S3 destinations (:mod:`jupyter_staging.clouds.s3`).

Every GET carries ``IfMatch=<etag>`` (the ETag seen when the object was listed), so a part file never
mixes two versions of an object: when S3 answers ``412 PreconditionFailed`` the part file restarts on the
new version. :meth:`S3Source.fetch` reads an object on one stream, whatever its size: one GET, and after
an interruption one ranged GET from ``out.offset``. Parallel streams are the engine's
(:mod:`jupyter_staging.engine.streams`, ``StagingApp.streams_per_file``): each of its byte ranges
(:meth:`S3Source.fetch_range`) is a ranged GET with ``IfMatch``; a ``412`` there fails with
:class:`~jupyter_staging.errors.SourceChanged`. (boto3's transfer manager, used here before, held parts in
memory to write them in order: 4.5 CPU-s and 460 MiB for 1 GiB against 3 CPU-s on one stream.)

Checksums S3 states (``ChecksumSHA256`` of an object uploaded with ``ChecksumAlgorithm="SHA256"``, asked
for with ``ChecksumMode="ENABLED"``; a single-part ETag as MD5) fill ``SourceItem.checksums``
(:func:`~jupyter_staging.clouds.s3.stated_checksums`): from the HEAD of a single object, from the GET of a
whole object, and from one HEAD before a ranged (resumed) download of a listed object. botocore
also checks a whole-object GET against its ``ChecksumSHA256`` as it streams.
"""

from __future__ import annotations

from typing import Any

from jupyter_staging.clouds.http import describe_error
from jupyter_staging.clouds.s3 import (
    TRANSIENT_ERRORS,
    ObjectChanged,
    S3Errors,
    ServerBusy,
    parse_s3_uri,
    shared_s3_client,
    stated_checksums,
)
from jupyter_staging.errors import ChecksumMismatch, SourceChanged, SourceNotFound, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.base import (
    RangeOut,
    ResumeBudget,
    ShortRange,
    Source,
    SourceItem,
    check_range,
    content_type_of,
    listed_name,
    object_or_prefix,
    pump_range,
    resume_range,
    safe_filename,
    shutdown_of,
)
from jupyter_staging.sources.pumping import pump

#: Bytes read from a GET body at a time.
S3_BLOCK = 1 << 20
#: Times the object may change under one fetch before it fails with ``source_changed``.
MAX_RESTARTS = 3
#: What :meth:`S3Source.fetch_range` continues after, from the last byte written.
RANGE_RESUMABLE: tuple[type[BaseException], ...] = (ShortRange, ServerBusy, *TRANSIENT_ERRORS)


class S3Source(Source):
    """``s3://bucket/key`` (one object) or ``s3://bucket/prefix/`` (every object below the prefix).

    A key without a trailing slash that is not an object but is a prefix is treated as the prefix.
    Item names are relative to the prefix (POSIX paths, made safe file names by
    :func:`~jupyter_staging.sources.base.listed_name`); keys ending in ``/`` (folder markers) and keys
    with empty, ``.``/``..`` or hidden (dot) components are skipped (:attr:`Source.skipped`: the job says so),
    but for a Zarr store's metadata files (``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata``).
    """

    default_method = "download"
    methods = ("download",)

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.bucket, self.key = parse_s3_uri(uri)

    def client(self) -> Any:
        """The S3 client of this process for the current AWS settings
        (:func:`~jupyter_staging.clouds.s3.shared_s3_client`): listing, fetching and every stream reading
        ranges share it (boto3 clients are thread-safe; building one costs 0.15-0.3 CPU-s here, more than
        a HEAD and the GETs of a small object together)."""
        return shared_s3_client()

    # -- listing -----------------------------------------------------------------------------------

    def list_items(self) -> list[SourceItem]:
        """The object, or the objects below the prefix, with size and ETag.

        Raises :class:`SourceNotFound` (code ``source_not_found`` for a missing object, prefix or bucket,
        ``source_forbidden`` when access is denied or no credentials are found) and
        :class:`TransferFailed` for other S3 or network errors.
        """
        client = self.client()

        def head() -> SourceItem | None:
            try:
                with S3Errors(self.uri, self.bucket, "list"):
                    found = client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
            except SourceNotFound as exc:
                if exc.code != "source_not_found":
                    raise
                return None
            return self._item(self.key, safe_filename(self.key.rsplit("/", 1)[-1]), found)

        return object_or_prefix(self.uri, self.key, head, lambda prefix: self._list(client, prefix), "object")

    def _list(self, client: Any, prefix: str) -> list[SourceItem]:
        items = []
        self.skipped = []
        with S3Errors(f"s3://{self.bucket}/{prefix}", self.bucket, "list"):
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    name = listed_name(key[len(prefix) :])
                    if name is not None:
                        items.append(self._item(key, name, obj))
                    else:
                        self.skipped.append(key[len(prefix) :])
        return items

    def _item(self, key: str, name: str, meta: dict[str, Any]) -> SourceItem:
        """An item from a ``head_object`` answer or a ``list_objects_v2`` entry, with the checksums it
        states (:func:`~jupyter_staging.clouds.s3.stated_checksums`)."""
        size = int(meta["ContentLength"] if "ContentLength" in meta else meta["Size"])
        modified = meta.get("LastModified")
        return SourceItem(
            name=name,
            size=size,
            locator=f"s3://{self.bucket}/{key}",
            validator={
                "etag": meta.get("ETag"),
                "size": size,
                "last_modified": modified.isoformat() if modified is not None else None,
            },
            content_type=meta.get("ContentType") or content_type_of(name),
            checksums=stated_checksums(meta),
        )

    # -- byte ranges -------------------------------------------------------------------------------

    def ask_checksums(self, item: SourceItem) -> None:
        """One ``HeadObject`` with ``ChecksumMode=ENABLED``, ``IfMatch=<listed ETag>``, for an item whose
        listing stated no checksum (a ``list_objects_v2`` entry never does): the checksums it states (see
        :func:`~jupyter_staging.clouds.s3.stated_checksums`) are added to ``item.checksums`` (see
        :meth:`Source.ask_checksums`). Raises :class:`SourceChanged` (``412``: another ETag),
        :class:`SourceNotFound`, :class:`TransferFailed`."""
        if item.checksums:
            return
        bucket, key = parse_s3_uri(item.locator)
        try:
            with S3Errors(item.locator, bucket, "list"):
                self._head_checksums(self.client(), bucket, key, item)
        except ObjectChanged:
            raise _changed(item) from None

    def supports_ranges(self, item: SourceItem) -> bool:
        """True when the size and the ETag (what every ranged GET is conditional on) are known."""
        return item.size is not None and bool(item.validator.get("etag"))

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Write bytes ``[start, start + length)`` of the object at the same offsets of ``fd`` (see
        :meth:`Source.fetch_range`): ``GetObject`` with ``Range=bytes=a-b``, ``IfMatch=<listed ETag>``
        and ``VersionId`` when the item names one. A broken body continues after its last byte, up to
        :data:`~jupyter_staging.sources.base.MAX_RESUMES` fruitless attempts in a row.

        Raises :class:`SourceChanged` (``412 PreconditionFailed``: another ETag; or another size in
        ``ContentRange``), :class:`TransferFailed` (no ETag or size listed, another range sent, lasting
        errors), :class:`SourceNotFound`, :class:`~jupyter_staging.errors.JobInterrupted`,
        :class:`ValueError` (a range outside ``item``).
        """
        check_range(item, start, length)
        if not self.supports_ranges(item):
            raise TransferFailed(f"{item.name}: {item.locator} has no ETag or size to read ranges of")
        bucket, key = parse_s3_uri(item.locator)
        client = self.client()

        def attempt(out: RangeOut) -> None:
            try:
                with S3Errors(item.locator, bucket, "fetch"):
                    self._get_range(client, bucket, key, item, out)
            except ObjectChanged:
                raise _changed(item) from None

        out = RangeOut(fd, start, length, control)
        return resume_range(item, item.locator, out, attempt, RANGE_RESUMABLE, describe_error)

    @staticmethod
    def _get_range(client: Any, bucket: str, key: str, item: SourceItem, out: RangeOut) -> None:
        """One conditional GET of the rest of ``out``'s range, checked and written."""
        first, last = out.position, out.start + out.length - 1
        etag = item.validator["etag"]
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "Range": f"bytes={first}-{last}",
            "IfMatch": etag,
        }
        if item.validator.get("version_id"):
            kwargs["VersionId"] = item.validator["version_id"]
        resp = client.get_object(**kwargs)
        body = resp["Body"]
        try:
            sent = str(resp.get("ContentRange") or "")
            if not sent:
                raise TransferFailed(f"{item.locator}: the store ignored the range (sent the whole object)")
            if not sent.endswith(f"/{item.size}") or resp.get("ETag", etag) != etag:
                raise SourceChanged(f"{item.locator} changed since it was listed (now {sent})")
            if not sent.startswith(f"bytes {first}-{last}/"):
                raise TransferFailed(f"{item.locator}: S3 sent another range than bytes {first}-{last}")
            with out.control.aborting(shutdown_of(body)):
                pump_range(lambda: body.read(S3_BLOCK), out)
        finally:
            body.close()

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Download the object ``item`` into ``out``, continuing from ``out.offset``.

        Every GET is conditional on ``item.validator["etag"]``; when the object changed, ``out``
        restarts and ``item.size`` / ``item.validator`` / ``item.checksums`` are updated to the new
        version (so ``out.commit(item.size, checksums=item.checksums)`` checks the right bytes). Raises
        :class:`SourceNotFound`, :class:`TransferFailed`, :class:`~jupyter_staging.errors.SourceChanged`
        (the object kept changing), :class:`~jupyter_staging.errors.ChecksumMismatch` (botocore found
        the body does not match ``ChecksumSHA256``; ``out`` is emptied) or
        :class:`~jupyter_staging.errors.JobInterrupted`.
        """
        bucket, key = parse_s3_uri(item.locator)
        client = self.client()
        resumable: tuple[type[BaseException], ...] = (ServerBusy, *TRANSIENT_ERRORS)
        budget = ResumeBudget(item, item.locator, control)
        restarts = 0
        while True:
            control.check()
            before = out.offset
            try:
                with S3Errors(item.locator, bucket, "fetch"):
                    self._fetch_once(client, bucket, key, item, out, control)
                return
            except ChecksumMismatch:
                out.restart()  # never keep bytes known to be wrong for a resume
                raise
            except ObjectChanged:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise SourceChanged(f"{item.locator} kept changing during the download") from None
                control.log("warning", f"{item.name}: the object changed (new ETag); restarting it")
                out.restart()
                with S3Errors(item.locator, bucket, "fetch"):
                    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
                fresh = self._item(key, item.name, head)
                item.size, item.validator, item.checksums = fresh.size, fresh.validator, fresh.checksums
            except resumable as exc:
                budget.broken(out, before, describe_error(exc))

    def _fetch_once(
        self, client: Any, bucket: str, key: str, item: SourceItem, out: PartFile, control: JobControl
    ) -> None:
        if item.size is not None and out.offset > item.size:
            control.log("warning", f"{item.name}: partial file is longer than the object; restarting it")
            out.restart()
        if out.offset and out.offset == item.size:
            # Complete already; make sure it is still the same object (and learn its checksums).
            self._head_checksums(client, bucket, key, item)
            return
        if out.offset and "sha256" not in item.checksums:
            # A ranged GET states no ChecksumSHA256: ask once for the whole object's.
            self._head_checksums(client, bucket, key, item)
        self._stream(client, bucket, key, item, out, control)

    def _stream(
        self, client: Any, bucket: str, key: str, item: SourceItem, out: PartFile, control: JobControl
    ) -> None:
        """One GET (ranged when ``out.offset`` > 0) read in :data:`S3_BLOCK` blocks."""
        etag = item.validator.get("etag")
        kwargs: dict[str, Any] = {
            "Bucket": bucket,
            "Key": key,
            "ChecksumMode": "ENABLED",
            **self._if_match(etag),
        }
        start = out.offset
        if start:
            kwargs["Range"] = f"bytes={start}-"
        resp = client.get_object(**kwargs)
        body = resp["Body"]
        try:
            content_range = resp.get("ContentRange")
            if start and not (content_range and content_range.startswith(f"bytes {start}-")):
                # The store ignored the range: take the whole object from byte 0.
                control.log("warning", f"{item.name}: the store sent the whole object; restarting it")
                out.restart()
            stated = stated_checksums(resp)
            # A ranged answer may state a part's checksum as the object's (botocore#3346); its ETag is the
            # object's.
            if start:
                stated = {a: v for a, v in stated.items() if a == "md5"}
            if not etag or item.size is None:
                item.size = int(resp["ContentLength"]) + (start if content_range else 0)
                item.validator = {**item.validator, "etag": resp.get("ETag"), "size": item.size}
                item.checksums = stated  # unconditional GET: what this answer states is all we know
            else:
                item.checksums = {**item.checksums, **stated}  # the same version (IfMatch)
            with control.aborting(shutdown_of(body)):
                pump(lambda: body.read(S3_BLOCK), out, control)
        finally:
            body.close()

    def _head_checksums(self, client: Any, bucket: str, key: str, item: SourceItem) -> None:
        """A HEAD conditional on ``item``'s ETag (raises on a changed object) adding the checksums it
        states to ``item.checksums``."""
        etag = item.validator.get("etag")
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **self._if_match(etag))
        item.checksums = {**item.checksums, **stated_checksums(head)}

    @staticmethod
    def _if_match(etag: str | None) -> dict[str, str]:
        """``{"IfMatch": etag}`` (the request only succeeds on this version), ``{}`` without an ETag."""
        return {"IfMatch": etag} if etag else {}


def _changed(item: SourceItem) -> SourceChanged:
    """The error for an object whose ETag is no longer the one listed (``412`` to ``IfMatch``)."""
    return SourceChanged(f"{item.locator} changed since it was listed (new ETag)")
