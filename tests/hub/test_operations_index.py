"""Operations migration hub0004: a user's newest operations (``GET api/operations``, the service's page) are
read through the ``(user, started, id)`` index, in order, on SQLite, PostgreSQL and MariaDB, whatever the
number of operations the user ran over the years (issue 12: 77 ms for a user with 50,000 of them before);
a downgrade to hub0003 drops the index (the answers stay the same) and an upgrade makes it again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from jupyter_staging.engine.migrate import current_revision
from jupyter_staging.hub.db import HUB_MIGRATIONS, Operation, OperationStore

INDEX = "ix_operations_user_started"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def downgrade_hub(engine: sa.Engine, revision: str) -> None:
    """Downgrade the operations database of ``engine`` to ``revision`` (Alembic, as an admin would)."""
    from alembic import command

    cfg = HUB_MIGRATIONS.config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        cfg.attributes["version_table"] = HUB_MIGRATIONS.version_table
        command.downgrade(cfg, revision)


def indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("operations")}


def seed(engine: sa.Engine) -> None:
    rows = [
        dict(
            id=f"op-{i:03d}", user="alice" if i % 3 else "bob", actor="alice", method="jupyter_copy",
            source=f"/archive/f{i}", target=f"f{i}", status="succeeded" if i % 5 else "failed",
            started=NOW + timedelta(minutes=i // 2), finished=NOW,
        )
        for i in range(120)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(Operation.__table__), rows)


def answers(store: OperationStore) -> tuple[list[str], ...]:
    def ids(**kwargs) -> list[str]:
        return [op.id for op in store.list_operations(**kwargs)]

    return ids(user="alice", limit=5), ids(user="bob", status="failed", limit=3), ids(limit=2)


def test_a_users_newest_operations_are_an_index_range(db_url):
    store = OperationStore(db_url)
    engine = sa.create_engine(db_url)
    try:
        assert INDEX in indexes(engine)
        seed(engine)
        expected = (
            ["op-119", "op-118", "op-116", "op-115", "op-113"],  # two per minute: the id breaks the tie
            ["op-105", "op-090", "op-075"],
            ["op-119", "op-118"],
        )
        assert answers(store) == expected
        if engine.dialect.name == "sqlite":
            ops = Operation
            page = (
                sa.select(ops)
                .where(ops.user == "alice")
                .order_by(ops.started.desc(), ops.id.desc())
                .limit(100)
            )
            sql = str(page.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            with engine.connect() as conn:
                plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert INDEX in plan and "TEMP B-TREE" not in plan, plan

        downgrade_hub(engine, "hub0003")
        engine.dispose()
        assert INDEX not in indexes(engine)
        assert answers(store) == expected
    finally:
        store.close()
    OperationStore(db_url).close()
    assert INDEX in indexes(engine) and current_revision(engine, HUB_MIGRATIONS) == HUB_MIGRATIONS.head()
    engine.dispose()
