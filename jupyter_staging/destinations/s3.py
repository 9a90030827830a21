"""A prefix in an S3-compatible store as a job's destination: ``s3://bucket/prefix/<job_id>/``.

Files are uploaded with boto3's transfer manager (PutObject below :data:`UPLOAD_MULTIPART_THRESHOLD`,
CreateMultipartUpload / UploadPart / CompleteMultipartUpload above), verified, and handed out as SigV4
presigned GET URLs. Clients and error translation are shared with S3 sources
(:mod:`jupyter_staging.clouds.s3`, which also says where endpoints and credentials come from).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError

from jupyter_staging.clouds.http import describe_error
from jupyter_staging.clouds.s3 import (
    TRANSIENT_ERRORS,
    S3Errors,
    bucket_exists,
    etag_may_be_md5,
    parse_s3_uri,
    presign_object,
    shared_s3_client,
)
from jupyter_staging.destinations.base import PublishedFile
from jupyter_staging.destinations.manifest import MANIFEST_NAME
from jupyter_staging.destinations.objectstore import (
    UPLOAD_CHUNKSIZE,
    UPLOAD_CONCURRENCY,
    UPLOAD_MULTIPART_THRESHOLD,
    ObjectStoreDestination,
    checked_prefix,
    file_part_digests,
    manifest_body,
    presign_seconds,
)
from jupyter_staging.errors import DestinationUnavailable, InvalidRequest, TransferFailed, VerificationFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import file_digest, file_digests

#: Keys deleted by one DeleteObjects request (the service's limit).
DELETE_BATCH = 1000

log = logging.getLogger(__name__)

_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_MD5_ETAG_RE = re.compile(r'"?([0-9a-f]{32})"?')
_MULTIPART_ETAG_RE = re.compile(r'"?([0-9a-f]{32})-([0-9]+)"?')


def _digest_of(parts: list[bytes], algorithm: str) -> bytes:
    """The ``algorithm`` digest of the parts' digests, end to end: a multipart object's composite checksum
    (``"sha256"``) or the MD5 of its ETag (``"md5"``)."""
    return hashlib.new(algorithm, b"".join(parts), usedforsecurity=False).digest()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _compared_parts(head: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """For a multipart object (HeadObject answer ``head``): the algorithm of the parts' digests its
    stated checksum is made of (``"sha256"`` for a composite ``ChecksumSHA256``, ``"md5"`` for an ETag of
    MD5s; None for a full-object checksum, or nothing usable stated) and the ``-<parts>`` it states."""
    stated = str(head.get("ChecksumSHA256") or "")
    if stated:
        algorithm = None if head.get("ChecksumType") == "FULL_OBJECT" else "sha256"
        return algorithm, (stated.rpartition("-")[2] if "-" in stated else None)
    etag = _MULTIPART_ETAG_RE.fullmatch(str(head.get("ETag") or ""))
    if etag and etag_may_be_md5(head):
        return "md5", etag.group(2)
    return None, None


def _stated_problem(
    head: Mapping[str, Any], algorithm: str | None, parts: list[bytes], sha256: str
) -> str | None:
    """What the store states of a multipart object (``head``) against the file: its hex ``sha256`` for a
    full-object checksum, the digests of its ``parts`` (by ``algorithm``, :func:`_compared_parts`) for a
    composite checksum or an ETag of MD5s; None when they agree, or when there is nothing to compare."""
    stated = str(head.get("ChecksumSHA256") or "")
    if stated and algorithm is None:
        return None if stated == _b64(bytes.fromhex(sha256)) else "the stored SHA-256 differs from the file's"
    if not parts:
        return None
    if algorithm == "sha256":
        if stated.split("-")[0] != _b64(_digest_of(parts, "sha256")):
            return "the stored composite SHA-256 differs from the one of the file's parts"
        return None
    etag = _MULTIPART_ETAG_RE.fullmatch(str(head.get("ETag") or ""))
    if etag and etag.group(1) != _digest_of(parts, "md5").hex():
        return "the stored multipart ETag differs from the one of the file's parts"
    return None


def s3_job_prefix(destination: str, job_id: str) -> str:
    """``s3://bucket/prefix/`` -> ``s3://bucket/prefix/<job_id>/`` (the prefix may be empty).

    Raises :class:`InvalidRequest` (code ``invalid_destination``) for a bad bucket name or a prefix with
    empty, ``.``/``..`` or control-character segments.
    """
    bucket, _, prefix = destination[5:].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise InvalidRequest(
            "the destination must look like s3://bucket/prefix/ with a valid bucket name",
            code="invalid_destination",
        )
    return f"s3://{bucket}/{checked_prefix(destination, prefix)}{job_id}/"


def check_s3_destination(uri: str) -> None:
    """Fail early when the bucket of ``uri`` certainly does not exist (HeadBucket answers 404).

    Other answers (403: the credentials may write objects without ``s3:ListBucket``; network errors) are
    left for the job to report. Raises :class:`InvalidRequest` (code ``destination_not_found``).
    """
    bucket, _ = parse_s3_uri(uri)
    if bucket_exists(shared_s3_client(), bucket) is False:
        raise InvalidRequest(
            f"the destination bucket {bucket!r} does not exist", code="destination_not_found"
        )


def upload_transfer_config() -> TransferConfig:
    """The transfer manager's settings for uploads (see :data:`UPLOAD_MULTIPART_THRESHOLD`): boto3's
    classic manager, also where ``awscrt`` is installed (boto3's ``"auto"`` may then pick the CRT manager,
    whose client ignores ``AWS_ENDPOINT_URL``: boto/boto3#4839)."""
    return TransferConfig(
        multipart_threshold=UPLOAD_MULTIPART_THRESHOLD,
        multipart_chunksize=UPLOAD_CHUNKSIZE,
        max_concurrency=UPLOAD_CONCURRENCY,
        use_threads=True,
        preferred_transfer_client="classic",
    )


class S3Destination(ObjectStoreDestination):
    """The job prefix ``uri`` = ``s3://bucket/prefix/<job_id>/`` (from
    :func:`~jupyter_staging.destinations.registry.object_destination`).

    ``scratch`` is the local work folder (created mode 0700 on first use). ``transfer_config`` overrides
    :func:`upload_transfer_config`. Raises :class:`InvalidRequest` (code ``invalid_destination``) when
    ``uri`` is not the job's own prefix.
    """

    def __init__(
        self, job_id: str, uri: str, scratch: Path, *, transfer_config: TransferConfig | None = None
    ) -> None:
        super().__init__(job_id, uri, scratch)
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.transfer_config = transfer_config or upload_transfer_config()
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The S3 client (:func:`~jupyter_staging.clouds.s3.shared_s3_client`), taken once.

        Raises :class:`DestinationUnavailable` (503, code ``destination_unavailable``) when boto3 cannot
        make one from the server's settings (``AWS_ENDPOINT_URL`` not a URL: botocore's ``ValueError``):
        nothing was sent, and the same request succeeds once the setting is right."""
        with self._lock:
            if self._client is None:
                try:
                    self._client = shared_s3_client()
                except ValueError:  # its text names the setting's value: not repeated to the user
                    raise DestinationUnavailable(
                        f"the object store of {self.uri} cannot be reached: this server's S3 endpoint "
                        "setting (AWS_ENDPOINT_URL, or endpoint_url of its AWS profile) is not a usable URL; "
                        "nothing was changed there, try again once the setting is corrected"
                    ) from None
            return self._client

    def errors(self, what: str, *, missing_ok: bool = False) -> S3Errors:
        """The error translator for writing ``what`` (see :class:`~jupyter_staging.clouds.s3.S3Errors`)."""
        return S3Errors(what, self.bucket, "write", missing_ok=missing_ok)

    @contextmanager
    def reached(self) -> Iterator[None]:
        """For a request on a consumer's behalf (an ack's DeleteObject, a refresh's HeadObject): the store
        not answering (refused, unreachable, timed out, after botocore's retries) raises
        :class:`DestinationUnavailable` (503: try again later), not an error of writing."""
        try:
            yield
        except TRANSIENT_ERRORS as exc:
            raise DestinationUnavailable(
                f"the object store of {self.uri} cannot be reached now ({describe_error(exc)}); nothing was "
                "changed there, try again later"
            ) from None

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
        SHA-256 (or, from a store without checksums, an MD5 ETag equal to the file's MD5); for a multipart
        upload, the file's SHA-256 and what the store states of the object (:meth:`_multipart_problem`). A
        mismatch deletes the object and raises :class:`VerificationFailed`. Pause and cancel stop a running
        upload (an unfinished multipart upload is aborted) and raise :class:`JobInterrupted`. Other
        failures raise :class:`TransferFailed` (see :meth:`errors`).
        """
        key = self.key(rel)
        extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}}
        if content_type:
            extra["ContentType"] = content_type
        with self.opened_local(local) as opened:
            with self.errors(self.locator(key)):
                self._upload(opened, key, extra, control)
                head = self.client().head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
            self._verify(head, opened, key, size, sha256, control)
        self.drop_local(local)
        return self.chunk_path(rel)

    def _upload(self, local: Path, key: str, extra: dict[str, Any], control: JobControl) -> None:
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

    def _verify(
        self, head: dict[str, Any], local: Path, key: str, size: int, sha256: str, control: JobControl
    ) -> None:
        problem = None
        if int(head.get("ContentLength", -1)) != size:
            problem = f"{head.get('ContentLength')} bytes stored, {size} sent"
        elif size < self.transfer_config.multipart_threshold:
            problem = self._single_part_problem(head, local, sha256, control.check)
        else:
            problem = self._multipart_problem(head, local, key, sha256, control.check)
        if problem:
            self.reject(key, problem)

    def _single_part_problem(
        self, head: dict[str, Any], local: Path, sha256: str, check: Callable[[], None] | None = None
    ) -> str | None:
        """What is wrong with an object put in one request (``head``: its HeadObject), or None. A stated
        ``ChecksumSHA256`` must be the recorded ``sha256`` (hex) of the staged file: that says both that the
        store holds the file and that the file sent was the one staged. Otherwise the file is read again
        (``check`` called before each block): its SHA-256 must be the recorded one and, where the ETag is
        an MD5 (no SSE-KMS / SSE-C: :func:`etag_may_be_md5`), its MD5 the ETag (the S3 API, "Checking
        object integrity")."""
        checksum = head.get("ChecksumSHA256")
        if checksum:
            if checksum != base64.b64encode(bytes.fromhex(sha256)).decode():
                return "the stored SHA-256 differs from the file's"
            return None
        etag = _MD5_ETAG_RE.fullmatch(str(head.get("ETag") or ""))
        md5 = etag is not None and etag_may_be_md5(head)
        digests = file_digests(local, ("md5", "sha256") if md5 else ("sha256",), check)
        if digests["sha256"] != sha256:
            return "the file's SHA-256 differs from the one recorded"
        if etag is not None and md5 and etag.group(1) != digests["md5"]:
            return "the stored MD5 (ETag) differs from the file's"
        return None

    def _multipart_problem(
        self,
        head: dict[str, Any],
        local: Path,
        key: str,
        sha256: str,
        check: Callable[[], None] | None = None,
    ) -> str | None:
        """What is wrong with the multipart upload of ``local`` (the object's HeadObject answer ``head``),
        or None. The file must still be the one staged: its SHA-256 the recorded ``sha256``. Then what the
        store states of the object, where it states something (the S3 User Guide, "Checking object
        integrity"), must be the file's:

        - a full-object ``ChecksumSHA256`` (``ChecksumType`` ``FULL_OBJECT``): the file's SHA-256;
        - a composite one (the SHA-256 of the parts' SHA-256 digests, base64, ``-<parts>`` after it on
          AWS): the one of the file's parts, cut at the part size the store gives for part 1 (HeadObject
          ``PartNumber=1``: its ``ContentLength`` and ``PartsCount``);
        - without a checksum, a multipart ETag of MD5s (``<hex MD5 of the parts' MD5 digests>-<parts>``;
          not for SSE-KMS or SSE-C, :func:`~jupyter_staging.clouds.s3.etag_may_be_md5`): the file parts'.

        A store that gives no parts count that fits the size and the ``-<parts>`` stated (it ignores
        ``PartNumber``, or the HeadObject fails), or states neither, is checked by the file's SHA-256
        only (logged). The file is read once; ``check`` is called before each block."""
        algorithm, stated_parts = _compared_parts(head)
        part_size = self._part_size(key, int(head["ContentLength"]), stated_parts) if algorithm else 0
        parts: list[bytes] = []
        if algorithm and part_size:
            parts, whole = file_part_digests(local, part_size, algorithm, check)
        else:
            whole = file_digest(local, "sha256", check)
            if algorithm or not head.get("ChecksumSHA256"):
                log.info("%s: multipart upload checked by its size and the file's SHA-256 only", key)
        if whole != sha256:
            return "the file's SHA-256 differs from the one recorded"
        return _stated_problem(head, algorithm, parts, sha256)

    def _part_size(self, key: str, size: int, stated_parts: str | None) -> int:
        """The size (bytes) of part 1 of multipart object ``key`` of ``size`` bytes, from a HeadObject with
        ``PartNumber=1``; 0 when the store does not say, or says a ``PartsCount`` that does not fit the size
        or the ``-<parts>`` it stated (``stated_parts``)."""
        try:
            first = self.client().head_object(Bucket=self.bucket, Key=key, PartNumber=1)
        except (ClientError, BotoCoreError) as exc:  # a store that knows no PartNumber, say
            log.info("%s: HeadObject of part 1 failed (%s)", key, type(exc).__name__)
            return 0
        part_size, count = int(first.get("ContentLength") or 0), int(first.get("PartsCount") or 0)
        if part_size <= 0 or count != -(-size // part_size) or stated_parts not in (None, str(count)):
            return 0
        return part_size

    def discard(self, key: str) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=key)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """PutObject ``prefix/<job_id>/manifest.json`` (``application/json``, SHA-256 checked)."""
        body = manifest_body(manifest)
        key = self.key(MANIFEST_NAME)
        digest = hashlib.sha256(body).digest()
        with self.errors(self.locator(key)):
            self.client().put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumSHA256=base64.b64encode(digest).decode(),
            )
            head = self.client().head_object(Bucket=self.bucket, Key=key)
        if int(head.get("ContentLength", -1)) != len(body):
            raise VerificationFailed(f"upload of {self.locator(key)} could not be verified")

    def read_manifest_data(self) -> bytes | None:
        """GetObject ``prefix/<job_id>/manifest.json``: its bytes; None when it does not exist."""
        with self.errors(f"{self.uri}{MANIFEST_NAME}", missing_ok=True) as errors:
            response = self.client().get_object(Bucket=self.bucket, Key=self.key(MANIFEST_NAME))
        if errors.missing:
            return None
        with response["Body"] as body:
            data: bytes = body.read()
            return data

    # -- removing ----------------------------------------------------------------------------------

    def remove_chunk(self, chunk_path: str, published: PublishedFile | None = None) -> bool:
        """DeleteObject of one chunk of this job. Raises :class:`DestinationUnavailable` when the store cannot
        be reached (:meth:`reached`), :class:`TransferFailed` when it refuses."""
        key = self.key_of(chunk_path)
        with self.errors(chunk_path), self.reached():
            self.client().delete_object(Bucket=self.bucket, Key=key)
        return True

    def remove(
        self,
        chunk_paths: list[str],
        item_names: list[str],
        convert_dirs: list[str],
        *,
        keep_ready: bool,
        keep_folder: bool = False,
        parts_tagged: bool = False,
        unrecorded: Sequence[str] = (),
        chunk_files: Mapping[str, PublishedFile] | None = None,
    ) -> int:
        """Delete the scratch folder and abort unfinished multipart uploads below the job prefix; unless
        ``keep_ready``, also delete every object below ``prefix/<job_id>/`` (ListObjectsV2 +
        DeleteObjects, :data:`DELETE_BATCH` keys a request) — never anything outside that prefix
        (``unrecorded`` among them: nothing else is looked at).
        Raises :class:`TransferFailed` (code ``cleanup_failed``) when objects could not be deleted.
        ``parts_tagged`` is a local destination's (no ``.part`` here)."""
        self.remove_scratch()
        removed = 0
        with self.errors(self.uri):
            self._abort_uploads()
            if not keep_ready:
                removed = self._delete_objects()
        return removed

    def _abort_uploads(self) -> None:
        client = self.client()
        uploads = client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in uploads:
            for upload in page.get("Uploads", []):
                if upload["Key"].startswith(self.prefix):
                    client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )

    def _delete_objects(self) -> int:
        client = self.client()
        removed = 0
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            keys = [o["Key"] for o in page.get("Contents", []) if o["Key"].startswith(self.prefix)]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
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
        owner, never log or store it. Raises :class:`InvalidRequest` for a chunk not of this job."""
        return presign_object(
            self.client(), self.bucket, self.key_of(chunk_path), presign_seconds(expires_seconds)
        )

    def holds(self, chunk_path: str) -> bool:
        """Whether the chunk's object is in the bucket: one HeadObject (False for 404, also when the bucket
        is gone). Raises :class:`DestinationUnavailable` when the store cannot be reached (:meth:`reached`).
        """
        with self.errors(chunk_path, missing_ok=True) as errors, self.reached():
            self.client().head_object(Bucket=self.bucket, Key=self.key_of(chunk_path))
        return not errors.missing
