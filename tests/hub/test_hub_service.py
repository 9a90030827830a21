"""The staging service end to end: a real JupyterHub (configured by examples/jupyterhub_config.py), its
proxy, the service it manages, real users' servers with the staging extension, SQLite records.

One hub serves the whole module; tests run in file order and the last one restarts the hub.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.data import KEPLER_NAME
from tests.helpers.hub import HubProcess

from .conftest import start_hub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory, kepler, proxy_command):
    started = time.monotonic()
    hub = start_hub(tmp_path_factory.mktemp("hub-sqlite"), kepler, proxy_command)
    print(f"hub and staging service up in {time.monotonic() - started:.1f} s")
    yield hub
    hub.stop()


def source(hub: HubProcess) -> str:
    return str(hub.archive / "kepler" / KEPLER_NAME)


def stage(hub: HubProcess, who: str, body: dict[str, Any], **params: str):
    token = hub.tokens[who] if who else None
    return hub.api("POST", "api/stage", token=token, json=body, params=params or None)


def area(hub: HubProcess, user: str) -> Path:
    return hub.homes / user / "staging"


def operation(hub: HubProcess, op_id: str, who: str = "admin") -> dict[str, Any]:
    r = hub.api("GET", f"api/operations/{op_id}", token=hub.tokens[who])
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(hub: HubProcess, op_id: str, who: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = operation(hub, op_id, who)
        if op["status"] != "running":
            return op
        time.sleep(0.5)
    raise AssertionError(f"operation {op_id} still running after {timeout} s:\n{hub.log_tail()}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- acceptance 1: the service starts with the hub, alice logs in with her browser ------------------


def test_alice_logs_in_through_the_browser_and_sees_her_page(hub):
    session = hub.login("alice")
    page = session.get(hub.service_url, timeout=60)
    assert page.status_code == 200
    assert page.url == hub.service_url  # came back from the OAuth dance to the service
    assert "<title>Data staging</title>" in page.text
    assert "alice" in page.text
    assert 'id="stage-form"' in page.text
    assert "Operations log" not in page.text  # the log viewer is for admins
    assert "jpy-logo" in page.text  # JupyterHub's own page.html around it


def test_admin_page_has_the_log_viewer(hub):
    session = hub.login("admin")
    page = session.get(hub.service_url, timeout=60)
    assert page.status_code == 200
    assert 'id="log-viewer"' in page.text
    assert "Operations of all users" in page.text


def test_the_page_form_posts_with_the_login_cookie_and_xsrf_token(hub):
    session = hub.login("alice")
    page = session.get(hub.service_url, timeout=60)
    xsrf = re.search(r'const xsrf = "([^"]+)"', page.text).group(1)
    body = {"method": "symlink", "local_path_on_storage": source(hub), "relative_path": "from-page/"}
    without = session.post(hub.service_url + "api/stage", json=body, timeout=60)
    assert without.status_code == 403  # a cookie alone is not enough to change anything
    r = session.post(hub.service_url + "api/stage", json=body, headers={"X-XSRFToken": xsrf}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["user"] == "alice"


# -- acceptance 2: local_copy, read-only, byte-identical; again -> duplicate -------------------------


def test_local_copy_is_read_only_and_byte_identical_then_a_duplicate(hub, kepler):
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "kepler/"}
    first = stage(hub, "alice", body)
    assert first.status_code == 201, first.text
    op = first.json()
    target = area(hub, "alice") / "kepler" / KEPLER_NAME
    assert op["status"] == "succeeded"
    assert op["target"] == str(target)
    assert op["user"] == op["actor"] == "alice"
    assert target.read_bytes() == kepler.read_bytes()
    assert op["bytes"] == kepler.stat().st_size == 1457280
    assert op["sha256"] == sha256(kepler)
    assert stat.S_IMODE(target.lstat().st_mode) == 0o444
    assert first.headers["Location"].endswith(f"/services/staging/api/operations/{op['id']}")
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".part")]

    again = stage(hub, "alice", body)
    assert again.status_code == 200, again.text
    dup = again.json()
    assert dup["status"] == "skipped" and dup["duplicate"] is True and dup["error_code"] == "duplicate"
    assert dup["id"] != op["id"]
    ids = [o["id"] for o in hub.api("GET", "api/operations", token=hub.tokens["alice"]).json()["operations"]]
    assert ids[:2] == [dup["id"], op["id"]]  # one new record, newest first


def test_a_different_file_of_the_same_name_is_never_overwritten(hub):
    folder = area(hub, "alice") / "mine"
    folder.mkdir(parents=True)
    (folder / KEPLER_NAME).write_bytes(b"alice's own work")
    r = stage(
        hub, "alice", {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "mine/"}
    )
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "target_exists"
    assert (folder / KEPLER_NAME).read_bytes() == b"alice's own work"
    assert operation(hub, r.json()["operation_id"], "alice")["status"] == "failed"


def test_copy_to_a_new_name(hub, kepler):
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "renamed/lc.fits"}
    r = stage(hub, "alice", body)
    assert r.status_code == 201, r.text
    assert (area(hub, "alice") / "renamed" / "lc.fits").read_bytes() == kepler.read_bytes()


# -- acceptance 3: hostile requests are refused, clearly, and recorded -------------------------------


HOSTILE = {
    "dotdot-target": ({"relative_path": "../../bob/staging/evil.fits"}, "path_not_allowed"),
    "absolute-target": ({"relative_path": "{homes}/bob/staging/evil.fits"}, "path_not_allowed"),
    "hidden-target": ({"relative_path": ".ipython/startup.fits"}, "path_not_allowed"),
    "dotdot-source": ({"local_path_on_storage": "{archive}/../outside/secret.txt"}, "path_not_allowed"),
    "absolute-source-outside": ({"local_path_on_storage": "/etc/passwd"}, "path_not_allowed"),
    "relative-source": ({"local_path_on_storage": "kepler/" + KEPLER_NAME}, "path_not_allowed"),
    "symlink-out-of-archive": ({"local_path_on_storage": "{archive}/escape.fits"}, "path_not_allowed"),
    "missing-source": ({"local_path_on_storage": "{archive}/kepler/nope.fits"}, "source_not_found"),
    "folder-source": ({"local_path_on_storage": "{archive}/a-folder"}, "source_not_a_file"),
    "unknown-method": ({"method": "teleport"}, "invalid_request"),
    "source-name-not-utf8": ({"local_path_on_storage": "{archive}/cafe.fits"}, "name_not_utf8"),
    "target-lone-surrogate": ({"relative_path": "caf\udce9.fits"}, "name_not_utf8"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_requests_are_refused_and_recorded(hub, case):
    changes, code = HOSTILE[case]
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "hostile/"}
    for key, value in changes.items():
        body[key] = value.format(homes=hub.homes, archive=hub.archive)
    r = stage(hub, "alice", body)
    assert r.status_code == 400, r.text
    error = r.json()
    assert set(error) == {"message", "reason", "code", "operation_id"}
    assert error["code"] == code
    assert "Traceback" not in r.text
    op = operation(hub, error["operation_id"], "alice")
    assert op["status"] == "failed" and op["error_code"] == code and op["user"] == "alice"
    assert not (hub.homes / "bob" / "staging" / "evil.fits").exists()
    assert (hub.workdir / "outside" / "secret.txt").read_text() == "not for users\n"


def test_a_symlinked_folder_in_the_area_is_never_followed(hub):
    outside = hub.workdir / "outside" / "alice-link-target"
    outside.mkdir()
    (area(hub, "alice")).mkdir(parents=True, exist_ok=True)
    (area(hub, "alice") / "linked").symlink_to(outside)
    for method in ("local_copy", "hardlink", "symlink", "jupyter_copy"):
        body = {"method": method, "local_path_on_storage": source(hub), "relative_path": "linked/"}
        r = stage(hub, "alice", body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "path_not_allowed"
        assert "symbolic link" in r.json()["message"]
    nested = {
        "method": "local_copy",
        "local_path_on_storage": source(hub),
        "relative_path": "linked/deeper/x.fits",
    }
    assert stage(hub, "alice", nested).json()["code"] == "path_not_allowed"
    assert list(outside.iterdir()) == []


def test_a_symlinked_user_area_is_never_followed(hub):
    outside = hub.workdir / "outside" / "admin-area"
    outside.mkdir()
    (hub.homes / "admin").mkdir(parents=True, exist_ok=True)
    (hub.homes / "admin" / "staging").symlink_to(outside)
    r = stage(hub, "admin", {"method": "local_copy", "local_path_on_storage": source(hub)})
    assert r.status_code == 400 and r.json()["code"] == "path_not_allowed", r.text
    assert list(outside.iterdir()) == []


def test_a_planted_symlink_at_the_target_name_is_not_followed(hub):
    victim = hub.workdir / "outside" / "victim.txt"
    victim.write_text("untouched")
    folder = area(hub, "alice") / "planted"
    folder.mkdir(parents=True)
    (folder / KEPLER_NAME).symlink_to(victim)
    r = stage(
        hub,
        "alice",
        {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "planted/"},
    )
    assert r.status_code == 409 and r.json()["code"] == "target_exists", r.text
    assert victim.read_text() == "untouched"


def test_alice_cannot_stage_into_bobs_area(hub):
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "from-alice/"}
    r = stage(hub, "alice", body, username="bob")
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "forbidden"
    assert not (area(hub, "bob") / "from-alice").exists()
    op = operation(hub, r.json()["operation_id"], "alice")
    assert op["status"] == "failed" and op["error_code"] == "forbidden" and op["user"] == "alice"


def test_the_user_is_never_taken_from_the_body(hub):
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "username": "bob"}
    r = stage(hub, "alice", body)
    assert r.status_code == 400 and r.json()["code"] == "user_in_body", r.text


def test_bad_json_and_a_username_not_utf8_are_400_and_recorded(hub):
    r = hub.api("POST", "api/stage", token=hub.tokens["alice"], data=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    assert operation(hub, r.json()["operation_id"], "alice")["status"] == "failed"
    r = hub.api("POST", "api/stage?username=%ff", token=hub.tokens["admin"], data=b"{}")
    assert r.status_code == 400 and r.json()["code"] == "invalid_username", r.text
    assert operation(hub, r.json()["operation_id"], "admin")["error_code"] == "invalid_username"


# -- acceptance 5: direct_download, hardlink, symlink ------------------------------------------------


def test_direct_download_streams_the_file_with_length_and_name(hub, kepler):
    r = stage(hub, "alice", {"method": "direct_download", "local_path_on_storage": source(hub)})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert int(r.headers["Content-Length"]) == kepler.stat().st_size
    assert f'filename="{KEPLER_NAME}"' in r.headers["Content-Disposition"]
    assert r.content == kepler.read_bytes()
    op = wait_for(hub, r.headers["X-Staging-Operation"], "alice")
    assert op["status"] == "succeeded" and op["bytes"] == kepler.stat().st_size
    assert op["sha256"] == sha256(kepler)


def test_hardlink_shares_the_inode_and_leaves_the_source_mode(hub):
    src = hub.archive / "kepler" / KEPLER_NAME
    mode_before = stat.S_IMODE(src.stat().st_mode)
    r = stage(
        hub,
        "alice",
        {"method": "hardlink", "local_path_on_storage": str(src), "relative_path": "linked-copy/"},
    )
    assert r.status_code == 201, r.text
    target = area(hub, "alice") / "linked-copy" / KEPLER_NAME
    assert target.stat().st_ino == src.stat().st_ino
    assert stat.S_IMODE(src.stat().st_mode) == mode_before  # no chmod through the shared inode
    again = stage(
        hub,
        "alice",
        {"method": "hardlink", "local_path_on_storage": str(src), "relative_path": "linked-copy/"},
    )
    assert again.json()["status"] == "skipped"


def test_symlink_points_at_the_resolved_source(hub):
    r = stage(
        hub,
        "alice",
        {"method": "symlink", "local_path_on_storage": source(hub), "relative_path": "links/lc.fits"},
    )
    assert r.status_code == 201, r.text
    link = area(hub, "alice") / "links" / "lc.fits"
    assert link.is_symlink() and os.readlink(link) == str(Path(source(hub)).resolve())


# -- acceptance 4: jupyter_copy for bob, whose server is stopped -------------------------------------


def test_jupyter_copy_starts_bobs_server_and_lands_through_his_job(hub, kepler):
    if hub.server_state("bob"):
        hub.stop_server("bob")
    assert hub.server_state("bob") is None
    started = time.monotonic()
    body = {"method": "jupyter_copy", "local_path_on_storage": source(hub), "relative_path": "kepler/"}
    r = stage(hub, "bob", body)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "running"
    op = wait_for(hub, r.json()["id"], "bob")
    print(f"jupyter_copy with a server start took {time.monotonic() - started:.1f} s")
    assert op["status"] == "succeeded", op
    assert op["job_id"]
    assert hub.server_state("bob")["ready"] is True
    target = area(hub, "bob") / "kepler" / KEPLER_NAME
    assert target.read_bytes() == kepler.read_bytes()
    assert op["sha256"] == sha256(kepler) and op["bytes"] == kepler.stat().st_size
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    # the record links to the job that did the copy, in bob's own server
    server_job = _bobs_job(hub, op["job_id"])
    # the service acknowledged the job's file (delete_on_ack): bob's server removed its scratch output
    assert server_job["state"] == "expired" and server_job["cleanup_policy"] == "delete_on_ack"
    assert server_job["source"] == str(Path(source(hub)).resolve())
    # it staged into a scratch folder of its own, which is gone: the file alone is in bob's folder
    assert server_job["destination"] == f"staging/kepler/{KEPLER_NAME}.staging-{op['id'][:8]}"
    assert sorted(p.name for p in target.parent.iterdir()) == [KEPLER_NAME]


def _bobs_job(hub: HubProcess, job_id: str) -> dict[str, Any]:
    import requests

    r = requests.get(
        f"{hub.url}/user/bob/api/v1/staging/jobs/{job_id}",
        headers={"Authorization": f"token {hub.tokens['bob']}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_jupyter_copy_of_a_duplicate_is_skipped_without_a_job(hub):
    body = {"method": "jupyter_copy", "local_path_on_storage": source(hub), "relative_path": "kepler/"}
    r = stage(hub, "bob", body)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "skipped" and r.json()["job_id"] is None


def test_jupyter_copy_to_a_new_name_then_a_duplicate(hub, kepler):
    body = {"method": "jupyter_copy", "local_path_on_storage": source(hub), "relative_path": "x/other.fits"}
    r = stage(hub, "bob", body)
    assert r.status_code == 202, r.text
    op = wait_for(hub, r.json()["id"], "bob")
    assert op["status"] == "succeeded", op
    target = area(hub, "bob") / "x" / "other.fits"
    assert op["target"] == str(target)
    assert target.read_bytes() == kepler.read_bytes()
    assert op["sha256"] == sha256(kepler) and op["bytes"] == kepler.stat().st_size
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    # the job staged into a scratch folder beside the target, which is gone: only the renamed file stays
    assert sorted(p.name for p in target.parent.iterdir()) == ["other.fits"]
    server_job = _bobs_job(hub, op["job_id"])
    # the service acknowledged the job's file (delete_on_ack): bob's server removed its scratch output
    assert server_job["state"] == "expired" and server_job["cleanup_policy"] == "delete_on_ack"
    assert server_job["destination"] == f"staging/x/other.fits.staging-{op['id'][:8]}"

    again = stage(hub, "bob", body)
    assert again.status_code == 200, again.text
    dup = again.json()
    assert dup["status"] == "skipped" and dup["duplicate"] is True and dup["job_id"] is None


def _bobs_jobs_into(hub: HubProcess, destination: str) -> list[dict[str, Any]]:
    import requests

    r = requests.get(
        f"{hub.url}/user/bob/api/v1/staging/jobs",
        headers={"Authorization": f"token {hub.tokens['bob']}"},
        params={"limit": 1000},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [job for job in r.json()["jobs"] if job["destination"].startswith(destination)]


@pytest.mark.parametrize("relative_path", ["together/", "together-renamed/lc.fits"])
def test_jupyter_copy_repeated_at_once_is_one_job_and_a_duplicate(hub, kepler, relative_path):
    body = {"method": "jupyter_copy", "local_path_on_storage": source(hub), "relative_path": relative_path}
    first, second = stage(hub, "bob", body), stage(hub, "bob", body)
    assert first.status_code == 202, first.text
    assert second.status_code in (200, 202), second.text
    done = wait_for(hub, first.json()["id"], "bob")
    dup = wait_for(hub, second.json()["id"], "bob")
    assert done["status"] == "succeeded", done
    assert dup["status"] == "skipped" and dup["duplicate"] is True, dup
    assert dup["target"] == done["target"]
    assert Path(done["target"]).read_bytes() == kepler.read_bytes()
    folder = "staging/" + relative_path.split("/")[0]
    assert [job["id"] for job in _bobs_jobs_into(hub, folder)] == [done["job_id"]]


# -- admins ------------------------------------------------------------------------------------------


def test_admin_stages_for_bob(hub, kepler):
    body = {"method": "local_copy", "local_path_on_storage": source(hub), "relative_path": "from-admin/"}
    r = stage(hub, "admin", body, username="bob")
    assert r.status_code == 201, r.text
    op = r.json()
    assert op["user"] == "bob" and op["actor"] == "admin"
    assert (area(hub, "bob") / "from-admin" / KEPLER_NAME).read_bytes() == kepler.read_bytes()
    bobs = hub.api("GET", "api/operations", token=hub.tokens["bob"]).json()["operations"]
    assert op["id"] in [o["id"] for o in bobs]


def test_admin_cannot_stage_for_an_unknown_user(hub):
    r = stage(
        hub, "admin", {"method": "local_copy", "local_path_on_storage": source(hub)}, username="mallory"
    )
    assert r.status_code == 400 and r.json()["code"] == "unknown_user", r.text
    assert not (hub.homes / "mallory").exists()


# -- acceptance 6: who sees what -----------------------------------------------------------------------


def test_scope_matrix(hub):
    alice, bob, admin, other = (hub.tokens[n] for n in ("alice", "bob", "admin", "other"))
    body = {"method": "local_copy", "local_path_on_storage": source(hub)}

    # no token, a wrong token, another service's token: 403 JSON, nothing staged
    for token in (None, "0" * 32, other):
        for method, path in (("GET", "api/operations"), ("GET", "api/logs"), ("POST", "api/stage")):
            r = hub.api(
                method, path, token=token, json=body if method == "POST" else None, allow_redirects=False
            )
            assert r.status_code == 403, (token, path, r.status_code, r.text)
            assert r.json()["code"] == "forbidden"
            assert other not in r.text

    # alice sees only hers; asking for bob's is refused
    mine = hub.api("GET", "api/operations", token=alice).json()["operations"]
    assert mine and {o["user"] for o in mine} == {"alice"}
    assert hub.api("GET", "api/operations", token=alice, params={"user": "bob"}).status_code == 403
    bobs_op = hub.api("GET", "api/operations", token=bob).json()["operations"][0]["id"]
    r = hub.api("GET", f"api/operations/{bobs_op}", token=alice)
    assert r.status_code == 404 and r.json()["code"] == "operation_not_found"
    assert hub.api("GET", "api/operations/no-such-id", token=alice).status_code == 404
    assert hub.api("GET", "api/logs", token=alice).status_code == 403

    # the admin sees everyone's, can filter, and reads the log
    everyone = hub.api("GET", "api/operations", token=admin, params={"limit": 1000}).json()["operations"]
    assert {"alice", "bob"} <= {o["user"] for o in everyone}
    only_bob = hub.api("GET", "api/operations", token=admin, params={"user": "bob"}).json()["operations"]
    assert only_bob and {o["user"] for o in only_bob} == {"bob"}
    failed = hub.api("GET", "api/operations", token=admin, params={"status": "failed"}).json()["operations"]
    assert failed and {o["status"] for o in failed} == {"failed"}
    assert hub.api("GET", "api/operations", token=admin, params={"status": "bogus"}).status_code == 400

    log = hub.api("GET", "api/logs", token=admin, params={"lines": 1000}).json()["lines"]
    assert {"alice", "bob"} <= {line["user"] for line in log}
    warnings = hub.api("GET", "api/logs", token=admin, params={"level": "warning", "user": "alice"}).json()[
        "lines"
    ]
    assert warnings and all(line["level"] in ("WARNING", "ERROR") for line in warnings)
    assert all("alice" in (line["user"], line["actor"]) for line in warnings)
    assert {"path_not_allowed", "forbidden"} <= {line["code"] for line in warnings}


def test_no_token_or_secret_reaches_the_records_or_the_log(hub):
    everything = hub.api("GET", "api/operations", token=hub.tokens["admin"], params={"limit": 1000}).text
    log_file = (hub.service_dir / "jupyter_staging_hub.log").read_text()
    db_file = (hub.service_dir / "jupyter_staging_hub.sqlite").read_bytes()
    for token in hub.tokens.values():
        assert token not in everything and token not in log_file
        assert token.encode() not in db_file
    assert "Traceback" not in log_file and "Traceback" not in everything
    assert stat.S_IMODE((hub.service_dir / "jupyter_staging_hub_cookie_secret").stat().st_mode) == 0o600


# -- acceptance 7: restart keeps the records ----------------------------------------------------------


def test_restart_keeps_records_and_logins(hub):
    session = hub.login("alice")
    assert session.get(hub.service_url, timeout=60).status_code == 200
    before = hub.api("GET", "api/operations", token=hub.tokens["admin"], params={"limit": 1000}).json()
    started = time.monotonic()
    hub.restart()
    print(f"hub and service restarted in {time.monotonic() - started:.1f} s")
    after = hub.api("GET", "api/operations", token=hub.tokens["admin"], params={"limit": 1000}).json()
    assert after == before and len(after["operations"]) > 20
    # the service's login cookie is still valid: the page answers without a new OAuth round
    page = session.get(hub.service_url, timeout=60, allow_redirects=False)
    assert page.status_code == 200 and "Data staging" in page.text
