"""Helpers for object-storage destination tests: REST calls, and one interface over the two back ends.

:class:`S3Store` (moto) and :class:`AzureStore` (Azurite) hold the bucket / container ``results`` the
tests write into, and answer the same questions (which keys are below a prefix, which requests reached
the service, what a presigned URL says) so one test body checks both back ends.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import hashlib
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from boto3.s3.transfer import TransferConfig

from jupyter_staging.destinations.azure import AzureDestination
from jupyter_staging.destinations.objectstore import ObjectStoreDestination
from jupyter_staging.destinations.s3 import S3Destination
from tests.helpers.api import API
from tests.helpers.data import sha256
from tests.helpers.servers import AZURE_ENV, AZURITE_KEY

#: The bucket (S3) or container (Azure) the tests write into.
RESULTS = "results"
PARQUET = "application/vnd.apache.parquet"


async def get_json(jp_fetch, *path):
    return json.loads((await jp_fetch(*API, *path)).body)


async def start_extension(serverapp):
    (extension,) = serverapp.extension_manager.extension_apps["jupyter_staging"]
    await extension._start_jupyter_server_extension(serverapp)
    return extension.manager


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def wait_chunks(jp_fetch, job_id, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        chunks = (await get_json(jp_fetch, "jobs", job_id, "chunks"))["chunks"]
        if predicate(chunks) or time.monotonic() > deadline:
            return chunks
        await asyncio.sleep(0.1)


def serve_three_files(range_server) -> dict[str, tuple[str, bytes]]:
    """Three files over throttled HTTP: a small one done at once, two that take seconds.
    ``{"small": (url, bytes), "medium": ..., "large": ...}``."""
    payloads = {
        "small.bin": os.urandom(20_000),
        "medium.bin": os.urandom(1_500_000),
        "large.bin": os.urandom(2_500_000),
    }
    for name, data in payloads.items():
        (range_server.root / name).write_bytes(data)
    range_server.throttle_bytes_per_s = 500_000
    return {name.split(".")[0]: (range_server.url(name), data) for name, data in payloads.items()}


def use_azurite(azurite, monkeypatch, **env: str) -> None:
    """Configure Azure for this process: ``env``, or Azurite's connection string without it."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    if not env:
        env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


class ObjectStore(abc.ABC):
    """What the shared tests ask of a back end; :class:`S3Store` and :class:`AzureStore` answer."""

    #: ``"s3"`` or ``"azure"``.
    name: str
    #: The URI of the ``results`` bucket / container, ending in ``/``.
    root: str
    #: Destinations a job request must refuse, with the error code.
    bad_destinations: tuple[tuple[str, str], ...]
    #: A method of local files only, which object-store destinations refuse.
    local_only_method: str
    #: Size (bytes) of the file :meth:`small_parts_destination` uploads in parts.
    parts_file_size: int

    @abc.abstractmethod
    def keys_below(self, prefix: str) -> set[str]: ...

    @abc.abstractmethod
    def read(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def write(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def mark(self) -> int:
        """Start watching the requests the service receives (see :meth:`requests`)."""

    @abc.abstractmethod
    def requests(self, mark: int) -> list[dict[str, Any]]:
        """Requests received since :meth:`mark`: dicts with ``method``, ``url``, ``headers``."""

    @abc.abstractmethod
    def destination(self, job_id: str, uri: str, scratch: Path) -> ObjectStoreDestination: ...

    @abc.abstractmethod
    def small_parts_destination(self, job_id: str, uri: str, scratch: Path) -> ObjectStoreDestination:
        """A destination uploading :attr:`parts_file_size` bytes in several parts (blocks)."""

    @abc.abstractmethod
    def assert_uploaded_in_parts(self, key: str, data: bytes, mark: int) -> None: ...

    @abc.abstractmethod
    def assert_stored(self, key: str, chunk: dict[str, Any], content: bytes) -> None:
        """The object ``key`` of ``chunk`` holds its sha256 as metadata, a checksum of ``content``
        checked by the service, and the Parquet content type."""

    @abc.abstractmethod
    def assert_chunk_url(self, url: str) -> None:
        """``url`` is the kind of URL this back end hands out for a chunk."""

    @abc.abstractmethod
    def expiry_of(self, url: str) -> datetime: ...

    @abc.abstractmethod
    def signature(self, url: str) -> str: ...

    @abc.abstractmethod
    def assert_valid_for(self, url: str, seconds: int) -> None: ...

    @abc.abstractmethod
    def assert_expired(self, url: str) -> None: ...

    @abc.abstractmethod
    def secrets(self, *urls: str) -> list[str]:
        """Strings no job, log, manifest or database may ever hold once ``urls`` were handed out."""

    # -- shared ----------------------------------------------------------------------------------

    def job_prefix(self, job: dict) -> str:
        """The key prefix of a job whose destination is ``<root><prefix>/<id>/``."""
        assert job["destination"].startswith(self.root) and job["destination"].endswith(f"/{job['id']}/")
        return job["destination"][len(self.root) :]

    def put_siblings(self, prefix: str) -> dict[str, bytes]:
        siblings = {
            f"{prefix}keep-top.txt": b"top",
            f"{prefix}other-run/keep.txt": b"other",
            f"{prefix}other-run/manifest.json": b"{}",
        }
        for key, data in siblings.items():
            self.write(key, data)
        return siblings

    def assert_siblings_intact(self, siblings: dict[str, bytes]) -> None:
        for key, data in siblings.items():
            assert self.read(key) == data, key


class S3Store(ObjectStore):
    """moto's S3 with the bucket ``results``; ``client`` is a boto3 client, ``server`` the moto server."""

    name = "s3"
    root = f"s3://{RESULTS}/"
    bad_destinations = (
        ("s3://no-such-bucket-here/x/", "destination_not_found"),
        ("s3://results/a//b/", "invalid_destination"),
        ("s3://results/a/../b/", "invalid_destination"),
        ("gs://results/a/", "unsupported_destination"),
    )
    local_only_method = "hardlink"
    parts_file_size = 12 * 1024 * 1024 + 123

    def __init__(self, client: Any, server: Any) -> None:
        self.client = client
        self.server = server

    def keys_below(self, prefix: str) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=RESULTS, Prefix=prefix)
        return {o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=RESULTS, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=RESULTS, Key=key, Body=data)

    def mark(self) -> int:
        self.server.start_recording()
        return 0

    def requests(self, mark: int) -> list[dict[str, Any]]:
        self.server.stop_recording()
        return self.server.recorded()

    def destination(self, job_id: str, uri: str, scratch: Path) -> S3Destination:
        return S3Destination(job_id, uri, scratch)

    def small_parts_destination(self, job_id: str, uri: str, scratch: Path) -> S3Destination:
        config = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
        return S3Destination(job_id, uri, scratch, transfer_config=config)

    def assert_uploaded_in_parts(self, key: str, data: bytes, mark: int) -> None:
        head = self.client.head_object(Bucket=RESULTS, Key=key)
        assert head["ETag"].endswith('-3"')  # three parts

    def assert_stored(self, key: str, chunk: dict[str, Any], content: bytes) -> None:
        head = self.client.head_object(Bucket=RESULTS, Key=key, ChecksumMode="ENABLED")
        assert head["Metadata"]["sha256"] == chunk["sha256"]
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(chunk["sha256"])).decode()
        assert head["ContentType"] == PARQUET

    def assert_chunk_url(self, url: str) -> None:
        assert query(url)["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"  # SigV4

    def expiry_of(self, url: str) -> datetime:
        q = query(url)
        signed = datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return signed + timedelta(seconds=int(q["X-Amz-Expires"]))

    def signature(self, url: str) -> str:
        return query(url)["X-Amz-Signature"]

    def assert_valid_for(self, url: str, seconds: int) -> None:
        assert query(url)["X-Amz-Expires"] == str(seconds)

    def assert_expired(self, url: str) -> None:
        # moto does not enforce the expiry of presigned URLs (it would still serve `url`), so the test
        # checks what an S3 that does enforce it (AWS, MinIO, Ceph) checks: X-Amz-Date + X-Amz-Expires.
        assert datetime.now(timezone.utc) > self.expiry_of(url)

    def secrets(self, *urls: str) -> list[str]:
        return ["X-Amz-Signature", *(self.signature(url) for url in urls)]


class AzureStore(ObjectStore):
    """Azurite with the container ``results``; ``container`` is its ContainerClient, ``azurite`` the
    server. Needs azure-storage-blob (the ``azure`` extra)."""

    name = "azure"
    root = f"az://{RESULTS}/"
    bad_destinations = (
        ("az://no-such-container/x/", "destination_not_found"),
        (f"az://{RESULTS}/a//b/", "invalid_destination"),
        (f"az://{RESULTS}/a/../b/", "invalid_destination"),
        ("az://Bad_Container/x/", "invalid_destination"),
        # An account no credentials are configured for: never written anonymously.
        (f"azure://someotheraccount/{RESULTS}/x/", "destination_forbidden"),
    )
    local_only_method = "symlink"
    parts_file_size = 3 * 1024 * 1024 + 123

    def __init__(self, container: Any, azurite: Any) -> None:
        self.container = container
        self.azurite = azurite

    def keys_below(self, prefix: str) -> set[str]:
        return {b.name[len(prefix) :] for b in self.container.list_blobs(name_starts_with=prefix)}

    def read(self, key: str) -> bytes:
        return self.container.download_blob(key).readall()

    def write(self, key: str, data: bytes) -> None:
        self.container.upload_blob(key, data, overwrite=True)

    def mark(self) -> int:
        return self.azurite.mark()

    def requests(self, mark: int) -> list[dict[str, Any]]:
        return self.azurite.requests(mark)

    def destination(self, job_id: str, uri: str, scratch: Path) -> AzureDestination:
        return AzureDestination(job_id, uri, scratch)

    def small_parts_destination(self, job_id: str, uri: str, scratch: Path) -> AzureDestination:
        return AzureDestination(job_id, uri, scratch, single_put_size=1024 * 1024, block_size=1024 * 1024)

    def assert_uploaded_in_parts(self, key: str, data: bytes, mark: int) -> None:
        blocks = [r for r in self.requests(mark) if r["method"] == "PUT" and "comp=block&" in r["url"]]
        assert len(blocks) == 4 and all(r["headers"].get("content-md5") for r in blocks)  # each block checked
        blob = self.container.get_blob_client(key)
        assert blob.get_blob_properties().metadata["sha256"] == sha256(data)

    def assert_stored(self, key: str, chunk: dict[str, Any], content: bytes) -> None:
        props = self.container.get_blob_client(key).get_blob_properties()
        assert props.metadata["sha256"] == chunk["sha256"]
        assert bytes(props.content_settings.content_md5) == hashlib.md5(content).digest()
        assert props.content_settings.content_type == PARQUET

    def assert_chunk_url(self, url: str) -> None:
        assert query(url)["sp"] == "r"  # read only

    def expiry_of(self, url: str) -> datetime:
        return datetime.strptime(query(url)["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

    def signature(self, url: str) -> str:
        return query(url)["sig"]

    def assert_valid_for(self, url: str, seconds: int) -> None:
        assert self.expiry_of(url) - datetime.now(timezone.utc) <= timedelta(seconds=seconds)

    def assert_expired(self, url: str) -> None:
        assert requests.get(url, timeout=30).status_code == 403  # Azurite enforces the expiry

    def secrets(self, *urls: str) -> list[str]:
        return [*(self.signature(url) for url in urls), "sig=", AZURITE_KEY]


def azure_store(azurite, monkeypatch) -> AzureStore:
    """Azurite configured for this process (and so for the in-process Jupyter server) through
    AZURE_STORAGE_CONNECTION_STRING, with the container ``results``."""
    from azure.core.exceptions import ResourceExistsError  # the azure extra: only when Azurite runs
    from azure.storage.blob import BlobServiceClient

    use_azurite(azurite, monkeypatch)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        service.create_container(RESULTS)
    except ResourceExistsError:
        pass
    return AzureStore(service.get_container_client(RESULTS), azurite)


def s3_store(s3_env, s3_server) -> S3Store:
    """moto's S3 with AWS_* set for this process (and so for the in-process Jupyter server) and the
    bucket ``results``."""
    client, _ = s3_env
    try:
        client.create_bucket(Bucket=RESULTS)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return S3Store(client, s3_server)
