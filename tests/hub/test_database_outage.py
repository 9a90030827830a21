"""A database that stops answering while its server runs (PostgreSQL stopped or restarting): every staging
request of a Jupyter server answers 503 ``database_unavailable`` with the driver's reason, the event stream
too (not a 500 ``internal_error``, not a stream that ends at once), and so does the hub service's API for its
operations database; both answer again by themselves once the database is back, without a restart. A job
whose run fails because the database went away ends ``failed`` (``database_unavailable``) once it is back,
not ``running`` with nothing running it."""

from __future__ import annotations

import shutil
import time

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from tests.helpers.data import KEPLER, KEPLER_NAME
from tests.helpers.groups import skip_group
from tests.helpers.jupyter import ServerOn
from tests.helpers.servers import RangeHTTPServer
from tests.hub.conftest import PostgresServer, postgres_bindir, start_hub


def own_postgres() -> PostgresServer:
    """A PostgreSQL cluster of the test's own (it is stopped and started again), running."""
    bindir = postgres_bindir()
    if bindir is None:
        skip_group("postgres", "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    pg = PostgresServer(bindir)
    pg.start()
    return pg


def pg_stop(pg: PostgresServer) -> None:
    pg._run("pg_ctl", "-D", str(pg.datadir / "data"), "-m", "fast", "-w", "stop")


def pg_remove(pg: PostgresServer) -> None:
    """Stop ``pg`` if it runs, and remove its files."""
    try:
        pg.stop()
    except Exception:  # already stopped (a test failed while it was)
        pass


def pg_start(pg: PostgresServer) -> None:
    options = f"-p {pg.port} -h 127.0.0.1 -k {pg.datadir} -c fsync=off"
    log = str(pg.datadir / "server.log")
    pg._run("pg_ctl", "-D", str(pg.datadir / "data"), "-o", options, "-l", log, "-w", "start")


def test_a_database_stopped_while_the_server_runs_is_answered_503_then_again_once_it_is_back(tmp_path):
    pg = own_postgres()
    try:
        server = ServerOn(tmp_path / "root", tmp_path / "state", pg.create_database("jobs"))
        server.start()
        try:
            assert server.request("GET", "jobs").status_code == 200
            pg_stop(pg)

            for path in ("jobs", "jobs/some-job", "jobs/some-job/log", "events"):
                answer = server.request("GET", path, timeout=30, stream=True)
                try:
                    assert answer.status_code == 503, (path, answer.status_code)
                    body = answer.json()
                    assert body["code"] == "database_unavailable", body
                    assert "cannot be reached now" in body["message"], body
                    assert "Connection refused" in body["message"], body
                    assert "Traceback" not in answer.text
                finally:
                    answer.close()

            pg_start(pg)
            answer = server.request("GET", "jobs", timeout=30)
            assert answer.status_code == 200 and answer.json()["jobs"] == []
        finally:
            server.stop()
        log = server.log_path.read_text()
        assert "Cannot send error response after headers written" not in log
        assert "the job database cannot be reached: OperationalError" in log
    finally:
        pg_remove(pg)


def test_the_hub_services_operations_database_stopped_is_answered_503_then_again(
    tmp_path, kepler, proxy_command
):
    pg = own_postgres()
    try:
        env = {"JUPYTER_STAGING_HUB_DB_URL": pg.create_database("staging_hub")}
        hub = start_hub(tmp_path, kepler, proxy_command, service_env=env)
        try:
            token = hub.tokens["alice"]
            src = str(hub.archive / "kepler" / KEPLER_NAME)
            body = {"method": "local_copy", "local_path_on_storage": src}
            assert hub.api("GET", "api/operations", token=token).status_code == 200
            pg_stop(pg)

            for method, path, json in (("GET", "api/operations", None), ("POST", "api/stage", body)):
                answer = hub.api(method, path, token=token, json=json)
                assert answer.status_code == 503, (path, answer.status_code, answer.text)
                assert answer.json()["code"] == "database_unavailable", answer.text
                assert "operations database cannot be reached now" in answer.json()["message"]

            pg_start(pg)
            answer = hub.api("GET", "api/operations", token=token)
            assert answer.status_code == 200, answer.text
        finally:
            hub.stop()
    finally:
        pg_remove(pg)


def test_a_job_whose_database_went_away_mid_run_ends_failed_once_it_is_back_not_running(tmp_path):
    """The run failed writing its progress and could not record the failure either: the job stayed
    ``running`` for good (its lease still renewed), its folder empty. It is now recorded once the database
    answers again."""
    pg = own_postgres()
    web = tmp_path / "web"
    web.mkdir()
    shutil.copyfile(KEPLER, web / "k.fits")
    root = tmp_path / "root"
    root.mkdir()
    try:
        size = (web / "k.fits").stat().st_size
        with RangeHTTPServer(web, throttle_bytes_per_s=size // 6) as http:  # about 6 s
            manager = StagingManager(root, db_url=pg.create_database("jobs"), sweep_interval=0)
            manager.start()
            try:
                job, _ = manager.create(CreateJob(source=http.url("k.fits"), destination="k"))
                time.sleep(1.5)
                pg_stop(pg)
                time.sleep(6)  # the download ends meanwhile: the run cannot record it
                pg_start(pg)
                deadline = time.monotonic() + 30
                while not (done := manager.get(job.id)).state.is_final and time.monotonic() < deadline:
                    time.sleep(0.5)
            finally:
                manager.stop()
        assert done.state.value == "failed", done.state
        assert done.error is not None and done.error.code == "database_unavailable", done.error
        assert "could not be reached while the job ran" in done.error.message
        assert not (root / "k" / "k.fits").exists()
    finally:
        pg_remove(pg)
