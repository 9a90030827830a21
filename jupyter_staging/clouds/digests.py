"""Checksums a source states for its bytes, read from HTTP headers into lower-case hex by algorithm.

Every parser returns a dict such as ``{"sha256": "<64 hex>"}`` or ``{"md5": "<32 hex>"}`` (the shape of
:attr:`~jupyter_staging.sources.base.SourceItem.checksums`), empty when the header is absent or malformed:
a digest that cannot be read is not a digest to verify against. Only algorithms
:meth:`~jupyter_staging.safety.partfile.PartFile.commit` verifies are kept (SHA-256, MD5, and the CRCs S3
states).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

#: Digest length in bytes, by algorithm.
DIGEST_BYTES = {"sha256": 32, "md5": 16, "crc64nvme": 8, "crc32c": 4, "crc32": 4}


def b64_to_hex(value: str | bytes | None, algorithm: str) -> str | None:
    """The base64 digest ``value`` as lower-case hex when it decodes to a digest of ``algorithm``'s
    length (:data:`DIGEST_BYTES`), else None."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == DIGEST_BYTES[algorithm] else None


def bytes_to_hex(value: bytes | bytearray | None, algorithm: str) -> str | None:
    """Raw digest bytes (as the Azure SDK gives ``content_md5``) as lower-case hex, or None when absent
    or not ``algorithm``'s length."""
    if not value or len(value) != DIGEST_BYTES[algorithm]:
        return None
    return bytes(value).hex()


def parse_repr_digest(value: str | None) -> dict[str, str]:
    """``Repr-Digest`` (RFC 9530, section 3): a Structured Fields dictionary (RFC 8941) of byte
    sequences, e.g. ``sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:``. Of the algorithms RFC
    9530 registers as active (``sha-256``, ``sha-512``) only ``sha-256`` is kept; parameters are ignored.
    """
    found: dict[str, str] = {}
    for member in (value or "").split(","):
        key, eq, rest = member.strip().partition("=")
        if not eq or key.strip().lower() != "sha-256":
            continue
        item = rest.split(";", 1)[0].strip()
        if len(item) >= 2 and item[0] == ":" and item[-1] == ":":
            hexed = b64_to_hex(item[1:-1], "sha256")
            if hexed:
                found["sha256"] = hexed
    return found


def parse_legacy_digest(value: str | None) -> dict[str, str]:
    """``Digest`` (RFC 3230, obsoleted by RFC 9530): ``SHA-256=<base64>`` (RFC 5843) and
    ``MD5=<base64>`` (RFC 3230, section 4.1.1), comma-separated, algorithm names case-insensitive."""
    names = {"sha-256": "sha256", "md5": "md5"}
    found: dict[str, str] = {}
    for member in (value or "").split(","):
        key, eq, encoded = member.strip().partition("=")
        algorithm = names.get(key.strip().lower())
        if eq and algorithm:
            hexed = b64_to_hex(encoded, algorithm)
            if hexed:
                found[algorithm] = hexed
    return found


def parse_content_md5(value: str | None) -> dict[str, str]:
    """``Content-MD5`` (RFC 1864): the base64 MD5 of the body it comes with."""
    hexed = b64_to_hex(value, "md5")
    return {"md5": hexed} if hexed else {}


def http_checksums(headers: Mapping[str, str], *, whole_body: bool) -> dict[str, str]:
    """The checksums an HTTP answer states for the whole file, from ``Repr-Digest`` (preferred),
    ``Digest`` and, only when the answer is (or describes) the whole body (``whole_body``: a ``200`` or
    its HEAD, not a ``206``), ``Content-MD5``, which covers the body sent rather than the file."""
    found = parse_content_md5(headers.get("Content-MD5")) if whole_body else {}
    found.update(parse_legacy_digest(headers.get("Digest")))
    found.update(parse_repr_digest(headers.get("Repr-Digest")))
    return found
