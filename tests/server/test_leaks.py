"""Issue 11, acceptance 3: a URL carrying each kind of secret the old redaction missed appears nowhere with
its secret value: not in API answers, events, the log, the job database (rows, WAL) or the manifest.

The sources are real downloads from a Range HTTP server on 127.0.0.1 (it serves the path and ignores the
query), staged by a real Jupyter server (pytest-jupyter) as one manifest job.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from urllib.parse import quote

import pytest

from tests.helpers.api import API, wait_for
from tests.helpers.data import SPITZER
from tests.helpers.jupyter import server_config
from tests.helpers.leaks import assert_nowhere, database_texts
from tests.helpers.servers import RangeHTTPServer


@pytest.fixture
def jp_server_config(tmp_path):
    return server_config(tmp_path)


def leaky_urls(base: str) -> dict[str, str]:
    """Manifest entries: one URL per way a secret used to slip through, each with its own secret value."""
    host = base.split("://", 1)[1].rstrip("/")
    nested = quote(f"https://bucket.example.org/k?X-Amz-Signature=SECRETNESTED{'0' * 20}", safe="")
    return {
        "backblaze": f"{base}cat.xml?Authorization=SECRETB2{'1' * 20}",
        "google": f"{base}cat.xml?key=SECRETGOOGLE{'2' * 20}",
        "password": f"{base}cat.xml?password=SECRETPASSWORD{'3' * 20}",
        "secret": f"{base}cat.xml?secret=SECRETSECRET{'4' * 20}",
        "client": f"{base}cat.xml?client_secret=SECRETCLIENT{'5' * 20}",
        "code": f"{base}cat.xml?code=SECRETCODE{'6' * 20}",
        "auth": f"{base}cat.xml?auth=SECRETAUTH{'7' * 20}",
        "nested": f"{base}cat.xml?next={nested}",
        "fragment": f"{base}cat.xml#sig=SECRETFRAGMENT{'9' * 20}",
        "semicolon": f"{base}cat.xml?a=1;sig=SECRETSEMICOLON{'8' * 20}",
        "userinfo": f"http://user:SECRETUSERINFO{'0' * 20}@{host}/cat.xml",
    }


async def test_no_secret_of_any_kind_leaks(
    jp_fetch, jp_root_dir, tmp_path, caplog, http_server_client, jp_base_url, jp_auth_header
):
    caplog.set_level(logging.DEBUG)
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(SPITZER, web / "cat.xml")
    http = RangeHTTPServer(web).start()
    events = bytearray()
    stream = asyncio.ensure_future(
        http_server_client.fetch(
            f"{jp_base_url}api/v1/staging/events",
            headers=jp_auth_header,
            streaming_callback=events.extend,
            request_timeout=20,
        )
    )
    await asyncio.sleep(0.3)
    try:
        entries = leaky_urls(http.url(""))
        secrets = [
            part for url in entries.values() for part in url.replace("=", " ").replace("@", " ").split()
        ]
        secrets = [s.split("&")[0].split(";")[0].split(":")[-1] for s in secrets if "SECRET" in s]
        secrets += ["SECRETNESTED"]
        assert len(secrets) >= 11
        body = json.dumps({"manifest": entries, "destination": "leaks"})
        created = json.loads((await jp_fetch(*API, "jobs", method="POST", body=body)).body)
        done = await wait_for(jp_fetch, created["id"], timeout=60)
        answers = [json.dumps(created), json.dumps(done)]
        for path in ("", "/chunks", "/manifest", "/log"):
            answers.append((await jp_fetch(*API, "jobs", created["id"] + path)).body.decode())
        answers.append((await jp_fetch(*API, "jobs")).body.decode())
    finally:
        http.stop()
        await asyncio.sleep(0.5)
        stream.cancel()
    assert done["state"] == "succeeded", done
    manifest = (jp_root_dir / "leaks" / "manifest.json").read_text()
    assert_nowhere(secrets, answers, "API answers")
    assert_nowhere(secrets, [events.decode("utf-8", "replace")], "server-sent events")
    assert_nowhere(secrets, [caplog.text], "the server's log")
    assert_nowhere(secrets, [manifest], "manifest.json")
    assert_nowhere(secrets, database_texts(tmp_path / "staging-jobs.sqlite"), "the job database")
