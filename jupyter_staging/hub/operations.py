"""What the hub service does for one ``POST api/stage`` call, end to end.

:class:`StagingOperations` checks the request (:mod:`~jupyter_staging.hub.requests`) and the caller, does
the work on worker threads, at most ``concurrency`` at once (:mod:`~jupyter_staging.hub.fileops` in the
user's area, :mod:`~jupyter_staging.hub.areas`; or, for ``jupyter_copy``, a job in the user's own server,
:mod:`~jupyter_staging.hub.jupytercopy`), and records one database row and one log line per call
(:mod:`~jupyter_staging.hub.recording`).

Every deliberate refusal is a :class:`~jupyter_staging.errors.StagingError` with a stable ``code`` and the
HTTP ``status`` to answer with; messages name paths, never tokens.

Replicas: several service processes may share one database. Each has a replica id and leases the
operations it runs (:class:`~jupyter_staging.hub.recording.Leases`), renewing them every
``heartbeat_interval`` seconds while it lives (:meth:`StagingOperations.start`). At the same pace it takes
over operations whose lease expired -- their replica died or stopped -- claiming each atomically
(:meth:`~jupyter_staging.hub.db.OperationStore.claim_expired`), and runs them to their end: file work is
done again from the recorded source and target (a file the dead replica already published is found as a
duplicate, never written twice), a ``jupyter_copy`` job is followed again or created with the operation's
own idempotency key (so the user's server answers with the job the dead replica created, if it did), and
a ``direct_download``, whose client went with the replica, is recorded as failed (``interrupted``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

from jupyter_staging.errors import InvalidRequest, StagingError
from jupyter_staging.hub.access import check_user_may_reach, check_user_may_read, reader_for
from jupyter_staging.hub.areas import Target, UserAreas
from jupyter_staging.hub.db import Operation, OperationStore, page_cursor, parse_cursor, utcnow
from jupyter_staging.hub.fileops import (
    Outcome,
    SourceFile,
    check_source,
    hardlink,
    local_copy,
    open_download,
    symlink,
)
from jupyter_staging.hub.hubapi import HubAPI
from jupyter_staging.hub.jupytercopy import JupyterCopies
from jupyter_staging.hub.recording import Leases, Recorder, as_staging_error, new_replica_id
from jupyter_staging.hub.requests import parse_stage_request

logger = logging.getLogger(__name__)

#: The file work of each method done in the service itself (``direct_download`` and ``jupyter_copy``
#: have their own paths).
FILE_WORK = {"local_copy": local_copy, "hardlink": hardlink, "symlink": symlink}


@dataclass(frozen=True)
class Caller:
    """Who called: the authenticated hub user or service. ``is_admin`` means it holds the service's
    admin scope (it may act for other users and see everything)."""

    name: str
    kind: str
    is_admin: bool


@dataclass
class Download:
    """A ``direct_download`` ready to stream: ``file`` (caller closes), ``size`` in bytes, ``filename``."""

    operation: Operation
    file: BinaryIO
    size: int
    filename: str


class StagingOperations:
    """Runs staging calls for the handlers and records each one (database row + log line).

    Parameters
    ----------
    store:
        The :class:`~jupyter_staging.hub.db.OperationStore`.
    areas:
        The users' areas.
    shared_roots:
        Folders sources must lie in after resolving symlinks.
    hub:
        The :class:`HubAPI`, for ``jupyter_copy`` and to check users named by admins.
    server_root_template:
        The folder a user's server serves as ``root_dir``, as this service sees it (``{username}``
        escaped as in the area template); ``jupyter_copy`` destinations are given relative to it.
    concurrency:
        File operations running at once (and, separately, user servers being started at once).
    server_start_timeout, job_poll_interval:
        Seconds to wait for a user's server; seconds between two polls of a ``jupyter_copy`` job.
    oplog:
        Logger of the operations log (one line per operation).
    replica_id, lease_seconds, heartbeat_interval:
        This replica's id (default: host, pid and random digits); how long, in seconds, it holds an
        operation without renewing; seconds between two renewals and takeover scans (default a third of
        ``lease_seconds``).
    """

    def __init__(
        self,
        store: OperationStore,
        areas: UserAreas,
        shared_roots: list[str],
        hub: HubAPI,
        *,
        server_root_template: str,
        concurrency: int = 4,
        server_start_timeout: float = 300.0,
        job_poll_interval: float = 1.0,
        oplog: logging.Logger | None = None,
        replica_id: str | None = None,
        lease_seconds: float = 60.0,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.store = store
        self.areas = areas
        self.shared_roots = list(shared_roots)
        self.hub = hub
        self.semaphore = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.leases = Leases(store, replica_id or new_replica_id(), lease_seconds)
        self.heartbeat_interval = heartbeat_interval or lease_seconds / 3
        self.recorder = Recorder(store, oplog or logging.getLogger("jupyter_staging.hub.oplog"), self.leases)
        self._heartbeat: asyncio.Task[None] | None = None
        self._takeovers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.copies = JupyterCopies(
            store,
            areas,
            UserAreas(server_root_template),
            hub,
            self.recorder,
            file_work=self.semaphore,
            server_starts=asyncio.Semaphore(concurrency),
            server_start_timeout=server_start_timeout,
            job_poll_interval=job_poll_interval,
        )

    # -- queries ----------------------------------------------------------------------------------

    async def get(self, caller: Caller, operation_id: str) -> Operation:
        """One operation the caller may see (theirs; any for admins). Raises ``operation_not_found``
        (404) otherwise, so ids of others' operations are not revealed."""
        op = await asyncio.to_thread(self.store.get, operation_id)
        if op is None or not (caller.is_admin or op.user == caller.name):
            raise StagingError(f"no operation {operation_id!r}", code="operation_not_found", status=404)
        return op

    async def list_operations(
        self,
        caller: Caller,
        *,
        user: str | None,
        method: str | None,
        status: str | None,
        limit: int,
        before: str | None = None,
    ) -> tuple[list[Operation], str | None]:
        """A page of operations newest first: the caller's own, or anyone's for admins (``user`` filters),
        at most ``limit``, after the position of cursor ``before`` when given; and the cursor of the next
        page (None on the last). A cursor is only a position: a user's cursor given by another user lists
        that other user's own operations from there, never the first's.

        Raises ``forbidden`` (403) when a non-admin asks for another user's operations, ``invalid_cursor``
        (400) for a ``before`` that is not a cursor of :func:`~jupyter_staging.hub.db.page_cursor`."""
        if not caller.is_admin:
            if user not in (None, caller.name):
                raise _forbidden(caller, "see other users' operations")
            user = caller.name
        position = parse_cursor(before) if before is not None else None
        rows = await asyncio.to_thread(
            self.store.list_operations,
            user=user,
            method=method,
            status=status,
            limit=limit + 1,
            before=position,
        )
        page = rows[:limit]
        return page, page_cursor(page[-1]) if len(rows) > limit else None

    # -- staging ----------------------------------------------------------------------------------

    async def stage(self, caller: Caller, body: bytes, username: str | None) -> Operation | Download:
        """Run one ``POST api/stage`` call for ``caller`` (acting for ``username`` when given).

        Returns the recorded :class:`Operation` (``succeeded``, ``skipped``, or ``running`` for
        ``jupyter_copy``, which goes on in the background), or a :class:`Download` whose operation is
        finished by :meth:`finish_download`. Raises :class:`StagingError` (its ``operation_id``
        attribute names the recorded failure) for every refusal and failure.
        """
        op = self._new_operation(caller)
        try:
            request = parse_stage_request(body)
            op.method = request.canonical_method
            op.source = request.local_path_on_storage
            op.user = await self._acting_user(caller, username)
            source = await asyncio.to_thread(self._source_for, op.user, request.local_path_on_storage)
            if op.method == "direct_download":
                op.target = source.name
                await self.recorder.begin(op)
                file = await asyncio.to_thread(open_download, source)
                return Download(op, file, source.size, source.name)
            if op.method == "jupyter_copy":
                return await self.copies.start(op, source, request.relative_path)
            outcome = await self._work_in_area(op, source, request.relative_path)
            return await self.recorder.finish(op, outcome)
        except Exception as err:
            await self.recorder.fail(op, err)
            raise as_staging_error(err, op.id) from None

    async def refuse(self, caller: Caller, err: StagingError) -> NoReturn:
        """Record a ``POST api/stage`` call that the handler refused before :meth:`stage` could run (a
        query argument that is not UTF-8) as a failed operation of ``caller``, then raise ``err`` with that
        operation's id (``operation_id``), as :meth:`stage` raises its refusals."""
        op = self._new_operation(caller)
        await self.recorder.fail(op, err)
        raise as_staging_error(err, op.id)

    def _new_operation(self, caller: Caller) -> Operation:
        """A new ``running`` operation of ``caller`` (method ``unknown`` until the body is parsed)."""
        return Operation(
            id=str(uuid.uuid4()), user=caller.name, actor=caller.name, method="unknown", source="",
            status="running", started=utcnow(), runner=self.leases.replica_id,
        )  # fmt: skip

    async def _work_in_area(self, op: Operation, source: SourceFile, relative_path: str) -> Outcome:
        """Open the target in the user's area, record ``op`` as running, do the method's file work."""
        async with self.semaphore:
            target = await asyncio.to_thread(self._open_target, op.user, relative_path, source.name)
            with target:
                op.target = target.path
                await self.recorder.begin(op)
                return await asyncio.to_thread(FILE_WORK[op.method], source, target)

    async def finish_download(self, op: Operation, size: int, sha256: str | None, error: str | None) -> None:
        """Record the end of a ``direct_download``: ``size`` bytes sent, their ``sha256``; ``error`` is
        None on success or a short reason (the client went away, a read failed)."""
        if error is None:
            await self.recorder.finish(op, Outcome("succeeded", size, sha256))
        else:
            err = StagingError(f"download stopped after {size} bytes: {error}", code="download_interrupted")
            await self.recorder.fail(op, err, bytes=size)

    async def _acting_user(self, caller: Caller, username: str | None) -> str:
        """The user whose area the call is for; only admins name someone else (and must name a user
        the Hub knows). A service caller must always name the user."""
        if username is None or username == caller.name:
            if caller.kind != "user":
                raise InvalidRequest(
                    f"{caller.kind} {caller.name!r} has no user area; name the user with ?username=",
                    code="username_required",
                )
            return caller.name
        if not caller.is_admin:
            raise _forbidden(caller, f"stage for another user ({username!r})")
        if await self.hub.get_user(username) is None:
            raise InvalidRequest(f"no JupyterHub user named {username!r}", code="unknown_user")
        return username

    def _source_for(self, username: str, path: str) -> SourceFile:
        """:func:`check_source` of ``path``, then, when the service runs as root and ``username`` is in the
        password database, the check that the user may read it (:func:`check_user_may_read`): root reads
        every file below the shared roots, the user maybe not. Raises as both (``permission_denied``, 403,
        for a file the user may not read; also for a refused path below a folder the user may not search,
        :func:`check_user_may_reach`: a missing file there is not told from a present one)."""
        reader = reader_for(username)
        try:
            source = check_source(path, self.shared_roots)
        except StagingError:
            if reader is not None:  # not found, a folder, ...: not the user's to learn below a closed folder
                check_user_may_reach(path, reader)
            raise
        if reader is not None:
            check_user_may_read(source.path, reader, (source.device, source.inode))
        return source

    def _open_target(self, username: str, relative_path: str, name: str, *, create: bool = True) -> Target:
        return self.areas.open_for(username, relative_path, name, create=create)

    # -- replicas -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take over the operations left with an expired lease, then renew this replica's leases and
        look for more to take over every ``heartbeat_interval`` seconds, in the background."""
        await self.recover()
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def recover(self) -> int:
        """Claim operations whose lease expired (at most ``concurrency`` taken-over operations run at
        once) and run them to their end in the background; returns how many were claimed."""
        room = self.concurrency - len(self._takeovers)
        if room <= 0:
            return 0
        claimed = await asyncio.to_thread(
            self.store.claim_expired, self.leases.replica_id, self.leases.until(), limit=room
        )
        for op in claimed:
            self.leases.held.add(op.id)
            self.recorder.log(logging.INFO, op, f"taken over by replica {self.leases.replica_id}")
            task = asyncio.ensure_future(self._take_over(op))
            self._takeovers.add(task)
            task.add_done_callback(self._took_over)
        return len(claimed)

    def _took_over(self, task: asyncio.Task[None]) -> None:
        self._takeovers.discard(task)
        self._wake.set()  # room for one more: look again now

    async def _beat(self) -> None:
        """The heartbeat: renew the leases, take over expired operations; a database error is logged
        and tried again at the next beat."""
        while True:
            try:
                await self.leases.renew()
                await self.recover()
            except Exception as err:
                logger.error(
                    "replica %s: heartbeat failed: %s: %s", self.leases.replica_id, type(err).__name__, err
                )
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_interval)
            except asyncio.TimeoutError:
                pass

    async def _take_over(self, op: Operation) -> None:
        """Run a claimed operation to its end (see the module), recording it once."""
        try:
            if op.method == "jupyter_copy" and op.job_id:
                await self.copies.follow_again(op)
                return
            if op.method not in FILE_WORK and op.method != "jupyter_copy":
                raise StagingError("the service replica running the operation stopped", code="interrupted")
            source = await asyncio.to_thread(self._source_for, op.user, op.source)
            relative = self.copies.relative_target(op)
            if op.method == "jupyter_copy":
                await self.copies.run(op, source, relative)
                return
            async with self.semaphore:
                target = await asyncio.to_thread(self._open_target, op.user, relative, source.name)
                with target:
                    outcome = await asyncio.to_thread(FILE_WORK[op.method], source, target)
            await self.recorder.finish(op, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            await self.recorder.fail(op, err)

    async def stop(self) -> None:
        """Stop the heartbeat and background work. Rows stay ``running``; their leases are not released
        (file work may still be ending on worker threads), so another replica takes them over once they
        expire, ``lease_seconds`` later."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        for task in list(self._takeovers):
            task.cancel()
        await asyncio.gather(*self._takeovers, return_exceptions=True)
        await self.copies.stop()


def _forbidden(caller: Caller, what: str) -> StagingError:
    return StagingError(
        f"{caller.kind} {caller.name!r} may not {what}: that needs the service's admin scope",
        code="forbidden",
        status=403,
    )
