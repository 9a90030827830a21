"""Checksums the source states (S3 ``ChecksumSHA256`` / single-part ETag, Azure ``Content-MD5``, HTTP
``Repr-Digest`` / ``Digest`` / ``Content-MD5``): read into ``SourceItem.checksums`` and verified, so bytes
altered in the store after the upload end with ``checksum_mismatch`` and nothing published.

The S3 tests run moto's server in this process (``ThreadedMotoServer``) so a test can alter an object's
stored bytes behind S3's back, as bit rot or a faulty disk would: moto keeps the ETag and the
``ChecksumSHA256`` computed at upload, as S3 would.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from awscrt import checksums as crt

from jupyter_staging.clouds.digests import (
    http_checksums,
    parse_content_md5,
    parse_legacy_digest,
    parse_repr_digest,
)
from jupyter_staging.clouds.s3 import s3_client, stated_checksums
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.ranges import STREAM_MIN_BYTES
from jupyter_staging.errors import ChecksumMismatch
from jupyter_staging.safety.checksums import checksums_to_verify
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.data import KEPLER_NAME, sha256, wait_until
from tests.helpers.descriptors import open_paths
from tests.helpers.managers import manager_for
from tests.helpers.servers import HOST, MotoS3Server

DATA = b"light curve bytes " * 1000
SHA = hashlib.sha256(DATA).digest()
MD5 = hashlib.md5(DATA).digest()  # noqa: S324 - the checksum under test


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture
def dest(tmp_path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


# -- parsing what HTTP servers state (RFC 9530, RFC 3230, RFC 1864) ----------------------------------------


def test_repr_digest_keeps_sha256_and_ignores_other_algorithms_and_parameters():
    value = f"sha-512=:{b64(hashlib.sha512(DATA).digest())}:, sha-256=:{b64(SHA)}:;x=1"
    assert parse_repr_digest(value) == {"sha256": SHA.hex()}
    assert parse_repr_digest(f"SHA-256=:{b64(SHA)}:") == {"sha256": SHA.hex()}


@pytest.mark.parametrize(
    "value",
    [None, "", "sha-256=abc", f"sha-256={b64(SHA)}", "sha-256=:not base64!:", f"sha-256=:{b64(MD5)}:"],
)
def test_malformed_repr_digest_states_nothing(value):
    assert parse_repr_digest(value) == {}


def test_legacy_digest_and_content_md5():
    assert parse_legacy_digest(f"SHA-256={b64(SHA)}, md5={b64(MD5)}, UNIXsum=30637") == {
        "sha256": SHA.hex(),
        "md5": MD5.hex(),
    }
    assert parse_content_md5(b64(MD5)) == {"md5": MD5.hex()}
    assert parse_content_md5(b64(SHA)) == {}


def test_content_md5_of_a_206_is_of_the_range_so_not_the_files():
    headers = {"Content-MD5": b64(MD5), "Repr-Digest": f"sha-256=:{b64(SHA)}:"}
    assert http_checksums(headers, whole_body=True) == {"md5": MD5.hex(), "sha256": SHA.hex()}
    assert http_checksums(headers, whole_body=False) == {"sha256": SHA.hex()}


# -- what S3 answers state ---------------------------------------------------------------------------------


def test_s3_stated_checksums_skip_composite_checksums_and_etags_that_are_not_md5s():
    head = {"ContentLength": 5, "ETag": f'"{MD5.hex()}"', "ChecksumSHA256": b64(SHA)}
    assert stated_checksums(head) == {"sha256": SHA.hex(), "md5": MD5.hex()}
    assert stated_checksums({**head, "ChecksumSHA256": b64(SHA) + "-3"}) == {"md5": MD5.hex()}
    assert stated_checksums({**head, "ChecksumType": "COMPOSITE"}) == {"md5": MD5.hex()}
    assert stated_checksums({**head, "ETag": f'"{MD5.hex()}-2"'}) == {"sha256": SHA.hex()}
    assert stated_checksums({**head, "ServerSideEncryption": "aws:kms"}) == {"sha256": SHA.hex()}
    assert stated_checksums({**head, "SSECustomerAlgorithm": "AES256"}) == {"sha256": SHA.hex()}
    assert stated_checksums({**head, "ServerSideEncryption": "AES256"})["md5"] == MD5.hex()
    # A listing entry does not say how the object is encrypted: its ETag is not taken as an MD5.
    assert (
        stated_checksums({"Size": 5, "ETag": f'"{MD5.hex()}"', "LastModified": datetime.now(timezone.utc)})
        == {}
    )


def test_s3_stated_crcs_are_read_as_big_endian_hex_and_composite_ones_skipped():
    crc64 = crt.crc64nvme(DATA).to_bytes(8, "big")
    crc32 = zlib.crc32(DATA).to_bytes(4, "big")
    head = {"ContentLength": 5, "ETag": f'"{MD5.hex()}"', "ChecksumCRC64NVME": b64(crc64)}
    assert stated_checksums(head) == {"crc64nvme": crc64.hex(), "md5": MD5.hex()}
    assert stated_checksums({**head, "ChecksumCRC32": b64(crc32), "ChecksumType": "FULL_OBJECT"}) == {
        "crc64nvme": crc64.hex(),
        "crc32": crc32.hex(),
        "md5": MD5.hex(),
    }
    # A multipart upload's composite CRC32 is a checksum of its parts' checksums, not of the bytes.
    parts = {"ContentLength": 5, "ETag": f'"{MD5.hex()}-3"', "ChecksumCRC32": b64(crc32) + "-3"}
    assert stated_checksums(parts) == {}
    assert stated_checksums({**parts, "ChecksumCRC32": b64(crc32), "ChecksumType": "COMPOSITE"}) == {}
    # Not a CRC of the algorithm's width: nothing to verify against.
    assert stated_checksums({"ChecksumCRC64NVME": b64(crc32)}) == {}


# -- S3 objects altered after the upload (moto in this process) ----------------------------------------------


@pytest.fixture(scope="module")
def moto_here():
    """moto's S3 server in a thread of this process; yields the backend holding its objects."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    settings = MotoS3Server()  # a free port, its endpoint and environment; the server runs here instead
    server = ThreadedMotoServer(ip_address=HOST, port=settings.port, verbose=False)
    server.start()
    try:
        yield settings, s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    finally:
        server.stop()
        settings.stop()


@pytest.fixture
def bucket(moto_here, monkeypatch):
    settings, backend = moto_here
    settings.apply_env(monkeypatch)
    client = s3_client()
    name = f"rot-{os.urandom(6).hex()}"
    client.create_bucket(Bucket=name)
    return client, name, backend


def rot_one_byte(backend, bucket: str, key: str, at: int) -> None:
    """Flip one stored byte of ``key``; moto keeps the object's ETag and ChecksumSHA256, as S3 would."""
    stored = backend.buckets[bucket].keys[key]
    data = bytearray(stored.value)
    data[at] ^= 0xFF
    stored.value = bytes(data)


def test_s3_sha256_and_single_part_etag_are_stated_and_verified(bucket, shared_data, dest, stage_verified):
    client, name, _ = bucket
    data = (shared_data / KEPLER_NAME).read_bytes()
    client.put_object(Bucket=name, Key="k.fits", Body=data, ChecksumAlgorithm="SHA256")

    [item] = S3Source(f"s3://{name}/k.fits").list_items()

    assert item.checksums == {"sha256": sha256(data), "md5": hashlib.md5(data).hexdigest()}  # noqa: S324
    path, size, digest = stage_verified(S3Source(f"s3://{name}/k.fits"), item, dest)
    assert path.read_bytes() == data and digest == sha256(data)


def test_s3_object_altered_after_upload_is_checksum_mismatch(bucket, shared_data, dest, stage_verified):
    client, name, backend = bucket
    data = (shared_data / KEPLER_NAME).read_bytes()
    client.put_object(Bucket=name, Key="k.fits", Body=data, ChecksumAlgorithm="SHA256")
    source = S3Source(f"s3://{name}/k.fits")
    [item] = source.list_items()
    rot_one_byte(backend, name, "k.fits", len(data) // 2)

    with pytest.raises(ChecksumMismatch) as info:
        stage_verified(source, item, dest)

    assert info.value.code == "checksum_mismatch"
    assert "sha256" in info.value.message and sha256(data)[:16] in info.value.message
    assert not (dest / "k.fits").exists()
    assert not part_path(dest / "k.fits").exists() or part_path(dest / "k.fits").stat().st_size == 0


def test_s3_altered_object_listed_by_prefix_is_caught_too(bucket, dest, stage_verified):
    client, name, backend = bucket
    client.put_object(Bucket=name, Key="lc/a.bin", Body=DATA, ChecksumAlgorithm="SHA256")
    source = S3Source(f"s3://{name}/lc/")
    [item] = source.list_items()
    assert item.checksums == {}  # a listing states no checksum; the GET does
    rot_one_byte(backend, name, "lc/a.bin", 7)

    with pytest.raises(ChecksumMismatch) as info:
        stage_verified(source, item, dest)
    assert info.value.code == "checksum_mismatch" and not (dest / "a.bin").exists()


def test_s3_altered_object_resumed_by_a_ranged_get_is_caught_at_commit(bucket, dest):
    """A ranged GET (a resume, or one of the engine's streams) carries no checksum botocore could check:
    the commit compares the stated ones (learnt by one HEAD)."""
    client, name, backend = bucket
    data = os.urandom(3 * 256 * 1024 + 5)
    client.put_object(Bucket=name, Key="big.bin", Body=data, ChecksumAlgorithm="SHA256")
    source = S3Source(f"s3://{name}/big.bin")
    [item] = source.list_items()
    first = PartFile(dest / "big.bin", second="md5")
    first.write(data[: 256 * 1024])
    first.close()
    rot_one_byte(backend, name, "big.bin", len(data) - 3)

    out = PartFile(dest / "big.bin", resume=True, second="md5")
    assert out.offset == 256 * 1024
    source.fetch(item, out, JobControl())
    with pytest.raises(ChecksumMismatch) as info:
        out.commit(item.size, checksums=item.checksums)
    assert "big.bin" in info.value.message
    assert not (dest / "big.bin").exists() and not part_path(dest / "big.bin").exists()


def test_s3_checksums_follow_the_object_when_it_is_overwritten(bucket, dest, stage_verified):
    client, name, _ = bucket
    client.put_object(Bucket=name, Key="a.bin", Body=b"first version", ChecksumAlgorithm="SHA256")
    source = S3Source(f"s3://{name}/a.bin")
    [item] = source.list_items()
    client.put_object(Bucket=name, Key="a.bin", Body=DATA, ChecksumAlgorithm="SHA256")

    path, _, digest = stage_verified(source, item, dest)

    assert path.read_bytes() == DATA and digest == SHA.hex()
    assert item.checksums["sha256"] == SHA.hex()


def test_s3_object_with_a_crc64nvme_is_verified_by_it_not_by_its_etags_md5(bucket, dest, stage_verified):
    """AWS adds a CRC64NVME to every object uploaded without a checksum of its own: it is verified in
    place of the ETag's MD5 (about 1.4 CPU-s per GiB cheaper), and it catches a rotten byte the same way."""
    client, name, backend = bucket
    data = os.urandom(3 * 256 * 1024 + 5)
    crc64 = crt.crc64nvme(data).to_bytes(8, "big").hex()
    client.put_object(Bucket=name, Key="big.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    source = S3Source(f"s3://{name}/big.bin")
    [item] = source.list_items()
    assert item.checksums == {"crc64nvme": crc64, "md5": hashlib.md5(data).hexdigest()}  # noqa: S324
    assert checksums_to_verify(item.checksums) == {"crc64nvme": crc64}

    path, _, digest = stage_verified(source, item, dest)
    assert path.read_bytes() == data and digest == sha256(data)
    path.unlink()

    # A resume's ranged GET carries no checksum botocore could check: the commit's CRC finds the byte.
    first = PartFile(dest / "big.bin", second="crc64nvme")
    first.write(data[: 256 * 1024])
    first.close()
    rot_one_byte(backend, name, "big.bin", len(data) - 3)
    out = PartFile(dest / "big.bin", resume=True, second="crc64nvme")
    source.fetch(item, out, JobControl())
    with pytest.raises(ChecksumMismatch) as info:
        out.commit(item.size, checksums=checksums_to_verify(item.checksums))
    assert "crc64nvme" in info.value.message and crc64 in info.value.message
    assert not (dest / "big.bin").exists() and not part_path(dest / "big.bin").exists()


@pytest.mark.parametrize("listed", ["object", "prefix"])
@pytest.mark.parametrize(
    "size",
    [300 * 1024 + 7, STREAM_MIN_BYTES + 5],  # one whole-object GET; ranges on parallel streams
    ids=["one-stream", "parallel-streams"],
)
def test_a_job_fails_with_checksum_mismatch_on_an_object_whose_crc64nvme_does_not_match(
    bucket, tmp_path, size, listed
):
    """A job of an object whose bytes rotted in the store after the upload publishes nothing, on one stream
    (botocore checks the CRC S3 sends with the GET) as on several (ranged GETs state none: the part's
    CRC64NVME, taken as the ranges arrive, is compared at commit), whether the object was named or listed
    below a prefix (a listing states no checksum: one HEAD asks before the ranges); the same object
    intact is staged."""
    client, name, backend = bucket
    data = os.urandom(size)
    for folder in ("good", "rotten"):
        client.put_object(Bucket=name, Key=f"{folder}/lc.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    rot_one_byte(backend, name, "rotten/lc.bin", size - 3)
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path)
    try:
        done = {}
        for folder in ("good", "rotten"):
            source = f"s3://{name}/{folder}/" + ("lc.bin" if listed == "object" else "")
            job, _ = mgr.create(CreateJob(source=source, destination=folder))
            done[folder] = mgr.wait(job.id, timeout=300).model_dump(mode="json")
            done[folder]["log"] = " ".join(line["message"] for line in mgr.job_log(job.id))
    finally:
        mgr.stop()
    assert done["good"]["state"] == "succeeded", done["good"]
    assert (tmp_path / "root" / "good" / "lc.bin").read_bytes() == data
    assert (" ranges on " in done["good"]["log"]) == (size >= STREAM_MIN_BYTES)
    bad = done["rotten"]
    assert bad["state"] == "failed" and bad["error"]["code"] == "checksum_mismatch", bad
    assert "crc64nvme" in bad["error"]["message"], bad["error"]
    assert not any(path.is_file() for path in (tmp_path / "root" / "rotten").rglob("*.bin*"))


@pytest.fixture
def read_back(monkeypatch) -> list[str]:
    """The algorithms of every digest a part file computes by reading its bytes back at commit."""
    algorithms: list[str] = []
    original = PartFile._part_digest

    def spied(self: PartFile, algorithm: str) -> str:
        algorithms.append(algorithm)
        return original(self, algorithm)

    monkeypatch.setattr(PartFile, "_part_digest", spied)
    return algorithms


@pytest.mark.parametrize("uploaded", ["md5-only", "crc64nvme"])
def test_a_prefixs_objects_are_verified_as_their_bytes_come(bucket, tmp_path, read_back, uploaded):
    """Objects listed below a prefix state their checksums only in the GET's headers (a listing states
    none): the digest to verify (the ETag's MD5, as s3rver and rclone state it, or a CRC64NVME) is hashed
    as the bytes are written, so no part is read back at commit; a rotten object still publishes nothing."""
    client, name, backend = bucket
    if uploaded == "md5-only":  # no checksum of its own: the object states only its ETag's MD5
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))
        extra: dict[str, str] = {}
    else:
        extra = {"ChecksumAlgorithm": "CRC64NVME"}
    data = {f"lc-{i}.bin": os.urandom(70_000 + i) for i in range(4)}
    for folder in ("good", "rotten"):
        for key, body in data.items():
            client.put_object(Bucket=name, Key=f"{folder}/{key}", Body=body, **extra)
    rot_one_byte(backend, name, "rotten/lc-2.bin", 11)
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path)
    try:
        done = {}
        for folder in ("good", "rotten"):
            job, _ = mgr.create(CreateJob(source=f"s3://{name}/{folder}/", destination=folder))
            done[folder] = mgr.wait(job.id, timeout=300).model_dump(mode="json")
    finally:
        mgr.stop()
    assert done["good"]["state"] == "succeeded", done["good"]
    for key, body in data.items():
        assert (tmp_path / "root" / "good" / key).read_bytes() == body
    bad = done["rotten"]
    assert bad["state"] == "failed" and bad["error"]["code"] == "checksum_mismatch", bad
    assert ("md5" if uploaded == "md5-only" else "crc64nvme") in bad["error"]["message"], bad["error"]
    assert not (tmp_path / "root" / "rotten" / "lc-2.bin").exists()
    assert read_back == []


def test_a_dask_workers_file_of_a_prefix_is_verified_as_its_bytes_come(bucket, tmp_path, read_back):
    """What a Dask worker's task runs for an object listed below a prefix (:func:`fetch_verified`, the
    server choosing no digest: the listing states none): the MD5 its GET states is hashed as the bytes are
    written, so no part is read back at commit; a rotten object fails ``checksum_mismatch``, nothing
    published and no ``.part`` left."""
    import boto3
    from botocore.config import Config

    from jupyter_staging.engine.verified import fetch_verified
    from jupyter_staging.sources.registry import open_source

    _, name, backend = bucket
    client = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))  # MD5 only
    data = {f"lc-{i}.bin": os.urandom(70_000 + i) for i in range(3)}
    for key, body in data.items():
        client.put_object(Bucket=name, Key=f"p/{key}", Body=body)
    rot_one_byte(backend, name, "p/lc-1.bin", 7)
    root = tmp_path / "root"
    root.mkdir()
    items = {item.name: item for item in open_source(f"s3://{name}/p/").list_items()}
    assert sorted(items) == sorted(data) and all(item.checksums == {} for item in items.values())
    for key in ("lc-0.bin", "lc-2.bin"):
        staged = fetch_verified(
            open_source(f"s3://{name}/p/"),
            items[key],
            JobControl(),
            root / key,
            root,
            {},
            second=None,
            streams=1,
        )
        assert staged == (len(data[key]), sha256(data[key]))
        assert (root / key).read_bytes() == data[key]
    with pytest.raises(ChecksumMismatch, match="md5"):
        fetch_verified(
            open_source(f"s3://{name}/p/"),
            items["lc-1.bin"],
            JobControl(),
            root / "lc-1.bin",
            root,
            {},
            second=None,
            streams=1,
        )
    assert sorted(path.name for path in root.iterdir()) == ["lc-0.bin", "lc-2.bin"]
    assert read_back == []


@pytest.mark.parametrize("given", ["stated", "other"])
def test_a_users_md5_not_the_one_a_get_states_fails_the_job_and_leaves_no_part(bucket, tmp_path, given):
    """An object listed below a prefix states its MD5 (its ETag) only in the GET's headers, after its part
    was opened hashing the MD5 the user expects. A user's MD5 that is not the one the object states fails
    the job ``checksum_mismatch`` (one of the two is wrong) and leaves nothing behind: no file published,
    no ``.part`` kept, and no descriptor of the part or its folder left open in the server."""
    import boto3
    from botocore.config import Config

    client, name, _ = bucket
    client = boto3.client("s3", config=Config(request_checksum_calculation="when_required"))  # MD5 only
    data = os.urandom(70_000)
    client.put_object(Bucket=name, Key="one/lc.bin", Body=data)
    md5 = hashlib.md5(data).hexdigest() if given == "stated" else "0" * 32  # noqa: S324 - the user's
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path)
    try:
        open_before = open_paths(tmp_path / "root")
        job, _ = mgr.create(CreateJob(source=f"s3://{name}/one/", destination="one", checksum=f"md5:{md5}"))
        done = mgr.wait(job.id, timeout=300)
        # What the job's last steps hold a moment (its cleanup) is let go; a descriptor leaked never is.
        held = wait_until(
            lambda: [open_paths(tmp_path / "root")] if open_paths(tmp_path / "root") == open_before else None,
            timeout=5,
            what="the job's descriptors below the root to be closed",
        )
    finally:
        mgr.stop()
    files = sorted(p.name for p in (tmp_path / "root" / "one").rglob("*") if p.is_file())
    if given == "stated":
        assert done.state == "succeeded", done.error
        assert (tmp_path / "root" / "one" / "lc.bin").read_bytes() == data
    else:
        assert done.state == "failed" and done.error is not None and done.error.code == "checksum_mismatch"
        assert "the source states md5" in done.error.message, done.error
        assert files == []
    assert held == [open_before]


# -- Azure Content-MD5 (Azurite) ---------------------------------------------------------------------------


def test_azure_content_md5_is_stated_and_a_wrong_one_is_checksum_mismatch(azure_env, dest, stage_verified):
    from azure.storage.blob import ContentSettings

    from jupyter_staging.sources.azure import AzureSource

    container = azure_env
    container.upload_blob("a.bin", DATA)
    uri = f"az://{container.container_name}/a.bin"
    [item] = AzureSource(uri).list_items()
    assert item.checksums == {"md5": MD5.hex()}
    path, _, _ = stage_verified(AzureSource(uri), item, dest)
    assert path.read_bytes() == DATA

    # Set Blob Properties stores a Content-MD5 without checking it: a stale one is a real fault.
    wrong = hashlib.md5(b"other bytes").digest()  # noqa: S324
    container.get_blob_client("a.bin").set_http_headers(ContentSettings(content_md5=bytearray(wrong)))
    [item] = AzureSource(uri).list_items()
    assert item.checksums == {"md5": wrong.hex()}
    path.unlink()
    with pytest.raises(ChecksumMismatch) as info:
        stage_verified(AzureSource(uri), item, dest)
    assert "md5" in info.value.message and not path.exists()


# -- a Dask worker without awscrt (the server chose a CRC it can compute; the worker cannot) -----------------


@pytest.fixture
def no_awscrt(monkeypatch):
    """This interpreter as a worker without awscrt sees it: CRC32 only (zlib). A missing library is a fault
    the test cannot cause in this process, so the digest table is narrowed as the import would leave it."""
    from jupyter_staging.safety import checksums

    monkeypatch.setattr(checksums, "_CRCS", {"crc32": checksums._CRCS["crc32"]})


@pytest.fixture
def crc64_object(bucket, tmp_path):
    """An S3 object stating a CRC64NVME and its ETag's MD5; the checksums the server (with awscrt) has the
    worker verify; and a root folder for the worker's output."""
    from jupyter_staging.engine.verified import fetch_verified  # noqa: F401 - imported before awscrt "goes"

    client, name, _ = bucket
    data = os.urandom(300 * 1024 + 7)
    client.put_object(Bucket=name, Key="lc.bin", Body=data, ChecksumAlgorithm="CRC64NVME")
    source = S3Source(f"s3://{name}/lc.bin")
    [item] = source.list_items()
    chosen = checksums_to_verify(item.checksums)
    assert list(chosen) == ["crc64nvme"]
    root = tmp_path / "root"
    root.mkdir()
    return source, item, chosen, data, root


def _fetch(source, item, chosen, root):
    from jupyter_staging.engine.verified import fetch_verified

    final = root / "out" / "lc.bin"
    return final, fetch_verified(
        source, item, JobControl(), final, root, dict(chosen), second="crc64nvme", streams=1
    )


def test_a_worker_without_awscrt_verifies_the_stated_md5_in_place_of_the_crc64nvme(crc64_object, no_awscrt):
    source, item, chosen, data, root = crc64_object
    final, (size, digest) = _fetch(source, item, chosen, root)
    assert final.read_bytes() == data and (size, digest) == (len(data), sha256(data))

    # The MD5 is verified indeed: one the source states wrongly fails the file, and publishes nothing.
    final.unlink()
    item.checksums["md5"] = "0" * 32
    with pytest.raises(ChecksumMismatch) as info:
        _fetch(source, item, chosen, root)
    assert "md5 mismatch" in info.value.message
    assert os.listdir(root / "out") == []


def test_a_worker_without_awscrt_fails_an_object_that_states_only_a_crc(crc64_object, no_awscrt):
    """Nothing the worker can compute stands in for the CRC64NVME (a multipart object's ETag is no MD5):
    the file fails before a byte moves, with an error that says what to install, instead of being
    published unverified."""
    from jupyter_staging.errors import VerificationFailed

    source, item, chosen, _, root = crc64_object
    del item.checksums["md5"]
    with pytest.raises(VerificationFailed) as info:
        _fetch(source, item, chosen, root)
    assert info.value.code == "verification_failed"
    assert "crc64nvme" in info.value.message and "awscrt" in info.value.message
    assert not (root / "out").exists() or os.listdir(root / "out") == []


@pytest.mark.parametrize("stated", ["crc64nvme+md5", "crc64nvme", "crc64nvme+wrong md5"])
def test_ranges_finished_by_a_worker_without_awscrt_agree_with_one_stream(tmp_path, no_awscrt, stated):
    """The last task of a file fetched as Dask range tasks (``finish_ranges``) chooses as
    ``fetch_verified`` does: the stated MD5 in place of the CRC64NVME it cannot compute, else it fails and
    removes the assembled ``.part``."""
    from jupyter_staging.engine.tasks import TaskContext, finish_ranges
    from jupyter_staging.errors import VerificationFailed

    data = os.urandom(2 * 1024**2 + 3)
    crc64 = crt.crc64nvme(data).to_bytes(8, "big").hex()
    md5 = {"crc64nvme": None, "crc64nvme+md5": hashlib.md5(data).hexdigest()}.get(stated, "1" * 32)  # noqa: S324
    states = {"crc64nvme": crc64, **({"md5": md5} if md5 else {})}
    (tmp_path / "out").mkdir()
    part_path(tmp_path / "out" / "lc.bin").write_bytes(data)
    ctx = TaskContext("job-1", str(tmp_path))

    if stated == "crc64nvme+md5":
        assert finish_ranges(ctx, "out/lc.bin", len(data), {"crc64nvme": crc64}, states) == (
            len(data),
            sha256(data),
        )
        assert (tmp_path / "out" / "lc.bin").read_bytes() == data
        return
    expected = ChecksumMismatch if stated == "crc64nvme+wrong md5" else VerificationFailed
    with pytest.raises(expected) as info:
        finish_ranges(ctx, "out/lc.bin", len(data), {"crc64nvme": crc64}, states)
    assert ("md5 mismatch" if expected is ChecksumMismatch else "awscrt") in info.value.message
    assert os.listdir(tmp_path / "out") == []
