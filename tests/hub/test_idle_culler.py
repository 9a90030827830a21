"""jupyterhub-idle-culler against a real hub at short timeouts: a server with a running staging job is
kept, an idle one is culled, and the busy one is culled once its job has ended."""

from __future__ import annotations

import os
import sys
import time

import pytest
import requests

from tests.helpers.hub import HubProcess
from tests.helpers.servers import RangeHTTPServer

from .conftest import build_archive

pytestmark = pytest.mark.slow

#: Seconds without activity after which the culler stops a server, and how often it looks.
CULL_TIMEOUT, CULL_EVERY = 15, 3
#: The download: 2.4 MB at 60 kB/s, about 40 s, well past the cull timeout.
PAYLOAD_BYTES, RATE = 2_400_000, 60_000

CULLER_CONFIG = f"""
import sys
c.JupyterHub.services.append({{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                "--timeout={CULL_TIMEOUT}", "--cull-every={CULL_EVERY}"],
}})
c.JupyterHub.load_roles.append({{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}})
c.JupyterHub.last_activity_interval = 2
c.Spawner.environment = {{"JUPYTERHUB_ACTIVITY_INTERVAL": "2"}}
c.Spawner.args = ["--allow-root", "--StagingApp.keep_alive_interval=1"]
"""


@pytest.fixture
def culled_hub(tmp_path, kepler, proxy_command):
    build_archive(tmp_path, kepler)
    hub = HubProcess(tmp_path, proxy=proxy_command, extra_config=CULLER_CONFIG)
    hub.start()
    yield hub
    hub.stop()


def wait_until_culled(hub: HubProcess, username: str, timeout: float) -> float:
    """Seconds until ``username``'s server is gone (asked of the Hub API, never through the proxy: proxied
    requests would count as activity)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if hub.server_state(username) is None:
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{username}'s server was not culled in {timeout} s:\n{hub.log_tail()}")


def test_a_running_job_keeps_its_server_and_an_idle_server_is_culled(culled_hub, tmp_path):
    hub = culled_hub
    served = tmp_path / "www"
    served.mkdir()
    (served / "survey.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    with RangeHTTPServer(served, throttle_bytes_per_s=RATE) as http:
        hub.start_server("alice")
        hub.start_server("bob")
        r = requests.post(
            f"{hub.url}/user/alice/api/v1/staging/jobs",
            headers={"Authorization": f"token {hub.tokens['alice']}"},
            json={"source": http.url("survey.bin"), "destination": "staging/survey"},
            timeout=60,
        )
        assert r.status_code == 201, r.text
        started = time.monotonic()

        # bob's idle server goes; alice's stays while her job runs.
        wait_until_culled(hub, "bob", CULL_TIMEOUT + 6 * CULL_EVERY + 20)
        output = tmp_path / "homes" / "alice" / "staging" / "survey" / "survey.bin"
        while not output.exists():
            assert hub.server_state("alice") is not None, "alice's server was culled mid-job"
            assert time.monotonic() - started < 180, "the job did not finish"
            time.sleep(1)
        busy = time.monotonic() - started
        assert busy > CULL_TIMEOUT + 2 * CULL_EVERY, f"the job ended too soon ({busy:.0f} s) to show anything"
        assert output.stat().st_size == PAYLOAD_BYTES

        # Once the job has ended, alice's server is idle too and is culled.
        wait_until_culled(hub, "alice", CULL_TIMEOUT + 6 * CULL_EVERY + 20)
    print(f"alice's server kept {busy:.0f} s while staging (cull timeout {CULL_TIMEOUT} s)", file=sys.stderr)
