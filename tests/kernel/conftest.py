"""Fixtures of the kernel tests."""

from __future__ import annotations

import pytest

from jupyter_staging.kernel import api


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """A fresh IPython shell in ``tmp_path`` with ``%load_ext jupyter_staging`` and a local backend."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    api.use_local(tmp_path, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_staging")
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()
        api.reset_backend()
