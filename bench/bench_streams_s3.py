"""The S3 section of ``bench_streams.py`` (``--s3``): one object on an s3rver endpoint on 127.0.0.1.

s3rver (the npm package, Node; objects on disk under ``ROOT/s3rver``) is started here with a bucket made at
its start, the object uploaded once with boto3, and then fetched, interleaved, by:

- ``engine 1`` / ``engine 4``: :class:`StagingManager` jobs of ``s3://bench/<name>`` with
  ``streams_per_file`` 1 and 4 (ranged ``GetObject`` with ``IfMatch`` on the listed ETag);
- ``boto3``: ``client.download_file`` with ``TransferConfig(max_concurrency=4, multipart_chunksize=64 MiB)``
  in this process, then ``fsync`` of the file (timed);
- ``s5cmd``: ``s5cmd cp --concurrency 4 --part-size 64`` (+ ``sync FILE``);
- ``curl presigned``: a presigned ``GET`` URL fetched by ``curl`` (+ sync): the endpoint's own one-stream
  ceiling.

The settings go to this process's environment (``AWS_ENDPOINT_URL``, s3rver's fixed ``S3RVER`` key pair,
``us-east-1``, no shared config files), the way tests/conftest.py ``s3_env`` points boto3 at moto.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import boto3
from bench_streams import (
    ROOT,
    Candidate,
    Engines,
    free_port,
    make_source,
    peak_rss_mib,
    peak_rss_reset,
    run_tool,
    stop,
    wait_listening,
)
from benchlib import MiB, rmtree
from boto3.s3.transfer import TransferConfig

BUCKET = "bench"

Section = Callable[[str, dict[str, Candidate], str, int, str, argparse.Namespace], dict]


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment pointing boto3, the engine and s5cmd at ``endpoint`` with s3rver's key pair."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "S3RVER",
        "AWS_SECRET_ACCESS_KEY": "S3RVER",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def boto3_download(client: object, key: str, out: Path) -> tuple[float, float]:
    """``download_file`` (4 threads, 64 MiB parts) then fsync, timed; returns ``(seconds, peak RSS MiB of
    this process)``."""
    config = TransferConfig(max_concurrency=4, multipart_chunksize=64 * MiB, multipart_threshold=64 * MiB)
    peak_rss_reset()
    t0 = time.perf_counter()
    client.download_file(BUCKET, key, str(out), Config=config)  # type: ignore[attr-defined]
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0, peak_rss_mib()


def upload(args: argparse.Namespace, s5cmd: str, src: Path, env: dict[str, str]) -> None:
    """Put ``src`` into the bucket from another process (this one's memory stays as it was): with
    ``--s3-single-put`` one ``PutObject`` (its ETag is the MD5, which the engine then verifies too), else
    ``s5cmd cp`` (multipart, 50 MiB parts: an ETag that is no MD5, as for most large objects)."""
    if args.s3_single_put:
        code = (
            "import sys, boto3; from boto3.s3.transfer import TransferConfig as T; "
            "boto3.client('s3').upload_file(*sys.argv[1:], Config=T(multipart_threshold=1 << 40))"
        )
        cmd = [sys.executable, "-c", code, str(src), BUCKET, src.name]
    else:
        cmd = [s5cmd, "--endpoint-url", env["AWS_ENDPOINT_URL"], "cp", str(src), f"s3://{BUCKET}/{src.name}"]
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)


def s3_section(args: argparse.Namespace, engines: Engines, section: Section) -> dict | None:
    """Run the S3 candidates against a fresh s3rver; returns the section's figures, or None (and says
    why) when s3rver or s5cmd is missing."""
    s3rver, s5cmd = shutil.which(args.s3rver), shutil.which(args.s5cmd)
    if not s3rver or not s5cmd:
        print(f"\n## s3: skipped (s3rver {s3rver or 'not found'}, s5cmd {s5cmd or 'not found'})")
        return None
    data, port = ROOT / "s3rver", free_port()
    rmtree(data)
    data.mkdir(parents=True)
    cmd = [s3rver, "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "-s", "--configure-bucket", BUCKET]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    saved = {name: os.environ.get(name) for name in s3_env("")}
    try:
        wait_listening(port, proc, "s3rver")
        env = s3_env(f"http://127.0.0.1:{port}")
        os.environ.update(env)
        src, sha = make_source(args.s3_size_mib)
        client = boto3.session.Session().client("s3")
        upload(args, s5cmd, src, env)
        version = subprocess.run([s3rver, "--version"], capture_output=True, text=True).stdout.strip()
        put = "one PutObject (ETag = MD5)" if args.s3_single_put else "s5cmd cp, multipart (ETag no MD5)"
        print(f"\n# s3 endpoint: s3rver {version} (Node {shutil.which('node')}); {src.name} put by {put}")
        url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": src.name})
        s5 = [
            s5cmd,
            "--endpoint-url",
            env["AWS_ENDPOINT_URL"],
            "cp",
            "--concurrency",
            "4",
            "--part-size",
            "64",
        ]
        uri = f"s3://{BUCKET}/{src.name}"
        tool_env = {**os.environ, **env}
        curl = ["curl", "-sSf", "-o"]
        cands: dict[str, Candidate] = {
            "engine 1": partial(engines.run, 1, uri, sha),
            "engine 4": partial(engines.run, 4, uri, sha),
            "boto3": lambda d: boto3_download(client, src.name, d / src.name),
            "s5cmd": lambda d: run_tool([*s5, uri, str(d / src.name)], d / src.name, tool_env),
            "curl presigned": lambda d: run_tool([*curl, str(d / src.name), url], d / src.name),
        }
        return section("s3", cands, "boto3", src.stat().st_size, sha, args)
    finally:
        stop(proc)
        rmtree(data)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
