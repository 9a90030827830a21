"""Recovery: the server process is killed (SIGKILL) in the middle of a job and started again."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.helpers.data import KEPLER
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.servers import RangeHTTPServer


@pytest.fixture
def server(tmp_path):
    proc = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    proc.start()
    yield proc
    proc.stop()


def test_kill_during_slow_download_then_restart_resumes(server, tmp_path):
    payload = os.urandom(6 * 1024 * 1024)
    served = tmp_path / "www"
    served.mkdir()
    (served / "survey.bin").write_bytes(payload)
    with RangeHTTPServer(served, throttle_bytes_per_s=1_500_000) as http:
        job = server.create_job({"source": http.url("survey.bin"), "destination": "staging/survey"})
        assert job["method"] == "download"
        server.wait_for(job["id"], lambda j: j["progress"]["bytes_done"] > 1_000_000, timeout=30)

        server.kill()
        dest = server.root_dir / "staging" / "survey"
        part = dest / "survey.bin.part"
        assert part.exists() and 0 < part.stat().st_size < len(payload)
        assert not (dest / "survey.bin").exists()

        server.start()
        done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded", done

        # Resumed where the partial file ended, not from byte 0.
        gets = http.requests_for("survey.bin", "GET")
        assert gets[-1].header("Range") is not None and gets[-1].header("Range") != "bytes=0-"
        assert gets[-1].header("If-Range")

    final = dest / "survey.bin"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert not list(server.root_dir.rglob("*.part"))
    assert not [p for p in dest.iterdir() if p.name.startswith(".staging-")]
    manifest = server.request("GET", f"jobs/{job['id']}/manifest").json()
    assert manifest["objects"][0]["sha256"] == hashlib.sha256(payload).hexdigest()
    log = server.request("GET", f"jobs/{job['id']}/log").json()["lines"]
    assert any("resuming" in line["message"] for line in log)


def test_kill_during_conversion_then_restart_completes(server, tmp_path):
    # A large CSV (10M rows, 100 chunks) so that the conversion is still running when the server dies:
    # 15 chunks converted in 0.7 s here, and a CI machine once finished them before the kill.
    csv = tmp_path / "big.csv"
    rows, chunk_rows = 10_000_000, 100_000
    with open(csv, "w") as fh:
        fh.write("TIME,FLUX,QUALITY\n")
        block = "".join(f"{i * 0.0204:.6f},{1000 + (i % 997) * 0.5:.3f},{i % 8}\n" for i in range(100_000))
        for _ in range(rows // 100_000):
            fh.write(block)
    job = server.create_job(
        {
            "source": str(csv),
            "destination": "staging/big",
            "convert": {"format": "parquet", "chunk_rows": chunk_rows},
        }
    )
    seen = server.wait_for(
        job["id"],
        lambda j: j["progress"]["chunks_done"] >= 2 or j["state"] not in ("queued", "running"),
        timeout=60,
    )
    assert seen["state"] == "running" and seen["progress"]["chunks_done"] < 50, seen
    server.kill()

    server.start()
    done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=120)
    assert done["state"] == "succeeded", done
    chunks = server.request("GET", f"jobs/{job['id']}/chunks").json()["chunks"]
    assert [c["index"] for c in chunks] == list(range(rows // chunk_rows))
    assert sum(c["rows"] for c in chunks) == rows
    assert not list(server.root_dir.rglob("*.part"))
    log = server.request("GET", f"jobs/{job['id']}/log").json()["lines"]
    assert any("stopped while this job ran" in line["message"] for line in log), log

    import pyarrow.parquet as pq

    dest = server.root_dir / "staging" / "big"
    table = pq.read_table([dest / c["path"] for c in chunks])
    assert table.num_rows == rows
    assert table.column("QUALITY").to_pylist()[:10] == [i % 8 for i in range(10)]


def test_restart_while_paused_keeps_the_job_paused(server, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    (served / KEPLER.name).write_bytes(KEPLER.read_bytes())
    with RangeHTTPServer(served, throttle_bytes_per_s=300_000) as http:
        job = server.create_job({"source": http.url(KEPLER.name), "destination": "staging/paused"})
        server.wait_for(job["id"], lambda j: j["progress"]["bytes_done"] > 100_000, timeout=30)
        paused = server.request("POST", f"jobs/{job['id']}/pause").json()
        assert paused["state"] == "paused"
        server.stop()
        server.start()
        assert server.job(job["id"])["state"] == "paused"
        assert server.request("POST", f"jobs/{job['id']}/resume").status_code == 200
        done = server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded", done
    staged = server.root_dir / "staging" / "paused" / KEPLER.name
    assert staged.read_bytes() == KEPLER.read_bytes()
    assert not list(server.root_dir.rglob("*.part"))
