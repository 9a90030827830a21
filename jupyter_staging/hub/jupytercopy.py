"""``jupyter_copy``: the copy is a job in the user's own Jupyter server, followed to its end.

The service starts the user's server through the Hub API when it is stopped, creates a ``copy`` job in
that server's staging API (``POST api/v1/staging/jobs``, :mod:`~jupyter_staging.hub.hubapi`) and polls
it. A job stages into a destination *folder*, keeps the source's file name and writes its ``manifest.json``
there, so every operation's job stages into a scratch folder of its own beside the target,
``<name>.staging-<id8>`` (:func:`scratch_name`), whatever the target's name: once the job succeeded the
service links the file under the target's name (``linkat``: never replaces, never follows a link) and
the scratch folder goes, manifest and all: the job is ``delete_on_ack`` and the service acknowledges its
file, so the user's server removes it as the user (a service that is neither root nor the user may not
remove what the user's server wrote, 0755), and the service removes what it may. The user's folder gets
the file alone, and a second ``jupyter_copy`` of another file into that folder is not refused by the server
for a manifest it finds.

A repeat is a duplicate (``skipped``), never a second job: the target already holding the same bytes is
skipped at once; a call for a target that another call of this service is still staging waits for it and
is skipped when the same bytes landed; a job the user's server answers from an earlier request (up to
date, or still running, under its ``if_exists="reuse"``) is followed and the call recorded as skipped.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_staging.errors import StagingError
from jupyter_staging.hub.areas import Target, UserAreas, split_relative_path
from jupyter_staging.hub.db import Operation, OperationStore
from jupyter_staging.hub.fileops import Outcome, SourceFile, check_duplicate, holds_bytes, source_sha256
from jupyter_staging.hub.hubapi import HubAPI
from jupyter_staging.hub.jobfiles import make_read_only, publish_from_folder, remove_folder
from jupyter_staging.hub.recording import Recorder
from jupyter_staging.safety.dirfd import name_with

#: States of a job in the user's server that end a ``jupyter_copy`` without its file.
FAILED_JOB_STATES = ("failed", "cancelled", "expired")


def scratch_name(name: str, operation_id: str) -> str:
    """The folder, beside the target ``name``, that the job of operation ``operation_id`` stages into:
    ``<name>.staging-<first 8 characters of the id>``, the name cut to keep it within 255 bytes (a name of
    239 bytes or more failed ``name_too_long``)."""
    return name_with(name, f".staging-{operation_id[:8]}")


def idempotency_key(operation_id: str) -> str:
    """The ``idempotency_key`` of the job an operation creates (it tells that job from an earlier one)."""
    return f"jupyter-staging-hub:{operation_id}"


def job_request(op: Operation, source: str, destination: str) -> dict[str, Any]:
    """Body of ``POST api/v1/staging/jobs`` for ``op``: copy ``source`` (absolute path) into
    ``destination`` (a folder relative to the server's ``root_dir``)."""
    return {
        "source": source,
        "destination": destination,
        "method": "copy",
        "name": f"staging-hub-{op.id[:8]}",
        "idempotency_key": idempotency_key(op.id),
        # The service acknowledges the file once it has it under the target's name: the user's server then
        # removes the scratch folder, which a service that is neither root nor the user may not.
        "cleanup_policy": "delete_on_ack",
    }


def made_by(job: dict[str, Any], op: Operation) -> bool:
    """True when ``job`` is the one ``op`` created and it ran (not an earlier request's job the server
    answered with, nor output it found up to date)."""
    return job.get("idempotency_key") == idempotency_key(op.id) and not job.get("up_to_date")


def own_scratch(job: dict[str, Any], name: str, operation_id: str) -> str | None:
    """The scratch folder the job stages into when it is this operation's (see :func:`scratch_name`)."""
    leaf = PurePosixPath(str(job.get("destination") or "")).name
    return leaf if leaf == scratch_name(name, operation_id) else None


def pick_chunk(chunks: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The chunk holding the copied file: the one named ``name``, else the job's only chunk, else ``{}``."""
    for chunk in chunks:
        path = str(chunk.get("path", ""))
        # The last component is in the path as written (parsing drops only "." and empty components): only
        # a path holding ``name`` is parsed (parsing the 20,000 of a job held the event loop 30-40 ms).
        if name in path and PurePosixPath(path).name == name:
            return chunk
    return chunks[0] if len(chunks) == 1 else {}


def holds_chunk(target: Target, chunk: dict[str, Any]) -> bool:
    """True when the target is a regular file (never followed through a symlink) with the chunk's size
    (bytes) and sha256: the job's file, put there by this operation before the job's folder was released."""
    size, sha256 = chunk.get("bytes"), chunk.get("sha256")
    return isinstance(size, int) and bool(sha256) and holds_bytes(target, size, str(sha256))


def job_failed(op: Operation, job: dict[str, Any]) -> StagingError:
    """A job that ended without its file, as a :class:`StagingError` (502) keeping the job's error code."""
    state = job.get("state")
    error = job.get("error") or {}
    return StagingError(
        f"the job in {op.user}'s server ended {state}: {error.get('message', 'no detail')}",
        code=str(error.get("code") or f"job_{state}"),
        status=502,
    )


def job_id_of(op: Operation, job: dict[str, Any]) -> str:
    """The id of the job the user's server answered: 1 to 128 printable characters (the operations table's
    ``job_id``). The user runs that server and may make it answer anything: another id (too long for the
    table, holding NUL) failed the write of the record again and again, leaving the operation running.
    Raises ``server_error`` (502) for such an id."""
    job_id = job.get("id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= 128 or not job_id.isprintable():
        raise StagingError(
            f"{op.user}'s server answered a job without a usable id (1 to 128 printable characters)",
            code="server_error",
            status=502,
        )
    return job_id


class JupyterCopies:
    """Runs ``jupyter_copy`` operations in the background (see the module) and records their end.

    ``areas`` are the users' areas; ``server_roots`` the users' servers' ``root_dir`` as this service sees
    them (job destinations are relative to it); ``file_work`` bounds the file operations running at once,
    ``server_starts`` the user servers being started at once; ``server_start_timeout`` and
    ``job_poll_interval`` are seconds.
    """

    def __init__(
        self,
        store: OperationStore,
        areas: UserAreas,
        server_roots: UserAreas,
        hub: HubAPI,
        recorder: Recorder,
        *,
        file_work: asyncio.Semaphore,
        server_starts: asyncio.Semaphore,
        server_start_timeout: float,
        job_poll_interval: float,
    ) -> None:
        self.store = store
        self.areas = areas
        self.server_roots = server_roots
        self.hub = hub
        self.recorder = recorder
        self.file_work = file_work
        self.server_starts = server_starts
        self.server_start_timeout = server_start_timeout
        self.job_poll_interval = job_poll_interval
        self._tasks: set[asyncio.Task[None]] = set()
        #: Targets (absolute paths) a call is staging now; later calls for the same target wait for it.
        self._landing: dict[str, asyncio.Event] = {}

    async def start(self, op: Operation, source: SourceFile, relative_path: str) -> Operation:
        """Check the target; when it already holds the source's bytes record ``op`` as ``skipped`` (a
        duplicate, no job), otherwise record it ``running`` and go on in the background.

        Raises :class:`StagingError` for a target that is not allowed or holds a different file."""
        if await self._landed(op, source, relative_path):
            return await self._skip(op, source)
        await self.recorder.begin(op)
        self._spawn(self.run(op, source, relative_path))
        return op

    async def _landed(self, op: Operation, source: SourceFile, relative_path: str) -> bool:
        """Open the target (``op.target`` is set); True when it already holds the source's bytes."""
        async with self.file_work:
            target = await asyncio.to_thread(self._open_target, op.user, relative_path, source.name)
            with target:
                op.target = target.path
                return await asyncio.to_thread(check_duplicate, target, source)

    async def _skip(self, op: Operation, source: SourceFile) -> Operation:
        sha = await asyncio.to_thread(source_sha256, source)
        return await self.recorder.finish(op, Outcome("skipped", source.size, sha))

    def _open_target(self, username: str, relative_path: str, name: str, *, create: bool = True) -> Target:
        return self.areas.open_for(username, relative_path, name, create=create)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, op: Operation, source: SourceFile, relative_path: str) -> None:
        """Wait for an earlier call staging the same target, then skip or create the job and follow it."""
        assert op.target is not None
        earlier = self._landing.get(op.target)
        mine = self._landing[op.target] = asyncio.Event()
        try:
            if earlier is not None:
                await earlier.wait()
                if await self._landed(op, source, relative_path):
                    await self._skip(op, source)
                    return
            await self._create_job(op, source, relative_path)
        except asyncio.CancelledError:
            raise  # the service stops; the row stays running and is picked up on the next start
        except Exception as err:
            await self.recorder.fail(op, err)
        finally:
            mine.set()
            if self._landing.get(op.target) is mine:
                del self._landing[op.target]

    async def _create_job(self, op: Operation, source: SourceFile, relative_path: str) -> None:
        """Start the user's server if needed, create the job there, follow it to its end, record."""
        folder, name = split_relative_path(relative_path, source.name)
        parts = [self._server_destination(op.user, folder), scratch_name(name, op.id)]
        destination = "/".join(part for part in parts if part)
        async with self.server_starts:
            server = await self.hub.ensure_server(op.user, timeout=self.server_start_timeout)
            job = await self.hub.create_job(op.user, server, job_request(op, str(source.path), destination))
        op.job_id = job_id_of(op, job)
        await asyncio.to_thread(self.store.update, op.id, job_id=op.job_id)
        how = "created" if made_by(job, op) else "of an earlier request answered"
        self.recorder.log(logging.INFO, op, f"job {op.job_id} {how} in {op.user}'s server")
        await self._follow_job(op, server, relative_path, name)

    def _server_destination(self, username: str, folder: list[str]) -> str:
        """The target folder relative to the user's server ``root_dir`` (the staging API's
        ``destination``)."""
        root = self.server_roots.path(username)
        area = self.areas.path(username)
        try:
            inside = area.relative_to(root)
        except ValueError:
            raise StagingError(
                "jupyter_copy needs the user area inside the user's server root (server_root_template)",
                code="not_configured",
                status=500,
            ) from None
        return "/".join([*inside.parts, *folder])

    async def _follow_job(self, op: Operation, server: str, relative_path: str, name: str) -> None:
        """Wait for the job to end; put its file under the target's name from its scratch folder (a job
        that staged into the target's folder itself, as 0.1.0 had it do for a kept name, and which a
        replica of that release left running, is taken as it is); make the file read-only; record the
        outcome (``skipped`` for an earlier request's job)."""
        job = await self._wait_for_job(op, server)
        scratch = own_scratch(job, name, op.id)
        if (
            job.get("state") == "expired"
            and scratch is not None
            and await self._released(op, server, job, relative_path, name)
        ):
            return  # a replica that stopped after releasing the job's folder, before recording: recorded now
        if job.get("state") != "succeeded":
            if scratch is not None:
                await self._release_failed(op, server)
                await asyncio.to_thread(self._discard_scratch, op.user, relative_path, name, scratch)
            raise job_failed(op, job)
        try:
            chunks = await self.hub.job_chunks(op.user, server, str(op.job_id))
        except StagingError:  # chunk_list_failed: nothing lands; the copy in scratch goes, as a failed job's
            if scratch is not None:
                await asyncio.to_thread(self._discard_scratch, op.user, relative_path, name, scratch)
            raise
        chunk = pick_chunk(chunks, name)
        landed = True
        target = await asyncio.to_thread(self._open_target, op.user, relative_path, name, create=False)
        with target:
            if scratch is not None:
                try:
                    landed = await asyncio.to_thread(self._publish, target, scratch, chunk)
                finally:
                    await self._release(op, server, chunks)
                    await asyncio.to_thread(remove_folder, target.dir_fd, scratch, target.owner)
            await asyncio.to_thread(make_read_only, target)
        bytes_done = (job.get("progress") or {}).get("bytes_done")
        status = "succeeded" if landed and made_by(job, op) else "skipped"
        await self.recorder.finish(op, Outcome(status, chunk.get("bytes", bytes_done), chunk.get("sha256")))

    async def _released(
        self, op: Operation, server: str, job: dict[str, Any], relative_path: str, name: str
    ) -> bool:
        """For a job found ``expired`` (its folder released by :meth:`_release`, which a replica did before
        it stopped): when the target holds the job's file, record the operation succeeded and return
        True; False otherwise (the job's expiry is then its failure)."""
        chunk = pick_chunk(await self.hub.job_chunks(op.user, server, str(op.job_id)), name)
        target = await asyncio.to_thread(self._open_target, op.user, relative_path, name, create=False)
        with target:
            if not await asyncio.to_thread(holds_chunk, target, chunk):
                return False
            await asyncio.to_thread(make_read_only, target)
        status = "succeeded" if made_by(job, op) else "skipped"
        await self.recorder.finish(op, Outcome(status, chunk.get("bytes"), chunk.get("sha256")))
        return True

    @staticmethod
    def _publish(target: Target, scratch: str, chunk: dict[str, Any]) -> bool:
        """Link (move, copy) the job's file from ``scratch`` under the target's name; False when the same
        bytes were already there. The scratch folder is left to :meth:`_release` and :func:`remove_folder`."""
        path = PurePosixPath(str(chunk.get("path") or ""))
        if len(path.parts) != 1:
            raise StagingError(
                f"the job wrote no single file to give the name {target.name!r}", code="unexpected_output"
            )
        return publish_from_folder(scratch, path.name, target)

    async def _release(self, op: Operation, server: str, chunks: list[dict[str, Any]]) -> None:
        """Acknowledge the job's ready chunks in the user's server, whose ``delete_on_ack`` policy then
        removes the job's files, manifest and scratch folder as the user (the service may not, when it is
        neither root nor the user: the folder is the user's server's, 0755). Best effort: a failure is
        logged, the file under the target's name is not touched."""
        for chunk in chunks:
            if chunk.get("state") != "ready":
                continue
            try:
                await self.hub.ack_chunk(op.user, server, str(op.job_id), int(chunk.get("index", -1)))
            except StagingError as err:
                if err.code == "chunk_expired":  # removed meanwhile (the TTL sweep, a cancel): gone already
                    continue
                self.recorder.log(logging.WARNING, op, f"scratch folder of job {op.job_id} kept: {err}")
                return
            except (ValueError, TypeError) as err:
                self.recorder.log(logging.WARNING, op, f"scratch folder of job {op.job_id} kept: {err}")
                return

    async def _release_failed(self, op: Operation, server: str) -> None:
        """:meth:`_release` for a job that failed: its chunk list read whole first (best effort, as the
        release: a list the user's server fails to give is logged, and the operation fails with the job's
        own error, not this one; the caller then removes the scratch folder itself where it may)."""
        try:
            chunks = await self.hub.job_chunks(op.user, server, str(op.job_id))
        except StagingError as err:
            self.recorder.log(
                logging.WARNING,
                op,
                f"chunks of job {op.job_id} not acknowledged: its scratch folder is removed where the "
                f"service may, else kept: {err}",
            )
            return
        await self._release(op, server, chunks)

    def _discard_scratch(self, username: str, relative_path: str, name: str, scratch: str) -> None:
        """Remove what a failed job left in its scratch folder, or a job whose chunk list could not be read
        (best effort)."""
        try:
            target = self._open_target(username, relative_path, name, create=False)
        except (OSError, StagingError):
            return
        with target:
            remove_folder(target.dir_fd, scratch, target.owner)

    async def _wait_for_job(self, op: Operation, server: str) -> dict[str, Any]:
        """Poll the job until it ends, keeping ``bytes`` up to date; the job's final model."""
        assert op.job_id is not None
        bytes_done = -1
        while True:
            job = await self.hub.get_job(op.user, server, op.job_id)
            progress = job.get("progress") or {}
            if progress.get("bytes_done", 0) != bytes_done:
                bytes_done = int(progress.get("bytes_done") or 0)
                await asyncio.to_thread(self.store.update, op.id, bytes=bytes_done)
            if job.get("state") == "succeeded" or job.get("state") in FAILED_JOB_STATES:
                return job
            await asyncio.sleep(self.job_poll_interval)

    def relative_target(self, op: Operation) -> str:
        """The recorded target of ``op`` relative to its user's area (the ``relative_path`` to run it
        again with). Raises ``path_not_allowed`` (400) when it lies outside the area."""
        try:
            return Path(op.target or "").relative_to(self.areas.path(op.user)).as_posix()
        except ValueError:
            raise StagingError(
                "the recorded target is not in the user's area", code="path_not_allowed"
            ) from None

    async def follow_again(self, op: Operation) -> None:
        """Follow the job of ``op`` (a ``jupyter_copy`` left ``running`` with its ``job_id``, taken over
        from a replica that stopped) to its end and record it; its user's server is started if needed."""
        try:
            async with self.server_starts:
                server = await self.hub.ensure_server(op.user, timeout=self.server_start_timeout)
            relative = self.relative_target(op)
            await self._follow_job(op, server, relative, PurePosixPath(relative).name)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await self.recorder.fail(op, err)

    async def stop(self) -> None:
        """Cancel background work (rows stay ``running``; a replica takes them over once their lease
        expires)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
