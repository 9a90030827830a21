"""Comparing the digests of bytes with the checksums expected of them (stated by a source, given by the
user): which algorithms can be verified, which of several stated ones is worth computing, the digest objects
that compute them, and the one error a mismatch raises, whoever finds it (a part file at commit, a link job
reading the file it links, an upload checked by the object store)."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from jupyter_staging.errors import ChecksumMismatch, VerificationFailed

try:  # the CRCs S3 states besides CRC32: awscrt (boto3[crt]), hardware-accelerated
    from awscrt import checksums as _crt
except ImportError:  # pragma: no cover - a site without boto3[crt] verifies MD5 and CRC32 only
    _crt = None

#: Algorithms a checksum may be verified with (``{algorithm: hex}`` keys), in the order they are compared:
#: sha256 (every output's), MD5 (an S3 single-part ETag, ``Content-MD5``, a user's ``md5:``), and the
#: full-object CRCs S3 states (``x-amz-checksum-crc64nvme`` / ``-crc32c`` / ``-crc32``, the S3 API's
#: "Checking object integrity"), as hex of the big-endian value.
CHECKSUM_ALGORITHMS = ("sha256", "md5", "crc64nvme", "crc32c", "crc32")
#: When a source states no sha256 but several others, the one computed beside the sha256, best first: a
#: 64-bit CRC (9 GiB/s with awscrt here) finds every burst of damage up to 64 bits and misses random damage
#: once in 2^64, enough for a corrupted transfer, at a fifteenth of an MD5's CPU (0.6 GiB/s); an MD5 beats
#: a 32-bit CRC.
SECOND_DIGEST_PREFERENCE = ("crc64nvme", "md5", "crc32c", "crc32")
#: Hex characters of each digest a :class:`ChecksumMismatch` message shows.
SHOWN_HEX = 16


class CrcDigest:
    """A running CRC with the part of ``hashlib``'s interface the engine uses (``name``, ``update``,
    ``hexdigest``, ``copy``): ``hexdigest()`` is the CRC as big-endian bytes in hex, ``width`` bytes
    (what S3's base64 ``x-amz-checksum-*`` header decodes to)."""

    def __init__(self, name: str, update: Callable[[Any, int], int], width: int, value: int = 0) -> None:
        self.name = name
        self._update = update
        self._width = width
        self._value = value

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data``."""
        self._value = self._update(data, self._value)

    def hexdigest(self) -> str:
        """The CRC of the bytes fed so far, ``2 * width`` lower-case hex digits."""
        return self._value.to_bytes(self._width, "big").hex()

    def copy(self) -> CrcDigest:
        """An independent copy of the running CRC."""
        return CrcDigest(self.name, self._update, self._width, self._value)


def _crcs() -> dict[str, Callable[[], CrcDigest]]:
    """The CRC digest makers this interpreter has: CRC32 always (zlib), CRC32C and CRC64NVME with awscrt."""
    made: dict[str, Callable[[], CrcDigest]] = {"crc32": lambda: CrcDigest("crc32", zlib.crc32, 4)}
    if _crt is not None:
        made["crc32c"] = lambda: CrcDigest("crc32c", _crt.crc32c, 4)
        made["crc64nvme"] = lambda: CrcDigest("crc64nvme", _crt.crc64nvme, 8)
    return made


_CRCS = _crcs()


def can_compute(algorithm: str) -> bool:
    """True when :func:`new_digest` can compute ``algorithm`` here (CRC32C and CRC64NVME need awscrt)."""
    return algorithm in ("sha256", "md5") or algorithm in _CRCS


def new_digest(algorithm: str) -> Any:
    """A new digest object of ``algorithm`` (one of :data:`CHECKSUM_ALGORITHMS`) with ``update`` and
    ``hexdigest``: ``hashlib``'s for sha256 and MD5, a :class:`CrcDigest` for a CRC. Raises ``ValueError``
    for an algorithm that cannot be computed here (:func:`can_compute`)."""
    if algorithm in ("sha256", "md5"):
        return hashlib.new(algorithm, usedforsecurity=False)
    try:
        return _CRCS[algorithm]()
    except KeyError:
        raise ValueError(f"no {algorithm} digest here") from None


def optional_digest(algorithm: str | None) -> Any:
    """:func:`new_digest` of ``algorithm``, or None when there is none (a part file's second digest)."""
    return new_digest(algorithm) if algorithm else None


def cannot_verify(what: str, algorithms: list[str]) -> VerificationFailed:
    """The error for checksums of ``algorithms`` that this interpreter cannot compute (:func:`can_compute`):
    ``what`` (a file name) and what to install (CRC32C and CRC64NVME need awscrt)."""
    return VerificationFailed(
        f"{what}: cannot verify a {', '.join(sorted(algorithms))} checksum here "
        "(CRC32C and CRC64NVME need awscrt: pip install 'boto3[crt]')"
    )


def verifiable_here(checksums: Mapping[str, str], stated: Mapping[str, str], what: str) -> dict[str, str]:
    """``checksums`` (``{algorithm: hex}``, chosen by a process that could compute them all: the server)
    as this process can verify them: an algorithm it cannot compute (a Dask worker without awscrt given a
    CRC64NVME) is replaced by what :func:`checksums_to_verify` keeps of ``stated`` (what the source states,
    ``{algorithm: hex}``; say the ETag's MD5). Raises :class:`VerificationFailed` (:func:`cannot_verify`)
    when nothing it can compute is left to stand in: a stated checksum is never dropped unverified."""
    unknown = [algorithm for algorithm in checksums if not can_compute(algorithm)]
    if not unknown:
        return dict(checksums)
    kept = {algorithm: value for algorithm, value in checksums.items() if algorithm not in unknown}
    instead = checksums_to_verify({a: v for a, v in stated.items() if a not in unknown and a not in kept})
    if not instead:
        raise cannot_verify(what, unknown)
    return {**instead, **kept}


def second_algorithm(checksums: Mapping[str, str]) -> str | None:
    """The algorithm of ``checksums`` (``{algorithm: hex}``) other than sha256, or None: the digest a part
    file computes beside its sha256. :func:`checksums_to_verify` leaves at most one."""
    return next((algorithm for algorithm in checksums if algorithm != "sha256"), None)


def checksums_to_verify(checksums: Mapping[str, str], given: str | None = None) -> dict[str, str]:
    """Of ``checksums`` (``{algorithm: hex}``: what a source states, with the user's checksum merged in),
    those worth verifying: the sha256 (computed for every output anyway, and the strongest) and at most one
    other. The user's algorithm ``given`` is always kept. Otherwise a stated sha256 makes the rest
    redundant, and without one the first of :data:`SECOND_DIGEST_PREFERENCE` this interpreter can compute
    is kept (an S3 object uploaded with no checksum states a CRC64NVME besides its ETag's MD5: verifying
    the CRC saves about 1.4 CPU-s per GiB: bench/bench_stated_checksums.py)."""
    kept = {"sha256": checksums["sha256"]} if "sha256" in checksums else {}
    if given is not None and given in checksums:
        kept[given] = checksums[given]
    if kept or given is not None:
        return kept
    for algorithm in SECOND_DIGEST_PREFERENCE:
        if algorithm in checksums and can_compute(algorithm):
            return {algorithm: checksums[algorithm]}
    return kept


def mismatch_message(what: str, algorithm: str, expected_hex: str, actual_hex: str) -> str:
    """The message of a :class:`ChecksumMismatch`: ``what`` (a file name or URI), the algorithm and the
    first :data:`SHOWN_HEX` hex digits of the digest expected and of the one computed."""
    return (
        f"{what}: {algorithm} mismatch: expected {expected_hex[:SHOWN_HEX]}..., "
        f"got {actual_hex[:SHOWN_HEX]}...; nothing was published"
    )


def first_mismatch(what: str, expected: dict[str, str], actual: dict[str, str]) -> ChecksumMismatch | None:
    """The :class:`ChecksumMismatch` for the first of ``expected`` (``{algorithm: hex}``, compared in the
    order of :data:`CHECKSUM_ALGORITHMS`, then the others) whose digest in ``actual`` differs (hex compared
    without case or surrounding blanks), else None. An algorithm ``actual`` has no digest for is not
    compared: the caller checks that every expected algorithm was computed."""
    order = sorted(expected, key=lambda a: (CHECKSUM_ALGORITHMS + (a,)).index(a))
    for algorithm in order:
        want, got = expected[algorithm].strip().lower(), actual.get(algorithm)
        if got is not None and got.lower() != want:
            return ChecksumMismatch(mismatch_message(what, algorithm, want, got))
    return None
