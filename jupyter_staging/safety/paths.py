"""Path confinement: where a job may write and what local files it may read.

Rules (``DESIGN.md``, "Security rules"): a destination is relative to a root and stays inside it when
compared by path components after resolution; ``..``, absolute escapes, NUL, symlinked parents and dot-file
targets (``.jupyter/``, ``.ipython/``, ``.bashrc``...) are refused. A local source must lie inside one of
the configured source roots after its symlinks are resolved.
"""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import PathNotAllowed, SourceNotFound

#: Hidden (dot) file names that are data, not a program's settings: the metadata files of a Zarr v2 store
#: (Zarr storage specification, version 2: ``.zarray``, ``.zattrs``, ``.zgroup``; ``.zmetadata``, its
#: consolidated metadata), without which the store cannot be read. A folder or prefix staged keeps them as
#: files; every other hidden name (``.git/``, ``.bashrc``, ``.ipython/``) is still left out or refused.
DATA_DOT_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})
#: Longest name of one file or folder, bytes of UTF-8 (``NAME_MAX`` of Linux and most file systems).
MAX_NAME_BYTES = 255
#: Longest absolute destination folder, bytes: ``PATH_MAX`` (4096) less room for the files a job writes.
MAX_DESTINATION_BYTES = 3072
#: Deepest destination folder below the root, folders.
MAX_DESTINATION_DEPTH = 64
#: Unicode categories refused in a destination: control, line and paragraph separators, surrogates.
UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})
#: Format characters refused in a destination: the ones that reorder or hide text when it is shown.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_within(path: Path, root: Path) -> bool:
    """True when ``path`` equals ``root`` or lies below it, compared component by component."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def unsafe_character(text: str) -> str | None:
    """The first character of ``text`` a path shown to people must not hold (a control character such as
    CR, LF, ESC or NUL, a line separator, or a bidirectional control), as ``U+XXXX``; None when none."""
    for ch in text:
        if unicodedata.category(ch) in UNSAFE_CATEGORIES or ch in BIDI_CONTROLS:
            return f"U+{ord(ch):04X}"
    return None


def is_utf8(text: str) -> bool:
    """True when ``text`` can be written as UTF-8: it holds no lone surrogate, which is how Python spells
    the bytes of a file name that are not UTF-8 (``os.fsdecode``'s ``surrogateescape``) or a JSON
    ``"\\udce9"`` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escape_non_utf8(text: str) -> str:
    """``text`` with every lone surrogate written as the six characters ``\\udcXX``: always UTF-8, so it may
    go into a database, a log line or a message (JSON reads such an escape back as the same character)."""
    return text if is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_name_lengths(parts: Sequence[str], what: str) -> None:
    """Refuse a path whose ``parts`` (its ``/``-separated names) hold a name over :data:`MAX_NAME_BYTES`
    bytes of UTF-8; ``what`` names the path in the message ("destination", "source").

    Raises :class:`PathNotAllowed` with code ``name_too_long``.
    """
    for part in parts:
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            raise PathNotAllowed(
                f"{what} has a name of {size} bytes; a file or folder name has at most {MAX_NAME_BYTES}",
                code="name_too_long",
            )


def destination_names(destination: str) -> list[str]:
    """The names of a destination folder (its ``/``-separated parts, ``\\`` read as ``/``, without empty
    and ``.`` parts), checked without the file system; ``[]`` for the root itself.

    Raises :class:`PathNotAllowed` with code ``invalid_destination`` for a control character (the value
    is not echoed); ``name_too_long`` for a name over :data:`MAX_NAME_BYTES` bytes or more than
    :data:`MAX_DESTINATION_DEPTH` levels.
    """
    bad = unsafe_character(destination)
    if bad is not None:
        raise PathNotAllowed(f"destination contains the control character {bad}", code="invalid_destination")
    parts = [p for p in destination.replace("\\", "/").strip().split("/") if p not in ("", ".")]
    check_name_lengths(parts, "destination")
    if len(parts) > MAX_DESTINATION_DEPTH:
        raise PathNotAllowed(
            f"destination is {len(parts)} folders deep; at most {MAX_DESTINATION_DEPTH} are allowed",
            code="name_too_long",
        )
    return parts


def check_destination_text(destination: str) -> None:
    """The checks of a destination a request gives explicitly that need no file system: those of
    :func:`destination_names`, and it must name a folder below the root (not ``""``, ``"."``, ``"/"``).

    Raises :class:`PathNotAllowed` (codes ``invalid_destination``, ``name_too_long``).
    """
    if not destination_names(destination):
        raise PathNotAllowed(
            "destination names the root folder itself; name a folder below it, or omit it for the default",
            code="invalid_destination",
        )


def resolve_destination(root: str | os.PathLike[str], destination: str) -> tuple[Path, str]:
    """Resolve a destination folder given relative to ``root``.

    Returns ``(absolute_path, normalised_relative_posix_path)``. The folder need not exist; no existing
    component below ``root`` may be a symlink. An empty ``destination`` is the root itself (what a
    configured ``staging_dir`` of ``""`` means); a request's explicit destination is refused earlier by
    :func:`check_destination_text`.

    Raises
    ------
    PathNotAllowed
        (code ``path_not_allowed``) for NUL, ``..`` components, absolute paths outside ``root``, hidden
        (dot) components, or a symlink anywhere below ``root`` on the way; (code ``invalid_destination``)
        for a control character or the absolute path of ``root`` itself; (code ``name_too_long``) for a
        name over :data:`MAX_NAME_BYTES` bytes, more than :data:`MAX_DESTINATION_DEPTH` levels, or an
        absolute path over :data:`MAX_DESTINATION_BYTES` bytes.
    """
    if "\x00" in destination:
        raise PathNotAllowed("destination contains a NUL character")
    destination_names(destination)
    root_path = Path(root).resolve()
    raw = destination.replace("\\", "/").strip()
    if raw.startswith("/"):
        candidate = Path(os.path.normpath(raw))
        if not _is_within(candidate, root_path):
            raise PathNotAllowed(f"destination {destination!r} is outside the server's root directory")
        if candidate == root_path:
            raise PathNotAllowed("destination names the root folder itself", code="invalid_destination")
        rel = PurePosixPath(candidate.relative_to(root_path).as_posix())
    else:
        rel = PurePosixPath(raw)
    parts = [p for p in rel.parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathNotAllowed(f"destination {destination!r} must not contain '..'")
    if any(p.startswith(".") for p in parts):
        raise PathNotAllowed(f"destination {destination!r} must not name hidden (dot) files or folders")
    if len(os.fsencode(root_path.joinpath(*parts))) > MAX_DESTINATION_BYTES:
        raise PathNotAllowed(
            f"destination is longer than {MAX_DESTINATION_BYTES} bytes as an absolute path",
            code="name_too_long",
        )
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


def hidden_part(part: str, *, last: bool) -> bool:
    """Whether ``part`` of a relative name is hidden (a leading dot) and so not staged: any hidden folder,
    and a hidden file (``last``) unless it is one of :data:`DATA_DOT_NAMES` (a Zarr store's metadata)."""
    return part.startswith(".") and not (last and part in DATA_DOT_NAMES)


def check_output_name(name: str) -> str:
    """Validate a relative output file name a job will create below its destination.

    Raises :class:`PathNotAllowed` for absolute names, ``..``, empty or dot components (a last component
    in :data:`DATA_DOT_NAMES` excepted). Returns the name as POSIX text.
    """
    if "/" not in name and "\\" not in name and "\x00" not in name and name and not name.startswith("."):
        return name  # one plain component (a file of a flat folder: most names), as the loop below finds
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or not pure.parts:
        raise PathNotAllowed(f"output name {name!r} is not a relative path")
    last = len(pure.parts) - 1
    for index, part in enumerate(pure.parts):
        if part in ("..", ".", "") or hidden_part(part, last=index == last) or "\x00" in part:
            raise PathNotAllowed(f"output name {name!r} has a component that is not allowed")
    return pure.as_posix()


def resolve_source(path: str, roots: Sequence[str | os.PathLike[str]] | None) -> Path:
    """Resolve a local source path, confined to ``roots`` when given.

    Returns the resolved absolute path (symlinks followed). This is a check of the path as it is now, not
    a way to read it: a folder on the way may be swapped for a symlink right after, so the caller opens
    the returned path by descriptor without following a symlink
    (:func:`~jupyter_staging.safety.sourcefolders.open_walked`, or ``SourceFolders``), never by its
    string again.

    Raises
    ------
    SourceNotFound
        The path does not exist or is neither a regular file nor a folder (a FIFO, a device, a socket: code
        ``source_not_found``), cannot be read (``source_not_readable``), or
        a folder on the way may not be searched (``permission_denied``, HTTP 403).
    PathNotAllowed
        ``roots`` is set and the resolved path (after following symlinks) lies in none of them, the path
        is relative, or its symbolic links form a loop (code ``path_not_allowed``); a name is over
        :data:`MAX_NAME_BYTES` bytes (code ``name_too_long``).
    """
    if "\x00" in path:
        raise PathNotAllowed("source contains a NUL character")
    raw = Path(os.path.expanduser(path))
    if not raw.is_absolute():
        raise PathNotAllowed(f"source {path!r} must be an absolute path")
    check_name_lengths(raw.parts, "source")
    try:
        return _resolve_confined(raw, path, roots)
    except RuntimeError:  # Path.resolve() of Python < 3.13 on a loop of symbolic links
        raise _source_os_error(path, errno.ELOOP) from None
    except OSError as err:
        raise _source_os_error(path, err.errno) from None


def _resolve_confined(raw: Path, path: str, roots: Sequence[str | os.PathLike[str]] | None) -> Path:
    """The body of :func:`resolve_source`; lets :class:`OSError` (and Python's symlink-loop
    :class:`RuntimeError`) through."""
    resolved = raw.resolve()
    if roots:
        allowed = [Path(r).resolve() for r in roots]
        if not any(_is_within(resolved, r) for r in allowed):
            # Named (the first three), so a user learns where sources may be: shared storage, not a secret.
            named = ", ".join(os.fspath(r) for r in roots[:3]) + (", ..." if len(roots) > 3 else "")
            raise PathNotAllowed(f"source {path!r} is outside the allowed source roots: {named}")
    if not resolved.exists():
        raise SourceNotFound(f"source {path!r} does not exist")
    if not (resolved.is_file() or resolved.is_dir()):  # a FIFO would block a reader, a device never end
        raise SourceNotFound(f"source {path!r} is neither a file nor a folder")
    if not os.access(resolved, os.R_OK):
        raise SourceNotFound(f"source {path!r} is not readable", code="source_not_readable")
    return resolved


def _source_os_error(path: str, number: int | None) -> PathNotAllowed | SourceNotFound:
    """The staging error for an :class:`OSError` (``errno`` ``number``) met resolving source ``path``."""
    if number == errno.ELOOP:
        return PathNotAllowed(f"source {path!r} passes through a loop of symbolic links")
    if number == errno.ENAMETOOLONG:
        return PathNotAllowed(f"source {path!r} is too long a path", code="name_too_long")
    if number in (errno.EACCES, errno.EPERM):
        return SourceNotFound(f"source {path!r}: permission denied", code="permission_denied", status=403)
    return SourceNotFound(f"source {path!r} cannot be read", code="source_not_readable")
