"""The frontend model's unit tests (``labextension/test/*.spec.ts``, jest), run through ``jlpm test``.

Skipped when the extension's npm packages are not installed (``pip install -e .`` installs them while
building the extension; so does ``scripts/ci-ui-deps.sh``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.groups import skip_group

LABEXTENSION = Path(__file__).resolve().parents[2] / "labextension"


def _jlpm() -> str | None:
    beside_python = Path(sys.executable).with_name("jlpm")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("jlpm")


def test_frontend_model_unit_tests_pass() -> None:
    if not (LABEXTENSION / "node_modules" / "jest").is_dir():
        skip_group("labextension", "labextension/node_modules is missing (run jlpm install in labextension/)")
    jlpm = _jlpm()
    if jlpm is None:
        skip_group("labextension", "jlpm (from jupyterlab) is not installed")
    result = subprocess.run(
        [jlpm, "test", "--ci", "--silent"],
        cwd=LABEXTENSION,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    summary = [line for line in output.splitlines() if line.startswith("Tests:")]
    assert summary and "passed" in summary[0] and "failed" not in summary[0], output[-4000:]
