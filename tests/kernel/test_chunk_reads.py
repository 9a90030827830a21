"""A chunk in object storage read after its object went: a clear ``chunk_expired``, never the URL."""

from __future__ import annotations

import hashlib

import pytest

from jupyter_staging.errors import InvalidState
from jupyter_staging.kernel import api
from tests.helpers.data import KEPLER


def test_a_chunk_another_reader_acked_reads_as_chunk_expired_without_its_url(local_backend, s3_env):
    """Two readers of one ``delete_on_ack`` job in S3: the chunk one of them acked (its object deleted) is
    read by the other through the URL it was handed. Before, that raised requests' ``HTTPError`` whose
    message was the presigned URL, signature included, in the notebook's traceback; now it asks the
    server once and raises ``chunk_expired``."""
    _client, bucket = s3_env
    job = api.stage(str(KEPLER), f"s3://{bucket}/lc", cleanup_policy="delete_on_ack", wait=True)
    (chunk,) = list(job.iter_chunks())
    signature = chunk._data["url"].split("X-Amz-Signature=")[1]
    assert hashlib.sha256(chunk.read_bytes()).digest() == hashlib.sha256(KEPLER.read_bytes()).digest()
    job.ack(chunk.index)  # the other reader
    with pytest.raises(InvalidState) as gone:
        chunk.read_bytes()
    assert gone.value.code == "chunk_expired", gone.value
    assert signature not in str(gone.value) and "X-Amz" not in str(gone.value)
