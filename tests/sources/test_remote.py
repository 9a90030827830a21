"""HTTP(S) and S3 sources against real servers on 127.0.0.1 (tests/servers.py): no mocks."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from jupyter_staging.clouds.s3 import presign_get
from jupyter_staging.errors import JobInterrupted, SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.base import SourceItem, safe_filename
from jupyter_staging.sources.http import HTTPSource
from jupyter_staging.sources.registry import open_source
from jupyter_staging.sources.s3 import S3Source
from tests.helpers.data import KEPLER_NAME, SPITZER_NAME, TESS_NAME, sha256
from tests.helpers.sources import Progress


def stage(source, item: SourceItem, dest: Path, *, resume: bool = False, control: JobControl | None = None):
    """Fetch ``item`` into ``dest`` the way the manager does; returns (path, size, sha256)."""
    out = PartFile(dest / item.name, resume=resume)
    try:
        source.fetch(item, out, control or JobControl())
    except BaseException:
        out.close()
        raise
    size, digest = out.commit(item.size)
    return dest / item.name, size, digest


def write_partial(dest: Path, name: str, data: bytes) -> None:
    """Leave ``dest/name.part`` holding ``data``, as an interrupted attempt would."""
    out = PartFile(dest / name)
    out.write(data)
    out.close()


@pytest.fixture
def kepler(shared_data) -> bytes:
    return (shared_data / KEPLER_NAME).read_bytes()


@pytest.fixture
def dest(tmp_path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


# -- HTTP -----------------------------------------------------------------------------------------------


def test_http_download_is_byte_identical(range_server, shared_data, kepler, dest):
    shutil.copy(shared_data / KEPLER_NAME, range_server.root / KEPLER_NAME)
    source = open_source(range_server.url(KEPLER_NAME))
    assert isinstance(source, HTTPSource)

    [item] = source.list_items()
    assert item.name == KEPLER_NAME
    assert item.size == len(kepler)
    assert item.validator["etag"] and item.validator["last_modified"]
    progress = Progress()
    path, size, digest = stage(source, item, dest, control=progress.control)

    assert path.read_bytes() == kepler
    assert (size, digest) == (len(kepler), sha256(kepler))
    assert progress.bytes == len(kepler)
    assert not (dest / (KEPLER_NAME + ".part")).exists()
    [get] = range_server.requests_for(KEPLER_NAME, "GET")
    assert get.header("Range") is None


def test_http_name_comes_from_the_url_percent_decoded(range_server, kepler, dest):
    (range_server.root / "light curve #1.fits").write_bytes(kepler)
    url = range_server.url("light curve #1.fits")
    assert "%20" in url and "%23" in url

    [item] = HTTPSource(url).list_items()
    assert item.name == "light curve #1.fits"
    path, _, digest = stage(HTTPSource(url), item, dest)
    assert path.name == "light curve #1.fits" and digest == sha256(kepler)


@pytest.mark.parametrize(
    ("disposition", "expected"),
    [
        ('attachment; filename="kepler-lc.fits"', "kepler-lc.fits"),
        ("attachment; filename*=UTF-8''%C3%A9toile%20lc.fits", "étoile lc.fits"),
        ('attachment; filename="../../.bashrc"', "bashrc"),
        ('attachment; filename="..."', "download"),
    ],
)
def test_http_name_comes_from_content_disposition(range_server, kepler, dest, disposition, expected):
    (range_server.root / "get").write_bytes(kepler)
    range_server.content_disposition["get"] = disposition

    [item] = HTTPSource(range_server.url("get")).list_items()
    assert item.name == expected
    path, _, digest = stage(HTTPSource(range_server.url("get")), item, dest)
    assert path.parent == dest and digest == sha256(kepler)


def test_safe_filename_refuses_folders_hidden_names_and_nul():
    assert safe_filename("a/b/c.fits") == "c.fits"
    assert safe_filename("..\\..\\evil.fits") == "evil.fits"
    assert safe_filename(".jupyter") == "jupyter"
    assert safe_filename("x\x00y.fits") == "xy.fits"
    assert safe_filename("") == "download"
    assert safe_filename("/") == "download"


def test_http_missing_file_is_source_not_found(range_server):
    with pytest.raises(SourceNotFound) as info:
        HTTPSource(range_server.url("nope.fits")).list_items()
    assert info.value.code == "source_not_found"
    assert "404" in info.value.message


def test_http_head_refused_falls_back_to_a_one_byte_get(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.head_status = 405

    [item] = HTTPSource(range_server.url("k.fits")).list_items()
    assert item.size == len(kepler)
    [probe] = range_server.requests_for("k.fits", "GET")
    assert probe.header("Range") == "bytes=0-0"
    _, _, digest = stage(HTTPSource(range_server.url("k.fits")), item, dest)
    assert digest == sha256(kepler)


def test_http_follows_redirects(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.redirects["/latest"] = "/k.fits"

    [item] = HTTPSource(range_server.url("latest")).list_items()
    assert item.name == "latest" and item.size == len(kepler)
    _, _, digest = stage(HTTPSource(range_server.url("latest")), item, dest)
    assert digest == sha256(kepler)


def test_http_dropped_connection_resumes_with_a_range_request(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.drop_after_bytes = 500_000
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()
    progress = Progress()

    path, size, digest = stage(source, item, dest, control=progress.control)

    assert path.read_bytes() == kepler and digest == sha256(kepler)
    first, second = range_server.requests_for("k.fits", "GET")
    assert first.header("Range") is None
    assert second.header("Range") == "bytes=500000-"
    assert second.header("If-Range") == item.validator["etag"]
    assert progress.bytes == len(kepler)
    assert any("connection lost after 500000 bytes" in line for _, line in progress.lines)


def test_http_resumes_an_existing_part_file(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()
    half = len(kepler) // 2
    write_partial(dest, item.name, kepler[:half])
    progress = Progress()

    out = PartFile(dest / item.name, resume=True)
    assert out.offset == half
    source.fetch(item, out, progress.control)
    size, digest = out.commit(item.size)

    assert (dest / item.name).read_bytes() == kepler and digest == sha256(kepler)
    [get] = range_server.requests_for("k.fits", "GET")
    assert get.header("Range") == f"bytes={half}-"
    assert progress.bytes == len(kepler) - half


def replace_file(path: Path, data: bytes) -> None:
    """Give ``path`` new contents and a different mtime (so its ETag and Last-Modified change)."""
    old = path.stat().st_mtime_ns
    path.write_bytes(data)
    os.utime(path, ns=(old + 5_000_000_000, old + 5_000_000_000))


def test_http_source_changed_before_resume_restarts_from_zero(range_server, shared_data, kepler, dest):
    served = range_server.root / "lc.fits"
    served.write_bytes(kepler)
    source = HTTPSource(range_server.url("lc.fits"))
    [item] = source.list_items()
    write_partial(dest, item.name, kepler[:700_000])
    tess = (shared_data / TESS_NAME).read_bytes()
    replace_file(served, tess)
    progress = Progress()

    path, size, digest = stage(source, item, dest, resume=True, control=progress.control)

    assert path.read_bytes() == tess and (size, digest) == (len(tess), sha256(tess))
    assert item.size == len(tess)
    [get] = range_server.requests_for("lc.fits", "GET")
    assert get.header("Range") is None
    assert any("source changed" in line for _, line in progress.lines)


def test_http_source_changed_between_attempts_restarts_on_full_answer(
    range_server, shared_data, kepler, dest
):
    """The connection drops, the file changes, the ranged retry's If-Range fails: a 200 restarts."""
    served = range_server.root / "lc.fits"
    served.write_bytes(kepler)
    tess = (shared_data / TESS_NAME).read_bytes()
    range_server.drop_after_bytes = 300_000
    source = HTTPSource(range_server.url("lc.fits"))
    [item] = source.list_items()
    old_etag = item.validator["etag"]

    def on_log(level: str, message: str) -> None:
        if "connection lost" in message:
            replace_file(served, tess)

    path, size, digest = stage(source, item, dest, control=JobControl(log=on_log))

    assert path.read_bytes() == tess and digest == sha256(tess) and size == len(tess)
    first, second = range_server.requests_for("lc.fits", "GET")
    assert second.header("Range") == "bytes=300000-"
    assert second.header("If-Range") == old_etag
    assert item.validator["size"] == len(tess) and item.validator["etag"] != old_etag


def test_http_retries_503_answers(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.fail_first_n = 2
    source = HTTPSource(range_server.url("k.fits"))

    [item] = source.list_items()
    assert len(range_server.requests_for("k.fits", "HEAD")) == 3
    range_server.fail_first_n = 2
    _, _, digest = stage(source, item, dest)
    assert digest == sha256(kepler)
    assert len(range_server.requests_for("k.fits", "GET")) == 3


def test_http_pause_stops_within_a_second_and_leaves_the_part_for_resume(range_server, kepler, dest):
    (range_server.root / "k.fits").write_bytes(kepler)
    range_server.throttle_bytes_per_s = 256 * 1024
    source = HTTPSource(range_server.url("k.fits"))
    [item] = source.list_items()
    control = JobControl()
    out = PartFile(dest / item.name)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            source.fetch(item, out, control)
        except BaseException as exc:
            raised.append(exc)
        finally:
            out.close()

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)
    asked = time.monotonic()
    control.interrupt("paused")
    worker.join(5)
    stopped_after = time.monotonic() - asked

    assert not worker.is_alive()
    assert stopped_after < 1.0
    [exc] = raised
    assert isinstance(exc, JobInterrupted) and exc.reason == "paused"
    partial = (dest / (item.name + ".part")).read_bytes()
    assert 0 < len(partial) < len(kepler)
    assert partial == kepler[: len(partial)]

    range_server.throttle_bytes_per_s = 0
    _, _, digest = stage(source, item, dest, resume=True)
    assert digest == sha256(kepler)
    assert range_server.requests_for("k.fits", "GET")[-1].header("Range") == f"bytes={len(partial)}-"


# -- S3 (moto) --------------------------------------------------------------------------------------------


def upload(client, bucket: str, key: str, data: bytes) -> str:
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return client.head_object(Bucket=bucket, Key=key)["ETag"]


def gets(s3_server, key: str) -> list[dict]:
    return [r for r in s3_server.recorded() if r["method"] == "GET" and key in r["url"].split("?")[0]]


def header(request: dict, name: str) -> str | None:
    for key, value in request["headers"].items():
        if key.lower() == name.lower():
            return value
    return None


def test_s3_single_objects_download_byte_identical(s3_env, shared_data, dest):
    client, bucket = s3_env
    for name in (KEPLER_NAME, TESS_NAME):
        data = (shared_data / name).read_bytes()
        etag = upload(client, bucket, f"missions/{name}", data)
        source = open_source(f"s3://{bucket}/missions/{name}")
        assert isinstance(source, S3Source)

        [item] = source.list_items()
        assert (item.name, item.size, item.validator["etag"]) == (name, len(data), etag)
        progress = Progress()
        path, size, digest = stage(source, item, dest, control=progress.control)

        assert path.read_bytes() == data
        assert (size, digest) == (len(data), sha256(data))
        assert progress.bytes == len(data)


@pytest.mark.parametrize("prefix", ["lc/", "lc"])
def test_s3_prefix_stages_every_object_with_relative_names(s3_env, shared_data, dest, prefix):
    client, bucket = s3_env
    files = {
        "kepler.fits": (shared_data / KEPLER_NAME).read_bytes(),
        "tess.fits": (shared_data / TESS_NAME).read_bytes(),
        "nested/deep/spitzer.xml": (shared_data / SPITZER_NAME).read_bytes(),
    }
    for rel, data in files.items():
        upload(client, bucket, f"lc/{rel}", data)
    upload(client, bucket, "lc/nested/", b"")  # a "folder" marker: skipped
    upload(client, bucket, "lcx/other.fits", b"not under the prefix")
    source = S3Source(f"s3://{bucket}/{prefix}")

    items = source.list_items()

    assert sorted(i.name for i in items) == sorted(files)
    for item in items:
        path, size, digest = stage(source, item, dest)
        assert path == dest / item.name
        assert path.read_bytes() == files[item.name] and digest == sha256(files[item.name])


def test_s3_missing_key_bucket_and_prefix_are_source_not_found(s3_env):
    client, bucket = s3_env
    upload(client, bucket, "present.fits", b"x")
    for uri in (f"s3://{bucket}/absent.fits", f"s3://{bucket}/absent/", "s3://no-such-bucket-here/x.fits"):
        with pytest.raises(SourceNotFound) as info:
            S3Source(uri).list_items()
        assert info.value.code == "source_not_found", uri


def test_s3_resume_with_unchanged_etag_uses_a_ranged_get(s3_env, s3_server, kepler, dest):
    client, bucket = s3_env
    etag = upload(client, bucket, "k.fits", kepler)
    source = S3Source(f"s3://{bucket}/k.fits")
    [item] = source.list_items()
    half = len(kepler) // 2
    write_partial(dest, item.name, kepler[:half])
    progress = Progress()
    s3_server.start_recording()

    path, size, digest = stage(source, item, dest, resume=True, control=progress.control)

    s3_server.stop_recording()
    assert path.read_bytes() == kepler and digest == sha256(kepler)
    [get] = gets(s3_server, "k.fits")
    assert header(get, "Range") == f"bytes={half}-"
    assert header(get, "If-Match") == etag
    assert progress.bytes == len(kepler) - half


def test_s3_object_overwritten_between_attempts_restarts(s3_env, shared_data, kepler, dest):
    client, bucket = s3_env
    upload(client, bucket, "lc.fits", kepler)
    source = S3Source(f"s3://{bucket}/lc.fits")
    [item] = source.list_items()
    write_partial(dest, item.name, kepler[:600_000])
    tess = (shared_data / TESS_NAME).read_bytes()
    new_etag = upload(client, bucket, "lc.fits", tess)
    progress = Progress()

    path, size, digest = stage(source, item, dest, resume=True, control=progress.control)

    assert path.read_bytes() == tess and (size, digest) == (len(tess), sha256(tess))
    assert item.validator["etag"] == new_etag
    assert any("changed" in line for _, line in progress.lines)


def test_s3_large_object_is_one_conditional_get_on_one_stream(s3_env, s3_server, dest):
    # Parallel streams are the engine's (streams_per_file); the source itself reads one stream, whatever
    # the object's size (boto3's transfer manager, used before, held parts in memory to write in order).
    client, bucket = s3_env
    data = os.urandom(70 * 1024 * 1024)  # above the 64 MiB the transfer manager split at
    etag = upload(client, bucket, "big.bin", data)
    source = S3Source(f"s3://{bucket}/big.bin")
    [item] = source.list_items()
    progress = Progress()
    s3_server.start_recording()

    path, size, digest = stage(source, item, dest, control=progress.control)

    s3_server.stop_recording()
    assert (size, digest) == (len(data), sha256(data)) and path.read_bytes() == data
    assert progress.bytes == len(data)
    [get] = gets(s3_server, "big.bin")
    assert header(get, "Range") is None and header(get, "If-Match") == etag


def test_s3_presigned_url_downloads_over_http(s3_env, kepler, dest):
    client, bucket = s3_env
    upload(client, bucket, "k.fits", kepler)
    url = presign_get(f"s3://{bucket}/k.fits", expires_seconds=600)
    assert "X-Amz-Signature=" in url

    source = HTTPSource(url)
    [item] = source.list_items()
    assert item.name == "k.fits"
    _, _, digest = stage(source, item, dest)
    assert digest == sha256(kepler)


def test_errors_for_presigned_urls_never_show_the_signature(s3_env):
    _, bucket = s3_env
    url = presign_get(f"s3://{bucket}/missing.fits")
    signature = url.split("X-Amz-Signature=", 1)[1].split("&", 1)[0]
    credential = url.split("X-Amz-Credential=", 1)[1].split("&", 1)[0]
    assert len(signature) >= 32

    with pytest.raises(SourceNotFound) as info:
        HTTPSource(url).list_items()

    message = info.value.message
    assert info.value.code == "source_not_found"
    assert signature not in message and credential not in message
    assert "X-Amz-Signature=REDACTED" in message or "?" not in message
    assert signature not in repr(info.value) and signature not in str(info.value.to_dict())


def test_s3_pause_during_a_download_keeps_a_prefix_that_resumes(s3_env, dest):
    client, bucket = s3_env
    data = os.urandom(48 * 1024 * 1024)
    upload(client, bucket, "big.bin", data)
    source = S3Source(f"s3://{bucket}/big.bin")
    [item] = source.list_items()
    progress = Progress()
    out = PartFile(dest / item.name)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            source.fetch(item, out, progress.control)
        except BaseException as exc:
            raised.append(exc)
        finally:
            out.close()

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    while progress.bytes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.control.interrupt("paused")
    worker.join(10)

    assert not worker.is_alive()
    [exc] = raised
    assert isinstance(exc, JobInterrupted)
    partial = (dest / (item.name + ".part")).read_bytes()
    assert 0 < len(partial) < len(data)
    assert partial == data[: len(partial)]
    assert progress.bytes == len(partial)

    _, size, digest = stage(source, item, dest, resume=True)
    assert (size, digest) == (len(data), sha256(data))
