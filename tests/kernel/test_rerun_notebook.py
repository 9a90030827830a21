"""Issue 10, acceptance 1: a notebook that stages the Kepler light curve (to Parquet), the Spitzer VOTable
and a 3-entry ``%%stage`` manifest (local files and a Range HTTP server), run with "Run All" twice.

The second run takes under a second per staging cell, moves no bytes, leaves exactly the same files (no
new folder) and gives equal ``paths``. The notebook runs in a real kernel (nbclient) that talks to a real
Jupyter server with the extension, as a notebook in JupyterLab does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_staging.kernel.discovery import ENV_ROOT, ENV_TOKEN, ENV_URL
from tests.helpers.data import KEPLER, SPITZER, TESS
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.servers import RangeHTTPServer


def notebook(tess_url: str, spitzer_url: str) -> nbformat.NotebookNode:
    """The notebook: each staging cell records its wall time and the job's ``paths`` in ``report``."""
    cells = [
        "%load_ext jupyter_staging\nimport json, time\nreport = {}",
        "t = time.monotonic()\n"
        f"lc = %stage {KEPLER} kepler --to-parquet --wait\n"
        "report['kepler'] = [time.monotonic() - t, lc.up_to_date, lc.paths]",
        f"t = time.monotonic()\nsp = %stage {SPITZER} spitzer --wait\n"
        "report['spitzer'] = [time.monotonic() - t, sp.up_to_date, sp.paths]",
        "t = time.monotonic()",
        f"%%stage inputs --wait\nkepler: {KEPLER}\ntess: {tess_url}\nspitzer: {spitzer_url}",
        "report['manifest'] = [time.monotonic() - t, None, _]\nprint(json.dumps(report, default=str))",
    ]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def run_all(nb: nbformat.NotebookNode, root: Path) -> dict:
    """Run every cell in a fresh kernel ("Restart Kernel and Run All"); returns the printed report."""
    resources = {"metadata": {"path": str(root)}}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources)
    done = client.execute()
    text = "".join(o.get("text", "") for o in done.cells[-1].outputs if o.get("name") == "stdout")
    return json.loads(text)


def files(root: Path) -> dict[str, tuple[int, int]]:
    """``{path: (inode, mtime_ns)}`` of every file below ``root`` except the notebook's own."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".ipynb_checkpoints" not in p.parts
    }


@pytest.fixture
def server(tmp_path: Path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    proc = JupyterServerProcess(root, tmp_path / "state")
    proc.start()
    monkeypatch.setenv(ENV_URL, proc.url)
    monkeypatch.setenv(ENV_TOKEN, proc.token)
    monkeypatch.setenv(ENV_ROOT, str(root))
    yield proc
    proc.stop()


def test_run_all_twice_the_second_run_moves_nothing(server, tmp_path):
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(TESS, web / TESS.name)
    shutil.copyfile(SPITZER, web / SPITZER.name)
    http = RangeHTTPServer(web).start()
    try:
        nb = notebook(http.url(TESS.name), http.url(SPITZER.name))
        first = run_all(nb, server.root_dir)
        before = files(server.root_dir)
        gets_before = len([r for r in http.requests if r.method == "GET"])
        second = run_all(nb, server.root_dir)
        after = files(server.root_dir)
        gets_after = len([r for r in http.requests if r.method == "GET"])
    finally:
        http.stop()
    assert first["kepler"][1] is False and first["spitzer"][1] is False
    for cell in ("kepler", "spitzer", "manifest"):
        assert second[cell][0] < 1.0, (cell, second[cell][0])
        assert second[cell][2] == first[cell][2], cell  # the same paths
    assert second["kepler"][1] is True and second["spitzer"][1] is True
    assert after == before  # same files, same inodes, untouched: no new folder, nothing rewritten
    assert gets_after == gets_before  # no byte downloaded again (HEADs only)
    assert sorted(p.name for p in (server.root_dir).iterdir()) == ["inputs", "kepler", "spitzer"]
