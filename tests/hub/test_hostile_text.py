"""Text a hostile user chooses (a path holding NUL, what their own server answers) against a real PostgreSQL
operations table, which refuses NUL in text and text longer than a column: every call still ends recorded,
queries holding NUL find nothing (never a 500), and no operation is left ``running`` for good."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.errors import StagingError
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.db import Operation, OperationStore, utcnow
from jupyter_staging.hub.operations import Caller, StagingOperations
from jupyter_staging.hub.recording import Recorder
from tests.helpers.data import KEPLER_NAME
from tests.hub.test_jupyter_copy import FakeServer

BOB = Caller("bob", "user", False)


@pytest.fixture
def store(postgres):
    store = OperationStore(postgres.create_database(f"hostile_{uuid.uuid4().hex[:8]}"))
    yield store
    store.close()


@pytest.fixture
def site(tmp_path, kepler):
    (tmp_path / "archive").mkdir()
    shutil.copyfile(kepler, tmp_path / "archive" / KEPLER_NAME)
    (tmp_path / "homes" / "bob").mkdir(parents=True)
    return tmp_path


def operations(store: OperationStore, site: Path, server: Any = None) -> StagingOperations:
    return StagingOperations(
        store,
        UserAreas(str(site / "homes" / "{username}" / "staging")),
        [str(site / "archive")],
        server,
        server_root_template=str(site / "homes" / "{username}"),
        job_poll_interval=0.01,
    )


def test_queries_holding_nul_find_nothing(store):
    """``GET api/operations/%00`` and an admin's ``?user=%00`` were 500s (the query's DataError)."""
    assert store.get("a\x00b") is None
    assert store.list_operations(user="bob\x00", limit=5) == []


def test_a_source_path_holding_nul_is_refused_and_recorded(store, site):
    """The refusal (400 ``path_not_allowed``) was answered but its row was never written."""

    async def go() -> None:
        ops = operations(store, site)
        body = {"method": "local_copy", "local_path_on_storage": f"{site}/archive/a\x00b"}
        with pytest.raises(StagingError) as refused:
            await ops.stage(BOB, json.dumps(body).encode(), None)
        assert refused.value.code == "path_not_allowed"
        op = store.get(refused.value.operation_id)  # type: ignore[attr-defined]
        assert op is not None and op.status == "failed" and op.error_code == "path_not_allowed"
        assert op.source == f"{site}/archive/a\\x00b"

    asyncio.run(go())


def test_a_failure_whose_message_and_code_a_users_server_chose_is_recorded(store):
    """A job's error as bob's server answers it (a NUL in its message, a code of 200 characters): the row
    was left ``running`` (and taken over, and failed again, for ever)."""

    async def go() -> None:
        recorder = Recorder(store, logging.getLogger("test.hostile"))
        op = Operation(
            id=str(uuid.uuid4()), user="bob", actor="bob", method="jupyter_copy", source="/a",
            status="running", started=utcnow(),
        )  # fmt: skip
        await recorder.begin(op)
        await recorder.fail(op, StagingError("bad\x00news", code="c" * 200, status=502))
        done = store.get(op.id)
        assert done is not None and done.status == "failed", done and done.to_dict()
        assert done.error_code == "c" * 64 and done.error_reason == "bad\\x00news"

    asyncio.run(go())


class LongIdServer(FakeServer):
    """bob's server answering his job with an id too long for the table."""

    async def create_job(self, username: str, server: str, body: dict[str, Any]) -> dict[str, Any]:
        job = await super().create_job(username, server, body)
        job["id"] = "j" * 300
        return job


def test_a_job_id_the_table_cannot_hold_fails_the_operation(store, site):
    async def go() -> Operation:
        ops = operations(store, site, LongIdServer(site / "homes" / "bob"))
        body = {"method": "jupyter_copy", "local_path_on_storage": f"{site}/archive/{KEPLER_NAME}"}
        op = await ops.stage(BOB, json.dumps(body).encode(), None)
        assert isinstance(op, Operation)
        try:
            for _ in range(500):
                final = store.get(op.id)
                if final is not None and final.status != "running":
                    return final
                await asyncio.sleep(0.01)
        finally:
            await ops.stop()
        raise AssertionError("the operation stayed running")

    op = asyncio.run(go())
    assert op.status == "failed" and op.error_code == "server_error", op.to_dict()
