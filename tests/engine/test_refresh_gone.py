"""A URL refresh of a chunk whose object was removed from the bucket behind the job's back (another tool, a
bucket lifecycle rule): it used to presign a URL of the missing object, which answered 404 to whoever
used it. Now the refresh asks the store once (a HeadObject) and answers 409 ``chunk_expired`` saying the
object is gone, changing nothing (a GET); a chunk whose object is there costs that one request.

Real parts: moto's S3 endpoint (and its request recorder), a real :class:`StagingManager` with its SQLite
job database, the shipped Kepler light curve.
"""

from __future__ import annotations

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.errors import InvalidState
from tests.helpers.data import KEPLER, TESS


@pytest.mark.slow
def test_a_refresh_of_a_chunk_whose_object_was_removed_says_it_is_gone(
    manager: StagingManager, s3_server, s3_env
):
    client, bucket = s3_env
    request = CreateJob(manifest={"k": str(KEPLER), "t": str(TESS)}, destination=f"s3://{bucket}/out/")
    job, _ = manager.create(request)
    assert manager.wait(job.id, timeout=120).state == JobState.succeeded
    chunks = manager.chunks(job.id, urls=False)
    gone = next(c for c in chunks if c.path.endswith(KEPLER.name))
    kept = next(c for c in chunks if c.path.endswith(TESS.name))
    key = gone.path.removeprefix(f"s3://{bucket}/")
    client.head_object(Bucket=bucket, Key=key)
    client.delete_object(Bucket=bucket, Key=key)  # behind the job's back

    s3_server.start_recording()
    try:
        with pytest.raises(InvalidState) as failed:
            manager.refresh_chunk(job.id, gone.id)
        assert failed.value.code == "chunk_expired" and failed.value.status == 409
        assert "no longer" in failed.value.message
        assert manager.refresh_chunk(job.id, kept.id).url
        requests = s3_server.recorded()
    finally:
        s3_server.stop_recording()
    assert [r["method"] for r in requests] == ["HEAD", "HEAD"]  # one request a refresh
    assert [c.state.value for c in manager.chunks(job.id, urls=False)] == ["ready", "ready"]  # a GET
