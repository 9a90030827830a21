"""A Hub with ``token_expires_in_max_seconds`` shorter than the hour the service asked its users' tokens
to live refused each (400 ``token expires_in: 3600 must not exceed 1800``), so every ``jupyter_copy``
failed ``not_configured`` (500), telling the admin the service's role lacked ``tokens``. The token is now
made for the Hub's maximum instead, and kept for half of the lifetime the Hub gave it.

Real parts: JupyterHub with configurable-http-proxy on 127.0.0.1, a service token with the ``tokens`` scope.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import requests

from jupyter_staging.hub.hubapi import HubAPI
from tests.helpers.hub import HubProcess


def test_a_hub_with_a_shorter_token_maximum_makes_the_users_token_for_that_long(
    tmp_path: Path, proxy_command: str
):
    service_token = secrets.token_hex(16)
    hub = HubProcess(
        tmp_path,
        proxy=proxy_command,
        extra_config=f"""
c.JupyterHub.token_expires_in_max_seconds = 1800
c.JupyterHub.services.append({{"name": "tok", "api_token": {service_token!r}}})
c.JupyterHub.load_roles.append({{"name": "tok-role", "scopes": ["tokens"], "services": ["tok"]}})
""",
    )
    hub.start()
    try:

        async def make() -> tuple[str, float]:
            api = HubAPI(f"{hub.url}/hub/api", service_token, hub.url)
            token = await api.user_token("alice")
            assert await api.user_token("alice") == token, "kept, not made again"
            return token, api._user_tokens["alice"][1] - asyncio.get_running_loop().time()

        token, kept = asyncio.run(make())
        assert 800 < kept <= 900, "kept for half of the Hub's 1800 s"
        model = requests.get(
            f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=10
        ).json()
        assert model["name"] == "alice" and "access:servers!user=alice" in model["scopes"]
    finally:
        hub.stop()
