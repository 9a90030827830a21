"""Azure Blob Storage as a destination, what only Azure does or only Azure checks, against Azurite on
127.0.0.1 and a real Jupyter server. What S3 and Azure share is checked for both in test_objectstore.py.

A missing SDK answers ``missing_extra``; the named-account form ``azure://account/container/``; no
configuration means ``destination_forbidden``; credentials without an account key stage but cannot
presign; a cancelled upload leaves no blob; a single-shot upload keeps the file's Content-MD5. Skipped,
with the reason, without Azurite or azure-storage-blob (see the ``azurite`` fixture in conftest.py). No
mocks: the only simulated fault is a missing SDK.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

import pytest
import requests

from jupyter_staging.destinations.azure import AzureDestination
from jupyter_staging.errors import JobInterrupted
from jupyter_staging.safety.control import JobControl
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER, sha256
from tests.helpers.objectstore import RESULTS, assert_no_secret, get_json, query, use_azurite
from tests.helpers.servers import AZURE_ENV, AZURITE_ACCOUNT, AZURITE_KEY

CONTAINER = RESULTS


@pytest.fixture
def results(azure_results):
    """Azurite configured for this process through AZURE_STORAGE_CONNECTION_STRING, with the container
    ``results`` (an AzureStore; ``.container`` is its ContainerClient)."""
    return azure_results


# -- without Azurite: the extra is missing ----------------------------------------------------------------


async def test_missing_sdk_answers_400_missing_extra(jp_fetch, monkeypatch):
    # The one simulated fault: azure-storage-blob cannot be imported.
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)
    for destination in (f"az://{CONTAINER}/kepler/", f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/kepler/"):
        body = {"source": str(KEPLER), "destination": destination}
        error = await expect_error(post_job(jp_fetch, body), 400, "missing_extra")
        assert 'pip install "jupyter_staging[azure]"' in error["message"]


# -- what only Azure has: named accounts, SAS-only credentials, no configuration -------------------------


async def test_named_account_form_lands_in_the_same_container(jp_fetch, results, shared_data):
    body = {
        "source": str(shared_data / "README.md"),
        "destination": f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert job["destination"] == f"azure://{AZURITE_ACCOUNT}/{CONTAINER}/{job['id']}/"
    job = await wait_for(jp_fetch, job["id"], timeout=60)
    assert job["state"] == "succeeded", job
    assert results.keys_below(f"{job['id']}/") == {"README.md", "manifest.json"}
    [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert requests.get(chunk["url"], timeout=30).content == (shared_data / "README.md").read_bytes()


async def test_without_azure_configuration_az_destinations_are_forbidden(
    jp_fetch, azurite, monkeypatch, results
):
    source = str(KEPLER)
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    error = await expect_error(
        post_job(jp_fetch, {"source": source, "destination": f"az://{CONTAINER}/x/"}),
        400,
        "destination_forbidden",
    )
    assert "AZURE_STORAGE_CONNECTION_STRING" in error["message"]


async def test_without_an_account_key_listing_works_and_refresh_says_cannot_presign(
    jp_fetch, tmp_path, azurite, monkeypatch, results
):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas  # the azure extra

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
    assert results.keys_below(results.job_prefix(job)) == {KEPLER.name, "manifest.json"}

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
    assert_no_secret(payloads, [query(f"http://x/?{sas}")["sig"], sas])


# -- uploads ------------------------------------------------------------------------------------------------


def test_a_cancelled_upload_stops_and_leaves_no_blob(results, tmp_path):
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
    assert results.keys_below("stop/job-3/") == set() and local.exists()


def test_content_md5_of_a_single_shot_upload_is_the_files(results, tmp_path):
    data = b"one Put Blob\n" * 100
    local = tmp_path / "job-4" / "s.txt"
    local.parent.mkdir()
    local.write_bytes(data)
    destination = AzureDestination("job-4", f"az://{CONTAINER}/md5/job-4/", local.parent)
    destination.put(
        local, "s.txt", size=len(data), sha256=sha256(data), content_type="text/plain", control=JobControl()
    )
    props = results.container.get_blob_client("md5/job-4/s.txt").get_blob_properties()
    assert base64.b64encode(bytes(props.content_settings.content_md5)) == base64.b64encode(
        hashlib.md5(data).digest()
    )
    assert props.content_settings.content_type == "text/plain"
