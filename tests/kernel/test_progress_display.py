"""Progress as people read it: one byte formatter (decimal SI, three significant digits, as the JupyterLab
panel's ``formatBytes``), and a tqdm bar on stderr when a script waits on a job from a terminal."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from jupyter_staging.kernel.formatting import format_bytes, progress_summary, progress_text
from tests.helpers.data import KEPLER


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (None, "?"),
        (-1, "?"),
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.00 kB"),
        (1457280, "1.46 MB"),
        (90_750_214, "90.8 MB"),
        (181_500_000, "182 MB"),
        (999_600, "1.00 MB"),
        (143e9, "143 GB"),
        (2.5e15, "2.50 PB"),
    ],
)
def test_format_bytes_matches_the_panel(count, text):
    assert format_bytes(count) == text


def test_progress_text_never_shows_more_than_the_total_and_names_parquet_bytes():
    job = {
        "state": "running",
        "progress": {
            "bytes_done": 2_000_000,
            "bytes_total": 1_457_280,
            "chunks_done": 2,
            "chunks_total": 3,
            "rows_done": 10_000,
            "output_bytes": 310_000,
        },
    }
    assert progress_text(job) == (
        "running 100.0% - 2/3 chunks, 1.46 MB of 1.46 MB, 10,000 rows, 310 kB Parquet"
    )
    assert progress_summary({"bytes_done": 5, "bytes_total": None}) == "0/? chunks, 5 B of ?"


SCRIPT = textwrap.dedent(
    """
    import sys
    import jupyter_staging
    jupyter_staging.use_local(sys.argv[1], db_url="sqlite:///" + sys.argv[1] + "/jobs.sqlite")
    job = jupyter_staging.stage(sys.argv[2], to_parquet=True, chunk_rows=2000, wait=True)
    print("state", job.state)
    """
)


def _run_script(tmp_path, *, stderr_tty: bool) -> tuple[str, str]:
    """Run :data:`SCRIPT` on Kepler's light curve; returns (stdout, stderr), stderr on a pseudo-terminal
    when ``stderr_tty``."""
    args = [sys.executable, "-c", SCRIPT, str(tmp_path), str(KEPLER)]
    if not stderr_tty:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        return proc.stdout, proc.stderr
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    proc2 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, cwd=tmp_path)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        elif proc2.poll() is not None:
            break
    os.close(leader)
    out = proc2.communicate(timeout=60)[0].decode()
    return out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_script_waiting_in_a_terminal_draws_a_bar(tmp_path):
    out, err = _run_script(tmp_path, stderr_tty=True)
    assert "state succeeded" in out
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%|" in final and "1.46 MB of 1.46 MB" in final and "succeeded" in final
    assert "14,280 rows" in final and "Parquet" in final


@pytest.mark.slow
def test_a_script_whose_stderr_is_not_a_terminal_prints_no_bar(tmp_path):
    out, err = _run_script(tmp_path, stderr_tty=False)
    assert "state succeeded" in out
    assert err == ""
