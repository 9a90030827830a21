"""Fixtures of the destination tests: the object stores, parametrised over S3 (moto) and Azure (Azurite)."""

from __future__ import annotations

import pytest

from tests.helpers.jupyter import server_config
from tests.helpers.objectstore import azure_store, s3_store, serve_three_files


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path, sweep_interval=0.2)


@pytest.fixture
def s3_results(s3_env, s3_server):
    """:class:`~tests.helpers.objectstore.S3Store`: moto's S3 with the bucket ``results``."""
    return s3_store(s3_env, s3_server)


@pytest.fixture
def azure_results(azurite, monkeypatch):
    """:class:`~tests.helpers.objectstore.AzureStore`: Azurite with the container ``results`` (skips
    without Azurite or azure-storage-blob)."""
    return azure_store(azurite, monkeypatch)


@pytest.fixture(params=["s3", "azure"])
def store(request):
    """The object store under test: each test using it runs once against S3 and once against Azure."""
    return request.getfixturevalue(f"{request.param}_results")


@pytest.fixture
def three_files(range_server):
    """Three files over throttled HTTP: a small one done at once, two that take seconds."""
    return serve_three_files(range_server)
