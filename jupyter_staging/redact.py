"""Keep secrets out of responses, log lines and the database.

Presigned URLs carry their signature and credentials in the query string (S3 SigV4:
``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``; SigV2: ``Signature``,
``AWSAccessKeyId``; Azure SAS: ``sig``). :func:`redact_url` replaces those values.
"""

from __future__ import annotations

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
        query = urlencode(
            [(k, REDACTED if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="/:"
        )
    else:
        query = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every URL inside ``text`` passed through :func:`redact_url`."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
