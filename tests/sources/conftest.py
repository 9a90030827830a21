"""Fixtures of the source tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.safety.checksums import checksums_to_verify, second_algorithm
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile


def _stage_verified(
    source: Any, item: Any, dest: Path, control: JobControl | None = None
) -> tuple[Path, int, str]:
    # As the engine does: the sha256 and the one other stated digest cheapest to verify.
    out = PartFile(dest / item.name, second=second_algorithm(checksums_to_verify(item.checksums)))
    try:
        source.fetch(item, out, control or JobControl())
    except BaseException:
        out.close()
        raise
    size, digest = out.commit(item.size, checksums=checksums_to_verify(item.checksums))
    return dest / item.name, size, digest


@pytest.fixture
def stage_verified() -> Callable[..., tuple[Path, int, str]]:
    """``stage_verified(source, item, dest, control=None)``: fetch ``item`` into ``dest`` and commit it as
    the engine does, verifying the checksums the source stated (``item.checksums``, read after the fetch,
    which may update them); returns ``(path, size_bytes, sha256_hex)``."""
    return _stage_verified
