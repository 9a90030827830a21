"""The REST API of the server extension, against a real Jupyter server (pytest-jupyter)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER, SPITZER, sha256


async def test_extension_is_enabled(jp_serverapp):
    assert "jupyter_staging" in jp_serverapp.extension_manager.extensions
    assert jp_serverapp.extension_manager.extensions["jupyter_staging"].enabled


async def test_copy_job_end_to_end(jp_fetch, jp_root_dir, jp_base_url):
    response = await post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/kepler"})
    assert response.code == 201
    job = json.loads(response.body)
    assert response.headers["Location"] == f"{jp_base_url}api/v1/staging/jobs/{job['id']}"
    assert job["state"] in ("queued", "running", "succeeded")
    assert job["method"] == "copy" and job["destination"] == "staging/kepler"

    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"]["bytes_done"] == job["progress"]["bytes_total"] == KEPLER.stat().st_size
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == 1
    staged = jp_root_dir / "staging" / "kepler" / KEPLER.name
    assert sha256(staged) == sha256(KEPLER)
    assert not list((jp_root_dir / "staging").rglob("*.part"))

    manifest = json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
    assert manifest["job_id"] == job["id"]
    assert manifest["objects"] == [
        {
            "path": KEPLER.name,
            "size": KEPLER.stat().st_size,
            "sha256": sha256(KEPLER),
            "rows": None,
            "content_type": "image/fits",
            "source_item": KEPLER.name,
            "fingerprint": {
                "size": KEPLER.stat().st_size,
                "mtime_ns": KEPLER.stat().st_mtime_ns,
                "inode": KEPLER.stat().st_ino,
            },
            "mtime_ns": staged.stat().st_mtime_ns,  # the output's, as the job left it
        }
    ]
    assert json.loads((jp_root_dir / "staging" / "kepler" / "manifest.json").read_text()) == manifest

    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert [(c["id"], c["state"], c["path"]) for c in chunks] == [("0", "ready", KEPLER.name)]

    lines = json.loads((await jp_fetch(*API, "jobs", job["id"], "log")).body)["lines"]
    assert any("succeeded" in line["message"] for line in lines)


async def test_kepler_to_parquet_in_three_chunks(jp_fetch, jp_root_dir):
    body = {
        "source": str(KEPLER),
        "destination": "staging/kepler-lc",
        "convert": {"format": "parquet", "chunk_rows": 5000},
        "name": "kepler-lc",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == 3
    assert job["progress"]["rows_done"] == 14280
    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert [c["rows"] for c in chunks] == [5000, 5000, 4280]
    folder = jp_root_dir / "staging" / "kepler-lc"
    table = pq.read_table([folder / c["path"] for c in chunks])
    assert table.num_rows == 14280
    assert {"TIME", "PDCSAP_FLUX", "SAP_FLUX"} <= set(table.column_names)
    assert table.schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"
    manifest = json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
    assert sum(o["rows"] for o in manifest["objects"]) == 14280
    for obj in manifest["objects"]:
        assert sha256(folder / obj["path"]) == obj["sha256"]
    assert manifest["converter"]["name"] == "jupyter_staging"


async def test_votable_conversion(jp_fetch, jp_root_dir):
    job = json.loads((await post_job(jp_fetch, {"source": str(SPITZER), "convert": {}})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert job["destination"].startswith("staging/")
    assert job["progress"]["rows_done"] == 224


async def test_list_filter_and_paginate(jp_fetch):
    ids = []
    for i in range(3):
        body = {"source": str(SPITZER), "destination": f"staging/list-{i}"}
        ids.append(json.loads((await post_job(jp_fetch, body)).body)["id"])
    for job_id in ids:
        await wait_for(jp_fetch, job_id)
    listing = json.loads((await jp_fetch(*API, "jobs")).body)
    assert [j["id"] for j in listing["jobs"]] == ids[::-1]
    assert listing["next_cursor"] is None

    page1 = json.loads((await jp_fetch(*API, "jobs", params={"limit": "2"})).body)
    assert [j["id"] for j in page1["jobs"]] == ids[:0:-1]
    page2 = json.loads(
        (await jp_fetch(*API, "jobs", params={"limit": "2", "cursor": page1["next_cursor"]})).body
    )
    assert [j["id"] for j in page2["jobs"]] == [ids[0]] and page2["next_cursor"] is None

    failed = json.loads((await jp_fetch(*API, "jobs", params={"state": "failed"})).body)
    assert failed["jobs"] == []
    await expect_error(jp_fetch(*API, "jobs", params={"state": "exploded"}), 400, "invalid_request")
    await expect_error(jp_fetch(*API, "jobs", params={"cursor": "!!"}), 400, "invalid_cursor")


async def test_idempotency_key_returns_the_same_job(jp_fetch):
    body = {"source": str(SPITZER), "destination": "staging/idem", "idempotency_key": "run-42"}
    first = await post_job(jp_fetch, body)
    second = await post_job(jp_fetch, body)
    assert first.code == 201 and second.code == 200
    assert json.loads(first.body)["id"] == json.loads(second.body)["id"]
    assert first.headers["Location"] == second.headers["Location"]
    listing = json.loads((await jp_fetch(*API, "jobs")).body)
    assert len(listing["jobs"]) == 1


async def test_no_token_is_refused(jp_fetch):
    await expect_error(jp_fetch(*API, "jobs", headers={"Authorization": ""}), 403, "forbidden")
    await expect_error(
        jp_fetch(
            *API,
            "jobs",
            method="POST",
            body=json.dumps({"source": str(KEPLER)}),
            headers={"Authorization": ""},
        ),
        403,
        "forbidden",
    )


@pytest.mark.parametrize(
    "destination",
    ["../outside", "/etc/staging", "a/../../b", ".jupyter/x", ".bashrc", "ok/.ipython"],
)
async def test_destination_outside_root_is_refused(jp_fetch, jp_root_dir, destination):
    before = sorted(p for p in jp_root_dir.parent.rglob("*"))
    body = await expect_error(
        post_job(jp_fetch, {"source": str(KEPLER), "destination": destination}), 400, "path_not_allowed"
    )
    assert "Traceback" not in body["message"]
    assert sorted(p for p in jp_root_dir.parent.rglob("*")) == before


async def test_symlinked_parent_is_refused(jp_fetch, jp_root_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (jp_root_dir / "link").symlink_to(outside, target_is_directory=True)
    await expect_error(
        post_job(jp_fetch, {"source": str(KEPLER), "destination": "link/sub"}), 400, "path_not_allowed"
    )
    assert list(outside.iterdir()) == []


async def test_bad_input_is_400_never_500(jp_fetch):
    async def send(raw):
        return await jp_fetch(*API, "jobs", method="POST", body=raw)

    await expect_error(send("{not json"), 400, "invalid_json")
    await expect_error(send("[1, 2]"), 400, "invalid_json")
    await expect_error(send(json.dumps({})), 400, "invalid_request")
    await expect_error(send(json.dumps({"source": 5})), 400, "invalid_request")
    await expect_error(send(json.dumps({"source": str(KEPLER), "colour": "red"})), 400, "invalid_request")
    await expect_error(
        send(json.dumps({"source": str(KEPLER), "convert": {"chunk_rows": 0}})), 400, "invalid_request"
    )
    await expect_error(
        send(json.dumps({"source": str(KEPLER), "method": "teleport"})), 400, "invalid_request"
    )
    await expect_error(send(json.dumps({"source": str(KEPLER), "method": "download"})), 400, "invalid_method")
    await expect_error(
        send(json.dumps({"source": str(KEPLER), "method": "symlink", "convert": {}})), 400, "invalid_method"
    )
    await expect_error(send(json.dumps({"source": "ftp://example.org/x"})), 400, "unsupported_source")
    await expect_error(
        send(json.dumps({"source": str(KEPLER), "destination": "bad\u0000name"})), 400, "invalid_request"
    )
    await expect_error(send(json.dumps({"source": "relative/path.fits"})), 400, "path_not_allowed")


async def test_missing_source_has_a_code(jp_fetch, tmp_path):
    body = await expect_error(
        post_job(jp_fetch, {"source": str(tmp_path / "no-such.fits")}), 400, "source_not_found"
    )
    assert "no-such.fits" in body["message"]


async def test_a_fifo_or_device_source_is_refused_at_creation(jp_fetch, tmp_path):
    """A named pipe would block the job's reader and a device never end: 400 at once, not a job that fails
    later (a listing skips them inside a folder)."""
    os.mkfifo(tmp_path / "pipe")
    for source in (tmp_path / "pipe", Path("/dev/zero")):
        body = await expect_error(post_job(jp_fetch, {"source": str(source)}), 400, "source_not_found")
        assert "neither a file nor a folder" in body["message"]
    listed = json.loads((await jp_fetch("api", "v1", "staging", "jobs", method="GET")).body)
    assert listed["jobs"] == []


@pytest.mark.parametrize("suffix", [(), ("manifest",), ("chunks",), ("log",), ("pause",)])
async def test_unknown_job_is_404(jp_fetch, suffix):
    method = "POST" if suffix == ("pause",) else "GET"
    kwargs = {"body": "{}"} if method == "POST" else {}
    await expect_error(
        jp_fetch(*API, "jobs", "0000-no-such-job", *suffix, method=method, **kwargs), 404, "job_not_found"
    )


async def test_unknown_job_delete_is_404(jp_fetch):
    await expect_error(jp_fetch(*API, "jobs", "nope", method="DELETE"), 404, "job_not_found")


async def test_existing_file_is_never_overwritten(jp_fetch, jp_root_dir):
    dest = jp_root_dir / "staging" / "taken"
    dest.mkdir(parents=True)
    (dest / KEPLER.name).write_bytes(b"precious")
    job = json.loads((await post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/taken"})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "destination_exists"
    assert (dest / KEPLER.name).read_bytes() == b"precious"
    assert not list(dest.glob("*.part"))
    await expect_error(jp_fetch(*API, "jobs", job["id"], "manifest"), 409, "manifest_not_ready")


async def test_second_job_into_a_staged_folder_is_409(jp_fetch):
    job = json.loads((await post_job(jp_fetch, {"source": str(SPITZER), "destination": "staging/s"})).body)
    await wait_for(jp_fetch, job["id"])
    await expect_error(
        post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/s"}), 409, "destination_exists"
    )


async def test_folder_source_copies_every_file(jp_fetch, jp_root_dir, tmp_path):
    src = tmp_path / "archive"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.txt").write_text("beta")
    (src / ".hidden").write_text("skip")
    job = json.loads((await post_job(jp_fetch, {"source": str(src), "destination": "staging/tree"})).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    out = jp_root_dir / "staging" / "tree"
    assert (out / "a.txt").read_text() == "alpha"
    assert (out / "sub" / "b.txt").read_text() == "beta"
    assert not (out / ".hidden").exists()
    assert job["progress"]["chunks_total"] == 2


@pytest.mark.parametrize("method", ["hardlink", "symlink"])
async def test_link_methods(jp_fetch, jp_root_dir, tmp_path, method):
    """A link job reads no byte: its manifest states a file's sha256 only when the request gave a checksum
    to verify (null otherwise)."""
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(4096))
    stated = {}
    for dest, checksum in ((method, f"sha256:{sha256(src)}"), (f"{method}-unread", None)):
        body = {"source": str(src), "destination": f"staging/{dest}", "method": method, "checksum": checksum}
        job = json.loads((await post_job(jp_fetch, body)).body)
        job = await wait_for(jp_fetch, job["id"])
        assert job["state"] == "succeeded", job
        staged = jp_root_dir / "staging" / dest / "data.bin"
        if method == "hardlink":
            assert staged.stat().st_ino == src.stat().st_ino
        else:
            assert staged.is_symlink() and staged.resolve() == src
        manifest = json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
        stated[dest] = manifest["objects"][0]["sha256"]
    assert stated == {method: sha256(src), f"{method}-unread": None}


async def test_cancel_a_finished_job_is_harmless(jp_fetch, jp_root_dir):
    job = json.loads((await post_job(jp_fetch, {"source": str(SPITZER), "destination": "staging/c"})).body)
    await wait_for(jp_fetch, job["id"])
    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    assert (jp_root_dir / "staging" / "c" / SPITZER.name).exists()
    job = json.loads((await jp_fetch(*API, "jobs", job["id"])).body)
    assert job["state"] == "succeeded"


async def test_http_and_s3_sources_stage_byte_identical(jp_fetch, jp_root_dir, range_server, s3_env):
    from tests.helpers.data import TESS

    (range_server.root / KEPLER.name).write_bytes(KEPLER.read_bytes())
    client, bucket = s3_env
    client.upload_file(str(TESS), bucket, f"tess/{TESS.name}")
    sources = {
        "http": (range_server.url(KEPLER.name), KEPLER),
        "s3": (f"s3://{bucket}/tess/{TESS.name}", TESS),
    }
    for kind, (uri, original) in sources.items():
        job = json.loads((await post_job(jp_fetch, {"source": uri, "destination": f"staging/{kind}"})).body)
        assert job["method"] == "download"
        job = await wait_for(jp_fetch, job["id"])
        assert job["state"] == "succeeded", job
        staged = jp_root_dir / "staging" / kind / original.name
        assert staged.read_bytes() == original.read_bytes()
        manifest = json.loads((await jp_fetch(*API, "jobs", job["id"], "manifest")).body)
        assert manifest["objects"][0]["sha256"] == sha256(original)
        assert manifest["source"] == uri


async def test_missing_remote_sources_fail_with_a_code(jp_fetch, range_server, s3_env):
    _, bucket = s3_env
    for uri in (range_server.url("nothing-here.fits"), f"s3://{bucket}/nothing-here.fits"):
        job = json.loads((await post_job(jp_fetch, {"source": uri})).body)
        job = await wait_for(jp_fetch, job["id"])
        assert job["state"] == "failed"
        assert job["error"]["code"] == "source_not_found", job


async def test_remote_table_is_converted(jp_fetch, jp_root_dir, range_server):
    (range_server.root / KEPLER.name).write_bytes(KEPLER.read_bytes())
    body = {
        "source": range_server.url(KEPLER.name),
        "destination": "staging/remote-lc",
        "convert": {"chunk_rows": 5000},
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"]["rows_done"] == 14280
    folder = jp_root_dir / "staging" / "remote-lc"
    assert sorted(p.name for p in folder.iterdir()) == [
        "kplr010666592-2009131110544_slc.parquet",
        "manifest.json",
    ]


async def test_images_are_staged_as_they_are_when_converting(jp_fetch, jp_root_dir, shared_data):
    image = shared_data / "allsky_rosat.fits"
    job = json.loads(
        (await post_job(jp_fetch, {"source": str(image), "destination": "staging/img", "convert": {}})).body
    )
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert (jp_root_dir / "staging" / "img" / image.name).read_bytes() == image.read_bytes()

    body = {"source": str(image), "destination": "staging/img-hdu", "convert": {"hdu": 0}}
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "conversion_failed", job
    assert "Traceback" not in job["error"]["message"]
    assert not list((jp_root_dir / "staging").rglob("*.part"))
