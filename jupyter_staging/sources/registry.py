"""Pick the :class:`~jupyter_staging.sources.base.Source` for a URI by its scheme."""

from __future__ import annotations

from jupyter_staging.errors import InvalidRequest
from jupyter_staging.sources.azure import AzureSource
from jupyter_staging.sources.base import Source
from jupyter_staging.sources.http import HTTPSource
from jupyter_staging.sources.local import LocalSource
from jupyter_staging.sources.s3 import S3Source


def open_source(uri: str, *, source_roots: list[str] | None = None) -> Source:
    """Pick the :class:`Source` for ``uri``: ``http(s)://``, ``s3://``, ``az://container/path`` or
    ``azure://account/container/path`` (the ``azure`` extra), or an absolute local path.

    Raises :class:`InvalidRequest` (code ``unsupported_source``) for other schemes, (code
    ``missing_extra``) for Azure without the extra, and what
    :func:`~jupyter_staging.safety.paths.resolve_source` raises for local paths.
    """
    lowered = uri.lower()
    if lowered.startswith(("http://", "https://")):
        return HTTPSource(uri)
    if lowered.startswith("s3://"):
        return S3Source(uri)
    if lowered.startswith(("az://", "azure://")):
        return AzureSource(uri)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise InvalidRequest(f"unsupported source scheme {scheme!r}", code="unsupported_source")
    return LocalSource(uri, source_roots=source_roots)
