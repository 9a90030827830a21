"""An upload in parts (S3 multipart, Azure blocks) is verified as a whole, not by its size only: the file
sent must still be the one staged (its SHA-256 the recorded one) and, on S3, the object must be made of the
file's parts (its composite checksum, SHA-256 of the parts' SHA-256 digests). Against moto's S3 and Azurite
on 127.0.0.1; the object stores are real, the files and objects are made to differ for real.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from jupyter_staging.destinations.objectstore import file_part_digests
from jupyter_staging.errors import JobInterrupted, VerificationFailed
from jupyter_staging.safety.control import JobControl
from tests.helpers.data import sha256
from tests.helpers.objectstore import RESULTS


def test_file_part_digests_cut_the_file_as_a_multipart_upload_does(tmp_path: Path) -> None:
    """Parts of ``part_size`` bytes, the last one shorter; a file ending at a boundary has no empty part."""
    for size in (0, 5, 16, 17, 32, 33):
        data = os.urandom(size)
        (tmp_path / "f").write_bytes(data)
        parts, whole = file_part_digests(tmp_path / "f", 16, "md5")
        expected = [hashlib.md5(data[i : i + 16]).digest() for i in range(0, max(size, 1), 16)]
        assert parts == expected and whole == hashlib.sha256(data).hexdigest(), size


def big_file(tmp_path: Path, job_id: str, size: int) -> tuple[Path, bytes]:
    """``size`` random bytes in ``tmp_path/scratch/<job_id>/big.bin``."""
    data = os.urandom(size)
    local = tmp_path / "scratch" / job_id / "big.bin"
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    return local, data


def other_first_byte(data: bytes) -> bytes:
    """``data`` with its first byte changed: never ``data`` itself (``b"x" + data[1:]`` was ``data`` when the
    random first byte happened to be ``x``, one run in 256)."""
    return bytes([data[0] ^ 0xFF]) + data[1:]


def test_an_upload_in_parts_of_a_file_that_is_not_the_one_staged_is_deleted_and_fails(store, tmp_path):
    """The recorded sha256 is not the file's (the file changed after it was staged): the parts each match
    what was read, the object's size is right, and still the upload fails and is deleted. Before, an upload
    in parts was checked by its size only and taken."""
    local, data = big_file(tmp_path, "job-3", store.parts_file_size)
    destination = store.small_parts_destination("job-3", f"{store.root}multi/job-3/", local.parent)
    with pytest.raises(VerificationFailed) as info:
        destination.put(
            local,
            "big.bin",
            size=len(data),
            sha256=sha256(other_first_byte(data)),
            content_type=None,
            control=JobControl(),
        )
    assert "SHA-256" in info.value.message
    assert store.keys_below("multi/job-3/") == set()
    assert local.exists()  # kept for another attempt


def test_a_multipart_object_is_compared_with_the_files_parts(s3_results, tmp_path):
    """The object's composite checksum is the one of the file's parts, found with the part size the store
    states (HeadObject ``PartNumber=1``): an object made of other bytes of the same size (here, another
    file uploaded under that key) is a mismatch, even with the file's own SHA-256 recorded."""
    store = s3_results
    local, data = big_file(tmp_path, "job-4", store.parts_file_size)
    destination = store.small_parts_destination("job-4", f"{store.root}multi/job-4/", local.parent)
    destination.put(
        local, "big.bin", size=len(data), sha256=sha256(data), content_type=None, control=JobControl()
    )
    key = "multi/job-4/big.bin"
    head = store.client.head_object(Bucket=RESULTS, Key=key, ChecksumMode="ENABLED")
    part_size = store.client.head_object(Bucket=RESULTS, Key=key, PartNumber=1)["ContentLength"]
    parts = [hashlib.sha256(data[i : i + part_size]).digest() for i in range(0, len(data), part_size)]
    assert len(parts) == 3
    assert (
        head["ChecksumSHA256"].split("-")[0]
        == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    )

    other = local.with_name("other.bin")
    other.write_bytes(data[:part_size] + os.urandom(len(data) - part_size))
    problem = destination._multipart_problem(head, other, key, sha256(other.read_bytes()))
    assert problem == "the stored composite SHA-256 differs from the one of the file's parts"
    assert destination._multipart_problem(head, other, key, sha256(data)).startswith("the file's SHA-256")
    local.write_bytes(data)
    assert destination._multipart_problem(head, local, key, sha256(data)) is None


def uploaded_in_parts(store, tmp_path: Path, job_id: str, size: int) -> tuple[object, Path, bytes, str]:
    """``size`` random bytes uploaded in parts to ``multi/<job_id>/big.bin``: (destination, the file
    written again at its scratch path, its bytes, the key)."""
    local, data = big_file(tmp_path, job_id, size)
    destination = store.small_parts_destination(job_id, f"{store.root}multi/{job_id}/", local.parent)
    destination.put(local, "big.bin", size=size, sha256=sha256(data), content_type=None, control=JobControl())
    local.write_bytes(data)
    return destination, local, data, f"multi/{job_id}/big.bin"


def test_an_object_ending_at_a_part_boundary_and_a_store_stating_no_checksum(s3_results, tmp_path):
    """Three whole parts (15 MiB of 5 MiB parts). The object's real multipart ETag (the MD5 of the parts'
    MD5 digests, ``-3``) is what a store without checksums states: it is compared with the file's parts,
    unless the object is encrypted with SSE-KMS (whose ETags are not MD5s: nothing to compare, no false
    rejection). A full-object SHA-256 is compared with the file's own."""
    store = s3_results
    destination, local, data, key = uploaded_in_parts(store, tmp_path, "job-5", 15 * 1024 * 1024)
    head = store.client.head_object(Bucket=RESULTS, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-3"')
    no_checksum = {k: v for k, v in head.items() if not k.startswith("Checksum")}
    assert destination._multipart_problem(no_checksum, local, key, sha256(data)) is None
    other = local.with_name("other.bin")
    other.write_bytes(os.urandom(len(data)))
    problem = destination._multipart_problem(no_checksum, other, key, sha256(other.read_bytes()))
    assert problem == "the stored multipart ETag differs from the one of the file's parts"
    kms = {**no_checksum, "ServerSideEncryption": "aws:kms"}
    assert destination._multipart_problem(kms, other, key, sha256(other.read_bytes())) is None
    full = {**no_checksum, "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256(data))).decode()}
    full["ChecksumType"] = "FULL_OBJECT"
    assert destination._multipart_problem(full, local, key, sha256(data)) is None
    problem = destination._multipart_problem(full, other, key, sha256(other.read_bytes()))
    assert problem == "the stored SHA-256 differs from the file's"


def test_a_store_that_gives_no_parts_checks_the_files_sha256_only(s3_results, tmp_path):
    """The HeadObject of part 1 fails (here the object is gone): the part size is unknown, so the
    composite checksum is not compared (never a false rejection) and the file's SHA-256 still is."""
    store = s3_results
    destination, local, data, key = uploaded_in_parts(store, tmp_path, "job-6", store.parts_file_size)
    head = store.client.head_object(Bucket=RESULTS, Key=key, ChecksumMode="ENABLED")
    store.client.delete_object(Bucket=RESULTS, Key=key)
    assert destination._multipart_problem(head, local, key, sha256(data)) is None
    wrong = destination._multipart_problem(head, local, key, sha256(b"other"))
    assert wrong == "the file's SHA-256 differs from the one recorded"


def test_a_cancel_stops_the_check_of_a_big_file(s3_results, tmp_path):
    """The file is read again to be checked: a pause or cancel stops that read (``JobControl.check``)."""
    store = s3_results
    destination, local, data, key = uploaded_in_parts(store, tmp_path, "job-7", store.parts_file_size)
    head = store.client.head_object(Bucket=RESULTS, Key=key, ChecksumMode="ENABLED")
    control = JobControl()
    control.interrupt("cancelled")
    with pytest.raises(JobInterrupted):
        destination._multipart_problem(head, local, key, sha256(data), control.check)


def test_an_object_put_in_one_request_is_checked_against_the_staged_file_without_a_checksum(
    s3_results, tmp_path
):
    """From a store that states no checksum, only an MD5 ETag (s3rver, older Ceph): the file sent is read
    again, its SHA-256 must be the one recorded when it was staged (before, only its MD5 was compared with
    the ETag, so a file changed after it was staged was taken) and its MD5 the ETag; under SSE-KMS (no MD5
    ETag) the SHA-256 is still compared. A stated SHA-256 is compared with the recorded one, no read."""
    store = s3_results
    local, data = big_file(tmp_path, "job-8", 3 * 1024 * 1024)
    destination = store.small_parts_destination("job-8", f"{store.root}single/job-8/", local.parent)
    destination.put(
        local, "big.bin", size=len(data), sha256=sha256(data), content_type=None, control=JobControl()
    )
    local.write_bytes(data)  # as staged, at its scratch path again
    head = store.client.head_object(Bucket=RESULTS, Key="single/job-8/big.bin", ChecksumMode="ENABLED")
    assert len(head["ETag"].strip('"')) == 32  # one request: the ETag is the MD5
    no_checksum = {k: v for k, v in head.items() if not k.startswith("Checksum")}
    assert destination._single_part_problem(no_checksum, local, sha256(data)) is None
    changed = sha256(other_first_byte(data))  # recorded for the file as it was staged; the file changed since
    assert destination._single_part_problem(no_checksum, local, changed) == (
        "the file's SHA-256 differs from the one recorded"
    )
    kms = {**no_checksum, "ServerSideEncryption": "aws:kms"}
    assert (
        destination._single_part_problem(kms, local, changed)
        == "the file's SHA-256 differs from the one recorded"
    )
    other = local.with_name("other.bin")
    other.write_bytes(os.urandom(len(data)))
    assert destination._single_part_problem(no_checksum, other, sha256(other.read_bytes())) == (
        "the stored MD5 (ETag) differs from the file's"
    )
    assert destination._single_part_problem(kms, other, sha256(other.read_bytes())) is None
    stated = {**no_checksum, "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256(data))).decode()}
    assert destination._single_part_problem(stated, other, sha256(data)) is None  # the store's word, no read
    assert (
        destination._single_part_problem(stated, local, changed)
        == "the stored SHA-256 differs from the file's"
    )
