"""Object storage as a destination, each test against S3 (moto's real endpoint) and Azure Blob Storage
(Azurite), both on 127.0.0.1, and a real Jupyter server. No mocks.

Issue 6, acceptance 1 and 2: the Kepler light curve converted into ``<store>://results/kepler/`` in three
part objects plus a manifest under the job's prefix; presigned (SAS) chunk URLs that download with plain
HTTP and are refreshed after they expire; cleanup policies, TTL and cancel deleting exactly the job's
prefix. The Azure runs skip, with the reason, without Azurite or azure-storage-blob.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
import requests

from jupyter_staging.destinations.registry import open_destination
from jupyter_staging.errors import PathNotAllowed, TransferFailed, VerificationFailed
from jupyter_staging.safety.control import JobControl
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER, sha256
from tests.helpers.jupyter import server_config
from tests.helpers.objectstore import (
    RESULTS,
    assert_no_secret,
    get_json,
    parse_time,
    start_extension,
    wait_chunks,
)


def download_ready_chunks(store, prefix: str, parts: list[str], chunks: list[dict], stored: dict) -> list:
    """Each ready chunk downloads over plain HTTP as the object the manifest lists: its Parquet tables."""
    tables = []
    for chunk, part in zip(chunks, parts, strict=True):
        assert chunk["state"] == "ready" and chunk["url"].startswith("http")
        store.assert_chunk_url(chunk["url"])
        assert parse_time(chunk["url_expires_at"]) == store.expiry_of(chunk["url"])
        # Plain HTTP, no credentials: the presigned (SAS) URL is all it takes.
        response = requests.get(chunk["url"], timeout=30)
        assert response.status_code == 200
        assert sha256(response.content) == chunk["sha256"] == stored["objects"][parts.index(part)]["sha256"]
        assert len(response.content) == chunk["bytes"]
        tables.append(pq.read_table(io.BytesIO(response.content)))
        store.assert_stored(f"{prefix}{part}", chunk, response.content)
    return tables


# -- acceptance 1: Kepler into <store>://results/kepler/ ------------------------------------------------


@pytest.mark.slow
async def test_kepler_converted_gives_three_parts_then_the_manifest(jp_fetch, jp_root_dir, store):
    mark = store.mark()
    body = {
        "source": str(KEPLER),
        "destination": f"{store.root}kepler/",
        "convert": {"format": "parquet", "chunk_rows": 5000},
        "name": "kepler-lc",
    }
    created = json.loads((await post_job(jp_fetch, body)).body)
    assert created["destination"] == f"{store.root}kepler/{created['id']}/"
    job = await wait_for(jp_fetch, created["id"], timeout=120)
    recorded = store.requests(mark)
    assert job["state"] == "succeeded", job
    assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] == 3
    assert job["progress"]["rows_done"] == 14280

    prefix = store.job_prefix(job)
    stem = KEPLER.name.removesuffix(".fits") + ".parquet"
    parts = [f"{stem}/part-0000{i}.parquet" for i in range(3)]
    assert store.keys_below(prefix) == {*parts, "manifest.json"}

    # The manifest is the last object written under the job's prefix.
    puts = [
        urlsplit(r["url"]).path.split(f"/{prefix}", 1)[1]
        for r in recorded
        if r["method"] == "PUT" and f"/{prefix}" in r["url"]
    ]
    assert puts and puts[-1] == "manifest.json" and set(puts[:-1]) == set(parts), puts

    stored = json.loads(store.read(f"{prefix}manifest.json"))
    assert stored == await get_json(jp_fetch, "jobs", job["id"], "manifest")
    assert [o["path"] for o in stored["objects"]] == parts
    assert [o["uri"] for o in stored["objects"]] == [f"{store.root}{prefix}{p}" for p in parts]
    assert sum(o["rows"] for o in stored["objects"]) == 14280

    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["path"] for c in chunks] == [f"{store.root}{prefix}{p}" for p in parts]
    assert [c["rows"] for c in chunks] == [5000, 5000, 4280]
    tables = download_ready_chunks(store, prefix, parts, chunks, stored)
    assert sum(t.num_rows for t in tables) == 14280
    assert tables[0].schema.field("PDCSAP_FLUX").metadata[b"unit"] == b"e-/s"

    # Nothing is left in the user's folder: parts went through a private scratch folder, now gone.
    assert [p for p in jp_root_dir.rglob("*") if p.is_file()] == []


async def test_a_scratch_folder_planted_as_a_symlink_fails_the_job_and_writes_nothing_there(
    jp_fetch, jp_root_dir, tmp_path, store
):
    """The object-store job's scratch folder (``<root>/staging/.staging-scratch/<job id>``) is reached
    from the root by descriptor: ``.staging-scratch`` planted as a link to a folder elsewhere fails the job
    ``path_not_allowed`` before anything is made there. Before, the scratch was made (and chmod-ed, and
    written into, and removed) through the link."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (jp_root_dir / "staging").mkdir(exist_ok=True)
    (jp_root_dir / "staging" / ".staging-scratch").symlink_to(elsewhere)
    body = {"source": str(KEPLER), "destination": f"{store.root}kepler/", "convert": {"chunk_rows": 5000}}
    created = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, created["id"], timeout=120)
    assert job["state"] == "failed" and job["error"]["code"] == "path_not_allowed", job
    assert list(elsewhere.iterdir()) == []
    assert store.keys_below(store.job_prefix(job)) == set()


async def test_bad_destinations_are_refused(jp_fetch, store):
    source = str(KEPLER)
    for destination, code in store.bad_destinations:
        await expect_error(post_job(jp_fetch, {"source": source, "destination": destination}), 400, code)
    await expect_error(
        post_job(
            jp_fetch,
            {"source": source, "destination": f"{store.root}x/", "method": store.local_only_method},
        ),
        400,
        "invalid_method",
    )


class TestExpiry:
    """Presigned (SAS) URLs valid 2 s (``StagingApp.presign_expiry_seconds``)."""

    @pytest.fixture
    def jp_server_config(self, tmp_path):
        return server_config(tmp_path, presign_expiry_seconds=2)

    async def test_after_the_url_expires_refresh_gives_a_working_one(self, jp_fetch, tmp_path, store):
        body = {"source": str(KEPLER), "destination": f"{store.root}expiry/"}
        job = json.loads((await post_job(jp_fetch, body)).body)
        job = await wait_for(jp_fetch, job["id"], timeout=60)
        assert job["state"] == "succeeded", job

        [chunk] = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
        first = chunk["url"]
        store.assert_valid_for(first, 2)
        assert parse_time(chunk["url_expires_at"]) == store.expiry_of(first)
        assert requests.get(first, timeout=30).content == KEPLER.read_bytes()

        wait = (store.expiry_of(first) - datetime.now(timezone.utc)).total_seconds()
        await asyncio.sleep(max(0.0, wait) + 1.1)
        assert datetime.now(timezone.utc) > store.expiry_of(first)
        store.assert_expired(first)

        refreshed = await get_json(jp_fetch, "jobs", job["id"], "chunks", "0", "refresh")
        second = refreshed["url"]
        assert second != first and store.signature(second) != store.signature(first)
        assert parse_time(refreshed["url_expires_at"]) == store.expiry_of(second)
        assert store.expiry_of(second) > datetime.now(timezone.utc)
        assert store.expiry_of(second) > store.expiry_of(first)
        assert {k: refreshed[k] for k in ("id", "path", "sha256", "state")} == {
            k: chunk[k] for k in ("id", "path", "sha256", "state")
        }
        assert requests.get(second, timeout=30).content == KEPLER.read_bytes()

        # Nothing about the URLs (or an account key) is kept: not in the job, its log, its manifest, the
        # events' source (the job) or the database.
        payloads = [
            json.dumps(await get_json(jp_fetch, "jobs", job["id"])),
            json.dumps(await get_json(jp_fetch, "jobs", job["id"], "log")),
            json.dumps(await get_json(jp_fetch, "jobs", job["id"], "manifest")),
            (tmp_path / "staging-jobs.sqlite").read_bytes().decode("latin-1"),
        ]
        assert_no_secret(payloads, store.secrets(first, second))


# -- acceptance 2 and the other clean-ups: exactly the job's prefix -------------------------------------


@pytest.mark.slow
async def test_delete_on_success_removes_exactly_the_job_prefix(jp_fetch, store):
    siblings = store.put_siblings("cleanup/")
    body = {
        "source": str(KEPLER),
        "destination": f"{store.root}cleanup/",
        "convert": {"chunk_rows": 5000},
        "cleanup_policy": "delete_on_success",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], timeout=120)
    assert job["state"] == "succeeded", job
    assert store.keys_below(store.job_prefix(job)) == set()
    store.assert_siblings_intact(siblings)
    chunks = (await get_json(jp_fetch, "jobs", job["id"], "chunks"))["chunks"]
    assert [c["state"] for c in chunks] == ["expired"] * 3
    assert all(c["url"] is None for c in chunks)
    await expect_error(jp_fetch(*API, "jobs", job["id"], "chunks", "0", "refresh"), 409, "chunk_expired")


def test_removing_a_job_prefix_spares_a_sibling_whose_name_starts_with_it(store, tmp_path):
    job_id = "0b7e5d6c-job"
    prefix = "nested/run/"
    mine = {f"{prefix}{job_id}/a.fits": b"a", f"{prefix}{job_id}/deep/b.parquet": b"b"}
    siblings = {
        f"{prefix}{job_id}-sibling/a.fits": b"s1",  # same leading characters, another prefix
        f"{prefix}{job_id}x": b"s2",
        f"{prefix}a.fits": b"s3",
        "nested/other.txt": b"s4",
    }
    for key, data in {**mine, **siblings}.items():
        store.write(key, data)
    if store.name == "s3":  # Azure has no unfinished uploads to list: the service drops stray blocks
        store.client.create_multipart_upload(Bucket=RESULTS, Key=f"{prefix}{job_id}/unfinished.bin")

    scratch = tmp_path / "scratch" / job_id
    scratch.mkdir(parents=True)
    (scratch / "leftover.part").write_bytes(b"x")
    destination = store.destination(job_id, f"{store.root}{prefix}{job_id}/", scratch)

    assert destination.remove([], [], [], keep_ready=True) == 0  # partial work only
    assert not scratch.exists()
    assert store.keys_below(f"{prefix}{job_id}/") == {"a.fits", "deep/b.parquet"}
    if store.name == "s3":
        uploads = store.client.list_multipart_uploads(Bucket=RESULTS, Prefix=f"{prefix}{job_id}/")
        assert uploads.get("Uploads", []) == []

    assert destination.remove([], [], [], keep_ready=False) == 2
    assert store.keys_below(f"{prefix}{job_id}/") == set()
    store.assert_siblings_intact(siblings)

    with pytest.raises(Exception) as info:  # a prefix that is not the job's own is never taken
        store.destination(job_id, f"{store.root}{prefix}", scratch)
    assert getattr(info.value, "code", None) == "invalid_destination"


def test_an_upload_in_parts_is_verified_and_lands_byte_identical(store, tmp_path):
    data = os.urandom(store.parts_file_size)
    local = tmp_path / "scratch" / "job-1" / "big.bin"
    local.parent.mkdir(parents=True)
    local.write_bytes(data)
    destination = store.small_parts_destination("job-1", f"{store.root}multi/job-1/", local.parent)
    mark = store.mark()
    path = destination.put(
        local, "big.bin", size=len(data), sha256=sha256(data), content_type=None, control=JobControl()
    )
    assert path == f"{store.root}multi/job-1/big.bin"
    assert not local.exists()  # uploaded, then the local copy removed
    store.assert_uploaded_in_parts("multi/job-1/big.bin", data, mark)
    assert store.read("multi/job-1/big.bin") == data


def test_an_upload_that_does_not_match_its_checksum_is_deleted_and_fails(store, tmp_path):
    local = tmp_path / "job-2" / "a.txt"
    local.parent.mkdir()
    local.write_bytes(b"the bytes on disk")
    destination = store.destination("job-2", f"{store.root}verify/job-2/", local.parent)
    with pytest.raises(VerificationFailed):
        destination.put(
            local, "a.txt", size=17, sha256=sha256(b"other bytes"), content_type=None, control=JobControl()
        )
    assert store.keys_below("verify/job-2/") == set()
    assert local.exists()  # kept for another attempt


def test_a_scratch_folder_below_the_root_is_written_by_descriptor_from_the_root(store, tmp_path):
    """The default scratch folder is below the server's root (where the user may swap a folder for a
    symlink at any moment): its destination is confined to that root. One an administrator put elsewhere
    is confined to itself, checked private at each start, and never removed."""
    root = tmp_path / "root"
    below = open_destination(
        "job-4", f"{store.root}job-4/", root_dir=root, scratch_root=root / "staging" / ".staging-scratch"
    )
    assert below.confinement_root == root and below.workdir == root / "staging" / ".staging-scratch" / "job-4"
    assert not below.private_root
    elsewhere = open_destination("job-4", f"{store.root}job-4/", root_dir=root, scratch_root=tmp_path / "var")
    assert elsewhere.confinement_root == tmp_path / "var" and elsewhere.private_root
    elsewhere.make_workdir()
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert stat.S_IMODE(elsewhere.workdir.stat().st_mode) == 0o700
    elsewhere.remove_scratch()
    assert not elsewhere.workdir.exists() and (tmp_path / "var").is_dir()
    root.mkdir()
    at_root = open_destination("job-5", f"{store.root}job-5/", root_dir=root, scratch_root=root)  # "."
    at_root.make_workdir()
    at_root.remove_scratch()
    assert not at_root.workdir.exists() and root.is_dir()  # the server's root is never removed


def test_a_staging_folder_moved_and_linked_back_still_has_the_job_objects_removed(store, tmp_path):
    """``staging`` moved to another disk and linked back: the scratch folder is reached through a link, so it
    is left where it is (nothing removed through a link), and the job's objects are deleted all the same."""
    root = tmp_path / "root"
    scratch_root = root / "staging" / ".staging-scratch"
    destination = open_destination(
        "job-5", f"{store.root}moved/job-5/", root_dir=root, scratch_root=scratch_root
    )
    (scratch_root / "job-5").mkdir(parents=True)
    (scratch_root / "job-5" / "a.txt.part").write_bytes(b"partial")
    store.write("moved/job-5/a.txt", b"uploaded")
    os.rename(root / "staging", tmp_path / "bigger-disk")
    (root / "staging").symlink_to(tmp_path / "bigger-disk")

    destination.remove([f"{store.root}moved/job-5/a.txt"], ["a.txt"], [], keep_ready=False)

    assert store.keys_below("moved/job-5/") == set()
    assert (tmp_path / "bigger-disk" / ".staging-scratch" / "job-5" / "a.txt.part").read_bytes() == b"partial"


def test_an_upload_whose_file_is_gone_fails_with_upload_failed(store, tmp_path):
    root = tmp_path / "root"
    destination = open_destination(
        "job-6", f"{store.root}gone/job-6/", root_dir=root, scratch_root=root / "staging" / ".staging-scratch"
    )
    destination.workdir.mkdir(parents=True)
    with pytest.raises(TransferFailed) as info:
        destination.put(
            destination.workdir / "a.txt",
            "a.txt",
            size=1,
            sha256="0" * 64,
            content_type=None,
            control=JobControl(),
        )
    assert info.value.code == "upload_failed"
    assert store.keys_below("gone/job-6/") == set()


def test_an_upload_never_reads_or_removes_through_a_scratch_folder_swapped_for_a_symlink(store, tmp_path):
    """``put`` opens the file by descriptor from the confinement root, never through a symlink: a scratch
    folder swapped for a link to a folder elsewhere fails with ``path_not_allowed``; the file there is
    neither uploaded nor removed. (Before, it was uploaded as the job's and then deleted by path.)"""
    root = tmp_path / "root"
    scratch = root / "staging" / ".staging-scratch" / "job-3"
    scratch.mkdir(parents=True)
    (scratch / "a.txt").write_bytes(b"the job's bytes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_bytes(b"another file")
    destination = store.destination("job-3", f"{store.root}swap/job-3/", scratch)
    destination.confinement_root = root
    os.rename(scratch, root / "moved")
    scratch.symlink_to(elsewhere)
    with pytest.raises(PathNotAllowed):
        destination.put(
            scratch / "a.txt",
            "a.txt",
            size=12,
            sha256=sha256(b"another file"),
            content_type=None,
            control=JobControl(),
        )
    assert store.keys_below("swap/job-3/") == set()
    assert (elsewhere / "a.txt").read_bytes() == b"another file"
    assert (root / "moved" / "a.txt").read_bytes() == b"the job's bytes"


@pytest.mark.slow
async def test_ttl_expiry_deletes_the_job_prefix(jp_fetch, jp_serverapp, store):
    await start_extension(jp_serverapp)
    siblings = store.put_siblings("ttl/")
    body = {"source": str(KEPLER), "destination": f"{store.root}ttl/", "ttl_seconds": 1}
    job = json.loads((await post_job(jp_fetch, body)).body)
    job = await wait_for(jp_fetch, job["id"], states=("expired", "failed"), timeout=60)
    assert job["state"] == "expired", job
    assert store.keys_below(store.job_prefix(job)) == set()
    store.assert_siblings_intact(siblings)


# -- steering: cancel ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cancel_removes_the_objects_already_uploaded(jp_fetch, jp_root_dir, store, three_files):
    siblings = store.put_siblings("cancel/")
    body = {
        "manifest": {n: url for n, (url, _) in three_files.items()},
        "destination": f"{store.root}cancel/",
    }
    job = json.loads((await post_job(jp_fetch, body)).body)
    await wait_chunks(jp_fetch, job["id"], lambda cs: any(c["state"] == "ready" for c in cs))
    prefix = store.job_prefix(job)
    assert "small/small.bin" in store.keys_below(prefix)

    response = await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert response.code == 204
    job = await wait_for(jp_fetch, job["id"], states=("cancelled",), timeout=30)
    assert store.keys_below(prefix) == set()
    store.assert_siblings_intact(siblings)
    assert not [p for p in jp_root_dir.rglob("*") if p.is_file()]  # no scratch left either


async def test_a_manifest_object_overwritten_with_no_json_object_is_manifest_not_ready(
    jp_fetch, shared_data, store
):
    """A job's ``manifest.json`` object that someone overwrote with bytes that are no JSON object: before,
    ``GET .../manifest`` answered 500 ``internal_error`` (the JSON error of its read); it is no manifest
    now, as in a local folder: 409 ``manifest_not_ready``."""
    body = {"source": str(shared_data / "README.md"), "destination": f"{store.root}overwritten/"}
    job = await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, body)).body)["id"])
    assert job["state"] == "succeeded", job
    assert (await get_json(jp_fetch, "jobs", job["id"], "manifest"))["job_id"] == job["id"]
    for planted in (b"not json {", b"[1, 2]"):
        store.write(f"{store.job_prefix(job)}manifest.json", planted)
        await expect_error(jp_fetch(*API, "jobs", job["id"], "manifest"), 409, "manifest_not_ready")
