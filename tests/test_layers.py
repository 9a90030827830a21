"""The package keeps its layers: the import contract in pyproject.toml holds, and it bites.

The contract (``[tool.importlinter]``): ``kernel | hub | cli`` -> ``server`` -> ``engine`` ->
``sources | destinations | formats`` -> ``clouds | safety`` -> ``errors``; the engine and everything below
it import no tornado, Jupyter, IPython or ipywidgets; no import cycle anywhere.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the package found in ``cwd`` with ``cwd/pyproject.toml``."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the lint extra (make setup does)")
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", "pyproject.toml", "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break on purpose."""
    shutil.copytree(
        REPO / "jupyter_staging",
        tmp_path / "jupyter_staging",
        ignore=shutil.ignore_patterns("__pycache__", "labextension"),
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contract_holds() -> None:
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_tornado_in_the_engine_breaks_the_contract(tree_copy: Path) -> None:
    manager = tree_copy / "jupyter_staging" / "engine" / "manager.py"
    manager.write_text(manager.read_text() + "\nimport tornado  # noqa: E402,F401\n")
    done = lint_imports(tree_copy)
    assert done.returncode == 1, done.stdout
    assert "jupyter_staging.engine.manager -> tornado" in done.stdout
    assert "BROKEN" in done.stdout


def test_an_upward_import_breaks_the_layers(tree_copy: Path) -> None:
    base = tree_copy / "jupyter_staging" / "sources" / "base.py"
    base.write_text(base.read_text() + "\nimport jupyter_staging.engine.manager  # noqa: E402,F401\n")
    done = lint_imports(tree_copy)
    assert done.returncode == 1, done.stdout
    assert "jupyter_staging.sources.base -> jupyter_staging.engine.manager" in done.stdout
