"""Arrow's freed memory is purged at once in a process that loads pyarrow through jupyter_staging (issue 12:
a conversion's peak RSS), and nothing else of the process changes: the environment its children get, a
site's own setting, a process that loaded pyarrow first. Each case runs in a fresh interpreter, and
mimalloc itself says which delay it took (``MIMALLOC_VERBOSE=1`` prints its options as it starts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

PROBE = """
import os, subprocess, sys
{before}
import {module}
from jupyter_staging.formats import PURGED_AT_ONCE
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('MIMALLOC_PURGE_DELAY'))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print("result", PURGED_AT_ONCE, os.environ.get("MIMALLOC_PURGE_DELAY"), child)
"""


def probe(
    before: str = "", module: str = "jupyter_staging.formats.csv", **env: str
) -> tuple[list[str], int | None]:
    """Run :data:`PROBE` in a fresh interpreter that imports ``module`` first: its result line's fields
    (whether it purged at once, the variable in its own environment and in a child's) and the purge delay
    mimalloc reported (ms)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    environ |= {"MIMALLOC_VERBOSE": "1", **env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before, module=module)],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("result ")]
    delays = re.findall(r"option 'purge_delay': (\d+)", done.stderr)
    return line.split()[1:], int(delays[0]) if delays else None


@pytest.mark.parametrize(
    "module",
    [
        "jupyter_staging.formats.csv",
        "jupyter_staging.server.app",  # the server extension
        "jupyter_staging.hub.app",  # the hub service
        "jupyter_staging.engine.tasks",  # what a Dask worker unpickles
        "jupyter_staging.engine.conversion",  # imports pyarrow at its top
        "jupyter_staging.kernel.tables",  # the same, in a kernel
        "jupyter_staging.kernel.magics",
    ],
)
def test_pyarrow_loaded_through_jupyter_staging_purges_at_once_and_children_keep_their_environment(module):
    fields, delay = probe(module=module)
    assert fields == ["True", "None", "None"]
    assert delay == 0


@pytest.mark.parametrize("name", ["MIMALLOC_PURGE_DELAY", "mimalloc_purge_delay", "MIMALLOC_RESET_DELAY"])
@pytest.mark.parametrize("value", ["1000", "10"])
def test_a_sites_own_setting_is_kept(name: str, value: str):
    """mimalloc reads the delay under either name, in any case: none of them is overridden."""
    fields, delay = probe(**{name: value})
    assert fields[0] == "False"
    assert delay == int(value)


def test_pyarrow_loaded_before_is_left_as_it_is():
    fields, delay = probe(before="import pyarrow")
    assert fields == ["False", "None", "None"]
    assert delay is not None and delay > 0
