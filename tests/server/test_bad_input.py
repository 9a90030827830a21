"""Hostile input against a real Jupyter server: every case is a 4xx with a stable ``code``, never a 500 or a
traceback, and a refused destination creates nothing (issue 11)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from jupyter_staging.server.handlers import input_error
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER

TEN_YEARS = 10 * 365 * 24 * 3600


def snapshot(root):
    """Every path below ``root`` (relative, sorted): what a refused request must leave unchanged."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


async def refused_destination(jp_fetch, root, destination, status, code):
    before = snapshot(root)
    body = await expect_error(
        post_job(jp_fetch, {"source": str(KEPLER), "destination": destination}), status, code
    )
    assert snapshot(root) == before
    return body


async def test_deeply_nested_json_is_invalid_json(jp_fetch):
    body = "[" * 100_000
    await expect_error(jp_fetch(*API, "jobs", method="POST", body=body), 400, "invalid_json")


async def test_deeply_nested_json_object_value_is_invalid_json(jp_fetch):
    body = '{"source": ' + "[" * 100_000
    await expect_error(jp_fetch(*API, "jobs", method="POST", body=body), 400, "invalid_json")


@pytest.mark.parametrize("ttl", [10**12, 10**30, TEN_YEARS + 1])
async def test_huge_ttl_is_invalid_ttl(jp_fetch, ttl):
    await expect_error(post_job(jp_fetch, {"source": str(KEPLER), "ttl_seconds": ttl}), 400, "invalid_ttl")


@pytest.mark.parametrize(("ttl", "code"), [(5400.0, 201), (5400.5, 400)])
async def test_a_ttl_given_as_a_whole_float_is_seconds(jp_fetch, ttl, code):
    request = post_job(jp_fetch, {"source": str(KEPLER), "ttl_seconds": ttl})  # 1.5 * 3600 in Python
    if code == 201:
        assert (await request).code == 201
    else:
        await expect_error(request, 400, "invalid_request")


async def test_ttl_of_ten_years_is_accepted(jp_fetch):
    response = await post_job(jp_fetch, {"source": str(KEPLER), "ttl_seconds": TEN_YEARS})
    assert response.code == 201


@pytest.mark.parametrize("verb", ["ack", "refresh"])
async def test_chunk_id_of_twenty_digits_is_chunk_not_found(jp_fetch, verb):
    job = json.loads((await post_job(jp_fetch, {"source": str(KEPLER)})).body)
    await wait_for(jp_fetch, job["id"])
    chunk = "9" * 25
    method, body = ("POST", "") if verb == "ack" else ("GET", None)
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", chunk, verb, method=method, body=body),
        404,
        "chunk_not_found",
    )
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", "-" + chunk, verb, method=method, body=body),
        404,
        "chunk_not_found",
    )


@pytest.mark.parametrize("chunk", ["+1", " 1", "01", "0_1", "\u0661", "1_0"])
async def test_a_chunk_id_not_written_as_its_index_is_chunk_not_found(jp_fetch, chunk):
    job = json.loads((await post_job(jp_fetch, {"source": str(KEPLER)})).body)
    await wait_for(jp_fetch, job["id"])
    await expect_error(
        jp_fetch(*API, "jobs", job["id"], "chunks", chunk, "ack", method="POST", body=""),
        404,
        "chunk_not_found",
    )


async def test_a_job_id_of_any_length_is_a_json_job_not_found(jp_fetch):
    await expect_error(jp_fetch(*API, "jobs", "a" * 300), 404, "job_not_found")


@pytest.mark.parametrize(
    "field", [{"ttl_seconds": True}, {"ttl_seconds": "10"}, {"unpack": "yes"}, {"decompress": 1}]
)
async def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(jp_fetch, jp_root_dir, field):
    before = snapshot(jp_root_dir)
    await expect_error(post_job(jp_fetch, {"source": str(KEPLER), **field}), 400, "invalid_request")
    assert snapshot(jp_root_dir) == before


@pytest.mark.parametrize("name", ["two\nlines", "\u202eflipped", "bell\x07"])
async def test_a_job_name_with_a_control_character_is_refused(jp_fetch, name):
    await expect_error(post_job(jp_fetch, {"source": str(KEPLER), "name": name}), 400, "invalid_request")


async def test_destination_component_over_255_bytes_is_name_too_long(jp_fetch, jp_root_dir):
    await refused_destination(jp_fetch, jp_root_dir, "x" * 256, 400, "name_too_long")
    await refused_destination(jp_fetch, jp_root_dir, "ok/" + "é" * 128, 400, "name_too_long")


async def test_source_component_over_255_bytes_is_name_too_long(jp_fetch):
    await expect_error(post_job(jp_fetch, {"source": "/tmp/" + "x" * 300}), 400, "name_too_long")
    manifest = {"a": "/tmp/" + "y" * 300}
    await expect_error(post_job(jp_fetch, {"manifest": manifest}), 400, "name_too_long")


async def test_symlink_loop_as_source_is_refused(jp_fetch, tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    body = await expect_error(post_job(jp_fetch, {"source": str(loop)}), 400, "path_not_allowed")
    assert "symbolic link" in body["message"]
    other = tmp_path / "loop-b"
    os.symlink(tmp_path / "loop-c", other)
    os.symlink(other, tmp_path / "loop-c")
    await expect_error(post_job(jp_fetch, {"source": str(other / "x.fits")}), 400, "path_not_allowed")


@pytest.mark.skipif(not os.path.lexists("/proc/1/root"), reason="needs /proc/1/root (Linux)")
async def test_unreadable_proc_root_source_is_refused(jp_fetch):
    source = "/proc/1/root/etc/passwd"
    try:
        os.stat(source)
    except PermissionError:
        await expect_error(post_job(jp_fetch, {"source": source}), 403, "permission_denied")
    else:  # we may look into PID 1's root (a container's root user): an ordinary readable file
        response = await post_job(jp_fetch, {"source": source})
        assert response.code == 201


def unsearchable_folder(tmp_path):
    """A folder this process may not search, made for real: a folder of mode 0 for an ordinary user; for
    root (whose CAP_DAC_OVERRIDE searches every folder), ``/proc/1/root`` where the kernel refuses it
    (ptrace access mode check of PID 1 from a container, proc(5)). Returns ``(folder, cleanup)``."""
    if os.geteuid() != 0:
        closed = tmp_path / "closed"
        closed.mkdir()
        (closed / "a.fits").write_bytes(b"x")
        closed.chmod(0)
        return closed, lambda: closed.chmod(0o700)
    try:
        os.stat("/proc/1/root/etc")
    except PermissionError:
        return Path("/proc/1/root/etc"), lambda: None
    pytest.skip("root here may search every folder, even /proc/1/root")


async def test_permission_denied_source_is_403(jp_fetch, tmp_path):
    folder, cleanup = unsearchable_folder(tmp_path)
    try:
        refused = post_job(jp_fetch, {"source": str(folder / "a.fits")})
        body = await expect_error(refused, 403, "permission_denied")
        assert "permission denied" in body["message"]
        # a manifest's entries are opened as the job runs: the entry fails with the same code
        response = await post_job(jp_fetch, {"manifest": {"a.fits": str(folder / "a.fits")}})
        job = await wait_for(jp_fetch, json.loads(response.body)["id"])
        assert job["state"] == "failed"
        assert "a.fits (permission_denied)" in job["error"]["message"]
    finally:
        cleanup()


async def test_unreadable_source_file_is_refused(jp_fetch, tmp_path):
    """A file that may not be opened for reading is ``source_not_readable`` (400). As root, the write-only
    sysctl ``/proc/sys/vm/drop_caches`` (mode 0200), which the kernel refuses to open for reading even to
    root (proc(5)); otherwise a file of mode 0."""
    if os.geteuid() == 0:
        source = Path("/proc/sys/vm/drop_caches")
    else:
        source = tmp_path / "closed.fits"
        source.write_bytes(b"x")
        source.chmod(0)
    with pytest.raises(PermissionError):
        os.open(source, os.O_RDONLY)
    body = await expect_error(post_job(jp_fetch, {"source": str(source)}), 400, "source_not_readable")
    assert "not readable" in body["message"]


@pytest.mark.parametrize(
    "source",
    ["https://[::1", "https://[::1/a.fits", "http://[zz]/a", "https://host:99999/a", "https://:80/a"],
)
async def test_malformed_url_is_invalid_source(jp_fetch, source):
    await expect_error(post_job(jp_fetch, {"source": source}), 400, "invalid_source")
    await expect_error(post_job(jp_fetch, {"manifest": {"a": source}}), 400, "invalid_source")


async def test_thousand_levels_deep_destination_is_name_too_long(jp_fetch, jp_root_dir):
    await refused_destination(jp_fetch, jp_root_dir, "a/" * 1000, 400, "name_too_long")


async def test_destination_longer_than_a_path_may_be_is_name_too_long(jp_fetch, jp_root_dir):
    await refused_destination(jp_fetch, jp_root_dir, "/".join(["b" * 250] * 16), 400, "name_too_long")


@pytest.mark.parametrize("destination", ["", ".", "/", "./", " ", "./.", "a/..", "//"])
async def test_destination_equal_to_the_root_is_invalid_destination(jp_fetch, jp_root_dir, destination):
    code = "path_not_allowed" if ".." in destination else "invalid_destination"
    await refused_destination(jp_fetch, jp_root_dir, destination, 400, code)


async def test_destination_naming_the_root_by_its_absolute_path_is_invalid_destination(jp_fetch, jp_root_dir):
    await refused_destination(jp_fetch, jp_root_dir, str(jp_root_dir), 400, "invalid_destination")


async def test_omitted_destination_means_the_default_folder(jp_fetch, jp_root_dir):
    job = json.loads((await post_job(jp_fetch, {"source": str(KEPLER)})).body)
    assert job["destination"] and job["destination"] not in (".", "/")
    job = await wait_for(jp_fetch, job["id"])
    assert job["state"] == "succeeded", job
    assert (jp_root_dir / job["destination"] / KEPLER.name).is_file()


@pytest.mark.parametrize(
    "destination",
    ["ok\r\n/x", "\x1b[31m", "tab\there", "a\x7fb", "c\x85d", "bidi\u202eevil", "line\u2028sep"],
)
async def test_control_characters_in_destination_are_invalid_destination(jp_fetch, jp_root_dir, destination):
    body = await refused_destination(jp_fetch, jp_root_dir, destination, 400, "invalid_destination")
    assert "\x1b" not in body["message"] and "\r" not in body["message"]


async def test_content_disposition_naming_manifest_json_is_staged_under_a_safe_name(
    jp_fetch, jp_root_dir, range_server
):
    payload = b"not the staging manifest\n"
    (range_server.root / "data.bin").write_bytes(payload)
    range_server.content_disposition["data.bin"] = 'attachment; filename="manifest.json"'
    response = await post_job(jp_fetch, {"source": range_server.url("data.bin"), "destination": "cd"})
    job = await wait_for(jp_fetch, json.loads(response.body)["id"])
    assert job["state"] == "succeeded", job
    chunks = json.loads((await jp_fetch(*API, "jobs", job["id"], "chunks")).body)["chunks"]
    assert [c["path"] for c in chunks] == ["download-manifest.json"]
    assert (jp_root_dir / "cd" / "download-manifest.json").read_bytes() == payload
    assert json.loads((jp_root_dir / "cd" / "manifest.json").read_text())["job_id"] == job["id"]


@pytest.mark.parametrize("chunk_rows", [1, 999, 10_000_001, True, 5000.0, 5000.5, "5000"])
async def test_chunk_rows_out_of_bounds_or_not_an_integer_is_invalid_request(jp_fetch, chunk_rows):
    body = {"source": str(KEPLER), "convert": {"chunk_rows": chunk_rows}}
    await expect_error(post_job(jp_fetch, body), 400, "invalid_request")


@pytest.mark.parametrize(
    ("encoding", "said"),
    [
        ("utf-16", "does not write line ends"),
        ("cp500", "does not write line ends"),
        ("klingon", "unknown text encoding"),
        ("", "at least 1"),
        ("x" * 65, "at most 64"),
    ],
)
async def test_a_text_encoding_the_converter_cannot_split_is_invalid_request(jp_fetch, encoding, said):
    body = {"source": str(KEPLER), "convert": {"encoding": encoding}}
    error = await expect_error(post_job(jp_fetch, body), 400, "invalid_request")
    assert said in error["message"], error


@pytest.mark.parametrize("chunk_rows", [1000, 10_000_000])
async def test_chunk_rows_at_the_bounds_is_accepted(jp_fetch, chunk_rows):
    body = {"source": str(KEPLER), "convert": {"chunk_rows": chunk_rows}}
    assert (await post_job(jp_fetch, body)).code == 201


async def test_job_database_is_private(jp_fetch, jp_serverapp, tmp_path):
    await wait_for(jp_fetch, json.loads((await post_job(jp_fetch, {"source": str(KEPLER)})).body)["id"])
    files = [p for p in tmp_path.iterdir() if p.name.startswith("staging-jobs.sqlite")]
    assert any(p.name == "staging-jobs.sqlite" for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (OverflowError("Python int too large to convert to SQLite INTEGER"), "invalid_request"),
        (ValueError("Invalid IPv6 URL"), "invalid_request"),
        (RecursionError("maximum recursion depth exceeded"), "invalid_request"),
        (OSError(errno.ENAMETOOLONG, "File name too long"), "name_too_long"),
        (OSError(errno.ELOOP, "Too many levels of symbolic links"), "path_not_allowed"),
    ],
)
def test_what_a_request_provokes_below_the_checks_is_a_400(exc, code):
    answer = input_error(exc)
    assert answer is not None and answer.status_code == 400 and answer.code == code
    assert "Traceback" not in answer.message


@pytest.mark.parametrize("exc", [OSError(errno.EIO, "I/O error"), KeyError("x"), RuntimeError("bug")])
def test_server_faults_stay_500(exc):
    assert input_error(exc) is None
