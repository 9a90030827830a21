"""Fixtures shared by the engine's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jupyter_staging.engine.manager import StagingManager
from tests.engine.test_scale import manager_for


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[StagingManager]:
    """A started :class:`StagingManager` on ``tmp_path / "root"`` (made here) with its own SQLite job
    database, stopped afterwards."""
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path)
    yield mgr
    mgr.stop()
