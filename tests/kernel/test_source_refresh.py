"""``%stage`` of a presigned URL signed again for a job paused past its URL's lifetime: the magic used to
return the paused job with its expired URL (its resume failed ``source_expired``); now the job takes the
new URL (``Job.source_refreshed``, one printed line) and resumes with it. In-process engine, a Range HTTP
server on 127.0.0.1 refusing expired SigV4 URLs."""

from __future__ import annotations

import hashlib
import os
import time

from tests.engine.test_source_refresh import NEW, OLD, signed, wait_until


def test_stage_magic_refreshes_the_url_of_a_paused_job(shell, tmp_path, range_server, capsys):
    payload = os.urandom(1_200_000)
    (range_server.root / "k.bin").write_bytes(payload)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 300_000
    job = shell.run_line_magic("stage", f"{signed(range_server.url('k.bin'), OLD, lifetime=2)} out")
    wait_until(lambda: job.refresh().progress["bytes_done"] > 150_000)
    job.pause()
    time.sleep(3.5)
    capsys.readouterr()

    again = shell.run_line_magic("stage", f"{signed(range_server.url('k.bin'), NEW, lifetime=600)} out")
    assert again.id == job.id and again.source_refreshed and again.state == "paused"
    printed = capsys.readouterr().out
    assert "presigned URL refreshed" in printed and "resume it" in printed
    assert OLD not in printed and NEW not in printed
    range_server.throttle_bytes_per_s = 0
    again.resume()
    again.wait(timeout=60)
    assert again.state == "succeeded"
    assert (
        hashlib.sha256((tmp_path / "out" / "k.bin").read_bytes()).digest() == hashlib.sha256(payload).digest()
    )
