"""Comparing the digests of bytes with the checksums expected of them (stated by a source, given by the
user): which algorithms can be verified, and the one error a mismatch raises, whoever finds it (a part file
at commit, a link job reading the file it links, an upload checked by the object store)."""

from __future__ import annotations

from jupyter_staging.errors import ChecksumMismatch

#: Algorithms a checksum may be verified with (``{algorithm: hex}`` keys), in the order they are compared.
CHECKSUM_ALGORITHMS = ("sha256", "md5")
#: Hex characters of each digest a :class:`ChecksumMismatch` message shows.
SHOWN_HEX = 16


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
