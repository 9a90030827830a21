"""The operations log: one JSON object per line in a rotating file, and a reader that tails it.

Each line is ``{"time", "level", "message", "operation", "user", "actor", "method", "status", "code",
"source", "target", "bytes", "job_id"}`` — what a person needs to follow an operation, never a token.
JSON keeps filtering exact whatever characters user names and paths hold.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Names of the fields :class:`JSONFormatter` copies from a record's ``extra``.
FIELDS = ("operation", "user", "actor", "method", "status", "code", "source", "target", "bytes", "job_id")

#: Levels by name, for :func:`tail` (a filter keeps lines at this level or above).
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

#: Bytes of log read at most by one :func:`tail` call, whatever it finds.
MAX_SCAN_BYTES = 32 * 1024 * 1024


class JSONFormatter(logging.Formatter):
    """Formats a record as one JSON line (UTC time in ISO 8601)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            line[name] = getattr(record, name, None)
        # A lone surrogate (a name that is not UTF-8) as its JSON escape, so the line can always be written.
        return json.dumps(line, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A :class:`~logging.handlers.RotatingFileHandler` whose files, new ones after a rotation
    included, are created mode 0600 (they name users and paths)."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)  # noqa: SIM115


def open_log(path: str | os.PathLike[str], *, max_bytes: int, backup_count: int) -> logging.Logger:
    """The operations logger writing to ``path`` (rotated at ``max_bytes`` bytes, ``backup_count``
    old files kept as ``path.1`` ... ``path.N``), files mode 0600; it does not propagate to the
    service's console log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("jupyter_staging.hub.oplog")
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler = PrivateRotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def tail(
    path: str | os.PathLike[str],
    *,
    lines: int = 200,
    user: str | None = None,
    level: str | None = None,
    backup_count: int = 0,
) -> list[dict[str, Any]]:
    """The last ``lines`` entries of the log at ``path`` (oldest first), reading the rotated files
    ``path.1`` ... too when needed, at most :data:`MAX_SCAN_BYTES` bytes in all.

    ``user`` keeps entries whose ``user`` or ``actor`` is that name; ``level`` (``debug``, ``info``,
    ``warning``, ``error``) keeps entries at that level or above. Lines that are not JSON are skipped.
    Raises :class:`ValueError` for an unknown level.
    """
    if level is not None and level.lower() not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}")
    floor = LEVELS[level.lower()] if level else 0
    found: list[dict[str, Any]] = []
    budget = [MAX_SCAN_BYTES]
    files = [Path(path)] + [Path(f"{path}.{i}") for i in range(1, backup_count + 1)]
    for file in files:
        for raw in _lines_backwards(file, budget):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if user is not None and user not in (entry.get("user"), entry.get("actor")):
                continue
            if LEVELS.get(str(entry.get("level", "")).lower(), 0) < floor:
                continue
            found.append(entry)
            if len(found) >= lines:
                return found[::-1]
        if budget[0] <= 0:
            break
    return found[::-1]


def _lines_backwards(path: Path, budget: list[int], block: int = 64 * 1024) -> Iterator[bytes]:
    """Lines of ``path`` from the last to the first, spending ``budget[0]`` bytes of reading."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally
    except FileNotFoundError:
        return
    try:
        position = fh.seek(0, os.SEEK_END)
        rest = b""
        while position > 0 and budget[0] > 0:
            size = min(block, position)
            position -= size
            fh.seek(position)
            data = fh.read(size) + rest
            budget[0] -= size
            pieces = data.split(b"\n")
            rest = pieces[0]
            for piece in reversed(pieces[1:]):
                if piece.strip():
                    yield piece
        if position == 0 and rest.strip():
            yield rest
    finally:
        fh.close()
