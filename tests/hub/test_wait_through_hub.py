"""A client waiting for a job through JupyterHub's URL of the user's server while that server restarts:
the hub answers API requests with 424 ("JupyterHub server no longer running") while the server is stopped or
starting, which the wait rides out as it does a proxy's 502/503/504, rather than failing at once."""

from __future__ import annotations

import os
import threading

import requests

from tests.helpers.hub import HubProcess
from tests.helpers.servers import RangeHTTPServer
from tests.hub.conftest import build_archive

PAYLOAD_BYTES = 1_500_000


def test_a_wait_through_the_hub_outlives_a_restart_of_the_users_server(tmp_path, kepler, proxy_command):
    from jupyter_staging.kernel.backends import ServerBackend

    build_archive(tmp_path, kepler)
    hub = HubProcess(tmp_path, proxy=proxy_command)
    hub.start()
    served = tmp_path / "www"
    served.mkdir()
    payload = os.urandom(PAYLOAD_BYTES)
    (served / "survey.bin").write_bytes(payload)
    try:
        with RangeHTTPServer(served, throttle_bytes_per_s=300_000) as http:
            hub.start_server("alice")
            backend = ServerBackend(
                f"{hub.url}/user/alice/", hub.tokens["alice"], tmp_path / "homes" / "alice"
            )
            job = backend.create({"source": http.url("survey.bin"), "destination": "staging/survey"})
            hub.stop_server("alice")
            stopped = requests.get(
                f"{hub.url}/user/alice/api/v1/staging/jobs",
                headers={"Authorization": f"token {hub.tokens['alice']}"},
                timeout=30,
            )
            assert stopped.status_code == 424  # what the hub answers while the server is not running
            restart = threading.Timer(2.0, hub.start_server, args=("alice",))
            restart.start()
            try:
                done = backend.wait(job["id"], timeout=150, poll=0.2)
            finally:
                restart.join()
        assert done["state"] == "succeeded", (done.get("error"), done.get("message"), done)
        output = tmp_path / "homes" / "alice" / "staging" / "survey" / "survey.bin"
        assert output.read_bytes() == payload
    finally:
        hub.stop()
