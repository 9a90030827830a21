"""A hostile hub user against the staging service, end to end: a real JupyterHub
(examples/jupyterhub_config.py), its proxy, the service it manages and real users' servers, which their
users configure as they like.

One hub serves the whole module; tests run in file order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.helpers.data import KEPLER_NAME
from tests.helpers.hub import HubProcess

from .conftest import start_hub

pytestmark = pytest.mark.slow

#: A ``jupyter_server_config.py`` a user may put in ``~/.jupyter``: their server writes the Authorization
#: header of every request it gets to a file of theirs (``{out}``).
HEADER_SPY = """
import tornado.httputil

_init = tornado.httputil.HTTPServerRequest.__init__


def _spy(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    auth = self.headers.get("Authorization") if self.headers else None
    if auth:
        with open({out!r}, "a") as fh:
            fh.write(auth + "\\n")


tornado.httputil.HTTPServerRequest.__init__ = _spy
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory, kepler, proxy_command):
    hub = start_hub(tmp_path_factory.mktemp("hub-attacks"), kepler, proxy_command)
    yield hub
    hub.stop()


def source(hub: HubProcess) -> str:
    return str(hub.archive / "kepler" / KEPLER_NAME)


def wait_for(hub: HubProcess, op_id: str, who: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = hub.api("GET", f"api/operations/{op_id}", token=hub.tokens[who])
        assert r.status_code == 200, r.text
        if r.json()["status"] != "running":
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.5)
    raise AssertionError(f"operation {op_id} still running after {timeout} s:\n{hub.log_tail()}")


def test_bobs_server_never_gets_a_token_that_opens_alices_server(hub, tmp_path):
    """bob's own server (his config: he runs it) records the headers of the service's jupyter_copy calls;
    what it gets is bob's: a token of bob's reaching nothing of alice's, never the service's token (whose
    scopes opened every user's server: alice's answered it 200)."""
    captured = tmp_path / "captured.txt"
    config = hub.homes / "bob" / ".jupyter"
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.py").write_text(HEADER_SPY.format(out=str(captured)))
    if hub.server_state("bob"):
        hub.stop_server("bob")
    hub.start_server("alice")
    try:
        body = {"method": "jupyter_copy", "local_path_on_storage": source(hub), "relative_path": "spied/"}
        r = hub.api("POST", "api/stage", token=hub.tokens["bob"], json=body)
        assert r.status_code == 202, r.text
        op = wait_for(hub, r.json()["id"], "bob")
        assert op["status"] == "succeeded", op
        assert (hub.homes / "bob" / "staging" / "spied" / KEPLER_NAME).is_file()
    finally:
        (config / "jupyter_server_config.py").unlink()
    seen = {line.split()[-1] for line in captured.read_text().splitlines()} - {hub.tokens["bob"]}
    assert seen, "the service's calls to bob's server were not seen"
    for token in seen:
        headers = {"Authorization": f"token {token}"}
        whoami = requests.get(f"{hub.url}/hub/api/user", headers=headers, timeout=60)
        assert whoami.status_code == 200, whoami.text
        assert (whoami.json()["kind"], whoami.json()["name"]) == ("user", "bob"), whoami.json()
        scopes = set(whoami.json()["scopes"])  # the hub adds bob's identity (read:users:name!user=bob ...)
        assert "access:servers!user=bob" in scopes and all(s.endswith("!user=bob") for s in scopes), scopes
        alices = requests.get(
            f"{hub.url}/user/alice/api/status", headers=headers, timeout=60, allow_redirects=False
        )
        assert alices.status_code != 200, alices.text
        users = requests.get(f"{hub.url}/hub/api/users/alice", headers=headers, timeout=60)
        assert users.status_code in (403, 404), users.text
