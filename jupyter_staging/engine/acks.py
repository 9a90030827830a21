"""Chunk state changes that race: an acknowledgement, and the expiry of a job's chunks by whatever removes its
files (a re-run's swap, the TTL sweep, a cancel, a cleanup policy).

An ack is a compare-and-set: a chunk becomes ``acked`` only if it is still ``ready`` in the transaction that
writes it, and under ``delete_on_ack`` its file is deleted inside that transaction (for a local file: an
``unlink``). Whoever expires the chunk -- one ``UPDATE`` of the job's chunks, :func:`expire_chunks` -- either
comes first (the ack then finds it ``expired`` and deletes nothing) or waits for the ack's transaction to
end, file deleted (a row lock on a server database; SQLite's one writer; this process's write lock), and
only then goes on to put other files at those paths (a re-run's swap renames its folder over the old one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import cast

from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.engine import CursorResult

from jupyter_staging.engine.models import ChunkState, JobState
from jupyter_staging.engine.store import ChunkRecord, JobRecord, Store

_CHUNKS = cast(Table, ChunkRecord.__table__)
_READY, _ACKED, _EXPIRED = ChunkState.ready.value, ChunkState.acked.value, ChunkState.expired.value


def take_ack(
    store: Store, chunk_id: str, remove: Callable[[], bool] | None = None, *, remove_inside: bool = True
) -> tuple[bool, str | None, bool]:
    """Set chunk ``chunk_id`` ``acked`` if it is still ``ready`` (a compare-and-set), and then, only when
    this call won it, run ``remove`` (the deletion of its file under ``delete_on_ack``): inside the
    transaction with ``remove_inside`` (nothing that expires the chunk commits in between: see the module),
    else after it commits (a request to an object store, which no other job's output shares keys with, is
    not made while this process's writers wait). Whatever ``remove`` raises inside the transaction rolls it
    back, and after it the chunk is given back (``ready`` again unless something expired it meanwhile):
    either way a retried ack deletes the file.

    Returns ``(won, state, removed)``: whether this call acked it, the chunk's state when it did not (None:
    no such chunk), and what ``remove`` returned (False when not run)."""
    removed = False
    with store.session(first=True) as s:
        query = update(_CHUNKS).where(_CHUNKS.c.id == chunk_id, _CHUNKS.c.state == _READY)
        result = cast(CursorResult, s.execute(query.values(state=_ACKED)))
        if result.rowcount != 1:
            return False, s.scalar(select(_CHUNKS.c.state).where(_CHUNKS.c.id == chunk_id)), False
        if remove is not None and remove_inside:
            removed = remove()
    if remove is not None and not remove_inside:
        try:
            removed = remove()
        except BaseException:
            _give_back(store, chunk_id)  # the file is still there: a retried ack deletes it
            raise
    return True, _ACKED, removed


def chunk_states_present(store: Store, job_id: str, states: Iterable[str]) -> set[str]:
    """Those of ``states`` that at least one chunk of job ``job_id`` is in: one ``SELECT`` of an ``EXISTS``
    per state, each a seek in the ``(job_id, state)`` index (migration 0011) whatever the number of chunks.
    Every ack of a ``delete_on_ack`` job asks it
    (:func:`~jupyter_staging.engine.retention.expire_if_consumed`): reading the job's chunk records instead
    made acking the 20,000 chunks of a job O(chunks²)."""
    wanted = list(dict.fromkeys(states))
    if not wanted:
        return set()
    query = select(
        *(exists().where(_CHUNKS.c.job_id == job_id, _CHUNKS.c.state == state) for state in wanted)
    )
    with store.read_session() as s:
        row = s.execute(query).one()
    return {state for state, present in zip(wanted, row, strict=True) if present}


def output_in_place(rec: JobRecord) -> bool:
    """True when job ``rec``'s output is in its destination folder for good, whatever its resume data
    says: it succeeded, or failed ``partial`` (a manifest job whose manifest was written); a job replacing an
    earlier output swapped its own in before either (the runner's end). Its destination is then known
    without reading its resume data (megabytes for 20,000 files), which only says where a replacing job
    stages until then (``swap``)."""
    return rec.state == JobState.succeeded.value or (
        rec.state == JobState.failed.value and rec.error_code == "partial"
    )


def unconsumed_paths(store: Store, rec: JobRecord) -> list[str]:
    """The paths of job ``rec``'s chunks whose files it still has to put in place: all of them, but those
    acknowledged under ``delete_on_ack`` (their files were deleted at the ack). A replacing job's swap into a
    mount point moves these in (:func:`~jupyter_staging.engine.swap.swap_in`'s ``staged_now``) and removes
    the old output's file at any other name: a file acked before the swap was not moved, and the old job's
    file of that name stayed under the new manifest."""
    consumed = _ACKED if rec.cleanup_policy == "delete_on_ack" else None
    return [c.path for c in store.list_chunks(rec.id) if c.state != consumed]


def _give_back(store: Store, chunk_id: str) -> None:
    """Chunk ``chunk_id`` ``ready`` again while it is still ``acked`` (a compare-and-set): the deletion of
    its file that :func:`take_ack` ran after setting it ``acked`` failed."""
    with store.session() as s:
        s.execute(
            update(_CHUNKS).where(_CHUNKS.c.id == chunk_id, _CHUNKS.c.state == _ACKED).values(state=_READY)
        )


def expire_chunks(store: Store, job_id: str, *, keep: Iterable[str] = (_EXPIRED,)) -> dict[str, str]:
    """Mark every chunk of job ``job_id`` whose state is not in ``keep`` ``expired``, in one transaction;
    returns ``{chunk id: its state before}`` of those changed (for :func:`restore_chunks`). An ack of one
    of them that is under way (its file being deleted) ends before this commits (see the module)."""
    kept = list(keep)
    with store.session() as s:
        where = (_CHUNKS.c.job_id == job_id, _CHUNKS.c.state.not_in(kept))
        # A no-op UPDATE first takes the rows' locks (SQLite: the write lock), so that no other process's
        # ack commits between the read of the states and their change.
        s.execute(update(_CHUNKS).where(*where).values(state=_CHUNKS.c.state))
        before = {row.id: row.state for row in s.execute(select(_CHUNKS.c.id, _CHUNKS.c.state).where(*where))}
        if before:
            s.execute(update(_CHUNKS).where(*where).values(state=_EXPIRED))
    return before


def restore_chunks(store: Store, before: Mapping[str, str]) -> None:
    """Give the chunks :func:`expire_chunks` expired their states ``before`` back (one transaction), each
    only while it is still ``expired``: their files were not removed after all (a swap that failed before
    its first rename)."""
    if not before:
        return
    query = (
        update(_CHUNKS)
        .where(_CHUNKS.c.id == bindparam("chunk_id"), _CHUNKS.c.state == _EXPIRED)
        .values(state=bindparam("previous"))
    )
    with store.session() as s:
        s.connection().execute(query, [{"chunk_id": k, "previous": v} for k, v in before.items()])
