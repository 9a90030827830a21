"""``GET api/operations`` returned the newest ``limit`` (at most 1,000) operations and nothing older: after a
year, a user's or an admin's older operations could not be reached through the API or the service's page.
It now pages with a cursor (``before``: the answer's ``next_cursor``, the ``(started, id)`` of the page's last
row), each page read from its position in an index (hub0004's ``(user, started, id)`` for a user's, the one
on ``started`` for everyone's).

Real parts: the operations store on SQLite, PostgreSQL and MariaDB (``db_url``), and the service under a
real JupyterHub with its records in each of them; rows are written straight into the table (a year of
operations, many started in the same microsecond).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from jupyter_staging.errors import InvalidRequest
from jupyter_staging.hub.db import Operation, OperationStore, page_cursor, parse_cursor
from tests.helpers.hub import HubProcess
from tests.helpers.statements import last_statement

from .conftest import start_hub

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def seed(engine: sa.Engine, count: int = 90) -> None:
    """``count`` operations of alice (2 of 3) and bob, three at a time started in the same microsecond,
    with random ids (ties are broken by id, not by the order of insertion)."""
    rows = [
        dict(
            id=str(uuid.uuid4()), user="bob" if i % 3 == 0 else "alice", actor="alice", method="local_copy",
            source=f"/archive/f{i}", target=f"f{i}", status="failed" if i % 4 == 0 else "succeeded",
            started=NOW - timedelta(days=i // 3, microseconds=7), finished=NOW,
        )
        for i in range(count)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(Operation.__table__), rows)


def pages(store: OperationStore, limit: int, **filters: Any) -> list[list[str]]:
    """Every page of the listing with ``filters``, ``limit`` rows a page, following the cursors."""
    found: list[list[str]] = []
    before = None
    while True:
        rows = store.list_operations(limit=limit + 1, before=before, **filters)
        found.append([op.id for op in rows[:limit]])
        if len(rows) <= limit:
            return found
        before = parse_cursor(page_cursor(rows[limit - 1]))


def test_pages_cover_every_operation_once_in_order(db_url):
    store = OperationStore(db_url)
    engine = sa.create_engine(db_url)
    try:
        seed(engine)
        for filters in ({}, {"user": "alice"}, {"user": "bob", "status": "failed"}, {"status": "failed"}):
            whole = [op.id for op in store.list_operations(limit=1000, **filters)]
            assert len(whole) == len(set(whole)) > 5
            for limit in (1, 2, 3, 7, len(whole), 1000):
                split = pages(store, limit, **filters)
                assert [i for page in split for i in page] == whole, (filters, limit)
                assert all(len(page) == limit for page in split[:-1])
        started = [op.started for op in store.list_operations(limit=1000)]
        assert started == sorted(started, reverse=True) and len(set(started)) == 30  # three per time
    finally:
        store.close()
        engine.dispose()


def mariadb_rows_read(engine: sa.Engine, statement: str, parameters: Any) -> int:
    """Index and table rows MariaDB read to answer ``statement`` (its ``Handler_read_*`` counters but the
    one counting index look-ups)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("FLUSH STATUS")
        cursor.execute(statement, parameters)
        cursor.fetchall()
        cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
        return sum(int(value) for name, value in cursor.fetchall() if name != "Handler_read_key")
    finally:
        raw.close()


def test_a_page_is_read_from_its_position(db_url):
    """A page in the middle of a user's 2,000 operations: MariaDB read backwards from the user's newest
    operation to the position (1,000 rows for a page of 10); now the page's rows (and the next one's). On
    SQLite the plan is an index range, sorted without a sort of all rows."""
    store = OperationStore(db_url)
    engine = sa.create_engine(db_url)
    try:
        seed(engine, 3000)
        for filters in ({"user": "alice"}, {}):
            whole = store.list_operations(limit=10_000, **filters)
            middle = parse_cursor(page_cursor(whole[len(whole) // 2]))
            statement, parameters = last_statement(
                store,
                lambda: store.list_operations(limit=11, before=middle, **filters),  # noqa: B023
            )
            if engine.dialect.name in ("mysql", "mariadb"):
                assert mariadb_rows_read(engine, statement, parameters) <= 20, filters
            elif engine.dialect.name == "sqlite":
                with engine.connect() as conn:
                    plan = " | ".join(
                        str(row[-1])
                        for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
                    )
                index = "ix_operations_user_started" if filters else "ix_operations_started"
                assert f"SEARCH operations USING INDEX {index}" in plan, plan
                assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    finally:
        store.close()
        engine.dispose()


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Values of ``before`` that are not cursors of the service.
BAD_CURSORS = [
    "garbage!",
    "Zm9v",  # base64 of "foo"
    b64(b"[1, 2]"),
    b64(b'["not a time", "x"]'),
    b64(b'["2026-12-06T12:00:00", "x"]'),  # no time zone
    b64(json.dumps(["2026-12-06T12:00:00+00:00", "x" * 37]).encode()),
    b64(json.dumps(["2026-12-06T12:00:00+00:00", "a\x00b"]).encode()),
    b64(json.dumps(["2026-12-06T12:00:00+00:00", ""]).encode()),
    b64(b'{"started": 1}'),
    b64(json.dumps(["0001-01-01T00:00:00+01:00", "x"]).encode()),  # before year 1 in UTC: was a 500
    b64(json.dumps(["9999-12-31T23:59:59-01:00", "x"]).encode()),
    b64(b"\xff\xfe"),
    "A" * 5000,
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_bad_cursor_is_invalid_cursor(cursor):
    with pytest.raises(InvalidRequest) as caught:
        parse_cursor(cursor)
    assert (caught.value.code, caught.value.status) == ("invalid_cursor", 400)


# -- the service, under a real JupyterHub, with its records in each database ----------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mariadb"])
def paged_hub(request, tmp_path_factory, kepler, proxy_command) -> Iterator[HubProcess]:
    """A hub whose service records in a database of ``request.param`` holding 260 seeded operations."""
    workdir = tmp_path_factory.mktemp(f"hub-pages-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite:///{workdir / 'operations.sqlite'}"
    else:
        db_url = request.getfixturevalue(request.param).create_database("staging_hub_pages")
    hub = start_hub(workdir, kepler, proxy_command, service_env={"JUPYTER_STAGING_HUB_DB_URL": db_url})
    engine = sa.create_engine(db_url)
    try:
        seed(engine, 260)
    finally:
        engine.dispose()
    yield hub
    hub.stop()


def api_pages(hub: HubProcess, who: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of ``GET api/operations`` for ``who`` with ``params``, following the answers' ``next``
    links (checked to keep the filters and to hold ``next_cursor``)."""
    found = []
    answer = hub.api("GET", "api/operations", token=hub.tokens[who], params=params)
    while True:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        found.append(body["operations"])
        if body["next_cursor"] is None:
            assert body["next"] is None
            return found
        link = urlsplit(body["next"])
        query = {k: v[0] for k, v in parse_qs(link.query).items()}
        assert query == {**{k: str(v) for k, v in params.items()}, "before": body["next_cursor"]}
        answer = hub.api(
            "GET", link.path.split("/services/staging/", 1)[1] + "?" + link.query, token=hub.tokens[who]
        )


def ids(page_list: list[list[dict[str, Any]]]) -> list[str]:
    return [op["id"] for page in page_list for op in page]


def test_a_users_and_an_admins_pages_reach_every_operation_once(paged_hub):
    hub = paged_hub
    mine = api_pages(hub, "alice", limit=7)
    whole = hub.api("GET", "api/operations", token=hub.tokens["alice"], params={"limit": 1000}).json()
    assert len(ids(mine)) == len(set(ids(mine))) == len(whole["operations"]) > 170
    assert ids(mine) == [op["id"] for op in whole["operations"]] and whole["next_cursor"] is None
    assert {op["user"] for page in mine for op in page} == {"alice"}
    started = [op["started"] for page in mine for op in page]
    assert started == sorted(started, reverse=True)

    everyone = api_pages(hub, "admin", limit=100)
    assert [len(page) for page in everyone] == [100, 100, 60]
    assert len(set(ids(everyone))) == 260
    failed = api_pages(hub, "admin", status="failed", user="bob", limit=5)
    expected = [
        op["id"] for page in everyone for op in page if op["status"] == "failed" and op["user"] == "bob"
    ]
    assert ids(failed) == expected and len(expected) > 5


def test_a_cursor_is_only_a_position(paged_hub):
    """Alice's cursor given by bob lists bob's own operations from that position: nothing of alice's."""
    hub = paged_hub
    first = hub.api("GET", "api/operations", token=hub.tokens["alice"], params={"limit": 50}).json()
    cursor = first["next_cursor"]
    bobs = hub.api("GET", "api/operations", token=hub.tokens["bob"], params={"before": cursor, "limit": 1000})
    assert bobs.status_code == 200
    assert bobs.json()["operations"] and {op["user"] for op in bobs.json()["operations"]} == {"bob"}
    last = first["operations"][-1]["started"]
    assert all(op["started"] <= last for op in bobs.json()["operations"])
    forbidden = hub.api(
        "GET", "api/operations", token=hub.tokens["bob"], params={"before": cursor, "user": "alice"}
    )
    assert forbidden.status_code == 403


@pytest.mark.parametrize("cursor", [*BAD_CURSORS, "%ff", b"\xff".decode("latin-1")])
def test_a_bad_cursor_is_a_400(paged_hub, cursor):
    hub = paged_hub
    url = hub.service_url + "api/operations?before=" + (cursor if cursor == "%ff" else "")
    params = None if cursor == "%ff" else {"before": cursor}
    import requests

    r = requests.get(
        url, params=params, headers={"Authorization": f"token {hub.tokens['alice']}"}, timeout=60
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_cursor" and "Traceback" not in r.text


def test_a_cursor_at_either_end_of_time_is_a_position(paged_hub):
    hub = paged_hub
    first = hub.api("GET", "api/operations", token=hub.tokens["admin"], params={"limit": 5}).json()
    for when, expected in (("9999-12-31T23:59:59.999999+00:00", first), ("0001-01-01T00:00:00+00:00", None)):
        cursor = b64(json.dumps([when, "f" * 36]).encode())
        r = hub.api("GET", "api/operations", token=hub.tokens["admin"], params={"limit": 5, "before": cursor})
        assert r.status_code == 200, r.text
        assert r.json()["operations"] == (expected["operations"] if expected else [])


def test_the_page_links_to_older_operations(paged_hub):
    hub = paged_hub
    session = hub.login("admin")
    page = session.get(hub.service_url, params={"method": "local_copy"}, timeout=60)
    assert page.status_code == 200 and 'id="older-operations"' in page.text
    first = page.text.count("data-operation=")
    assert first == 200
    href = page.text.split('id="older-operations" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert "method=local_copy" in href and "before=" in href
    older = session.get(hub.url + href, timeout=60)
    assert older.status_code == 200 and 'id="older-operations"' not in older.text
    assert older.text.count("data-operation=") == 60
    bad = session.get(hub.service_url, params={"before": "garbage!"}, timeout=60)
    assert bad.status_code == 400 and "Traceback" not in bad.text
