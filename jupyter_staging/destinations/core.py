"""Where a job's output lands: a folder under the server's root, or a prefix in an S3-compatible store or
an Azure Blob Storage container.

A job always produces its files locally first, complete and verified (``.part`` + fsync + rename, see
:mod:`jupyter_staging.safety.partfile`), in its destination's :attr:`Destination.workdir`. It then hands each file
to :meth:`Destination.put`, which gives back the chunk's ``path``:

- :class:`LocalDestination`: the work folder *is* the destination folder; ``put`` has nothing left to do
  and the path is relative to that folder. This is the behaviour jobs always had.
- :class:`S3Destination`: the work folder is a private scratch folder (mode 0700) below the staging
  folder; ``put`` uploads the file to ``s3://bucket/prefix/<job_id>/<relative path>`` (boto3's transfer
  manager: PutObject below 64 MiB, CreateMultipartUpload / UploadPart / CompleteMultipartUpload above),
  verifies it, deletes the local copy and returns the object's URI. Ready chunks are handed out as SigV4
  presigned GET URLs (:meth:`S3Destination.presign`).

- :class:`AzureDestination` (the ``azure`` extra): the same for ``az://container/prefix/`` and
  ``azure://account/container/prefix/``, uploaded with ``azure-storage-blob`` (one Put Blob below
  64 MiB, Put Block / Put Block List above) and handed out as read-only SAS URLs.

The manifest goes last (:meth:`Destination.write_manifest`) and :meth:`Destination.remove` deletes what
the job wrote and nothing else: for S3 and Azure, exactly the objects below ``prefix/<job_id>/``.

Endpoints and credentials of S3 come from boto3's standard configuration (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, config files), so MinIO or Ceph RGW
work through ``AWS_ENDPOINT_URL``. Azure's account and credentials come from the environment as for Azure
sources (``AZURE_STORAGE_CONNECTION_STRING``... see :mod:`jupyter_staging.sources.azure`).
"""

from __future__ import annotations

import abc
import base64
import hashlib
import json
import os
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest, write_manifest
from jupyter_staging.errors import (
    InvalidRequest,
    InvalidState,
    JobInterrupted,
    TransferFailed,
    VerificationFailed,
)
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import BLOCK_SIZE, PART_SUFFIX, part_path

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

#: Name of the folder, inside the staging folder, holding the scratch folders of object-store jobs.
SCRATCH_FOLDER = ".staging-scratch"
#: Files at least this large (bytes) are uploaded in parts (multipart upload).
UPLOAD_MULTIPART_THRESHOLD = 64 * 1024 * 1024
#: Size of one part of a multipart upload, bytes (boto3 raises it for files above 10,000 parts).
UPLOAD_CHUNKSIZE = 16 * 1024 * 1024
#: Parts of one file uploaded at once.
UPLOAD_CONCURRENCY = 8
#: Longest validity SigV4 allows a presigned URL, seconds (7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

#: Environment variables that change which S3 client boto3 builds (see :func:`shared_s3_client`).
_CLIENT_ENV = (
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
_clients: dict[tuple[str | None, ...], Any] = {}
_clients_lock = threading.Lock()
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_MD5_ETAG_RE = re.compile(r'"?([0-9a-f]{32})"?')
_AZURE_SCHEMES = ("az", "azure")


def shared_s3_client() -> Any:
    """An S3 client shared by this process's destinations (boto3 clients are thread-safe; building one
    takes about 0.1 s, too slow for every ``GET .../chunks``). A new one is built when the AWS settings
    in the environment change; its pool allows every upload of the parallel manifest entries."""
    from jupyter_staging.sources.s3 import s3_client

    key = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= 8:
                _clients.clear()
            client = _clients[key] = s3_client(4 * UPLOAD_CONCURRENCY + 2)
        return client


def is_object_destination(destination: str | None) -> bool:
    """True when ``destination`` names an object store (``scheme://...``) rather than a folder."""
    return destination is not None and "://" in destination


def object_destination(destination: str, job_id: str) -> str:
    """The job's own prefix for the object store destination ``destination``: ``s3://bucket/prefix/``
    → ``s3://bucket/prefix/<job_id>/`` (the prefix may be empty); likewise ``az://container/prefix/``
    and ``azure://account/container/prefix/``.

    Raises :class:`InvalidRequest` (code ``unsupported_destination``) for other schemes, (code
    ``invalid_destination``) for a missing bucket / container or a prefix with empty, ``.``/``..`` or
    control character segments, and (code ``missing_extra``) for Azure without the ``azure`` extra.
    """
    scheme = destination.split("://", 1)[0].lower()
    if scheme in _AZURE_SCHEMES:
        return _azure_destination(destination, job_id)
    if scheme != "s3":
        raise InvalidRequest(
            f"unsupported destination scheme {scheme!r}; use a folder, s3://bucket/prefix/ or "
            "az://container/prefix/",
            code="unsupported_destination",
        )
    bucket, _, prefix = destination[5:].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidRequest(
            "the destination must look like s3://bucket/prefix/ with a valid bucket name",
            code="invalid_destination",
        )
    key_prefix = _checked_prefix(destination, prefix)
    return f"s3://{bucket}/{key_prefix}{job_id}/"


def _checked_prefix(destination: str, prefix: str) -> str:
    """``prefix`` as ``"a/b/"`` (or ``""``); raises :class:`InvalidRequest` for bad segments."""
    segments = prefix.split("/")
    if segments and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in segment):
            raise InvalidRequest(
                f"destination {destination!r} has an empty, '.', '..' or control-character path segment",
                code="invalid_destination",
            )
    return "".join(f"{s}/" for s in segments)


def _azure_destination(destination: str, job_id: str) -> str:
    from jupyter_staging.sources.azure import parse_azure_uri, require_sdk

    try:
        account, container, prefix = parse_azure_uri(destination)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, code="invalid_destination") from None
    key_prefix = _checked_prefix(destination, prefix)
    require_sdk()
    head = f"azure://{account}/" if account else "az://"
    return f"{head}{container}/{key_prefix}{job_id}/"


def is_azure_destination(destination: str | None) -> bool:
    """True for ``az://`` and ``azure://`` destinations."""
    return destination is not None and destination.split("://", 1)[0].lower() in _AZURE_SCHEMES


def check_object_destination(uri: str) -> None:
    """Fail early when the bucket of ``uri`` certainly does not exist (HeadBucket answers 404).

    Other answers (403: the credentials may write objects without ``s3:ListBucket``; network errors) are
    left for the job to report. Raises :class:`InvalidRequest` (code ``destination_not_found``).
    For Azure, see :func:`check_azure_destination`.
    """
    if is_azure_destination(uri):
        check_azure_destination(uri)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from jupyter_staging.sources.s3 import _error_code, parse_s3_uri

    bucket, _ = parse_s3_uri(uri)
    try:
        shared_s3_client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise InvalidRequest(
                f"the destination bucket {bucket!r} does not exist", code="destination_not_found"
            ) from None
    except BotoCoreError:
        pass


class Destination(abc.ABC):
    """Where the output of job ``job_id`` lands. ``workdir`` is the local folder the job writes into."""

    #: True for object stores: chunk paths are object URIs and ready chunks have presigned URLs.
    remote: bool = False

    def __init__(self, job_id: str, workdir: Path) -> None:
        self.job_id = job_id
        self.workdir = workdir

    def chunk_path(self, rel: str) -> str:
        """The chunk ``path`` of the output file ``rel`` (relative to the job's output)."""
        return rel

    def relative(self, chunk_path: str) -> str:
        """Inverse of :meth:`chunk_path`: ``rel`` from a chunk's ``path``."""
        return chunk_path

    @abc.abstractmethod
    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        """Publish the complete, verified local file ``local`` (which is ``workdir / rel``) as output
        file ``rel``; returns its chunk ``path``. Raises :class:`TransferFailed`,
        :class:`VerificationFailed` or :class:`JobInterrupted` (``local`` is then kept for a retry)."""

    @abc.abstractmethod
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Store ``manifest.json`` beside the output (call it last)."""

    @abc.abstractmethod
    def read_manifest(self) -> dict[str, Any] | None:
        """The stored manifest, or None when there is none (yet)."""

    @abc.abstractmethod
    def remove_chunk(self, chunk_path: str) -> bool:
        """Delete one published output file (``delete_on_ack``); True when something was deleted."""

    @abc.abstractmethod
    def remove(
        self, chunk_paths: list[str], item_names: list[str], convert_dirs: list[str], *, keep_ready: bool
    ) -> int:
        """Delete what the job wrote: partial and scratch files always, its published output and manifest
        unless ``keep_ready``. Returns the number of files (objects) deleted."""

    def presign(self, chunk_path: str, expires_seconds: int) -> tuple[str, datetime] | None:
        """A presigned GET URL of a published chunk and its expiry time (UTC), or None when the
        destination has no URLs (local folders)."""
        return None


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def remove_tree_if_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its empty parents up to (not including) ``stop``."""
    folder = folder.resolve()
    stop = stop.resolve()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def scratch_dir(dest: Path, job_id: str) -> Path:
    """Hidden folder inside ``dest`` where remote tables are downloaded before conversion."""
    return dest / f".staging-{job_id}"


class LocalDestination(Destination):
    """A folder ``rel`` below ``root_dir`` (already validated by
    :func:`~jupyter_staging.safety.paths.resolve_destination`). Files are written in place."""

    def __init__(self, job_id: str, root_dir: Path, rel: str) -> None:
        super().__init__(job_id, root_dir / rel)
        self.root_dir = root_dir

    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        return rel

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_manifest(self.workdir, manifest)

    def read_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.workdir)

    def remove_chunk(self, chunk_path: str) -> bool:
        dest = self.workdir.resolve()
        path = dest / chunk_path
        if path.parent.resolve().is_relative_to(dest) and (path.is_file() or path.is_symlink()):
            path.unlink()
            return True
        return False

    def remove(
        self, chunk_paths: list[str], item_names: list[str], convert_dirs: list[str], *, keep_ready: bool
    ) -> int:
        """Only paths inside the destination folder are touched; a symlink is removed, never followed."""
        dest = self.workdir.resolve()
        if not _within(dest, self.root_dir) or dest == self.root_dir:
            return 0
        removed = 0

        def unlink(path: Path) -> None:
            nonlocal removed
            if not _within(path.parent.resolve(), dest):
                return
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass

        folders: set[Path] = set()
        for chunk_path in chunk_paths:
            path = dest / chunk_path
            folders.add(path.parent)
            unlink(part_path(path))
            if not keep_ready:
                unlink(path)
        for name in item_names:
            path = dest / name
            folders.add(path.parent)
            unlink(part_path(path))
        for out_dir in convert_dirs:
            folder = dest / out_dir
            folders.add(folder)
            if folder.is_dir() and not folder.is_symlink():
                for part in folder.glob(f"*{PART_SUFFIX}"):
                    unlink(part)
        scratch = scratch_dir(dest, self.job_id)
        if scratch.is_dir() and not scratch.is_symlink():
            shutil.rmtree(scratch, ignore_errors=True)
        if not keep_ready:
            manifest = read_manifest(dest) if (dest / MANIFEST_NAME).is_file() else None
            if manifest is not None and manifest.get("job_id") == self.job_id:
                unlink(dest / MANIFEST_NAME)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if _within(folder.resolve(), dest):
                remove_tree_if_empty(folder, dest.parent)
        remove_tree_if_empty(dest, dest.parent)
        return removed


def upload_transfer_config() -> TransferConfig:
    """The transfer manager's settings for uploads (see :data:`UPLOAD_MULTIPART_THRESHOLD`)."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=UPLOAD_MULTIPART_THRESHOLD,
        multipart_chunksize=UPLOAD_CHUNKSIZE,
        max_concurrency=UPLOAD_CONCURRENCY,
        use_threads=True,
    )


class ObjectStoreDestination(Destination):
    """A job prefix ``uri`` in object storage (``s3://bucket/prefix/<job_id>/``, ``az://...``): chunk paths
    are object URIs below it and every key is ``prefix + rel``. Subclasses set ``uri`` and ``prefix``
    (the key prefix within the bucket or container, ending in ``<job_id>/``)."""

    remote = True
    uri: str
    prefix: str

    def __init__(self, job_id: str, uri: str, scratch: Path) -> None:
        super().__init__(job_id, scratch)
        if not uri.endswith(f"/{job_id}/"):
            # The job removes everything below its prefix: make sure the prefix is the job's own.
            raise InvalidRequest(f"{uri!r} is not the prefix of job {job_id}", code="invalid_destination")
        self.uri = uri

    def chunk_path(self, rel: str) -> str:
        return f"{self.uri}{rel}"

    def relative(self, chunk_path: str) -> str:
        return chunk_path[len(self.uri) :] if chunk_path.startswith(self.uri) else chunk_path

    def key(self, rel: str) -> str:
        """The object key (blob name) of output file ``rel``."""
        return f"{self.prefix}{rel}"

    def _key_of(self, chunk_path: str) -> str:
        rel = self.relative(chunk_path)
        pure = PurePosixPath(rel)
        if (rel == chunk_path and "://" in chunk_path) or pure.is_absolute() or ".." in pure.parts:
            raise InvalidRequest(f"{chunk_path!r} is not an object of this job", code="invalid_destination")
        return self.key(rel)


class S3Destination(ObjectStoreDestination):
    """The job prefix ``uri`` = ``s3://bucket/prefix/<job_id>/`` (from :func:`object_destination`).

    ``scratch`` is the local work folder (created mode 0700 on first use). ``transfer_config`` overrides
    :func:`upload_transfer_config`.
    """

    def __init__(
        self, job_id: str, uri: str, scratch: Path, *, transfer_config: TransferConfig | None = None
    ) -> None:
        from jupyter_staging.sources.s3 import parse_s3_uri

        super().__init__(job_id, uri, scratch)
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.transfer_config = transfer_config or upload_transfer_config()
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The S3 client (:func:`shared_s3_client`), taken once per destination."""
        with self._lock:
            if self._client is None:
                self._client = shared_s3_client()
            return self._client

    # -- writing -----------------------------------------------------------------------------------

    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        """Upload ``local`` to ``prefix/<job_id>/<rel>`` and verify it, then delete ``local``.

        The upload carries ``ChecksumAlgorithm=SHA256`` (the store checks each PutObject / UploadPart
        body against it) and the hex sha256 as ``x-amz-meta-sha256``. Afterwards a HeadObject
        (``ChecksumMode=ENABLED``) must report ``size`` bytes and, for a single-part upload, the same
        SHA-256 (or, from a store without checksums, an MD5 ETag equal to the file's MD5); a mismatch
        deletes the object and raises :class:`VerificationFailed`. Pause and cancel stop a running upload
        (an unfinished multipart upload is aborted) and raise :class:`JobInterrupted`.
        """
        key = self.key(rel)
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}}
        if content_type:
            extra["ContentType"] = content_type
        with _translate(f"s3://{self.bucket}/{key}", self.bucket):
            self._upload(local, key, extra, control)
            head = self.client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        self._verify(head, local, key, size, sha256)
        local.unlink(missing_ok=True)
        return self.chunk_path(rel)

    def _upload(self, local: Path, key: str, extra: dict[str, Any], control: JobControl) -> None:
        from boto3.s3.transfer import create_transfer_manager

        with create_transfer_manager(self.client(), self.transfer_config) as manager:
            future = manager.upload(str(local), self.bucket, key, extra_args=extra)
            while not future.done():
                if control.interrupted:
                    future.cancel()
                    break
                time.sleep(0.05)
            if not control.interrupted:
                future.result()
        control.check()

    def _verify(self, head: dict[str, Any], local: Path, key: str, size: int, sha256: str) -> None:
        uri = f"s3://{self.bucket}/{key}"
        problem = None
        if int(head.get("ContentLength", -1)) != size:
            problem = f"{head.get('ContentLength')} bytes stored, {size} sent"
        elif size < self.transfer_config.multipart_threshold:
            checksum = head.get("ChecksumSHA256")
            etag = _MD5_ETAG_RE.fullmatch(str(head.get("ETag") or ""))
            if checksum:
                if checksum != base64.b64encode(bytes.fromhex(sha256)).decode():
                    problem = "the stored SHA-256 differs from the file's"
            elif etag and etag.group(1) != _md5_file(local):
                problem = "the stored MD5 (ETag) differs from the file's"
        # Multipart: each UploadPart body was checked against its SHA-256 by the store; the object's
        # checksum is then a checksum of the parts' checksums, so only the size is compared here.
        if problem:
            try:
                self.client().delete_object(Bucket=self.bucket, Key=key)
            except Exception:  # noqa: S110 - the verification error is the one to report
                pass
            raise VerificationFailed(f"upload of {uri} could not be verified: {problem}")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """PutObject ``prefix/<job_id>/manifest.json`` (``application/json``, SHA-256 checked)."""
        body = json.dumps(manifest, indent=2).encode() + b"\n"
        key = self.key(MANIFEST_NAME)
        digest = hashlib.sha256(body).digest()
        with _translate(f"s3://{self.bucket}/{key}", self.bucket):
            self.client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
            head = self.client().head_object(Bucket=self.bucket, Key=key)
        if int(head.get("ContentLength", -1)) != len(body):
            raise VerificationFailed(f"upload of s3://{self.bucket}/{key} could not be verified")

    def read_manifest(self) -> dict[str, Any] | None:
        """GetObject ``prefix/<job_id>/manifest.json``; None when it does not exist."""
        from botocore.exceptions import ClientError

        from jupyter_staging.sources.s3 import _error_code

        try:
            with _translate(f"{self.uri}{MANIFEST_NAME}", self.bucket, missing_ok=True):
                response = self.client().get_object(Bucket=self.bucket, Key=self.key(MANIFEST_NAME))
        except ClientError as exc:  # only a missing object gets here (missing_ok)
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        with response["Body"] as body:
            data: dict[str, Any] = json.loads(body.read())
        return data

    # -- removing ----------------------------------------------------------------------------------

    def remove_chunk(self, chunk_path: str) -> bool:
        """DeleteObject of one chunk of this job."""
        key = self._key_of(chunk_path)
        with _translate(chunk_path, self.bucket):
            self.client().delete_object(Bucket=self.bucket, Key=key)
        return True

    def remove(
        self, chunk_paths: list[str], item_names: list[str], convert_dirs: list[str], *, keep_ready: bool
    ) -> int:
        """Delete the scratch folder and abort unfinished multipart uploads below the job prefix; unless
        ``keep_ready``, also delete every object below ``prefix/<job_id>/`` (ListObjectsV2 +
        DeleteObjects, 1000 keys a request) — never anything outside that prefix."""
        if self.workdir.is_dir() and not self.workdir.is_symlink():
            shutil.rmtree(self.workdir, ignore_errors=True)
            remove_tree_if_empty(self.workdir.parent, self.workdir.parent.parent)
        client = self.client()
        removed = 0
        with _translate(self.uri, self.bucket):
            uploads = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in uploads:
                for upload in page.get("Uploads", []):
                    if upload["Key"].startswith(self.prefix):
                        client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
            if keep_ready:
                return 0
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                keys = [o["Key"] for o in page.get("Contents", []) if o["Key"].startswith(self.prefix)]
                for start in range(0, len(keys), 1000):
                    batch = keys[start : start + 1000]
                    answer = client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                    )
                    errors = answer.get("Errors") or []
                    removed += len(batch) - len(errors)
                    if errors:
                        raise TransferFailed(
                            f"could not delete {len(errors)} object(s) below {self.uri} "
                            f"({errors[0].get('Code', 'error')})",
                            code="cleanup_failed",
                        )
        return removed

    # -- presigned URLs ----------------------------------------------------------------------------

    def presign(self, chunk_path: str, expires_seconds: int) -> tuple[str, datetime]:
        """A SigV4 presigned GetObject URL of the chunk, valid ``expires_seconds`` (1 s - 7 days), and
        when it expires (from its ``X-Amz-Date`` + ``X-Amz-Expires``). Made locally (an HMAC, no request).

        The URL is a bearer credential for that object until it expires: hand it only to the job's
        owner, never log or store it."""
        seconds = max(1, min(int(expires_seconds), MAX_PRESIGN_SECONDS))
        key = self._key_of(chunk_path)
        url: str = self.client().generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
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


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


class _translate:  # noqa: N801 - used as a context manager, reads like a function
    """Turns boto errors while writing to a destination into :class:`TransferFailed` with a stable code:
    ``destination_not_found`` (no such bucket), ``destination_forbidden`` (access refused or no
    credentials) or ``upload_failed``; messages name the URI, never a secret."""

    def __init__(self, what: str, bucket: str, *, missing_ok: bool = False) -> None:
        self.what = what
        self.bucket = bucket
        self.missing_ok = missing_ok

    def __enter__(self) -> _translate:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(
            exc, (JobInterrupted, TransferFailed, VerificationFailed, InvalidRequest)
        ):
            return False
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        from jupyter_staging.sources.http import describe_error
        from jupyter_staging.sources.s3 import _FORBIDDEN, _error_code

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            raise TransferFailed(
                f"no usable AWS credentials to write {self.what}", code="destination_forbidden"
            ) from None
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            if self.missing_ok and code in ("NoSuchKey", "404", "NotFound"):
                return False
            if code == "NoSuchBucket":
                raise TransferFailed(
                    f"the destination bucket {self.bucket!r} does not exist", code="destination_not_found"
                ) from None
            if code in _FORBIDDEN:
                raise TransferFailed(
                    f"writing {self.what} was refused ({code})", code="destination_forbidden"
                ) from None
            raise TransferFailed(
                f"S3 error {code or 'unknown'} for {self.what}", code="upload_failed"
            ) from None
        if isinstance(exc, (BotoCoreError, OSError)):
            raise TransferFailed(
                f"cannot write {self.what}: {describe_error(exc)}", code="upload_failed"
            ) from None
        return False


# -- Azure Blob Storage --------------------------------------------------------------------------------

#: Azure files above this size (bytes) are uploaded in blocks (Put Block + Put Block List).
AZURE_SINGLE_PUT_SIZE = UPLOAD_MULTIPART_THRESHOLD
#: Size of one block of a block upload, bytes.
AZURE_BLOCK_SIZE = UPLOAD_CHUNKSIZE
#: Blobs deleted in one blob batch request (the service's limit is 256).
AZURE_DELETE_BATCH = 256
#: A SAS starts this long before it is made, for clocks of the service a little behind ours.
SAS_CLOCK_SKEW = timedelta(minutes=5)


def _azure_client(account: str | None, *, at_creation: bool = False, **options: Any) -> Any:
    """The configured :class:`~azure.storage.blob.BlobServiceClient` for writing to ``account``.

    Never anonymous. A missing or malformed configuration raises :class:`InvalidRequest` at creation,
    :class:`TransferFailed` later (both code ``destination_forbidden``)."""
    from jupyter_staging.errors import SourceNotFound
    from jupyter_staging.sources.azure import blob_service_client

    try:
        return blob_service_client(account, anonymous_ok=False, **options)
    except SourceNotFound as exc:
        cls = InvalidRequest if at_creation else TransferFailed
        raise cls(
            exc.message.replace("az:// URIs", "az:// destinations"), code="destination_forbidden"
        ) from None


def check_azure_destination(uri: str) -> None:
    """Fail early when no credentials are configured for the account of ``uri`` (code
    ``destination_forbidden``) or its container certainly does not exist (code
    ``destination_not_found``). Other answers (access refused, network errors) are left for the job."""
    from azure.core.exceptions import AzureError

    from jupyter_staging.sources.azure import error_code, parse_azure_uri

    account, container, _ = parse_azure_uri(uri)
    service = _azure_client(account, at_creation=True)
    try:
        service.get_container_client(container).get_container_properties()
    except AzureError as exc:
        if error_code(exc) == "ContainerNotFound" or getattr(exc, "status_code", None) == 404:
            raise InvalidRequest(
                f"the destination container {container!r} does not exist", code="destination_not_found"
            ) from None


class _InterruptibleReader:
    """A binary file whose reads raise :class:`JobInterrupted` once the job is paused or cancelled, so
    a running SDK upload stops within one block."""

    def __init__(self, fh: Any, control: JobControl) -> None:
        self._fh = fh
        self._control = control

    def read(self, size: int = -1) -> bytes:
        self._control.check()
        data: bytes = self._fh.read(size)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self._fh.tell())

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


class AzureDestination(ObjectStoreDestination):
    """The job prefix ``uri`` = ``az://container/prefix/<job_id>/`` or
    ``azure://account/container/prefix/<job_id>/`` (from :func:`object_destination`).

    ``scratch`` is the local work folder (created mode 0700 on first use). ``single_put_size`` and
    ``block_size`` override :data:`AZURE_SINGLE_PUT_SIZE` and :data:`AZURE_BLOCK_SIZE`.
    Raises :class:`InvalidRequest` (code ``missing_extra``) without ``azure-storage-blob``.
    """

    def __init__(
        self,
        job_id: str,
        uri: str,
        scratch: Path,
        *,
        single_put_size: int = AZURE_SINGLE_PUT_SIZE,
        block_size: int = AZURE_BLOCK_SIZE,
    ) -> None:
        from jupyter_staging.sources.azure import parse_azure_uri, require_sdk

        super().__init__(job_id, uri, scratch)
        self.account, self.container, self.prefix = parse_azure_uri(uri)
        require_sdk()
        self.single_put_size = single_put_size
        self.block_size = block_size
        self._service: Any = None
        self._lock = threading.Lock()

    def service(self) -> Any:
        """The :class:`~azure.storage.blob.BlobServiceClient` (thread-safe), made once per destination."""
        with self._lock:
            if self._service is None:
                self._service = _azure_client(
                    self.account,
                    max_single_put_size=self.single_put_size,
                    max_block_size=self.block_size,
                )
            return self._service

    def blob(self, name: str) -> Any:
        return self.service().get_blob_client(self.container, name)

    def _locator(self, name: str) -> str:
        head = self.uri[: len(self.uri) - len(self.prefix)]
        return f"{head}{name}"

    # -- writing -----------------------------------------------------------------------------------

    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        """Upload ``local`` to ``prefix/<job_id>/<rel>`` and verify it, then delete ``local``.

        ``upload_blob`` with ``validate_content`` (the service checks each Put Blob / Put Block body
        against its MD5) and ``max_concurrency`` blocks at once above :attr:`single_put_size`; the hex
        sha256 is stored as the blob's ``sha256`` metadata. Afterwards the blob must have ``size``
        bytes and, for a single-shot upload, the stored Content-MD5 (where the service keeps one) must
        be the file's MD5 and the file's SHA-256 ``sha256``; a mismatch deletes the blob and raises
        :class:`VerificationFailed`. Pause and cancel stop a running upload within one block (its
        uncommitted blocks are discarded by the service) and raise :class:`JobInterrupted`.
        """
        from azure.storage.blob import ContentSettings

        name = self.key(rel)
        client = self.blob(name)
        with _translate_azure(self._locator(name), self.container):
            with open(local, "rb") as fh:
                client.upload_blob(
                    _InterruptibleReader(fh, control),
                    length=size,
                    overwrite=True,
                    metadata={"sha256": sha256},
                    content_settings=ContentSettings(content_type=content_type or "application/octet-stream"),
                    validate_content=True,
                    max_concurrency=UPLOAD_CONCURRENCY,
                )
            props = client.get_blob_properties()
        self._verify(props, client, local, name, size, sha256)
        local.unlink(missing_ok=True)
        return self.chunk_path(rel)

    def _verify(self, props: Any, client: Any, local: Path, name: str, size: int, sha256: str) -> None:
        problem = None
        if int(props.size) != size:
            problem = f"{props.size} bytes stored, {size} sent"
        elif size <= self.single_put_size:
            md5, sha = _digests(local)
            stored = getattr(props.content_settings, "content_md5", None)
            if stored and bytes(stored) != md5:
                problem = "the stored MD5 differs from the file's"
            elif sha != sha256:
                problem = "the file's SHA-256 differs from the one recorded"
        # Block uploads: each block's MD5 was checked by the service; only the size is compared here.
        if problem:
            try:
                client.delete_blob()
            except Exception:  # noqa: S110 - the verification error is the one to report
                pass
            raise VerificationFailed(f"upload of {self._locator(name)} could not be verified: {problem}")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Put Blob ``prefix/<job_id>/manifest.json`` (``application/json``, MD5 checked)."""
        from azure.storage.blob import ContentSettings

        body = json.dumps(manifest, indent=2).encode() + b"\n"
        name = self.key(MANIFEST_NAME)
        client = self.blob(name)
        with _translate_azure(self._locator(name), self.container):
            client.upload_blob(
                body,
                overwrite=True,
                content_settings=ContentSettings(content_type="application/json"),
                metadata={"sha256": hashlib.sha256(body).hexdigest()},
                validate_content=True,
            )
            props = client.get_blob_properties()
        if int(props.size) != len(body):
            raise VerificationFailed(f"upload of {self._locator(name)} could not be verified")

    def read_manifest(self) -> dict[str, Any] | None:
        """The blob ``prefix/<job_id>/manifest.json``; None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        from jupyter_staging.sources.azure import error_code

        name = self.key(MANIFEST_NAME)
        try:
            with _translate_azure(self._locator(name), self.container, missing_ok=True):
                body = self.blob(name).download_blob().readall()
        except ResourceNotFoundError as exc:  # only a missing blob gets here (missing_ok)
            if error_code(exc) == "ContainerNotFound":
                raise TransferFailed(
                    f"the destination container {self.container!r} does not exist",
                    code="destination_not_found",
                ) from None
            return None
        data: dict[str, Any] = json.loads(body)
        return data

    # -- removing ----------------------------------------------------------------------------------

    def remove_chunk(self, chunk_path: str) -> bool:
        """Delete one blob of this job; False when it was gone already."""
        from azure.core.exceptions import ResourceNotFoundError

        name = self._key_of(chunk_path)
        try:
            with _translate_azure(chunk_path, self.container, missing_ok=True):
                self.blob(name).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            return False
        return True

    def remove(
        self, chunk_paths: list[str], item_names: list[str], convert_dirs: list[str], *, keep_ready: bool
    ) -> int:
        """Delete the scratch folder; unless ``keep_ready``, also every blob below ``prefix/<job_id>/``
        (listed, then deleted in blob batches of :data:`AZURE_DELETE_BATCH`) — never anything outside
        that prefix. Uncommitted blocks of an interrupted upload are left to the service, which
        discards them after a week."""
        from azure.core.exceptions import ResourceNotFoundError

        if self.workdir.is_dir() and not self.workdir.is_symlink():
            shutil.rmtree(self.workdir, ignore_errors=True)
            remove_tree_if_empty(self.workdir.parent, self.workdir.parent.parent)
        if keep_ready:
            return 0
        container = self.service().get_container_client(self.container)
        removed = 0
        with _translate_azure(self.uri, self.container):
            try:
                names = [
                    b.name
                    for b in container.list_blobs(name_starts_with=self.prefix)
                    if b.name.startswith(self.prefix)
                ]
            except ResourceNotFoundError:
                return 0  # no container: nothing of ours left
            for start in range(0, len(names), AZURE_DELETE_BATCH):
                batch = names[start : start + AZURE_DELETE_BATCH]
                failed = []
                for answer in self._delete_batch(container, batch):
                    if answer in (202, 404):
                        removed += answer == 202
                    else:
                        failed.append(answer)
                if failed:
                    raise TransferFailed(
                        f"could not delete {len(failed)} blob(s) below {self.uri} (status {failed[0]})",
                        code="cleanup_failed",
                    )
        return removed

    @staticmethod
    def _delete_batch(container: Any, names: list[str]) -> list[int]:
        """Statuses of deleting ``names`` (202 deleted, 404 gone already): one blob batch request, or
        one request per blob where the service does not take batches."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

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

    # -- presigned URLs ----------------------------------------------------------------------------

    def presign(self, chunk_path: str, expires_seconds: int) -> tuple[str, datetime]:
        """A read-only service SAS URL of the chunk's blob, valid ``expires_seconds`` (1 s - 7 days),
        and when it expires (its ``se``). Made locally with the account key (an HMAC, no request).

        Raises :class:`InvalidState` (code ``cannot_presign``) when the configured credentials hold no
        account key (a SAS token, or none): a SAS for one blob cannot be made from them. The URL is a
        bearer credential until it expires: hand it only to the job's owner, never log or store it."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        seconds = max(1, min(int(expires_seconds), MAX_PRESIGN_SECONDS))
        name = self._key_of(chunk_path)
        service = self.service()
        key = getattr(service.credential, "account_key", None)
        account = getattr(service.credential, "account_name", None) or service.account_name
        if not key or not account:
            raise InvalidState(
                f"cannot make a download URL for {chunk_path}: the Azure credentials configured for this "
                "server hold no account key (set AZURE_STORAGE_CONNECTION_STRING with an AccountKey, or "
                "AZURE_STORAGE_KEY)",
                code="cannot_presign",
            )
        now = datetime.now(timezone.utc).replace(microsecond=0)
        expiry = now + timedelta(seconds=seconds)
        sas = generate_blob_sas(
            account,
            self.container,
            name,
            account_key=key,
            permission=BlobSasPermissions(read=True),
            start=now - SAS_CLOCK_SKEW,
            expiry=expiry,
        )
        url = str(self.blob(name).url).split("?", 1)[0]
        return f"{url}?{sas}", expiry


def _digests(path: Path) -> tuple[bytes, str]:
    """(MD5 digest, hex SHA-256) of a file, read once."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            md5.update(block)
            sha.update(block)
    return md5.digest(), sha.hexdigest()


class _translate_azure:  # noqa: N801 - used as a context manager, reads like a function
    """Turns Azure SDK errors while writing to a destination into :class:`TransferFailed` with a stable
    code: ``destination_not_found`` (no such container), ``destination_forbidden`` (access refused) or
    ``upload_failed``; messages name the URI, never a key or a SAS."""

    def __init__(self, what: str, container: str, *, missing_ok: bool = False) -> None:
        self.what = what
        self.container = container
        self.missing_ok = missing_ok

    def __enter__(self) -> _translate_azure:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(
            exc, (JobInterrupted, TransferFailed, VerificationFailed, InvalidRequest, InvalidState)
        ):
            return False
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError

        from jupyter_staging.sources.azure import describe_azure_error, error_code
        from jupyter_staging.sources.http import describe_error

        if isinstance(exc, AzureError):
            code = error_code(exc)
            status = getattr(exc, "status_code", None)
            if code == "ContainerNotFound":
                if self.missing_ok:
                    return False
                raise TransferFailed(
                    f"the destination container {self.container!r} does not exist",
                    code="destination_not_found",
                ) from None
            if self.missing_ok and status == 404:
                return False
            if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
                raise TransferFailed(
                    f"writing {self.what} was refused ({code or status})", code="destination_forbidden"
                ) from None
            if isinstance(exc, HttpResponseError) and status is not None:
                raise TransferFailed(
                    f"Azure error {code or status} for {self.what}", code="upload_failed"
                ) from None
            raise TransferFailed(
                f"cannot write {self.what}: {describe_azure_error(exc)}", code="upload_failed"
            ) from None
        if isinstance(exc, OSError):
            raise TransferFailed(
                f"cannot write {self.what}: {describe_error(exc)}", code="upload_failed"
            ) from None
        return False


def open_destination(job_id: str, destination: str, *, root_dir: Path, scratch_root: Path) -> Destination:
    """The :class:`Destination` of a job whose stored ``destination`` is a folder relative to
    ``root_dir`` or its own object store prefix; object-store jobs work in ``scratch_root/<job_id>``."""
    if is_object_destination(destination):
        scratch = scratch_root / job_id
        if is_azure_destination(destination):
            return AzureDestination(job_id, destination, scratch)
        return S3Destination(job_id, destination, scratch)
    return LocalDestination(job_id, root_dir, destination)


def make_private_dir(folder: Path) -> None:
    """Create ``folder`` (and parents) with mode 0700 for the last component."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    os.chmod(folder, 0o700)


__all__ = [
    "AzureDestination",
    "Destination",
    "LocalDestination",
    "S3Destination",
    "check_object_destination",
    "is_azure_destination",
    "is_object_destination",
    "object_destination",
    "open_destination",
    "presigned_expiry",
    "scratch_dir",
]
