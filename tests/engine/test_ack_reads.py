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
from jupyter_staging.engine.store import ChunkRecord, JobRecord, utcnow

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


def paused_job(manager: StagingManager, root: Path, job_id: str, folder: str, resume: dict) -> None:
    """A paused ``delete_on_ack`` job of the manager's root with ``resume`` as its resume data and five
    ``ready`` chunks, whose files are in ``folder`` (relative to the root)."""
    out = root / folder
    out.mkdir(parents=True)
    chunks = []
    for i in range(5):
        file = out / f"lc-{i}.fits"
        file.write_bytes(bytes([i]) * 100)
        st = file.stat()
        chunks.append(
            {"id": f"{job_id}-{i}", "job_id": job_id, "index": i, "path": file.name, "state": "ready"}
            | {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        )
    now = utcnow()
    manager.store.add_job(
        JobRecord(
            id=job_id, owner=manager.default_owner, root=str(manager.root_dir), name=job_id, method="copy",
            source="/archive/lc", destination="out", state="paused", cleanup_policy="delete_on_ack",
            bytes_done=250, bytes_total=500, chunks_done=5, chunks_total=10, rows_done=0, resume=resume,
            created_at=now, updated_at=now,
        )
    )  # fmt: skip
    manager.store.write_chunks(job_id, chunks, {})


def test_acks_of_a_running_job_read_its_resume_data_once_unless_it_is_to_swap_its_output_in(manager, root):
    """A job not ended yet (here paused) may stage beside an earlier output, in a scratch folder its resume
    data names: the first ack reads it, and when no swap is pending none after does. A job that is to swap
    its output in still reads it at each ack, and its files are deleted in the scratch folder."""
    paused_job(manager, root, "plain", "out", {"request": {"key": "k"}, "items": []})
    paused_job(
        manager, root, "replacing", "scratch-into", {"swap": {"into": "scratch-into", "replaces": None}}
    )
    reads = Reads(manager)
    try:
        for job_id, folder, expected in (
            ("plain", "out", [1, 0, 0, 0]),
            ("replacing", "scratch-into", [1] * 4),
        ):
            resume_reads = []
            for i in range(4):
                assert manager.ack(job_id, str(i)).state.value == "acked"
                resume_reads.append(reads.take()[1])
                assert not (root / folder / f"lc-{i}.fits").exists()
            assert resume_reads == expected, job_id
            assert (root / folder / "lc-4.fits").exists()
    finally:
        reads.close()
    assert manager.get("plain").state.value == "paused"
