"""Azure Blob Storage as Azure sources and destinations both use it (the optional ``azure`` extra):
clients, URIs, SAS URLs and the one translation of SDK errors into staging errors.

Two URI forms:

- ``az://container/path``: the account is the one configured in the environment;
- ``azure://account/container/path``: the account is named.

The account and its credentials come from the environment, as the Azure CLI reads them:

- ``AZURE_STORAGE_CONNECTION_STRING`` (``AccountName=...;AccountKey=...`` or ``SharedAccessSignature=...``;
  ``BlobEndpoint=`` for an emulator such as Azurite or a sovereign cloud), otherwise
- ``AZURE_STORAGE_ACCOUNT`` (or ``AZURE_STORAGE_ACCOUNT_URL``, e.g. ``https://acct.blob.core.windows.net``)
  with ``AZURE_STORAGE_KEY`` (a shared key) or ``AZURE_STORAGE_SAS_TOKEN`` (a SAS), or neither for public
  containers.

An ``azure://account/...`` URI whose account is none of the configured ones is read anonymously from
``https://<account>.blob.core.windows.net`` (public containers only): credentials are never sent to an
account they were not configured for.

The SDK is imported only inside the functions that need it, so this package imports without the extra;
:func:`require_sdk` says what to install. Messages never hold a key, a SAS or a connection string.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from jupyter_staging.clouds.digests import bytes_to_hex
from jupyter_staging.clouds.http import describe_error
from jupyter_staging.errors import (
    InvalidRequest,
    JobInterrupted,
    SourceNotFound,
    StagingError,
    TransferFailed,
)

#: What to install when ``azure-storage-blob`` is missing.
INSTALL_HINT = 'pip install "jupyter_staging[azure]"'

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_ACCOUNT = "AZURE_STORAGE_ACCOUNT"
ENV_ACCOUNT_URL = "AZURE_STORAGE_ACCOUNT_URL"
ENV_KEY = "AZURE_STORAGE_KEY"
ENV_SAS = "AZURE_STORAGE_SAS_TOKEN"  # noqa: S105 - a variable name, not a secret
#: Environment variables whose values are secrets (never printed or logged).
SECRET_ENV = (ENV_CONNECTION_STRING, ENV_KEY, ENV_SAS)
#: URI schemes of Azure Blob Storage.
AZURE_SCHEMES = ("az", "azure")

#: Bytes per ranged GET (the SDK's first GET and every following one), so memory stays bounded and a
#: pause is noticed within one range.
AZURE_BLOCK = 4 * 1024 * 1024
#: (connect, read) timeouts of each request, seconds.
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60
#: A SAS starts this long before it is made, for clocks of the service a little behind ours.
SAS_CLOCK_SKEW = timedelta(minutes=5)

_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^(\$root|\$web|\$logs|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_FORBIDDEN_STATUS = frozenset({401, 403})
_BUSY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def require_sdk() -> None:
    """Raise :class:`InvalidRequest` (code ``missing_extra``) unless ``azure-storage-blob`` imports."""
    try:
        import azure.storage.blob  # noqa: F401 - optional extra: only checked for
    except ImportError:
        raise InvalidRequest(
            f"Azure Blob Storage needs the azure extra, which is not installed: {INSTALL_HINT}",
            code="missing_extra",
        ) from None


def is_azure_uri(uri: str | None) -> bool:
    """True for ``az://`` and ``azure://`` URIs."""
    return uri is not None and uri.split("://", 1)[0].lower() in AZURE_SCHEMES


def parse_azure_uri(uri: str) -> tuple[str | None, str, str]:
    """``az://container/path`` -> ``(None, container, path)``;
    ``azure://account/container/path`` -> ``(account, container, path)``.

    ``path`` may be ``""`` (the whole container) or end in ``/`` (a prefix). Raises
    :class:`InvalidRequest` (code ``invalid_request``) for another scheme or an invalid account or
    container name (Azure's naming rules: lowercase letters, digits and single hyphens).
    """
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in AZURE_SCHEMES:
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
    from azure.storage.blob import BlobServiceClient, LinearRetry  # optional extra

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
    client = _configured_client(BlobServiceClient, wanted, options)
    if client is not None:
        return client
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


def _configured_client(service_class: Any, wanted: str | None, options: dict[str, Any]) -> Any:
    """The client the environment configures, if it is for account ``wanted`` (None: any), else None."""
    conn = os.environ.get(ENV_CONNECTION_STRING)
    if conn:
        try:
            client = service_class.from_connection_string(conn, **options)
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
    if not (url or name):
        return None
    url = url or f"https://{name}.blob.core.windows.net"
    credential: Any = None
    key, sas = os.environ.get(ENV_KEY), os.environ.get(ENV_SAS)
    try:
        client = service_class(url, **options)
        if key:
            credential = {"account_name": name or client.account_name, "account_key": key}
        elif sas:
            credential = sas
        if wanted is None or (client.account_name or "").lower() == wanted:
            return service_class(url, credential=credential, **options) if credential else client
    except ValueError:
        raise SourceNotFound(
            f"{ENV_ACCOUNT_URL} / {ENV_ACCOUNT} do not give a valid account URL",
            code="source_forbidden",
        ) from None
    return None


def quoted_etag(etag: str | None) -> str | None:
    """``etag`` in its quoted HTTP form: blob listings give ``0x8D...``, headers ``"0x8D..."``."""
    if not etag or etag.startswith(('"', "W/")):
        return etag
    return f'"{etag}"'


def if_match(etag: str | None) -> dict[str, Any]:
    """SDK keywords making a request conditional on ``etag`` (``If-Match``); ``{}`` without one."""
    if not etag:
        return {}
    from azure.core import MatchConditions  # optional extra

    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def stated_checksums(props: Any) -> dict[str, str]:
    """The checksums Azure states for a whole blob, lower-case hex by algorithm: ``{"md5": ...}`` from
    its ``Content-MD5`` property (``props.content_settings.content_md5``, raw bytes; the service sets it
    on a single-request upload, an uploader may set it otherwise), else ``{}``. ``props``: a
    ``BlobProperties`` from ``get_blob_properties``, ``list_blobs`` or a download (where the SDK gives
    the stored ``x-ms-blob-content-md5`` for ranged GETs)."""
    settings = getattr(props, "content_settings", None)
    hexed = bytes_to_hex(getattr(settings, "content_md5", None), "md5")
    return {"md5": hexed} if hexed else {}


def content_settings(content_type: str) -> Any:
    """The SDK's ``ContentSettings`` giving a blob's ``Content-Type``."""
    from azure.storage.blob import ContentSettings  # optional extra

    return ContentSettings(content_type=content_type)


def read_sas_url(service: Any, container: str, name: str, seconds: int) -> tuple[str, datetime] | None:
    """A read-only service SAS URL of blob ``name``, valid ``seconds`` from now (and from
    :data:`SAS_CLOCK_SKEW` before), and when it expires (its ``se``, UTC). Made locally with the account
    key (an HMAC, no request); None when the client's credentials hold no account key (a SAS token, or
    none). The URL is a bearer credential until it expires: never log or store it."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas  # optional extra

    key = getattr(service.credential, "account_key", None)
    account = getattr(service.credential, "account_name", None) or service.account_name
    if not key or not account:
        return None
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expiry = now + timedelta(seconds=seconds)
    sas = generate_blob_sas(
        account,
        container,
        name,
        account_key=key,
        permission=BlobSasPermissions(read=True),
        start=now - SAS_CLOCK_SKEW,
        expiry=expiry,
    )
    url = str(service.get_blob_client(container, name).url).split("?", 1)[0]
    return f"{url}?{sas}", expiry


def delete_blobs(container: Any, names: list[str]) -> list[int]:
    """Delete the blobs ``names`` of the ``ContainerClient`` ``container`` with their snapshots;
    returns each one's status (202 deleted, 404 gone already, else the failure's): one blob batch
    request, or one request per blob where the service does not take batches (Azurite)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # optional extra

    try:
        answers = container.delete_blobs(*names, delete_snapshots="include", raise_on_any_failure=False)
        return [int(a.status_code) for a in answers]
    except HttpResponseError as exc:
        if getattr(exc, "status_code", None) not in (400, 404, 405, 501):
            raise
    statuses = []
    for name in names:
        try:
            container.delete_blob(name, delete_snapshots="include")
            statuses.append(202)
        except ResourceNotFoundError:
            statuses.append(404)
    return statuses


def error_code(exc: BaseException) -> str:
    """The Azure error code of ``exc`` (``"BlobNotFound"``, ``"AuthenticationFailed"``...) or ``""``.

    The SDK gives a ``StorageErrorCode`` enum or a plain string; this is always the plain value.
    """
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def describe_azure_error(exc: BaseException) -> str:
    """A short, secret-free description of an Azure SDK error (the innermost network error)."""
    inner = getattr(exc, "inner_exception", None)
    return describe_error(inner if isinstance(inner, BaseException) else exc)


#: What went wrong, as :func:`error_kind` sees it.
Kind = Literal[
    "connection", "os", "network", "busy", "changed", "no_container", "not_found", "forbidden", "other"
]


def error_kind(exc: BaseException) -> Kind | None:
    """What ``exc`` means: a plain ``connection`` (ConnectionError, TimeoutError) or ``os`` error; or
    for an Azure SDK error, ``network`` (no usable answer), ``busy`` (408, 429, 5xx after retries),
    ``changed`` (412), ``no_container``, ``not_found``, ``forbidden`` (401, 403) or ``other``.
    None for anything else."""
    from azure.core.exceptions import (  # optional extra
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceModifiedError,
        ResourceNotFoundError,
    )

    if not isinstance(exc, AzureError):
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return "connection"
        return "os" if isinstance(exc, OSError) else None
    status = getattr(exc, "status_code", None)
    code = error_code(exc)
    if not isinstance(exc, HttpResponseError):
        return "network"  # ServiceRequestError / ServiceResponseError: no (usable) answer
    if status in _BUSY_STATUS:
        return "busy"
    if isinstance(exc, ResourceModifiedError) or status == 412 or code == "ConditionNotMet":
        return "changed"
    if code == "ContainerNotFound":
        return "no_container"
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return "not_found"
    if isinstance(exc, ClientAuthenticationError) or status in _FORBIDDEN_STATUS:
        return "forbidden"
    return "other"


class BlobChanged(Exception):  # noqa: N818 - control flow of a fetch, never shown to a user
    """The blob no longer has the ETag the part file was started with (``412 ConditionNotMet``)."""


class Transient(Exception):  # noqa: N818 - control flow of a fetch, never shown to a user
    """The connection broke or the service was busy after the SDK's own retries; the fetch resumes.
    Its message is :func:`describe_azure_error` of the cause."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(describe_azure_error(exc))


#: What the code in an :class:`AzureErrors` block does: lists a source, fetches one, or writes a destination.
Role = Literal["list", "fetch", "write"]


class AzureErrors:
    """Context manager turning Azure SDK errors raised inside it into staging errors; messages name
    ``what`` (a URI), never a secret. Staging errors and :class:`~jupyter_staging.errors.JobInterrupted`
    pass.

    ``role="list"`` / ``"fetch"`` (sources): :class:`SourceNotFound` (code ``source_not_found`` for a
    missing blob or container, ``source_forbidden`` when access is refused), else :class:`TransferFailed`.
    While fetching, a changed blob raises :class:`BlobChanged`, and a broken connection or a busy service
    :class:`Transient`; while listing they are :class:`TransferFailed`.

    ``role="write"`` (destinations): :class:`TransferFailed` with code ``destination_not_found`` (no such
    container), ``destination_forbidden`` (access refused) or ``upload_failed`` (local I/O errors too).
    With ``missing_ok`` a missing blob or container is not an error: the block ends and :attr:`missing`
    says which (``"not_found"`` or ``"no_container"``).
    """

    def __init__(self, what: str, container: str, role: Role, *, missing_ok: bool = False) -> None:
        self.what = what
        self.container = container
        self.role = role
        self.missing_ok = missing_ok
        #: ``"not_found"`` / ``"no_container"`` when the block ended on a missing one (``missing_ok``).
        self.missing: str | None = None

    def __enter__(self) -> AzureErrors:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (StagingError, JobInterrupted)):
            return False
        kind = error_kind(exc)
        if kind is None:
            return False
        if self.missing_ok and kind in ("not_found", "no_container"):
            self.missing = kind
            return True
        error = self._for_writer(kind, exc) if self.role == "write" else self._for_reader(kind, exc)
        if error is None:
            return False
        raise error from None

    def _for_reader(self, kind: Kind, exc: BaseException) -> BaseException | None:
        listing = self.role == "list"
        if kind == "os" or (kind == "connection" and listing):
            return None
        if kind in ("connection", "network", "busy"):
            if listing:
                return TransferFailed(
                    f"cannot reach Azure Blob Storage for {self.what}: {describe_azure_error(exc)}"
                )
            return Transient(exc)
        if kind == "changed":
            return TransferFailed(f"{self.what} changed while it was read") if listing else BlobChanged()
        if kind == "no_container":
            return SourceNotFound(f"Azure container {self.container!r} does not exist")
        if kind == "not_found":
            return SourceNotFound(f"{self.what} was not found")
        code, status = error_code(exc), getattr(exc, "status_code", None)
        if kind == "forbidden":
            return SourceNotFound(
                f"access to {self.what} was refused ({code or status})", code="source_forbidden"
            )
        return TransferFailed(f"Azure error {code or status or 'unknown'} for {self.what}")

    def _for_writer(self, kind: Kind, exc: BaseException) -> BaseException:
        code, status = error_code(exc), getattr(exc, "status_code", None)
        if kind == "no_container":
            return TransferFailed(
                f"the destination container {self.container!r} does not exist", code="destination_not_found"
            )
        if kind == "forbidden":
            return TransferFailed(
                f"writing {self.what} was refused ({code or status})", code="destination_forbidden"
            )
        if kind in ("connection", "os", "network") or status is None:
            return TransferFailed(
                f"cannot write {self.what}: {describe_azure_error(exc)}", code="upload_failed"
            )
        return TransferFailed(f"Azure error {code or status} for {self.what}", code="upload_failed")


def container_exists(service: Any, container: str) -> bool | None:
    """Whether ``container`` exists: False only when the service says it does not (404); None when
    the answer does not tell (access refused, network errors)."""
    try:
        with AzureErrors(container, container, "write", missing_ok=True) as errors:
            service.get_container_client(container).get_container_properties()
    except TransferFailed:
        return None
    return errors.missing is None
