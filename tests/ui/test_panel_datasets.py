"""Every Parquet dataset of a conversion job is offered, however many chunks come before it.

A folder of CSV tables converted to Parquet in parts of 1,000 rows: the first table alone writes 520 parts,
so the other tables' parts come after chunk 500, past the first page of chunks the job view shows. The job
view still offers "Open in notebook as DataFrame" for each of the three datasets, and the DataFrame command
given the job (a notification's action) inserts a cell reading the first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.data import wait_until

from .conftest import JupyterLabProcess

pytestmark = pytest.mark.slow

#: Rows of each table: with 1,000 rows a part, ``big`` writes 520 parts, ``mid`` and ``tail`` one each.
TABLES = {"big": 520_000, "mid": 1_000, "tail": 700}


def write_tables(folder: Path) -> None:
    folder.mkdir(parents=True)
    for stem, rows in TABLES.items():
        with (folder / f"{stem}.csv").open("w") as out:
            out.write("i,flux\n")
            out.writelines(f"{i},{i * 0.5}\n" for i in range(rows))


def test_every_dataset_of_a_job_of_many_chunks_is_offered(lab: JupyterLabProcess, page: Any) -> None:
    source = lab.root_dir / "incoming" / "tables"
    write_tables(source)
    job = lab.create_job(
        {
            "source": str(source),
            "destination": "converted",
            "convert": {"format": "parquet", "chunk_rows": 1000},
        }
    )
    job = lab.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=240)
    assert job["state"] == "succeeded", job
    chunks = lab.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    assert len(chunks) == 522
    first = {}
    for chunk in chunks:
        first.setdefault(chunk["path"].split("/")[0], chunk["index"])
    assert sorted(first) == ["big.parquet", "mid.parquet", "tail.parquet"]
    assert max(first.values()) >= 500  # a dataset whose parts all lie past the job view's first page

    page.evaluate(
        "async (id) => { await window.jupyterapp.commands.execute('staging:open-job', {id}); }",
        job["id"],
    )
    view = page.locator(f'.jp-Staging-detailBody[data-job-id="{job["id"]}"][data-state="succeeded"]')
    view.wait_for()
    buttons = view.get_by_role("button", name="Open in notebook as DataFrame")
    buttons.first.wait_for()
    wait_until(lambda: buttons.count() >= len(TABLES), timeout=15, what="a DataFrame action per dataset")
    titles = sorted(buttons.nth(i).get_attribute("title") or "" for i in range(buttons.count()))
    assert titles == [
        f"Insert a cell reading converted/{stem}.parquet into the active notebook" for stem in sorted(TABLES)
    ]
    # The notification's DataFrame action (the command given the job): a new notebook in the job's folder
    # gets a cell reading its first dataset, found from the same once-read list.
    page.evaluate(
        "async (jobId) => { await window.jupyterapp.commands.execute('staging:open-dataframe', {jobId}); }",
        job["id"],
    )
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell", has_text="pd.read_parquet")
    cell.wait_for(timeout=30_000)
    assert 'pd.read_parquet("big.parquet")' in cell.locator(".cm-content").inner_text()
    assert not page.errors, page.errors  # type: ignore[attr-defined]


def test_the_dataframe_command_of_a_job_expired_since_says_so(lab: JupyterLabProcess, page: Any) -> None:
    """A notification's DataFrame action clicked after the job's output was removed (every chunk acknowledged
    under ``delete_on_ack``: the job is ``expired``) says so, and opens no notebook reading a dataset that is
    gone."""
    source = lab.root_dir / "incoming" / "one"
    source.mkdir(parents=True)
    (source / "tail.csv").write_text("i,flux\n" + "".join(f"{i},{i * 0.5}\n" for i in range(700)))
    job = lab.create_job(
        {
            "source": str(source / "tail.csv"),
            "destination": "consumed",
            "convert": {"format": "parquet"},
            "cleanup_policy": "delete_on_ack",
        }
    )
    job = lab.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=120)
    assert job["state"] == "succeeded", job
    chunks = lab.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    for chunk in chunks:
        acked = lab.request("POST", f"jobs/{job['id']}/chunks/{chunk['index']}/ack", json={})
        assert acked.status_code == 200, acked.text
    lab.wait_for(job["id"], lambda j: j["state"] == "expired", timeout=30)
    notebooks = page.locator(".jp-NotebookPanel").count()  # the module's lab may have some open already
    page.evaluate(
        "async (jobId) => { await window.jupyterapp.commands.execute('staging:open-dataframe', {jobId}); }",
        job["id"],
    )
    toast = page.locator(".Toastify__toast", has_text="is expired: its Parquet output is no longer there")
    toast.wait_for(timeout=15_000)
    assert page.locator(".jp-NotebookPanel").count() == notebooks
    assert not (lab.root_dir / "consumed" / "Untitled.ipynb").exists()
