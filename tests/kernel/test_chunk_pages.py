"""Pages of a job's chunks in the kernel: ``iter_chunks`` asks a real server only for the chunks from the
next one it waits for (``GET /jobs/{id}/chunks?offset&limit``), never the job's whole list on each poll;
``Job.chunk_page`` on both backends; a stream that pages through every path (page size 1)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from jupyter_staging.errors import InvalidRequest
from jupyter_staging.kernel import api
from jupyter_staging.kernel import job as job_module
from jupyter_staging.kernel.backends import ServerBackend
from jupyter_staging.kernel.job import Job, JobFailed
from tests.helpers.jupyter import JupyterServerProcess

FILES = 600


@pytest.fixture
def server(tmp_path):
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def small_files(folder, count: int):
    folder.mkdir()
    for i in range(count):
        (folder / f"f{i:04d}.txt").write_text(f"{i}\n" * 10)
    return folder


def test_iter_chunks_asks_a_server_for_pages_from_the_next_chunk(server, tmp_path):
    backend = ServerBackend(server.url, server.token, server.root_dir)
    listings: list[tuple[dict[str, list[str]], int]] = []

    def record(response, *args, **kwargs):
        if response.url.split("?")[0].endswith("/chunks"):
            listings.append((parse_qs(urlsplit(response.url).query), len(response.json()["chunks"])))

    backend._session.hooks["response"].append(record)
    source = small_files(tmp_path / "src", FILES)
    job = Job(backend.create({"source": str(source), "destination": "out"}), backend)
    assert [c.index for c in job.iter_chunks(poll=0.05, timeout=120)] == list(range(FILES))
    assert job.state == "succeeded"
    assert listings and all("offset" in query and "limit" in query for query, _ in listings), listings
    offsets = [int(query["offset"][0]) for query, _ in listings]
    assert offsets == sorted(offsets) and offsets[-1] > FILES // 2, offsets  # from the next chunk awaited
    # a page is at most twice what the last one gave, or a short one while stuck at a pending chunk: each
    # chunk is received a few times at most, not once per poll
    received = sum(rows for _, rows in listings)
    assert received <= 3 * FILES + job_module._FIRST_PAGE * len(listings), listings
    assert len(listings) < 4 or received < FILES * len(listings) / 2, listings

    page = job.chunk_page(FILES - 2, 5)
    assert [c["index"] for c in page["chunks"]] == [FILES - 2, FILES - 1] and page["total"] == FILES
    assert len(job.chunks) == FILES  # the Python API's whole list is kept
    with pytest.raises(InvalidRequest):
        job.chunk_page(-1)


def test_chunk_pages_in_process(local_backend, tmp_path, shared_data):
    job = api.stage(shared_data / "kplr010666592-2009131110544_slc.fits", "lc", to_parquet=True,
                    chunk_rows=5000, show=False).wait(timeout=120)  # fmt: skip
    assert job.chunk_page()["total"] == 3 and len(job.chunk_page()["chunks"]) == 3
    page = job.chunk_page(1, 1)
    assert page["total"] == 3 and [c["index"] for c in page["chunks"]] == [1]
    assert page["chunks"][0] == job.chunks[1]
    assert job.chunk_page(3) == {"chunks": [], "total": 3}
    for offset, limit in ((-1, None), (0, -1), (0, 10_001), (True, None)):
        with pytest.raises(InvalidRequest) as info:
            job.chunk_page(offset, limit)
        assert info.value.code == "invalid_request"


def test_a_stream_paged_one_chunk_at_a_time_skips_a_failed_entry(
    local_backend, tmp_path, shared_data, monkeypatch
):
    """Pages of one chunk: every chunk is still yielded once, in order, past a failed first entry (the
    chunks after the one a job ended before writing are read a page at a time too)."""
    monkeypatch.setattr(job_module, "_FIRST_PAGE", 1)
    monkeypatch.setattr(job_module, "_LARGEST_PAGE", 1)
    entries = {
        "a_missing": str(tmp_path / "nothere.fits"),
        "kepler": str(shared_data / "kplr010666592-2009131110544_slc.fits"),
        "tess": str(shared_data / "hlsp_tess-data-alerts_tess_phot_00025155310-s01_tess_v1_lc.fits"),
        "spitzer": str(shared_data / "spitzer_example_catalog.xml"),
    }
    job = api.stage(entries, "m", show=False)
    got = []
    with pytest.raises(JobFailed) as info:
        got.extend(chunk.index for chunk in job.iter_chunks(poll=0.05, timeout=120))
    assert info.value.code == "partial"
    assert got == [1, 2, 3]


def test_the_widget_grid_says_how_many_chunks_it_does_not_show():
    """The widget reads the first 400 chunks (a page) and the job's total: the grid says how many more."""
    from jupyter_staging.kernel.widgets import chunk_grid_html

    chunks = [{"index": i, "state": "ready", "path": f"f{i}"} for i in range(400)]
    grid = chunk_grid_html(chunks, 400, total=20_000)
    assert grid.count("<span") == 400 and "+19600" in grid
    assert "+" not in chunk_grid_html(chunks[:3], 400)  # a whole list, as before
