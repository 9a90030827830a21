"""The digests a part file verifies besides its sha256, and which of several stated checksums is verified."""

from __future__ import annotations

import hashlib

import pytest

from jupyter_staging.safety.checksums import (
    CHECKSUM_ALGORITHMS,
    can_compute,
    checksums_to_verify,
    new_digest,
    second_algorithm,
)

#: The check value of each CRC: its digest of b"123456789" (the "Catalogue of parametrised CRC algorithms",
#: entries CRC-32/ISO-HDLC, CRC-32/ISCSI and CRC-64/NVME), as hex of the big-endian value.
CHECK_VALUES = {"crc32": "cbf43926", "crc32c": "e3069283", "crc64nvme": "ae8b14860a799888"}


@pytest.mark.parametrize("algorithm", sorted(CHECK_VALUES))
def test_each_crc_gives_its_catalogue_check_value_fed_whole_or_in_pieces(algorithm):
    whole = new_digest(algorithm)
    whole.update(b"123456789")
    pieces = new_digest(algorithm)
    for piece in (b"1", b"2345", memoryview(b"6789")):
        pieces.update(piece)
    assert whole.hexdigest() == pieces.hexdigest() == CHECK_VALUES[algorithm]
    assert whole.name == algorithm


def test_a_copied_crc_runs_on_independently():
    digest = new_digest("crc64nvme")
    digest.update(b"1234")
    copy = digest.copy()
    digest.update(b"56789")
    copy.update(b"56789")
    assert digest.hexdigest() == copy.hexdigest() == CHECK_VALUES["crc64nvme"]
    copy.update(b"more")
    assert digest.hexdigest() == CHECK_VALUES["crc64nvme"]


def test_every_algorithm_can_be_computed_here_and_others_are_refused():
    assert all(can_compute(algorithm) for algorithm in CHECKSUM_ALGORITHMS)
    assert not can_compute("sha512")
    with pytest.raises(ValueError, match="sha512"):
        new_digest("sha512")
    assert new_digest("md5").hexdigest() == hashlib.md5(b"").hexdigest()  # noqa: S324 - a checksum


S3_STATES = {"md5": "a" * 32, "crc64nvme": "b" * 16, "crc32": "c" * 8}


@pytest.mark.parametrize(
    ("stated", "given", "verified"),
    [
        # An object uploaded without a checksum of its own: its CRC64NVME, not its ETag's MD5.
        (S3_STATES, None, {"crc64nvme": "b" * 16}),
        # A stated sha256 is computed anyway and makes the others redundant.
        ({**S3_STATES, "sha256": "d" * 64}, None, {"sha256": "d" * 64}),
        # MD5 before a 32-bit CRC.
        ({"md5": "a" * 32, "crc32c": "e" * 8, "crc32": "c" * 8}, None, {"md5": "a" * 32}),
        ({"crc32c": "e" * 8, "crc32": "c" * 8}, None, {"crc32c": "e" * 8}),
        # The user's checksum is always verified, with the stated sha256 when there is one.
        ({**S3_STATES, "md5": "f" * 32}, "md5", {"md5": "f" * 32}),
        ({"sha256": "d" * 64, "md5": "f" * 32}, "md5", {"sha256": "d" * 64, "md5": "f" * 32}),
        ({**S3_STATES, "sha256": "d" * 64}, "sha256", {"sha256": "d" * 64}),
        ({}, None, {}),
    ],
)
def test_the_sha256_and_at_most_one_other_checksum_are_verified(stated, given, verified):
    assert checksums_to_verify(stated, given=given) == verified
    assert second_algorithm(verified) == next((a for a in verified if a != "sha256"), None)
