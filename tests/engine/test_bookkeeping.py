"""A job's own bookkeeping is a few transactions, each a consistent step (issue 12).

A one-file job used to write its record 11 times and read it 11 times: a separate transaction for every log
line and state change, the resume data read back around each. Now a state change carries its log lines and
is checked inside its own transaction; the run counts its attempt with ``running``; a first run's listing
goes with its chunk records; the totals, the last log line and ``succeeded`` are one commit. These tests pin
the count and the order of what a user sees, and that a forbidden transition writes nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.progress import ChunkLedger
from jupyter_staging.errors import InvalidState
from tests.engine.test_job_creation import count_commits
from tests.helpers.data import KEPLER


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    folder.mkdir()
    return Path(shutil.copyfile(KEPLER, folder / KEPLER.name))


def test_a_one_file_job_writes_five_times_and_logs_in_order(manager, source):
    commits = count_commits(manager.store)
    job, _ = manager.create(CreateJob(source=str(source), destination="kepler", method="copy"))
    done = manager.wait(job.id, timeout=60)
    assert done.state == JobState.succeeded
    # The new job; running (with the attempt); listing + chunk record; chunk ready; totals + succeeded.
    assert len(commits) == 5
    log = [line["message"] for line in manager.job_log(job.id)]
    assert log[0].startswith("job created")
    assert log[1:3] == ["running", f"1 file(s) to stage, {log[2].split(', ', 1)[1]}"]
    assert log[-1].startswith("succeeded: 1 chunk(s)") and len(log) == 4
    rec = manager.store.get_job(job.id)
    assert rec is not None and rec.resume is not None
    assert rec.resume["attempts"] == 1 and len(rec.resume["items"]) == 1
    assert (rec.bytes_done, rec.chunks_done, rec.chunks_total) == (KEPLER.stat().st_size, 1, 1)


def test_a_forbidden_transition_writes_nothing(manager, source):
    job, _ = manager.create(CreateJob(source=str(source), destination="kepler", method="copy"))
    manager.wait(job.id, timeout=60)
    before = manager.store.get_job(job.id)
    lines = len(manager.job_log(job.id))
    with pytest.raises(InvalidState, match="succeeded job cannot become running"):
        manager.set_state(job.id, JobState.running, events=[("info", "must not be written")], requested=None)
    after = manager.store.get_job(job.id)
    assert before is not None and after is not None
    assert (after.state, after.updated_at) == (before.state, before.updated_at)
    assert len(manager.job_log(job.id)) == lines


def test_a_paused_first_run_resumes_counting_its_second_attempt(manager, tmp_path):
    """Paused while it stages a folder, a job's first run leaves chunk records; the second run (attempt 2)
    reads them and stages only the rest, to the same output."""
    src = tmp_path / "archive" / "many"
    src.mkdir(parents=True)
    for i in range(400):
        (src / f"lc-{i:04d}.fits").write_bytes(i.to_bytes(4, "big") * 4096)
    job, _ = manager.create(CreateJob(source=str(src), destination="many", method="copy"))
    manager.pause(job.id)
    paused = manager.wait(job.id, timeout=60, until=lambda s: s in (JobState.paused, JobState.succeeded))
    assert paused.state == JobState.paused
    manager.resume(job.id)
    done = manager.wait(job.id, timeout=120)
    assert done.state == JobState.succeeded
    rec = manager.store.get_job(job.id)
    assert rec is not None and rec.resume is not None
    # Each run says "running" once and counts itself once (a pause that came before the first run started
    # leaves one run; usually the first run has listed the folder and made its 400 chunk records).
    runs = [line["message"] for line in manager.job_log(job.id)].count("running")
    assert rec.resume["attempts"] == runs >= 1
    chunks = manager.store.chunk_summaries(job.id)
    assert len(chunks) == 400 and {c.state for c in chunks} == {"ready"}
    out = tmp_path / "root" / "many"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".fits") == sorted(
        p.name for p in src.iterdir()
    )


def test_a_batch_whose_folders_fail_their_fsync_keeps_the_marks_of_names_durable_already(tmp_path):
    """A batch's folders failed their fsync: the ready marks that waited on them are dropped (their names
    may not survive a crash), but a Parquet part's mark, whose name was fsynced as it was published and
    which another thread's batch happened to take, goes back as it was: before, its table was then marked
    converted with the part left ``pending`` (the job succeeded with a chunk missing from its manifest)."""
    ledger = ChunkLedger()
    ledger.load([], 0)
    linked = ledger.add("job", {"path": "lc.fits", "state": "pending"})
    ledger.ready(linked["id"], {"state": "ready"}, folder=tmp_path)  # a link: its folder's fsync pending
    part = {"path": "t.parquet/part-00000.parquet", "state": "ready"}
    ledger.ready("job-7", part, synced=True)  # a part, its record queued by another thread
    batch = ledger.take()
    assert batch.chunks_done == 2
    ledger.restore(batch, durable=False)
    again = ledger.take()
    assert again.new[linked["id"]]["state"] == "pending"  # its name may not survive a crash: not ready
    assert again.updates == {"job-7": part}
    assert again.chunks_done == 1 and again.folders == set()
