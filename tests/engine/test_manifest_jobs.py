"""Manifests of many sources: ``POST /jobs {"manifest": {...}}``, ``job.paths``, ``resolve()``, ``%%stage``.

Issue 6, acceptance 3: four entries, one of them a dead URL: three staged, the job ``failed`` with code
``partial``, ``job.paths`` has the three; ``resolve()`` maps a parameter dict. Real servers throughout: a
Jupyter server (pytest-jupyter), HTTP on 127.0.0.1 (tests/servers.py), the in-process engine for the
kernel side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from jupyter_staging import resolve
from jupyter_staging.errors import InvalidRequest, StagingError
from jupyter_staging.kernel import api
from jupyter_staging.kernel.job import Job, JobFailed
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER, SPITZER, TESS


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(range_server, shared_data):
    """Two real mission files and a text file over HTTP, and a URL that answers 404."""
    for path in (SPITZER, TESS, shared_data / "README.md"):
        shutil.copy(path, range_server.root / path.name)
    return {
        "catalog": range_server.url(SPITZER.name),
        "tess": range_server.url(TESS.name),
        "readme": range_server.url("README.md"),
        "dead": range_server.url("no-such-file.fits"),
    }


# -- the REST API ------------------------------------------------------------------------------------------


async def test_four_entries_one_dead_url_three_staged_and_the_job_is_partial(jp_fetch, jp_root_dir, served):
    manifest = {
        "lightcurve": str(KEPLER),
        "catalog": served["catalog"],
        "broken": served["dead"],
        "tess": served["tess"],
    }
    response = await post_job(jp_fetch, {"manifest": manifest, "destination": "inputs", "name": "inputs"})
    assert response.code == 201
    created = json.loads(response.body)
    assert created["source"] == "manifest:4 entries"
    assert created["entries"] == ["lightcurve", "catalog", "broken", "tess"]
    assert created["method"] == "download"

    job = await wait_for(jp_fetch, created["id"], timeout=60)
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "partial"
    assert (
        "3 of 4 entries staged" in job["error"]["message"]
        and "broken (source_not_found)" in job["error"]["message"]
    )
    assert job["progress"]["chunks_done"] == 3 and job["progress"]["chunks_total"] == 4

    folder = jp_root_dir / "inputs"
    expected = {
        "lightcurve": folder / "lightcurve" / KEPLER.name,
        "catalog": folder / "catalog" / SPITZER.name,
        "tess": folder / "tess" / TESS.name,
    }
    assert sha256(expected["lightcurve"]) == sha256(KEPLER)
    assert sha256(expected["catalog"]) == sha256(SPITZER)
    assert sha256(expected["tess"]) == sha256(TESS)
    assert not (folder / "broken").exists()
    assert not list(folder.rglob("*.part"))

    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    # One chunk per entry, in the manifest's order.
    assert [(c["index"], c["entry"], c["state"]) for c in chunks] == [
        (0, "lightcurve", "ready"),
        (1, "catalog", "ready"),
        (2, "broken", "pending"),
        (3, "tess", "ready"),
    ]
    assert chunks[2]["error"]["code"] == "source_not_found"
    assert all(c["error"] is None for i, c in enumerate(chunks) if i != 2)
    assert chunks[0]["path"] == f"lightcurve/{KEPLER.name}"

    written = json.loads((folder / "manifest.json").read_text())
    assert written == json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
    assert sorted(o["entry"] for o in written["objects"]) == ["catalog", "lightcurve", "tess"]
    entries = {e["name"]: e for e in written["entries"]}
    assert entries["broken"]["error"]["code"] == "source_not_found" and entries["broken"]["paths"] == []
    assert entries["tess"]["paths"] == [f"tess/{TESS.name}"] and entries["tess"]["error"] is None
    assert entries["lightcurve"]["source"] == str(KEPLER)

    lines = json.loads((await jp_fetch(*API, "jobs", job["id"], "log")).body)["lines"]
    assert any("entry broken" in line["message"] for line in lines)


async def test_all_entries_staged_means_succeeded(jp_fetch, jp_root_dir, served):
    body = {"manifest": {"catalog": served["catalog"], "readme": served["readme"]}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    assert job["name"] == "manifest" and job["destination"] == "staging/manifest"
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert job["error"] is None
    manifest = json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
    assert [e["error"] for e in manifest["entries"]] == [None, None]


async def test_manifest_requests_are_validated(jp_fetch, served):
    ok = served["readme"]
    for body in (
        {"manifest": {"a": ok}, "source": ok},
        {"destination": "x"},
        {"manifest": {}},
        {"manifest": {"../up": ok}},
        {"manifest": {".hidden": ok}},
        {"manifest": {"a/b": ok}},
        {"manifest": {"": ok}},
        {"manifest": {"Reads": ok, "reads": ok}},
        {"manifest": {"manifest.json": ok}},
        {"manifest": {"a": ""}},
        {"manifest": {"a": 3}},
        {"manifest": ["a", ok]},
    ):
        error = await expect_error(post_job(jp_fetch, body), 400, "invalid_request")
        assert ok not in error["message"]
    error = await expect_error(
        post_job(jp_fetch, {"manifest": {"a": "ftp://host/x"}}), 400, "unsupported_source"
    )
    assert "'a'" in error["message"]
    await expect_error(
        post_job(jp_fetch, {"manifest": {"a": ok, "b": str(KEPLER)}, "method": "hardlink"}),
        400,
        "invalid_method",
    )
    # The same key twice in one JSON object is refused rather than silently collapsed.
    raw = f'{{"manifest": {{"a": "{ok}", "a": "{ok}"}}}}'
    await expect_error(jp_fetch(*API, "jobs", method="POST", body=raw), 400, "invalid_json")


# -- the kernel side: stage({...}), job.paths, resolve(), %%stage ----------------------------------------


@pytest.fixture
def local(tmp_path, monkeypatch):
    """The in-process engine on ``tmp_path`` (as a plain IPython or a script gets it)."""
    monkeypatch.chdir(tmp_path)
    backend = api.use_local(tmp_path, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield backend
    api.reset_backend()


@pytest.mark.slow
def test_job_paths_has_the_three_and_resolve_maps_a_parameter_dict(local, tmp_path, served):
    entries = {
        "lightcurve": KEPLER,
        "catalog": served["catalog"],
        "broken": served["dead"],
        "tess": served["tess"],
    }
    job = api.stage(entries, "inputs", show=False)
    with pytest.raises(JobFailed) as info:
        job.wait(timeout=60)
    assert info.value.code == "partial"
    assert job.entries == ["lightcurve", "catalog", "broken", "tess"]

    folder = tmp_path.resolve() / "inputs"
    assert job.paths == {
        "lightcurve": folder / "lightcurve" / KEPLER.name,
        "catalog": folder / "catalog" / SPITZER.name,
        "tess": folder / "tess" / TESS.name,
    }
    params = {
        "light_curve": "lightcurve",
        "catalogs": ["catalog", "tess", "broken", "lightcurves"],
        "fit": {"target": "tess", "options": ("catalog", 3, None), "lightcurve": 1.5},
        "label": "catalog of tess",
        "lightcurve": "lightcurve",
    }
    resolved = resolve(params, job)
    assert resolved == {
        "light_curve": str(folder / "lightcurve" / KEPLER.name),
        "catalogs": [
            str(folder / "catalog" / SPITZER.name),
            str(folder / "tess" / TESS.name),
            "broken",
            "lightcurves",
        ],
        "fit": {
            "target": str(folder / "tess" / TESS.name),
            "options": (str(folder / "catalog" / SPITZER.name), 3, None),
            "lightcurve": 1.5,
        },
        "label": "catalog of tess",
        "lightcurve": str(folder / "lightcurve" / KEPLER.name),
    }
    assert params["fit"]["target"] == "tess"  # a copy; the original is left alone
    assert resolve(params, {"tess": "/elsewhere/t.fits"})["fit"]["target"] == "/elsewhere/t.fits"

    plain = api.stage(KEPLER, "plain", wait=True, show=False)
    assert plain.paths == [tmp_path.resolve() / "plain" / KEPLER.name]  # one source: a list, as before
    with pytest.raises(InvalidRequest):
        resolve(params, plain)


@pytest.mark.slow
def test_entries_of_urls_are_fetched_concurrent_items_at_a_time(local, tmp_path, range_server):
    """A manifest of URLs, one file each, fetches ``concurrent_items`` files at once (8 by default), as a
    folder does; it used to be four at a time, whatever the setting (an archive that caps each connection
    then took twice as long)."""
    import os

    for i in range(12):
        (range_server.root / f"f{i}.bin").write_bytes(os.urandom(800_000))
    range_server.throttle_bytes_per_s = 400_000  # each file takes about 2 s
    job = api.stage({f"e{i}": range_server.url(f"f{i}.bin") for i in range(12)}, "par", show=False)
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(list((tmp_path / "par").rglob("*.part"))))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        job.wait(timeout=60)
    finally:
        stop.set()
        watcher.join()
    assert job.state == "succeeded"
    assert local.manager.concurrent_items == 8
    assert 5 <= most <= 8, most
    assert set(job.paths) == {f"e{i}" for i in range(12)}
    for i in range(12):
        assert sha256(job.paths[f"e{i}"]) == sha256(range_server.root / f"f{i}.bin")


def test_entries_of_urls_share_kept_alive_connections(local, tmp_path, range_server):
    """The HEAD that lists each URL of a manifest and the GET that fetches it go over connections the job's
    items share and keep open (at most ``concurrent_items`` at once per phase), not over a new connection
    per request: on a real archive each new one is a TCP and a TLS handshake, two per file."""
    import os

    bodies = {f"g{i}.fits": os.urandom(10_000 + i) for i in range(40)}
    for name, body in bodies.items():
        (range_server.root / name).write_bytes(body)
    job = api.stage({name[:-5]: range_server.url(name) for name in bodies}, "pooled", wait=True, show=False)
    assert job.state == "succeeded"
    for name, body in bodies.items():
        assert job.paths[name[:-5]].read_bytes() == body
    asked = [r for r in range_server.requests if r.path.startswith("/g")]
    assert sorted(r.method for r in asked) == ["GET"] * 40 + ["HEAD"] * 40
    connections = {r.client_port for r in asked}
    assert len(connections) <= 2 * local.manager.concurrent_items, len(connections)


@pytest.mark.slow
def test_a_manifest_converted_to_parquet_maps_names_to_datasets(local, tmp_path, served):
    job = api.stage(
        {"lc": KEPLER, "catalog": served["catalog"], "readme": served["readme"]},
        "tables",
        to_parquet=True,
        chunk_rows=5000,
        wait=True,
        show=False,
    )
    folder = tmp_path.resolve() / "tables"
    stem = KEPLER.name.removesuffix(".fits")
    assert job.paths == {
        "lc": folder / "lc" / f"{stem}.parquet",
        "catalog": folder / "catalog" / f"{SPITZER.stem}.parquet" / "part-00000.parquet",
        "readme": folder / "readme" / "README.md",
    }
    assert len(pd.read_parquet(job.paths["lc"])) == 14280
    assert {c["entry"] for c in job.chunks} == {"lc", "catalog", "readme"}


# -- %%stage ---------------------------------------------------------------------------------------------


@pytest.fixture
def shell(local):
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_staging")
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()


@pytest.mark.slow
def test_cell_magic_takes_yaml_or_json_and_returns_the_paths(shell, tmp_path, served):
    shell.user_ns["folder"] = "cells"
    yaml_cell = f"# inputs of the fit\nlightcurve: {KEPLER}\ncatalog: {served['catalog']}\n"
    result = shell.run_cell(f"%%stage $folder --wait\n{yaml_cell}")
    assert result.success, result.error_in_exec
    folder = tmp_path.resolve() / "cells"
    assert result.result == {
        "lightcurve": folder / "lightcurve" / KEPLER.name,
        "catalog": folder / "catalog" / SPITZER.name,
    }

    json_cell = json.dumps({"readme": served["readme"]})
    job = shell.run_cell(f"%%stage json-cell\n{json_cell}").result
    assert isinstance(job, Job) and job.entries == ["readme"]
    job.wait(timeout=60)
    assert job.paths == {"readme": tmp_path.resolve() / "json-cell" / "readme" / "README.md"}


@pytest.mark.slow
def test_cell_magic_errors_are_one_line(shell, served):
    result = shell.run_cell(f"%%stage partial --wait\nok: {served['readme']}\nbroken: {served['dead']}\n")
    message = str(result.error_in_exec)
    assert "staging error [partial]" in message and "broken (source_not_found)" in message
    assert "get_job(" in message and ".paths" in message

    for cell, expected in (
        ("# only a comment\n", "must map entry names"),
        ("- a\n- b\n", "must map entry names"),
        ("a: [1, 2]\n", "must be text"),
        ("a: b: c\n", "neither JSON nor YAML"),
        ("bad/name: x\n", "staging error [invalid_request]"),
    ):
        result = shell.run_cell(f"%%stage\n{cell}")
        assert expected in str(result.error_in_exec), (cell, result.error_in_exec)


@pytest.mark.slow
def test_a_manifest_into_object_storage_maps_names_to_object_uris(local, s3_env, served):
    s3, bucket = s3_env
    job = api.stage(
        {"lc": KEPLER, "readme": served["readme"]},
        f"s3://{bucket}/runs/",
        to_parquet=True,
        chunk_rows=5000,
        wait=True,
        show=False,
    )
    prefix = f"s3://{bucket}/runs/{job.id}/"
    assert job.destination == prefix
    stem = KEPLER.name.removesuffix(".fits")
    assert job.paths == {"lc": f"{prefix}lc/{stem}.parquet/", "readme": f"{prefix}readme/README.md"}
    assert resolve({"input": "lc"}, job) == {"input": f"{prefix}lc/{stem}.parquet/"}
    # Read back through the chunks' presigned URLs.
    table = job.to_arrow()
    assert table.num_rows == 14280 and table.schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"
    with pytest.raises(StagingError) as info:
        job.dataset()
    assert info.value.code == "not_local"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{job.id}/")["Contents"]}
    assert f"runs/{job.id}/manifest.json" in keys and f"runs/{job.id}/readme/README.md" in keys
