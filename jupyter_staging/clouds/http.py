"""Describing network errors safely: what a job error or a log line may say about a failed request.

Used for every protocol (HTTP(S), S3, Azure Blob Storage). :func:`describe_error` is the short summary a
user reads (``connection refused``, ``host name not found``, ``timed out``); :func:`error_detail` names the
innermost cause with its type (``ConnectionRefusedError: [Errno 111] Connection refused``) for a job's log.
Neither ever holds a signature, a token or a presigned URL's query values.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl

from jupyter_staging.safety.redact import redact_text

#: Longest description :func:`describe_error` or :func:`error_detail` returns, characters.
MAX_DESCRIPTION = 300

_CONNECTION_REPR_RE = re.compile(r"<[^>]*>:\s*|\w+Connection\([^)]*\):\s*")
_ERRNO_RE = re.compile(r"\[Errno (-?\d+)\]")

#: What a user reads for an operating-system error number of a failed connection.
_PLAIN_ERRNO = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the server",
    errno.ECONNABORTED: "connection aborted",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EPIPE: "connection closed by the server",
}
#: ``socket.getaddrinfo`` failures (``[Errno -2] Name or service not known`` and kin).
_NAME_ERRORS = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME), socket.EAI_AGAIN}


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
    """A short (at most :data:`MAX_DESCRIPTION` characters), secret-free summary of a network error for
    the person who asked: ``"connection refused"``, ``"host name not found"``, ``"timed out"``,
    ``"TLS handshake failed: <reason>"`` when the cause is one of those, else ``"<type>: <message>"`` of
    its innermost cause without a library's connection objects."""
    for cause in _causes(exc):
        plain = _plain(cause)
        if plain:
            return plain
    return error_detail(exc)


def error_detail(exc: BaseException) -> str:
    """The innermost cause of ``exc`` as ``"<type>: <message>"`` (at most :data:`MAX_DESCRIPTION`
    characters, secret-free), for a job's log: what :func:`describe_error` summarises."""
    inner = innermost_error(exc)
    text = str(inner) or type(inner).__name__
    # urllib3 puts the connection object's repr in front of the message: keep the message.
    text = _CONNECTION_REPR_RE.sub("", text)
    return safe_text(f"{type(inner).__name__}: {text}")[:MAX_DESCRIPTION]


def _causes(exc: BaseException, depth: int = 8) -> list[BaseException]:
    """``exc``, what it wraps (:func:`innermost_error`'s path) and the chained ``__cause__`` /
    ``__context__`` of each, innermost last, at most ``depth`` deep."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < depth:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        inner = innermost_error(current, depth=1)
        todo += [e for e in (inner, current.__cause__, current.__context__) if e is not None]
    return seen


def _plain(exc: BaseException) -> str | None:
    """The user's words for ``exc`` when it is a common connection failure, else None."""
    if isinstance(exc, socket.gaierror) or type(exc).__name__ == "NameResolutionError":
        return "host name not found"
    if isinstance(exc, ssl.SSLError):
        return safe_text(f"TLS handshake failed: {exc.reason or exc.strerror or 'error'}")[:MAX_DESCRIPTION]
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return "timed out"
    number = exc.errno if isinstance(exc, OSError) else None
    if number is None:
        match = _ERRNO_RE.search(str(exc))
        number = int(match.group(1)) if match else None
    if number in _NAME_ERRORS and number is not None and number < 0:
        return "host name not found"
    return _PLAIN_ERRNO.get(number) if number is not None else None
