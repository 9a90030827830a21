"""Keep secrets out of responses, log lines and the database.

Presigned URLs carry their signature and credentials in the query string (S3 SigV4:
``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``; SigV2: ``Signature``,
``AWSAccessKeyId``; Azure SAS: ``sig``). :func:`redact_url` replaces those values; :func:`redact_text`
does it for every URL inside a text and for bare ``name=value`` query pieces (a request line in a library's
log message). :func:`install_log_filters` applies :func:`redact_text` to the third-party loggers known to
print request URLs or signatures at DEBUG level.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
        "api_key",
        "apikey",
        "x-goog-signature",
        "x-goog-credential",
    }
)
REDACTED = "REDACTED"

_URL_RE = re.compile(r"https?://[^\s\"'<>]+")
_SECRET_PARAM_RE = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])("
    + "|".join(re.escape(p) for p in sorted(SECRET_PARAMS, key=len, reverse=True))
    + r")=(?!"
    + REDACTED
    + r"\b)[^&\s'\"()<>,;]+"
)


def redact_url(url: str) -> str:
    """``url`` with user-info passwords and secret query values replaced by ``REDACTED``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{user}@{host}"
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="/:")
    else:
        query = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` passed through :func:`redact_url`, then any remaining secret
    ``name=value`` pair (``/key?X-Amz-Signature=...`` in a request line) with its value replaced."""
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    return _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


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
