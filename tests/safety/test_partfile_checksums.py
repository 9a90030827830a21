"""PartFile.commit(checksums=...): the bytes must match the digests expected, else nothing is published."""

from __future__ import annotations

import hashlib
import io
import os
import zlib

import pytest
from awscrt import checksums as crt

from jupyter_staging.errors import ChecksumMismatch, SizeMismatch, VerificationFailed
from jupyter_staging.safety.copying import copy_file, copy_stream
from jupyter_staging.safety.partfile import PartFile, part_path

DATA = os.urandom(2 * 1024 * 1024 + 777)
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()  # noqa: S324 - the checksum under test
#: Every algorithm a part file verifies, each digest of DATA as hex of the big-endian value for a CRC (as S3's
#: x-amz-checksum-* headers decode).
DIGESTS = {
    "sha256": SHA256,
    "md5": MD5,
    "crc64nvme": crt.crc64nvme(DATA).to_bytes(8, "big").hex(),
    "crc32c": crt.crc32c(DATA).to_bytes(4, "big").hex(),
    "crc32": zlib.crc32(DATA).to_bytes(4, "big").hex(),
}


def one_digit_off(hexdigest: str) -> str:
    """``hexdigest`` with its last hex digit changed."""
    return hexdigest[:-1] + ("0" if hexdigest[-1] != "0" else "1")


def written(path, *, second: str | None = None) -> PartFile:
    out = PartFile(path, second=second)
    out.write(DATA)
    return out


def nothing_published(path) -> bool:
    return not path.exists() and not part_path(path).exists()


@pytest.mark.parametrize("second", [None, "md5", "crc64nvme", "crc32c", "crc32"])
def test_matching_checksums_publish_and_return_size_and_sha256(tmp_path, second):
    """Each digest is taken as the bytes are written (``second``) or by reading the part at commit."""
    target = tmp_path / "a.fits"
    out = written(target, second=second)

    expected = {algorithm: digest.upper() for algorithm, digest in DIGESTS.items()}
    assert out.commit(len(DATA), checksums=expected) == (len(DATA), SHA256)
    assert target.read_bytes() == DATA and not part_path(target).exists()


@pytest.mark.parametrize("algorithm", list(DIGESTS))
def test_one_wrong_hex_digit_is_checksum_mismatch_and_publishes_nothing(tmp_path, algorithm):
    target = tmp_path / "a.fits"
    right = DIGESTS[algorithm]
    out = written(target, second=None if algorithm == "sha256" else algorithm)

    with pytest.raises(ChecksumMismatch) as info:
        out.commit(len(DATA), checksums={algorithm: one_digit_off(right)})

    assert info.value.code == "checksum_mismatch"
    assert isinstance(info.value, VerificationFailed)
    message = info.value.message
    assert "a.fits" in message and algorithm in message
    assert one_digit_off(right)[:16] in message and right[:16] in message
    assert nothing_published(target)


def test_md5_not_tracked_while_writing_is_computed_at_commit(tmp_path):
    target = tmp_path / "a.bin"
    out = written(target)
    assert "md5" not in out.hexdigests()
    with pytest.raises(ChecksumMismatch):
        out.commit(checksums={"md5": one_digit_off(MD5)})
    assert nothing_published(target)

    out = written(target)
    assert out.commit(checksums={"md5": MD5}) == (len(DATA), SHA256)


def test_wrong_size_is_size_mismatch_before_any_checksum(tmp_path):
    target = tmp_path / "a.bin"
    out = written(target, second="md5")

    with pytest.raises(SizeMismatch) as info:
        out.commit(len(DATA) + 1, checksums={"sha256": SHA256})

    assert info.value.code == "size_mismatch" and isinstance(info.value, VerificationFailed)
    assert f"expected {len(DATA) + 1}" in info.value.message
    assert nothing_published(target)


def test_unknown_algorithm_is_refused_not_ignored(tmp_path):
    target = tmp_path / "a.bin"
    out = written(target)
    with pytest.raises(VerificationFailed) as info:
        out.commit(checksums={"sha512": "de" * 64})
    assert not isinstance(info.value, ChecksumMismatch) and "sha512" in info.value.message
    assert nothing_published(target)


def test_resume_rehashes_the_existing_part_with_md5_too(tmp_path):
    target = tmp_path / "a.bin"
    first = PartFile(target, second="md5")
    first.write(DATA[:1_000_000])
    first.close()

    out = PartFile(target, resume=True, second="md5")
    assert out.offset == 1_000_000
    out.write(DATA[1_000_000:])

    assert out.hexdigests() == {"sha256": SHA256, "md5": MD5}
    assert out.commit(len(DATA), checksums={"sha256": SHA256, "md5": MD5})[1] == SHA256


def test_restart_forgets_the_md5_of_thrown_away_bytes(tmp_path):
    out = PartFile(tmp_path / "a.bin", second="md5")
    out.write(b"old version bytes")
    out.restart()
    out.write(DATA)
    assert out.commit(checksums={"md5": MD5, "sha256": SHA256}) == (len(DATA), SHA256)


@pytest.mark.parametrize("step", [64 * 1024, 8 * 1024 * 1024])
def test_copy_file_path_computes_md5_over_every_byte(tmp_path, step):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    out = PartFile(tmp_path / "dest" / "a.bin", second="md5")
    copy_file(src, out, step=step)
    assert out.hexdigests() == {"sha256": SHA256, "md5": MD5}
    out.commit(len(DATA), checksums={"md5": MD5})


def test_copy_stream_path_computes_md5(tmp_path):
    out = PartFile(tmp_path / "a.bin", second="md5")
    copy_stream(io.BytesIO(DATA), out, block_size=100_000)
    with pytest.raises(ChecksumMismatch):
        out.commit(checksums={"md5": one_digit_off(MD5)})
    assert nothing_published(tmp_path / "a.bin")


def test_a_digest_named_at_the_first_write_is_hashed_as_the_bytes_come(tmp_path):
    """``second_for`` (a checksum the source stated only in its answer's headers) is asked once, at the first
    write of an empty part, and its digest follows every byte, also after a restart (kept, not asked again); a
    part resumed from bytes already written is not asked (those bytes were not hashed with it)."""
    asked: list[int] = []
    out = PartFile(tmp_path / "a.bin")
    out.second_for = lambda: asked.append(out.offset) or "md5"
    out.write(DATA[:1000])
    out.write(DATA[1000:])
    assert asked == [0] and out.hexdigests()["md5"] == MD5
    out.restart()
    out.write(DATA)
    assert asked == [0] and out.hexdigests() == {"sha256": SHA256, "md5": MD5}
    out.close()

    resumed = PartFile(tmp_path / "a.bin", resume=True)
    resumed.second_for = lambda: asked.append(resumed.offset) or "md5"
    resumed.write(b"more")
    assert asked == [0] and "md5" not in resumed.hexdigests()
    resumed.discard()


@pytest.mark.parametrize("named", [None, "sha256", "no-such-digest"])
def test_a_first_write_naming_no_other_digest_hashes_only_the_sha256(tmp_path, named):
    out = PartFile(tmp_path / "a.bin")
    out.second_for = lambda: named
    out.write(DATA)
    assert out.hexdigests() == {"sha256": SHA256}
    assert out.commit(checksums={"md5": MD5}) == (len(DATA), SHA256)  # read back at commit, as before
