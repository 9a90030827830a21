"""Azure Blob Storage blobs and prefixes, downloaded resumably (the optional ``azure`` extra).

Two URI forms:

- ``az://container/path``: the account is the one configured in the environment;
- ``azure://account/container/path``: the account is named.

``path`` is one blob, or a prefix (a trailing ``/``, or a name that is not a blob but has blobs below
it); an empty path is the whole container.

The account and its credentials come from the environment, as the Azure CLI reads them:

- ``AZURE_STORAGE_CONNECTION_STRING`` (``AccountName=...;AccountKey=...`` or ``SharedAccessSignature=...``;
  ``BlobEndpoint=`` for an emulator such as Azurite or a sovereign cloud), otherwise
- ``AZURE_STORAGE_ACCOUNT`` (or ``AZURE_STORAGE_ACCOUNT_URL``, e.g. ``https://acct.blob.core.windows.net``)
  with ``AZURE_STORAGE_KEY`` (a shared key) or ``AZURE_STORAGE_SAS_TOKEN`` (a SAS), or neither for public
  containers.

An ``azure://account/...`` URI whose account is none of the configured ones is read anonymously from
``https://<account>.blob.core.windows.net`` (public containers only): credentials are never sent to an
account they were not configured for.

Every GET carries ``If-Match: <etag>`` (the ETag seen when the blob was listed), so a part file never
mixes two versions of a blob: when the service answers ``412 ConditionNotMet`` the part file restarts on
the new version. A download reads 4 MiB ranges in order and continues an interrupted attempt with a
ranged GET from ``out.offset``.

Messages name blobs by their ``az://`` URI and never hold a key, a SAS or a connection string.
"""

from __future__ import annotations

import mimetypes
import os
import re
import threading
from typing import Any, Literal

from jupyter_staging.errors import InvalidRequest, SourceChanged, SourceNotFound, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.base import ResumeBudget, Source, SourceItem, object_or_prefix
from jupyter_staging.sources.http import describe_error, pump, safe_filename

#: What to install when ``azure-storage-blob`` is missing.
INSTALL_HINT = 'pip install "jupyter_staging[azure]"'

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
ENV_KEY = "AZURE_STORAGE_KEY"
ENV_SAS = "AZURE_STORAGE_SAS_TOKEN"  # noqa: S105 - a variable name, not a secret
#: Environment variables whose values are secrets (never printed or logged).
SECRET_ENV = (ENV_CONNECTION_STRING, ENV_KEY, ENV_SAS)

#: Bytes per ranged GET (the SDK's first GET and every following one), so memory stays bounded and a
#: pause is noticed within one range.
AZURE_BLOCK = 4 * 1024 * 1024
#: Times the blob may change under one fetch before it fails with ``source_changed``.
MAX_RESTARTS = 3
#: (connect, read) timeouts of each request, seconds.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60

_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^(\$root|\$web|\$logs|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_SCHEMES = ("az", "azure")

_FORBIDDEN_STATUS = frozenset({401, 403})
_BUSY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def require_sdk() -> None:
    """Raise :class:`InvalidRequest` (code ``missing_extra``) unless ``azure-storage-blob`` imports."""
    try:
        import azure.storage.blob  # noqa: F401
    except ImportError:
        raise InvalidRequest(
            f"Azure Blob Storage needs the azure extra, which is not installed: {INSTALL_HINT}",
            code="missing_extra",
        ) from None


def parse_azure_uri(uri: str) -> tuple[str | None, str, str]:
    """``az://container/path`` -> ``(None, container, path)``;
    ``azure://account/container/path`` -> ``(account, container, path)``.

    ``path`` may be ``""`` (the whole container) or end in ``/`` (a prefix). Raises
    :class:`InvalidRequest` (code ``invalid_request``) for another scheme or an invalid account or
    container name (Azure's naming rules: lowercase letters, digits and single hyphens).
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise InvalidRequest(f"not an az:// or azure:// URI: {uri!r}")
    if "\x00" in uri:
        raise InvalidRequest("an Azure URI must not contain NUL")
    account: str | None = None
    if scheme == "azure":
        account, _, rest = rest.partition("/")
        if not _ACCOUNT_RE.match(account):
            raise InvalidRequest(
                f"{uri!r} must look like azure://account/container/path "
                "(account: 3-24 lowercase letters and digits)"
            )
    container, _, path = rest.partition("/")
    if not _CONTAINER_RE.match(container):
        form = "azure://account/container/path" if account else "az://container/path"
        raise InvalidRequest(
            f"{uri!r} must look like {form} (container: 3-63 lowercase letters, digits and hyphens)"
        )
    return account, container, path


def azure_configured() -> bool:
    """Whether the environment names an Azure storage account (see the module's docstring)."""
    return any(os.environ.get(name) for name in (ENV_CONNECTION_STRING, ENV_ACCOUNT, ENV_ACCOUNT_URL))


def blob_service_client(
    account: str | None = None, *, retries: int = 3, anonymous_ok: bool = True, **client_options: Any
) -> Any:
    """A :class:`azure.storage.blob.BlobServiceClient` for ``account`` (None: the configured one).

    Configured from the environment as the module's docstring says, with :data:`AZURE_BLOCK` ranges,
    :data:`CONNECT_TIMEOUT` / :data:`READ_TIMEOUT` and ``retries`` retries, 0-2 s apart, of
    connection errors and 5xx answers; ``client_options`` (the SDK's client keywords, e.g.
    ``max_block_size``) are added. Without ``anonymous_ok`` an account none of the credentials are for
    is refused rather than read anonymously (a destination needs credentials to write).

    Raises :class:`InvalidRequest` (``missing_extra``) without the SDK, and :class:`SourceNotFound`
    (code ``source_forbidden``) when no account is configured for ``az://`` or the configuration is
    malformed.
    """
    require_sdk()
    from azure.storage.blob import BlobServiceClient, LinearRetry

    options: dict[str, Any] = {
        "max_single_get_size": AZURE_BLOCK,
        "max_chunk_get_size": AZURE_BLOCK,
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        # The SDK's default waits 15 s, 18 s, 24 s: too long for a job's listing. Fetches add their own
        # resumes with back-off on top (MAX_RESUMES).
        "retry_policy": LinearRetry(backoff=1, retry_total=retries, random_jitter_range=1),
        **client_options,
    }
    wanted = account.lower() if account else None

    conn = os.environ.get(ENV_CONNECTION_STRING)
    if conn:
        try:
            client = BlobServiceClient.from_connection_string(conn, **options)
        except ValueError:
            raise SourceNotFound(
                f"{ENV_CONNECTION_STRING} is malformed (expected AccountName=...;AccountKey=... or "
                "a BlobEndpoint with a SharedAccessSignature)",
                code="source_forbidden",
            ) from None
        if wanted is None or (client.account_name or "").lower() == wanted:
            return client

    url = os.environ.get(ENV_ACCOUNT_URL)
    name = os.environ.get(ENV_ACCOUNT)
    if url or name:
        url = url or f"https://{name}.blob.core.windows.net"
        credential: Any = None
        key, sas = os.environ.get(ENV_KEY), os.environ.get(ENV_SAS)
        try:
            client = BlobServiceClient(url, **options)
            if key:
                credential = {"account_name": name or client.account_name, "account_key": key}
            elif sas:
                credential = sas
            if wanted is None or (client.account_name or "").lower() == wanted:
                return BlobServiceClient(url, credential=credential, **options) if credential else client
        except ValueError:
            raise SourceNotFound(
                f"{ENV_ACCOUNT_URL} / {ENV_ACCOUNT} do not give a valid account URL",
                code="source_forbidden",
            ) from None

    if wanted is None:
        raise SourceNotFound(
            f"no Azure storage account is configured for az:// URIs: set {ENV_CONNECTION_STRING}, "
            f"or {ENV_ACCOUNT} with {ENV_KEY} or {ENV_SAS}",
            code="source_forbidden",
        )
    if not anonymous_ok:
        raise SourceNotFound(
            f"no credentials are configured for the Azure storage account {wanted!r}: set "
            f"{ENV_CONNECTION_STRING}, or {ENV_ACCOUNT} with {ENV_KEY} or {ENV_SAS}, for that account",
            code="source_forbidden",
        )
    # An account none of the credentials are for: anonymous access (public containers only).
    return BlobServiceClient(f"https://{wanted}.blob.core.windows.net", **options)


def quoted_etag(etag: str | None) -> str | None:
    """``etag`` in its quoted HTTP form: blob listings give ``0x8D...``, headers ``"0x8D..."``."""
    if not etag or etag.startswith(('"', "W/")):
        return etag
    return f'"{etag}"'


def error_code(exc: BaseException) -> str:
    """The Azure error code of ``exc`` (``"BlobNotFound"``, ``"AuthenticationFailed"``...) or ``""``.

    The SDK gives a ``StorageErrorCode`` enum or a plain string; this is always the plain value.
    """
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _busy(exc: BaseException) -> bool:
    return getattr(exc, "status_code", None) in _BUSY_STATUS


class _BlobChanged(Exception):  # noqa: N818 - internal control flow
    """The blob no longer has the ETag the part file was started with."""


class _Transient(Exception):  # noqa: N818 - internal control flow
    """The connection broke or the service was busy after the SDK's own retries."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(describe_azure_error(exc))


class AzureSource(Source):
    """``az://container/blob`` or ``azure://account/container/blob`` (one blob), or a prefix of them.

    A path without a trailing slash that is not a blob but is a prefix is treated as the prefix.
    Item names are relative to the prefix (POSIX paths); names ending in ``/``, folder markers of
    hierarchical-namespace accounts (``hdi_isfolder``) and names with empty, ``.``/``..`` or hidden
    (dot) components are skipped.

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
        from azure.core.exceptions import ResourceNotFoundError

        service = self.service()

        def head() -> SourceItem | None:
            with self._translate_errors(self.uri, listing=True):
                try:
                    props = service.get_blob_client(self.container, self.path).get_blob_properties()
                except ResourceNotFoundError as exc:
                    if error_code(exc) == "ContainerNotFound":
                        raise
                    return None  # not a blob: perhaps a prefix
            return self._item(self.path, safe_filename(self.path.rsplit("/", 1)[-1]), props)

        return object_or_prefix(self.uri, self.path, head, lambda prefix: self._list(service, prefix), "blob")

    def _list(self, service: Any, prefix: str) -> list[SourceItem]:
        items = []
        container = service.get_container_client(self.container)
        with self._translate_errors(self.locator(prefix), listing=True):
            for blob in container.list_blobs(name_starts_with=prefix or None, include=["metadata"]):
                name = blob.name
                if name.endswith("/") or (blob.metadata or {}).get("hdi_isfolder") == "true":
                    continue
                rel = name[len(prefix) :]
                parts = rel.split("/")
                if any(p in ("", ".", "..") or p.startswith(".") or "\x00" in p for p in parts):
                    continue
                items.append(self._item(name, rel, blob))
        return items

    def _item(self, blob: str, name: str, props: Any) -> SourceItem:
        """An item from a ``get_blob_properties`` answer or a ``list_blobs`` entry."""
        size = int(props.size)
        modified = props.last_modified
        settings = props.content_settings
        stored_type = getattr(settings, "content_type", None) if settings is not None else None
        if not stored_type or stored_type == "application/octet-stream":
            # Azure's default for blobs uploaded without a type: the name says more.
            stored_type = mimetypes.guess_type(name)[0] or stored_type
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
        )

    def _translate_errors(self, what: str, *, listing: bool = False) -> _ErrorTranslator:
        return _ErrorTranslator(what, self.container, listing=listing)

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Download the blob ``item`` into ``out``, continuing from ``out.offset``.

        Every GET is conditional on ``item.validator["etag"]``; when the blob changed, ``out`` restarts
        and ``item.size`` / ``item.validator`` are updated to the new version (so ``out.commit(item.size)``
        checks the right length). Raises :class:`SourceNotFound`, :class:`TransferFailed`,
        :class:`~jupyter_staging.errors.SourceChanged` (the blob kept changing) or
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
                with self._translate_errors(item.locator):
                    self._fetch_once(client, item, out, control)
                return
            except _BlobChanged:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise SourceChanged(f"{item.locator} kept changing during the download") from None
                control.log("warning", f"{item.name}: the blob changed (new ETag); restarting it")
                out.restart()
                with self._translate_errors(item.locator, listing=True):
                    props = client.get_blob_properties()
                fresh = self._item(blob, item.name, props)
                item.size, item.validator = fresh.size, fresh.validator
            except _Transient as exc:
                budget.broken(out, before, str(exc))

    def _fetch_once(self, client: Any, item: SourceItem, out: PartFile, control: JobControl) -> None:
        from azure.core import MatchConditions

        etag = item.validator.get("etag")
        condition: dict[str, Any] = (
            {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        )
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
        chunks = downloader.chunks()
        pump(lambda: next(chunks, b""), out, control)


class _ErrorTranslator:
    """Context manager turning Azure SDK errors into staging errors (messages name the URI, never a
    secret).

    While fetching (``listing=False``) a changed blob, a broken connection and a busy service become
    the internal signals :meth:`AzureSource.fetch` acts on; while listing they are
    :class:`TransferFailed`.
    """

    def __init__(self, what: str, container: str, *, listing: bool = False) -> None:
        self.what = what
        self.container = container
        self.listing = listing

    def __enter__(self) -> _ErrorTranslator:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        if not isinstance(exc, AzureError):
            if not self.listing and isinstance(exc, (ConnectionError, TimeoutError)):
                raise _Transient(exc) from None
            return False
        if not isinstance(exc, HttpResponseError) or _busy(exc):
            # ServiceRequestError / ServiceResponseError: no (usable) answer; or 5xx after retries.
            if self.listing:
                raise TransferFailed(
                    f"cannot reach Azure Blob Storage for {self.what}: {describe_azure_error(exc)}"
                ) from None
            raise _Transient(exc) from None
        code = error_code(exc)
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ResourceModifiedError) or status == 412 or code == "ConditionNotMet":
            if self.listing:
                raise TransferFailed(f"{self.what} changed while it was read") from None
            raise _BlobChanged from None
        if code == "ContainerNotFound":
            raise SourceNotFound(f"Azure container {self.container!r} does not exist") from None
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            raise SourceNotFound(f"{self.what} was not found") from None
        if isinstance(exc, ClientAuthenticationError) or status in _FORBIDDEN_STATUS:
            raise SourceNotFound(
                f"access to {self.what} was refused ({code or status})", code="source_forbidden"
            ) from None
        raise TransferFailed(f"Azure error {code or status or 'unknown'} for {self.what}") from None


def describe_azure_error(exc: BaseException) -> str:
    """A short, secret-free description of an Azure SDK error (the innermost network error)."""
    inner = getattr(exc, "inner_exception", None)
    return describe_error(inner if isinstance(inner, BaseException) else exc)
