"""Describing network errors safely: what a log line or a job error may say about a failed request.

Used for every protocol (HTTP(S), S3, Azure Blob Storage): the description names the innermost cause
(``ConnectionResetError: ...``) and never holds a signature, a token or a presigned URL's query values.
"""

from __future__ import annotations

import re

from jupyter_staging.safety.redact import redact_text

#: Longest description :func:`describe_error` returns, characters.
MAX_DESCRIPTION = 300

_CONNECTION_REPR_RE = re.compile(r"<[^>]*>:\s*")


def safe_text(text: str) -> str:
    """``text`` with secret query values (signatures, tokens) replaced by ``REDACTED``.

    Catches them in bare paths too (``/key?X-Amz-Signature=...`` in a urllib3 message), not only in
    full URLs.
    """
    return redact_text(text)


def innermost_error(exc: BaseException, depth: int = 5) -> BaseException:
    """The cause ``exc`` wraps (its ``reason``, or an exception given as its first argument), followed
    at most ``depth`` levels down."""
    inner: BaseException = exc
    for _ in range(depth):
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        elif inner.args and isinstance(inner.args[0], BaseException):
            inner = inner.args[0]
        else:
            break
    return inner


def describe_error(exc: BaseException) -> str:
    """A short (at most :data:`MAX_DESCRIPTION` characters), secret-free description of a network
    error: ``"<type>: <message>"`` of its innermost cause."""
    inner = innermost_error(exc)
    text = str(inner) or type(inner).__name__
    # urllib3 puts the connection object's repr in front of the message: keep the message.
    text = _CONNECTION_REPR_RE.sub("", text)
    return safe_text(f"{type(inner).__name__}: {text}")[:MAX_DESCRIPTION]
