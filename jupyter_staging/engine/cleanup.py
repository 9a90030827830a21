"""Removing what a job wrote: part files, scratch files, unfinished uploads, published chunks."""

from __future__ import annotations

from typing import Any

from jupyter_staging.destinations.base import Destination, PublishedFile
from jupyter_staging.engine.folders import parts_tagged
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import LINK_METHODS, ChunkState
from jupyter_staging.engine.schema import ChunkRecord
from jupyter_staging.engine.store import JobRecord

#: Key of a job's resume data: True when its first run found no destination folder (the job makes it, and
#: cleaning up may remove it once empty), False when the folder was there already (the user's: kept).
MADE_DESTINATION = "made_destination"


def resume_item_names(resume: dict[str, Any]) -> list[str]:
    """Names of every item a job listed (its own and its manifest entries'), from its resume data."""
    names = [i["name"] for i in resume.get("items", [])]
    for entry in (resume.get("entries") or {}).values():
        names.extend(i["name"] for i in entry.get("items", []))
    return names


def remove_job_output(host: JobHost, rec: JobRecord, *, keep_ready: bool) -> int:
    """Delete what job ``rec`` wrote: ``.part`` files, scratch files, unfinished uploads, and unless
    ``keep_ready`` its published chunks and manifest (for object storage: every object below the job's
    prefix). Returns the number of files (objects) removed.

    Only the job's own destination is touched: paths inside its folder (a symlink is removed, never
    followed; the folder itself, once empty, only when the job made it: :data:`MADE_DESTINATION`) or keys
    below ``prefix/<job_id>/``. Of its chunks' files only those it published and still has are removed
    (:func:`published_chunks`), and at a pending chunk's name a file that carries the job's published tag
    for its bytes (published just before the run stopped, not recorded: ``Destination.remove``'s
    ``unrecorded``). Any other file at a pending chunk's name is the user's (a folder staged into, a name
    the job failed ``destination_exists`` at), and one at the name of a chunk removed already (deleted on
    ack, expired) was put there since. Raises
    :class:`~jupyter_staging.errors.TransferFailed` when the object store cannot be cleaned, and
    :class:`~jupyter_staging.errors.PathNotAllowed` (nothing removed) when the destination folder is
    reached through a symlink (``Destination.confined``).
    """
    destination = host.destination_of(rec)
    destination.confined()
    resume = rec.resume or {}
    chunks = host.store.list_chunks(rec.id)
    published = published_chunks(rec, chunks)
    chunk_paths = [destination.relative(c.path) for c in published]
    started = bool(resume.get("attempts"))  # a job that never started made no part: none is removed
    ids = {c.id for c in published}
    others = [destination.relative(c.path) for c in chunks if c.id not in ids]  # .part, folders only
    pending = [destination.relative(c.path) for c in chunks if c.state == ChunkState.pending.value]
    return destination.remove(
        chunk_paths,
        resume_item_names(resume) + others if started else [],
        list(resume.get("convert_dirs", [])),
        keep_ready=keep_ready,
        keep_folder=not resume.get(MADE_DESTINATION, True),  # jobs recorded before this key: as before
        parts_tagged=parts_tagged(resume),
        unrecorded=pending,
        chunk_files=published_files(rec, published, destination),
    )


def published_files(
    rec: JobRecord, published: list[ChunkRecord], destination: Destination
) -> dict[str, PublishedFile]:
    """How job ``rec`` published each chunk's file, by its path relative to ``destination``: a file of
    one name and another size or time at its name is the user's (:meth:`Destination.remove`'s
    ``chunk_files``). Empty for a link job (:func:`published_file`)."""
    return {destination.relative(c.path): f for c in published if (f := published_file(rec, c)) is not None}


def published_file(rec: JobRecord, chunk: ChunkRecord) -> PublishedFile | None:
    """How job ``rec`` published ``chunk``'s file (its size in bytes and modification time), or None when
    nothing tells: a link job's (a hard link's size follows its source's, appended to since; a symlink is
    removed as a link whatever it names), or a chunk without a size."""
    if rec.method in LINK_METHODS or chunk.bytes is None:
        return None
    return PublishedFile(chunk.bytes, chunk.mtime_ns)


def published_chunks(rec: JobRecord, chunks: list[ChunkRecord]) -> list[ChunkRecord]:
    """The chunks of job ``rec`` whose file it published and has not removed since: ``ready`` ones, and
    ``acked`` ones unless its policy is ``delete_on_ack`` (their files went at the ack). Not ``pending``
    (a file there is the job's only with its published tag: :func:`remove_job_output`) nor ``expired``
    (removed already)."""
    kept_on_ack = rec.cleanup_policy != "delete_on_ack"
    return [
        c
        for c in chunks
        if c.state == ChunkState.ready.value or (kept_on_ack and c.state == ChunkState.acked.value)
    ]
