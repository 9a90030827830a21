"""The TTL sweep expires every due job even when one of them fails with an error nobody planned for: an S3
destination job while the server's ``AWS_ENDPOINT_URL`` is not a URL (botocore raises ``ValueError`` making
the client). That error used to leave the sweep at once, and as it met that job first every ten seconds, the
jobs due after it (a local folder's here) were never expired and their output stayed for good. Now the
failing job is logged (its error's type and redacted message) and left for the next sweep, and the others
are expired. (The destination now turns that ``ValueError`` into ``destination_unavailable``, which names
the setting; the sweep goes on the same way.)

Real parts: moto's S3 endpoint, a real :class:`StagingManager` with its SQLite job database, the shipped
Kepler light curve.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import utcnow
from tests.helpers.data import KEPLER


def test_one_job_failing_to_expire_never_keeps_the_others_from_expiring(
    manager: StagingManager, root: Path, s3_env, monkeypatch: pytest.MonkeyPatch, caplog
):
    client, _ = s3_env
    client.create_bucket(Bucket="results")
    local, _ = manager.create(CreateJob(source=str(KEPLER), destination="local", ttl_seconds=1))
    assert manager.wait(local.id, timeout=60).state.value == "succeeded"
    remote, _ = manager.create(CreateJob(source=str(KEPLER), destination="s3://results/pre/", ttl_seconds=1))
    assert manager.wait(remote.id, timeout=60).state.value == "succeeded"
    assert (root / "local" / KEPLER.name).is_file()

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")  # the S3 client cannot be made now
    later = utcnow() + timedelta(seconds=5)
    with caplog.at_level(logging.WARNING, logger="jupyter_staging.engine.manager"):
        due = manager.sweep(later)
    assert sorted(due) == sorted([local.id, remote.id])
    assert manager.get(local.id).state.value == "expired"
    assert not (root / "local").exists()
    assert manager.get(remote.id).state.value == "succeeded"  # left for the next sweep
    # Since review12 the destination answers that error as destination_unavailable, naming the setting.
    assert any(remote.id in r.getMessage() and "AWS_ENDPOINT_URL" in r.getMessage() for r in caplog.records)

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # fixed: the next sweep expires it
    assert manager.sweep(later) == [remote.id]
    assert manager.get(remote.id).state.value == "expired"
