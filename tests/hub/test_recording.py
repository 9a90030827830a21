"""Every call is recorded, whatever its text holds: a real SQLite operations table and a real operations
log file, written by the service's :class:`Recorder`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path

import pytest

from jupyter_staging.errors import InvalidRequest
from jupyter_staging.hub import oplog
from jupyter_staging.hub.db import Operation, OperationStore, utcnow
from jupyter_staging.hub.fileops import check_source
from jupyter_staging.hub.recording import Recorder
from jupyter_staging.hub.requests import parse_stage_request

#: A name that is not UTF-8 as Python holds it (``os.fsdecode(b"caf\xe9.fits")``).
LATIN1_NAME = os.fsdecode(b"caf\xe9.fits")


@pytest.fixture
def recorder(tmp_path: Path):
    store = OperationStore(f"sqlite:///{tmp_path / 'ops.sqlite'}")
    log = oplog.open_log(tmp_path / "ops.log", max_bytes=1024 * 1024, backup_count=1)
    yield Recorder(store, log)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    store.close()


def test_a_failure_whose_text_is_not_utf8_is_still_recorded_row_and_line(recorder, tmp_path):
    """The last resort (``Recorder.fail``) never fails on encoding: a source, a target and a message
    holding lone surrogates (bytes of a name that is not UTF-8) are written as ``\\udcXX`` escapes, the
    same text in the database and in the log line."""
    op = Operation(
        id=str(uuid.uuid4()), user="alice", actor="alice", method="local_copy", status="running",
        source="/archive/" + LATIN1_NAME, target="/home/alice/" + LATIN1_NAME, started=utcnow(),
    )  # fmt: skip
    asyncio.run(recorder.fail(op, InvalidRequest(f"cannot use {LATIN1_NAME}", code="name_not_utf8")))
    (row,) = recorder.store.list_operations(limit=10)
    assert (row.status, row.error_code) == ("failed", "name_not_utf8")
    assert row.source == "/archive/caf\\udce9.fits" and row.error_reason == "cannot use caf\\udce9.fits"
    (line,) = [json.loads(text) for text in (tmp_path / "ops.log").read_text(encoding="utf-8").splitlines()]
    assert (line["operation"], line["code"]) == (op.id, "name_not_utf8")
    assert line["message"] == "cannot use caf\\udce9.fits" and line["target"] == "/home/alice/caf\\udce9.fits"


def test_a_source_whose_resolved_name_is_not_utf8_is_refused_before_the_work(tmp_path):
    """A UTF-8 symlink in the archive leading to a Latin-1 name: ``name_not_utf8`` (400), whose message
    shows the name escaped; a JSON body giving a lone surrogate escape is refused the same way."""
    (tmp_path / LATIN1_NAME).write_bytes(b"data")
    (tmp_path / "cafe.fits").symlink_to(LATIN1_NAME)
    with pytest.raises(InvalidRequest) as caught:
        check_source(str(tmp_path / "cafe.fits"), [str(tmp_path)])
    assert (caught.value.code, caught.value.status) == ("name_not_utf8", 400)
    assert "caf\\udce9.fits" in caught.value.message
    caught.value.message.encode("utf-8")
    body = {"method": "local_copy", "local_path_on_storage": str(tmp_path / "cafe.fits")}
    for field in ("local_path_on_storage", "relative_path"):
        raw = json.dumps({**body, field: "/archive/caf\udce9.fits"}).encode()
        with pytest.raises(InvalidRequest) as caught:
            parse_stage_request(raw)
        assert caught.value.code == "name_not_utf8" and field in caught.value.message


def test_the_operations_log_writes_any_text():
    """A record carrying a lone surrogate anywhere becomes a line of UTF-8 JSON (its JSON escape)."""
    record = logging.makeLogRecord({"msg": LATIN1_NAME, "levelname": "INFO", "source": LATIN1_NAME})
    line = oplog.JSONFormatter().format(record)
    line.encode("utf-8")
    assert json.loads(line)["source"] == LATIN1_NAME
