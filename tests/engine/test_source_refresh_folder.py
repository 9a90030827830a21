"""A job that failed ``source_expired``, named again by its idempotency key after another job wrote to its
folder: the submit revived it (``source_refreshed``), it published its file into the other job's output
(a file no manifest lists) and then failed ``destination_exists`` on that job's manifest. A revived job
must still be the newest job of its folder, as it is for a submit without a key; else it answers as it is.

Real parts: a Range HTTP server on 127.0.0.1 refusing expired SigV4 URLs with S3's 403, the SQLite job
database.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from tests.engine.test_source_refresh import signed
from tests.engine.test_source_refresh_kept import failed_with_a_kept_part


def test_a_key_does_not_revive_an_expired_job_into_a_folder_another_job_wrote_since(
    manager: StagingManager, range_server, root: Path
):
    (range_server.root / "o.bin").write_bytes(b"o" * 1000)
    first = failed_with_a_kept_part(manager, range_server, os.urandom(1_500_000), idempotency_key="K")
    other, created = manager.create(
        CreateJob(source=signed(range_server.url("o.bin"), "b" * 64, lifetime=600), destination="out")
    )
    assert created and manager.wait(other.id, timeout=30).state.value == "succeeded"
    manifest = (root / "out" / "manifest.json").read_bytes()

    again, created = manager.create(
        CreateJob(
            source=signed(range_server.url("k.bin"), "c" * 64, lifetime=600),
            destination="out",
            idempotency_key="K",
        )
    )
    assert (again.id, created, again.source_refreshed) == (first, False, False)
    time.sleep(1.0)  # a revived run would have published k.bin by now
    assert manager.get(first).state.value == "failed"
    assert not (root / "out" / "k.bin").exists(), "nothing published into the other job's output"
    assert (root / "out" / "manifest.json").read_bytes() == manifest
    assert manager.get(other.id).state.value == "succeeded"
