"""Azure Blob sources (the ``azure`` extra) against Azurite, Microsoft's storage emulator, on 127.0.0.1.

Azurite is the npm package ``azurite`` (``scripts/ci-azure-deps.sh`` installs it into ``.venv/azurite``;
the ``azurite`` / ``azure_env`` fixtures are in conftest.py); the client is ``azure-storage-blob``.
Tests that need either are skipped, with the reason, when absent.
No mocks: the only simulated fault is a missing SDK (an import that fails).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from jupyter_staging.clouds.azure import AZURE_BLOCK, parse_azure_uri
from jupyter_staging.errors import InvalidRequest, JobInterrupted, SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.azure import AzureSource
from tests.helpers.data import KEPLER_NAME, SPITZER_NAME, TESS_NAME, sha256
from tests.helpers.groups import require_azure_sdk
from tests.helpers.net import free_port as _free_port
from tests.helpers.servers import AZURE_ENV, AZURITE_ACCOUNT, AZURITE_KEY
from tests.helpers.sources import Progress


def stage(source, item, dest: Path, *, resume: bool = False, control: JobControl | None = None):
    """Fetch ``item`` into ``dest`` the way the manager does; returns (path, size, sha256, part file)."""
    out = PartFile(dest / item.name, resume=resume)
    try:
        source.fetch(item, out, control or JobControl())
    except BaseException:
        out.close()
        raise
    size, digest = out.commit(item.size)
    return dest / item.name, size, digest, out


def write_partial(dest: Path, name: str, data: bytes) -> None:
    """Leave ``dest/name.part`` holding ``data``, as an interrupted attempt would."""
    out = PartFile(dest / name)
    out.write(data)
    out.close()


def upload(container, name: str, data: bytes) -> str:
    """Upload (or overwrite) blob ``name``; returns its ETag as a header gives it (quoted)."""
    container.upload_blob(name, data, overwrite=True)
    return container.get_blob_client(name).get_blob_properties().etag


@pytest.fixture
def dest(tmp_path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


# -- without Azurite ------------------------------------------------------------------------------------


def test_missing_sdk_says_which_extra_to_install(monkeypatch):
    # The one simulated fault: azure-storage-blob cannot be imported.
    monkeypatch.setitem(sys.modules, "azure.storage.blob", None)

    with pytest.raises(InvalidRequest) as info:
        AzureSource("az://data/lc.fits")

    assert info.value.code == "missing_extra"
    assert 'pip install "jupyter_staging[azure]"' in info.value.message


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("az://data/lc/kepler.fits", (None, "data", "lc/kepler.fits")),
        ("az://data/lc/", (None, "data", "lc/")),
        ("az://data", (None, "data", "")),
        ("AZ://data/x", (None, "data", "x")),
        ("azure://myaccount/data/lc/", ("myaccount", "data", "lc/")),
    ],
)
def test_uris_are_parsed(uri, expected):
    assert parse_azure_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "az:///x",
        "az://Data/x",
        "az://ab/x",
        "azure://data",
        "azure://My_Account/data/x",
        "s3://b/k",
        "az://d\x00/x",
    ],
)
def test_malformed_uris_are_invalid_requests(uri):
    with pytest.raises(InvalidRequest) as info:
        parse_azure_uri(uri)
    assert info.value.code == "invalid_request"


def test_az_uri_without_a_configured_account_is_refused_with_the_settings_to_set(monkeypatch):
    require_azure_sdk()
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(SourceNotFound) as info:
        AzureSource("az://data/lc.fits").list_items()

    assert info.value.code == "source_forbidden"
    assert "AZURE_STORAGE_CONNECTION_STRING" in info.value.message


# -- against Azurite ------------------------------------------------------------------------------------


def test_single_blob_is_staged_byte_identical(azure_env, shared_data, dest):
    container = azure_env
    kepler = (shared_data / KEPLER_NAME).read_bytes()
    etag = upload(container, f"missions/{KEPLER_NAME}", kepler)

    for uri in (
        f"az://{container.container_name}/missions/{KEPLER_NAME}",
        f"azure://{AZURITE_ACCOUNT}/{container.container_name}/missions/{KEPLER_NAME}",
    ):
        source = AzureSource(uri)
        [item] = source.list_items()
        assert (item.name, item.size, item.validator["etag"]) == (KEPLER_NAME, len(kepler), etag)
        assert item.locator == uri
        progress = Progress()
        path, size, digest, _ = stage(source, item, dest, control=progress.control)

        assert path.read_bytes() == kepler
        assert (size, digest) == (len(kepler), sha256(kepler))
        assert progress.bytes == len(kepler)
        assert not (dest / (KEPLER_NAME + ".part")).exists()
        path.unlink()


@pytest.mark.parametrize("prefix", ["lc/", "lc"])
def test_prefix_stages_every_blob_with_relative_names(azure_env, shared_data, dest, prefix):
    container = azure_env
    files = {
        "kepler.fits": (shared_data / KEPLER_NAME).read_bytes(),
        "tess.fits": (shared_data / TESS_NAME).read_bytes(),
        "nested/deep/spitzer.xml": (shared_data / SPITZER_NAME).read_bytes(),
    }
    for rel, data in files.items():
        upload(container, f"lc/{rel}", data)
    upload(container, "lc/nested/", b"")  # a "folder" marker: skipped
    upload(container, "lc/.secret", b"hidden")  # a hidden name: skipped
    upload(container, "lcx/other.fits", b"not under the prefix")
    source = AzureSource(f"az://{container.container_name}/{prefix}")

    items = source.list_items()

    assert sorted(i.name for i in items) == sorted(files)
    assert {i.name: i.content_type for i in items}["nested/deep/spitzer.xml"] in (
        "application/xml",
        "text/xml",
    )
    for item in items:
        path, size, digest, _ = stage(source, item, dest)
        assert path == dest / item.name
        assert path.read_bytes() == files[item.name] and digest == sha256(files[item.name])


def test_empty_blob_is_staged(azure_env, dest):
    container = azure_env
    upload(container, "empty.txt", b"")
    source = AzureSource(f"az://{container.container_name}/empty.txt")
    [item] = source.list_items()

    path, size, digest, _ = stage(source, item, dest)

    assert path.read_bytes() == b"" and (size, digest) == (0, sha256(b""))


def test_missing_blob_prefix_and_container_are_source_not_found(azure_env):
    container = azure_env
    upload(container, "present.fits", b"x")
    name = container.container_name
    for uri in (f"az://{name}/absent.fits", f"az://{name}/absent/", "az://no-such-container/x.fits"):
        with pytest.raises(SourceNotFound) as info:
            AzureSource(uri).list_items()
        assert info.value.code == "source_not_found", uri
    with pytest.raises(SourceNotFound, match="container 'no-such-container' does not exist"):
        AzureSource("az://no-such-container/").list_items()


def test_blob_deleted_after_listing_is_source_not_found_on_fetch(azure_env, dest):
    container = azure_env
    upload(container, "gone.fits", b"soon gone")
    source = AzureSource(f"az://{container.container_name}/gone.fits")
    [item] = source.list_items()
    container.delete_blob("gone.fits")

    with pytest.raises(SourceNotFound) as info:
        stage(source, item, dest)
    assert info.value.code == "source_not_found"


def test_resume_with_unchanged_etag_uses_one_ranged_conditional_get(azure_env, azurite, shared_data, dest):
    container = azure_env
    kepler = (shared_data / KEPLER_NAME).read_bytes()
    etag = upload(container, "k.fits", kepler)
    source = AzureSource(f"az://{container.container_name}/k.fits")
    [item] = source.list_items()
    half = len(kepler) // 2
    write_partial(dest, item.name, kepler[:half])
    progress = Progress()
    mark = azurite.mark()

    path, size, digest, out = stage(source, item, dest, resume=True, control=progress.control)

    assert path.read_bytes() == kepler and digest == sha256(kepler)
    assert progress.bytes == len(kepler) - half and out.discarded == 0
    [get] = [r for r in azurite.requests(mark) if r["method"] == "GET" and r["url"].endswith("/k.fits")]
    assert get["headers"]["x-ms-range"].startswith(f"bytes={half}-")
    assert get["headers"]["if-match"] == etag


def test_blob_overwritten_between_attempts_restarts_on_the_new_version(azure_env, shared_data, dest):
    container = azure_env
    kepler = (shared_data / KEPLER_NAME).read_bytes()
    upload(container, "lc.fits", kepler)
    source = AzureSource(f"az://{container.container_name}/lc.fits")
    [item] = source.list_items()
    write_partial(dest, item.name, kepler[:600_000])
    tess = (shared_data / TESS_NAME).read_bytes()
    new_etag = upload(container, "lc.fits", tess)
    progress = Progress()

    path, size, digest, out = stage(source, item, dest, resume=True, control=progress.control)

    assert path.read_bytes() == tess and (size, digest) == (len(tess), sha256(tess))
    assert (item.validator["etag"], item.size) == (new_etag, len(tess))
    assert out.discarded == 600_000
    assert any("changed" in line for _, line in progress.lines)


def test_pause_mid_download_then_resume_reads_each_byte_once(azure_env, dest):
    container = azure_env
    data = os.urandom(2 * AZURE_BLOCK + 12_345)  # three ranged GETs
    upload(container, "big.bin", data)
    source = AzureSource(f"az://{container.container_name}/big.bin")
    [item] = source.list_items()
    seen = 0

    def on_bytes(n: int) -> None:
        nonlocal seen
        seen += n
        if seen >= AZURE_BLOCK:
            control.interrupt("paused")

    control = JobControl(on_bytes=on_bytes)
    with pytest.raises(JobInterrupted):
        stage(source, item, dest, control=control)
    partial = (dest / "big.bin.part").stat().st_size
    assert AZURE_BLOCK <= partial < len(data)

    progress = Progress()
    path, _, digest, _ = stage(source, item, dest, resume=True, control=progress.control)

    assert digest == sha256(data)
    assert seen + progress.bytes == len(data)


def test_account_url_with_a_sas_token_reads_and_errors_never_show_it(azurite, monkeypatch, dest):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container("sas-test")
    upload(container, "a.txt", b"read with a SAS\n")
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        "sas-test",
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", azurite.blob_endpoint)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)

    source = AzureSource("az://sas-test/")
    [item] = source.list_items()
    path, *_ = stage(source, item, dest)
    assert path.read_bytes() == b"read with a SAS\n"

    # The SAS grants nothing on another container: refused, and the message holds no part of it.
    with pytest.raises(SourceNotFound) as info:
        AzureSource("az://sas-test-other/x.txt").list_items()
    assert info.value.code in ("source_forbidden", "source_not_found")
    text = f"{info.value.message} {info.value!r} {info.value.to_dict()}"
    assert signature not in text and sas not in text


def test_wrong_account_key_is_source_forbidden_without_the_key(azurite, monkeypatch):
    wrong_key = "d3Jvbmcta2V5LWZvci10aGUtdGVzdC1vbmx5LW5vdC1yZWFsLXdyb25nLWtleS0xMjM0NTY3OA=="
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        azurite.connection_string.replace(AZURITE_KEY, wrong_key),
    )

    with pytest.raises(SourceNotFound) as info:
        AzureSource("az://anything/x.fits").list_items()

    assert info.value.code == "source_forbidden"
    assert wrong_key not in info.value.message and AZURITE_KEY not in info.value.message


def test_unreachable_endpoint_is_transfer_failed_naming_the_uri(monkeypatch):
    require_azure_sdk()
    from jupyter_staging.errors import TransferFailed

    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    closed = f"http://127.0.0.1:{_free_port()}/{AZURITE_ACCOUNT}"
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={closed};",
    )

    with pytest.raises(TransferFailed) as info:
        AzureSource("az://data/x.fits").list_items()

    assert "az://data/x.fits" in info.value.message and AZURITE_KEY not in info.value.message
