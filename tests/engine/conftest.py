"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from tests.helpers.data import KEPLER, SPITZER, TESS
from tests.helpers.managers import manager_for


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp_path / "root"``, made here: the folder a test's jobs stage into."""
    folder = tmp_path / "root"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def manager(root: Path, tmp_path: Path) -> Iterator[StagingManager]:
    """A started :class:`StagingManager` on :func:`root` with its own SQLite job database, stopped
    afterwards."""
    mgr = manager_for(tmp_path)
    yield mgr
    mgr.stop()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Copies of the mission data the tests may change (``../shared/data`` is never modified)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for src in (KEPLER, SPITZER, TESS):
        shutil.copyfile(src, folder / src.name)
    return folder
