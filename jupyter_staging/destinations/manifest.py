"""The job manifest (the dpone contract): ``manifest.json`` beside a job's output, written last.

It lists every object the job produced — path relative to the manifest, size in bytes, sha256, rows (for
Parquet parts), content type — plus the source (secrets redacted) and the converter's version, so a
consumer can verify what it reads. It is written atomically (``.part`` + fsync + rename), so its presence
means the job's output is complete.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from jupyter_staging._version import __version__
from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.dirfd import closing_fd, open_folder, read_file_at
from jupyter_staging.safety.redact import redact_url

MANIFEST_NAME = "manifest.json"
#: Bytes of a ``manifest.json`` read at most: about 300 a file, so some 3.5 million files (a folder of
#: 20,000 light curves: 6 MB).
MAX_MANIFEST_BYTES = 1 << 30
MANIFEST_VERSION = 1


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json``: UTF-8 JSON, each top-level key on a line of its own (indented by two
    spaces), each element of a list (``objects``, ``entries``) on one line, and a final newline.

    The same document as ``json.dumps(manifest, indent=2)``, laid out so that the long lists go through
    the C encoder (``indent`` makes :mod:`json` encode in Python: 15 ms for 2,000 objects here, 4 ms
    this way), and still one object per line for a reader with ``grep`` or ``diff``."""
    lines = []
    for key, value in manifest.items():
        if isinstance(value, list) and value:
            items = ",\n    ".join(json.dumps(element) for element in value)
            text = f"[\n    {items}\n  ]"
        else:
            text = json.dumps(value)
        lines.append(f"  {json.dumps(key)}: {text}")
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def build_manifest(
    *,
    job_id: str,
    name: str,
    source: str,
    method: str,
    convert: dict[str, Any] | None,
    objects: list[dict[str, Any]],
    created_at: datetime,
    finished_at: datetime,
    entries: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest as a dict. ``objects`` items have ``path`` (relative to the manifest), ``size``
    (bytes), ``sha256``, ``rows`` (int or None) and ``content_type``; in a local folder also ``mtime_ns``
    (the output's modification time when the manifest was written), in object storage ``uri``
    (``s3://...``), in a manifest job also ``entry``. ``entries`` (manifest jobs) lists every entry:
    ``{"name", "source" (redacted), "paths": [output paths], "error": null | {"code", "message"}}``,
    failed ones included, so a partly staged job still says what it holds."""
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job_id,
        "name": name,
        "source": redact_url(source),
        "method": method,
        "convert": convert,
        "converter": {"name": "jupyter_staging", "version": __version__},
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "finished_at": finished_at.isoformat().replace("+00:00", "Z"),
        "total_bytes": sum(int(o.get("size") or 0) for o in objects),
        "total_rows": sum(int(o["rows"]) for o in objects if o.get("rows") is not None) or None,
        "objects": objects,
    }
    if entries is not None:
        manifest["entries"] = [{**e, "source": redact_url(str(e.get("source", "")))} for e in entries]
    return manifest


def read_manifest(folder: Path, *, root: Path) -> dict[str, Any] | None:
    """The manifest in ``folder`` (a folder below the trusted ``root``, or ``root`` itself), or None when
    there is none: the job has not written one (yet), the folder is missing, or what has its name is no
    regular file (a symlink, a FIFO, a folder: the user's, never followed nor opened to wait on) or holds
    no JSON object (a file of the user's of that name, or the job's overwritten since). Raises as
    :func:`read_manifest_data`. Before, a file that was not JSON (or JSON of no object) raised, and staging
    into its folder or reading the job's manifest failed ``internal_error``."""
    data = read_manifest_data(folder, root=root)
    return None if data is None else parse_manifest(data)


def read_manifest_data(folder: Path, *, root: Path) -> bytes | None:
    """The bytes of ``manifest.json`` in ``folder`` (below the trusted ``root``, or ``root`` itself), or None
    when the folder is missing, there is no such file, or what has its name is no regular file.

    Read by descriptor: ``folder`` reached from ``root`` one component at a time without following a
    symlink, ``manifest.json`` opened with ``O_NOFOLLOW | O_NONBLOCK`` (:data:`MAX_MANIFEST_BYTES` at
    most). Before, the path was read as it was: a FIFO the user put at the old output's ``manifest.json``
    blocked the re-run that replaced it for good (its swap, its reuse of unchanged files). Raises
    :class:`PathNotAllowed` when a folder on the way is a symlink or a file, ``OSError`` when it cannot be
    read (``EACCES``, ``EIO``)."""
    rel = "." if folder == root else folder.relative_to(root).as_posix()
    try:
        fd = open_folder(root, rel, writing=False)
    except FileNotFoundError:
        return None
    with closing_fd(fd):
        try:
            return read_file_at(fd, MANIFEST_NAME, limit=MAX_MANIFEST_BYTES)
        except PathNotAllowed:  # a symlink or a special file: not a manifest
            return None


def parse_manifest(data: bytes) -> dict[str, Any] | None:
    """The manifest in the bytes of a ``manifest.json`` (a file, an object), or None when they hold no
    JSON object (not JSON, not UTF-8/16/32, a list): someone's file of that name is no job's manifest."""
    try:
        manifest = json.loads(data)
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return None
    return manifest if isinstance(manifest, dict) else None


class CompactManifest(NamedTuple):
    """A manifest as :func:`compact_manifest` encodes it: ``body``, the UTF-8 bytes of
    ``json.dumps(manifest)``, and ``job_id``, the value of its ``"job_id"`` (None when it has none)."""

    body: bytes
    job_id: Any


_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's own, as json.decoder's
_DECODER = json.JSONDecoder()


def compact_manifest(data: bytes) -> CompactManifest | None:
    """``json.dumps(parse_manifest(data)).encode()`` (and the manifest's ``job_id``), None where
    :func:`parse_manifest` gives None, made one element of a top-level list at a time.

    The manifest of 20,000 files is 6-8 MB of JSON: parsed by one ``json.loads`` and encoded by one
    ``json.dumps`` it held the GIL 40-60 ms and 85-115 ms (C calls that never let it go), and its 200,000
    objects, alive at once, set off the collector's full passes over the server's heap; a Jupyter server
    answered nothing else meanwhile. Here the top-level object is read by hand and each value, and each
    element of a list value (``objects``, ``entries``), is decoded and encoded by itself (a few
    microseconds each) and let go: the same bytes, whatever the layout of ``data``."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")  # as json.loads decodes bytes
        members = _members(text)
    except ValueError:  # not JSON (JSONDecodeError), not UTF-8/16/32 (UnicodeDecodeError)
        return None
    if members is None:
        return None
    items = ", ".join(f"{json.dumps(key)}: {value}" for key, (value, _) in members.items())
    return CompactManifest(f"{{{items}}}".encode(), members.get("job_id", (None, None))[1])


def _members(text: str) -> dict[str, tuple[str, Any]] | None:
    """``{key: (its value as json.dumps encodes it, the value itself (None for a list))}`` of the JSON
    object ``text`` holds (a later key replaces the value of an earlier one where it stood, as in
    :func:`json.loads`); None when ``text`` holds no object (JSON of another type, or no JSON), whose
    :func:`parse_manifest` is None too. Raises ``ValueError`` for an object that is no JSON."""
    idx = _skip(text, 0)
    if text[idx : idx + 1] != "{":
        return None
    members: dict[str, tuple[str, Any]] = {}
    idx = _skip(text, idx + 1)
    end = text[idx : idx + 1] == "}"
    while not end:
        if text[idx : idx + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, idx)
        key, idx = _DECODER.raw_decode(text, idx)  # a string: the opening quote is at idx
        idx = _skip(text, idx)
        if text[idx : idx + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
        idx = _skip(text, idx + 1)
        if text[idx : idx + 1] == "[":
            value, idx = _list(text, idx + 1)
            members[key] = (value, None)
        else:
            decoded, idx = _DECODER.raw_decode(text, idx)
            members[key] = (json.dumps(decoded), decoded)
        idx, end = _after(text, idx, "}")
    if _skip(text, idx + 1) != len(text):
        raise json.JSONDecodeError("Extra data", text, idx + 1)
    return members


def _list(text: str, idx: int) -> tuple[str, int]:
    """The JSON list whose first element (or ``]``) is at or after ``idx`` in ``text`` as ``json.dumps``
    encodes it, an element at a time, and the index after its ``]``. Raises ``ValueError``."""
    idx, parts = _skip(text, idx), []
    end = text[idx : idx + 1] == "]"
    while not end:
        element, idx = _DECODER.raw_decode(text, idx)
        parts.append(json.dumps(element))
        idx, end = _after(text, idx, "]")
    return f"[{', '.join(parts)}]", idx + 1


def _after(text: str, idx: int, close: str) -> tuple[int, bool]:
    """After a member or element ending at ``idx``: ``(index of the next one, False)`` past a ``,``, or
    ``(index of close, True)``. Raises ``JSONDecodeError`` for anything else."""
    idx = _skip(text, idx)
    here = text[idx : idx + 1]
    if here == ",":
        return _skip(text, idx + 1), False
    if here == close:
        return idx, True
    raise json.JSONDecodeError(f"Expecting ',' delimiter or {close!r}", text, idx)


def _skip(text: str, idx: int) -> int:
    """The index of the first character at or after ``idx`` that is no JSON whitespace."""
    match = _WHITESPACE.match(text, idx)
    return idx if match is None else match.end()
