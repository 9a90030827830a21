"""Hostile sources against a real server (issue 11): at least 100 of them, each refused with a 4xx and a
stable code, or accepted and then failing cleanly with a code; nothing outside the root is written, and no
answer is a 5xx or carries a traceback. The server confines local sources to one folder
(``StagingApp.source_roots``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers.api import API, wait_for
from tests.helpers.jupyter import server_config


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.txt").write_text("fine\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for jobs\n")
    (folder / "escape").symlink_to(outside / "secret.txt")
    (folder / "escape-dir").symlink_to(outside, target_is_directory=True)
    (folder / "loop-a").symlink_to(folder / "loop-b")
    (folder / "loop-b").symlink_to(folder / "loop-a")
    os.mkfifo(folder / "fifo")
    return folder


@pytest.fixture
def jp_server_config(tmp_path, archive):
    return server_config(tmp_path, source_roots=[str(archive)])


def hostile_sources(archive: Path) -> list[str]:
    """At least 100 sources a job must not read as asked."""
    root = str(archive)
    outside = str(archive.parent / "outside")
    local = [
        "/etc/passwd",
        "/proc/1/root/etc/passwd",
        "/proc/self/environ",
        "/dev/zero",
        "/dev/random",
        f"{root}/../outside/secret.txt",
        f"{root}/sub/../../outside/secret.txt",
        f"{root}/escape",
        f"{root}/escape-dir/secret.txt",
        f"{root}/loop-a",
        f"{root}/fifo",
        f"{root}/missing.fits",
        f"{root}/{'x' * 300}",
        f"{root}/" + "a/" * 200 + "f",
        f"{root}/ok.txt\x00.fits",
        outside,
        f"{outside}/secret.txt",
        "relative/path.fits",
        "./ok.txt",
        "../ok.txt",
        "~/.bashrc",
        "",
        " ",
        "\n",
        f"{root}/ok.txt\n/etc/passwd",
        f"{root}\\..\\outside",
        "C:\\Windows\\win.ini",
        "//etc/passwd",
    ]
    urls = [
        "https://[::1",
        "http://[::1]:99999/x",
        "http://:80/x",
        "http:///x",
        "http://",
        "https://",
        "http://127.0.0.1:0/x",
        "http://127.0.0.1:1/closed",
        "http://999.999.999.999/x",
        "http://user:pass@127.0.0.1:1/x",
        "http://127.0.0.1:1/x?X-Amz-Signature=abc",
        "http://127.0.0.1:1/%00",
        "http://127.0.0.1:1/" + "a" * 5000,
        "http://127.0.0.1:1/x#frag",
        "HTTP://127.0.0.1:1/x",
        "ftp://example.org/x",
        "file:///etc/passwd",
        "gopher://example.org/",
        "javascript:alert(1)",
        "data:text/plain,hello",
        "s3://",
        "s3:///key",
        "s3://b",
        "s3://bad_bucket!/k",
        "s3://" + "b" * 300 + "/k",
        "az://",
        "azure://",
        "az:///blob",
        "ssh://host/x",
        "smb://host/share",
        "\\\\host\\share\\x",
        "http:\\\\127.0.0.1\\x",
    ]
    generated = [f"{root}/{'../' * n}outside/secret.txt" for n in range(1, 11)]
    generated += [f"{root}/{name}" for name in (".", "..", "...", ".hidden", "sub/.", "sub/..")]
    generated += [f"http://127.0.0.1:{port}/x" for port in (-1, 65536, 100000)]
    generated += [f"{scheme}://x" for scheme in ("hdfs", "gs", "webdav", "irods", "root", "xrootd", "dav")]
    generated += [f"{root}/ok.txt{suffix}" for suffix in ("/", "/.", "/..", "\x1b[31m", "\r\n", "\u202e")]
    generated += [f"{root}/%2e%2e/outside/secret.txt", f"{root}/%2E%2E%2Foutside", f"{root}/..%2foutside"]
    generated += ["x" * 9000, "/" * 300, "." * 300, "\x00", "\x7f", "\u2028", "\ufeff/etc/passwd"]
    return local + urls + generated


async def test_hostile_sources_never_500_and_never_read_outside(jp_fetch, jp_root_dir, archive):
    sources = hostile_sources(archive)
    assert len(sources) >= 100
    outside = archive.parent / "outside"
    before = sorted(p.name for p in outside.iterdir())
    outcomes: dict[str, int] = {}
    for i, source in enumerate(sources):
        body = json.dumps({"source": source, "destination": f"h{i}"})
        try:
            response = await jp_fetch(*API, "jobs", method="POST", body=body)
        except HTTPClientError as err:
            assert 400 <= err.code < 500, (source, err.code, err.response.body[:300])
            text = err.response.body.decode()
            assert "Traceback" not in text, source
            code = json.loads(text)["code"]
            assert code, source
            outcomes[code] = outcomes.get(code, 0) + 1
            continue
        job = json.loads(response.body)
        done = await wait_for(jp_fetch, job["id"], timeout=30)
        # Accepted: it must name something inside the source root (and stage only that), or fail cleanly.
        assert done["state"] in ("succeeded", "failed"), (source, done["state"])
        code = (done["error"] or {}).get("code", "staged")
        assert code != "internal_error", (source, done["error"])
        outcomes[code] = outcomes.get(code, 0) + 1
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not any(p.name == "secret.txt" for p in jp_root_dir.rglob("*"))
    assert "invalid_source" in outcomes and "path_not_allowed" in outcomes
