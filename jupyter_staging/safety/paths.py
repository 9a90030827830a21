"""Path confinement: where a job may write and what local files it may read.

Rules (``DESIGN.md``, "Security rules"): a destination is relative to a root and stays inside it when
compared by path components after resolution; ``..``, absolute escapes, NUL, symlinked parents and dot-file
targets (``.jupyter/``, ``.ipython/``, ``.bashrc``...) are refused. A local source must lie inside one of
the configured source roots after its symlinks are resolved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import PathNotAllowed, SourceNotFound


def _is_within(path: Path, root: Path) -> bool:
    """True when ``path`` equals ``root`` or lies below it, compared component by component."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_destination(root: str | os.PathLike[str], destination: str) -> tuple[Path, str]:
    """Resolve a destination folder given relative to ``root``.

    Returns ``(absolute_path, normalised_relative_posix_path)``. The folder need not exist; no existing
    component below ``root`` may be a symlink.

    Raises
    ------
    PathNotAllowed
        (code ``path_not_allowed``) for NUL, ``..`` components, absolute paths outside ``root``, hidden
        (dot) components, or a symlink anywhere below ``root`` on the way.
    """
    if "\x00" in destination:
        raise PathNotAllowed("destination contains a NUL character")
    root_path = Path(root).resolve()
    raw = destination.replace("\\", "/").strip()
    if raw.startswith("/"):
        candidate = Path(os.path.normpath(raw))
        if not _is_within(candidate, root_path):
            raise PathNotAllowed(f"destination {destination!r} is outside the server's root directory")
        rel = PurePosixPath(candidate.relative_to(root_path).as_posix())
    else:
        rel = PurePosixPath(raw)
    parts = [p for p in rel.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathNotAllowed(f"destination {destination!r} must not contain '..'")
    if any(p.startswith(".") for p in parts):
        raise PathNotAllowed(f"destination {destination!r} must not name hidden (dot) files or folders")
    current = root_path
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise PathNotAllowed(f"destination {destination!r} passes through a symbolic link")
        if current.exists() and not current.is_dir():
            raise PathNotAllowed(f"destination {destination!r} is a file, not a folder")
    final = root_path.joinpath(*parts)
    if not _is_within(final.resolve(), root_path):
        raise PathNotAllowed(f"destination {destination!r} is outside the server's root directory")
    return final, "/".join(parts)


def check_output_name(name: str) -> str:
    """Validate a relative output file name a job will create below its destination.

    Raises :class:`PathNotAllowed` for absolute names, ``..``, empty or dot components.
    Returns the name as POSIX text.
    """
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or not pure.parts:
        raise PathNotAllowed(f"output name {name!r} is not a relative path")
    for part in pure.parts:
        if part in ("..", ".", "") or part.startswith(".") or "\x00" in part:
            raise PathNotAllowed(f"output name {name!r} has a component that is not allowed")
    return pure.as_posix()


def resolve_source(path: str, roots: Sequence[str | os.PathLike[str]] | None) -> Path:
    """Resolve a local source path, confined to ``roots`` when given.

    Returns the resolved absolute path (symlinks followed).

    Raises
    ------
    SourceNotFound
        The path does not exist.
    PathNotAllowed
        ``roots`` is set and the resolved path (after following symlinks) lies in none of them, or the
        path is relative.
    """
    if "\x00" in path:
        raise PathNotAllowed("source contains a NUL character")
    raw = Path(os.path.expanduser(path))
    if not raw.is_absolute():
        raise PathNotAllowed(f"source {path!r} must be an absolute path")
    resolved = raw.resolve()
    if roots:
        allowed = [Path(r).resolve() for r in roots]
        if not any(_is_within(resolved, r) for r in allowed):
            raise PathNotAllowed(f"source {path!r} is outside the allowed source roots")
    if not resolved.exists():
        raise SourceNotFound(f"source {path!r} does not exist")
    if not os.access(resolved, os.R_OK):
        raise SourceNotFound(f"source {path!r} is not readable", code="source_not_readable")
    return resolved
