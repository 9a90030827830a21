"""Objects of an S3 prefix overwritten with another size between the listing and their GET are staged as
they are now (the GET's ``IfMatch`` fails and the object is fetched again, whole: never a spliced file), but
the job's progress kept the listed sizes: it ended ``succeeded`` saying 24,000,000 of 24,000,000 bytes done
while it had staged 23,646,914 (its own last log line said 23.6 MB). A finished plain transfer now states
the bytes it staged as both its total and its bytes done.

Real parts: moto's S3 endpoint, a real :class:`StagingManager` (two items at once) with its SQLite database.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from jupyter_staging.engine.models import CreateJob
from tests.helpers.managers import manager_for

SIZE, NEW_SIZE, COUNT = 300_000, 123_457, 80


def test_objects_overwritten_with_another_size_give_the_staged_total(tmp_path: Path, s3_env):
    client, bucket = s3_env
    data = {f"p/f{i:03d}.bin": os.urandom(SIZE) for i in range(COUNT)}
    for key, body in data.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    (tmp_path / "root").mkdir()
    manager = manager_for(tmp_path, concurrent_items=2)
    try:
        job, _ = manager.create(CreateJob(source=f"s3://{bucket}/p/", destination="out"))
        deadline = time.monotonic() + 30
        while sum(c.state.value == "ready" for c in manager.chunks(job.id)) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert manager.pause(job.id).state.value == "paused"
        for key in ("p/f078.bin", "p/f079.bin"):  # not fetched yet: listed at SIZE, now NEW_SIZE
            data[key] = os.urandom(NEW_SIZE)
            client.put_object(Bucket=bucket, Key=key, Body=data[key])
        manager.resume(job.id)
        done = manager.wait(job.id, timeout=120)
        assert done.state.value == "succeeded", done.error
        log = [line["message"] for line in manager.job_log(job.id)]
        assert sum("the object changed" in line for line in log) == 2, log

        out = tmp_path / "root" / "out"
        for key, body in data.items():
            assert (out / key[2:]).read_bytes() == body, key
        staged = sum(len(body) for body in data.values())
        assert (done.progress.bytes_done, done.progress.bytes_total) == (staged, staged)
        objects = {o["path"]: o for o in json.loads((out / "manifest.json").read_text())["objects"]}
        assert objects["f079.bin"]["size"] == NEW_SIZE
    finally:
        manager.stop()
