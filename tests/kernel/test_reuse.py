"""Re-running a notebook: ``stage()``, ``%stage`` and ``%%stage`` send ``if_exists``, ``checksum``, ``unpack``
and ``decompress``; a job answered ``up_to_date`` returns at once, with one line instead of a widget."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from jupyter_staging.engine.models import CreateJob
from jupyter_staging.errors import InvalidRequest
from jupyter_staging.kernel import api
from jupyter_staging.kernel.backends import Backend, LocalBackend
from jupyter_staging.kernel.job import Job
from tests.helpers.data import KEPLER, SPITZER

KEPLER_SHA256 = "sha256:" + hashlib.sha256(KEPLER.read_bytes()).hexdigest()
SPITZER_MD5 = "md5:" + hashlib.md5(SPITZER.read_bytes()).hexdigest()  # noqa: S324 - a checksum, not security
URL = "https://example.org/kplr.fits"


class Recorder(Backend):
    """Records each ``POST /jobs`` body and answers with ``answer`` (plus the body's destination); counts
    every later call, so a test can see that nothing was asked."""

    def __init__(self, root: Path, answer: dict[str, Any] | None = None) -> None:
        self.root_dir = root
        self.answer = answer or {"state": "queued"}
        self.sent: list[dict[str, Any]] = []
        self.calls: list[str] = []

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(body)
        return {"id": "1", "name": "k", "destination": body.get("destination", ""), **self.answer}

    def get(self, job_id: str) -> dict[str, Any]:
        self.calls.append("get")
        return {"id": job_id, "name": "k", "destination": "k", "state": "succeeded"}

    def wait(self, job_id: str, timeout: float, poll: float) -> dict[str, Any]:
        self.calls.append("wait")
        return self.get(job_id)

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        self.calls.append("chunks")
        return []


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    backend = Recorder(tmp_path)
    monkeypatch.setattr(api, "_backend", backend)
    monkeypatch.chdir(tmp_path)
    return backend


@pytest.fixture
def requests_seen(monkeypatch):
    """The :class:`CreateJob` requests the local backend's manager receives (the backend of this test must
    be a :class:`LocalBackend`, set up before this fixture runs)."""
    backend = api.default_backend()
    assert isinstance(backend, LocalBackend)
    seen: list[CreateJob] = []
    create = backend.manager.create

    def spy(request: CreateJob, owner: str | None = None) -> Any:
        seen.append(request)
        return create(request, owner)

    monkeypatch.setattr(backend.manager, "create", spy)
    return seen


def archives(folder: Path) -> tuple[Path, Path]:
    """``lc.tar.gz`` holding the Kepler light curve, and ``lc.fits.gz``, in ``folder``."""
    tar = folder / "lc.tar.gz"
    with tarfile.open(tar, "w:gz") as archive:
        archive.add(KEPLER, arcname=KEPLER.name)
    gz = folder / "lc.fits.gz"
    with KEPLER.open("rb") as raw, gzip.open(gz, "wb") as packed:
        shutil.copyfileobj(raw, packed)
    return tar, gz


# -- what stage() sends --------------------------------------------------------------------------------------


def test_stage_sends_the_reuse_options_only_when_asked(recorder, tmp_path):
    api.stage(URL)
    assert recorder.sent[-1] == {"source": URL, "cleanup_policy": "retain"}

    api.stage(URL, "k", refresh=True, checksum=KEPLER_SHA256, unpack=True, decompress=True)
    body = recorder.sent[-1]
    assert (body["if_exists"], body["checksum"]) == ("refresh", KEPLER_SHA256)
    assert body["unpack"] is True and body["decompress"] is True

    api.stage(URL, if_exists="error")
    assert recorder.sent[-1]["if_exists"] == "error" and "unpack" not in recorder.sent[-1]
    api.stage(URL, if_exists="reuse")
    assert "if_exists" not in recorder.sent[-1]


def test_manifest_entries_may_state_a_checksum(recorder, tmp_path):
    api.stage({"lc": "data/lc.fits", "cat": {"source": "https://x.org/cat.xml", "checksum": SPITZER_MD5}})
    assert recorder.sent[-1]["manifest"] == {
        "lc": str(tmp_path / "data" / "lc.fits"),
        "cat": {"source": "https://x.org/cat.xml", "checksum": SPITZER_MD5},
    }
    api.stage({"lc": {"source": "data/lc.fits"}})
    assert recorder.sent[-1]["manifest"] == {"lc": {"source": str(tmp_path / "data" / "lc.fits")}}


def test_bad_reuse_options_are_refused_before_any_request(recorder):
    with pytest.raises(InvalidRequest, match="if_exists"):
        api.stage(URL, if_exists="sometimes")
    with pytest.raises(InvalidRequest, match="refresh"):
        api.stage(URL, refresh=True, if_exists="error")
    with pytest.raises(InvalidRequest, match="'cat'.*unknown keys: url"):
        api.stage({"cat": {"url": "https://x.org/cat.xml"}})
    with pytest.raises(InvalidRequest, match="'cat'"):
        api.stage({"cat": {"checksum": SPITZER_MD5}})
    assert recorder.sent == []


# -- an up-to-date answer ------------------------------------------------------------------------------------


def test_up_to_date_job_returns_at_once_with_one_line_and_no_widget(recorder, tmp_path, monkeypatch, capsys):
    shown: list[Job] = []
    monkeypatch.setattr(api, "_display", shown.append)
    monkeypatch.setattr(api, "has_widget_frontend", lambda: True)  # as in a Jupyter kernel
    monkeypatch.setattr(api, "in_ipython", lambda: True)
    recorder.answer = {"state": "succeeded", "up_to_date": True}

    job = api.stage(URL, "k", wait=True)
    assert job.up_to_date and job.state == "succeeded"
    assert shown == [] and recorder.calls == []  # no widget, no status poll
    assert capsys.readouterr().out == f"up to date: {tmp_path / 'k'} (no bytes moved)\n"
    assert "up to date" in repr(job)
    assert "succeeded, up to date" in job._repr_html_()  # the table a notebook shows says so too
    assert job.refresh().up_to_date  # a later status read describes the job, not that answer
    assert api.stage(URL, "k", wait=True, show=False).up_to_date
    assert capsys.readouterr().out == ""

    recorder.answer = {"state": "queued"}
    job = api.stage(URL, "k")
    assert not job.up_to_date and shown == [job]
    assert capsys.readouterr().out == ""


def test_job_up_to_date_reads_the_job_json(recorder):
    assert Job({"id": "1", "state": "succeeded", "up_to_date": True}, recorder).up_to_date is True
    assert Job({"id": "1", "state": "succeeded", "up_to_date": False}, recorder).up_to_date is False
    assert Job({"id": "1", "state": "succeeded"}, recorder).up_to_date is False


def test_waiting_for_a_finished_job_asks_nothing(recorder):
    job = Job({"id": "1", "name": "k", "state": "succeeded", "destination": "k"}, recorder)
    assert job.wait(timeout=0).state == "succeeded"
    assert job.wait(progress=True) is job
    assert recorder.calls == []


# -- through the in-process engine ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stage_options_reach_the_engine(local_backend, requests_seen, tmp_path):
    tar, gz = archives(tmp_path)
    job = api.stage(KEPLER, "lc", checksum=KEPLER_SHA256.upper().replace("SHA256", "sha256"), wait=True)
    assert job.state == "succeeded"
    request = requests_seen[-1]
    assert (request.checksum, request.if_exists) == (KEPLER_SHA256, "reuse")

    api.stage(tar, "unpacked", unpack=True, refresh=True)
    request = requests_seen[-1]
    assert (request.unpack, request.decompress, request.if_exists) == (True, False, "refresh")
    api.stage(gz, "decompressed", decompress=True, if_exists="error")
    request = requests_seen[-1]
    assert (request.unpack, request.decompress, request.if_exists) == (False, True, "error")

    api.stage({"lc": {"source": str(KEPLER), "checksum": KEPLER_SHA256}, "cat": SPITZER}, "inputs")
    manifest = requests_seen[-1].model_dump(exclude_none=True)["manifest"]
    assert manifest == {"lc": {"source": str(KEPLER), "checksum": KEPLER_SHA256}, "cat": str(SPITZER)}
    assert len(local_backend.list_jobs()) == len(requests_seen) == 4  # every request became a job


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stage_magic_flags_reach_the_engine(shell, requests_seen, tmp_path):
    tar, gz = archives(tmp_path)
    shell.user_ns.update(kepler=str(KEPLER), tar=str(tar), gz=str(gz))
    shell.run_line_magic("stage", f"$kepler lc --checksum {KEPLER_SHA256} --refresh --wait")
    request = requests_seen[-1]
    assert (request.checksum, request.if_exists) == (KEPLER_SHA256, "refresh")
    shell.run_line_magic("stage", "$tar unpacked --unpack --if-exists error")
    assert (requests_seen[-1].unpack, requests_seen[-1].if_exists) == (True, "error")
    shell.run_line_magic("stage", "$gz decompressed --decompress")
    assert (requests_seen[-1].decompress, requests_seen[-1].if_exists) == (True, "reuse")

    cell = f"lc: {{source: {KEPLER}, checksum: '{KEPLER_SHA256}'}}\ncat: {SPITZER}\n"
    shell.run_cell_magic("stage", "inputs --refresh", cell)
    request = requests_seen[-1]
    assert request.if_exists == "refresh"
    assert request.model_dump(exclude_none=True)["manifest"] == {
        "lc": {"source": str(KEPLER), "checksum": KEPLER_SHA256},
        "cat": str(SPITZER),
    }
    assert len(requests_seen) == 4


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_encoding_of_a_csv_reaches_the_converter_from_the_magic_and_the_api(
    shell, requests_seen, tmp_path, capsys
):
    """Without its encoding, ``%stage`` of a Latin-1 CSV prints a note naming the column kept as bytes.
    ``%stage ... --to-parquet --encoding latin-1`` and ``stage(..., encoding="cp1252")``: the Latin-1
    name is a string in the DataFrame; ``--encoding`` without ``--to-parquet`` is a usage error."""
    table = tmp_path / "names.csv"
    table.write_bytes("name,flux\nBeta \xc5ngstr\xf6m,2.5\n".encode("latin-1"))
    shell.user_ns.update(table=str(table))
    shell.run_line_magic("stage", "$table bytes --to-parquet --wait")
    assert "note: names.csv: column name kept as bytes (not UTF-8 text)" in capsys.readouterr().out
    shell.run_line_magic("stage", "$table t --to-parquet --encoding latin-1 --wait")
    assert requests_seen[-1].convert is not None and requests_seen[-1].convert.encoding == "iso8859-1"
    job = api.stage(table, "u", to_parquet=True, encoding="cp1252", wait=True, show=False)
    assert requests_seen[-1].convert is not None and requests_seen[-1].convert.encoding == "cp1252"
    assert job.to_pandas()["name"].tolist() == ["Beta Ångström"]
    with pytest.raises(UsageError, match=r"^--encoding apply to conversions; add --to-parquet$"):
        shell.run_line_magic("stage", "$table v --encoding latin-1")
    with pytest.raises(InvalidRequest, match="encoding apply to conversions"):
        api.stage(table, "w", encoding="latin-1")


@pytest.mark.parametrize(
    ("line", "flag"),
    [
        ("lc.fits --if-exists sometimes", "--if-exists"),
        ("lc.fits --checksum sha256:abc", "--checksum"),
        ("lc.fits --checksum crc32:0badf00d", "--checksum"),
        ("lc.fits --refresh --if-exists error", "--refresh"),
        ("lc.fits --chunk-rows many", "--chunk-rows"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_flag(shell, line, flag):
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("stage", line)
    message = str(info.value)
    assert flag in message and "\n" not in message.strip()


@pytest.mark.parametrize(
    "cell",
    [
        "lc: {source: lc.fits, checksum: sha256:abc}\n",
        "lc: {url: lc.fits}\n",
        '{"lc": {"source": "lc.fits", "checksum": 5}}',
        "lc: [lc.fits]\n",
    ],
)
def test_bad_manifest_entries_are_one_line_naming_the_entry(shell, cell):
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("stage", "inputs", cell)
    message = str(info.value)
    assert "entry 'lc'" in message and "\n" not in message.strip()


def test_help_lists_the_new_flags(shell):
    help_text = shell.find_line_magic("stage").__doc__
    for flag in ("--refresh", "--checksum", "--unpack", "--decompress", "--if-exists", "--to-parquet"):
        assert flag in help_text


# -- re-running: needs the engine's freshness check (jupyter_staging/engine/freshness.py) ------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rerunning_stage_is_up_to_date_with_the_same_paths(local_backend, tmp_path):
    first = api.stage(KEPLER, "k", to_parquet=True, wait=True)
    assert not first.up_to_date
    parts = {p: p.stat().st_mtime_ns for p in first.paths}
    started = time.monotonic()
    second = api.stage(KEPLER, "k", to_parquet=True, wait=True)
    assert time.monotonic() - started < 2.0
    assert second.up_to_date and second.state == "succeeded"
    assert second.paths == first.paths
    assert {p: p.stat().st_mtime_ns for p in second.paths} == parts  # no byte moved
    assert api.stage(KEPLER, "k", to_parquet=True, refresh=True, wait=True).up_to_date is False


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rerunning_the_magics_is_up_to_date(shell, tmp_path, capsys):
    shell.user_ns["kepler"] = str(KEPLER)
    first = shell.run_line_magic("stage", "$kepler k --to-parquet --wait")
    again = shell.run_line_magic("stage", "$kepler k --to-parquet --wait")
    assert again.up_to_date and again.paths == first.paths
    assert f"up to date: {tmp_path.resolve() / 'k'} (no bytes moved)" in capsys.readouterr().out

    cell = f"lc: {KEPLER}\ncat: {SPITZER}\n"
    paths = shell.run_cell_magic("stage", "inputs --wait", cell)
    assert shell.run_cell_magic("stage", "inputs --wait", cell) == paths
    assert "up to date" in capsys.readouterr().out
