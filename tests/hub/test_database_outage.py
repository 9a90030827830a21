"""A job database that stops answering while the Jupyter server runs (its PostgreSQL server stopped or
restarting): every staging request answers 503 ``database_unavailable`` with the driver's reason, the event
stream too (not a 500 ``internal_error``, not a stream that ends at once), and the server answers again by
itself once the database is back, without a restart."""

from __future__ import annotations

from tests.helpers.groups import skip_group
from tests.hub.conftest import PostgresServer, postgres_bindir
from tests.hub.test_schema_too_new import ServerOn


def test_a_database_stopped_while_the_server_runs_is_answered_503_then_again_once_it_is_back(tmp_path):
    bindir = postgres_bindir()
    if bindir is None:
        skip_group("postgres", "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")
    pg = PostgresServer(bindir)  # a cluster of its own: this test stops it
    pg.start()
    data = str(pg.datadir / "data")
    try:
        server = ServerOn(tmp_path / "root", tmp_path / "state", pg.create_database("jobs"))
        server.start()
        try:
            assert server.request("GET", "jobs").status_code == 200
            pg._run("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")

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

            options = f"-p {pg.port} -h 127.0.0.1 -k {pg.datadir} -c fsync=off"
            pg._run("pg_ctl", "-D", data, "-o", options, "-l", str(pg.datadir / "server.log"), "-w", "start")
            answer = server.request("GET", "jobs", timeout=30)
            assert answer.status_code == 200 and answer.json()["jobs"] == []
        finally:
            server.stop()
        log = server.log_path.read_text()
        assert "Cannot send error response after headers written" not in log
        assert "the job database cannot be reached: OperationalError" in log
    finally:
        pg.stop()
