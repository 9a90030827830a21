"""What one page of ``GET api/operations`` costs in a year of operations: 100,000 rows (half of them one
user's, three at a time started in the same microsecond), pages of 100 read through
:meth:`OperationStore.list_operations` at the start, the middle and the end of a listing, for a user and for
an admin (everyone's, and everyone's ``failed``), on SQLite, PostgreSQL and MariaDB (``--db``).

Per page: the median of 5 reads in ms, and the rows the database read for the statement the store sent,
where it says so (PostgreSQL: ``EXPLAIN ANALYZE``'s scan and sort nodes; MariaDB: its ``Handler_read_*``
counters but index look-ups; SQLite: its plan)::

    PYTHONPATH=. .venv/bin/python bench/bench_operation_pages.py --db sqlite postgres mariadb
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jupyter_staging.hub.db import Operation, OperationStore, page_cursor, parse_cursor  # noqa: E402
from tests.helpers.statements import last_statement  # noqa: E402

ROWS = 100_000
PAGE = 100
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def seed(engine: sa.Engine) -> None:
    rows = [
        dict(
            id=str(uuid.uuid4()), user="alice" if i % 2 else f"user{i % 97}", actor="alice",
            method="local_copy", source=f"/archive/f{i}", target=f"f{i}",
            status="failed" if i % 10 == 0 else "succeeded",
            started=NOW - timedelta(seconds=300 * (i // 3)), finished=NOW,
        )
        for i in range(ROWS)
    ]  # fmt: skip
    with engine.begin() as conn:
        for start in range(0, ROWS, 10_000):
            conn.execute(sa.insert(Operation.__table__), rows[start : start + 10_000])


def rows_read(engine: sa.Engine, statement: str, parameters: Any) -> str:
    """What the database says it read to answer ``statement`` (as the store sent it)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
            plan = [row[0].strip() for row in cursor.fetchall()]
            nodes = [
                line.split("  (cost")[0] + " " + line.split("actual")[1] for line in plan if "actual" in line
            ]
            return " | ".join(nodes)
        if engine.dialect.name in ("mysql", "mariadb"):
            cursor.execute("FLUSH STATUS")
            cursor.execute(statement, parameters)
            cursor.fetchall()
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%%'")
            read = sum(int(value) for name, value in cursor.fetchall() if name != "Handler_read_key")
            cursor.execute(f"EXPLAIN {statement}", parameters)
            names = [d[0] for d in cursor.description]
            plan = dict(zip(names, cursor.fetchone(), strict=True))
            return f"{read} rows read ({plan['type']} on {plan['key']})"
        cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
        return " | ".join(str(row[-1]) for row in cursor.fetchall())
    finally:
        raw.close()


def measure(db_url: str) -> None:
    store = OperationStore(db_url)
    engine = sa.create_engine(db_url)
    seed(engine)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE operations")
        elif engine.dialect.name == "sqlite":
            conn.exec_driver_sql("ANALYZE")
        else:
            conn.exec_driver_sql("ANALYZE TABLE operations").all()
        conn.commit()
    print(f"\n{engine.dialect.name}, {ROWS} operations, pages of {PAGE}")
    for label, filters in (
        ("alice (50,000)", {"user": "alice"}),
        ("user5 (~515)", {"user": "user5"}),
        ("everyone", {}),
        ("everyone failed", {"status": "failed"}),
    ):
        whole = store.list_operations(limit=1_000_000, **filters)
        for where, index in (("first", None), ("middle", len(whole) // 2), ("last", len(whole) - 50)):
            before = None if index is None else parse_cursor(page_cursor(whole[index]))
            times = []
            for _ in range(5):
                started = time.perf_counter()
                store.list_operations(limit=PAGE + 1, before=before, **filters)
                times.append(1000 * (time.perf_counter() - started))
            read = lambda: store.list_operations(limit=PAGE + 1, before=before, **filters)  # noqa: B023, E731
            said = rows_read(engine, *last_statement(store, read))
            print(f"  {label:16s} {where:6s} page: {statistics.median(times):6.2f} ms   {said}")
    store.close()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", nargs="+", default=["sqlite"], choices=["sqlite", "postgres", "mariadb"])
    args = parser.parse_args()
    for kind in args.db:
        if kind == "sqlite":
            measure(f"sqlite:///{tempfile.mkdtemp()}/ops.sqlite")
        elif kind == "postgres":
            from tests.hub.conftest import PostgresServer, postgres_bindir

            server = PostgresServer(postgres_bindir())  # type: ignore[arg-type]
            server.start()
            try:
                measure(server.create_database("bench"))
            finally:
                server.stop()
        else:
            from tests.helpers.mariadb import MariaDBServer, find_mariadbd

            maria = MariaDBServer(find_mariadbd())  # type: ignore[arg-type]
            maria.start()
            try:
                measure(maria.create_database("bench"))
            finally:
                maria.stop()


if __name__ == "__main__":
    main()
