"""Paths as the notebook sees them, and where a job's staged files are.

A relative local source or destination is relative to the current working directory (the notebook's
folder); destinations go to the engine relative to its root directory and must lie inside it. Chunk paths in
the wire format are relative to the job's destination (or object URIs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jupyter_staging.errors import InvalidRequest, PathNotAllowed

__all__ = ["chunk_paths", "entry_paths", "is_url", "local_source", "to_root_relative"]

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(text: str) -> bool:
    """True for ``scheme://...`` text (``https://``, ``s3://``...), False for a local path."""
    return bool(_URL_RE.match(text))


def local_source(source: str) -> str:
    """A local source made absolute against the current working directory (``~`` expanded); URLs
    unchanged.

    Raises :class:`InvalidRequest` (code ``invalid_source``) for an empty or blank source: ``%stage "$p"``
    with ``p = ""`` would otherwise stage the whole working folder (``.`` names it on purpose).
    """
    if not source.strip():
        raise InvalidRequest(
            "the source is empty: give a path, a URL or an object URI ('.' stages this whole folder)",
            code="invalid_source",
        )
    if is_url(source):
        return source
    return os.path.abspath(os.path.expanduser(source))


def to_root_relative(
    destination: str | os.PathLike[str],
    root_dir: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
) -> str:
    """A destination folder as the caller sees it, made relative to the engine's ``root_dir``.

    ``destination`` relative → relative to ``cwd`` (default: the current working directory); ``~`` is
    expanded. Returns a POSIX path relative to ``root_dir`` (``"."`` for the root itself).

    Raises :class:`PathNotAllowed` (code ``path_not_allowed``) when the folder lies outside ``root_dir``.
    """
    text = os.fspath(destination)
    if "\x00" in text:
        raise PathNotAllowed("destination contains a NUL character")
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = Path(cwd if cwd is not None else os.getcwd()) / path
    absolute = Path(os.path.normpath(path))
    root = Path(root_dir)
    for candidate, base in (
        (absolute, root),
        (absolute, root.resolve()),
        (absolute.resolve(), root.resolve()),
    ):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            continue
    shown = repr(text) if text == str(absolute) else f"{text!r} ({absolute})"
    raise PathNotAllowed(
        f"destination {shown} is outside the staging root {root}; "
        "choose a folder inside it or give a path relative to it"
    )


def chunk_paths(destination: Path, chunks: Iterable[dict[str, Any]]) -> list[Path]:
    """The absolute paths of the local chunk files in ``destination`` that can be read, in index order:
    ``ready`` chunks, and ``acked`` ones while their file still exists (object URIs are left out)."""
    paths = []
    for chunk in sorted(chunks, key=lambda c: c["index"]):
        if is_url(str(chunk["path"])):
            continue
        path = destination / chunk["path"]
        if chunk["state"] == "ready" or (chunk["state"] == "acked" and path.exists()):
            paths.append(path)
    return paths


def entry_paths(
    destination: Path | str, entries: list[str], chunks: Iterable[dict[str, Any]]
) -> dict[str, Path | str]:
    """Entry name -> its staged file, or the folder (longest common parent) of its staged files.

    ``destination`` is the job's local folder, or its object URI prefix (then the values are URIs, ``str``).
    Entries with no staged chunk (failed, pending, or acknowledged and deleted) are left out.
    """
    staged: dict[str, list[str]] = {}
    for chunk in sorted(chunks, key=lambda c: c["index"]):
        if _is_staged_entry_chunk(destination, chunk):
            staged.setdefault(chunk["entry"], []).append(str(chunk["path"]))
    paths: dict[str, Path | str] = {}
    for name in entries:
        found = staged.get(name)
        if not found:
            continue
        if isinstance(destination, str):  # object URIs below the job's prefix
            rels = [p[len(destination) :] if p.startswith(destination) else p for p in found]
            paths[name] = destination + (rels[0] if len(rels) == 1 else os.path.commonpath(rels) + "/")
            continue
        paths[name] = destination / (found[0] if len(found) == 1 else os.path.commonpath(found))
    return paths


def _is_staged_entry_chunk(destination: Path | str, chunk: dict[str, Any]) -> bool:
    """A chunk of a manifest entry that is staged and still there (not failed, not deleted on ack)."""
    if not chunk.get("entry") or chunk.get("error") or chunk["state"] not in ("ready", "acked"):
        return False
    if chunk["state"] == "acked" and not chunk.get("url"):
        return not isinstance(destination, str) and (destination / chunk["path"]).exists()
    return True
