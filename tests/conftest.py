"""Shared fixtures: real Jupyter servers (pytest-jupyter), the shipped mission data, test servers."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.data import SHARED_DATA
from tests.helpers.groups import GROUPS, group_of, require_azure_sdk, skip_group
from tests.helpers.jupyter import server_config

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def shared_data() -> Path:
    """The read-only folder of real mission data beside the repository (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared mission data is missing: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def jp_server_config(tmp_path):
    """A server with only our extension, strict authentication, and the job database in tmp_path."""
    return server_config(tmp_path)


@pytest.fixture
def local_backend(tmp_path, monkeypatch):
    """Jobs of this test run in-process (the client's fallback), confined to ``tmp_path``, the cwd."""
    from jupyter_staging.kernel import api

    monkeypatch.chdir(tmp_path)
    backend = api.use_local(tmp_path, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield backend
    api.reset_backend()


# -- real HTTP, S3 and Azure Blob servers on 127.0.0.1 (tests/servers.py) ------------------------------


def _servers():
    """``tests/servers.py``, whether ``tests`` is imported as a package or as a plain folder."""
    try:
        from tests.helpers import servers
    except ImportError:
        import servers  # type: ignore[no-redef]
    return servers


@pytest.fixture
def range_server(tmp_path_factory):
    """A :class:`servers.RangeHTTPServer` serving a fresh temporary folder (``range_server.root``)."""
    with _servers().RangeHTTPServer(tmp_path_factory.mktemp("http-root")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 endpoint (:class:`servers.MotoS3Server`), one per test session."""
    with _servers().MotoS3Server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS settings pointing at ``s3_server`` and a new empty bucket: yields ``(client, bucket)``."""
    import uuid

    from jupyter_staging.clouds.s3 import s3_client

    s3_server.apply_env(monkeypatch)
    client = s3_client()
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket


@pytest.fixture(scope="session")
def azurite():
    """A running Azurite blob service (:class:`servers.AzuriteServer`), one per test session; skips the
    test when Azurite or azure-storage-blob is missing."""
    require_azure_sdk()
    servers = _servers()
    command = servers.find_azurite()
    if command is None:
        skip_group("azure", "azurite-blob is not installed: run scripts/ci-azure-deps.sh")
    with servers.AzuriteServer(command) as server:
        yield server


@pytest.fixture
def azure_env(azurite, monkeypatch):
    """The environment pointing at ``azurite`` and a new empty container: yields its ContainerClient."""
    import uuid

    from azure.storage.blob import BlobServiceClient

    for name in _servers().AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container(f"test-{uuid.uuid4().hex[:12]}")
    yield container


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: needs several seconds (real servers, kernels or conversions); runs by default, "
        "deselect with -m 'not slow'",
    )


# -- loud skips (tests/helpers/groups.py) --------------------------------------------------------------

_SKIPPED_GROUPS: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the tests skipped because a group's tool is missing."""
    if report.skipped and isinstance(report.longrepr, tuple):
        group = group_of(str(report.longrepr[2]))
        if group is not None:
            _SKIPPED_GROUPS[group] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``CI=true`` a skipped group fails the run."""
    if _SKIPPED_GROUPS and os.environ.get("CI", "").lower() == "true" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line per skipped group, with the command that enables it."""
    if not _SKIPPED_GROUPS:
        return
    ci = os.environ.get("CI", "").lower() == "true"
    terminalreporter.section("skipped test groups" + (" (CI=true: the run fails)" if ci else ""))
    for group, count in sorted(_SKIPPED_GROUPS.items()):
        terminalreporter.write_line(f"SKIPPED GROUP {group}: {count} test(s); enable with: {GROUPS[group]}")
