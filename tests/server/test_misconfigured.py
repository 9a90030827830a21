"""A server whose ``StagingApp`` settings hold a value a setting refuses: it runs, and staging answers 503
``staging_misconfigured`` naming the setting (not its value), instead of a database said to be unreachable."""

from __future__ import annotations

import pytest

from tests.helpers.jupyter import JupyterServerProcess


@pytest.mark.parametrize(
    ("how", "setting", "value"),
    [
        ("command line", "concurrent_items", "0"),
        ("config file", "streams_per_file", "'four'"),
        ("command line", "streams_per_file", "33"),
        ("command line", "concurrent_items", "10000"),
        ("config file", "max_concurrent_jobs", "0"),
    ],
)
def test_a_refused_setting_turns_staging_off_naming_it(tmp_path, how, setting, value):
    state = tmp_path / "state"
    args: list[str] = []
    if how == "config file":
        (state / "config").mkdir(parents=True)
        (state / "config" / "jupyter_server_config.py").write_text(f"c.StagingApp.{setting} = {value}\n")
    else:
        args = [f"--StagingApp.{setting}={value}"]
    server = JupyterServerProcess(tmp_path / "root", state, extra_args=args)
    server.start()
    try:
        answer = server.request("GET", "jobs")
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["code"] == "staging_misconfigured"
        assert f"StagingApp.{setting}" in body["message"]
        assert "four" not in body["message"] and "Traceback" not in answer.text
        created = server.request("POST", "jobs", json={"source": str(tmp_path), "destination": "x"})
        assert created.status_code == 503 and created.json()["code"] == "staging_misconfigured"
        assert not (tmp_path / "root" / "x").exists()
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert f"'{setting}'" in log and "could not be opened" not in log


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("executor_class", "jupyter_staging.engine.executors.DaskExcutor"),  # does not import
        ("executor_class", "collections.OrderedDict"),  # not an Executor
        ("heartbeat_interval", -1.0),  # this module's validator
        ("source_roots", [1]),
        ("concurrent_items", 0),
    ],
)
def test_the_setting_is_found_in_each_of_traitlets_wordings(setting, value):
    """traitlets names the app ``a StagingApp`` in most messages but ``<...StagingApp object at 0x...>`` when
    a class does not import: that one was not found, so the server said 'a StagingApp setting'."""
    from traitlets import TraitError
    from traitlets.config import Config

    from jupyter_staging.server.app import StagingApp
    from jupyter_staging.server.refused import misconfigured, setting_name

    config = Config()
    config.StagingApp[setting] = value
    with pytest.raises(TraitError) as refused:
        StagingApp(config=config)
    assert setting_name(refused.value) == setting
    assert f"the setting StagingApp.{setting} has" in misconfigured(refused.value).message


def test_the_servers_log_gives_no_password_of_a_refused_value(tmp_path):
    """traitlets' message holds the value refused: a gateway's URL with its password, given where a dict
    belongs, was written whole to the server's log (the answer named the setting only)."""
    args = ["--StagingApp.dask_gateway=https://alice:hunter2@gateway.example.org/"]
    server = JupyterServerProcess(tmp_path / "root", tmp_path / "state", extra_args=args)
    server.start()
    try:
        answer = server.request("GET", "jobs")
        assert answer.status_code == 503 and "StagingApp.dask_gateway" in answer.json()["message"]
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "'dask_gateway'" in log and "gateway.example.org" in log and "hunter2" not in log
