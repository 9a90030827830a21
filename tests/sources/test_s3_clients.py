"""One S3 client per process and AWS settings, shared by every S3 source, their listings and the streams
reading ranges at once. Against moto's S3 endpoint on 127.0.0.1 (tests/conftest.py ``s3_server``)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from jupyter_staging.clouds.s3 import shared_s3_client
from jupyter_staging.safety.control import JobControl
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.data import KEPLER

#: Bytes of the object read in ranges: a real Kepler light curve, repeated.
SIZE = 6_000_001


@pytest.fixture
def kepler_object(s3_env) -> tuple[str, bytes]:
    """``(bucket, bytes)`` of ``s3://bucket/lc/big.fits``, a ~6 MB object of Kepler data."""
    client, bucket = s3_env
    data = (KEPLER.read_bytes() * (SIZE // KEPLER.stat().st_size + 1))[:SIZE]
    client.put_object(Bucket=bucket, Key="lc/big.fits", Body=data)
    return bucket, data


def test_sources_of_one_configuration_share_one_client_and_another_configuration_gets_its_own(
    kepler_object, monkeypatch
):
    bucket, _ = kepler_object
    first = S3Source(f"s3://{bucket}/lc/big.fits")
    second = S3Source(f"s3://{bucket}/lc/")
    assert first.client() is second.client() is shared_s3_client()
    assert [item.name for item in second.list_items()] == ["big.fits"]
    before = first.client()
    assert second.client() is before

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    third = S3Source(f"s3://{bucket}/lc/big.fits")
    assert third.client() is not before
    assert third.client().meta.region_name == "eu-west-1"
    [item] = third.list_items()  # the new client reaches the same server
    assert item.size == SIZE


def test_four_streams_on_the_shared_client_write_the_object_byte_for_byte(kepler_object, tmp_path):
    bucket, data = kepler_object
    source = S3Source(f"s3://{bucket}/lc/big.fits")
    [item] = source.list_items()
    step = -(-SIZE // 4)
    spans = [(start, min(step, SIZE - start)) for start in range(0, SIZE, step)]
    path = tmp_path / "big.fits.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, SIZE)
        with ThreadPoolExecutor(4) as pool:
            written = list(pool.map(lambda s: source.fetch_range(item, s[0], s[1], fd, JobControl()), spans))
    finally:
        os.close(fd)
    assert written == [length for _, length in spans]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
