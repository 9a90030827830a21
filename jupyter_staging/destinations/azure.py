"""A prefix in an Azure Blob Storage container as a job's destination (the ``azure`` extra):
``az://container/prefix/<job_id>/`` or ``azure://account/container/prefix/<job_id>/``.

Files are uploaded with ``azure-storage-blob`` (one Put Blob below :data:`AZURE_SINGLE_PUT_SIZE`, Put
Block / Put Block List above), verified, and handed out as read-only SAS URLs. Accounts, credentials,
clients and error translation are shared with Azure sources (:mod:`jupyter_staging.clouds.azure`, whose
docstring lists the environment variables read); a destination is never written anonymously.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_staging.clouds.azure import (
    AzureErrors,
    blob_service_client,
    container_exists,
    content_settings,
    delete_blobs,
    parse_azure_uri,
    read_sas_url,
    require_sdk,
)
from jupyter_staging.destinations.base import PublishedFile
from jupyter_staging.destinations.manifest import MANIFEST_NAME
from jupyter_staging.destinations.objectstore import (
    UPLOAD_CHUNKSIZE,
    UPLOAD_CONCURRENCY,
    UPLOAD_MULTIPART_THRESHOLD,
    ObjectStoreDestination,
    checked_prefix,
    manifest_body,
    presign_seconds,
)
from jupyter_staging.errors import (
    InvalidRequest,
    InvalidState,
    SourceNotFound,
    TransferFailed,
    VerificationFailed,
)
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import file_digest, file_digests

#: Azure files above this size (bytes) are uploaded in blocks (Put Block + Put Block List).
AZURE_SINGLE_PUT_SIZE = UPLOAD_MULTIPART_THRESHOLD
#: Size of one block of a block upload, bytes.
AZURE_BLOCK_SIZE = UPLOAD_CHUNKSIZE
#: Blobs deleted in one blob batch request (the service's limit is 256).
AZURE_DELETE_BATCH = 256


def azure_job_prefix(destination: str, job_id: str) -> str:
    """``az://container/prefix/`` -> ``az://container/prefix/<job_id>/`` (likewise
    ``azure://account/container/prefix/``; the prefix may be empty).

    Raises :class:`InvalidRequest` (code ``invalid_destination``) for a bad account or container name or
    a prefix with empty, ``.``/``..`` or control-character segments, and (code ``missing_extra``)
    without ``azure-storage-blob``.
    """
    try:
        account, container, prefix = parse_azure_uri(destination)
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, code="invalid_destination") from None
    key_prefix = checked_prefix(destination, prefix)
    require_sdk()
    head = f"azure://{account}/" if account else "az://"
    return f"{head}{container}/{key_prefix}{job_id}/"


def writer_service(account: str | None, *, at_creation: bool = False, **options: Any) -> Any:
    """The configured :class:`~azure.storage.blob.BlobServiceClient` for writing to ``account``
    (None: the configured one); ``options`` are the SDK's client keywords.

    Never anonymous. A missing or malformed configuration raises :class:`InvalidRequest` at creation,
    :class:`TransferFailed` later (both code ``destination_forbidden``)."""
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
    ``destination_not_found``), both :class:`InvalidRequest`. Other answers (access refused, network
    errors) are left for the job."""
    account, container, _ = parse_azure_uri(uri)
    if container_exists(writer_service(account, at_creation=True), container) is False:
        raise InvalidRequest(
            f"the destination container {container!r} does not exist", code="destination_not_found"
        )


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
    ``azure://account/container/prefix/<job_id>/`` (from
    :func:`~jupyter_staging.destinations.registry.object_destination`).

    ``scratch`` is the local work folder (created mode 0700 on first use). ``single_put_size`` and
    ``block_size`` override :data:`AZURE_SINGLE_PUT_SIZE` and :data:`AZURE_BLOCK_SIZE`.
    Raises :class:`InvalidRequest` (code ``missing_extra``) without ``azure-storage-blob``, (code
    ``invalid_destination``) when ``uri`` is not the job's own prefix.
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
                self._service = writer_service(
                    self.account, max_single_put_size=self.single_put_size, max_block_size=self.block_size
                )
            return self._service

    def blob(self, name: str) -> Any:
        """The ``BlobClient`` of blob ``name`` in this destination's container."""
        return self.service().get_blob_client(self.container, name)

    def errors(self, what: str, *, missing_ok: bool = False) -> AzureErrors:
        """The error translator for writing ``what`` (:class:`~jupyter_staging.clouds.azure.AzureErrors`)."""
        return AzureErrors(what, self.container, "write", missing_ok=missing_ok)

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
        bytes, the file's SHA-256 must be ``sha256`` and, for a single-shot upload, the stored
        Content-MD5 (where the service keeps one) must be the file's MD5; a mismatch deletes the blob and
        raises :class:`VerificationFailed`. Pause and cancel stop a running upload within one block (its
        uncommitted blocks are discarded by the service) and raise :class:`JobInterrupted`. Other
        failures raise :class:`TransferFailed` (see :meth:`errors`).
        """
        name = self.key(rel)
        client = self.blob(name)
        with self.opened_local(local) as opened:
            with self.errors(self.locator(name)):
                with open(opened, "rb") as fh:
                    client.upload_blob(
                        _InterruptibleReader(fh, control),
                        length=size,
                        overwrite=True,
                        metadata={"sha256": sha256},
                        content_settings=content_settings(content_type or "application/octet-stream"),
                        validate_content=True,
                        max_concurrency=UPLOAD_CONCURRENCY,
                    )
                props = client.get_blob_properties()
            self._verify(props, opened, name, size, sha256, control)
        self.drop_local(local)
        return self.chunk_path(rel)

    def _verify(
        self, props: Any, local: Path, name: str, size: int, sha256: str, control: JobControl
    ) -> None:
        problem = None
        if int(props.size) != size:
            problem = f"{props.size} bytes stored, {size} sent"
        elif size <= self.single_put_size:
            digests = file_digests(local, ("md5", "sha256"), control.check)
            stored = getattr(props.content_settings, "content_md5", None)
            if stored and bytes(stored).hex() != digests["md5"]:
                problem = "the stored MD5 differs from the file's"
            elif digests["sha256"] != sha256:
                problem = "the file's SHA-256 differs from the one recorded"
        elif file_digest(local, "sha256", control.check) != sha256:
            # Block uploads: each block's MD5 was checked by the service against the bytes read from the
            # file, which must still be the file staged (the blob's own MD5, where kept, is of the blocks).
            problem = "the file's SHA-256 differs from the one recorded"
        if problem:
            self.reject(name, problem)

    def discard(self, key: str) -> None:
        self.blob(key).delete_blob()

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Put Blob ``prefix/<job_id>/manifest.json`` (``application/json``, MD5 checked)."""
        body = manifest_body(manifest)
        name = self.key(MANIFEST_NAME)
        client = self.blob(name)
        with self.errors(self.locator(name)):
            client.upload_blob(
                body,
                overwrite=True,
                content_settings=content_settings("application/json"),
                metadata={"sha256": hashlib.sha256(body).hexdigest()},
                validate_content=True,
            )
            props = client.get_blob_properties()
        if int(props.size) != len(body):
            raise VerificationFailed(f"upload of {self.locator(name)} could not be verified")

    def read_manifest_data(self) -> bytes | None:
        """The bytes of the blob ``prefix/<job_id>/manifest.json``; None when it does not exist. Raises
        :class:`TransferFailed` (code ``destination_not_found``) when the container does not exist."""
        name = self.key(MANIFEST_NAME)
        with self.errors(self.locator(name), missing_ok=True) as errors:
            body = self.blob(name).download_blob().readall()
        if errors.missing == "no_container":
            raise TransferFailed(
                f"the destination container {self.container!r} does not exist", code="destination_not_found"
            )
        if errors.missing:
            return None
        return bytes(body)

    # -- removing ----------------------------------------------------------------------------------

    def remove_chunk(self, chunk_path: str, published: PublishedFile | None = None) -> bool:
        """Delete one blob of this job; False when it was gone already."""
        name = self.key_of(chunk_path)
        with self.errors(chunk_path, missing_ok=True) as errors:
            self.blob(name).delete_blob(delete_snapshots="include")
        return errors.missing is None

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
        """Delete the scratch folder; unless ``keep_ready``, also every blob below ``prefix/<job_id>/``
        (listed, then deleted in blob batches of :data:`AZURE_DELETE_BATCH`) — never anything outside
        that prefix. Uncommitted blocks of an interrupted upload are left to the service, which
        discards them after a week. Raises :class:`TransferFailed` (code ``cleanup_failed``) when blobs
        could not be deleted. ``parts_tagged`` and ``unrecorded`` are a local destination's (no ``.part``
        here; every blob of the job's prefix goes)."""
        self.remove_scratch()
        if keep_ready:
            return 0
        container = self.service().get_container_client(self.container)
        with self.errors(self.uri, missing_ok=True) as errors:
            names = [
                b.name
                for b in container.list_blobs(name_starts_with=self.prefix)
                if b.name.startswith(self.prefix)
            ]
        if errors.missing:
            return 0  # no container: nothing of ours left
        removed = 0
        with self.errors(self.uri):
            for start in range(0, len(names), AZURE_DELETE_BATCH):
                statuses = delete_blobs(container, names[start : start + AZURE_DELETE_BATCH])
                removed += statuses.count(202)
                failed = [s for s in statuses if s not in (202, 404)]
                if failed:
                    raise TransferFailed(
                        f"could not delete {len(failed)} blob(s) below {self.uri} (status {failed[0]})",
                        code="cleanup_failed",
                    )
        return removed

    # -- presigned URLs ----------------------------------------------------------------------------

    def holds(self, chunk_path: str) -> bool:
        """Whether the chunk's blob is in the container: one Get Blob Properties (a HEAD; False when the
        blob or the container is gone). Raises :class:`TransferFailed` when the service cannot answer."""
        with self.errors(chunk_path, missing_ok=True) as errors:
            self.blob(self.key_of(chunk_path)).get_blob_properties()
        return errors.missing is None

    def presign(self, chunk_path: str, expires_seconds: int) -> tuple[str, datetime]:
        """A read-only service SAS URL of the chunk's blob, valid ``expires_seconds`` (1 s - 7 days),
        and when it expires (its ``se``). Made locally with the account key (an HMAC, no request).

        Raises :class:`InvalidState` (code ``cannot_presign``) when the configured credentials hold no
        account key (a SAS token, or none): a SAS for one blob cannot be made from them. The URL is a
        bearer credential until it expires: hand it only to the job's owner, never log or store it."""
        name = self.key_of(chunk_path)
        signed = read_sas_url(self.service(), self.container, name, presign_seconds(expires_seconds))
        if signed is None:
            raise InvalidState(
                f"cannot make a download URL for {chunk_path}: the Azure credentials configured for this "
                "server hold no account key (set AZURE_STORAGE_CONNECTION_STRING with an AccountKey, or "
                "AZURE_STORAGE_KEY)",
                code="cannot_presign",
            )
        return signed
