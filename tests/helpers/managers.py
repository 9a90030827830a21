"""Real :class:`StagingManager` instances for the engine's tests: a root folder and an SQLite job
database, both under the test's ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

from jupyter_staging.engine.manager import StagingManager


def unstarted_manager(root: Path, tmp_path: Path, **kwargs) -> StagingManager:
    """A manager on ``root`` with its job database at ``tmp_path / "jobs.sqlite"`` and no idle sweep,
    not started (no recovery, no sweeper yet); ``kwargs`` go to :class:`StagingManager`."""
    return StagingManager(root, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", sweep_interval=0, **kwargs)


def manager_for(tmp_path: Path, **kwargs) -> StagingManager:
    """A started manager on ``tmp_path / "root"`` (which must exist), as :func:`unstarted_manager`."""
    mgr = unstarted_manager(tmp_path / "root", tmp_path, **kwargs)
    mgr.start()
    return mgr
