"""A download whose server does not answer is retried five times, with back-off, before the job fails: about
15 s in which the job's log said nothing ("running", then the failure), and a user watching the panel's
"0 B" could not tell a retry from a hang. Each retry is now a line of the log, with the reason.
"""

from __future__ import annotations

import pytest

from jupyter_staging.clouds import http_client
from jupyter_staging.engine.models import CreateJob, JobState
from tests.helpers.net import free_port


@pytest.mark.timeout(120)
def test_each_retry_of_a_server_that_refuses_is_a_line_of_the_log(manager, monkeypatch):
    monkeypatch.setattr(http_client, "RETRY_BACKOFF_MAX", 0.05)  # the same retries, without the 15 s
    url = f"http://127.0.0.1:{free_port()}/catalogue.vot"  # nothing listens there
    job, _ = manager.create(CreateJob(source=url, destination="out"))
    done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "transfer_failed"
    lines = [line["message"] for line in manager.job_log(job.id)]
    retries = [line for line in lines if line.startswith("no answer")]
    assert len(retries) == 5, lines
    assert retries[0] == "no answer from the server (connection refused): trying again now (retry 1 of 5)"
    assert retries[1].startswith("no answer from the server (connection refused): trying again in ")
    assert retries[-1].endswith(" s (retry 5 of 5)")


def test_a_retry_line_that_cannot_be_written_does_not_end_the_fetch():
    """The line of a retry is told to the job's log, a write to the job database: one that fails (a database
    locked past its busy timeout, a fault caused here by the note itself) ended the request with that error,
    not retried, where without the line the request would have been retried as before."""
    import sqlite3

    import requests

    told: list[str] = []

    def broken(line: str) -> None:
        told.append(line)
        raise sqlite3.OperationalError("database is locked")

    url = f"http://127.0.0.1:{free_port()}/catalogue.vot"  # nothing listens there
    with http_client.retrying_session(lambda seconds: None, broken) as session:
        with pytest.raises(requests.ConnectionError):
            session.get(url, timeout=5)
    assert len(told) == 5 and told[-1].endswith("(retry 5 of 5)")
