"""The recipe of the admin guide's "Jobs over the years" (docs/admin/job-database.md), run as written on a
job database: expired jobs finished more than 90 days ago go, with their chunks and log lines; newer
expired jobs and jobs in other states stay."""

from __future__ import annotations

import re
import sqlite3
from datetime import timedelta
from pathlib import Path

from jupyter_staging.engine.store import JobRecord, Store, utcnow

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin" / "job-database.md"
DOC_URL = "sqlite:////home/me/.local/share/jupyter/jupyter_staging/jobs.sqlite"


def recipe() -> str:
    section = DOC.read_text().split("## Jobs over the years", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    assert DOC_URL in code
    return code


def test_the_purge_recipe_removes_only_old_expired_jobs(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = Store(url)
    now = utcnow()
    ages = {
        "old-expired": ("expired", 200),
        "new-expired": ("expired", 10),
        "old-succeeded": ("succeeded", 200),
    }
    for job_id, (state, days) in ages.items():
        when = now - timedelta(days=days)
        store.add_job(
            JobRecord(
                id=job_id, owner="alice", root="/home/alice", name=job_id, source="/archive/k.fits",
                destination=job_id, method="copy", state=state, cleanup_policy="retain",
                created_at=when, updated_at=when, finished_at=when,
            ),
            events=[("info", "succeeded")],
        )  # fmt: skip
        chunk = {"id": f"{job_id}-0", "job_id": job_id, "index": 0, "path": "k.fits", "state": "expired"}
        store.write_chunks(job_id, [chunk], {})
    store.close()

    exec(compile(recipe().replace(DOC_URL, url), str(DOC), "exec"), {})  # noqa: S102 - the docs' own code

    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    try:
        assert sorted(r[0] for r in db.execute("SELECT id FROM staging_jobs")) == [
            "new-expired",
            "old-succeeded",
        ]
        for table in ("staging_chunks", "staging_events"):
            left = {r[0] for r in db.execute(f"SELECT job_id FROM {table}")}  # noqa: S608 - fixed names
            assert left == {"new-expired", "old-succeeded"}, table
    finally:
        db.close()
