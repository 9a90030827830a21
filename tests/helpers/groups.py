"""Test groups that need a tool from outside PyPI, and loud skips.

A group whose tool is missing is skipped with :func:`skip_group`, which tags the reason ``[group]``. At the
end of the run :mod:`tests.conftest` prints one line per skipped group with the command that enables it,
and with ``CI=true`` in the environment a skipped group fails the run: CI must run every group.
Skips that are not a group (a case that cannot happen on this machine, such as a permission test when
running as root) stay plain ``pytest.skip`` calls and never fail the run.
"""

from __future__ import annotations

import re
from typing import NoReturn

import pytest

#: Group -> what enables it (printed beside a skipped group).
GROUPS: dict[str, str] = {
    "ui": "bash scripts/ci-ui-deps.sh  (Debian chromium, playwright, the panel's npm packages)",
    "labextension": "bash scripts/ci-ui-deps.sh  (jlpm install in labextension/)",
    "hub": "bash scripts/ci-hub-deps.sh  (configurable-http-proxy from npm)",
    "postgres": "bash scripts/ci-hub-deps.sh  (PostgreSQL from Debian)",
    "mariadb": "bash scripts/ci-hub-deps.sh  (MariaDB from Debian)",
    "azure": "bash scripts/ci-azure-deps.sh  (Azurite from npm, azure-storage-blob from PyPI)",
}

_TAG = re.compile(r"\[(?P<group>[a-z-]+)\]")


def skip_group(group: str, reason: str) -> NoReturn:
    """Skip the current test because ``group``'s tool is missing (``reason`` says which)."""
    if group not in GROUPS:
        raise ValueError(f"unknown test group {group!r}")
    pytest.skip(f"[{group}] {reason}")


def group_of(skip_message: str) -> str | None:
    """The group a skip message was tagged with by :func:`skip_group`, or None."""
    found = _TAG.search(skip_message)
    return found.group("group") if found and found.group("group") in GROUPS else None


def require_azure_sdk() -> None:
    """Skip (group ``azure``) unless azure-storage-blob is installed."""
    try:
        import azure.storage.blob  # noqa: F401 - only whether it is installed
    except ImportError:
        skip_group("azure", 'azure-storage-blob is not installed: pip install ".[azure]"')
