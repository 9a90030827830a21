"""Azure Blob Storage as a destination, against Azurite on 127.0.0.1 and a real Jupyter server.

The Azure mirror of tests/test_s3_destination.py: the Kepler light curve converted into
``az://results/kepler/`` in three part blobs plus a manifest under the job's prefix; SAS chunk URLs that
download with plain HTTP and are refreshed after they expire; cleanup policies, TTL and cancel deleting
exactly the job's prefix. Skipped, with the reason, without Azurite or azure-storage-blob (see the
``azurite`` fixture in conftest.py). No mocks: the only simulated fault is a missing SDK.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pyarrow.parquet as pq
import pytest
import requests

from jupyter_staging.safety.control import JobControl
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER
from tests.helpers.jupyter import server_config
from tests.helpers.servers import AZURE_ENV, AZURITE_ACCOUNT, AZURITE_KEY

from .test_s3_destination import get_json, parse_time, sha256, start_extension, wait_chunks

CONTAINER = "results"


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path, sweep_interval=0.2)


def use_azurite(azurite, monkeypatch, **env: str) -> None:
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    if not env:
        env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def results(azurite, monkeypatch):
    """Azurite configured for this process (and so for the in-process Jupyter server) through
    AZURE_STORAGE_CONNECTION_STRING, with the container ``results``: yields its ContainerClient."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    use_azurite(azurite, monkeypatch)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        service.create_container(CONTAINER)
    except ResourceExistsError:
        pass
    return service.get_container_client(CONTAINER)


def blobs_below(container, prefix: str) -> set[str]:
    return {b.name[len(prefix) :] for b in container.list_blobs(name_starts_with=prefix)}


def job_prefix(job: dict) -> str:
    """The blob prefix of a job whose destination is ``az://results/<prefix>/<id>/``."""
    head = f"az://{CONTAINER}/"
    assert job["destination"].startswith(head) and job["destination"].endswith(f"/{job['id']}/")
    return job["destination"][len(head) :]


def sas_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def expiry_of(url: str) -> datetime:
    return datetime.strptime(sas_of(url)["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def put_siblings(container, prefix: str) -> dict[str, bytes]:
    siblings = {
        f"{prefix}keep-top.txt": b"top",
        f"{prefix}other-run/keep.txt": b"other",
        f"{prefix}other-run/manifest.json": b"{}",
    }
    for name, data in siblings.items():
        container.upload_blob(name, data, overwrite=True)
    return siblings


def assert_siblings_intact(container, siblings: dict[str, bytes]) -> None:
    for name, data in siblings.items():
        assert container.download_blob(name).readall() == data, name


def assert_no_secret(texts: list[str], secrets: list[str]) -> None:
    for text in texts:
        for secret in secrets:
            assert secret not in text


# -- without Azurite: the extra is missing ----------------------------------------------------------------


async def test_missing_sdk_answers_400_missing_extra(jp_fetch, monkeypatch):
    # The one simulated fault: azure-storage-blob cannot be imported.
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)
    for destination in (f"az://{CONTAINER}/kepler/", f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/kepler/"):
        body = {"source": str(KEPLER), "destination": destination}
        error = await expect_error(post_job(jp_fetch, body), 400, "missing_extra")
        assert 'pip install "jupyter_staging[azure]"' in error["message"]


# -- acceptance 1 on Azure: Kepler into az://results/kepler/ ----------------------------------------------


@pytest.mark.slow
async def test_kepler_converted_into_azure_gives_three_parts_then_the_manifest(
    jp_fetch, jp_root_dir, results, azurite
):
    mark = azurite.mark()
    body = {
        "source": str(KEPLER),
        "destination": f"az://{CONTAINER}/kepler/",
        "convert": {"format": "parquet", "chunk_rows": 5000},
        "name": "kepler-lc",
    }
    created = json.loads((await post_job(jp_fetch, body)).body)
    assert created["destination"] == f"az://{CONTAINER}/kepler/{created['id']}/"
    job = await wait_for(jp_fetch, created["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == 3
    assert job["progress"]["rows_done"] == 14280

    prefix = job_prefix(job)
    stem = KEPLER.name.removesuffix(".fits") + ".parquet"
    parts = [f"{stem}/part-0000{i}.parquet" for i in range(3)]
    assert blobs_below(results, prefix) == {*parts, "manifest.json"}

    # The manifest is the last blob written under the job's prefix.
    puts = [
        urlsplit(r["url"]).path.split(f"/{prefix}", 1)[1]
        for r in azurite.requests(mark)
        if r["method"] == "PUT" and f"/{prefix}" in r["url"]
    ]
    assert puts and puts[-1] == "manifest.json" and set(puts[:-1]) == set(parts), puts

    stored = json.loads(results.download_blob(f"{prefix}manifest.json").readall())
    assert stored == await get_json(jp_fetch, "jobs", job["id"], "manifest")
    assert [o["path"] for o in stored["objects"]] == parts
    assert [o["uri"] for o in stored["objects"]] == [f"az://{CONTAINER}/{prefix}{p}" for p in parts]

    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["path"] for c in chunks] == [f"az://{CONTAINER}/{prefix}{p}" for p in parts]
    assert [c["rows"] for c in chunks] == [5000, 5000, 4280]
    tables = []
    for chunk, part in zip(chunks, parts, strict=True):
        assert chunk["state"] == "ready" and chunk["url"].startswith("http")
        assert sas_of(chunk["url"])["sp"] == "r"  # read only
        assert parse_time(chunk["url_expires_at"]) == expiry_of(chunk["url"])
        # Plain HTTP, no credentials: the SAS URL is all it takes.
        response = requests.get(chunk["url"], timeout=30)
        assert response.status_code == 200
        assert sha256(response.content) == chunk["sha256"] == stored["objects"][parts.index(part)]["sha256"]
        assert len(response.content) == chunk["bytes"]
        tables.append(pq.read_table(io.BytesIO(response.content)))
        props = results.get_blob_client(f"{prefix}{part}").get_blob_properties()
        assert props.metadata["sha256"] == chunk["sha256"]
        assert bytes(props.content_settings.content_md5) == hashlib.md5(response.content).digest()
        assert props.content_settings.content_type == "application/vnd.apache.parquet"
    assert sum(t.num_rows for t in tables) == 14280
    assert tables[0].schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"

    # Nothing is left in the user's folder: parts went through a private scratch folder, now gone.
    assert [p for p in jp_root_dir.rglob("*") if p.is_file()] == []


async def test_named_account_form_lands_in_the_same_container(jp_fetch, results, shared_data):
    body = {
        "source": str(shared_data / "README.md"),
        "destination": f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert job["destination"] == f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/{job['id']}/"
    job = await wait_for(jp_fetch, job["id"], timeout=60)
    assert job["state"] == "succeeded", job
    assert blobs_below(results, f"{job['id']}/") == {"README.md", "manifest.json"}
    [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert requests.get(chunk["url"], timeout=30).content == (shared_data / "README.md").read_bytes()


async def test_bad_azure_destinations_are_refused(jp_fetch, azurite, monkeypatch, results):
    source = str(KEPLER)
    for destination, code in (
        ("az://no-such-container/x/", "destination_not_found"),
        (f"az://{CONTAINER}/a//b/", "invalid_destination"),
        (f"az://{CONTAINER}/a/../b/", "invalid_destination"),
        ("az://Bad_Container/x/", "invalid_destination"),
        # An account no credentials are configured for: never written anonymously.
        (f"azure://someotheraccount/{CONTAINER}/x/", "destination_forbidden"),
    ):
        await expect_error(post_job(jp_fetch, {"source": source, "destination": destination}), 400, code)
    await expect_error(
        post_job(jp_fetch, {"source": source, "destination": f"az://{CONTAINER}/x/", "method": "symlink"}),
        400,
        "invalid_method",
    )
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    error = await expect_error(
        post_job(jp_fetch, {"source": source, "destination": f"az://{CONTAINER}/x/"}),
        400,
        "destination_forbidden",
    )
    assert "AZURE_STORAGE_CONNECTION_STRING" in error["message"]


class TestExpiry:
    """SAS URLs valid 2 s (``StagingApp.presign_expiry_seconds``); Azurite enforces their expiry."""

    @pytest.fixture
    def jp_server_config(self, tmp_path):
        return server_config(tmp_path, presign_expiry_seconds=2)

    async def test_after_the_url_expires_refresh_gives_a_working_one(self, jp_fetch, tmp_path, results):
        body = {"source": str(KEPLER), "destination": f"az://{CONTAINER}/expiry/"}
        job = json.loads((await post_job(jp_fetch, body)).body)
        job = await wait_for(jp_fetch, job["id"], timeout=60)
        assert job["state"] == "succeeded", job

        [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
        first = chunk["url"]
        assert parse_time(chunk["url_expires_at"]) == expiry_of(first)
        assert expiry_of(first) - datetime.now(timezone.utc) <= timedelta(seconds=2)
        assert requests.get(first, timeout=30).content == KEPLER.read_bytes()

        await asyncio.sleep(max(0.0, (expiry_of(first) - datetime.now(timezone.utc)).total_seconds()) + 1.1)
        assert requests.get(first, timeout=30).status_code == 403  # expired

        refreshed = await get_json(jp_fetch, "jobs", job["id"], "chunks", "0", "refresh")
        second = refreshed["url"]
        assert sas_of(second)["sig"] != sas_of(first)["sig"]
        assert parse_time(refreshed["url_expires_at"]) == expiry_of(second)
        assert expiry_of(second) > datetime.now(timezone.utc) and expiry_of(second) > expiry_of(first)
        assert {k: refreshed[k] for k in ("id", "path", "sha256", "state")} == {
            k: chunk[k] for k in ("id", "path", "sha256", "state")
        }
        assert requests.get(second, timeout=30).content == KEPLER.read_bytes()

        # Nothing about the URLs or the account key is kept: not in the job, its log, its manifest, the
        # events' source (the job) or the database.
        payloads = [
            json.dumps(await get_json(jp_fetch, "jobs", job["id"])),
            json.dumps(await get_json(jp_fetch, "jobs", job["id"], "log")),
            json.dumps(await get_json(jp_fetch, "jobs", job["id"], "manifest")),
            (tmp_path / "staging-jobs.sqlite").read_bytes().decode("latin-1"),
        ]
        assert_no_secret(payloads, [sas_of(first)["sig"], sas_of(second)["sig"], "sig=", AZURITE_KEY])


async def test_without_an_account_key_listing_works_and_refresh_says_cannot_presign(
    jp_fetch, tmp_path, azurite, monkeypatch, results
):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        CONTAINER,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True, create=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    use_azurite(
        azurite, monkeypatch, AZURE_STORAGE_ACCOUNT_URL=azurite.blob_endpoint, AZURE_STORAGE_SAS_TOKEN=sas
    )
    body = {"source": str(KEPLER), "destination": f"az://{CONTAINER}/sas-only/"}
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], timeout=60)
    assert job["state"] == "succeeded", job
    assert blobs_below(results, job_prefix(job)) == {KEPLER.name, "manifest.json"}

    [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert chunk["state"] == "ready" and chunk["url"] is None
    error = await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "0", "refresh"), 409, "cannot_presign"
    )
    payloads = [
        json.dumps(error),
        json.dumps(await get_json(jp_fetch, "jobs", job["id"])),
        json.dumps(await get_json(jp_fetch, "jobs", job["id"], "log")),
        (tmp_path / "staging-jobs.sqlite").read_bytes().decode("latin-1"),
    ]
    assert_no_secret(payloads, [sas_of(f"http://x/?{sas}")["sig"], sas])


# -- cleanup: exactly the job's prefix ----------------------------------------------------------------------


@pytest.mark.slow
async def test_delete_on_success_removes_exactly_the_job_prefix(jp_fetch, results):
    siblings = put_siblings(results, "cleanup/")
    body = {
        "source": str(KEPLER),
        "destination": f"az://{CONTAINER}/cleanup/",
        "convert": {"chunk_rows": 5000},
        "cleanup_policy": "delete_on_success",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert blobs_below(results, job_prefix(job)) == set()
    assert_siblings_intact(results, siblings)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["state"] for c in chunks] == ["expired"] * 3
    assert all(c["url"] is None for c in chunks)
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "0", "refresh"), 409, "chunk_not_ready")


def test_removing_a_job_prefix_spares_a_sibling_whose_name_starts_with_it(results, tmp_path):
    from jupyter_staging.destinations.core import AzureDestination

    job_id = "0b7e5d6c-job"
    prefix = "nested/run/"
    mine = {f"{prefix}{job_id}/a.fits": b"a", f"{prefix}{job_id}/deep/b.parquet": b"b"}
    siblings = {
        f"{prefix}{job_id}-sibling/a.fits": b"s1",  # same leading characters, another prefix
        f"{prefix}{job_id}x": b"s2",
        f"{prefix}a.fits": b"s3",
        "nested/other.txt": b"s4",
    }
    for name, data in {**mine, **siblings}.items():
        results.upload_blob(name, data, overwrite=True)
    scratch = tmp_path / "scratch" / job_id
    scratch.mkdir(parents=True)
    (scratch / "leftover.part").write_bytes(b"x")
    destination = AzureDestination(job_id, f"az://{CONTAINER}/{prefix}{job_id}/", scratch)

    assert destination.remove([], [], [], keep_ready=True) == 0  # partial work only
    assert not scratch.exists()
    assert blobs_below(results, f"{prefix}{job_id}/") == {"a.fits", "deep/b.parquet"}

    assert destination.remove([], [], [], keep_ready=False) == 2
    assert blobs_below(results, f"{prefix}{job_id}/") == set()
    assert_siblings_intact(results, siblings)

    with pytest.raises(Exception) as info:  # a prefix that is not the job's own is never taken
        AzureDestination(job_id, f"az://{CONTAINER}/{prefix}", scratch)
    assert getattr(info.value, "code", None) == "invalid_destination"


def test_a_block_upload_is_verified_and_lands_byte_identical(results, azurite, tmp_path):
    from jupyter_staging.destinations.core import AzureDestination

    data = os.urandom(3 * 1024 * 1024 + 123)
    local = tmp_path / "scratch" / "job-1" / "big.bin"
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    destination = AzureDestination(
        "job-1",
        f"az://{CONTAINER}/multi/job-1/",
        local.parent,
        single_put_size=1024 * 1024,
        block_size=1024 * 1024,
    )
    mark = azurite.mark()
    path = destination.put(
        local, "big.bin", size=len(data), sha256=sha256(data), content_type=None, control=JobControl()
    )
    assert path == f"az://{CONTAINER}/multi/job-1/big.bin"
    assert not local.exists()  # uploaded, then the local copy removed
    blocks = [r for r in azurite.requests(mark) if r["method"] == "PUT" and "comp=block&" in r["url"]]
    assert len(blocks) == 4 and all(r["headers"].get("content-md5") for r in blocks)  # each block checked
    blob = results.get_blob_client("multi/job-1/big.bin")
    assert blob.get_blob_properties().metadata["sha256"] == sha256(data)
    assert blob.download_blob().readall() == data


def test_an_upload_that_does_not_match_its_checksum_is_deleted_and_fails(results, tmp_path):
    from jupyter_staging.destinations.core import AzureDestination
    from jupyter_staging.errors import VerificationFailed

    local = tmp_path / "job-2" / "a.txt"
    local.parent.mkdir()
    local.write_bytes(b"the bytes on disk")
    destination = AzureDestination("job-2", f"az://{CONTAINER}/verify/job-2/", local.parent)
    with pytest.raises(VerificationFailed):
        destination.put(
            local, "a.txt", size=17, sha256=sha256(b"other bytes"), content_type=None, control=JobControl()
        )
    assert blobs_below(results, "verify/job-2/") == set()
    assert local.exists()  # kept for another attempt


def test_a_cancelled_upload_stops_and_leaves_no_blob(results, tmp_path):
    from jupyter_staging.destinations.core import AzureDestination
    from jupyter_staging.errors import JobInterrupted

    data = os.urandom(2 * 1024 * 1024)
    local = tmp_path / "job-3" / "c.bin"
    local.parent.mkdir()
    local.write_bytes(data)
    destination = AzureDestination(
        "job-3",
        f"az://{CONTAINER}/stop/job-3/",
        local.parent,
        single_put_size=512 * 1024,
        block_size=512 * 1024,
    )
    control = JobControl()
    control.interrupt("cancelled")
    with pytest.raises(JobInterrupted):
        destination.put(
            local, "c.bin", size=len(data), sha256=sha256(data), content_type=None, control=control
        )
    assert blobs_below(results, "stop/job-3/") == set() and local.exists()


@pytest.mark.slow
async def test_ttl_expiry_deletes_the_job_prefix(jp_fetch, jp_serverapp, results):
    await start_extension(jp_serverapp)
    siblings = put_siblings(results, "ttl/")
    body = {"source": str(KEPLER), "destination": f"az://{CONTAINER}/ttl/", "ttl_seconds": 1}
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], states=("expired", "failed"), timeout=60)
    assert job["state"] == "expired", job
    assert blobs_below(results, job_prefix(job)) == set()
    assert_siblings_intact(results, siblings)


@pytest.fixture
def three_files(range_server):
    """Three files over throttled HTTP: a small one done at once, two that take seconds."""
    payloads = {
        "small.bin": os.urandom(20_000),
        "medium.bin": os.urandom(1_500_000),
        "large.bin": os.urandom(2_500_000),
    }
    for name, data in payloads.items():
        (range_server.root / name).write_bytes(data)
    range_server.throttle_bytes_per_s = 500_000
    return {name.split(".")[0]: (range_server.url(name), data) for name, data in payloads.items()}


@pytest.mark.slow
async def test_cancel_removes_the_blobs_already_uploaded(jp_fetch, jp_root_dir, results, three_files):
    siblings = put_siblings(results, "cancel/")
    body = {
        "manifest": {n: url for n, (url, _) in three_files.items()},
        "destination": f"az://{CONTAINER}/cancel/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    await wait_chunks(jp_fetch, job["id"], lambda cs: any(c["state"] == "ready" for c in cs))
    prefix = job_prefix(job)
    assert "small/small.bin" in blobs_below(results, prefix)

    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    job = await wait_for(jp_fetch, job["id"], states=("cancelled",), timeout=30)
    assert blobs_below(results, prefix) == set()
    assert_siblings_intact(results, siblings)
    assert not [p for p in jp_root_dir.rglob("*") if p.is_file()]  # no scratch left either


def test_content_md5_of_a_single_shot_upload_is_the_files(results, tmp_path):
    from jupyter_staging.destinations.core import AzureDestination

    data = b"one Put Blob\n" * 100
    local = tmp_path / "job-4" / "s.txt"
    local.parent.mkdir()
    local.write_bytes(data)
    destination = AzureDestination("job-4", f"az://{CONTAINER}/md5/job-4/", local.parent)
    destination.put(
        local, "s.txt", size=len(data), sha256=sha256(data), content_type="text/plain", control=JobControl()
    )
    props = results.get_blob_client("md5/job-4/s.txt").get_blob_properties()
    assert base64.b64encode(bytes(props.content_settings.content_md5)) == base64.b64encode(
        hashlib.md5(data).digest()
    )
    assert props.content_settings.content_type == "text/plain"
