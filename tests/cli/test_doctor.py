"""``jupyter staging doctor`` as a user runs it: a subprocess, with its Jupyter config and environment in
tmp folders, against real parts (SQLite files, folders, moto's S3, Azurite, a real JupyterHub).

The broken setups are real too. Tests run as root, so permission bits would not stop anything: an
unwritable place is a path below a regular file, a missing folder is missing, an unreachable endpoint is a
closed port on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.groups import require_azure_sdk, skip_group
from tests.helpers.net import free_port
from tests.helpers.servers import AZURITE_KEY, AzuriteServer, find_azurite

#: Every test runs the doctor as a subprocess (about 4 s: it imports jupyter_server, as the server does).
pytestmark = pytest.mark.slow

#: Long, recognisable secrets: the doctor must never print them.
AWS_SECRET = "doctor-aws-secret-key-0123456789abcdef"
HUB_TOKEN = "doctor-hub-token-0123456789abcdef"


class Setup:
    """A server's world in ``tmp_path``: Jupyter config folder, root_dir, database folder, archive."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.config_dir = tmp_path / "jupyter-config"
        self.data_dir = tmp_path / "jupyter-data"
        self.root = tmp_path / "root"
        self.archive = tmp_path / "archive"
        self.db = tmp_path / "db" / "jobs.sqlite"
        for folder in (self.config_dir, self.data_dir, self.root, self.archive, self.db.parent):
            folder.mkdir(parents=True)
        (self.archive / "kepler.fits").write_bytes(b"SIMPLE  =                    T")
        self.env: dict[str, str] = {}
        self.server_config: dict = {
            "ServerApp": {"root_dir": str(self.root)},
            "StagingApp": {
                "staging_dir": "staging",
                "db_url": f"sqlite:///{self.db}",
                "source_roots": [str(self.archive)],
            },
        }

    def run(
        self, *args: str, timeout: float = 120, launcher: tuple[str, ...] = ("-m", "jupyter_staging.cli")
    ) -> subprocess.CompletedProcess[str]:
        """``python -m jupyter_staging.cli doctor ARGS`` with only this setup's config and environment."""
        (self.config_dir / "jupyter_server_config.json").write_text(json.dumps(self.server_config))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "AZURE_", "JUPYTERHUB_", "JUPYTER_", "JPY_"))
        }
        env.update(
            JUPYTER_CONFIG_DIR=str(self.config_dir),
            JUPYTER_DATA_DIR=str(self.data_dir),
            JUPYTER_RUNTIME_DIR=str(self.data_dir / "runtime"),
            # No real AWS configuration of this machine may leak in.
            AWS_CONFIG_FILE=str(self.tmp / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.tmp / "no-aws-credentials"),
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.update(self.env)
        return subprocess.run(
            [sys.executable, *launcher, "doctor", *args],
            cwd=self.tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_json(self, *args: str) -> tuple[int, dict]:
        proc = self.run("--json", *args)
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)


def checks_by_name(report: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for check in report["checks"]:
        found.setdefault(check["name"], []).append(check)
    return found


def only(report: dict, name: str) -> dict:
    [check] = checks_by_name(report)[name]
    return check


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in (AWS_SECRET, HUB_TOKEN, AZURITE_KEY):
            assert secret not in text


@pytest.fixture
def setup(tmp_path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
def s3_setup(setup, s3_env, s3_server) -> tuple[Setup, str]:
    """``setup`` with moto's S3 in its environment (a longer secret key than moto's default) and a bucket."""
    _, bucket = s3_env
    setup.env.update(s3_server.env())
    setup.env["AWS_SECRET_ACCESS_KEY"] = AWS_SECRET
    return setup, bucket


# -- a working setup ------------------------------------------------------------------------------------


def test_good_setup_passes_with_exit_status_0(s3_setup):
    setup, bucket = s3_setup

    proc = setup.run("--s3-bucket", bucket)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("extension", "database", "staging folder", "source root", "s3"):
        [line] = [ln for ln in lines if ln[6:].startswith(name + " ")]
        assert line.startswith("OK "), line
    assert f"bucket '{bucket}'" in proc.stdout and "0 failed" in proc.stdout
    assert "FAIL" not in proc.stdout
    assert_no_secrets(proc.stdout, proc.stderr)
    # The probe row and the probe file are gone; nothing was created for the staging folder.
    with sqlite3.connect(setup.db) as db:
        assert db.execute("select count(*) from staging_jobs").fetchone() == (0,)
    assert list(setup.root.iterdir()) == []


def test_good_setup_as_json(s3_setup):
    setup, bucket = s3_setup
    setup.env["JUPYTER_STAGING_DOCTOR_BUCKET"] = bucket  # the bucket from the environment this time

    status, report = setup.run_json()

    assert status == 0 and report["ok"] is True
    assert {c["status"] for c in report["checks"]} <= {"ok", "skip"}
    statuses = {name: [c["status"] for c in checks] for name, checks in checks_by_name(report).items()}
    assert statuses["extension"] == statuses["database"] == statuses["staging folder"] == ["ok"]
    assert statuses["source root"] == ["ok"] and statuses["s3"] == ["ok"]
    assert statuses["azure"] == statuses["hub"] == statuses["hub service"] == ["skip"]
    assert report["root_dir"] == str(setup.root)
    assert str(setup.config_dir / "jupyter_server_config.json") in report["config_files"]


def test_command_line_overrides_the_config_files(setup, tmp_path):
    other_root = tmp_path / "other-root"
    other_root.mkdir()
    other_db = tmp_path / "other.sqlite"

    status, report = setup.run_json(
        "--root-dir", str(other_root), "--db-url", f"sqlite:///{other_db}", "--staging-dir", "incoming"
    )

    assert status == 0, report
    assert report["root_dir"] == str(other_root)
    assert str(other_root / "incoming") in only(report, "staging folder")["message"]
    assert str(other_db) in only(report, "database")["message"] and other_db.exists()
    assert not setup.db.exists()


def test_a_refused_setting_fails_its_check_by_name_and_the_other_checks_still_run(setup):
    """A value the server refuses (from a config file and from the command line) is a failed ``settings``
    check naming the setting, not a traceback; the database configured beside it is still checked."""
    setup.server_config["StagingApp"]["concurrent_items"] = 0

    status, report = setup.run_json("--StagingApp.streams_per_file=four")

    assert status == 1, report
    refused = checks_by_name(report)["settings"]
    assert [c["status"] for c in refused] == ["fail", "fail"]
    assert any("'concurrent_items'" in c["message"] for c in refused)
    assert any("'streams_per_file'" in c["message"] for c in refused)
    assert all("staging_misconfigured" in c["fix"] for c in refused)
    assert only(report, "database")["status"] == "ok" and str(setup.db) in only(report, "database")["message"]

    del setup.server_config["StagingApp"]["concurrent_items"]
    status, report = setup.run_json()
    assert status == 0, report
    assert only(report, "settings")["status"] == "ok"


def test_jupyter_staging_doctor_through_jupyters_subcommand_dispatch(setup):
    """``jupyter staging doctor`` finds the ``jupyter-staging`` script next to ``jupyter``."""
    bindir = Path(sys.executable).parent
    if not (bindir / "jupyter-staging").exists():
        pytest.skip("the jupyter-staging script is not installed: pip install -e .")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    env.update(JUPYTER_CONFIG_DIR=str(setup.config_dir), JUPYTER_DATA_DIR=str(setup.data_dir))
    (setup.config_dir / "jupyter_server_config.json").write_text(json.dumps(setup.server_config))

    proc = subprocess.run(
        [str(bindir / "jupyter"), "staging", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    report = json.loads(proc.stdout)
    assert only(report, "database")["status"] == "ok", proc.stderr
    assert only(report, "extension")["status"] == "ok"


# -- broken setups --------------------------------------------------------------------------------------


def test_broken_setup_names_each_broken_part_with_a_fix_and_exits_1(s3_setup):
    setup, _ = s3_setup
    (setup.root / "blocker").write_text("a file where a folder should be\n")
    (setup.tmp / "dbfile").write_text("not a folder\n")
    missing_root = setup.tmp / "mnt" / "archive"
    setup.server_config["StagingApp"].update(
        staging_dir="blocker/staging",
        db_url=f"sqlite:///{setup.tmp / 'dbfile' / 'jobs.sqlite'}",
        source_roots=[str(setup.archive), str(missing_root)],
    )
    setup.server_config["ServerApp"]["jpserver_extensions"] = {"jupyter_staging": False}
    setup.env["JUPYTERHUB_API_TOKEN"] = HUB_TOKEN
    closed = free_port()

    proc = setup.run(
        "--s3-bucket", "no-such-bucket-here",
        "--hub-url", f"http://127.0.0.1:{closed}/",
        "--hub-service-url", f"http://127.0.0.1:{closed}/services/staging/",
        "--timeout", "5",
    )  # fmt: skip

    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert_no_secrets(out, proc.stderr)

    def block(name: str, needle: str = "") -> str:
        """The FAIL line of check ``name`` (containing ``needle``) and its fix line."""
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("FAIL") and line[6:].startswith(name + " ") and needle in line:
                assert "fix: " in lines[i + 1], lines[i + 1]
                return line + "\n" + lines[i + 1]
        raise AssertionError(f"no FAIL for {name!r} ({needle!r}) in:\n{out}")

    extension = block("extension")
    assert f"disabled by ServerApp.jpserver_extensions in {setup.config_dir}" in extension
    assert '"jupyter_staging": true' in extension
    assert f"{setup.tmp / 'dbfile'} is a file" in block("database")
    assert f"{setup.root / 'blocker'} is a file" in block("staging folder")
    assert "does not exist" in block("source root", str(missing_root))
    assert f"mount or create {missing_root}" in block("source root", str(missing_root))
    assert [ln for ln in out.splitlines() if ln.startswith("OK") and str(setup.archive) in ln]
    assert "'no-such-bucket-here' does not exist" in block("s3")
    assert "aws s3 mb s3://no-such-bucket-here" in block("s3")
    assert "cannot reach the JupyterHub API" in block("hub")
    assert "cannot reach the staging service" in block("hub service")
    # Nothing was created where the doctor found problems.
    assert not (setup.tmp / "mnt").exists() and (setup.tmp / "dbfile").is_file()


def test_broken_setup_as_json(s3_setup):
    setup, _ = s3_setup
    setup.env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # the wrong port
    setup.server_config["StagingApp"]["source_roots"] = [str(setup.tmp / "absent")]

    status, report = setup.run_json("--s3-bucket", "results", "--timeout", "5")

    assert status == 1 and report["ok"] is False
    s3 = only(report, "s3")
    assert s3["status"] == "fail" and "cannot reach the S3 endpoint" in s3["message"]
    assert "AWS_ENDPOINT_URL" in s3["fix"]
    root = only(report, "source root")
    assert root["status"] == "fail" and "StagingApp.source_roots" in root["fix"]
    assert only(report, "database")["status"] == "ok"


def test_an_executor_class_that_does_not_import_is_named_and_the_other_settings_kept(setup):
    """traitlets words a class it cannot import with the app's repr (``<...StagingApp object at 0x...>``), not
    ``a StagingApp``: the setting was not found in the message, so the doctor checked every other setting at
    its default (the default database said ok beside a configured one that does not exist)."""
    setup.server_config["StagingApp"]["db_url"] = f"sqlite:///{setup.tmp / 'nowhere' / 'jobs.sqlite'}"

    typo = "jupyter_staging.engine.executors.DaskExcutor"
    status, report = setup.run_json(f"--StagingApp.executor_class={typo}")

    assert status == 1, report
    refused = only(report, "settings")
    assert refused["status"] == "fail" and "'executor_class'" in refused["message"]
    assert " object at 0x" not in refused["message"] and "of a StagingApp" in refused["message"]
    db = only(report, "database")
    assert db["status"] == "fail" and "does not exist" in db["message"]


def test_missing_database_folder_and_a_file_that_is_not_a_database(setup):
    setup.server_config["StagingApp"]["db_url"] = f"sqlite:///{setup.tmp / 'nowhere' / 'jobs.sqlite'}"
    status, report = setup.run_json()
    db = only(report, "database")
    assert status == 1 and db["status"] == "fail"
    assert "does not exist" in db["message"] and f"mkdir -p {setup.tmp / 'nowhere'}" in db["fix"]

    garbage = setup.tmp / "garbage.sqlite"
    garbage.write_bytes(b"this is not a SQLite database at all, just text " * 100)
    setup.server_config["StagingApp"]["db_url"] = f"sqlite:///{garbage}"
    status, report = setup.run_json()
    db = only(report, "database")
    assert status == 1 and db["status"] == "fail"
    assert "cannot open or write to the job database" in db["message"] and "not a database" in db["message"]


def test_staging_dir_through_a_dot_folder_or_dotdot_is_refused(setup):
    for staging_dir in ("../outside", ".hidden/staging"):
        setup.server_config["StagingApp"]["staging_dir"] = staging_dir
        status, report = setup.run_json()
        check = only(report, "staging folder")
        assert status == 1 and check["status"] == "fail", staging_dir
        assert "is refused" in check["message"] and "StagingApp.staging_dir" in check["fix"]


def test_low_free_space_is_a_warning_not_a_failure(setup):
    status, report = setup.run_json("--min-free-gib", "1000000")

    check = only(report, "staging folder")
    assert status == 0 and check["status"] == "warn"
    assert "free" in check["message"] and "space" in check["fix"]


def test_s3_credentials_missing_with_an_endpoint_configured(setup, s3_server):
    setup.env["AWS_ENDPOINT_URL"] = s3_server.endpoint_url

    status, report = setup.run_json("--s3-bucket", "results")

    s3 = only(report, "s3")
    assert status == 1 and s3["status"] == "fail" and "NoCredentials" in s3["message"]
    assert "AWS_ACCESS_KEY_ID" in s3["fix"]


def test_s3_unknown_profile(setup):
    setup.env["AWS_PROFILE"] = "no-such-profile"

    status, report = setup.run_json()

    s3 = only(report, "s3")
    assert status == 1 and s3["status"] == "fail" and "'no-such-profile'" in s3["message"]


def test_extension_disabled_for_the_user_names_the_file_that_disables_it(setup):
    """As after ``jupyter server extension disable --user jupyter_staging``, with the user's config
    folder outranking the environment's (JUPYTER_PREFER_ENV_PATH=0; in a virtualenv jupyter_core
    otherwise puts the environment first, and then the doctor, like the server, finds it enabled)."""
    setup.env["JUPYTER_PREFER_ENV_PATH"] = "0"
    dotd = setup.config_dir / "jupyter_server_config.d"
    dotd.mkdir()
    (dotd / "jupyter_staging.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_staging": False}}})
    )

    status, report = setup.run_json()

    check = only(report, "extension")
    assert status == 1 and check["status"] == "fail"
    assert str(dotd / "jupyter_staging.json") in check["message"]
    assert "jupyter server extension enable --user jupyter_staging" in check["fix"]


# -- Azure ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azurite_for_doctor():
    require_azure_sdk()
    command = find_azurite()
    if command is None:
        skip_group("azure", "azurite-blob is not installed: run scripts/ci-azure-deps.sh")
    with AzuriteServer(command) as server:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(server.connection_string).create_container("results")
        yield server


def test_azure_container_ok_missing_and_wrong_key(setup, azurite_for_doctor):
    setup.env["AZURE_STORAGE_CONNECTION_STRING"] = azurite_for_doctor.connection_string

    status, report = setup.run_json("--azure-container", "results")
    azure = only(report, "azure")
    assert status == 0 and azure["status"] == "ok" and "'results'" in azure["message"]

    status, report = setup.run_json("--azure-container", "absent")
    azure = only(report, "azure")
    assert status == 1 and azure["status"] == "fail" and "does not exist" in azure["message"]
    assert "az storage container create -n absent" in azure["fix"]

    wrong = "d3Jvbmcta2V5LWZvci10aGUtZG9jdG9yLXRlc3Qtb25seS0wMTIzNDU2Nzg5YWJjZGVm"
    setup.env["AZURE_STORAGE_CONNECTION_STRING"] = azurite_for_doctor.connection_string.replace(
        AZURITE_KEY, wrong
    )
    proc = setup.run("--azure-container", "results")
    assert proc.returncode == 1
    [line] = [ln for ln in proc.stdout.splitlines() if ln[6:].startswith("azure ")]
    assert line.startswith("FAIL") and "refused the key or SAS" in line and "'results'" in line
    assert wrong not in proc.stdout + proc.stderr
    assert_no_secrets(proc.stdout, proc.stderr)


def test_azure_configured_without_the_extra_says_what_to_install(setup):
    # The one simulated fault: azure-storage-blob cannot be imported in the doctor's process.
    launcher = (
        "-c",
        "import sys; sys.modules['azure.storage.blob'] = None; "
        "from jupyter_staging.cli.main import main; main(sys.argv[1:])",
    )
    setup.env["AZURE_STORAGE_CONNECTION_STRING"] = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    )

    proc = setup.run("--json", launcher=launcher)

    azure = only(json.loads(proc.stdout), "azure")
    assert proc.returncode == 1 and azure["status"] == "fail"
    assert azure["fix"] == 'pip install "jupyter_staging[azure]"'
    assert_no_secrets(proc.stdout, proc.stderr)


def test_azure_unreachable_endpoint(setup):
    require_azure_sdk()
    setup.env["AZURE_STORAGE_CONNECTION_STRING"] = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/devstoreaccount1;"
    )

    proc = setup.run("--azure-container", "results", "--timeout", "5")

    assert proc.returncode == 1
    [line] = [ln for ln in proc.stdout.splitlines() if ln[6:].startswith("azure ")]
    assert line.startswith("FAIL") and "cannot reach Azure Blob Storage" in line
    assert_no_secrets(proc.stdout, proc.stderr)


# -- a real JupyterHub ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A real JupyterHub with the staging service (tests/hub/hubproc.py), on 127.0.0.1."""
    from tests.helpers.hub import HubProcess, find_proxy

    proxy = find_proxy()
    if proxy is None:
        skip_group("hub", "configurable-http-proxy is not installed: run scripts/ci-hub-deps.sh")
    hub = HubProcess(tmp_path_factory.mktemp("doctor-hub"), proxy=proxy)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def test_hub_and_its_staging_service_answer(setup, hub):
    setup.env.update(JUPYTERHUB_API_URL=f"{hub.url}/hub/api", JUPYTERHUB_API_TOKEN=hub.tokens["alice"])

    proc = setup.run("--hub-service-url", hub.service_url)

    lines = {ln[6:].split("  ")[0].strip(): ln for ln in proc.stdout.splitlines() if ln[:4].strip()}
    assert lines["hub"].startswith("OK") and "user alice" in lines["hub"], proc.stdout
    assert lines["hub service"].startswith("OK"), proc.stdout
    assert hub.tokens["alice"] not in proc.stdout + proc.stderr


def test_hub_refusing_the_token_and_a_service_prefix_with_nothing_behind_it(setup, hub):
    setup.env["JUPYTERHUB_API_TOKEN"] = HUB_TOKEN

    status, report = setup.run_json("--hub-url", hub.url, "--hub-service-url", f"{hub.url}/services/nothing/")

    assert status == 1
    check = only(report, "hub")
    assert check["status"] == "fail" and "refused JUPYTERHUB_API_TOKEN" in check["message"]
    service = only(report, "hub service")
    assert service["status"] == "fail" and "no route" in service["message"]
    assert "c.JupyterHub.services" in service["fix"]
    assert_no_secrets(json.dumps(report))


def test_scratch_folder_outside_the_root_is_checked_as_jobs_check_it(setup, tmp_path):
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 0 and check["status"] == "ok" and ".staging-scratch" in check["message"]

    private = tmp_path / "node-local"
    private.mkdir(mode=0o700)
    setup.server_config["StagingApp"]["scratch_dir"] = str(private / "scratch")
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 0 and check["status"] == "ok", check
    assert str(private / "scratch") in check["message"] and "writable" in check["message"]
    assert not (private / "scratch").exists()  # checked, not created

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # a node's /tmp
    setup.server_config["StagingApp"]["scratch_dir"] = str(shared / "scratch")
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 0 and check["status"] == "warn", check
    assert "other accounts can write" in check["message"] and "1777" in check["message"]
    assert "mkdir -m 700" in check["fix"]

    (shared / "scratch").mkdir(mode=0o700)  # made beforehand by the account, as the fix says
    status, report = setup.run_json()
    assert only(report, "scratch folder")["status"] == "ok"

    (shared / "scratch").chmod(0o777)  # anyone may swap a job's folder in it: jobs refuse it
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 1 and check["status"] == "fail", check
    assert "no sticky bit" in check["message"] and "is not private" in check["message"]

    setup.server_config["StagingApp"]["scratch_dir"] = "../node-local/scratch"  # out of the root, relative
    check = only(setup.run_json()[1], "scratch folder")
    assert check["status"] == "ok" and str(private / "scratch") in check["message"], check

    (private / "a-file").write_text("x")
    setup.server_config["StagingApp"]["scratch_dir"] = str(private / "a-file" / "scratch")
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 1 and check["status"] == "fail" and "is not a folder" in check["message"], check
    assert "StagingApp.scratch_dir" in check["fix"]


def test_scratch_folder_below_the_root_needs_no_private_parent(setup):
    setup.server_config["StagingApp"]["scratch_dir"] = "fast-scratch"
    status, report = setup.run_json()
    check = only(report, "scratch folder")
    assert status == 0 and check["status"] == "ok", check
    assert "fast-scratch" in check["message"]
