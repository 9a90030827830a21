"""A job that failed ``source_expired`` into a local folder keeps its part file, for a submit with the URL
presigned again to continue it. Once another job stages into that folder the failed job can no longer be
revived (only the newest job of a folder is), yet its part file stayed for good: beside the other job's
output (a ``k.bin.part`` no manifest lists), or set aside under another name when the other job wrote a file
of that name. Now the other job's submit removes what the failed job kept (its own files only, never the
user's), and the failed job's log says so.

Real parts: a Range HTTP server on 127.0.0.1 refusing expired SigV4 URLs with S3's 403, the SQLite job
database.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from tests.engine.test_source_refresh import signed, wait_until


def failed_with_a_kept_part(manager: StagingManager, server, data: bytes, **request) -> str:
    """A job of ``k.bin`` (``data``) into ``out`` (``request``: more of its request) that failed
    ``source_expired`` part way, keeping its ``k.bin.part`` (unless its cleanup policy removes it). Returns
    its id."""
    (server.root / "k.bin").write_bytes(data)
    server.check_expiry = True
    server.throttle_bytes_per_s = 300_000
    job, _ = manager.create(
        CreateJob(source=signed(server.url("k.bin"), "a" * 64, lifetime=2), destination="out", **request)
    )
    wait_until(lambda: manager.get(job.id).progress.bytes_done > 150_000)
    manager.pause(job.id)
    time.sleep(3.5)  # the URL's lifetime is over
    manager.resume(job.id)
    assert manager.wait(job.id, timeout=30).error.code == "source_expired"
    server.throttle_bytes_per_s = 0
    return job.id


def users_files(root: Path) -> dict[str, bytes]:
    """Files of the user's put beside the kept part: one named like a part file, never the job's."""
    files = {"notes.txt": b"my notes\n", "mine.bin.part": b"my own partial download\n"}
    for name, content in files.items():
        (root / "out" / name).write_bytes(content)
    return files


def test_another_job_into_the_folder_removes_the_part_file_the_expired_job_kept(
    manager: StagingManager, range_server, root: Path
):
    first = failed_with_a_kept_part(manager, range_server, os.urandom(1_500_000))
    assert (root / "out" / "k.bin.part").is_file(), "kept for a submit with the URL presigned again"
    mine = users_files(root)
    (range_server.root / "o.bin").write_bytes(b"o" * 1000)

    other, created = manager.create(
        CreateJob(source=signed(range_server.url("o.bin"), "b" * 64, lifetime=600), destination="out")
    )
    assert created and manager.wait(other.id, timeout=30).state.value == "succeeded"

    assert sorted(p.name for p in (root / "out").iterdir()) == sorted(["manifest.json", "o.bin", *mine])
    assert all((root / "out" / name).read_bytes() == content for name, content in mine.items())
    assert manager.get(first).state.value == "failed"
    lines = [line["message"] for line in manager.job_log(first)]
    assert any(other.id in line and "removed" in line for line in lines), lines


def test_a_job_writing_the_same_file_name_does_not_leave_the_kept_part_set_aside(
    manager: StagingManager, range_server, root: Path
):
    data = os.urandom(1_500_000)
    first = failed_with_a_kept_part(manager, range_server, data)
    assert (root / "out" / "k.bin.part").is_file()
    mine = users_files(root)

    # The same object with a checksum stated: another request (its key differs), the same file name.
    other, created = manager.create(
        CreateJob(
            source=signed(range_server.url("k.bin"), "c" * 64, lifetime=600),
            destination="out",
            checksum="sha256:" + hashlib.sha256(data).hexdigest(),
        )
    )
    assert created and other.id != first
    assert manager.wait(other.id, timeout=30).state.value == "succeeded"

    assert sorted(p.name for p in (root / "out").iterdir()) == sorted(["k.bin", "manifest.json", *mine])
    assert (root / "out" / "k.bin").read_bytes() == data
    assert all((root / "out" / name).read_bytes() == content for name, content in mine.items())


def test_a_job_replacing_the_folder_removes_the_scratch_folder_an_expired_replacing_job_kept(
    manager: StagingManager, range_server, root: Path
):
    (range_server.root / "k.bin").write_bytes(b"k" * 1000)
    done, _ = manager.create(
        CreateJob(source=signed(range_server.url("k.bin"), "a" * 64, lifetime=600), destination="out")
    )
    assert manager.wait(done.id, timeout=30).state.value == "succeeded"
    # k.bin changed: the same request stages beside the output (a scratch folder), and its URL expires.
    first = failed_with_a_kept_part(manager, range_server, os.urandom(1_500_000))
    assert first != done.id
    scratch = [p for p in root.iterdir() if p.name.startswith(".out.staging-")]
    assert [p.name for p in scratch] == [f".out.staging-{first[:8]}"]
    assert (scratch[0] / "k.bin.part").is_file()

    (range_server.root / "o.bin").write_bytes(b"o" * 1000)
    other, created = manager.create(
        CreateJob(
            source=signed(range_server.url("o.bin"), "b" * 64, lifetime=600),
            destination="out",
            if_exists="refresh",
        )
    )
    assert created and manager.wait(other.id, timeout=30).state.value == "succeeded"

    assert sorted(p.name for p in root.iterdir()) == ["out"], "no scratch folder left"
    assert sorted(p.name for p in (root / "out").iterdir()) == ["manifest.json", "o.bin"]
    assert manager.get(first).state.value == "failed"


def test_under_delete_always_an_expired_url_keeps_nothing_and_says_nothing_is_kept(
    manager: StagingManager, range_server, root: Path
):
    """``delete_always`` removes a failed job's output: a ``source_expired`` failure under it keeps no part
    file, its log does not say the bytes are kept (it said so, then that the output was removed), and a
    submit with the URL presigned again is a new job, not the failed one continued."""
    first = failed_with_a_kept_part(
        manager, range_server, os.urandom(1_500_000), cleanup_policy="delete_always"
    )
    assert not (root / "out" / "k.bin.part").exists()
    lines = [line["message"] for line in manager.job_log(first)]
    assert not any("are kept" in line for line in lines), lines
    again, created = manager.create(
        CreateJob(
            source=signed(range_server.url("k.bin"), "b" * 64, lifetime=600),
            destination="out",
            cleanup_policy="delete_always",
        )
    )
    assert created and again.id != first
