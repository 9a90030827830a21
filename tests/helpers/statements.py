"""The SQL a store sends: for tests and benchmarks that check what a read asks of the database."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


def last_statement(store: Any, read: Any) -> tuple[str, Any]:
    """The SQL statement (and its parameters) ``read()`` sent through ``store`` (anything with a SQLAlchemy
    ``engine``) last."""
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", keep)
    try:
        read()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", keep)
    return seen[-1]
