"""An ack of an object-store chunk under ``delete_on_ack`` whose delete fails (the store unreachable): the ack
is answered with the store's error and the chunk stays ``ready``, so a retried ack deletes it. Before, the
chunk was already ``acked`` when the delete failed: the object stayed for good, a retry answered ``acked``
and deleted nothing, and the job never expired."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_staging.clouds.s3 import s3_client
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.store import utcnow
from jupyter_staging.errors import DestinationUnavailable, StagingError
from tests.helpers.data import KEPLER
from tests.helpers.managers import manager_for
from tests.helpers.servers import MotoS3Server


@pytest.mark.slow
def test_an_ack_whose_object_delete_fails_leaves_the_chunk_ready(tmp_path: Path, monkeypatch):
    server = MotoS3Server().start()
    try:
        server.apply_env(monkeypatch)
        s3_client().create_bucket(Bucket="acks")
        (tmp_path / "root").mkdir()
        manager = manager_for(tmp_path)
        try:
            request = {
                "source": str(KEPLER),
                "destination": "s3://acks/out/",
                "cleanup_policy": "delete_on_ack",
            }
            job, _ = manager.create(CreateJob(**request))
            assert manager.wait(job.id, timeout=120).state == JobState.succeeded
            keys = [o["Key"] for o in s3_client().list_objects_v2(Bucket="acks")["Contents"]]
            assert any(k.endswith(KEPLER.name) for k in keys), keys
            port = server.port
            server.stop()  # the store unreachable: the delete fails
            # Refused: "unavailable, try again later" (503), not an error of writing (502 upload_failed).
            for call in (manager.ack, manager.refresh_chunk):
                with pytest.raises(StagingError) as failed:
                    call(job.id, "0")
                assert failed.value.code == "destination_unavailable" and failed.value.status == 503
                assert "cannot be reached now (connection refused)" in failed.value.message
            assert [c.state for c in manager.chunks(job.id)] == ["ready"]  # not acked: a retry deletes it
            assert manager.get(job.id).state == JobState.succeeded
            server = MotoS3Server(port=port).start()  # back (empty: moto keeps nothing)
            s3_client().create_bucket(Bucket="acks")
            assert manager.ack(job.id, "0").state == "acked"
            assert manager.get(job.id).state == JobState.expired
        finally:
            manager.stop()
    finally:
        server.stop()


@pytest.mark.slow
def test_a_misconfigured_endpoint_answers_ack_refresh_and_sweep_clearly_and_loses_nothing(
    manager: StagingManager, s3_env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The server's ``AWS_ENDPOINT_URL`` not a URL: botocore raised a bare ``ValueError`` making the client,
    which the server answered as if the request were malformed. Now an ack and a refresh answer 503
    ``destination_unavailable`` naming the setting, the chunk stays ``ready`` with its object, the TTL sweep
    leaves the job for the next sweep, and all of them work once the setting is right."""
    client, bucket = s3_env
    request = CreateJob(
        source=str(KEPLER), destination=f"s3://{bucket}/out/", cleanup_policy="delete_on_ack", ttl_seconds=1
    )
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=120).state == JobState.succeeded
    key = f"out/{job.id}/{KEPLER.name}"
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    for call in (manager.ack, manager.refresh_chunk):
        with pytest.raises(DestinationUnavailable) as failed:
            call(job.id, "0")
        assert failed.value.code == "destination_unavailable" and failed.value.status == 503
        assert "AWS_ENDPOINT_URL" in failed.value.message
    assert [c.state for c in manager.chunks(job.id, urls=False)] == ["ready"]
    assert client.head_object(Bucket=bucket, Key=key)["ContentLength"] == KEPLER.stat().st_size
    later = utcnow() + timedelta(seconds=5)
    with caplog.at_level(logging.WARNING, logger="jupyter_staging.engine.manager"):
        assert manager.sweep(later) == [job.id]
    assert manager.get(job.id).state == JobState.succeeded  # left for the next sweep
    assert any(job.id in r.getMessage() and "AWS_ENDPOINT_URL" in r.getMessage() for r in caplog.records)

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # fixed: everything works again
    assert manager.refresh_chunk(job.id, "0").url
    assert manager.ack(job.id, "0").state == "acked"
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=f"out/{job.id}/")
