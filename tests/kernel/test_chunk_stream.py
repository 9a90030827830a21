"""Chunks as a stream: ``for chunk in job.iter_chunks(): df = chunk.to_pandas(); chunk.ack()``."""

from __future__ import annotations

import os

import pytest

from jupyter_staging.engine import entries as manifest_entries
from jupyter_staging.kernel import api
from jupyter_staging.kernel.job import JobFailed
from tests.helpers.data import latin1_past_inference, wait_until
from tests.helpers.servers import RangeHTTPServer


def write_csv(path, rows):
    with open(path, "w") as fh:
        fh.write("TIME,FLUX,QUALITY\n")
        for start in range(0, rows, 100_000):
            fh.writelines(
                f"{i * 0.0204:.6f},{1000 + (i % 997) * 0.5:.3f},{i % 8}\n"
                for i in range(start, start + 100_000)
            )


def test_consume_and_ack_chunks_while_the_job_runs(local_backend, tmp_path):
    csv = tmp_path / "lightcurves.csv"
    write_csv(csv, 3_000_000)
    job = api.stage(
        csv, "stream", to_parquet=True, chunk_rows=200_000, cleanup_policy="delete_on_ack", show=False
    )
    seen, states_when_read, rows = [], [], 0
    for chunk in job.iter_chunks(poll=0.05, timeout=300):
        states_when_read.append(job.state)
        frame = chunk.to_pandas()
        assert len(frame) == chunk.rows
        assert frame["QUALITY"].iloc[0] == (chunk.index * 200_000) % 8
        rows += len(frame)
        path = chunk.path
        chunk.ack()
        assert chunk.state == "acked"
        assert not path.exists()  # delete_on_ack frees the space at once
        seen.append(chunk.index)
    assert seen == list(range(15))
    assert rows == 3_000_000
    assert states_when_read[0] == "running"  # the first part was read while the job still ran
    # every chunk acked under delete_on_ack: its manifest and folder went with the last, the job expired
    assert job.refresh().state == "expired"


def test_iter_chunks_raises_when_the_job_fails(local_backend, tmp_path, shared_data):
    with pytest.raises(JobFailed) as info:
        for _ in api.stage(
            shared_data / "allsky_rosat.fits", "img", to_parquet=True, hdu=0, show=False
        ).iter_chunks():
            pass
    assert info.value.code == "conversion_failed"


def test_a_failed_entry_does_not_stop_the_chunks_after_it(local_backend, tmp_path, shared_data):
    """A manifest whose first entry cannot be staged: the stream skips it, yields the entries staged after
    it (it yielded nothing and raised), then raises ``partial``."""
    entries = {
        "a_missing": str(tmp_path / "nothere.fits"),
        "kepler": str(shared_data / "kplr010666592-2009131110544_slc.fits"),
        "tess": str(shared_data / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"),
    }
    job = api.stage(entries, "m", show=False)
    got = []
    with pytest.raises(JobFailed) as info:
        for chunk in job.iter_chunks(poll=0.05, timeout=120):
            got.append((chunk.index, chunk.path.parent.name))
    assert info.value.code == "partial"
    assert got == [(1, "kepler"), (2, "tess")]


@pytest.mark.timeout(180)
def test_withdrawn_parts_of_a_failed_conversion_do_not_stall_the_stream(local_backend, tmp_path, monkeypatch):
    """Entry ``a`` fails past its first Parquet parts, which are withdrawn (``expired``, no ``error``);
    the chunks of ``b`` after them come while the job still runs (a slow download keeps it running).
    (The stream waited at the first withdrawn part until the job ended.) One entry at a time, so that
    ``b``'s chunks are numbered after ``a``'s."""
    monkeypatch.setattr(manifest_entries, "MANIFEST_CONCURRENCY", 1)
    latin1_past_inference(tmp_path / "late.csv")
    (tmp_path / "b.csv").write_text("name,flux\n" + "".join(f"s{i},{i}.5\n" for i in range(300_000)))
    www = tmp_path / "www"
    www.mkdir()
    (www / "slow.bin").write_bytes(os.urandom(3_000_000))
    with RangeHTTPServer(www, throttle_bytes_per_s=100_000) as site:
        entries = {"a": str(tmp_path / "late.csv"), "b": str(tmp_path / "b.csv"), "c": site.url("slow.bin")}
        job = api.stage(entries, "out", to_parquet=True, chunk_rows=100_000, show=False)
        try:

            def a_withdrawn_b_ready() -> bool:
                chunks = job.refresh().chunks
                b_ready = [c for c in chunks if c["entry"] == "b" and c["state"] == "ready"]
                return any(c["state"] == "expired" for c in chunks) and len(b_ready) == 3

            wait_until(a_withdrawn_b_ready, timeout=120)
            assert job.state == "running"
            b_chunks = {c["index"] for c in job.chunks if c["entry"] == "b"}
            assert min(b_chunks) > min(c["index"] for c in job.chunks if c["state"] == "expired")
            got = []
            for chunk in job.iter_chunks(poll=0.05, timeout=20):
                got.append(chunk.index)
                if b_chunks <= set(got):
                    break
            assert job.refresh().state == "running"  # all of b came before the job ended
        finally:
            job.cancel()
