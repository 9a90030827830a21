"""Nothing the doctor prints holds a secret: database URLs lose their password, and the values of secret
environment variables are replaced by ``REDACTED`` wherever they would appear."""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url

from jupyter_staging.safety.redact import REDACTED, SECRET_PARAMS, redact_text

#: Environment variables whose values are secrets: never printed, whatever the check found.
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "JUPYTERHUB_API_TOKEN",
    "JPY_API_TOKEN",
    "JUPYTER_STAGING_SERVER_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def safe_db_url(url: str) -> str:
    """``url`` with its password hidden (``***``) and secret query values redacted."""
    try:
        parsed = make_url(url)
        if parsed.query:
            parsed = parsed.set(
                query={
                    k: REDACTED if k.lower() in SECRET_PARAMS or "password" in k.lower() else v
                    for k, v in parsed.query.items()
                }
            )
        return parsed.render_as_string(hide_password=True)
    except Exception:
        return "<database URL that does not parse>"


def db_password(url: str) -> list[str]:
    """The password of the SQLAlchemy URL ``url`` as a one-item list (``[]``: none, or no URL)."""
    try:
        password = make_url(url).password
    except Exception:
        return []
    return [str(password)] if password else []


def secrets_in_environment(extra: list[str] | None = None) -> list[str]:
    """The values of :data:`SECRET_ENV` (and the key / SAS parts of an Azure connection string) that
    are set, plus ``extra``: strings that must never be printed."""
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    for part in conn.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
            values.append(value)
    values += extra or []
    # Short values would blank out ordinary words; real keys and tokens are long.
    return sorted({v for v in values if len(v) >= 8}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with URLs redacted and every string of ``secrets`` replaced by ``REDACTED``."""
    text = redact_text(text)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text
