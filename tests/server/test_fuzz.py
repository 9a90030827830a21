"""schemathesis against a real server: every operation of ``openapi.yaml`` fuzzed, no 5xx, no traceback.

The requests are generated from the OpenAPI document (valid and invalid ones), sent with the server's
token in an ``Authorization`` header (token requests need no XSRF cookie), and some of them aimed at real
jobs and chunks. Sources are confined to one folder (``StagingApp.source_roots``) and the network to
127.0.0.1, so a generated job can neither copy the machine nor reach the internet.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import dataclass, field

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jupyter_staging.server import openapi
from tests.helpers.jupyter import JupyterServerProcess
from tests.helpers.net import free_port

schemathesis = pytest.importorskip("schemathesis")

#: Generated requests per operation: ``(valid, invalid)``. Job creation and listing take the most input,
#: so they get the most; an operation whose only input is its path can be made invalid only by dropping
#: its ``Authorization`` header, so its invalid requests check that a request without a token is refused.
EXAMPLES = {("POST", "/jobs"): (250, 200), ("GET", "/jobs"): (60, 60)}
DEFAULT_EXAMPLES = (60, 15)
#: The acceptance floor of the whole run.
MIN_REQUESTS = 1000
#: Operations that stream without end: opened, checked and closed outside hypothesis.
STREAMING = {("GET", "/events")}


@dataclass
class Tally:
    """Every answer of the run: ``(method, path template, status)`` counts and the failures to report."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    #: One request and answer per (status, error code), to show what each 4xx class holds.
    samples: dict[tuple[int, str], str] = field(default_factory=dict)

    def record(self, method: str, template: str, status: int, body: str, request: str) -> None:
        self.counts[(method, template, status)] += 1
        if status >= 400:
            code = body.partition('"code": "')[2].partition('"')[0]
            self.samples.setdefault((status, code), f"{request} -> {body[:300]}")
        if status >= 500 or "Traceback" in body:
            self.failures.append(f"{request} -> {status} {body[:500]}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_class(self) -> dict[str, collections.Counter]:
        classes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for (method, template, status), n in self.counts.items():
            classes[f"{status // 100}xx"][f"{status} {method} {template}"] += n
        return classes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    sources = base / "sources"
    sources.mkdir()
    (sources / "table.csv").write_text("a,b\n" + "".join(f"{i},{i * i}\n" for i in range(50)))
    (sources / "blob.bin").write_bytes(bytes(range(256)) * 64)
    proc = JupyterServerProcess(
        base / "root",
        base / "state",
        extra_args=[
            f"--StagingApp.source_roots={sources}",
            "--ServerApp.extra_services=jupyter_staging.server.openapi",
        ],
    )
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: S3 and proxies fail fast and locally
    proc.env.update(
        AWS_ENDPOINT_URL=closed,
        AWS_ACCESS_KEY_ID="fuzz",
        AWS_SECRET_ACCESS_KEY="fuzz",  # noqa: S105 - a dummy for the local, closed endpoint
        AWS_EC2_METADATA_DISABLED="true",
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        NO_PROXY="127.0.0.1,localhost",
    )
    proc.sources = sources
    proc.start()
    yield proc
    proc.stop()


def real_jobs(server) -> list[str]:
    """A finished copy job and a converted one, for the fuzzer to aim at."""
    ids = []
    for body in (
        {"source": str(server.sources / "blob.bin"), "destination": "staged/blob"},
        {"source": str(server.sources / "table.csv"), "destination": "staged/table", "convert": {}},
    ):
        job = server.create_job(body)
        ids.append(server.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"))["id"])
    return ids


def aim(case, job_id: str | None, source: str | None, folder: int) -> None:
    """Point a generated ``case`` at a real job (and its chunk 0) or a real source file (copied to the
    folder ``fuzz/<folder>``, its other generated fields kept), when given."""
    if source is not None and isinstance(case.body, dict) and isinstance(case.body.get("source"), str):
        case.body.update(source=source, destination=f"fuzz/{folder}", method="copy")
        case.body.pop("manifest", None)
        case.body.pop("checksum", None)
    if job_id is not None and isinstance(case.path_parameters, dict) and "job_id" in case.path_parameters:
        case.path_parameters["job_id"] = job_id
        if "chunk_id" in case.path_parameters:
            case.path_parameters["chunk_id"] = "0"


def fuzz_operation(server, operation, mode, examples: int, job_ids: list[str], tally: Tally) -> None:
    """Send ``examples`` generated requests of ``operation`` in ``mode``; some aim at real jobs and files."""
    session = requests.Session()
    method, template = operation.method.upper(), operation.path
    real_sources = [str(p) for p in sorted(server.sources.iterdir())]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        job_id=st.sampled_from([None, None, *job_ids]),
        source=st.sampled_from([None, *real_sources]),
        folder=st.integers(0, 20),
    )
    def send(case, job_id, source, folder):
        aim(case, job_id, source, folder)
        response = case.call(
            base_url=server.api.rstrip("/"), session=session, headers=server.headers, timeout=30
        )
        sent = response.request
        body = sent.body if isinstance(sent.body, bytes) else (sent.body or "").encode()
        tally.record(
            method, template, response.status_code, response.text, f"{sent.method} {sent.url} {body[:300]!r}"
        )

    send()


def check_stream(server, tally: Tally) -> None:
    """``GET /events``: the stream opens (200, event-stream) and is closed by the client."""
    with requests.get(server.api + "events", headers=server.headers, stream=True, timeout=10) as response:
        first = next(response.iter_content(chunk_size=None), b"").decode()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        tally.record("GET", "/events", response.status_code, first, "GET /events")


def test_schemathesis_finds_no_5xx_and_no_traceback(server):
    tally = Tally()
    job_ids = real_jobs(server)
    schema = schemathesis.openapi.from_path(str(openapi.SPEC_PATH))
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in STREAMING:
            check_stream(server, tally)
            continue
        valid, invalid = EXAMPLES.get((operation.method.upper(), operation.path), DEFAULT_EXAMPLES)
        fuzz_operation(server, operation, schemathesis.GenerationMode.POSITIVE, valid, job_ids, tally)
        if operation.path_parameters or operation.query or operation.body:
            fuzz_operation(server, operation, schemathesis.GenerationMode.NEGATIVE, invalid, job_ids, tally)
    elapsed = time.monotonic() - started
    print(f"\njobs made: {len(server.request('GET', 'jobs', params={'limit': 1000}).json()['jobs'])}")

    summary = {cls: dict(counter.most_common()) for cls, counter in sorted(tally.by_class().items())}
    print(f"\nschemathesis: {tally.total} requests in {elapsed:.0f}s")
    print(json.dumps(summary, indent=1))
    for (status, code), sample in sorted(tally.samples.items()):
        print(f"{status} {code}: {sample}")
    assert tally.failures == [], "\n".join(tally.failures)
    assert tally.total >= MIN_REQUESTS
    statuses = {status for (_, _, status) in tally.counts}
    assert {200, 201, 400, 404} <= statuses, statuses  # the run reached real jobs and real validation
