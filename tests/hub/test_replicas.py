"""Two replicas of the staging service over one real PostgreSQL: racing on 100 operations each runs
exactly once and none is lost; a replica killed mid-operation (SIGKILL) has its operations taken over by
the other once their lease expires, exactly once.

Both replicas are real ``jupyter_staging.hub.app`` processes started by the test as one external service
of a real JupyterHub (the hub checks every token); the proxy routes to replica A, replica B is called on
its own port, as a load balancer in front of replicas would.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from jupyter_staging.hub.db import Operation, OperationStore, utcnow
from tests.helpers.data import KEPLER_NAME
from tests.helpers.hub import HubProcess
from tests.helpers.net import free_port
from tests.helpers.replicas import ServiceReplica, external_service_config, new_service_token

from .conftest import build_archive

pytestmark = pytest.mark.slow

#: Seconds a replica holds an operation without renewing it (renewed every third of that).
LEASE_SECONDS = 2.0
BIG_BYTES = 96 * 1024 * 1024


class Site:
    """The hub, the two replicas, the database and its store as the test sees them."""

    def __init__(self, hub: HubProcess, a: ServiceReplica, b: ServiceReplica, store: OperationStore) -> None:
        self.hub, self.a, self.b, self.store = hub, a, b, store

    def area(self, user: str) -> Path:
        return self.hub.homes / user / "staging"

    def start(self, *replicas: ServiceReplica) -> None:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(self.hub.tokens["alice"])


@pytest.fixture(scope="module")
def site(tmp_path_factory, postgres, kepler, proxy_command):
    db_url = postgres.create_database("staging_replicas")
    workdir = tmp_path_factory.mktemp("replicas")
    build_archive(workdir, kepler)
    big = workdir / "archive" / "big.bin"
    big.write_bytes(bytes(range(256)) * (BIG_BYTES // 256))
    token = new_service_token()
    hub = HubProcess(workdir, proxy=proxy_command, extra_config=external_service_config(token))
    hub.homes.mkdir(parents=True, exist_ok=True)
    kwargs = {"token": token, "db_url": db_url, "lease_seconds": LEASE_SECONDS}
    a = ServiceReplica(hub, "replica-a", hub.service_port, **kwargs)
    b = ServiceReplica(hub, "replica-b", free_port(), **kwargs)
    a.start()
    b.start()
    hub.start()
    b.wait_ready(hub.tokens["alice"])
    store = OperationStore(db_url)
    yield Site(hub, a, b, store)
    store.close()
    for replica in (a, b):
        replica.stop()
    hub.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until_ended(store: OperationStore, ids: set[str], timeout: float = 180.0) -> list[Operation]:
    """The operations ``ids`` once none is ``running`` (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ops = [op for op in store.list_operations(limit=100_000) if op.id in ids]
        if len(ops) == len(ids) and all(op.status != "running" for op in ops):
            return ops
        time.sleep(0.2)
    raise AssertionError(f"operations still running after {timeout} s")


def orphan(source: Path, target: Path) -> Operation:
    """A ``local_copy`` left ``running`` by a replica that died, its lease expired a second ago."""
    now = utcnow()
    return Operation(
        id=f"orphan-{target.name}", user="alice", actor="alice", method="local_copy", source=str(source),
        target=str(target), status="running", started=now, runner="replica-that-died",
        lease_expires_at=now - timedelta(seconds=1),
    )  # fmt: skip


def ends_logged(site: Site) -> Counter[str]:
    """How many final lines each operation has in the two replicas' operations logs together."""
    return Counter(line["operation"] for r in (site.a, site.b) for line in r.final_log_lines())


def test_100_racing_operations_each_run_exactly_once(site, kepler):
    source = site.hub.archive / "kepler" / KEPLER_NAME
    expected = sha256(kepler)
    # 50 operations a dead replica left behind appear at once, and both replicas race to take them over ...
    orphans = [orphan(source, site.area("alice") / "orphans" / f"k-{i:02}.fits") for i in range(50)]
    started = time.monotonic()
    with site.store.session() as s:
        s.add_all(orphans)

    # ... while 50 new calls arrive, alternately at each replica.
    def call(i: int) -> requests.Response:
        replica = (site.a, site.b)[i % 2]
        body = {
            "method": "local_copy",
            "local_path_on_storage": str(source),
            "relative_path": f"live/k-{i:02}.fits",
        }
        return replica.api("POST", "api/stage", token=site.hub.tokens["alice"], json=body)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(50)))
    assert [r.status_code for r in answers] == [201] * 50, [r.text for r in answers if r.status_code != 201]
    live = {r.json()["id"]: ("replica-a", "replica-b")[i % 2] for i, r in enumerate(answers)}
    ops = wait_until_ended(site.store, set(live) | {op.id for op in orphans})
    took = time.monotonic() - started

    assert len(ops) == 100
    assert Counter(op.status for op in ops) == {"succeeded": 100}, [op.to_dict() for op in ops]
    assert all(op.sha256 == expected and op.bytes == kepler.stat().st_size for op in ops)
    for op in ops:  # a live call is run by the replica it reached; an orphan by one of the two
        assert op.runner == live.get(op.id, op.runner) and op.runner in ("replica-a", "replica-b")
        assert op.lease_expires_at is None
    # The files agree with the rows: one per operation, the source's bytes, no part file left.
    files = sorted((site.area("alice") / "orphans").iterdir()) + sorted(
        (site.area("alice") / "live").iterdir()
    )
    assert [f.name for f in files] == [Path(op.target or "").name for op in sorted(ops, key=by_folder)]
    assert all(sha256(f) == expected for f in files)
    # Each operation's end is logged once, by one replica.
    logged = ends_logged(site)
    assert all(logged[op.id] == 1 for op in ops), {op.id: logged[op.id] for op in ops if logged[op.id] != 1}
    split = Counter(op.runner for op in ops if op.id.startswith("orphan-"))
    print(f"100 operations in {took:.1f} s; orphans taken over: {dict(split)}")
    assert set(split) == {"replica-a", "replica-b"}, split  # both replicas raced for them


def by_folder(op: Operation) -> tuple[str, str]:
    target = Path(op.target or "")
    return (target.parent.name != "orphans", target.name)


def test_a_killed_replicas_operations_are_taken_over_once_its_lease_expires(site):
    source = site.hub.archive / "big.bin"
    expected = sha256(source)

    def call(i: int) -> int:
        body = {
            "method": "local_copy",
            "local_path_on_storage": str(source),
            "relative_path": f"killed/b-{i}.bin",
        }
        try:
            return site.a.api("POST", "api/stage", token=site.hub.tokens["bob"], json=body).status_code
        except requests.ConnectionError:
            return 0  # replica A died under this call

    with ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(call, i) for i in range(6)]
        running = []
        deadline = time.monotonic() + 60
        while len(running) < 2 and time.monotonic() < deadline:
            running = site.store.list_operations(user="bob", status="running")
            time.sleep(0.01)
        site.a.kill()
        killed_at = utcnow()
        assert running, "replica A never had an operation running"
        codes = [c.result() for c in calls]
    left = {op.id for op in site.store.list_operations(user="bob", status="running")}
    assert left and all(
        op.runner == "replica-a" for op in site.store.list_operations(user="bob", status="running")
    )

    ops = wait_until_ended(site.store, left, timeout=120)
    for op in ops:
        assert op.runner == "replica-b", op.to_dict()
        assert op.status in ("succeeded", "skipped"), op.to_dict()  # skipped: A had published the file
        assert op.sha256 == expected and op.bytes == BIG_BYTES
        assert sha256(Path(op.target or "")) == expected
        # B took it over only once A's last renewal had expired (renewed every third of the lease).
        assert op.finished is not None and op.finished > killed_at + timedelta(
            seconds=LEASE_SECONDS * 2 / 3 - 0.3
        )
    logged = ends_logged(site)
    assert all(logged[op_id] == 1 for op_id in left)
    # Every call either got its answer from A or lost its connection with A; each recorded one row.
    mine = site.store.list_operations(user="bob")
    assert sum(code == 201 for code in codes) + len(left) <= len(mine) <= len(codes)
    assert all(op.status != "running" for op in mine)
    print(f"replica A killed with {len(left)} operations running; replica B finished them: {codes}")

    # A replica starting again takes over nothing that B holds and finds nothing left.
    site.start(site.a)
    assert all(op.status != "running" for op in site.store.list_operations(limit=100_000))


CLAIMER = """
import sys, time
from jupyter_staging.hub.db import OperationStore, utcnow
from datetime import timedelta
store, name, got = OperationStore(sys.argv[1]), sys.argv[2], []
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start claiming together
while True:
    batch = store.claim_expired(name, utcnow() + timedelta(seconds=60), limit=3)
    got += [op.id for op in batch]
    running = store.list_operations(status="running", limit=1000)
    if not batch and all(op.lease_expires_at > utcnow() for op in running):
        break  # an empty batch may only mean the others were quicker: stop once none is left
print(" ".join(got))
"""


@pytest.mark.parametrize("kind", ["postgres", "mariadb", "sqlite"])
def test_four_processes_claiming_at_once_never_get_the_same_operation(kind, request, tmp_path, kepler):
    if kind == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'ops.sqlite'}"
    else:
        db_url = request.getfixturevalue(kind).create_database(f"claims_{kind}")
    store = OperationStore(db_url)
    ops = [orphan(kepler, tmp_path / f"k-{i:03}.fits") for i in range(200)]
    with store.session() as s:
        s.add_all(ops)
    at = str(time.time() + 4)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, db_url, f"claimer-{i}", at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outputs]
    claims = {f"claimer-{i}": out.split() for i, (out, _) in enumerate(outputs)}
    every = [op_id for got in claims.values() for op_id in got]
    assert sorted(every) == sorted(op.id for op in ops)  # each claimed once: none twice, none lost
    rows = {op.id: op.runner for op in store.list_operations(limit=1000)}
    assert all(rows[op_id] == name for name, got in claims.items() for op_id in got)
    print(f"{kind}: claims per process {[len(got) for got in claims.values()]}")
    store.close()
