"""S3 (AWS or any S3-compatible store) as S3 sources and destinations both use it: clients, URIs,
presigned URLs and the one translation of boto errors into staging errors.

Endpoints and credentials come from boto3's standard configuration (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, config files),
so MinIO or Ceph RGW work through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError
from urllib3.exceptions import HTTPError as URLLib3Error

from jupyter_staging.clouds.digests import b64_to_hex
from jupyter_staging.clouds.http import describe_error
from jupyter_staging.errors import (
    ChecksumMismatch,
    InvalidRequest,
    JobInterrupted,
    SourceNotFound,
    StagingError,
    TransferFailed,
)
from jupyter_staging.safety.checksums import mismatch_message

#: Connections in the pool of a client made by :func:`s3_client` unless told otherwise.
DEFAULT_POOL = 10
#: Connections in the pool of :func:`shared_s3_client`'s client, which every S3 source and destination of the
#: process uses: 8 items at once (``StagingApp.concurrent_items``) with up to 8 GETs each (parallel ranges),
#: plus listings and uploads (the transfer manager's parts). Connections open only when needed.
SHARED_POOL = 72

#: S3 error codes (or HTTP statuses) meaning: no such object.
NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
#: ... access refused.
FORBIDDEN = frozenset(
    {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)
#: ... the object no longer has the ETag a conditional request named.
CHANGED = frozenset({"PreconditionFailed", "412"})
#: ... the service failed or is overloaded (after botocore's own retries).
SERVER_BUSY = frozenset({"InternalError", "ServiceUnavailable", "SlowDown", "500", "502", "503", "504"})

#: Errors meaning "the connection broke"; a download continues from the bytes it has.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
    RetriesExceededError,
    URLLib3Error,
    ConnectionError,
    TimeoutError,
)

#: Environment variables that change which S3 client boto3 builds (see :func:`shared_s3_client`).
CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_shared: dict[tuple[str | None, ...], Any] = {}
_shared_lock = threading.Lock()


def s3_client(max_pool_connections: int = DEFAULT_POOL) -> Any:
    """A new boto3 S3 client, configured the standard boto3 way, with ``standard`` retries (5 attempts),
    10 s connect and 60 s read timeouts and a pool of ``max_pool_connections`` connections.

    Creates its own :class:`boto3.session.Session` (boto3's default session is not thread-safe), so call
    it in the thread that will use the client.
    """
    config = Config(
        # SigV4 everywhere (presigned URLs included): SigV2 is deprecated and refused by newer regions.
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=max_pool_connections,
    )
    return boto3.session.Session().client("s3", config=config)


def shared_s3_client() -> Any:
    """An S3 client shared by this process (boto3 clients are thread-safe; building one takes 0.15-0.3
    CPU-s here, too slow for every job, listing or ``GET .../chunks``). A new one is built when the AWS
    settings in the environment (:data:`CLIENT_ENV`) change; its pool has :data:`SHARED_POOL` connections."""
    key = tuple(os.environ.get(name) for name in CLIENT_ENV)
    with _shared_lock:
        client = _shared.get(key)
        if client is None:
            if len(_shared) >= 8:
                _shared.clear()
            client = _shared[key] = s3_client(SHARED_POOL)
        return client


#: Bucket names the S3 API accepts (botocore's parameter validation; new buckets are stricter).
BUCKET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")`` (key may be ``""`` or end in ``/``).

    Raises :class:`InvalidRequest` (code ``invalid_source``) without a valid bucket name (letters,
    digits, ``.``, ``-``, ``_``; 1-255 characters, as the S3 API's parameter validation accepts) or with a
    key over 1,024 bytes (the S3 limit).
    """
    if not uri.lower().startswith("s3://"):
        raise InvalidRequest(f"not an s3:// URI: {uri[:200]!r}", code="invalid_source")
    bucket, _, key = uri[5:].partition("/")
    if not BUCKET_NAME_RE.fullmatch(bucket) or "\x00" in uri or len(key.encode()) > 1024:
        raise InvalidRequest(
            f"S3 URI {uri[:200]!r} must look like s3://bucket/key or s3://bucket/prefix/ "
            "(bucket: letters, digits, '.', '-', '_'; key: at most 1024 bytes)",
            code="invalid_source",
        )
    return bucket, key


def presign_get(uri: str, expires_seconds: int = 3600) -> str:
    """A presigned HTTPS GET URL for the object ``uri`` (``s3://bucket/key``), valid ``expires_seconds``.

    Raises :class:`InvalidRequest` when ``uri`` names a prefix. The URL is a credential: never log it
    unredacted (:func:`~jupyter_staging.safety.redact.redact_url`).
    """
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise InvalidRequest(f"{uri!r} names a prefix, not an object")
    return presign_object(s3_client(), bucket, key, int(expires_seconds))[0]


def presign_object(client: Any, bucket: str, key: str, seconds: int) -> tuple[str, datetime]:
    """A SigV4 presigned GetObject URL of ``bucket/key``, valid ``seconds`` (at most 7 days), and when
    it expires (UTC). Made locally with ``client``'s credentials (an HMAC, no request)."""
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
    )
    return url, presigned_expiry(url) or datetime.now(timezone.utc) + timedelta(seconds=seconds)


def presigned_expiry(url: str) -> datetime | None:
    """When a SigV4 presigned URL stops working (``X-Amz-Date`` + ``X-Amz-Expires``, UTC), or None."""
    query = parse_qs(urlsplit(url).query)
    try:
        signed = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return signed + timedelta(seconds=int(query["X-Amz-Expires"][0]))
    except (KeyError, IndexError, ValueError):
        return None


def error_code(exc: BaseException) -> str:
    """The S3 error code of a boto error (``"NoSuchKey"``, ``"AccessDenied"``...), else its HTTP status
    as text, else ``""``."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if not code:
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def bucket_exists(client: Any, bucket: str) -> bool | None:
    """Whether ``bucket`` exists, by a HeadBucket: False only when S3 answers 404 / ``NoSuchBucket``;
    None when the answer does not tell (403: credentials without ``s3:ListBucket``; network errors)."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return False if error_code(exc) in ("404", "NoSuchBucket", "NotFound") else None
    except BotoCoreError:
        return None
    return True


_MD5_ETAG_RE = re.compile(r"[0-9a-fA-F]{32}")
#: The ``head_object`` / ``get_object`` field of each full-object checksum S3 may state.
_CHECKSUM_FIELDS = {
    "sha256": "ChecksumSHA256",
    "crc64nvme": "ChecksumCRC64NVME",
    "crc32c": "ChecksumCRC32C",
    "crc32": "ChecksumCRC32",
}


def stated_checksums(meta: Mapping[str, Any]) -> dict[str, str]:
    """The checksums S3 states for a whole object, lower-case hex by algorithm, from a ``head_object`` /
    ``get_object`` answer (or a ``list_objects_v2`` entry).

    ``ChecksumSHA256`` (base64; present when the object was uploaded with ``ChecksumAlgorithm="SHA256"``
    and the request had ``ChecksumMode="ENABLED"``) gives ``"sha256"`` unless it is a composite
    checksum of parts (``ChecksumType="COMPOSITE"`` or a ``-N`` suffix); ``ChecksumCRC64NVME``,
    ``ChecksumCRC32C`` and ``ChecksumCRC32`` give ``"crc64nvme"``, ``"crc32c"``, ``"crc32"`` on the same
    terms (hex of the big-endian CRC; AWS adds a CRC64NVME to objects uploaded since December 2024 without
    a checksum of their own: the S3 User Guide, "Checking object integrity"). The ETag gives ``"md5"``
    only from a HEAD/GET answer (``ContentLength`` present, so the encryption headers are there too) of a
    single-part object (32 hex digits, no ``-N``) not encrypted with SSE-KMS or SSE-C, whose ETags are
    not MD5s. A listing entry yields no MD5: it does not say how the object is encrypted.
    """
    found: dict[str, str] = {}
    whole = meta.get("ChecksumType") != "COMPOSITE"
    for algorithm, field in _CHECKSUM_FIELDS.items():
        value = meta.get(field)
        hexed = b64_to_hex(value, algorithm) if whole and value and "-" not in value else None
        if hexed:
            found[algorithm] = hexed
    etag = str(meta.get("ETag") or "").strip('"')
    if "ContentLength" in meta and etag_may_be_md5(meta) and _MD5_ETAG_RE.fullmatch(etag):
        found["md5"] = etag.lower()
    return found


def etag_may_be_md5(meta: Mapping[str, Any]) -> bool:
    """Whether the ETag of an object (a ``head_object`` / ``get_object`` answer ``meta``) may be made of
    MD5s: the object's MD5 (one PutObject), or the MD5 of its parts' MD5s with ``-<parts>`` (a multipart
    upload). Not for an object encrypted with SSE-KMS or SSE-C, whose ETags are not MD5s (the S3 API
    Reference, "Object"; MinIO's ETag rules say the same)."""
    encryption = str(meta.get("ServerSideEncryption") or "")
    return not encryption.startswith("aws:kms") and not meta.get("SSECustomerAlgorithm")


_BOTOCORE_MISMATCH_RE = re.compile(r"Expected checksum (\S+) did not match calculated checksum: (\S+)")


#: What an ``x-amz-checksum-*`` value botocore found wrong is, told by its length (4 bytes: CRC32 or CRC32C).
_CHECKED_BY_BOTOCORE = {"sha256": "sha256", "crc64nvme": "crc64nvme", "crc32": "crc32 or crc32c"}


def checksum_error(what: str, exc: FlexibleChecksumError) -> ChecksumMismatch:
    """A :class:`ChecksumMismatch` for botocore's finding that a GET body does not match the checksum
    S3 sent with it (``x-amz-checksum-sha256`` / ``-crc64nvme`` / ``-crc32c`` / ``-crc32``:
    ``response_checksum_validation``); names ``what`` and the algorithm, told by the digest's length."""
    found = _BOTOCORE_MISMATCH_RE.search(str(exc))
    for algorithm, name in _CHECKED_BY_BOTOCORE.items():
        expected = b64_to_hex(found.group(1), algorithm) if found else None
        actual = b64_to_hex(found.group(2), algorithm) if found else None
        if expected and actual:
            return ChecksumMismatch(mismatch_message(what, name, expected, actual))
    return ChecksumMismatch(f"{what}: {describe_error(exc)}; nothing was published")


class ObjectChanged(Exception):  # noqa: N818 - control flow of a fetch, never shown to a user
    """The object no longer has the ETag the part file was started with (``412 PreconditionFailed``)."""


class ServerBusy(Exception):  # noqa: N818 - control flow of a fetch, never shown to a user
    """S3 answered with a server-side error after botocore's own retries; the fetch resumes later."""


#: What the code in an :class:`S3Errors` block does: lists a source, fetches one, or writes a destination.
Role = Literal["list", "fetch", "write"]


class S3Errors:
    """Context manager turning boto errors raised inside it into staging errors; messages name ``what``
    (a URI), never a secret. Staging errors and :class:`~jupyter_staging.errors.JobInterrupted` pass.

    ``role="list"`` / ``"fetch"`` (sources): :class:`SourceNotFound` (code ``source_not_found`` for a
    missing object or bucket, ``source_forbidden`` when access is refused or no credentials are found),
    :class:`ChecksumMismatch` when botocore found a body that does not match the checksum S3 stated,
    else :class:`TransferFailed`. A changed object raises :class:`ObjectChanged`; while fetching, a busy
    service raises :class:`ServerBusy` and connection errors pass unchanged (the fetch resumes); while
    listing they are :class:`TransferFailed`.

    ``role="write"`` (destinations): :class:`TransferFailed` with code ``destination_not_found`` (no such
    bucket), ``destination_forbidden`` (access refused, no credentials) or ``upload_failed``.

    With ``missing_ok`` a missing object (:data:`NOT_FOUND`) is not an error: the block ends and
    :attr:`missing` is True.
    """

    def __init__(self, what: str, bucket: str, role: Role, *, missing_ok: bool = False) -> None:
        self.what = what
        self.bucket = bucket
        self.role = role
        self.missing_ok = missing_ok
        #: True when the block ended on a missing object (only with ``missing_ok``).
        self.missing = False

    def __enter__(self) -> S3Errors:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (StagingError, JobInterrupted)):
            return False
        if self.missing_ok and isinstance(exc, ClientError) and error_code(exc) in NOT_FOUND:
            self.missing = True
            return True
        error = self.translate(exc)
        if error is None:
            return False
        raise error from None

    @property
    def writing(self) -> bool:
        return self.role == "write"

    def translate(self, exc: BaseException) -> BaseException | None:
        """The error to raise instead of ``exc``, or None to let ``exc`` pass."""
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            verb = "write" if self.writing else "read"
            return self._refused(f"no usable AWS credentials to {verb} {self.what}")
        if isinstance(exc, ClientError):
            return self._client_error(error_code(exc))
        if isinstance(exc, FlexibleChecksumError) and not self.writing:
            return checksum_error(self.what, exc)
        if self.writing and isinstance(exc, (BotoCoreError, OSError)):
            return TransferFailed(f"cannot write {self.what}: {describe_error(exc)}", code="upload_failed")
        if self.role == "list" and isinstance(exc, TRANSIENT_ERRORS):
            return TransferFailed(f"cannot reach S3 for {self.what}: {describe_error(exc)}")
        return None

    def _client_error(self, code: str) -> BaseException:
        if code in CHANGED and not self.writing:
            return ObjectChanged()
        if code == "NoSuchBucket":
            if self.writing:
                return TransferFailed(
                    f"the destination bucket {self.bucket!r} does not exist", code="destination_not_found"
                )
            return SourceNotFound(f"S3 bucket {self.bucket!r} does not exist")
        if code in NOT_FOUND and not self.writing:
            return SourceNotFound(f"{self.what} was not found")
        if code in FORBIDDEN:
            action = "writing" if self.writing else "access to"
            return self._refused(f"{action} {self.what} was refused ({code})")
        if code in SERVER_BUSY and self.role == "fetch":
            return ServerBusy(f"S3 answered {code}")
        return TransferFailed(
            f"S3 error {code or 'unknown'} for {self.what}", code="upload_failed" if self.writing else None
        )

    def _refused(self, message: str) -> StagingError:
        if self.writing:
            return TransferFailed(message, code="destination_forbidden")
        return SourceNotFound(message, code="source_forbidden")
