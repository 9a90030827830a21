"""What an acknowledgement reads (issue 12): a constant number of rows, whatever the number of chunks.

Every ack of a ``delete_on_ack`` job read the job's resume data three times (megabytes for 20,000 files)
and every chunk record of the job (to see whether any was left unread), so acking all the chunks of a job
one by one cost O(chunks²): 140 ms per ack with 5,000 chunks, 12 minutes in all. Now an ack reads the job's
row, its chunk, and whether a chunk of the job is left in each state (one ``EXISTS`` per state through the
``(job_id, state)`` index, migration 0011: ``tests/hub/test_chunk_state_index.py``); the resume data and
the chunk records are read once, when the last ack expires the job. Asserted by counting what is read (ORM
chunk records loaded, statements on the resume tables), never by timing. The behaviour is the same: see
also ``test_ack_races.py``, ``test_cleanup_scope.py`` and ``tests/server/test_control.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import event

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import ChunkRecord

FILES = 120


class Reads:
    """What the store of ``mgr`` reads: ORM chunk records loaded, and statements naming the resume tables
    (``staging_job_resume``, ``staging_resume_changes``)."""

    def __init__(self, mgr: StagingManager) -> None:
        self.mgr = mgr
        self.chunk_records = 0
        self.statements: Counter[str] = Counter()
        event.listen(ChunkRecord, "load", self._loaded)
        event.listen(mgr.store.engine, "before_cursor_execute", self._statement)

    def _loaded(self, *_args) -> None:
        self.chunk_records += 1

    def _statement(self, _conn, _cursor, statement: str, *_args) -> None:
        if "staging_job_resume" in statement or "staging_resume_changes" in statement:
            self.statements["resume"] += 1

    def take(self) -> tuple[int, int]:
        """``(chunk records loaded, resume reads)`` since the last call."""
        taken = (self.chunk_records, self.statements["resume"])
        self.chunk_records, self.statements = 0, Counter()
        return taken

    def close(self) -> None:
        event.remove(ChunkRecord, "load", self._loaded)
        event.remove(self.mgr.store.engine, "before_cursor_execute", self._statement)


def staged(manager: StagingManager, root: Path, policy: str) -> str:
    folder = root / "many"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"lc-{i:03d}.fits").write_bytes(i.to_bytes(2, "big") * 64)
    job, _ = manager.create(CreateJob(source=str(folder), destination="out", cleanup_policy=policy))
    done = manager.wait(job.id, timeout=120)
    assert done.state.value == "succeeded", done
    return job.id


def test_an_ack_under_delete_on_ack_reads_one_chunk_and_no_resume_data(manager, root):
    job_id = staged(manager, root, "delete_on_ack")
    reads = Reads(manager)
    try:
        for i in range(FILES - 1):
            chunk = manager.ack(job_id, str(i))
            assert chunk.state.value == "acked"
            assert reads.take() == (1, 0), i  # its chunk; no resume data, no other chunk record
            assert not (root / "out" / f"lc-{i:03d}.fits").exists()
        assert manager.get(job_id).state.value == "succeeded"  # one file left unread
        manager.ack(job_id, str(FILES - 1))  # the last: the job's output goes, reading what it needs once
        assert manager.get(job_id).state.value == "expired"
        assert not (root / "out").exists()
        assert manager.ack(job_id, "3").state.value == "acked"  # a retried ack answers as before
    finally:
        reads.close()
    assert {c.state.value for c in manager.chunks(job_id)} == {"acked"}


def test_an_ack_of_a_retained_job_reads_no_resume_data(manager, root):
    job_id = staged(manager, root, "retain")
    reads = Reads(manager)
    try:
        for i in (0, 1, FILES - 1):
            assert manager.ack(job_id, str(i)).state.value == "acked"
            assert reads.take() == (1, 0)
            assert (root / "out" / f"lc-{i:03d}.fits").exists()
    finally:
        reads.close()
    assert manager.get(job_id).state.value == "succeeded"
