"""``jupyter_copy`` against a stand-in for the user's server: what the service does with each answer.

The real hub and servers are in ``test_hub_service.py``; here the server's answers are chosen, to reach
the cases a live server gives only in races (an earlier request's job answered instead of a new one, a
file appearing at the target while the job runs, a job that fails after writing into its scratch folder).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.errors import StagingError
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.db import Operation, OperationStore
from jupyter_staging.hub.jupytercopy import scratch_name
from jupyter_staging.hub.operations import Caller, StagingOperations
from tests.helpers.data import KEPLER_NAME

BOB = Caller("bob", "user", False)


class FakeServer:
    """Answers the calls :class:`~jupyter_staging.hub.hubapi.HubAPI` makes, like bob's server would:
    ``create_job`` copies the source into ``root/destination`` with a ``manifest.json`` and answers
    ``job``, or, as the real server does, refuses a folder holding another request's manifest (409);
    ``get_job`` and ``job_chunks`` answer what ``create_job`` set."""

    def __init__(self, root: Path, *, state: str = "succeeded", earlier: bool = False) -> None:
        self.root = root
        self.state = state
        self.earlier = earlier
        self.created: list[dict[str, Any]] = []
        self.job: dict[str, Any] = {}
        self.chunks: list[dict[str, Any]] = []
        self.acked: list[int] = []
        self.before_answer = lambda: None

    async def ensure_server(self, name: str, *, timeout: float) -> str:
        return f"/user/{name}/"

    async def create_job(self, username: str, server: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        folder = self.root / body["destination"]
        if (folder / "manifest.json").exists():
            raise StagingError("the destination holds the output of a different request", status=409)
        folder.mkdir(parents=True, exist_ok=True)
        data = Path(body["source"]).read_bytes()
        (folder / Path(body["source"]).name).write_bytes(data)
        (folder / "manifest.json").write_text("{}")
        self.job = {
            "id": "earlier-job" if self.earlier else "new-job",
            "idempotency_key": "someone-else" if self.earlier else body["idempotency_key"],
            "up_to_date": self.earlier,
            "state": self.state,
            "destination": body["destination"],
            "progress": {"bytes_done": len(data)},
            "error": {"code": "disk_full", "message": "no space"} if self.state == "failed" else None,
        }
        sha = hashlib.sha256(data).hexdigest()
        self.chunks = [
            {
                "index": 0,
                "state": "ready",
                "path": Path(body["source"]).name,
                "bytes": len(data),
                "sha256": sha,
            }
        ]
        self.before_answer()
        return self.job

    async def get_job(self, username: str, server: str, job_id: str) -> dict[str, Any]:
        return self.job

    async def job_chunks(self, username: str, server: str, job_id: str) -> list[dict[str, Any]]:
        return self.chunks

    async def ack_chunk(self, username: str, server: str, job_id: str, index: int) -> None:
        """As the real server does under ``delete_on_ack`` (as the user): the chunk's file goes, and with
        the last chunk of a finished job its manifest and the folder it made."""
        self.acked.append(index)
        folder = self.root / self.job["destination"]
        self.chunks[index]["state"] = "acked"
        (folder / self.chunks[index]["path"]).unlink(missing_ok=True)
        if all(c["state"] != "ready" for c in self.chunks):
            (folder / "manifest.json").unlink(missing_ok=True)
            folder.rmdir()

    async def get_user(self, name: str) -> dict[str, Any]:
        return {"name": name}


@pytest.fixture
def site(tmp_path, kepler):
    (tmp_path / "archive").mkdir()
    shutil.copyfile(kepler, tmp_path / "archive" / KEPLER_NAME)
    (tmp_path / "homes" / "bob").mkdir(parents=True)
    return tmp_path


def run_copy(site: Path, server: FakeServer, relative_path: str, source: str = KEPLER_NAME) -> Operation:
    """One ``jupyter_copy`` of archive file ``source`` for bob, followed until its record is final."""

    async def go() -> Operation:
        ops = StagingOperations(
            OperationStore(f"sqlite:///{site / 'ops.sqlite'}"),
            UserAreas(str(site / "homes" / "{username}" / "staging")),
            [str(site / "archive")],
            server,  # type: ignore[arg-type]
            server_root_template=str(site / "homes" / "{username}"),
            job_poll_interval=0.01,
        )
        body = {
            "method": "jupyter_copy",
            "local_path_on_storage": str(site / "archive" / source),
            "relative_path": relative_path,
        }
        op = await ops.stage(BOB, json.dumps(body).encode(), None)
        assert isinstance(op, Operation)
        for _ in range(500):
            final = ops.store.get(op.id)
            if final is not None and final.status != "running":
                await ops.stop()
                return final
            await asyncio.sleep(0.01)
        raise AssertionError("the operation did not end")

    return asyncio.run(go())


def test_an_earlier_requests_job_answered_by_the_server_is_a_duplicate(site, kepler):
    server = FakeServer(site / "homes" / "bob", earlier=True)
    op = run_copy(site, server, "kepler/")
    assert op.status == "skipped" and op.to_dict()["duplicate"] is True, op.to_dict()
    assert op.job_id == "earlier-job"
    assert len(server.created) == 1
    assert (site / "homes" / "bob" / "staging" / "kepler" / KEPLER_NAME).read_bytes() == kepler.read_bytes()


def test_a_new_name_is_linked_from_the_scratch_folder_which_goes(site, kepler):
    server = FakeServer(site / "homes" / "bob")
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "succeeded", op.to_dict()
    assert server.created[0]["destination"] == f"staging/kepler/{scratch_name('lc.fits', op.id)}"
    folder = site / "homes" / "bob" / "staging" / "kepler"
    assert sorted(p.name for p in folder.iterdir()) == ["lc.fits"]
    assert (folder / "lc.fits").read_bytes() == kepler.read_bytes()
    assert op.sha256 == hashlib.sha256(kepler.read_bytes()).hexdigest()


def test_two_files_keeping_their_names_land_in_one_folder_alone(site, kepler):
    """A job for a target keeping the source's name stages into a scratch folder too: the user's folder
    gets the file alone (no manifest.json), and a second file into that folder is not refused."""
    (site / "archive" / "notes.txt").write_text("observing notes\n")
    server = FakeServer(site / "homes" / "bob")
    first = run_copy(site, server, "data/")
    second = run_copy(site, server, "data/", source="notes.txt")
    assert (first.status, second.status) == ("succeeded", "succeeded"), (first.to_dict(), second.to_dict())
    assert server.created[0]["destination"] == f"staging/data/{scratch_name(KEPLER_NAME, first.id)}"
    folder = site / "homes" / "bob" / "staging" / "data"
    assert sorted(p.name for p in folder.iterdir()) == sorted([KEPLER_NAME, "notes.txt"])
    assert (folder / KEPLER_NAME).read_bytes() == kepler.read_bytes()


@pytest.mark.parametrize("keep_name", [False, True])
def test_a_name_of_245_bytes_is_copied(site, kepler, keep_name):
    """The scratch folder beside the target is named after it with ``.staging-<id8>``: cut to fit in 255
    bytes (a name of 239 bytes or more failed ``name_too_long``)."""
    long_name = "l" * 240 + ".fits"
    if keep_name:
        shutil.copyfile(kepler, site / "archive" / long_name)
    server = FakeServer(site / "homes" / "bob")
    op = run_copy(
        site,
        server,
        "kepler/" if keep_name else f"kepler/{long_name}",
        source=long_name if keep_name else KEPLER_NAME,
    )
    assert op.status == "succeeded", op.to_dict()
    folder = site / "homes" / "bob" / "staging" / "kepler"
    assert [p.name for p in folder.iterdir()] == [long_name]
    assert (folder / long_name).read_bytes() == kepler.read_bytes()


def test_a_failed_job_leaves_no_scratch_folder(site):
    server = FakeServer(site / "homes" / "bob", state="failed")
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "failed" and op.error_code == "disk_full", op.to_dict()
    assert list((site / "homes" / "bob" / "staging" / "kepler").iterdir()) == []


@pytest.mark.parametrize("moved", [False, True])  # linked in, or moved in where links are refused
def test_a_different_file_appearing_at_the_new_name_is_never_replaced(site, moved, request):
    if moved:
        request.getfixturevalue("links_refused")
    server = FakeServer(site / "homes" / "bob")
    theirs = site / "homes" / "bob" / "staging" / "kepler" / "lc.fits"
    server.before_answer = lambda: theirs.write_bytes(b"bob's own work")
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "failed" and op.error_code == "target_exists", op.to_dict()
    assert theirs.read_bytes() == b"bob's own work"
    assert [p.name for p in theirs.parent.iterdir()] == ["lc.fits"]


def test_the_same_bytes_appearing_at_the_new_name_are_a_duplicate(site, kepler):
    server = FakeServer(site / "homes" / "bob")
    theirs = site / "homes" / "bob" / "staging" / "kepler" / "lc.fits"
    server.before_answer = lambda: theirs.write_bytes(kepler.read_bytes())
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "skipped" and op.error_code == "duplicate", op.to_dict()
    assert [p.name for p in theirs.parent.iterdir()] == ["lc.fits"]


def test_a_relative_path_leaving_the_area_is_refused_before_any_job(site):
    server = FakeServer(site / "homes" / "bob")
    with pytest.raises(StagingError) as err:
        run_copy(site, server, "../escape.fits")
    assert err.value.code == "path_not_allowed"
    assert server.created == []


@pytest.fixture
def links_refused(monkeypatch):
    """``protected_hardlinks`` refusing the service's link of the user's file: what a service that is
    neither root nor the users' uid meets (this suite runs as root, which the rule never stops)."""
    from jupyter_staging.hub import jobfiles

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(jobfiles.os, "link", refuse)


@pytest.mark.parametrize("moves", [True, False])
def test_a_file_that_may_not_be_linked_is_moved_or_copied_in(site, kepler, links_refused, monkeypatch, moves):
    """A service that is neither root nor the users' uid may not link the file the user's server wrote
    (``protected_hardlinks``): it moves it in; and where it may not move it either (the user's folder shared
    with it through a group, 2775; the job's scratch folder the user's server made 0755), it copies it in."""
    from jupyter_staging.hub import jobfiles

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    if not moves:
        monkeypatch.setattr(jobfiles, "rename_noreplace_at", refuse)
    server = FakeServer(site / "homes" / "bob")
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "succeeded", op.to_dict()
    folder = site / "homes" / "bob" / "staging" / "kepler"
    assert sorted(p.name for p in folder.iterdir()) == ["lc.fits"]
    assert (folder / "lc.fits").read_bytes() == kepler.read_bytes()
    assert op.sha256 == hashlib.sha256(kepler.read_bytes()).hexdigest()


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_a_scratch_folder_the_service_may_not_remove_is_removed_by_the_users_server(
    site, kepler, links_refused, monkeypatch, state
):
    """A service that is neither root nor the user may not remove what the user's server wrote in the
    scratch folder (the user's, 0755: ``remove_folder`` is refused, as ``setpriv`` shows it for real): the
    job is ``delete_on_ack`` and the service acknowledges its file once it has it (or once the job
    failed), so the user's server removes the scratch folder. Before, the folder stayed for good with a
    copy of the file and the job's manifest."""
    from jupyter_staging.hub import jobfiles, jupytercopy

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jobfiles, "rename_noreplace_at", refuse)  # copied in, as such a service does
    monkeypatch.setattr(jupytercopy, "remove_folder", lambda parent_fd, name, owner: None)  # refused
    server = FakeServer(site / "homes" / "bob", state=state)
    op = run_copy(site, server, "kepler/lc.fits")
    assert server.created[0]["cleanup_policy"] == "delete_on_ack"
    assert op.status == state, op.to_dict()
    assert server.acked == [0]
    folder = site / "homes" / "bob" / "staging" / "kepler"
    assert sorted(p.name for p in folder.iterdir()) == (["lc.fits"] if state == "succeeded" else [])


@pytest.mark.parametrize("landed", [True, False])
def test_a_replica_taking_over_after_the_release_records_what_landed(site, kepler, landed):
    """A replica that put the file under the target's name and released the job's folder (the last ack:
    the job is ``expired`` in bob's server) then stopped before recording leaves the operation
    ``running``. The replica that follows it again records it ``succeeded`` when the target holds the
    job's bytes; before, the expired job made it ``failed`` (``job_expired``) with the file in place.
    Without the file, the job's expiry is its failure."""
    server = FakeServer(site / "homes" / "bob")
    op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "succeeded" and server.acked == [0], op.to_dict()
    target = site / "homes" / "bob" / "staging" / "kepler" / "lc.fits"
    if not landed:
        target.chmod(0o644)
        target.unlink()
    server.job["state"] = "expired"
    store = OperationStore(f"sqlite:///{site / 'ops.sqlite'}")
    store.update(op.id, status="running", finished=None, sha256=None, bytes=None)

    async def take_over() -> Operation | None:
        ops = StagingOperations(
            store,
            UserAreas(str(site / "homes" / "{username}" / "staging")),
            [str(site / "archive")],
            server,  # type: ignore[arg-type]
            server_root_template=str(site / "homes" / "{username}"),
            job_poll_interval=0.01,
        )
        running = store.get(op.id)
        assert running is not None
        await ops.copies.follow_again(running)
        await ops.stop()
        return store.get(op.id)

    final = asyncio.run(take_over())
    assert final is not None
    if landed:
        assert final.status == "succeeded", final.to_dict()
        assert final.sha256 == hashlib.sha256(kepler.read_bytes()).hexdigest()
        assert final.bytes == kepler.stat().st_size
    else:
        assert (final.status, final.error_code) == ("failed", "job_expired"), final.to_dict()


def test_a_chunk_removed_before_the_service_acknowledges_it_is_not_reported_as_a_kept_folder(
    site, kepler, caplog
):
    """The user's server answers the service's ack ``chunk_expired`` when its clean-up (the TTL sweep, a
    cancel) removed the job's output first: the scratch folder is gone already, so no warning says it was
    kept, and the operation still succeeds with the file under the target's name."""

    class ExpiredFirst(FakeServer):
        async def ack_chunk(self, username: str, server: str, job_id: str, index: int) -> None:
            folder = self.root / self.job["destination"]
            shutil.rmtree(folder)
            raise StagingError("chunk 0 is gone", code="chunk_expired", status=409)

    server = ExpiredFirst(site / "homes" / "bob")
    with caplog.at_level(logging.INFO, logger="jupyter_staging.hub.oplog"):
        op = run_copy(site, server, "kepler/lc.fits")
    assert op.status == "succeeded", op.to_dict()
    assert (site / "homes" / "bob" / "staging" / "kepler" / "lc.fits").read_bytes() == kepler.read_bytes()
    assert not [r for r in caplog.records if "kept" in r.getMessage()], [
        r.getMessage() for r in caplog.records
    ]


def test_a_failed_job_whose_chunks_cannot_be_read_fails_with_the_jobs_error(site, caplog):
    """A failed job whose chunk list the user's server then failed to give (``chunk_list_failed``, as
    :meth:`HubAPI.job_chunks` raises it for a list it cannot read whole): the operation failed with that
    error, hiding the job's own (``disk_full``). It fails with the job's error, and a warning says the scratch
    folder is kept."""

    class NoChunkList(FakeServer):
        async def job_chunks(self, username: str, server: str, job_id: str) -> list[dict[str, Any]]:
            raise StagingError(
                f"the chunks of job {job_id} could not be read whole", code="chunk_list_failed"
            )

    with caplog.at_level(logging.INFO, logger="jupyter_staging.hub.oplog"):
        op = run_copy(site, NoChunkList(site / "homes" / "bob", state="failed"), "kepler/lc.fits")
    assert (op.status, op.error_code) == ("failed", "disk_full"), op.to_dict()
    kept = [r.getMessage() for r in caplog.records if "kept" in r.getMessage()]
    assert kept and "could not be read whole" in kept[0], [r.getMessage() for r in caplog.records]


def test_a_succeeded_job_whose_chunks_cannot_be_read_leaves_no_scratch_folder(site):
    """A job that succeeded, whose chunk list the user's server then failed to give whole
    (``chunk_list_failed``: a page answered 5xx after every retry). The operation fails so, but before, the
    scratch folder holding the whole copied file stayed in the user's area for good (the job's
    ``delete_on_ack`` policy never acknowledged, no TTL), and no line said so. It goes now as a failed job's
    does. (``job_chunks`` raising stands for the user's server failing: see test_job_chunk_pages.py.)"""

    class NoChunkList(FakeServer):
        async def job_chunks(self, username: str, server: str, job_id: str) -> list[dict[str, Any]]:
            raise StagingError(
                f"the chunks of job {job_id} could not be read whole", code="chunk_list_failed"
            )

    op = run_copy(site, NoChunkList(site / "homes" / "bob"), "kepler/lc.fits")
    assert (op.status, op.error_code) == ("failed", "chunk_list_failed"), op.to_dict()
    assert list((site / "homes" / "bob" / "staging" / "kepler").iterdir()) == []
