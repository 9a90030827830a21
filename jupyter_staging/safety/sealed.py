"""Secrets a job needs but no one may read back: presigned source URLs, sealed for the job database.

A job reading a presigned URL (``...?X-Amz-Signature=...``) needs the whole URL until it ends, including
after a restart, so the URL must be persisted. The database row keeps only the redacted URL
(:func:`~jupyter_staging.safety.redact.redact_url`) for display; the raw value is sealed with Fernet
(AES-128-CBC + HMAC-SHA256, ``cryptography.fernet``) under a key kept in a separate file readable only by
its owner (mode 0600), and the sealed value is dropped once the job has ended.

Trade-off, chosen over keeping the raw URL in a second 0600 file beside the database: the database stays
the single place jobs live (one transaction, any SQLAlchemy URL, no second store to keep consistent), and a
database file that is copied, backed up, attached to a bug report or shared (PostgreSQL for the hub) shows
no usable signature. What it does not protect against: someone who can read both the database and the key
file (the user's own account) can unseal — as they could read the notebook that held the URL. Losing the key
file only makes unfinished jobs with secret sources fail with ``secret_unavailable`` on resume.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from jupyter_staging.errors import SecretUnavailable

log = logging.getLogger(__name__)


class SecretBox:
    """Seals and opens JSON values with a Fernet key.

    ``key_file``: where the key lives; created (mode 0600, atomically, never replaced) when missing, its
    permissions tightened to 0600 when looser. None: a key held in memory only, so sealed values do not
    survive this process (jobs with secret sources then fail with ``secret_unavailable`` after a restart).
    """

    def __init__(self, key_file: str | os.PathLike[str] | None) -> None:
        from cryptography.fernet import Fernet

        self.key_file = Path(key_file) if key_file is not None else None
        key = Fernet.generate_key() if self.key_file is None else _load_or_create_key(self.key_file)
        self._fernet = Fernet(key)

    def seal(self, value: Any) -> str:
        """``value`` (JSON-serialisable) as an opaque, authenticated token (ASCII text)."""
        return self._fernet.encrypt(json.dumps(value).encode()).decode("ascii")

    def open(self, token: str) -> Any:
        """The value sealed in ``token``. Raises :class:`SecretUnavailable` when it was sealed under
        another key or altered."""
        from cryptography.fernet import InvalidToken

        try:
            return json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, ValueError):
            where = f" ({self.key_file})" if self.key_file else " (an in-memory key of an earlier process)"
            raise SecretUnavailable(
                f"the job's credentials were sealed under another key{where}; submit the job again"
            ) from None


def _load_or_create_key(path: Path) -> bytes:
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    from cryptography.fernet import Fernet

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".staging-key-", dir=path.parent)  # mkstemp creates it 0600
    try:
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("staging key file %s was readable by others; setting its mode to 0600", path)
        os.chmod(path, 0o600)
    return path.read_bytes().strip()


__all__ = ["SecretBox", "SecretUnavailable"]
