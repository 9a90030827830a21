"""Azure Blob Storage blobs and prefixes, downloaded resumably (the optional ``azure`` extra).

``az://container/path`` (the configured account) or ``azure://account/container/path``; ``path`` is one
blob, or a prefix (a trailing ``/``, or a name that is not a blob but has blobs below it); an empty path
is the whole container. Accounts, credentials, clients and error translation are shared with Azure
destinations (:mod:`jupyter_staging.clouds.azure`, whose docstring lists the environment variables read).

Every GET carries ``If-Match: <etag>`` (the ETag seen when the blob was listed), so a part file never
mixes two versions of a blob: when the service answers ``412 ConditionNotMet`` the part file restarts on
the new version. A download reads 4 MiB ranges in order and continues an interrupted attempt with a
ranged GET from ``out.offset``. The blob's ``Content-MD5``, when it has one, fills
``SourceItem.checksums`` (:func:`~jupyter_staging.clouds.azure.stated_checksums`). One byte range
(:meth:`AzureSource.fetch_range`) is a conditional ``download_blob(offset=, length=)``; a ``412`` there
fails with :class:`~jupyter_staging.errors.SourceChanged`.

Messages name blobs by their ``az://`` URI and never hold a key, a SAS or a connection string.
"""

from __future__ import annotations

import threading
from typing import Any

from jupyter_staging.clouds.azure import (
    AzureErrors,
    BlobChanged,
    Transient,
    blob_service_client,
    if_match,
    parse_azure_uri,
    quoted_etag,
    require_sdk,
    stated_checksums,
)
from jupyter_staging.errors import InvalidRequest, SourceChanged, TransferFailed
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
)
from jupyter_staging.sources.pumping import pump

#: Times the blob may change under one fetch before it fails with ``source_changed``.
MAX_RESTARTS = 3


class AzureSource(Source):
    """``az://container/blob`` or ``azure://account/container/blob`` (one blob), or a prefix of them.

    A path without a trailing slash that is not a blob but is a prefix is treated as the prefix.
    Item names are relative to the prefix (POSIX paths, made safe file names by
    :func:`~jupyter_staging.sources.base.listed_name`); names ending in ``/``, folder markers of
    hierarchical-namespace accounts (``hdi_isfolder``) and names with empty, ``.``/``..`` or hidden
    (dot) components are skipped, but for a Zarr store's metadata files (``.zarray``, ``.zattrs``, ...).

    Raises :class:`InvalidRequest` at construction for a malformed URI, or with code ``missing_extra``
    when ``azure-storage-blob`` is not installed.
    """

    default_method = "download"
    methods = ("download",)

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.account, self.container, self.path = parse_azure_uri(uri)
        require_sdk()
        self._local = threading.local()

    def service(self) -> Any:
        """This thread's :class:`~azure.storage.blob.BlobServiceClient` (see :func:`blob_service_client`)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = blob_service_client(self.account)
        return client

    def locator(self, blob: str) -> str:
        """The URI of ``blob`` in this source's container, in the source's own form."""
        account = f"{self.account}/" if self.account else ""
        scheme = "azure" if self.account else "az"
        return f"{scheme}://{account}{self.container}/{blob}"

    def _blob_name(self, locator: str) -> str:
        account, container, blob = parse_azure_uri(locator)
        if (account, container) != (self.account, self.container):
            raise InvalidRequest(f"{locator!r} is not in {self.uri!r}")
        return blob

    # -- listing -----------------------------------------------------------------------------------

    def list_items(self) -> list[SourceItem]:
        """The blob, or the blobs below the prefix, with size and ETag.

        Raises :class:`SourceNotFound` (code ``source_not_found`` for a missing blob, prefix or
        container; ``source_forbidden`` when access is refused or no account is configured) and
        :class:`TransferFailed` for other Azure or network errors.
        """
        service = self.service()

        def head() -> SourceItem | None:
            with AzureErrors(self.uri, self.container, "list", missing_ok=True) as errors:
                props = service.get_blob_client(self.container, self.path).get_blob_properties()
            if errors.missing:
                return None  # not a blob, perhaps a prefix (the listing reports a missing container)
            return self._item(self.path, safe_filename(self.path.rsplit("/", 1)[-1]), props)

        return object_or_prefix(self.uri, self.path, head, lambda prefix: self._list(service, prefix), "blob")

    def _list(self, service: Any, prefix: str) -> list[SourceItem]:
        items = []
        self.skipped = []
        container = service.get_container_client(self.container)
        with AzureErrors(self.locator(prefix), self.container, "list"):
            for blob in container.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
                name = blob.name
                if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                rel = listed_name(name[len(prefix) :])
                if rel is not None:
                    items.append(self._item(name, rel, blob))
                else:
                    self.skipped.append(name[len(prefix) :])
        return items

    def _item(self, blob: str, name: str, props: Any) -> SourceItem:
        """An item from a ``get_blob_properties`` answer or a ``list_blobs`` entry."""
        size = int(props.size)
        modified = props.last_modified
        settings = props.content_settings
        stored_type = getattr(settings, "content_type", None) if settings is not None else None
        if not stored_type or stored_type == "application/octet-stream":
            # Azure's default for blobs uploaded without a type: the name says more.
            stored_type = content_type_of(name) or stored_type
        return SourceItem(
            name=name,
            size=size,
            locator=self.locator(blob),
            validator={
                "etag": quoted_etag(props.etag),
                "size": size,
                "last_modified": modified.isoformat() if modified is not None else None,
            },
            content_type=stored_type,
            checksums=stated_checksums(props),
        )

    # -- byte ranges -------------------------------------------------------------------------------

    def supports_ranges(self, item: SourceItem) -> bool:
        """True when the size and the ETag (what every ranged GET is conditional on) are known."""
        return item.size is not None and bool(item.validator.get("etag"))

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Write bytes ``[start, start + length)`` of the blob at the same offsets of ``fd`` (see
        :meth:`Source.fetch_range`): ``download_blob(offset=, length=)`` conditional on the listed ETag
        (``If-Match``, ``MatchConditions.IfNotModified``), read in the SDK's chunks. A broken download
        continues after its last byte, up to :data:`~jupyter_staging.sources.base.MAX_RESUMES` fruitless
        attempts in a row.

        Raises :class:`SourceChanged` (``412 ConditionNotMet``: another ETag; or another size),
        :class:`TransferFailed` (no ETag or size listed, lasting errors), :class:`SourceNotFound`,
        :class:`~jupyter_staging.errors.JobInterrupted`, :class:`ValueError` (a range outside ``item``).
        """
        check_range(item, start, length)
        if not self.supports_ranges(item):
            raise TransferFailed(f"{item.name}: {item.locator} has no ETag or size to read ranges of")
        client = self.service().get_blob_client(self.container, self._blob_name(item.locator))

        def attempt(out: RangeOut) -> None:
            try:
                with AzureErrors(item.locator, self.container, "fetch"):
                    self._get_range(client, item, out)
            except BlobChanged:
                raise SourceChanged(f"{item.locator} changed since it was listed (new ETag)") from None

        out = RangeOut(fd, start, length, control)
        return resume_range(item, item.locator, out, attempt, (Transient, ShortRange))

    @staticmethod
    def _get_range(client: Any, item: SourceItem, out: RangeOut) -> None:
        """One download of the rest of ``out``'s range, conditional on the listed ETag, written."""
        downloader = client.download_blob(
            offset=out.position,
            length=out.remaining,
            max_concurrency=1,
            decompress=False,
            **if_match(item.validator["etag"]),
        )
        sent = str(getattr(downloader.properties, "content_range", None) or "")
        if not sent.endswith(f"/{item.size}"):  # "bytes a-b/<blob size>"; If-Match keeps it the same
            raise SourceChanged(f"{item.locator} changed since it was listed (now {sent or 'no range'})")
        chunks = downloader.chunks()
        pump_range(lambda: next(chunks, b""), out)

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Download the blob ``item`` into ``out``, continuing from ``out.offset``.

        Every GET is conditional on ``item.validator["etag"]``; when the blob changed, ``out`` restarts
        and ``item.size`` / ``item.validator`` / ``item.checksums`` are updated to the new version (so
        ``out.commit(item.size, checksums=item.checksums)`` checks the right bytes). Raises
        :class:`SourceNotFound`, :class:`TransferFailed`, :class:`~jupyter_staging.errors.SourceChanged`
        (the blob kept changing) or
        :class:`~jupyter_staging.errors.JobInterrupted`.
        """
        blob = self._blob_name(item.locator)
        client = self.service().get_blob_client(self.container, blob)
        budget = ResumeBudget(item, item.locator, control)
        restarts = 0
        while True:
            control.check()
            before = out.offset
            try:
                with AzureErrors(item.locator, self.container, "fetch"):
                    self._fetch_once(client, item, out, control)
                return
            except BlobChanged:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise SourceChanged(f"{item.locator} kept changing during the download") from None
                control.log("warning", f"{item.name}: the blob changed (new ETag); restarting it")
                out.restart()
                with AzureErrors(item.locator, self.container, "list"):
                    props = client.get_blob_properties()
                fresh = self._item(blob, item.name, props)
                item.size, item.validator, item.checksums = fresh.size, fresh.validator, fresh.checksums
            except Transient as exc:
                budget.broken(out, before, str(exc))

    def _fetch_once(self, client: Any, item: SourceItem, out: PartFile, control: JobControl) -> None:
        etag = item.validator.get("etag")
        condition = if_match(etag)
        if item.size is not None and out.offset > item.size:
            control.log("warning", f"{item.name}: partial file is longer than the blob; restarting it")
            out.restart()
        if out.offset and out.offset == item.size:
            # Complete already; make sure it is still the same blob.
            client.get_blob_properties(**condition)
            return
        start = out.offset
        downloader = client.download_blob(
            offset=start or None, max_concurrency=1, decompress=False, **condition
        )
        if not etag or item.size is None:
            size = int(downloader.properties.size)
            item.size = size
            etag = quoted_etag(downloader.properties.etag)
            item.validator = {**item.validator, "etag": etag, "size": size}
            item.checksums = stated_checksums(downloader.properties)  # an unconditional GET: this version's
        else:
            item.checksums = {**item.checksums, **stated_checksums(downloader.properties)}  # same (If-Match)
        chunks = downloader.chunks()
        pump(lambda: next(chunks, b""), out, control)
