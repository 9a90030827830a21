"""Looking for secrets everywhere a job leaves text: the job database (rows, WAL, shared memory)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def database_texts(db: Path) -> list[str]:
    """Every value of every row of every table of the SQLite file, as text, and the raw bytes of the
    database, its write-ahead log and shared-memory file (latin-1, so any byte sequence is text)."""
    texts = []
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert {"staging_jobs", "staging_chunks", "staging_events", "staging_job_resume"} <= set(tables)
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):  # noqa: S608 - names from sqlite_master
                texts.extend(str(v) for v in row)
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{db}{suffix}")
        if path.exists():
            texts.append(path.read_bytes().decode("latin-1"))
    return texts


def assert_nowhere(secrets: list[str], texts: list[str], where: str) -> None:
    for secret in secrets:
        for text in texts:
            assert secret not in text, (
                f"a secret appears in {where}: ...{text[max(0, text.find(secret) - 80) :][:200]}"
            )
