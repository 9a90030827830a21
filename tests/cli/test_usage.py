"""``jupyter staging`` without a valid subcommand: the usage, a "did you mean" for a near miss, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jupyter_staging.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_no_subcommand_prints_usage_and_exits_2():
    proc = _run()
    assert proc.returncode == 2
    assert "usage: jupyter staging {doctor}" in proc.stderr and "doctor" in proc.stderr
    assert proc.stdout == ""


def test_a_misspelt_subcommand_gets_did_you_mean():
    proc = _run("doktor")
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first == "jupyter staging: unknown command 'doktor'; did you mean 'doctor'?"


@pytest.mark.parametrize("typed", ["frobnicate", "x"])
def test_an_unknown_subcommand_names_what_exists(typed):
    proc = _run(typed)
    assert proc.returncode == 2
    assert f"unknown command {typed!r}" in proc.stderr and "did you mean" not in proc.stderr
    assert "usage: jupyter staging {doctor}" in proc.stderr
