"""Keep secrets out of responses, log lines and the database.

A URL carries its secrets in places no list of parameter names can cover: presigned query values (S3
``X-Amz-Signature``, Azure ``sig``, Google ``key``, Backblaze ``Authorization``, OAuth ``code``), the
user-info (``https://user:pass@host``), the fragment (``#sig=...``), ``;``-separated parameters, and other
URLs nested (percent-encoded or not) in any of those. So :func:`redact_url` hides every query value, every
path parameter value, the whole user-info and the fragment's values, and keeps only the parameter names,
so people still recognise the URL::

    https://user:pw@host/k;jsessionid=1?X-Amz-Signature=abc&part=2#sig=x
    https://REDACTED@host/k;jsessionid=REDACTED?X-Amz-Signature=REDACTED&part=REDACTED#sig=REDACTED

A piece without ``=`` (``?AbCdEf``, ``#top``) is a value too: it becomes ``REDACTED``. :func:`redact_text`
does the same for every URL inside a free text (a log line, an exception message, a traceback), for
percent-encoded URLs, for request targets (``GET /key?X-Amz-Signature=...``) and for bare credentials
(``password=...``, ``Authorization: Bearer ...``). Both are idempotent. :func:`install_log_filters`
applies :func:`redact_text` to the third-party loggers known to print request URLs or signatures.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

REDACTED = "REDACTED"

#: Names whose value is a secret wherever it appears (in a URL every value is hidden anyway; these are
#: also hidden as bare ``name=value`` in free text, and by other modules in other formats).
SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "signature",
        "awsaccesskeyid",
        "sig",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "api_key",
        "apikey",
        "x-goog-signature",
        "x-goog-credential",
        "authorization",
        "key",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "code",
        "auth",
        "credential",
        "accountkey",
        "sharedaccesssignature",
    }
)

#: Words that end a name whose value is a secret (``db_password=``, ``aws_session_token=``).
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "signature", "credential", "api_key", "apikey")

#: Authorization schemes kept in sight (``Authorization: Bearer REDACTED``).
_AUTH_SCHEMES = frozenset(
    {"basic", "bearer", "digest", "token", "sharedkey", "aws", "aws4-hmac-sha256", "negotiate", "ntlm"}
)


def _delim(chars: str, encoded: bool) -> str:
    """A regex alternative matching one of ``chars`` literally or (``encoded``) percent-encoded, at
    any depth of encoding (``?`` as ``%3F``, ``%253F``, ...)."""
    literal = "[" + re.escape(chars) + "]"
    if not encoded:
        return literal
    hexes = "|".join(f"{ord(c):02X}" for c in chars)
    return f"(?:{literal}|%(?:25)*(?:{hexes}))"


class _Grammar:
    """The delimiters of a URL, either literal only or also percent-encoded (a URL nested as text)."""

    def __init__(self, encoded: bool) -> None:
        flags = re.IGNORECASE
        self.authority_end = re.compile(_delim("/?#", encoded), flags)
        self.at = re.compile(_delim("@", encoded), flags)
        self.query_start = re.compile(_delim("?#", encoded), flags)
        self.param_sep = re.compile("(" + _delim("?#&;", encoded) + ")", flags)
        self.path_param = re.compile(
            "("
            + _delim(";", encoded)
            + r")((?:(?!"
            + _delim("=/", encoded)
            + r").)*)("
            + _delim("=", encoded)
            + r")((?:(?!"
            + _delim(";/", encoded)
            + ").)*)",
            flags,
        )
        self.equals = re.compile(_delim("=", encoded), flags)


_PLAIN = _Grammar(encoded=False)
_ENCODED = _Grammar(encoded=True)

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A URL in free text ends at white space or a quote; trailing punctuation belongs to the sentence.
_URL_TAIL = r"[^\s\"'<>`]*[^\s\"'<>`.,:;!)\]}]"
_URL_RE = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)(" + _URL_TAIL + "|)")
_ENCODED_URL_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9+.-])([a-z][a-z0-9+.-]*%(?:25)*3A(?:%(?:25)*2F|/){2})(" + _URL_TAIL + "|)"
)
# A request target without scheme and host: ``GET /bucket/key?X-Amz-Signature=... HTTP/1.1``.
_TARGET_RE = re.compile(r"(?<![^\s\"'(\[=])(/[^\s?#\"'<>`]*)(\?" + _URL_TAIL + ")")

_NAMES = "|".join(re.escape(n) for n in sorted(SECRET_PARAMS, key=len, reverse=True))
_STRONG_NAME = r"[A-Za-z0-9_-]*(?:" + "|".join(re.escape(s) for s in _SECRET_SUFFIXES) + ")"
# A value that is already ``REDACTED`` is left alone, so that redacting twice changes nothing, also when the
# sentence goes on with punctuation (``signature=REDACTED: connection refused`` keeps its colon).
_BARE_VALUE = r"(?!" + REDACTED + r"[.:!?]*(?![^\s&'\"()<>,;]))[^\s&'\"()<>,;]+"
# ``key=...``, ``client_secret=...`` outside URLs; ``password: ...``, ``"db_password": "..."`` too for
# the names that can only mean a secret (``key: data/x.fits`` is an object key, not a credential).
_BARE_SECRET_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])("
    + _STRONG_NAME
    + r"(?:=|[\"']?\s*[:=]\s*[\"']?)|(?:"
    + _NAMES
    + r")=)"
    + _BARE_VALUE
)
# Every name above (and ``authorization``) holds one of these: a text without any cannot hold a bare secret.
_BARE_HINTS = ("sig", "token", "key", "cred", "pass", "secret", "code", "auth")
# ``Authorization: Bearer abc``, ``'Authorization': 'AWS4-HMAC-SHA256 Credential=..., Signature=...'``.
_AUTH_HEADER_RE = re.compile(r"(?i)((?:proxy-)?authorization[\"']?\s*:\s*[\"']?)([^\r\n\"']+)")


def _redact_params(params: str, grammar: _Grammar) -> str:
    """``params`` (from the ``?`` or ``#`` on) with the value of every piece replaced."""
    pieces = grammar.param_sep.split(params)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 or not piece:  # a separator, or nothing between two of them
            out.append(piece)
            continue
        eq = grammar.equals.search(piece)
        out.append(piece[: eq.end()] + REDACTED if eq else REDACTED)
    return "".join(out)


def _redact_rest(rest: str, grammar: _Grammar) -> str:
    """``rest`` (a URL after its ``scheme://``) with user-info, path parameter values, query values and
    the fragment's values replaced."""
    end = grammar.authority_end.search(rest)
    cut = end.start() if end else len(rest)
    authority, tail = rest[:cut], rest[cut:]
    ats = list(grammar.at.finditer(authority))
    if ats:  # the user-info ends at the last "@" (a password may hold one, unencoded)
        authority = REDACTED + authority[ats[-1].start() :]
    start = grammar.query_start.search(tail)
    cut = start.start() if start else len(tail)
    path, params = tail[:cut], tail[cut:]
    path = grammar.path_param.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED, path)
    if grammar is _PLAIN and "%" in path:
        path = _sub_encoded_urls(path)
    return authority + path + _redact_params(params, grammar)


def _sub_encoded_urls(text: str) -> str:
    return _ENCODED_URL_RE.sub(lambda m: m.group(1) + _redact_rest(m.group(2), _ENCODED), text)


def _sub_urls(text: str) -> str:
    return _URL_RE.sub(lambda m: m.group(1) + _redact_rest(m.group(2), _PLAIN), text)


def _sub_targets(text: str) -> str:
    return _TARGET_RE.sub(lambda m: m.group(1) + _redact_params(m.group(2), _PLAIN), text)


def _auth_header(m: re.Match[str]) -> str:
    words = m.group(2).split(None, 1)
    if words[0].lower() in _AUTH_SCHEMES and len(words) == 2:
        return f"{m.group(1)}{words[0]} {REDACTED}"
    return m.group(1) + REDACTED


def _sub_bare(text: str) -> str:
    lowered = text.lower()
    if not any(hint in lowered for hint in _BARE_HINTS):  # most log lines: quick scans, not the pattern
        return text
    text = _BARE_SECRET_RE.sub(lambda m: m.group(1) + REDACTED, text)
    return _AUTH_HEADER_RE.sub(_auth_header, text)


#: Each pass of :func:`redact_text`, with the substring a text must hold for the pass to be worth running.
_PASSES: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("://", _sub_urls),
    ("%", _sub_encoded_urls),
    ("?", _sub_targets),
    ("", _sub_bare),
)


def redact_url(url: str) -> str:
    """``url`` with every secret part replaced by :data:`REDACTED`: the whole user-info, the value of
    every query parameter (``&``- or ``;``-separated) and path parameter (``;name=value``), the values
    of the fragment, and any URL nested percent-encoded in the path. Names are kept
    (``?X-Amz-Signature=REDACTED&part=REDACTED``). A string that is not ``scheme://...`` (a local path,
    ``manifest:4 entries``) goes through :func:`redact_text` instead. Idempotent; never raises."""
    m = _SCHEME_RE.match(url)
    if m is None:
        return redact_text(url)
    return m.group(0) + _redact_rest(url[m.end() :], _PLAIN)


def redact_text(text: str) -> str:
    """``text`` (a log line, an exception message, a traceback) with every URL in it redacted as by
    :func:`redact_url` (whatever its scheme: http, https, s3, az, azure, ...; percent-encoded URLs too),
    the query values of request targets (``GET /key?X-Amz-Signature=...``), and bare credentials
    (``password=...``, ``"client_secret": "..."``, ``Authorization: Bearer ...``) replaced by
    :data:`REDACTED`. Text without a URL is scanned by precompiled patterns only. Idempotent."""
    for hint, redact in _PASSES:
        if hint in text:
            text = redact(text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message through :func:`redact_text`, and drops
    botocore's DEBUG lines that print a computed request signature (``Signature:\n<hex>``), which for a
    presigned URL is the URL's credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "botocore.auth" and str(record.msg).startswith(("Signature", "String to sign")):
            return False
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business, not ours
            return True
        safe = redact_text(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


#: Loggers of libraries we call that print request URLs (with their query) or signatures at DEBUG level.
LEAKY_LOGGERS = ("urllib3.connectionpool", "botocore.auth", "botocore.endpoint", "botocore.hooks")

_filter = RedactingFilter()


def install_log_filters() -> None:
    """Attach the :class:`RedactingFilter` to :data:`LEAKY_LOGGERS` (idempotent). A logger's filters
    see only records logged to that very logger, so each is named."""
    for name in LEAKY_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)
