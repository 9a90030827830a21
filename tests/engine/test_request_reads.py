"""Requests a client repeats read no resume data (issue 12): it lists every item of a job, megabytes for a
folder of 20,000 files (40 ms per read). ``GET /jobs/{id}/log`` and ``POST /jobs/{id}/resume`` read it for
nothing. Counted with a listener on the store's engine, not timed."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import InvalidState


def test_the_log_and_a_refused_resume_read_no_resume_data(manager, root):
    folder = root / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:02d}.txt").write_text(str(i))
    job, _ = manager.create(CreateJob(source=str(folder), destination="out"))
    assert manager.wait(job.id, timeout=60).state.value == "succeeded"
    statements: list[str] = []

    def seen(_conn, _cursor, statement: str, *_args) -> None:
        statements.append(statement)

    event.listen(manager.store.engine, "before_cursor_execute", seen)
    try:
        lines = manager.job_log(job.id)
        assert any("succeeded" in line["message"] for line in lines)
        with pytest.raises(InvalidState):
            manager.resume(job.id)
    finally:
        event.remove(manager.store.engine, "before_cursor_execute", seen)
    resume_reads = [s for s in statements if "staging_job_resume" in s or "staging_resume_changes" in s]
    assert statements and not resume_reads, resume_reads
