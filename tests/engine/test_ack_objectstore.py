"""An ack of an object-store chunk under ``delete_on_ack`` whose delete fails (the store unreachable): the ack
is answered with the store's error and the chunk stays ``ready``, so a retried ack deletes it. Before, the
chunk was already ``acked`` when the delete failed: the object stayed for good, a retry answered ``acked``
and deleted nothing, and the job never expired."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_staging.clouds.s3 import s3_client
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.errors import StagingError
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
            with pytest.raises(StagingError) as failed:
                manager.ack(job.id, "0")
            assert failed.value.status >= 500
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
